"""Helpers over a model's module tree: a scoped eval mode, the model inside DataParallel / DDP, parameter counts."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

#: The wrappers that hold the real model in `.module` (and add `module.` to every name).
WRAPPERS: tuple[type[nn.Module], ...] = (nn.DataParallel, nn.parallel.DistributedDataParallel)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Every module of `model` in eval mode while the block runs; each module's own mode back after, even on error.

    Each module's flag is restored, not just the top one: `model.train(was_training)` would put a frozen
    sub-module (a teacher, a BatchNorm kept in eval) back in training mode.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DataParallel / DistributedDataParallel, however many wrappers deep; else the model."""
    while isinstance(model, WRAPPERS):
        model = model.module
    return model


def nonzero_parameters(model: nn.Module) -> int:
    """Number of non-zero parameter elements (what pruning and thinning reduce)."""
    return sum(int(p.count_nonzero()) for p in model.parameters())


__all__ = ["WRAPPERS", "eval_mode", "nonzero_parameters", "unwrap"]
