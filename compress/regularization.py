"""Regularizers: loss terms added in before_backward_pass (L1, group lasso, group variance).

With `threshold_criteria`, a regularizer also zeroes, after every optimizer step of its policy, the
groups whose size (mean |w| for 'Mean_Abs', max |w| for 'Max') is at most their strength; those
groups may grow back at the next step. With the policy argument `keep_mask: true` the zeros of the
policy's last step become a pruning mask that stays (Distiller's RegularizationPolicy).
"""
from __future__ import annotations

from typing import Any, Literal

import torch

from .errors import ArgumentError
from .masks import canonical
from .policy import Component, Context, PolicyWrapper, Step, Timing
from .registry import REGULARIZERS
from .schedule_source import KeyPath

GroupLassoType = Literal["2D", "Rows", "Cols", "Channels", "Filters", "3D", "4D", "Rows+Cols", "Cols+Rows",
                         "Channels+4D", "4D+Channels"]
ThresholdCriteria = Literal["Mean_Abs", "Max"]
#: Distiller's group lasso adds a small constant under the square root of a channel's norm, so the
#: gradient of an all-zero channel stays finite.
EPSILON = 1e-8


def _groups(weight: torch.Tensor, group_type: str) -> torch.Tensor:
    """The weight as a 2-D tensor with one group per row, for one basic group type."""
    if group_type in ("Rows", "Cols"):
        if weight.dim() != 2:
            raise ValueError(f"{group_type} groups need a 2-D weight, got shape {tuple(weight.shape)}")
        return weight if group_type == "Rows" else weight.t()
    if weight.dim() != 4:
        raise ValueError(f"{group_type} groups need a 4-D conv weight, got shape {tuple(weight.shape)}")
    if group_type == "2D":
        return weight.reshape(weight.shape[0] * weight.shape[1], -1)
    if group_type in ("Filters", "3D"):
        return weight.reshape(weight.shape[0], -1)
    if group_type == "4D":
        return weight.reshape(1, -1)
    return weight.transpose(0, 1).reshape(weight.shape[1], -1)


def group_lasso(weight: torch.Tensor, group_type: str) -> torch.Tensor:
    """Sum over groups of the groups' L2 norms (Yuan & Lin 2006; Wen et al. 2016 for conv structures).

    2D: each (kh x kw) kernel; Filters/3D: each output filter; Channels: each input channel across
    all filters; 4D: the whole weight as one group; Rows / Cols: rows / columns of a 2-D weight (a Linear
    layer); 'A+B': the sum of both terms.
    """
    if "+" in group_type:
        return sum((group_lasso(weight, part) for part in group_type.split("+")), start=torch.zeros(()))
    groups = _groups(weight, group_type)
    if group_type == "Channels":
        return (groups.pow(2).sum(1) + EPSILON).sqrt().sum()
    return groups.norm(2, dim=1).sum()


def group_threshold_mask(weight: torch.Tensor, group_type: str, threshold: float, criteria: str) -> torch.Tensor:
    """{0,1} mask zeroing the groups whose mean |w| ('Mean_Abs') or max |w| ('Max') is at most `threshold`."""
    if "+" in group_type:
        mask = torch.ones_like(weight)
        for part in group_type.split("+"):
            mask = mask * group_threshold_mask(weight, part, threshold, criteria)
        return mask
    w = weight.detach()
    groups = _groups(w, group_type).abs()
    size = groups.mean(1) if criteria == "Mean_Abs" else groups.amax(1)
    keep = (size > threshold).to(w.dtype)
    if group_type in ("Rows", "2D", "Filters", "3D", "4D"):
        return keep.view(-1, 1).expand(groups.shape).reshape(w.shape)
    if group_type == "Cols":
        return keep.view(1, -1).expand(w.shape)
    return keep.view(1, -1, 1, 1).expand(w.shape).contiguous()


class Regularizer(Component):
    """Adds `strength * penalty(weight)` for each listed weight, under the instance's name."""

    def __init__(self, terms: dict[str, tuple[float, str | None]], key: str, name: str | None,
                 threshold_criteria: str | None = None, raw_names: dict[str, str] | None = None):
        self.name, self.terms, self.key = name, terms, key
        self.threshold_criteria = threshold_criteria
        self.raw_names = raw_names or {}

    def referenced_weights(self) -> list[tuple[str, KeyPath]]:
        """Every named parameter with the key path that named it."""
        return [(w, (self.key, self.raw_names.get(w, w))) for w in self.terms]

    def penalty(self, weight: torch.Tensor, group_type: str | None) -> torch.Tensor:
        """The unscaled penalty of one weight."""
        raise NotImplementedError

    def check(self, params: dict[str, torch.Tensor]) -> None:
        """Raise ValueError (naming the weight) if a group type does not fit its weight's shape."""
        for w, (_, group_type) in self.terms.items():
            if w in params and group_type is not None:
                try:
                    for part in group_type.split("+"):
                        _groups(params[w].detach(), part)
                except ValueError as exc:
                    raise ArgumentError((self.key, self.raw_names.get(w, w)), str(exc)) from None

    def threshold_mask(self, weight: torch.Tensor, strength: float, group_type: str | None) -> torch.Tensor:
        """The {0,1} mask of what thresholding zeroes (element-wise |w| <= strength by default)."""
        return (weight.detach().abs() > strength).to(weight.dtype)

    def loss(self, ctx: Context) -> torch.Tensor:
        """The regularization term for the current weights."""
        return sum((s * self.penalty(ctx.masks.params[w], g) for w, (s, g) in self.terms.items()),
                   start=torch.zeros(()))

    def before_backward_pass(self, ctx: Context, step: Step, timing: Timing) -> dict[str, torch.Tensor]:
        return {self.name or type(self).__name__: self.loss(ctx)}

    def threshold(self, ctx: Context, keep: bool = False) -> None:
        """Zero the groups at or below their strength; with `keep`, make those zeros a lasting mask."""
        if self.threshold_criteria is None:
            return
        for w, (strength, group_type) in self.terms.items():
            param = ctx.masks.params[w]
            mask = self.threshold_mask(param, strength, group_type)
            if keep:
                current = ctx.masks.masks.get(w)
                ctx.masks.set(w, mask if current is None else mask * current.to(mask.dtype), ctx.optimizer)
            else:
                with torch.no_grad():
                    param.mul_(mask)

    def on_minibatch_end(self, ctx: Context, step: Step, timing: Timing) -> None:
        self.threshold(ctx)

    def state_dict(self) -> dict[str, Any]:
        return {}


