"""Pruning masks: one per parameter, applied after every optimizer step so nothing revives."""
from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn


def canonical(name: str) -> str:
    """A parameter or module name without the `module` segments DataParallel / DDP add, wherever they are.

    Distiller's schedules name weights as `named_parameters()` gives them for its wrapped models:
    `module.layer1.0.conv1.weight`, or `features.module.0.weight` for AlexNet / VGG, whose `features` alone is
    wrapped. Every name a schedule, a mask or a saved state uses goes through this, so each form finds the same
    tensor in a wrapped or an unwrapped model.
    """
    if "module" not in name:
        return name
    return ".".join(part for part in name.split(".") if part != "module")


def canonical_pattern(pattern: str) -> str:
    """A regular expression over names without DataParallel's `module` segments (`features\\.module\\.0` ->
    `features\\.0`), to match canonical names."""
    return re.sub(r"(?:^|(?<=\.))module\\?\.", "", pattern)


def named_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The model's parameters by canonical name (two names that differ only by `module` segments are refused)."""
    params: dict[str, nn.Parameter] = {}
    for name, param in model.named_parameters():
        key = canonical(name)
        if key in params and params[key] is not param:
            raise ValueError(f"the model has two parameters named '{key}' once DataParallel's 'module' segments "
                             f"are removed ('{name}' is one); rename the submodule called 'module'")
        params[key] = param
    return params


class MaskStore:
    """Keeps a {0,1} mask per pruned parameter and enforces it on weights, gradients and optimizer state.

    The scheduler applies every mask after each optimizer step, so momentum or Adam moments cannot
    bring a pruned weight back (Distiller issue #53); with `mask_gradients` the gradient is masked
    too, so the optimizer never sees it.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.masks: dict[str, torch.Tensor] = {}
        self._grad_masked: set[str] = set()
        self._hooks: dict[str, Any] = {}
        self.refresh()

    def refresh(self) -> None:
        """Re-read the model's parameters (after a module was replaced, e.g. by thinning)."""
        self.params = named_parameters(self.model)
        for name in list(self._hooks):
            self._hooks.pop(name).remove()
        for name in self._grad_masked:
            self._install_grad_hook(name)

    def set(self, name: str, mask: torch.Tensor, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Set the mask of `name` and zero the masked weights and their optimizer state now."""
        param = self.params[name]
        if mask.shape != param.shape:
            raise ValueError(f"mask for '{name}' has shape {tuple(mask.shape)}, "
                             f"parameter has {tuple(param.shape)}")
        mask = mask.to(device=param.device, dtype=param.dtype)
        if name in self.masks:
            self.masks[name].copy_(mask)  # in place: gradient hooks hold this tensor
        else:
            self.masks[name] = mask
        with torch.no_grad():
            param.mul_(mask)
        if optimizer is not None:
            zero_optimizer_state(optimizer, param, mask)

    def remove(self, name: str) -> None:
        """Forget the mask of `name` (its weights keep their current values)."""
        self.masks.pop(name, None)
        self._grad_masked.discard(name)
        if name in self._hooks:
            self._hooks.pop(name).remove()

    def apply(self) -> None:
        """Multiply every masked parameter by its mask."""
        with torch.no_grad():
            for name, mask in self.masks.items():
                self.params[name].mul_(mask)

    def mask_gradients(self, name: str) -> None:
        """From now on, zero the gradient of `name` where its mask is zero."""
        if name not in self._grad_masked:
            self._grad_masked.add(name)
            self._install_grad_hook(name)

    def _install_grad_hook(self, name: str) -> None:
        def hook(grad: torch.Tensor, name: str = name) -> torch.Tensor:
            mask = self.masks.get(name)
            return grad if mask is None else grad * mask

        self._hooks[name] = self.params[name].register_hook(hook)

    def state_dict(self) -> dict[str, Any]:
        """Masks as tensors, and the names whose gradients are masked."""
        return {"masks": {n: m.detach().clone() for n, m in self.masks.items()},
                "grad_masked": sorted(self._grad_masked)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore masks (after the model has its final shapes) and enforce them."""
        for name in list(self.masks):
            self.remove(name)
        for name, mask in state["masks"].items():
            param = self.params[name]
            self.masks[name] = mask.to(device=param.device, dtype=param.dtype).clone()
        for name in state.get("grad_masked", []):
            self.mask_gradients(name)
        self.apply()


def zero_optimizer_state(optimizer: torch.optim.Optimizer, param: torch.Tensor, mask: torch.Tensor) -> None:
    """Zero momentum / Adam moments of the masked elements of `param`."""
    for value in optimizer.state.get(param, {}).values():
        if torch.is_tensor(value) and value.shape == param.shape:
            value.mul_(mask.to(value.dtype))
