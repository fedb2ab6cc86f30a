"""Starting a new run from a trained model, the same in every app: `--load_weights CKPT` (Distiller's
--exp-load-weights-from). The run is new (its own name, optimizer, --compress schedule, epoch 0); only the
checkpoint's model comes over, with the architecture and the structure (thinning) its schedule gave it."""
from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from apps.common.options import app_checkpoint
from apputils.checkpoint import base_record, rebuild_model
from apputils.execution_env import UserError

log = logging.getLogger(__name__)

OPTION = "--load_weights"


def add_load_weights_option(g: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--load_weights CKPT (also Distiller's spelling --exp-load-weights-from)."""
    g.add_argument(OPTION, "--exp-load-weights-from", dest="load_weights", default=None, metavar="CKPT",
                   help="start this new run (its own name, optimizer, --compress schedule, epoch 0) from the model of "
                        "this train.py checkpoint of the app, dense, pruned or thinned, not quantized; its "
                        "architecture options replace the command line's")


def check_load_weights(opt: argparse.Namespace, app: str,
                       architecture: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Before the run starts: a readable checkpoint of `app` that is not quantized, not with --resume; then the
    options `architecture(ckpt)` says rebuild its model are set (one typed otherwise is refused)."""
    path = opt.load_weights
    if not path:
        return
    if opt.resume:
        raise UserError(f"{OPTION} starts a new run and --resume continues one: give one of them (a run started "
                        f"with {OPTION} resumes from its own checkpoint, which holds the weights)")
    ckpt = weights_checkpoint(path, app)
    taken = []
    for key, value in architecture(ckpt).items():
        if key in opt.given and getattr(opt, key) != value:
            raise UserError(f"--{key} {getattr(opt, key)} contradicts {OPTION} '{path}', whose model has --{key} "
                            f"{value}; leave --{key} out (the architecture comes from the checkpoint)")
        setattr(opt, key, value)
        taken.append(f"--{key} {value}")
    log.info("%s '%s': the architecture comes from the checkpoint: %s", OPTION, path, " ".join(taken))


def weights_checkpoint(path: str, app: str) -> dict[str, Any]:
    """The --load_weights checkpoint: of `app`, and its model not quantized."""
    ckpt = app_checkpoint(path, app, OPTION)
    if (ckpt.get("schedule") or {}).get("quantizers"):
        raise UserError(f"{OPTION} '{path}' holds a quantized model (its schedule has quantizers), which cannot be "
                        "the start of another schedule; give the dense or thinned checkpoint it was trained from")
    return ckpt


def load_model(ckpt: dict[str, Any], build: Callable[[str, dict[str, Any]], nn.Module], path: str,
               device: torch.device | str, dummy_input: torch.Tensor | None = None) -> nn.Module:
    """The checkpoint's model with the structure its schedule left (thinning replayed) and its weights, free of
    that schedule (its masks are not kept: the new schedule decides what is pruned)."""
    start = {"arch": ckpt["arch"], "model": ckpt["model"], "base": base_record(ckpt)}
    model, _, _ = rebuild_model(start, build, device=device, dummy_input=dummy_input)
    history = ckpt.get("history") or [{}]
    log.info("%s: the model of %s (run %s, epoch %s, validation PSNR %s dB): %d parameters%s; new optimizer, "
             "schedule and epoch count", OPTION, path, ckpt.get("run"), int(ckpt.get("epoch", -1)) + 1,
             history[-1].get("psnr", "?"), sum(p.numel() for p in model.parameters()),
             ", its schedule's structure replayed (thinning) and its masks dropped" if start["base"] else "")
    return model


__all__ = ["OPTION", "add_load_weights_option", "check_load_weights", "load_model", "weights_checkpoint"]
