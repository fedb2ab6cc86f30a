"""Size and cost of a model: parameter count and multiply-accumulates of its conv and linear layers."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..modules import eval_mode


def count_params(model: nn.Module) -> int:
    """Number of parameter elements."""
    return sum(p.numel() for p in model.parameters())


def _batch(t: torch.Tensor, batched_dims: int) -> int:
    """The batch size of a layer input / output (1 for an unbatched tensor)."""
    return int(t.shape[0]) if t.dim() == batched_dims and t.dim() > 0 else 1


def call_macs(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[int, int, int]:
    """(dense MACs, effective MACs, batch size) of one call of a conv / transposed conv / linear layer,
    MACs per sample: the number of sites the weight is applied at times numel(W) (dense) or the number of
    non-zero weights (effective: what a sparse kernel would do)."""
    w = module.weight.detach()
    numel, nnz = w.numel(), int((w != 0).sum())
    if isinstance(module, nn.modules.conv._ConvTransposeNd):  # every input site scatters the whole weight
        n = _batch(x, w.dim())
        sites = math.prod(x.shape[-(w.dim() - 2):]) if w.dim() > 2 else 1
    elif isinstance(module, nn.modules.conv._ConvNd):  # every output site gathers the whole weight
        n = _batch(y, w.dim())
        sites = math.prod(y.shape[-(w.dim() - 2):]) if w.dim() > 2 else 1
    else:  # Linear: every row of the input (all dims but the last) is one matrix-vector product
        n = _batch(x, 3) if x.dim() >= 3 else _batch(x, 2)
        sites = math.prod(x.shape[:-1]) // n
    return sites * numel, sites * nnz, n


def count_macs(model: nn.Module, dummy_input: Any) -> int:
    """Multiply-accumulates of one forward pass per input sample, over conv, transposed-conv and linear layers.

    Counted from the real shapes seen on `dummy_input` (bias additions, normalisation and activations
    are not counted, as is usual for MACs).
    """
    total = 0

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        total += call_macs(module, inputs[0], output)[0]

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    try:
        with eval_mode(model), torch.no_grad():
            model(*dummy_input) if isinstance(dummy_input, (tuple, list)) else model(dummy_input)
    finally:
        for h in handles:
            h.remove()
    return total
