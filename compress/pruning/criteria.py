"""What to prune: criteria that turn an amount (a sparsity level or a threshold) into masks.

A criterion knows nothing about time; a level schedule (compress.pruning.levels) says how much,
a policy's timing says when. Masks are returned per parameter name, so a structured criterion can
mask every member of a coupled channel group at once. Criteria rank the tensors in `weights` (the
model's parameters, or their BatchNorm-folded values when a policy asks for it) and draw random
numbers only from `rng`, the pruner's generator, so a resumed run draws the same ones.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..distributed import active, all_reduce_sum_
from ..masks import canonical
from ..policy import Context
from .groups import ChannelGroup, Kind, group_importance, group_mask, leader_group

log = logging.getLogger(__name__)

#: Added before flooring so that e.g. 0.29 * 100 prunes 29 elements, not 28.
_EPS = 1e-9

Weights = Mapping[str, torch.Tensor]


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


def kth_smallest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th smallest (1-based) of a 1-D tensor, by selection (no sort).

    On the CPU NumPy's introselect is used: torch.kthvalue took 9.4 s on AlexNet's 37.7M-element FC weight
    where np.partition took 2.9 s on the same busy machine (and a stable argsort over a minute).
    """
    if values.device.type == "cpu":
        array = values.detach().to(torch.float64 if values.dtype == torch.float64 else torch.float32).numpy()
        return torch.as_tensor(np.partition(array, k - 1)[k - 1], dtype=values.dtype)
    return values.kthvalue(k).values


@dataclass(frozen=True)
class Selection:
    """The k lowest of a tensor: the values below `threshold`, and the first `taken` of the `ties` values
    equal to it in index order (what a stable sort would rank first)."""

    threshold: torch.Tensor
    taken: int
    ties: int

    def tie_positions(self, flat: torch.Tensor) -> torch.Tensor:
        """Indices of the values equal to the threshold, in order."""
        return torch.nonzero(flat == self.threshold).flatten()


#: A CPU tensor of more than this many values is selected from within a bracket found by sampling.
_SAMPLE = 1 << 16


def _bracketed(flat: torch.Tensor, k: int) -> Selection | None:
    """Select among the values between two order statistics of a random sample that bracket rank k, so
    only a few percent of a large tensor is partitioned; None if the sample missed (then select from all)."""
    n = flat.numel()
    sample = flat[torch.randint(n, (_SAMPLE,), generator=torch.Generator().manual_seed(0))].sort().values
    rank, margin = k / n * _SAMPLE, 8 * math.sqrt(_SAMPLE)  # ~16 standard deviations of a sample rank
    lo, hi = sample[max(int(rank - margin), 0)], sample[min(int(rank + margin), _SAMPLE - 1)]
    below = flat < lo
    n_below = int(torch.count_nonzero(below))
    inside = flat <= hi
    inside &= below.logical_not_()
    candidates = flat[inside]
    if not n_below < k <= n_below + candidates.numel():
        return None
    threshold = kth_smallest(candidates, k - n_below)
    under = n_below + int(torch.count_nonzero(candidates < threshold))
    return Selection(threshold, k - under, int(torch.count_nonzero(candidates == threshold)))


def select(flat: torch.Tensor, k: int) -> Selection:
    """The k lowest (0 < k < n) of a 1-D tensor, without sorting it."""
    if flat.device.type == "cpu" and flat.numel() > 16 * _SAMPLE:
        found = _bracketed(flat, k)
        if found is not None:
            return found
    threshold = kth_smallest(flat, k).to(flat.device)
    under = int(torch.count_nonzero(flat < threshold))
    return Selection(threshold, k - under, int(torch.count_nonzero(flat == threshold)))


def lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the k lowest scores (ties broken by position, so the count is exact).

    The k-th value is selected, not sorted for. The mask is on the scores' device (a CUDA weight's scores
    index a CUDA mask).
    """
    flat = scores.flatten()
    if k >= flat.numel():
        return torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    if k <= 0:
        return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    chosen = select(flat, k)
    if chosen.taken == chosen.ties:
        return (flat <= chosen.threshold).view(scores.shape)
    out = flat < chosen.threshold
    out[chosen.tie_positions(flat)[:chosen.taken]] = True
    return out.view(scores.shape)


def magnitude_level_mask(weight: torch.Tensor, level: float, current: torch.Tensor | None = None) -> torch.Tensor:
    """Mask pruning exactly floor(level * numel) elements of smallest magnitude.

    Elements already masked rank lowest, so a rising level only ever adds to them. Built in a few passes over
    the weight (no sort), so even AlexNet's 37.7M-element FC weight takes about a second.
    """
    scores = weight.detach().abs().flatten()
    if current is not None:
        scores.masked_fill_(current.flatten() == 0, -1.0)
    k = count_to_prune(level, weight.numel())
    if k == 0:
        return torch.ones_like(weight)
    chosen = select(scores, k)
    keep = (scores > chosen.threshold).to(weight.dtype)
    if chosen.taken < chosen.ties:
        keep[chosen.tie_positions(scores)[chosen.taken:]] = 1.0
    return keep.view(weight.shape)


class Criterion:
    """Turns an amount into {param name: mask} for one target."""

    #: draws from the pruner's generator (its state is then saved with the pruner's)
    random = False

    def masks(self, ctx: Context, params: Sequence[str], amount: float, weights: Weights,
              rng: torch.Generator) -> dict[str, torch.Tensor]:
        """The masks of `params` for `amount`, ranking the tensors in `weights`."""
        raise NotImplementedError

    def check(self, ctx: Context, params: Sequence[str]) -> None:
        """Raise ValueError if the criterion cannot prune `params` of this model (called before training)."""

    def prepare(self, ctx: Context, params: Sequence[str]) -> None:
        """Set up what the criterion observes during training (called once the schedule is checked)."""


@dataclass(frozen=True)
class MagnitudeLevel(Criterion):
    """Element-wise: prune the smallest-magnitude fraction `amount` of each tensor."""

    def masks(self, ctx, params, amount, weights, rng):
        return {p: magnitude_level_mask(weights[p], amount, ctx.masks.masks.get(p)) for p in params}


@dataclass(frozen=True)
class GlobalMagnitudeLevel(Criterion):
    """Element-wise over several tensors at once: prune the smallest-magnitude fraction `amount` of all
    their elements together, so each tensor's own sparsity follows its weights' magnitudes."""

    def masks(self, ctx, params, amount, weights, rng):
        scores = []
        for p in params:
            s = weights[p].detach().abs().flatten()
            current = ctx.masks.masks.get(p)
            scores.append(s if current is None else torch.where(current.flatten().bool(), s, -1.0))
        flat = torch.cat(scores)
        keep = (~lowest(flat, count_to_prune(amount, flat.numel()))).split([s.numel() for s in scores])
        return {p: k.view(weights[p].shape).to(weights[p].dtype) for p, k in zip(params, keep, strict=True)}


@dataclass(frozen=True)
class MagnitudeThreshold(Criterion):
    """Element-wise: prune |w| <= amount (Distiller's MagnitudeParameterPruner)."""

    def masks(self, ctx, params, amount, weights, rng):
        return {p: (weights[p].detach().abs() > amount).to(weights[p].dtype) for p in params}


@dataclass(frozen=True)
class StdThreshold(Criterion):
    """Element-wise: prune |w| <= amount * std(w) (Distiller's SensitivityPruner)."""

    def masks(self, ctx, params, amount, weights, rng):
        out = {}
        for p in params:
            w = weights[p].detach()
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

    def masks(self, ctx, params, amount, weights, rng):
        group = self.group(ctx, params)
        scores = group_importance(group, weights, self.p)
        keep = ~lowest(scores, count_to_prune(amount, group.size, self.round_to))
        return group_mask(group, keep, {n: weights[n].shape for n in group.params})


@dataclass(frozen=True)
class RankedBlocks(Criterion):
    """Blocks of `shape` = (filters, channels, 1, 1) of a conv weight ranked by L1 / L2 norm; the lowest
    fraction is pruned (Distiller's `group_type: Blocks` with `block_shape`, e.g. [1, 8, 1, 1]: eight
    consecutive input channels of one filter at one kernel position)."""

    p: Literal[1, 2]
    shape: tuple[int, int, int, int]

    def check(self, ctx, params):
        r, d = self.shape[:2]
        for name in params:
            w = ctx.masks.params[name]
            if w.dim() != 4 or w.shape[0] % r or w.shape[1] % d:
                raise ValueError(f"'{name}' has shape {tuple(w.shape)}: Blocks of {list(self.shape)} need a 4-D "
                                 f"weight whose filters divide by {r} and channels by {d}")

    def masks(self, ctx, params, amount, weights, rng):
        r, d = self.shape[:2]
        out = {}
        for name in params:
            w = weights[name].detach()
            f, c = w.shape[:2]
            blocks = w.reshape(f // r, r, c // d, d, -1)
            scores = blocks.abs().sum((1, 3)) if self.p == 1 else blocks.pow(2).sum((1, 3)).sqrt()
            keep = ~lowest(scores, count_to_prune(amount, scores.numel()))
            out[name] = keep[:, None, :, None, :].expand(blocks.shape).reshape(w.shape).to(w.dtype)
        return out


@dataclass(frozen=True)
class BernoulliFilters(Criterion):
    """DropFilter (Distiller's BernoulliFilterPruner): each filter is dropped with probability `amount` and the
    kept ones are scaled by filters / kept, as inverted dropout does (all kept when a draw keeps none)."""

    random = True
    transient_only = True  # scaled masks, meant for one minibatch

    def check(self, ctx, params):
        _conv_weights_only(ctx, params, "DropFilter")

    def masks(self, ctx, params, amount, weights, rng):
        out = {}
        for name in params:
            w = weights[name]
            n = w.shape[0]
            keep = torch.bernoulli(torch.full((n,), 1.0 - amount, dtype=torch.float64), generator=rng)
            kept = float(keep.sum())
            scale = keep * (n / kept) if kept else torch.ones(n, dtype=torch.float64)
            out[name] = scale.to(device=w.device, dtype=w.dtype).view(-1, 1, 1, 1).expand(w.shape).clone()
        return out


@dataclass(frozen=True)
class RandomLevel(Criterion):
    """Ranks like `inner`, at a level drawn uniformly from [low, high] at every step (Distiller's
    RandomLevelStructureParameterPruner); the schedule's amount is not used."""

    inner: Criterion
    low: float
    high: float
    random = True

    def group(self, ctx: Context, params: Sequence[str]) -> ChannelGroup:
        """The inner criterion's group."""
        return self.inner.group(ctx, params)  # type: ignore[attr-defined]

    def masks(self, ctx, params, amount, weights, rng):
        level = self.low + (self.high - self.low) * float(torch.rand((), dtype=torch.float64, generator=rng))
        return self.inner.masks(ctx, params, level, weights, rng)


def activation_module(param: str) -> str:
    """Distiller's rule for the activation that follows a conv: `layer1.0.conv1.weight` -> `layer1.0.relu1`."""
    return ("." + canonical(param)).replace(".conv", ".relu")[1:].removesuffix(".weight")


@dataclass
class ActivationStats:
    """Per-channel statistics of activation outputs, summed by forward hooks since they were last taken.

    For each watched module: the number of values per channel, how many were zero, and their sum.
    """

    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    hooks: dict[str, Any] = field(default_factory=dict)

    def watch(self, name: str, module: nn.Module) -> None:
        """Collect the statistics of `module`'s output under `name`."""
        if name not in self.hooks:
            self.hooks[name] = module.register_forward_hook(lambda m, args, out, name=name: self._add(name, out))

    def _add(self, name: str, out: torch.Tensor) -> None:
        x = out.detach()
        dims = [d for d in range(x.dim()) if d != 1]
        row = torch.stack([torch.full((x.shape[1],), x.numel() / x.shape[1], dtype=torch.float64, device=x.device),
                           (x == 0).sum(dims).double(), x.sum(dims).double()])
        current = self.sums.get(name)
        self.sums[name] = row if current is None or current.shape != row.shape else current + row

    def take(self, name: str, statistic: str) -> torch.Tensor | None:
        """APoZ (share of zeros) or mean per channel since the last take (None if nothing was seen); under DDP
        over every rank's forward passes, so the pruned filters are the same on every rank."""
        row = self.sums.pop(name, None)
        if row is None:
            return None
        row = all_reduce_sum_(row.clone())
        return row[1] / row[0] if statistic == "apoz" else row[2] / row[0]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The running sums (plain tensors)."""
        return {n: s.clone() for n, s in self.sums.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the running sums (under DDP on rank 0 only: take() adds up the ranks' sums)."""
        self.sums = {} if active() and dist.get_rank() != 0 else {n: s.clone() for n, s in state.items()}


@dataclass(frozen=True)
class ActivationRank(Criterion):
    """Filters ranked by their output channel's activations, seen by forward hooks since the last pruning step:
    APoZ, the share of zeros (Hu et al. 2016: the highest are pruned), or the mean (the lowest are pruned).

    The activation of `x.convN.weight` is the module `x.reluN`, as in Distiller, unless `activations` names it.
    """

    statistic: Literal["apoz", "mean"]
    stats: ActivationStats = field(compare=False)
    activations: tuple[tuple[str, str], ...] = ()
    round_to: int = 1

    def module_name(self, param: str) -> str:
        """The activation module observed for `param`'s filters."""
        return dict(self.activations).get(param) or activation_module(param)

    def group(self, ctx: Context, params: Sequence[str]) -> ChannelGroup:
        """The coupled group of the weight's filters."""
        return ctx.groups.group(params[0], "filters")

    def _module(self, ctx: Context, param: str) -> nn.Module:
        modules = {canonical(n): m for n, m in ctx.model.named_modules()}
        name = self.module_name(param)
        if name not in modules or name == canonical(param).removesuffix(".weight"):
            raise ValueError(f"no activation module '{name}' for '{param}' (Distiller's rule: '.conv' -> '.relu'); "
                             "name it with the pruner's `activations: {weight: module}`")
        return modules[name]

    def check(self, ctx, params):
        _conv_weights_only(ctx, params, "activation ranking")
        for p in params:
            self._module(ctx, p)

    def prepare(self, ctx, params):
        for p in params:
            self.stats.watch(self.module_name(p), self._module(ctx, p))

    def masks(self, ctx, params, amount, weights, rng):
        param = params[0]
        per_filter = self.stats.take(self.module_name(param), self.statistic)
        if per_filter is None or per_filter.numel() != weights[param].shape[0]:
            log.info("no activation statistics of '%s' since the last step: '%s' is not pruned now",
                     self.module_name(param), param)
            return {}
        importance = -per_filter if self.statistic == "apoz" else per_filter
        return filter_scores_masks(ctx, params, importance, amount, weights, self.round_to)


def filter_scores_masks(ctx: Context, params: Sequence[str], importance: torch.Tensor, amount: float,
                        weights: Weights, round_to: int = 1) -> dict[str, torch.Tensor]:
    """Masks of the coupled filter group of `params[0]` whose channels have the lowest mean `importance`
    (one value per filter of that weight)."""
    param = params[0]
    group = ctx.groups.group(param, "filters")
    own = next(m for m in group.members if m.param == param and m.dim == 0)
    importance = importance.to(torch.float64).cpu()
    scores = torch.stack([importance[list(own.indices(k))].mean() for k in range(group.size)])
    keep = ~lowest(scores, count_to_prune(amount, group.size, round_to))
    return group_mask(group, keep.to(weights[param].device), {n: weights[n].shape for n in group.params})


def _conv_weights_only(ctx: Context, params: Sequence[str], what: str) -> None:
    for p in params:
        if ctx.masks.params[p].dim() != 4:
            raise ValueError(f"'{p}' is not a conv weight: {what} prunes conv filters")


@dataclass(frozen=True)
class GradientRank(Criterion):
    """Filters ranked by the sum of weight x gradient over the filter (the last backward pass's gradient);
    the lowest are pruned, as Distiller's GradientRankedFilterPruner does."""

    def group(self, ctx: Context, params: Sequence[str]) -> ChannelGroup:
        """The coupled group of the weight's filters."""
        return ctx.groups.group(params[0], "filters")

    def check(self, ctx, params):
        _conv_weights_only(ctx, params, "gradient ranking")

    def masks(self, ctx, params, amount, weights, rng):
        param = ctx.masks.params[params[0]]
        if param.grad is None:
            log.info("'%s' has no gradient yet: not pruned at this step", params[0])
            return {}
        importance = (param.grad.detach() * param.detach()).flatten(1).sum(1)
        return filter_scores_masks(ctx, params, importance, amount, weights)


@dataclass(frozen=True)
class RandomRank(Criterion):
    """Filters ranked at random (from the pruner's generator): a baseline for the other criteria."""

    random = True

    def group(self, ctx: Context, params: Sequence[str]) -> ChannelGroup:
        """The coupled group of the weight's filters."""
        return ctx.groups.group(params[0], "filters")

    def check(self, ctx, params):
        _conv_weights_only(ctx, params, "random ranking")

    def masks(self, ctx, params, amount, weights, rng):
        importance = torch.rand(weights[params[0]].shape[0], dtype=torch.float64, generator=rng)
        return filter_scores_masks(ctx, params, importance, amount, weights)
