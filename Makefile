# Quick start: `make demo` trains and tests a compressed SR model (`make demo-deblur`: a deblurring GAN);
# `make test` runs the test suite; `make docs` builds the documentation site into site/.
# Each creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export PYTHONUNBUFFERED := 1

# The demo's budget (about 3 minutes on 2 CPU cores).
DEMO_ARGS_TRAIN ?= --nEpochs 8 --iters_per_epoch 150 --crop_size 32 --batchSize 16
DEMO_ARGS_TEST ?=
# The deblurring demo's budget: 8 epochs x 25 iterations of 8 64x64 crops, generator and critic (WGAN-GP).
DEBLUR_ARGS_TRAIN ?= --nEpochs 8 --iters_per_epoch 25 --batchSize 8
DEBLUR_ARGS_TEST ?=

.PHONY: demo demo-deblur test test-slow setup setup-dev setup-docs example lint docs figures clean

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	@command -v dot >/dev/null 2>&1 || { (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -q graphviz >/dev/null 2>&1) \
	  && echo "installed Graphviz (dot) for model drawings" \
	  || echo "note: Graphviz 'dot' is not installed and could not be installed here; model drawings will be written as .dot files (install graphviz to get PNGs)"; }
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

$(VENV)/.installed-docs: $(VENV)/.installed requirements-docs.txt
	$(PY) -m pip install -q -r requirements-docs.txt
	touch $@

setup: $(VENV)/.installed
setup-dev: $(VENV)/.installed-dev
setup-docs: $(VENV)/.installed-docs

demo: $(VENV)/.installed
	$(PY) train.py --optform=SR --compress=schedules/sr/agp_prune.yaml --save demo $(DEMO_ARGS_TRAIN)
	$(PY) test.py --optform=SR --model=checkpoints/demo/best.pth $(DEMO_ARGS_TEST)

demo-deblur: $(VENV)/.installed
	$(PY) train.py --optform=Deblur --compress=schedules/deblur/agp_prune.yaml --save demo-deblur $(DEBLUR_ARGS_TRAIN)
	$(PY) test.py --optform=Deblur --model=checkpoints/demo-deblur/best.pth $(DEBLUR_ARGS_TEST)

example: $(VENV)/.installed
	$(PY) examples/own_training_loop.py

test: $(VENV)/.installed-dev
	$(PY) -m pytest -q

test-slow: $(VENV)/.installed-dev
	$(PY) -m pytest -q -m slow

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .

# The site's pictures: every docs/figures/NAME.py writes docs/figures/NAME.png.
figures: $(VENV)/.installed
	for script in docs/figures/*.py; do $(PY) $$script || exit 1; done

# The documentation site (MkDocs + Material, API reference by mkdocstrings) into site/; --strict turns a
# broken link, anchor or API reference into an error.
docs: $(VENV)/.installed-docs figures
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

clean:
	rm -rf logs checkpoints results site .pytest_cache
