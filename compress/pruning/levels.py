"""How much to prune: level schedules, pure functions of how far through its policy a pruner is."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConstantLevel:
    """The same amount at every scheduled step (one-shot pruners, thresholds)."""

    value: float

    def level(self, fraction: float) -> float:
        """The amount at `fraction` (0 = first scheduled step, 1 = last)."""
        return self.value


@dataclass(frozen=True)
class AGPLevel:
    """Automated gradual pruning (Zhu & Gupta 2017): s_f + (s_i - s_f)(1 - fraction)^3.

    `fraction` is (t - t0) / span, so the level is `initial` at the first scheduled step and exactly
    `final` at the last.
    """

    initial: float
    final: float

    def level(self, fraction: float) -> float:
        """The target sparsity at `fraction` of the schedule."""
        if fraction >= 1.0:
            return self.final
        return self.final + (self.initial - self.final) * (1.0 - fraction) ** 3
