"""Application registry: `--optform` name -> the package that implements the app.

An app package provides `TrainOptions`, `TestOptions`, `Trainer`, `Tester`, `build_train_loaders(opt)`
and `build_test_loader(opt)`. train.py / test.py look the app up here, so adding an app means adding
one folder and one `register_app` line below; the entry points never change.

The contract the entry points rely on (apps.common gives the shared parts):
- `TrainOptions().parse(argv)` / `TestOptions().parse(argv)` -> argparse.Namespace (`--optform` first);
- `Trainer(opt, train_loader, val_loader).run()` -> dict with `run`, `headline` (the app's one-line
  result, e.g. best PSNR beside its baseline), `best`, `latest`, `log`, `tensorboard`: subclass
  apps.common.solver.AppTrainer, which runs the epochs with the compression scheduler's hooks and
  writes the checkpoints; the compressed network is `self.model` with `self.optimizer`, any other
  network an app trains (a GAN's critic, with its own optimizer) goes into the checkpoint beside it;
- `Tester(opt, test_loader).run(opt)` -> dict with `table` (printed), `images`, `log` and, with
  --reports, `reports`: subclass apps.common.solver.AppTester.
"""
from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import ModuleType

from apputils.execution_env import UserError

_APPS: dict[str, str] = {}
REQUIRED = ("TrainOptions", "TestOptions", "Trainer", "Tester", "build_train_loaders", "build_test_loader")


def register_app(name: str, module: str) -> None:
    """Register the app package `module` (dotted import path) under the --optform `name`."""
    if name in _APPS and _APPS[name] != module:
        raise KeyError(f"app '{name}' is already registered as {_APPS[name]}")
    _APPS[name] = module


def available_apps() -> list[str]:
    """The registered --optform names."""
    return sorted(_APPS)


def get_app(name: str) -> ModuleType:
    """Import and return the app registered as `name`; UserError listing the valid names otherwise."""
    if name not in _APPS:
        lowered = {k.lower(): k for k in _APPS}
        hint = f" (did you mean --optform={lowered[name.lower()]}?)" if name.lower() in lowered else ""
        raise UserError(f"unknown --optform '{name}'{hint}; valid apps: {', '.join(available_apps())}")
    module = importlib.import_module(_APPS[name])
    missing = [attr for attr in REQUIRED if not hasattr(module, attr)]
    if missing:
        raise UserError(f"app '{name}' ({_APPS[name]}) lacks {', '.join(missing)}; see apps/__init__.py")
    return module


def optform(argv: Sequence[str]) -> str:
    """The app name from `--optform=NAME` or `--optform NAME`, which must be the first argument."""
    usage = (f"the first argument must be --optform=APP (valid apps: {', '.join(available_apps())}), "
             f"e.g. python train.py --optform=SR --help")
    if not argv:
        raise UserError(f"no arguments: {usage}")
    first = argv[0]
    if first.startswith("--optform="):
        return first.split("=", 1)[1]
    if first == "--optform" and len(argv) > 1:
        return argv[1]
    raise UserError(f"'{first}' given first: {usage}")


register_app("SR", "apps.sr")
register_app("Deblur", "apps.deblur")
