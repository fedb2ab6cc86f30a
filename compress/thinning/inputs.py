"""The input a thinning trace runs on: a tensor, a shape, a Distiller dataset name, or the first forward.

Tracing needs only the shapes of one sample, so every source becomes zeros of the model's dtype on
the model's device; a forward's real batch is cut to its first sample.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .graph import ThinningError

#: Distiller's dataset names and the one-sample input (N, C, H, W) each stands for.
DATASET_SHAPES: dict[str, tuple[int, ...]] = {
    "cifar10": (1, 3, 32, 32),
    "imagenet": (1, 3, 224, 224),
    "mnist": (1, 1, 28, 28),
}

#: One input shape, or one per positional input of forward().
Shape = Sequence[int] | Sequence[Sequence[int]]


def is_shape(value: Any) -> bool:
    """Whether `value` is a non-empty list of positive ints, or a non-empty list of such lists."""
    def one(v: Any) -> bool:
        return (isinstance(v, (list, tuple)) and len(v) > 0
                and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in v))

    return one(value) or (isinstance(value, (list, tuple)) and len(value) > 0 and all(one(v) for v in value))


def zeros_input(model: nn.Module, shape: Shape) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Zeros of `shape` (a tuple of tensors for a list of shapes) on the model's device, in its float dtype."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    if all(isinstance(d, int) for d in shape):
        return torch.zeros(tuple(shape), device=device, dtype=dtype)
    return tuple(torch.zeros(tuple(s), device=device, dtype=dtype) for s in shape)


def one_sample(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Zeros shaped like the first sample of each positional tensor a forward() received."""
    if kwargs or not args or not all(torch.is_tensor(a) for a in args):
        got = ", ".join([type(a).__name__ for a in args] + [f"{k}=" for k in kwargs]) or "no arguments"
        raise ThinningError(f"the model's first forward got {got}: the thinning trace can only take its input "
                            "from positional tensors; give the schedule's `input_shape: [N, C, H, W]` or pass "
                            "dummy_input= to compress.file_config / dict_config")
    samples = tuple(torch.zeros_like(a[:1] if a.dim() else a) for a in args)
    return samples[0] if len(samples) == 1 else samples


__all__ = ["DATASET_SHAPES", "Shape", "is_shape", "one_sample", "zeros_input"]
