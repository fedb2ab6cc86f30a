"""Checkpoints: plain dicts of tensors and data, written atomically, read with weights_only=True.

Contract (format 1)::

    {'format': 1, 'app': 'SR', 'arch': {'name': 'C2SRCNN', 'kwargs': {...}},
     'model': state_dict, 'schedule': plain schedule dict or None, 'scheduler': state or None,
     'optimizer': state or None, 'epoch': int, 'best_metric': float, 'options': dict, ...}

'model' / 'optimizer' are the network the schedule compresses and test.py deploys. An app that trains
more networks (a GAN's critic) keeps each under 'networks': {name: {'arch', 'model', 'optimizer'}},
uncompressed; `rebuild_model(ckpt['networks'][name], build, optimizer_factory=...)` restores one.

A run that started from another checkpoint's weights (train.py --load_weights) keeps that checkpoint's
structure under 'base': {'schedule', 'scheduler', 'base'} (`base_record`), no weights: its thinning is
replayed before the run's own schedule, so the model is rebuilt without the file it started from.

A compressed model (thinned, quantized) is rebuilt, never unpickled: build the dense architecture,
replay the schedule with `compress.dict_config`, restore the scheduler state (which re-applies
thinning recipes and quantizer module swaps), then load the weights (`rebuild_model`).
"""
from __future__ import annotations

import logging
import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from apputils.execution_env import UserError

log = logging.getLogger(__name__)

FORMAT = 1
REQUIRED_KEYS = ("format", "app", "arch", "model")


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be read or does not fit; the message says which file and how to fix it."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write `state` to `path` atomically: a temporary file in the same folder, fsync, then os.replace.

    A crash at any moment leaves either the previous file or the new one, never a torn file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, app: str | None = None) -> dict[str, Any]:
    """Read a checkpoint with weights_only=True and check it follows the contract (and belongs to `app`)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist; give the path printed at the end of "
                              f"training (checkpoints/<run>/best.pth or latest.pth)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt / foreign files
        raise CheckpointError(f"cannot read checkpoint '{path}' ({type(err).__name__}: {str(err)[:300]}); "
                              f"it is damaged or not a checkpoint of this project (checkpoints hold "
                              f"tensors and plain data only); use latest.pth or best.pth of the run") from err
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in REQUIRED_KEYS):
        missing = [k for k in REQUIRED_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
        raise CheckpointError(f"'{path}' is not a checkpoint of this project (missing keys {missing}); "
                              f"give a file written by train.py")
    if ckpt["format"] != FORMAT:
        raise CheckpointError(f"'{path}' has checkpoint format {ckpt['format']}, this version reads "
                              f"format {FORMAT}; retrain or use the matching version of the project")
    if app is not None and ckpt["app"] != app:
        raise CheckpointError(f"'{path}' was trained by app '{ckpt['app']}', not '{app}'; run with "
                              f"--optform={ckpt['app']}")
    return ckpt


def rng_states() -> dict[str, Any]:
    """The random states of Python, NumPy and torch (CPU and CUDA), as plain data and tensors."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": _plain(random.getstate()),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_states(state: dict[str, Any]) -> None:
    """Restore what rng_states() returned."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _plain(obj: Any) -> Any:
    """Tuples -> lists, recursively (weights_only loading accepts lists, ints, floats, strings)."""
    if isinstance(obj, tuple | list):
        return [_plain(o) for o in obj]
    return obj


def rebuild_model(ckpt: dict[str, Any], build: Callable[[str, dict[str, Any]], nn.Module], *,
                  optimizer_factory: Callable[[nn.Module], torch.optim.Optimizer] | None = None,
                  dummy_input: torch.Tensor | None = None, device: str | torch.device = "cpu",
                  teachers: dict[str, nn.Module] | None = None,
                  ) -> tuple[nn.Module, Any, torch.optim.Optimizer | None]:
    """Rebuild the (possibly compressed) model of `ckpt`; returns (model, scheduler or None, optimizer).

    `build(name, kwargs)` makes the dense architecture; `optimizer_factory(model)` (optional) makes the
    optimizer once the model has its final structure, and its state is restored from the checkpoint.
    Without an optimizer (inference) LR schedules and distillers are left out; to resume training, pass
    the distillation `teachers` the schedule names.
    """
    arch = ckpt["arch"]
    model = build(arch["name"], dict(arch.get("kwargs") or {})).to(device)
    if dummy_input is not None:
        dummy_input = dummy_input.to(device)
    if ckpt.get("base"):
        _replay_base(model, ckpt["base"], dummy_input)
    scheduler = None
    optimizer = None
    schedule = ckpt.get("schedule")
    if schedule:
        import compress

        optimizer = optimizer_factory(model) if optimizer_factory else None
        state = ckpt.get("scheduler")
        # without an optimizer (rebuilding for inference) LR schedules and distillers are inactive and keep
        # their saved state
        scheduler = compress.dict_config(model, optimizer, schedule, dummy_input=dummy_input, teachers=teachers)
        if state is not None:
            scheduler.load_state_dict(state)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        raise CheckpointError(f"the weights in the checkpoint do not fit the rebuilt '{arch['name']}' model "
                              f"({str(err)[:400]}); the checkpoint's schedule or architecture options were "
                              f"changed after it was written") from err
    if optimizer_factory is not None:
        if optimizer is None:
            optimizer = optimizer_factory(model)
        if ckpt.get("optimizer") is not None:
            optimizer.load_state_dict(ckpt["optimizer"])
    return model, scheduler, optimizer


def base_record(ckpt: dict[str, Any]) -> dict[str, Any] | None:
    """The 'base' of a run starting from `ckpt`'s weights: the structure its schedule (and its own base) gave
    the model, replayed by `rebuild_model` before the new run's schedule; None for a never-compressed model.
    Of the scheduler state only the structural components' (thinning recipes) are kept: no masks, no teacher
    copy or connectors of a distiller, no pruner state, which the replay drops anyway."""
    from compress.scheduler import STRUCTURAL_KINDS

    if not ckpt.get("schedule"):
        return ckpt.get("base")
    state = ckpt.get("scheduler")
    if state is not None:
        state = {**state, "masks": {"masks": {}},
                 "policies": {key: value for key, value in (state.get("policies") or {}).items()
                              if key.split(":", 1)[0] in STRUCTURAL_KINDS}}
    return {"schedule": ckpt["schedule"], "scheduler": state, "base": ckpt.get("base")}


def _replay_base(model: nn.Module, base: dict[str, Any], dummy_input: torch.Tensor | None) -> None:
    """Give `model` the structure of `base` (thinning replayed, oldest first); that schedule's masks are dropped
    (the weights' zeros stay, the run's own schedule decides what stays pruned)."""
    import compress

    if base.get("base"):
        _replay_base(model, base["base"], dummy_input)
    scheduler = compress.dict_config(model, None, base["schedule"], dummy_input=dummy_input)
    if base.get("scheduler") is not None:
        scheduler.load_state_dict(base["scheduler"])
    for name in list(scheduler.masks):
        scheduler.ctx.masks.remove(name)  # its gradient hooks go too
