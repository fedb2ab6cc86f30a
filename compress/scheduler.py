"""CompressionScheduler: fires the schedule's policies from hooks inside the user's training loop."""
from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch

from .policy import Component, Context, Policy, Step

#: Policy kinds whose components change the model's structure; their state is restored first.
STRUCTURAL_KINDS = ("extension", "quantizer")
#: Policy kinds that run before the others at every hook (a `teacher: self` copy is taken before this
#: epoch's pruning / quantization) and restore their state on the freshly built model, before any other.
FIRST_KINDS = ("distiller",)


#: Called with the context and the positional inputs of the model's first forward (see CompressionScheduler).
InputReady = Callable[[Context, tuple[Any, ...], dict[str, Any]], None]


def _overrides(component: Any, hook: str) -> bool:
    return getattr(type(component), hook, None) is not getattr(Component, hook)


def _first_forward_hook(scheduler: CompressionScheduler) -> Callable:
    ref = weakref.ref(scheduler)  # the model must not keep the scheduler alive (nor deepcopy it)

    def hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        sched = ref()
        if sched is not None and module is sched.ctx.model:
            sched._input_seen(args, kwargs)

    return hook


class CompressionScheduler:
    """Calls each policy's component in the epochs the policy schedules, and keeps pruned weights at zero.

    Build it with `compress.file_config` / `compress.dict_config`; call the hooks in the order docs/architecture.md gives.
    """

    def __init__(self, ctx: Context, policies: list[Policy], schedule: dict[str, Any] | None = None, *,
                 input_ready: InputReady | None = None):
        """`input_ready`: the schedule needs the model's input to trace it and has none yet. Until the
        model's first forward, `on_epoch_begin` / `on_minibatch_begin` calls are queued; a forward
        pre-hook then hands that forward's inputs to `input_ready` and replays the queue before the
        forward runs, which is the moment Distiller's policies act at: the first minibatch."""
        self.ctx = ctx
        self.policies = policies
        self.schedule = schedule
        self._active: dict[tuple[int, str], list[tuple[Callable, Policy]]] = {}
        self._input_ready = input_ready
        self._queued: list[tuple[str, Step]] = []
        self._hook: Any = None
        self._model_listeners: list[Callable[[torch.nn.Module], None]] = []
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

    def _run(self, hook: str, step: Step) -> None:
        """Call `hook` of every policy active in the step's epoch, or queue it until the model's first forward."""
        if self._input_ready is not None:
            if self._hook is None:
                self._hook = self.ctx.model.register_forward_pre_hook(_first_forward_hook(self), with_kwargs=True)
            self._queued.append((hook, step))
            return
        for call, policy in self._calls(step.epoch, hook):
            call(self.ctx, step, policy.timing)

    def _input_seen(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """The model's first forward: hand its inputs over, then run the queued hooks before it proceeds."""
        self._hook.remove()
        ready, self._input_ready = self._input_ready, None
        queued, self._queued = self._queued, []
        with torch.inference_mode(False):  # thinning makes new parameters: never inference tensors
            ready(self.ctx, args, kwargs)
            for hook, step in queued:
                self._run(hook, step)

    def on_epoch_begin(self, epoch: int, optimizer: torch.optim.Optimizer | None = None, **_: Any) -> None:
        """Start of an epoch: pruners set this epoch's masks."""
        self._use(optimizer)
        self._run("on_epoch_begin", Step(epoch, optimizer=self.ctx.optimizer))

    def on_minibatch_begin(self, epoch: int, minibatch_id: int, minibatches_per_epoch: int,
                           optimizer: torch.optim.Optimizer | None = None) -> None:
        """Before the forward pass: minibatch-frequency pruners act here, and thinning in its first minibatch."""
        if self._input_ready is not None or self._calls(epoch, "on_minibatch_begin"):
            self._use(optimizer)
            self._run("on_minibatch_begin", Step(epoch, minibatch_id, minibatches_per_epoch, self.ctx.optimizer))

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
        """End of an epoch: LR schedules step (and extensions with `thin_at: epoch_end` thin)."""
        if self._queued:
            raise RuntimeError(f"epoch {epoch} ended before the model ran: this schedule traces the model on "
                                "its first forward's input; run the model between on_epoch_begin and "
                                "on_epoch_end, or give the schedule's input_shape / pass dummy_input=")
        self._use(optimizer)
        step = Step(epoch, optimizer=self.ctx.optimizer, metrics=metrics)
        for call, policy in self._calls(epoch, "on_epoch_end"):
            call(self.ctx, step, policy.timing)

    def add_model_listener(self, listener: Callable[[torch.nn.Module], None]) -> None:
        """Call `listener(model)` whenever a component changes the model's structure (thinning replaces
        parameters): whatever holds the old ones, such as a DistributedDataParallel wrapper, must be rebuilt."""
        self._model_listeners.append(listener)

    def model_changed(self) -> None:
        """Tell the listeners that the model's structure changed (called by the component that changed it)."""
        for listener in self._model_listeners:
            listener(self.ctx.model)

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
