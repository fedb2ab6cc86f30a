"""What to prune: criteria that turn an amount (a sparsity level or a threshold) into masks.

A criterion knows nothing about time; a level schedule (compress.pruning.levels) says how much,
a policy's timing says when. Masks are returned per parameter name, so a structured criterion can
mask every member of a coupled channel group at once.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from ..policy import Context
from .groups import ChannelGroup, Kind, group_importance, group_mask, leader_group

#: Added before flooring so that e.g. 0.29 * 100 prunes 29 elements, not 28.
_EPS = 1e-9


def count_to_prune(level: float, n: int, round_to: int = 1) -> int:
    """floor(level * n): the number of elements or channels a sparsity level prunes (never all of them).

    With `round_to` > 1 the number *kept* is rounded up to a multiple of it (capped at n), so a thinned
    layer keeps a SIMD-friendly width (CPU kernels run 8 / 16 channels at a time: 32 channels can run
    faster than 28); the level is then an upper bound.
    """
    k = min(int(math.floor(level * n + _EPS)), max(n - 1, 0)) if level > 0 else 0
    if round_to > 1 and k:
        k = n - min(n, -(-(n - k) // round_to) * round_to)
    return k


def lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the k lowest scores (ties broken by position, so the count is exact).

    The mask is on the scores' device (a CUDA weight's scores index a CUDA mask).
    """
    out = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        out[torch.argsort(scores.flatten(), stable=True)[:k]] = True
    return out.view(scores.shape)


def magnitude_level_mask(weight: torch.Tensor, level: float, current: torch.Tensor | None = None) -> torch.Tensor:
    """Mask pruning exactly floor(level * numel) elements of smallest magnitude.

    Elements already masked rank lowest, so a rising level only ever adds to them.
    """
    scores = weight.detach().abs().to(torch.float64)
    if current is not None:
        scores = torch.where(current.bool(), scores, torch.full_like(scores, -1.0))
    return (~lowest(scores, count_to_prune(level, weight.numel()))).to(weight.dtype)


class Criterion:
    """Turns an amount into {param name: mask} for one target."""

    def masks(self, ctx: Context, params: Sequence[str], amount: float) -> dict[str, torch.Tensor]:
        raise NotImplementedError


@dataclass(frozen=True)
class MagnitudeLevel(Criterion):
    """Element-wise: prune the smallest-magnitude fraction `amount` of each tensor."""

    def masks(self, ctx: Context, params: Sequence[str], amount: float) -> dict[str, torch.Tensor]:
        return {p: magnitude_level_mask(ctx.masks.params[p], amount, ctx.masks.masks.get(p)) for p in params}


@dataclass(frozen=True)
class GlobalMagnitudeLevel(Criterion):
    """Element-wise over several tensors at once: prune the smallest-magnitude fraction `amount` of all
    their elements together, so each tensor's own sparsity follows its weights' magnitudes."""

    def masks(self, ctx: Context, params: Sequence[str], amount: float) -> dict[str, torch.Tensor]:
        scores = []
        for p in params:
            s = ctx.masks.params[p].detach().abs().to(torch.float64).flatten()
            current = ctx.masks.masks.get(p)
            scores.append(s if current is None else torch.where(current.flatten().bool(), s, -1.0))
        flat = torch.cat(scores)
        keep = (~lowest(flat, count_to_prune(amount, flat.numel()))).split([s.numel() for s in scores])
        return {p: k.view(ctx.masks.params[p].shape).to(ctx.masks.params[p].dtype) for p, k in zip(params, keep,
                                                                                                  strict=True)}


@dataclass(frozen=True)
class MagnitudeThreshold(Criterion):
    """Element-wise: prune |w| <= amount (Distiller's MagnitudeParameterPruner)."""

    def masks(self, ctx: Context, params: Sequence[str], amount: float) -> dict[str, torch.Tensor]:
        return {p: (ctx.masks.params[p].detach().abs() > amount).to(ctx.masks.params[p].dtype) for p in params}


@dataclass(frozen=True)
class StdThreshold(Criterion):
    """Element-wise: prune |w| <= amount * std(w) (Distiller's SensitivityPruner)."""

    def masks(self, ctx: Context, params: Sequence[str], amount: float) -> dict[str, torch.Tensor]:
        out = {}
        for p in params:
            w = ctx.masks.params[p].detach()
            out[p] = (w.abs() > w.std() * amount).to(w.dtype)
        return out


@dataclass(frozen=True)
class RankedStructures(Criterion):
    """Structured: rank the channels of a coupled group by L1 or L2 norm and prune the lowest fraction.

    `params` is one weight, or with `leader` several weights ranked by the first one's norms.
    """

    p: Literal[1, 2]
    kind: Kind
    leader: bool = False
    round_to: int = 1

    def group(self, ctx: Context, params: Sequence[str]) -> ChannelGroup:
        """The coupled group the target's channels belong to."""
        if self.leader:
            return leader_group(ctx.groups, params, self.kind)
        return ctx.groups.group(params[0], self.kind)

    def masks(self, ctx: Context, params: Sequence[str], amount: float) -> dict[str, torch.Tensor]:
        group = self.group(ctx, params)
        scores = group_importance(group, ctx.masks.params, self.p)
        keep = ~lowest(scores, count_to_prune(amount, group.size, self.round_to))
        shapes = {n: ctx.masks.params[n].shape for n in group.params}
        return group_mask(group, keep, shapes)
