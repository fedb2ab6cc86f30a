"""Where a run writes: a log file and the console, a TensorBoard folder, and the environment it ran in.

`setup_run('myrun', 'logs')` logs to logs/myrun/myrun.log and to the console, and returns a
tensorboardX SummaryWriter writing into logs/myrun/. `UserError` is the base of every error whose
message is meant for the user; the entry points print it and exit non-zero instead of a traceback.
"""
from __future__ import annotations

import logging
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tensorboardX import SummaryWriter

log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: `log.info(..., extra=FILE_ONLY)` writes to the run's log file but not to the console.
FILE_ONLY = {"file_only": True}


class UserError(Exception):
    """A failure caused by the user's input; its message says what, where and how to fix it."""


class NullWriter:
    """A TensorBoard writer that drops everything: the other ranks of a torchrun job, where rank 0 writes."""

    def add_scalar(self, tag: str, value: Any, step: int | None = None) -> None:
        """Dropped."""

    def flush(self) -> None:
        """Nothing to flush."""

    def close(self) -> None:
        """Nothing to close."""


@dataclass
class RunEnv:
    """What a run has opened: its name, folder, log file and TensorBoard writer."""

    name: str
    folder: Path
    log_file: Path
    writer: SummaryWriter | NullWriter

    def close(self) -> None:
        """Flush and close the TensorBoard writer and the log file handler."""
        self.writer.close()
        root = logging.getLogger()
        for handler in list(root.handlers):
            if getattr(handler, "_imagegen_run", None) == self.name:
                handler.close()
                root.removeHandler(handler)


def setup_logging(level: int = logging.INFO) -> None:
    """Console logging (stderr) for the entry points; idempotent."""
    root = logging.getLogger()
    root.setLevel(level)
    if not any(getattr(h, "_imagegen_console", False) for h in root.handlers):
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        console.setLevel(level)
        console.addFilter(lambda record: not getattr(record, "file_only", False))
        console._imagegen_console = True  # type: ignore[attr-defined]
        root.addHandler(console)


def setup_run(name: str, logdir: str | Path = "logs", level: int = logging.INFO) -> RunEnv:
    """Open logs/<name>/<name>.log (appending, so a resumed run keeps its history) and a SummaryWriter there."""
    setup_logging(level)
    folder = Path(logdir) / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create the log folder '{folder}' ({err}); choose another --logdir") from err
    log_file = folder / f"{name}.log"
    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler._imagegen_run = name  # type: ignore[attr-defined]
    logging.getLogger().addHandler(handler)
    writer = SummaryWriter(logdir=str(folder))
    log.info("run '%s': log %s, TensorBoard %s", name, log_file, folder)
    return RunEnv(name=name, folder=folder, log_file=log_file, writer=writer)


def follow_run(name: str, logdir: str | Path = "logs") -> RunEnv:
    """setup_run's paths without opening anything: a rank other than 0, whose outputs rank 0 writes."""
    folder = Path(logdir) / name
    return RunEnv(name=name, folder=folder, log_file=folder / f"{name}.log", writer=NullWriter())


def env_info() -> dict[str, Any]:
    """Versions, devices, threads and the git commit, to make a run's numbers traceable."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cuda_devices": torch.cuda.device_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "thp_mem_alloc": os.environ.get("THP_MEM_ALLOC_ENABLE"),  # huge pages: see apputils/huge_pages.py
        "argv": " ".join(sys.argv),
    }
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=Path(__file__).resolve().parent)
        info["git_commit"] = out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        info["git_commit"] = None
    return info


def log_env_info() -> dict[str, Any]:
    """Log env_info() and return it."""
    info = env_info()
    for key, value in info.items():
        log.info("env %s: %s", key, value, extra=FILE_ONLY)
    return info


def run_entry(work: Callable[[], None]) -> int:
    """Run an entry point's `work`; a user error becomes one 'error: ...' line on stderr and exit code 2.

    Errors meant for the user are UserError (and its subclasses: CheckpointError, the apps' DataError)
    and compress.ScheduleError; anything else is a bug and keeps its traceback.
    """
    from compress.errors import ScheduleError

    setup_logging()
    try:
        work()
    except (UserError, ScheduleError) as err:
        log.debug("user error", exc_info=True)
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the last saved checkpoint is intact (continue with --resume)", file=sys.stderr)
        return 130
    return 0
