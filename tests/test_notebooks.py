"""The notebooks run top to bottom, headless, on a freshly trained tiny compressed checkpoint."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import torch
import yaml
from nbclient import NotebookClient

import compress
from apps.sr.models import build_model
from apputils.checkpoint import load_checkpoint, rebuild_model, save_checkpoint
from apputils.platform_summaries import macs_display, sparsity_display
from apputils.workbooks import write_sensitivity_workbook

ROOT = Path(__file__).resolve().parents[1]
KERNEL = "imagegen-bench-test"
SCHEDULE = """
version: 1
pruners:
  agp:
    class: AutomatedGradualPruner
    initial_sparsity: 0.5
    final_sparsity: 0.6
    weights: [first_part.0.weight, mid_part.1.weight, mid_part.3.weight, mid_part.9.0.weight]
policies:
  - pruner: {instance_name: agp}
    starting_epoch: 0
    ending_epoch: 1
    frequency: 1
"""


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """train.py with a pruning schedule for one minibatch; a dense checkpoint; sparsity and MACs reports of the pruned one."""
    work = tmp_path_factory.mktemp("tiny_run")
    (work / "agp.yaml").write_text(SCHEDULE)
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--optform=SR", "--nEpochs", "1",
                           "--iters_per_epoch", "1", "--batchSize", "2", "--save", "pruned", "--compress", "agp.yaml"],
                          cwd=work, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    after = work / "checkpoints" / "pruned" / "best.pth"
    ckpt = load_checkpoint(after)

    torch.manual_seed(0)
    dense = build_model(ckpt["arch"]["name"], ckpt["arch"]["kwargs"])
    before = save_checkpoint({**ckpt, "model": dense.state_dict(), "schedule": None, "scheduler": None,
                              "optimizer": None, "epoch": 0}, work / "checkpoints" / "dense" / "best.pth")

    model, _, _ = rebuild_model(ckpt, build_model)
    model.eval()
    reports = work / "results" / "pruned" / "reports"
    sparsity_display(model, reports / "spars_file.xlsx")
    macs_display(model, reports / "macs_file.xlsx", torch.zeros(1, 1, 64, 64))
    return {"before": before, "after": after, "reports": reports, "work": work}


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kernel spec running this very interpreter, so the test works from any clean venv."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "imagegen-bench test", "language": "python"}))
    return root


def execute(name: str, kernel_dir: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str]):
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_dir))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    nb = nbformat.read(ROOT / "jupyter" / name, as_version=4)
    NotebookClient(nb, kernel_name=KERNEL, timeout=120,
                   resources={"metadata": {"path": str(ROOT / "jupyter")}}).execute()
    return nb


def outputs(nb, kind: str) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == kind]


def last_printed(nb) -> str:
    """What the last code cell that printed anything printed (the kernel may send it in several chunks)."""
    cells = [c for c in nb.cells if c.cell_type == "code" and any(o.output_type == "stream" for o in c.get("outputs", []))]
    return "".join(o.get("text", "") for o in cells[-1].outputs if o.output_type == "stream")


def text_of(nb) -> str:
    return "".join(o.get("text", "") for o in outputs(nb, "stream")) + "".join(
        o.get("data", {}).get("text/plain", "") for kind in ("execute_result", "display_data") for o in outputs(nb, kind))


def images(nb) -> int:
    return sum("image/png" in o.get("data", {}) for kind in ("display_data", "execute_result") for o in outputs(nb, kind))


def test_compression_insights_from_a_checkpoint_and_a_reports_folder(tiny_run, kernel_dir, monkeypatch):
    nb = execute("compression_insights.ipynb", kernel_dir, monkeypatch,
                 {"INSIGHTS_BEFORE": str(tiny_run["before"]), "INSIGHTS_AFTER": str(tiny_run["reports"])})
    text = text_of(nb)
    assert "before (C2SRCNN dense)" in text and "after (pruned)" in text
    assert "sparsity %" in text and "effective MACs" in text
    assert "where the saved MACs came from" in text
    assert images(nb) >= 1


#: PSNR lost per 10% of sparsity, per C2SRCNN weight, in the sensitivity files below
SOME_PRUNABLE = {"first_part.0.weight": 0.2, "mid_part.1.weight": 0.0, "mid_part.3.weight": 0.12,
                 "mid_part.5.weight": 0.2, "last_part.weight": 1.0}
NONE_PRUNABLE = {"first_part.0.weight": 1.0, "mid_part.1.weight": 0.6}


def sense_file(path: Path, loss_per_step: dict[str, float]) -> Path:
    """A sensitivity workbook (written as sensitivity_analysis writes one) with PSNR falling linearly."""
    rows = [{"parameter": name, "sparsity": k / 10, "actual_sparsity": k / 10, "psnr": 30.0 - loss * k,
             "mse": 1e-3 * (1 + loss * k)} for name, loss in loss_per_step.items() for k in range(10)]
    return write_sensitivity_workbook(pd.DataFrame(rows), path, ["psnr", "mse"], "element")


def test_sensitivity_notebook_suggests_levels_and_a_valid_schedule(kernel_dir, monkeypatch, tmp_path):
    nb = execute("sensitivity_analysis.ipynb", kernel_dir, monkeypatch,
                 {"SENSE_FILE": str(sense_file(tmp_path / "sense_file.xlsx", SOME_PRUNABLE)),
                  "SENSE_TOLERANCE": "0.5"})
    text = text_of(nb)
    assert "suggested sparsity" in text and "tolerance: 0.5 psnr" in text
    assert images(nb) >= 3
    # within 0.5 dB: 0.2 dB per step -> 20%, flat -> 90%, 0.12 dB per step -> 40%, 1 dB per step -> not pruned
    schedule = yaml.safe_load(last_printed(nb))
    levels = {p["final_sparsity"]: p["weights"] for p in schedule["pruners"].values()}
    assert levels == {0.2: ["first_part.0.weight", "mid_part.5.weight"], 0.4: ["mid_part.3.weight"],
                      0.9: ["mid_part.1.weight"]}
    assert {p["class"] for p in schedule["pruners"].values()} == {"AutomatedGradualPruner"}
    model = build_model("C2SRCNN", {"num_channels": 1, "upscale_factor": 2})
    compress.dict_config(model, None, schedule)  # the suggestion loads in the core as it is


def test_sensitivity_notebook_says_when_no_layer_fits_the_tolerance(kernel_dir, monkeypatch, tmp_path):
    nb = execute("sensitivity_analysis.ipynb", kernel_dir, monkeypatch,
                 {"SENSE_FILE": str(sense_file(tmp_path / "sense_file.xlsx", NONE_PRUNABLE)),
                  "SENSE_TOLERANCE": "0.5"})
    assert "no layer can be pruned within the tolerance" in last_printed(nb)
