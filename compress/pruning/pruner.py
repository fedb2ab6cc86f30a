"""The one pruner: targets that each combine a criterion (what) with a level schedule (how much)."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..policy import Component, Context, Step, Timing
from ..schedule_source import KeyPath
from .criteria import Criterion
from .levels import AGPLevel, ConstantLevel

log = logging.getLogger(__name__)

#: A target that applies to every weight (2-D or more) the pruner does not name explicitly.
WILDCARD = "*"

Level = ConstantLevel | AGPLevel


@dataclass(frozen=True)
class Target:
    """Parameters pruned together by one criterion to the level a schedule gives.

    `params` is one name, several names ranked as one group (leader first), or WILDCARD.
    `key_path` says where the schedule declared it, for error messages.
    """

    params: tuple[str, ...]
    criterion: Criterion
    schedule: Level
    key_path: KeyPath = ()


class Pruner(Component):
    """Sets masks at the steps its policy schedules: each target to its schedule's current level."""

    def __init__(self, targets: Sequence[Target], name: str | None = None):
        self.name = name
        self.targets = list(targets)
        self.last_levels: dict[str, float] = {}

    def referenced_weights(self) -> list[tuple[str, KeyPath]]:
        """Every explicitly named parameter with the key path that named it."""
        return [(p, t.key_path + ((i,) if len(t.params) > 1 else ()))
                for t in self.targets for i, p in enumerate(t.params) if p != WILDCARD]

    def expanded_targets(self, ctx: Context) -> list[Target]:
        """Targets with the wildcard replaced by every unnamed weight of 2 or more dimensions."""
        named = {p for p, _ in self.referenced_weights()}
        out = []
        for t in self.targets:
            if t.params == (WILDCARD,):
                out += [Target((n,), t.criterion, t.schedule, t.key_path)
                        for n, p in ctx.masks.params.items() if p.dim() >= 2 and n not in named]
            else:
                out.append(t)
        return out

    def pruned_params(self, ctx: Context) -> set[str]:
        """Names of every parameter this pruner may mask (the members of its groups included)."""
        names: set[str] = set()
        for t in self.expanded_targets(ctx):
            group = getattr(t.criterion, "group", None)
            names.update(group(ctx, t.params).params if group else t.params)
        return names

    def prune(self, ctx: Context, fraction: float) -> None:
        """Set the masks of every target for `fraction` of the schedule."""
        for t in self.expanded_targets(ctx):
            amount = t.schedule.level(fraction)
            for name, mask in t.criterion.masks(ctx, t.params, amount).items():
                current = ctx.masks.masks.get(name)
                if current is not None:
                    mask = mask * current.to(mask.dtype)  # what was pruned stays pruned
                ctx.masks.set(name, mask, ctx.optimizer)
            for name in t.params:
                self.last_levels[name] = amount
        log.debug("pruner %s at %.3f of its schedule: %s", self.name, fraction, self.last_levels)

    def on_epoch_begin(self, ctx: Context, step: Step, timing: Timing) -> None:
        if timing.minibatch_frequency is None:
            self.prune(ctx, timing.fraction(step.epoch))

    def on_minibatch_begin(self, ctx: Context, step: Step, timing: Timing) -> None:
        if step.minibatch is not None and timing.minibatch_scheduled(step.epoch, step.minibatch):
            self.prune(ctx, timing.fraction(step.epoch, step.minibatch, step.minibatches))

    def state_dict(self) -> dict[str, Any]:
        return {"last_levels": dict(self.last_levels)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_levels = dict(state.get("last_levels", {}))


