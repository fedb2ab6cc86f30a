"""The one pruner: targets that each combine a criterion (what) with a level schedule (how much)."""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

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
    """Sets masks at the steps its policy schedules: each target to its schedule's current level.

    Random criteria (DropFilter, random levels) draw from the pruner's own generator, seeded with `seed`;
    its state is saved, so a resumed run draws what the uninterrupted one would have.
    """

    def __init__(self, targets: Sequence[Target], name: str | None = None, seed: int = 0):
        self.name = name
        self.targets = list(targets)
        self.last_levels: dict[str, float] = {}
        self.generator = torch.Generator().manual_seed(seed)

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

    def claims(self, ctx: Context) -> dict[tuple[str, int | None], str]:
        """Every (parameter, dimension) this pruner may mask, with the listed weight whose group brings it.

        Structured criteria claim the dimension their coupled group indexes (filters of one tensor, input
        channels of another); element-wise ones claim the whole tensor (dimension None). Raises ValueError
        if a criterion cannot prune what it was given.
        """
        out: dict[tuple[str, int | None], str] = {}
        for t in self.expanded_targets(ctx):
            t.criterion.check(ctx, t.params)
            group = getattr(t.criterion, "group", None)
            if group is None:
                out.update({(p, None): p for p in t.params})
            else:
                out.update({(m.param, m.dim): t.params[0] for m in group(ctx, t.params).members})
        return out

    def pruned_params(self, ctx: Context) -> set[str]:
        """Names of every parameter this pruner may mask (the members of its groups included)."""
        return {name for name, _ in self.claims(ctx)}

    def prepare(self, ctx: Context) -> None:
        for t in self.expanded_targets(ctx):
            t.criterion.prepare(ctx, t.params)

    def target_masks(self, ctx: Context, target: Target, fraction: float,
                     weights: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The masks one target's criterion gives at `fraction` of the schedule (nothing is set)."""
        amount = target.schedule.level(fraction)
        for name in target.params:
            self.last_levels[name] = amount
        return target.criterion.masks(ctx, target.params, amount, ctx.masks.params if weights is None else weights,
                                      self.generator)

    def prune(self, ctx: Context, fraction: float, weights: Mapping[str, torch.Tensor] | None = None) -> None:
        """Set the masks of every target for `fraction` of the schedule (ranking `weights` if given)."""
        for t in self.expanded_targets(ctx):
            for name, mask in self.target_masks(ctx, t, fraction, weights).items():
                current = ctx.masks.masks.get(name)
                if current is not None:
                    mask.mul_(current.to(mask.dtype))  # what was pruned stays pruned
                ctx.masks.set(name, mask, ctx.optimizer)
        log.debug("pruner %s at %.3f of its schedule: %s", self.name, fraction, self.last_levels)

    def on_epoch_begin(self, ctx: Context, step: Step, timing: Timing) -> None:
        fraction = timing.pruning_fraction(step)
        if fraction is not None:
            self.prune(ctx, fraction)

    on_minibatch_begin = on_epoch_begin  # with a minibatch frequency, pruning steps are minibatches

    def _stats(self) -> list[Any]:
        found = {id(s): s for t in self.targets if (s := getattr(t.criterion, "stats", None)) is not None}
        return list(found.values())

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"last_levels": dict(self.last_levels)}
        if any(t.criterion.random for t in self.targets):
            state["rng"] = self.generator.get_state()
        for stats in self._stats():
            state.setdefault("activations", {}).update(stats.state_dict())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_levels = dict(state.get("last_levels", {}))
        if "rng" in state:
            self.generator.set_state(state["rng"])
        for stats in self._stats():
            stats.load_state_dict(state.get("activations", {}))
