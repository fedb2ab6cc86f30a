"""Coupled channel groups: which tensor slices must be pruned together.

A structured pruner never decides on one tensor alone: it asks `GroupResolver.group(param, kind)`
for the group that the parameter's filters (or input channels) belong to, ranks the group's
channels, and masks every member. `LocalGroups` knows only the parameter's own module (a conv's
filters take its bias with them) and groups declared in the schedule (`group_dependency: Leader`);
the traced resolver of `compress.thinning` adds what the graph couples (residual adds, depthwise
convs, concat offsets, PixelShuffle), so masking and thinning always agree.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import nn

from ..masks import canonical

Kind = Literal["filters", "channels"]


@dataclass(frozen=True)
class GroupMember:
    """One tensor dimension indexed by the group's channels.

    `index_map[k]` lists the indices of this dimension that channel k of the group covers
    (None: channel k is index k). `rank` says whether the member's norm counts when channels are
    ranked by importance.
    """

    param: str
    dim: int
    index_map: tuple[tuple[int, ...], ...] | None = None
    rank: bool = True

    def indices(self, channel: int) -> tuple[int, ...]:
        """Indices of this member's dimension that belong to group channel `channel`."""
        return (channel,) if self.index_map is None else self.index_map[channel]


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that are pruned together across several tensors."""

    size: int
    members: tuple[GroupMember, ...]

    @property
    def params(self) -> list[str]:
        """Names of the member parameters, in order, without repeats."""
        return list(dict.fromkeys(m.param for m in self.members))


class GroupResolver(Protocol):
    """Answers which group a parameter's filters or input channels belong to."""

    def group(self, param: str, kind: Kind) -> ChannelGroup:
        """The group of `param`'s filters (`kind='filters'`) or input channels (`'channels'`)."""
        ...


def owner_modules(model: nn.Module) -> dict[str, tuple[str, nn.Module]]:
    """Canonical parameter name -> (canonical module name, module) owning it directly."""
    owners = {}
    for mname, module in model.named_modules():
        for pname, _ in module.named_parameters(recurse=False):
            full = f"{mname}.{pname}" if mname else pname
            owners[canonical(full)] = (canonical(mname), module)
    return owners


def filter_dim(module: nn.Module, param_name: str) -> int:
    """The dimension of a weight that indexes its module's output channels."""
    if isinstance(module, nn.modules.conv._ConvTransposeNd) and param_name.endswith("weight"):
        return 1
    return 0


def channel_dim(module: nn.Module, param_name: str) -> int:
    """The dimension of a weight that indexes its module's input channels."""
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return 0
    return 1


class LocalGroups:
    """Groups from the module alone: a weight's filters with the same module's bias."""

    def __init__(self, model: nn.Module):
        self.model = model  # read at each call: shapes change when the model is thinned

    def group(self, param: str, kind: Kind) -> ChannelGroup:
        mname, module = owner_modules(self.model)[param]
        local = param[len(mname) + 1:] if mname else param
        shape = tuple(getattr(module, local).shape)
        if len(shape) < 2:
            raise ValueError(f"'{param}' has shape {shape}: only weights of 2 or more "
                             "dimensions (conv, linear) can be pruned by filters or channels")
        if kind == "channels":
            dim = channel_dim(module, local)
            return ChannelGroup(shape[dim], (GroupMember(param, dim),))
        dim = filter_dim(module, local)
        members = [GroupMember(param, dim)]
        if local == "weight" and getattr(module, "bias", None) is not None:
            members.append(GroupMember(f"{mname}.bias" if mname else "bias", 0, rank=False))
        return ChannelGroup(shape[dim], tuple(members))


def leader_group(resolver: GroupResolver, params: Sequence[str], kind: Kind) -> ChannelGroup:
    """Distiller's `group_dependency: Leader`: all params follow the ranking of the first one."""
    groups = [resolver.group(p, kind) for p in params]
    leader = groups[0]
    members: list[GroupMember] = []
    for p, g in zip(params, groups, strict=True):
        if g.size != leader.size:
            raise ValueError(f"'{p}' has {g.size} {kind} but the leader '{params[0]}' has {leader.size}; "
                             "weights of one Leader group must have the same number")
        for m in g.members:
            if all((m.param, m.dim) != (o.param, o.dim) for o in members):
                members.append(GroupMember(m.param, m.dim, m.index_map, rank=m.rank and g is leader))
    return ChannelGroup(leader.size, tuple(members))


def group_importance(group: ChannelGroup, params: dict[str, torch.Tensor], p: int) -> torch.Tensor:
    """Importance of each channel of `group`: the sum of the ranked members' L_p norms (to the power p).

    Channels already zero in every member rank lowest, whatever their neighbours. The scores are on
    the members' device.
    """
    device = next((params[m.param].device for m in group.members), torch.device("cpu"))
    score = torch.zeros(group.size, dtype=torch.float64, device=device)
    for member in group.members:
        if not member.rank:
            continue
        w = params[member.param].detach().to(torch.float64)
        w = w.movedim(member.dim, 0).reshape(w.shape[member.dim], -1)
        per_index = w.abs().pow(p).sum(dim=1)
        if member.index_map is None:
            score += per_index
        else:
            score += torch.stack([per_index[list(ix)].sum() for ix in member.index_map])
    return score


def group_mask(group: ChannelGroup, keep: torch.Tensor, shapes: dict[str, Sequence[int]]) -> dict[str, torch.Tensor]:
    """Per-member-parameter masks that keep the channels where `keep` is True (on keep's device)."""
    masks: dict[str, torch.Tensor] = {}
    removed = torch.nonzero(~keep).flatten().tolist()
    for member in group.members:
        shape = tuple(shapes[member.param])
        mask = masks.setdefault(member.param, torch.ones(shape, device=keep.device))
        dropped = [i for k in removed for i in member.indices(k)]
        if dropped:
            mask.index_fill_(member.dim, torch.tensor(dropped, dtype=torch.long, device=keep.device), 0.0)
    return masks
