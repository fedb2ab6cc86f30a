"""What one step of the analysis prunes: a weight's group at one level, applied in place and undone."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from compress.masks import canonical
from compress.pruning.criteria import count_to_prune, lowest, magnitude_level_mask
from compress.pruning.groups import GroupResolver, group_importance, group_mask

from .evaluation import Metrics

SenseType = Literal["element", "filter", "channel"]
SENSE_TYPES: tuple[str, ...] = ("element", "filter", "channel")


def prunable_weights(model: nn.Module) -> list[str]:
    """Canonical names of the weights sensitivity analysis visits: parameters of 2+ dimensions."""
    return [canonical(n) for n, p in model.named_parameters() if p.dim() >= 2]


def pruned_tensors(params: Mapping[str, torch.Tensor], name: str, level: float, sense_type: str,
                   resolver: GroupResolver) -> dict[str, torch.Tensor]:
    """The new values of every tensor that pruning `name` to `level` changes (the group's members)."""
    weight = params[name].detach()
    if sense_type == "element":
        return {name: weight * magnitude_level_mask(weight, level)}
    group = resolver.group(name, "filters" if sense_type == "filter" else "channels")
    scores = group_importance(group, params, 1)
    keep = ~lowest(scores, count_to_prune(level, group.size))
    masks = group_mask(group, keep, {n: params[n].shape for n in group.params})
    return {n: params[n].detach() * m.to(device=params[n].device, dtype=params[n].dtype)
            for n, m in masks.items()}


@dataclass
class Step:
    """One (weight, level) of the analysis and what pruning it does."""

    name: str
    level: float
    new_values: dict[str, torch.Tensor]
    actual: float
    changed: bool


@dataclass
class Plan:
    """The weights and levels to visit, how to prune them, and the parameters they live in."""

    params: dict[str, nn.Parameter]
    names: list[str]
    levels: list[float]
    sense_type: str
    resolver: GroupResolver

    def members(self, name: str) -> list[str]:
        """The parameters that pruning `name` changes (its group's members for filters / channels)."""
        if self.sense_type == "element":
            return [name]
        return list(self.resolver.group(name, "filters" if self.sense_type == "filter" else "channels").params)

    def steps(self, name: str) -> list[Step]:
        """One step per level for weight `name`; `changed` is False where the level prunes nothing new."""
        out = []
        for level in self.levels:
            new = pruned_tensors(self.params, name, level, self.sense_type, self.resolver)
            changed = any(not torch.equal(v, self.params[n].detach()) for n, v in new.items())
            actual = float((new[name] == 0).sum().item()) / new[name].numel()
            out.append(Step(name, level, new, actual, changed))
        return out


def with_values(params: Mapping[str, nn.Parameter], new_values: Mapping[str, torch.Tensor],
                run: Callable[[], Metrics]) -> Metrics:
    """Put `new_values` into the parameters, run, and copy the originals back (also on error)."""
    originals = {n: params[n].detach().clone() for n in new_values}
    try:
        with torch.no_grad():
            for n, v in new_values.items():
                params[n].copy_(v)
        return run()
    finally:
        with torch.no_grad():
            for n, v in originals.items():
                params[n].copy_(v)
