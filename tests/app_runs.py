"""Running train.py / test.py as a user does, in a subprocess, on a tiny budget (shared by the e2e tests)."""
from __future__ import annotations

import importlib.util
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
#: the repository first on the path, then whatever was there (e.g. packages installed with --target)
ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
TINY = ["--iters_per_epoch", "3", "--crop_size", "16", "--batchSize", "4", "--print_freq", "1", "--testdata", "val"]
AGP = """version: 1
pruners:
  p:
    class: 'AutomatedGradualPruner'
    initial_sparsity: 0.2
    final_sparsity: 0.5
    weights: ['mid_part.1.weight', 'mid_part.3.weight']
policies:
  - pruner:
      instance_name: 'p'
    starting_epoch: 0
    ending_epoch: 2
    frequency: 1
"""


def command(script: str, *args: str) -> list[str]:
    return [sys.executable, str(ROOT / script), *args]


def run_app(cwd: Path, script: str, *args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(command(script, *args), cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


def entry_main(script: str) -> Callable[[Sequence[str]], int]:
    """The main() of train.py / test.py, to run in this process (no interpreter start-up)."""
    spec = importlib.util.spec_from_file_location(f"entry_{script}", ROOT / f"{script}.py")
    module = importlib.util.module_from_spec(spec)  # not `import test`: that name is the stdlib's test package
    spec.loader.exec_module(module)
    return module.main


def small_validation_set(folder: Path) -> None:
    """A 64x64 crop of an embedded photograph in folder/val: validating on it costs next to nothing."""
    from apps.sr.data import embedded_dir, load_rgb

    target = Path(folder) / "val" / "rocket_crop.png"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(load_rgb(embedded_dir() / "rocket.jpg")[200:264, 300:364]).save(target)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def kill_mid_epoch(cwd: Path, args: list[str], latest: Path) -> int:
    """Start train.py with `args`, SIGKILL it just after its first checkpoint `latest` (into the next epoch);
    returns the epoch that checkpoint holds."""
    proc = subprocess.Popen(command("train.py", *args), cwd=cwd, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)  # into the next epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    return int(load(latest)["epoch"])


def drop_run_log_handlers() -> None:
    """Remove the log handlers train / test runs add to the root logger (in-process runs in tests)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_imagegen_run", None) or getattr(h, "_imagegen_console", None):
            root.removeHandler(h)
