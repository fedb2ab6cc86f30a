"""Size and cost of a model: parameter count and multiply-accumulates of its conv and linear layers."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    """Number of parameter elements."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, dummy_input: Any) -> int:
    """Multiply-accumulates of one forward pass per input sample, over conv, transposed-conv and linear layers.

    Counted from the real output shapes seen on `dummy_input` (bias additions, normalisation and
    activations are not counted, as is usual for MACs).
    """
    total = 0

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        batch = output.shape[0]
        if isinstance(module, nn.modules.conv._ConvTransposeNd):
            x = inputs[0]
            per_in = module.out_channels // module.groups * math.prod(module.kernel_size)
            total += x.numel() // batch * per_in
        elif isinstance(module, nn.modules.conv._ConvNd):
            per_out = module.in_channels // module.groups * math.prod(module.kernel_size)
            total += output.numel() // batch * per_out
        elif isinstance(module, nn.Linear):
            total += output.numel() // batch * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            model(*dummy_input) if isinstance(dummy_input, (tuple, list)) else model(dummy_input)
    finally:
        for m, mode in modes.items():
            m.training = mode
        for h in handles:
            h.remove()
    return total
