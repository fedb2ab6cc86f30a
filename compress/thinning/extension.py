"""Distiller's thinning extensions: FilterRemover / ChannelRemover, run at the end of their epoch."""
from __future__ import annotations

import logging
from typing import Any, Literal

import torch
from torch import nn

from ..errors import ArgumentError, did_you_mean
from ..masks import canonical
from ..policy import Component, Context, Step, Timing
from ..pruning.groups import Kind
from ..registry import EXTENSIONS
from .graph import ThinningError, TracedGroups, unwrap
from .thin import ThinningStep, apply_recipe, thin

log = logging.getLogger(__name__)

ThinningFunc = Literal["remove_filters", "remove_channels"]
_KINDS: dict[str, Kind] = {"remove_filters": "filters", "remove_channels": "channels"}


class _Remover(Component):
    """Removes, at the end of each scheduled epoch, every channel group the masks zeroed as a whole.

    The recipe of what was removed (layer names and kept indices) is this component's state, so
    `scheduler.load_state_dict` on a freshly built dense model re-applies it before the thin
    weights are loaded.
    """

    expected: ThinningFunc = "remove_filters"

    def __init__(self, thinning_func_str: ThinningFunc, arch: str | None = None, dataset: str | None = None,
                 protected: list[str] | None = None, name: str | None = None, model: nn.Module | None = None,
                 optimizer: torch.optim.Optimizer | None = None):
        cls = type(self).__name__
        if thinning_func_str != self.expected:
            other = "ChannelRemover" if thinning_func_str == "remove_channels" else "FilterRemover"
            raise ArgumentError("thinning_func_str", f"{cls} uses '{self.expected}', got '{thinning_func_str}'",
                                hint=f"use class {other} for '{thinning_func_str}'")
        if arch is not None or dataset is not None:
            log.info("%s '%s': arch=%r / dataset=%r are accepted for compatibility and ignored "
                     "(thinning works from the traced graph)", cls, name, arch, dataset)
        self.name = name
        self.kind = _KINDS[thinning_func_str]
        self.model = model
        self.optimizer = optimizer
        self.protected = [canonical(p) for p in protected or []]
        if model is not None:
            modules = [canonical(n) for n, _ in unwrap(model).named_modules() if n]
            for i, p in enumerate(self.protected):
                if p not in modules:
                    raise ArgumentError(("protected", i), f"'{p}' is not a layer of the model",
                                        hint=did_you_mean(p, modules) or "give module names as in model.named_modules()")
        self.recipe: list[dict[str, Any]] = []
        self.done: list[int] = []

    def prepare(self, ctx: Context) -> None:
        if isinstance(ctx.groups, TracedGroups) and self.protected:
            ctx.groups.protect(self.protected)  # pruners must not mask what thinning keeps
        if ctx.dummy_input is None:
            log.info("%s '%s' has no dummy input: it can replay a saved recipe but cannot thin; pass "
                        "dummy_input= to compress.file_config / dict_config to thin", type(self).__name__, self.name)

    def on_epoch_end(self, ctx: Context, step: Step, timing: Timing) -> None:
        if step.epoch in self.done:
            return
        if ctx.dummy_input is None:
            raise ThinningError(f"{type(self).__name__} '{self.name}' needs a dummy input to trace the model: pass "
                                "dummy_input=torch.zeros(1, C, H, W) to compress.file_config / dict_config")
        result = thin(ctx.model, ctx.dummy_input, ctx.masks.masks, self.kind, optimizer=step.optimizer or ctx.optimizer,
                      mask_store=ctx.masks, protected=self.protected, epoch=step.epoch)
        self.done.append(step.epoch)
        if result.layers:
            self.recipe.append(result.to_dict())
            log.info("%s '%s' at epoch %d: removed %d channel group(s) from %d layer(s)", type(self).__name__,
                     self.name, step.epoch, result.removed, len(result.layers))
        else:
            log.info("%s '%s' at epoch %d: no fully zeroed channel group to remove", type(self).__name__,
                     self.name, step.epoch)

    def state_dict(self) -> dict[str, Any]:
        """The recipe (plain data: names and lists of ints) and the epochs already thinned."""
        return {"recipe": [dict(s) for s in self.recipe], "done": list(self.done)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Re-apply a saved recipe to the (dense, freshly built) model, unless this run already applied it."""
        recipe = list(state.get("recipe", []))
        steps = [ThinningStep.from_dict(s).to_dict() for s in recipe]
        if steps == self.recipe:
            self.done = [int(e) for e in state.get("done", [])]
            return
        if self.recipe:
            raise ThinningError(f"{type(self).__name__} '{self.name}' already thinned this model differently; "
                                "load the checkpoint into a freshly built dense model")
        if steps:
            if self.model is None:
                raise ThinningError(f"{type(self).__name__} '{self.name}' has no model to re-apply its recipe to")
            apply_recipe(self.model, steps, self.optimizer)
        self.recipe = steps
        self.done = [int(e) for e in state.get("done", [])]


@EXTENSIONS.register()
class FilterRemover(_Remover):
    """Removes filters whose whole coupled group the masks zeroed (`thinning_func_str: remove_filters`).

    `protected`: layer names whose filters must never be removed (the model's output is always kept).
    """

    expected: ThinningFunc = "remove_filters"


@EXTENSIONS.register()
class ChannelRemover(_Remover):
    """Removes input channels the masks zeroed, with the filters producing them (`remove_channels`)."""

    expected: ThinningFunc = "remove_channels"


@EXTENSIONS.register()
def StructureRemover(thinning_func_str: ThinningFunc, arch: str | None = None, dataset: str | None = None,
                     protected: list[str] | None = None, name: str | None = None, model: nn.Module | None = None,
                     optimizer: torch.optim.Optimizer | None = None) -> _Remover:
    """Distiller's own name for the thinning extension: FilterRemover or ChannelRemover by thinning_func_str."""
    cls = FilterRemover if thinning_func_str == "remove_filters" else ChannelRemover
    return cls(thinning_func_str, arch, dataset, protected, name, model, optimizer)