class RegularizationPolicy(PolicyWrapper):
    """A regularizer under its policy's `keep_mask`: the thresholding of the policy's last minibatch stays."""

    def on_minibatch_end(self, ctx: Context, step: Step, timing: Timing) -> None:
        last = step.epoch == timing.epochs[-1] and step.minibatch == (step.minibatches or 0) - 1
        self.inner.threshold(ctx, keep=last)


def _strength(w: str, s: Any, key: str) -> float:
    if isinstance(s, bool) or not isinstance(s, (int, float)) or s < 0:
        raise ArgumentError((key, w), f"strength must be a number >= 0, got {s!r}")
    return float(s)


def _regims(reg_regims: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """reg_regims keyed by canonical weight names, and the names as written."""
    out: dict[str, Any] = {}
    raw: dict[str, str] = {}
    for w, regime in reg_regims.items():
        name = canonical(str(w))
        if name in out and out[name] != regime:
            raise ArgumentError(("reg_regims", w), f"'{w}' and '{raw[name]}' name the same weight differently")
        out.setdefault(name, regime)
        raw.setdefault(name, str(w))
    return out, raw


@REGULARIZERS.register()
class L1Regularizer(Regularizer):
    """strength * sum |w| for each weight in reg_regims ({weight: strength}); with threshold_criteria, the
    elements with |w| <= strength are zeroed after each step."""

    def __init__(self, reg_regims: dict[str, float], threshold_criteria: ThresholdCriteria | None = None,
                 name: str | None = None):
        regims, raw = _regims(reg_regims)
        super().__init__({w: (_strength(raw[w], s, "reg_regims"), None) for w, s in regims.items()},
                         "reg_regims", name, threshold_criteria, raw)

    def penalty(self, weight: torch.Tensor, group_type: str | None) -> torch.Tensor:
        return weight.abs().sum()


def _group_terms(reg_regims: dict[str, list], valid: tuple[str, ...]) -> tuple[dict, dict[str, str]]:
    regims, raw = _regims(reg_regims)
    terms = {}
    for w, regime in regims.items():
        if not isinstance(regime, list) or len(regime) != 2 or regime[1] not in valid:
            raise ArgumentError(("reg_regims", raw[w]), f"expected [strength, group type], got {regime!r}",
                                hint=f"group types: {', '.join(valid)}")
        terms[w] = (_strength(raw[w], regime[0], "reg_regims"), regime[1])
    return terms, raw


@REGULARIZERS.register()
class GroupLassoRegularizer(Regularizer):
    """strength * sum of group L2 norms, reg_regims: {weight: [strength, group type]} with the group types
    2D, Rows, Cols, Channels, Filters / 3D, 4D and the sums Rows+Cols, Channels+4D; with threshold_criteria
    (Mean_Abs or Max) the groups of size <= strength are zeroed after each step."""

    def __init__(self, reg_regims: dict[str, list], threshold_criteria: ThresholdCriteria | None = None,
                 name: str | None = None):
        terms, raw = _group_terms(reg_regims, GroupLassoType.__args__)
        super().__init__(terms, "reg_regims", name, threshold_criteria, raw)

    def penalty(self, weight: torch.Tensor, group_type: str | None) -> torch.Tensor:
        return group_lasso(weight, group_type or "Filters")

    def threshold_mask(self, weight: torch.Tensor, strength: float, group_type: str | None) -> torch.Tensor:
        return group_threshold_mask(weight, group_type or "Filters", strength, self.threshold_criteria or "Max")


@REGULARIZERS.register()
class GroupVarianceRegularizer(Regularizer):
    """strength / variance of the input channels' L2 norms (Torfi et al. 2018): pushes the channels apart, so
    group lasso can zero the weak ones; reg_regims: {weight: [strength, 'Channels']}."""

    def __init__(self, reg_regims: dict[str, list], name: str | None = None):
        terms, raw = _group_terms(reg_regims, ("Channels",))
        super().__init__(terms, "reg_regims", name, None, raw)

    def penalty(self, weight: torch.Tensor, group_type: str | None) -> torch.Tensor:
        norms = (_groups(weight, "Channels").pow(2).sum(1) + EPSILON).sqrt()
        return 1.0 / norms.var()
