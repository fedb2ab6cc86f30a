"""When components run: policy timing, the step a hook is called at, and the policy kinds."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .masks import MaskStore
    from .pruning.groups import GroupResolver


@dataclass(frozen=True)
class Timing:
    """The epochs a policy runs at, and optionally every how many minibatches inside them."""

    epochs: tuple[int, ...]
    minibatch_frequency: int | None = None

    @classmethod
    def from_range(cls, starting_epoch: int, ending_epoch: int, frequency: int = 1,
                   minibatch_frequency: int | None = None) -> Timing:
        """Distiller's `starting_epoch / ending_epoch / frequency` (ending_epoch excluded)."""
        return cls(tuple(range(starting_epoch, ending_epoch, frequency)), minibatch_frequency)

    def active(self, epoch: int) -> bool:
        """Whether the policy runs during `epoch`."""
        return epoch in self.epochs

    def minibatch_scheduled(self, epoch: int, minibatch: int) -> bool:
        """Whether a minibatch-frequency policy acts at this minibatch."""
        f = self.minibatch_frequency
        return f is not None and self.active(epoch) and minibatch % f == 0

    def pruning_fraction(self, step: Step) -> float | None:
        """The schedule fraction if a pruner acts at `step` (an epoch's begin without a minibatch frequency, or a
        scheduled minibatch with one), else None."""
        if step.minibatch is None:
            return self.fraction(step.epoch) if self.minibatch_frequency is None else None
        if self.minibatch_scheduled(step.epoch, step.minibatch):
            return self.fraction(step.epoch, step.minibatch, step.minibatches)
        return None

    def fraction(self, epoch: int, minibatch: int = 0, minibatches: int | None = None) -> float:
        """How far through its scheduled steps the policy is: 0 at the first, 1 at the last.

        Time is measured in epochs (plus minibatch / minibatches_per_epoch with a minibatch
        frequency), so a uniform schedule gives exactly Distiller's (t - t0) / span.
        """
        first, last = self.epochs[0], float(self.epochs[-1])
        now = float(epoch)
        f = self.minibatch_frequency
        if f is not None and minibatches:
            now += minibatch / minibatches
            last += ((minibatches - 1) // f) * f / minibatches
        if last <= first:
            return 1.0
        return min(max((now - first) / (last - first), 0.0), 1.0)


@dataclass
class Context:
    """What every hook may touch: the model, its optimizer, the masks and the channel groups."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer | None
    masks: MaskStore
    groups: GroupResolver
    dummy_input: torch.Tensor | None = None
    scheduler: Any = None  # the CompressionScheduler, set by it; distillation reads the thinning done so far


@dataclass(frozen=True)
class Step:
    """Where the training loop is when a hook fires (minibatch fields are None at epoch hooks;
    `loss` is the task loss, given in before_backward_pass only)."""

    epoch: int
    minibatch: int | None = None
    minibatches: int | None = None
    optimizer: torch.optim.Optimizer | None = None
    metrics: dict[str, float] | None = None
    loss: torch.Tensor | None = None


class Component:
    """Base of everything a schedule builds. Each hook gets the same (ctx, step, timing) arguments
    and is called only in the epochs its policy schedules."""

    def prepare(self, ctx: Context) -> None:
        """Change the model if the component must (called once, after the whole schedule is checked)."""

    def on_epoch_begin(self, ctx: Context, step: Step, timing: Timing) -> None:
        """Start of a scheduled epoch."""

    def on_minibatch_begin(self, ctx: Context, step: Step, timing: Timing) -> None:
        """Before the forward pass of a minibatch."""

    def before_backward_pass(self, ctx: Context, step: Step, timing: Timing) -> dict[str, torch.Tensor]:
        """Named loss terms to add to the training loss."""
        return {}

    def before_parameter_optimization(self, ctx: Context, step: Step, timing: Timing) -> None:
        """After backward, before optimizer.step()."""

    def on_minibatch_end(self, ctx: Context, step: Step, timing: Timing) -> None:
        """After optimizer.step()."""

    def on_epoch_end(self, ctx: Context, step: Step, timing: Timing) -> None:
        """End of a scheduled epoch."""

    def state_dict(self) -> dict[str, Any]:
        """Plain data and tensors needed to resume exactly."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what state_dict() returned."""


class Inactive(Component):
    """A declared component this build cannot run (an LR schedule built without an optimizer).

    It was checked with the rest of the schedule, none of its hooks is called, and the state it is
    given is kept as it is, so a checkpoint of a full build loads here and is saved back unchanged.
    """

    def __init__(self, reason: str):
        self.reason = reason
        self.saved: dict[str, Any] = {}

    def state_dict(self) -> dict[str, Any]:
        return dict(self.saved)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.saved = dict(state)


class PolicyWrapper(Component):
    """A component under one policy's arguments: forwards every hook, the state and any other attribute
    (referenced_weights, claims, ...) to the wrapped component; subclasses override what the arguments change."""

    def __init__(self, inner: Component):
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def prepare(self, ctx: Context) -> None:
        self.inner.prepare(ctx)

    def on_epoch_begin(self, ctx: Context, step: Step, timing: Timing) -> None:
        self.inner.on_epoch_begin(ctx, step, timing)

    def on_minibatch_begin(self, ctx: Context, step: Step, timing: Timing) -> None:
        self.inner.on_minibatch_begin(ctx, step, timing)

    def before_backward_pass(self, ctx: Context, step: Step, timing: Timing) -> dict[str, torch.Tensor]:
        return self.inner.before_backward_pass(ctx, step, timing)

    def before_parameter_optimization(self, ctx: Context, step: Step, timing: Timing) -> None:
        self.inner.before_parameter_optimization(ctx, step, timing)

    def on_minibatch_end(self, ctx: Context, step: Step, timing: Timing) -> None:
        self.inner.on_minibatch_end(ctx, step, timing)

    def on_epoch_end(self, ctx: Context, step: Step, timing: Timing) -> None:
        self.inner.on_epoch_end(ctx, step, timing)

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)


@dataclass
class Policy:
    """A component of one kind with its timing and its policy arguments (the YAML `args`)."""

    kind: str                      # 'pruner', 'regularizer', 'quantizer', 'lr_scheduler', 'extension', 'distiller'
    instance_name: str
    component: Any
    timing: Timing
    args: dict[str, Any] = field(default_factory=dict)
