"""Learning-rate schedules: every torch.optim.lr_scheduler class, by name, stepped at epoch ends."""
from __future__ import annotations

import bisect
import inspect
import math
import warnings
from typing import Any

import torch
from torch.optim import lr_scheduler as torch_lr

from .errors import ArgumentError
from .policy import Component, Context, Step, Timing
from .registry import LR_SCHEDULERS

#: Classes whose arguments are Python functions or other schedulers, which a schedule cannot hold.
NOT_DECLARABLE = {
    "LambdaLR": "it takes a Python function",
    "MultiplicativeLR": "it takes a Python function",
    "SequentialLR": "it takes scheduler objects",
    "ChainedScheduler": "it takes scheduler objects",
}


def _torch_classes() -> dict[str, type]:
    base = getattr(torch_lr, "LRScheduler", torch_lr._LRScheduler)
    found = {}
    for name, obj in vars(torch_lr).items():
        if (inspect.isclass(obj) and not name.startswith("_") and obj.__module__ == torch_lr.__name__
                and (issubclass(obj, base) or name == "ReduceLROnPlateau") and obj is not base):
            found[name] = obj
    return found


for _name, _cls in sorted(_torch_classes().items()):
    if _name in NOT_DECLARABLE:
        LR_SCHEDULERS.refuse(_name, f"{_name} cannot be declared in a schedule: {NOT_DECLARABLE[_name]}, and nothing "
                                    "in a schedule is evaluated as code; create it in your own training code instead")
    else:
        LR_SCHEDULERS.add(_name, _cls)


@LR_SCHEDULERS.register()
class MultiStepMultiGammaLR(torch_lr.LRScheduler):
    """Distiller's MultiStepLR with one gamma per milestone: after milestone i the LR is base x gammas[0..i]."""

    def __init__(self, optimizer: torch.optim.Optimizer, milestones: list[int], gammas: list[float],
                 last_epoch: int = -1):
        if list(milestones) != sorted(milestones):
            raise ArgumentError("milestones", f"milestones must increase, got {milestones}")
        if len(milestones) != len(gammas):
            raise ArgumentError("gammas", f"one gamma per milestone: {len(milestones)} milestones, "
                                f"{len(gammas)} gammas")
        self.milestones = list(milestones)
        self.factors = [math.prod(gammas[:i]) for i in range(len(gammas) + 1)]
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        factor = self.factors[bisect.bisect_right(self.milestones, self.last_epoch)]
        return [base * factor for base in self.base_lrs]


#: How an LR schedule counts epochs: the training epoch (Distiller's), or its policy's own epochs.
EPOCH_BASES = ("absolute", "policy")


class LRSchedulerStep(Component):
    """Steps a torch LR scheduler at the end of each scheduled epoch (with the metric for ReduceLROnPlateau).

    epoch_basis 'absolute' (the default, Distiller's): at the end of epoch e the schedule is set to epoch e + 1,
    so its LR is its formula at the training epoch, wherever the policy starts; 'policy': it steps once per
    scheduled epoch, so its formula starts at the policy's first epoch.
    """

    def __init__(self, lr_scheduler: Any, metric: str = "loss", epoch_basis: str = "absolute"):
        self.lr_scheduler = lr_scheduler
        self.metric = metric
        self.epoch_basis = epoch_basis

    def _adopt_new_groups(self) -> None:
        """Parameter groups added after the schedule was built (a PACT quantizer's clips) follow it too, as in
        Distiller, which builds LR schedules after the quantizers."""
        sched = self.lr_scheduler
        groups = sched.optimizer.param_groups
        if isinstance(sched, torch_lr.ReduceLROnPlateau):
            sched.min_lrs += sched.min_lrs[-1:] * (len(groups) - len(sched.min_lrs))
        elif len(groups) > len(sched.base_lrs):
            for group in groups[len(sched.base_lrs):]:
                group.setdefault("initial_lr", group["lr"])
                sched.base_lrs.append(group["initial_lr"])

    def on_epoch_end(self, ctx: Context, step: Step, timing: Timing) -> None:
        self._adopt_new_groups()
        if isinstance(self.lr_scheduler, torch_lr.ReduceLROnPlateau):
            metrics = step.metrics or {}
            # a Distiller loop passes {'min': loss, 'max': top1}: the key of the scheduler's mode
            key = self.metric if self.metric in metrics else self.lr_scheduler.mode
            if key not in metrics:
                raise ValueError(f"ReduceLROnPlateau needs on_epoch_end(..., metrics={{'{self.metric}': value}})")
            self.lr_scheduler.step(metrics[key])
        elif self.epoch_basis == "policy":
            self.lr_scheduler.step()
        else:
            with warnings.catch_warnings():  # torch deprecates the epoch argument; Distiller steps this way
                warnings.filterwarnings("ignore", message=".*epoch parameter", category=UserWarning)
                self.lr_scheduler.step(step.epoch + 1)

    def state_dict(self) -> dict[str, Any]:
        return self.lr_scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lr_scheduler.load_state_dict(state)


__all__ = ["EPOCH_BASES", "LRSchedulerStep", "MultiStepMultiGammaLR", "NOT_DECLARABLE"]
