"""Learning-rate schedules: every torch.optim.lr_scheduler class, by name, stepped at epoch ends."""
from __future__ import annotations

import inspect
from typing import Any

from torch.optim import lr_scheduler as torch_lr

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


def _not_declarable(name: str, why: str):
    def factory(**_: Any) -> None:
        raise ValueError(f"{name} cannot be declared in a schedule: {why}, and nothing in a schedule is "
                         "evaluated as code; create it in your own training code instead")

    return factory


for _name, _cls in sorted(_torch_classes().items()):
    LR_SCHEDULERS.add(_name, _not_declarable(_name, NOT_DECLARABLE[_name]) if _name in NOT_DECLARABLE else _cls)


class LRSchedulerStep(Component):
    """Steps a torch LR scheduler at the end of each scheduled epoch (with the metric for ReduceLROnPlateau)."""

    def __init__(self, lr_scheduler: Any, metric: str = "loss"):
        self.lr_scheduler = lr_scheduler
        self.metric = metric

    def on_epoch_end(self, ctx: Context, step: Step, timing: Timing) -> None:
        if isinstance(self.lr_scheduler, torch_lr.ReduceLROnPlateau):
            if not step.metrics or self.metric not in step.metrics:
                raise ValueError(f"ReduceLROnPlateau needs on_epoch_end(..., metrics={{'{self.metric}': value}})")
            self.lr_scheduler.step(step.metrics[self.metric])
        else:
            self.lr_scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return self.lr_scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lr_scheduler.load_state_dict(state)


__all__ = ["LRSchedulerStep", "NOT_DECLARABLE"]
