"""CompressionScheduler: fires the schedule's policies from hooks inside the user's training loop."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .policy import Component, Context, Policy, Step

#: Policy kinds whose components change the model's structure; their state is restored first.
STRUCTURAL_KINDS = ("extension", "quantizer")
#: Policy kinds that run before the others at every hook (a `teacher: self` copy is taken before this
#: epoch's pruning / quantization) and restore their state on the freshly built model, before any other.
FIRST_KINDS = ("distiller",)


def _overrides(component: Any, hook: str) -> bool:
    return getattr(type(component), hook, None) is not getattr(Component, hook)


class CompressionScheduler:
    """Calls each policy's component in the epochs the policy schedules, and keeps pruned weights at zero.

    Build it with `compress.file_config` / `compress.dict_config`; call the hooks as in DESIGN.md §2.
    """

    def __init__(self, ctx: Context, policies: list[Policy], schedule: dict[str, Any] | None = None):
        self.ctx = ctx
        self.policies = policies
        self.schedule = schedule
        self._active: dict[tuple[int, str], list[tuple[Callable, Policy]]] = {}
        ctx.scheduler = self

    @property
    def model(self) -> torch.nn.Module:
        return self.ctx.model

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """The current pruning masks by parameter name."""
        return self.ctx.masks.masks

    def _calls(self, epoch: int, hook: str) -> list[tuple[Callable, Policy]]:
        """Bound hooks of the policies active in `epoch` that implement `hook` (cached per epoch)."""
        key = (epoch, hook)
        calls = self._active.get(key)
        if calls is None:
            if len(self._active) > 64:
                self._active.clear()
            ordered = sorted(self.policies, key=lambda p: p.kind not in FIRST_KINDS)
            calls = [(getattr(p.component, hook), p) for p in ordered
                     if p.timing.active(epoch) and _overrides(p.component, hook)]
            self._active[key] = calls
        return calls

    def _use(self, optimizer: torch.optim.Optimizer | None) -> None:
        if optimizer is not None:
            self.ctx.optimizer = optimizer

    def on_epoch_begin(self, epoch: int, optimizer: torch.optim.Optimizer | None = None, **_: Any) -> None:
        """Start of an epoch: pruners set this epoch's masks."""
        self._use(optimizer)
        step = Step(epoch, optimizer=self.ctx.optimizer)
        for call, policy in self._calls(epoch, "on_epoch_begin"):
            call(self.ctx, step, policy.timing)

    def on_minibatch_begin(self, epoch: int, minibatch_id: int, minibatches_per_epoch: int,
                           optimizer: torch.optim.Optimizer | None = None) -> None:
        """Before the forward pass: minibatch-frequency pruners act here."""
        calls = self._calls(epoch, "on_minibatch_begin")
        if calls:
            self._use(optimizer)
            step = Step(epoch, minibatch_id, minibatches_per_epoch, self.ctx.optimizer)
            for call, policy in calls:
                call(self.ctx, step, policy.timing)

    def before_backward_pass(self, epoch: int, minibatch_id: int, minibatches_per_epoch: int,
                             loss: torch.Tensor, optimizer: torch.optim.Optimizer | None = None,
                             return_loss_components: bool = False):
        """Add the regularizers' and distillers' terms to `loss`; with return_loss_components, also return them by name."""
        components: dict[str, torch.Tensor] = {}
        calls = self._calls(epoch, "before_backward_pass")
        if calls:
            step = Step(epoch, minibatch_id, minibatches_per_epoch, optimizer or self.ctx.optimizer, loss=loss)
            for call, policy in calls:
                components.update(call(self.ctx, step, policy.timing))
            for term in components.values():
                loss = loss + term
        return (loss, components) if return_loss_components else loss

    def before_parameter_optimization(self, epoch: int, minibatch_id: int, minibatches_per_epoch: int,
                                      optimizer: torch.optim.Optimizer | None = None) -> None:
        """After backward, before optimizer.step() (optional in the loop)."""
        calls = self._calls(epoch, "before_parameter_optimization")
        if calls:
            step = Step(epoch, minibatch_id, minibatches_per_epoch, optimizer or self.ctx.optimizer)
            for call, policy in calls:
                call(self.ctx, step, policy.timing)

    def on_minibatch_end(self, epoch: int, minibatch_id: int, minibatches_per_epoch: int,
                         optimizer: torch.optim.Optimizer | None = None) -> None:
        """After optimizer.step(): re-apply every mask so no pruned weight revives."""
        self.ctx.masks.apply()
        calls = self._calls(epoch, "on_minibatch_end")
        if calls:
            step = Step(epoch, minibatch_id, minibatches_per_epoch, optimizer or self.ctx.optimizer)
            for call, policy in calls:
                call(self.ctx, step, policy.timing)

    def on_epoch_end(self, epoch: int, optimizer: torch.optim.Optimizer | None = None,
                     metrics: dict[str, float] | None = None) -> None:
        """End of an epoch: LR schedules step, extensions (thinning) run."""
        self._use(optimizer)
        step = Step(epoch, optimizer=self.ctx.optimizer, metrics=metrics)
        for call, policy in self._calls(epoch, "on_epoch_end"):
            call(self.ctx, step, policy.timing)

    def state_dict(self) -> dict[str, Any]:
        """Masks and every component's state: plain data and tensors only."""
        return {"version": 1,
                "masks": self.ctx.masks.state_dict(),
                "policies": {f"{p.kind}:{p.instance_name}": p.component.state_dict() for p in self.policies}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a saved state: distillers (on the fresh model), structural changes (thinning, quantization),
        then masks, then the rest."""
        saved = state.get("policies", {})
        unknown = set(saved) - {f"{p.kind}:{p.instance_name}" for p in self.policies}
        if unknown:
            raise ValueError(f"saved scheduler state has policies this schedule lacks: {sorted(unknown)}; "
                             "load it with the schedule it was saved with")
        for kinds in (FIRST_KINDS, STRUCTURAL_KINDS):
            for policy in (p for p in self.policies if p.kind in kinds):
                policy.component.load_state_dict(saved.get(f"{policy.kind}:{policy.instance_name}", {}))
        self.ctx.masks.refresh()
        self.ctx.masks.load_state_dict(state["masks"])
        for policy in self.policies:
            if policy.kind not in STRUCTURAL_KINDS + FIRST_KINDS:
                policy.component.load_state_dict(saved.get(f"{policy.kind}:{policy.instance_name}", {}))
        self._active.clear()
