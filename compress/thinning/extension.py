"""Distiller's thinning extensions: StructureRemover (FilterRemover / ChannelRemover), run at the
first minibatch of each scheduled epoch as in Distiller, or at its end with `thin_at: epoch_end`."""
from __future__ import annotations

import logging
from typing import Any, Literal

import torch
from torch import nn

from ..errors import ArgumentError, did_you_mean
from ..masks import canonical
from ..modules import unwrap
from ..policy import Component, Context, Step, Timing
from ..pruning.groups import Kind
from ..registry import EXTENSIONS
from .graph import ThinningError, TracedGroups
from .inputs import DATASET_SHAPES
from .thin import ThinningStep, apply_recipe, thin

log = logging.getLogger(__name__)

ThinningFunc = Literal["remove_filters", "remove_channels"]
#: When a scheduled epoch thins: before its first minibatch's forward (Distiller), or after its last step.
ThinAt = Literal["first_minibatch", "epoch_end"]
_KINDS: dict[str, Kind] = {"remove_filters": "filters", "remove_channels": "channels"}


@EXTENSIONS.register()
class StructureRemover(Component):
    """Removes, once in each scheduled epoch, every channel group the masks zeroed as a whole.

    `thin_at: first_minibatch` (the default, Distiller's timing) thins in the first
    `on_minibatch_begin` of the epoch, after the pruners set that epoch's masks, so a pruner and a
    thinner both at `epochs: [0]` train epoch 0 already thin; `thin_at: epoch_end` thins in
    `on_epoch_end` instead (epoch 0 then trains masked). `dataset` (Distiller's `cifar10`, `imagenet`,
    `mnist`) gives the shape the model is traced on when no dummy_input or `input_shape` is given;
    `arch` is accepted and ignored. `protected`: layers whose filters are never removed.

    The recipe of what was removed (layer names and kept indices) is this component's state, so
    `scheduler.load_state_dict` on a freshly built dense model re-applies it before the thin
    weights are loaded.
    """

    accepts: tuple[ThinningFunc, ...] = ("remove_filters", "remove_channels")

    def __init__(self, thinning_func_str: ThinningFunc, arch: str | None = None, dataset: str | None = None,
                 protected: list[str] | None = None, thin_at: ThinAt = "first_minibatch", name: str | None = None,
                 model: nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None):
        cls = type(self).__name__
        if thinning_func_str not in self.accepts:
            other = "ChannelRemover" if thinning_func_str == "remove_channels" else "FilterRemover"
            raise ArgumentError("thinning_func_str", f"{cls} uses '{self.accepts[0]}', got '{thinning_func_str}'",
                                hint=f"use class {other} (or StructureRemover) for '{thinning_func_str}'")
        if dataset is not None and dataset not in DATASET_SHAPES:
            valid = ", ".join(DATASET_SHAPES)
            near = did_you_mean(dataset, DATASET_SHAPES)
            raise ArgumentError("dataset", f"unknown dataset '{dataset}' (it only sets the traced input's shape)",
                                hint=f"{near + ' ' if near else ''}valid: {valid}; for another shape give the "
                                     "schedule's top-level input_shape: [N, C, H, W] and drop dataset")
        if arch is not None:
            log.info("%s '%s': arch=%r is accepted for compatibility and ignored (the graph is traced)",
                     cls, name, arch)
        self.name = name
        self.kind = _KINDS[thinning_func_str]
        self.dataset = dataset
        self.thin_at = thin_at
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

    def on_minibatch_begin(self, ctx: Context, step: Step, timing: Timing) -> None:
        if self.thin_at == "first_minibatch":
            self.remove(ctx, step)

    def on_epoch_end(self, ctx: Context, step: Step, timing: Timing) -> None:
        if self.thin_at == "first_minibatch" and step.epoch not in self.done:
            log.warning("%s '%s': on_minibatch_begin was not called in epoch %d; thinning at its end instead "
                        "(call every scheduler hook in the loop)", type(self).__name__, self.name, step.epoch)
        self.remove(ctx, step)

    def remove(self, ctx: Context, step: Step) -> None:
        """Thin the model now, unless this epoch already was."""
        if step.epoch in self.done:
            return
        if ctx.dummy_input is None:
            raise ThinningError(f"{type(self).__name__} '{self.name}' has no input to trace the model on; build "
                                "the scheduler with compress.file_config / dict_config, which provides one")
        traced = ctx.groups if isinstance(ctx.groups, TracedGroups) else None
        same = traced is not None and set(traced.protected) == set(self.protected)
        result = thin(ctx.model, ctx.dummy_input, ctx.masks.masks, self.kind, optimizer=step.optimizer or ctx.optimizer,
                      mask_store=ctx.masks, protected=self.protected, epoch=step.epoch,
                      analysis=traced.analysis if same else None)
        self.done.append(step.epoch)
        where = "first minibatch" if self.thin_at == "first_minibatch" else "end"
        if result.layers:
            self.recipe.append(result.to_dict())
            log.info("%s '%s' at the %s of epoch %d: removed %d channel group(s) from %d layer(s)",
                     type(self).__name__, self.name, where, step.epoch, result.removed, len(result.layers))
            if ctx.scheduler is not None:
                ctx.scheduler.model_changed()
        else:
            log.info("%s '%s' at the %s of epoch %d: no fully zeroed channel group to remove",
                     type(self).__name__, self.name, where, step.epoch)

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
class FilterRemover(StructureRemover):
    """Removes filters whose whole coupled group the masks zeroed (`thinning_func_str: remove_filters`)."""

    accepts: tuple[ThinningFunc, ...] = ("remove_filters",)


@EXTENSIONS.register()
class ChannelRemover(StructureRemover):
    """Removes input channels the masks zeroed, with the filters producing them (`remove_channels`)."""

    accepts: tuple[ThinningFunc, ...] = ("remove_channels",)
