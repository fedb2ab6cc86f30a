"""Regularizers: loss terms added in before_backward_pass (L1, and group lasso for structured sparsity)."""
from __future__ import annotations

from typing import Any, Literal

import torch

from .errors import ArgumentError
from .policy import Component, Context, Step, Timing
from .registry import REGULARIZERS
from .schedule_source import KeyPath

GroupLassoType = Literal["2D", "Rows", "Cols", "Channels", "Filters", "3D"]


def group_lasso(weight: torch.Tensor, group_type: str) -> torch.Tensor:
    """Sum over groups of the groups' L2 norms (Yuan & Lin 2006; Wen et al. 2016 for conv structures).

    2D: each (kh x kw) kernel; Filters/3D: each output filter; Channels: each input channel across
    all filters; Rows / Cols: rows / columns of a 2-D weight (a Linear layer).
    """
    if group_type in ("Rows", "Cols"):
        if weight.dim() != 2:
            raise ValueError(f"{group_type} groups need a 2-D weight, got shape {tuple(weight.shape)}")
        return weight.norm(2, dim=1 if group_type == "Rows" else 0).sum()
    if weight.dim() != 4:
        raise ValueError(f"{group_type} groups need a 4-D conv weight, got shape {tuple(weight.shape)}")
    if group_type == "2D":
        return weight.reshape(weight.shape[0] * weight.shape[1], -1).norm(2, dim=1).sum()
    if group_type in ("Filters", "3D"):
        return weight.reshape(weight.shape[0], -1).norm(2, dim=1).sum()
    return weight.transpose(0, 1).reshape(weight.shape[1], -1).norm(2, dim=1).sum()


class Regularizer(Component):
    """Adds `strength * penalty(weight)` for each listed weight, under the instance's name."""

    def __init__(self, terms: dict[str, tuple[float, str | None]], key: str, name: str | None):
        self.name, self.terms, self.key = name, terms, key

    def referenced_weights(self) -> list[tuple[str, KeyPath]]:
        """Every named parameter with the key path that named it."""
        return [(w, (self.key, w)) for w in self.terms]

    def penalty(self, weight: torch.Tensor, group_type: str | None) -> torch.Tensor:
        """The unscaled penalty of one weight."""
        raise NotImplementedError

    def loss(self, ctx: Context) -> torch.Tensor:
        """The regularization term for the current weights."""
        return sum((s * self.penalty(ctx.masks.params[w], g) for w, (s, g) in self.terms.items()),
                   start=torch.zeros(()))

    def before_backward_pass(self, ctx: Context, step: Step, timing: Timing) -> dict[str, torch.Tensor]:
        return {self.name or type(self).__name__: self.loss(ctx)}

    def state_dict(self) -> dict[str, Any]:
        return {}


def _strength(w: str, s: Any, key: str) -> float:
    if isinstance(s, bool) or not isinstance(s, (int, float)) or s < 0:
        raise ArgumentError((key, w), f"strength must be a number >= 0, got {s!r}")
    return float(s)


@REGULARIZERS.register()
class L1Regularizer(Regularizer):
    """strength * sum |w| for each weight in reg_regims ({weight: strength})."""

    def __init__(self, reg_regims: dict[str, float], name: str | None = None):
        super().__init__({w: (_strength(w, s, "reg_regims"), None) for w, s in reg_regims.items()},
                         "reg_regims", name)

    def penalty(self, weight: torch.Tensor, group_type: str | None) -> torch.Tensor:
        return weight.abs().sum()


@REGULARIZERS.register()
class GroupLassoRegularizer(Regularizer):
    """strength * sum of group L2 norms, reg_regims: {weight: [strength, '2D'|'Rows'|'Cols'|'Channels'|'Filters'|'3D']}."""

    def __init__(self, reg_regims: dict[str, list], name: str | None = None):
        terms = {}
        valid = GroupLassoType.__args__
        for w, regime in reg_regims.items():
            if not isinstance(regime, list) or len(regime) != 2 or regime[1] not in valid:
                raise ArgumentError(("reg_regims", w), f"expected [strength, group type], got {regime!r}",
                                    hint=f"group types: {', '.join(valid)}")
            terms[w] = (_strength(w, regime[0], "reg_regims"), regime[1])
        super().__init__(terms, "reg_regims", name)

    def penalty(self, weight: torch.Tensor, group_type: str | None) -> torch.Tensor:
        return group_lasso(weight, group_type or "Filters")
