"""Shared steps of the thinning tests: randomize, mask half of each group, train, predict the thin size."""
import math

import torch
import torch.nn.functional as F
from torch import nn

from compress.masks import canonical
from compress.pruning.groups import group_mask


def randomize(model: nn.Module) -> nn.Module:
    """Give BatchNorm and PReLU non-trivial values, so a wrongly kept shift or scale shows in the output."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 1.5)
            elif isinstance(m, nn.PReLU):
                m.weight.uniform_(0.1, 0.4)
            elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)) and m.bias is not None:
                m.bias.normal_(std=0.1)
    return model


def mask_half(model: nn.Module, resolver, targets) -> dict[str, torch.Tensor]:
    """Mask every other channel of each target's traced group (zeroing all members), like a pruner does;
    the masks are on the model's device."""
    shapes = {canonical(n): p.shape for n, p in model.named_parameters()}
    device = next(model.parameters()).device
    masks: dict[str, torch.Tensor] = {}
    for param, kind in targets:
        group = resolver.group(param, kind)
        keep = torch.arange(group.size, device=device) % 2 == 0
        for name, mask in group_mask(group, keep, shapes).items():
            masks[name] = masks[name] * mask if name in masks else mask
    with torch.no_grad():
        for name, p in model.named_parameters():
            if canonical(name) in masks:
                p.mul_(masks[canonical(name)])
    return masks


def train_steps(model: nn.Module, opt: torch.optim.Optimizer, store, x: torch.Tensor, y: torch.Tensor, n: int) -> None:
    """n training steps on (x, y) with the masks of `store` re-applied after each."""
    model.train()
    for _ in range(n):
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()
        store.apply()


def layer_macs(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """MACs per conv / linear layer of one sample, from the dense model's real shapes."""
    macs: dict[str, int] = {}
    names = {m: n for n, m in model.named_modules()}

    def hook(m, inputs, out):
        if isinstance(m, nn.ConvTranspose2d):
            macs[names[m]] = macs.get(names[m], 0) + inputs[0][0].numel() * m.out_channels // m.groups * math.prod(m.kernel_size)
        elif isinstance(m, nn.Conv2d):
            macs[names[m]] = macs.get(names[m], 0) + out[0].numel() * m.in_channels // m.groups * math.prod(m.kernel_size)
        elif isinstance(m, nn.Linear):
            macs[names[m]] = macs.get(names[m], 0) + out[0].numel() * m.in_features

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(x)
    for h in hs:
        h.remove()
    return macs


def predict(dense: nn.Module, step, x: torch.Tensor) -> tuple[int, int]:
    """Parameters and MACs the thin model must have, from the dense model and the kept channel counts."""
    edits = {e.name: e for e in step.layers}
    modules = dict(dense.named_modules())
    params = 0
    for mname, m in modules.items():
        for pname, p in m.named_parameters(recurse=False):
            e = edits.get(mname)
            if e is None:
                params += p.numel()
                continue
            rout, rin = len(e.keep_out) / e.out_before, len(e.keep_in) / e.in_before
            depthwise = isinstance(m, nn.Conv2d) and m.groups > 1 and m.in_channels == m.groups
            weight_like = pname == "weight" and isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))
            ratio = rout * (rin if weight_like and not depthwise else 1.0)
            params += round(p.numel() * ratio)
    macs = 0
    for name, value in layer_macs(dense, x).items():
        e = edits.get(name)
        if e is None:
            macs += value
            continue
        m = modules[name]
        depthwise = isinstance(m, nn.Conv2d) and m.groups > 1 and m.in_channels == m.groups
        ratio = len(e.keep_out) / e.out_before * (1.0 if depthwise else len(e.keep_in) / e.in_before)
        macs += round(value * ratio)
    return params, macs
