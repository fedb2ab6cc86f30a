"""Physically removing channel classes: plan from masks, check, then edit layers, optimizer and masks.

A *recipe step* is plain data: for each edited layer its name, type, channel counts before, and the
output / input channel indices it keeps. Replaying the steps on a freshly built dense model gives the
thin model's exact shapes again (no tracing, no dummy input, nothing unpickled), so a thin
checkpoint's state_dict loads into it.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..masks import MaskStore, canonical
from ..modules import unwrap
from ..pruning.groups import Kind
from .graph import Analysis, Slot, ThinningError, analyse

log = logging.getLogger(__name__)

RECIPE_VERSION = 1


@dataclass
class LayerEdit:
    """What one layer keeps: indices of its output and input channels (in its current numbering)."""

    name: str
    type: str
    out_before: int
    in_before: int
    keep_out: list[int]
    keep_in: list[int]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerEdit:
        try:
            return cls(str(data["name"]), str(data["type"]), int(data["out_before"]), int(data["in_before"]),
                       [int(i) for i in data["keep_out"]], [int(i) for i in data["keep_in"]])
        except (KeyError, TypeError, ValueError) as exc:
            raise ThinningError(f"malformed thinning recipe entry {dict(data)!r}: {exc}") from None


@dataclass
class ThinningStep:
    """One thinning: the kind of removal, when it ran, how many channel classes went, the layer edits."""

    kind: str
    epoch: int | None
    removed: int
    layers: list[LayerEdit]

    def to_dict(self) -> dict[str, Any]:
        """Plain data (names, ints, lists of ints) for a checkpoint."""
        return {"version": RECIPE_VERSION, "kind": self.kind, "epoch": self.epoch, "removed": self.removed,
                "layers": [asdict(e) for e in self.layers]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ThinningStep:
        if not isinstance(data, Mapping) or data.get("version") != RECIPE_VERSION:
            raise ThinningError(f"not a version-{RECIPE_VERSION} thinning recipe step: {data!r:.200}")
        return cls(str(data["kind"]), data.get("epoch"), int(data.get("removed", 0)),
                   [LayerEdit.from_dict(e) for e in data["layers"]])


# layer surgery -------------------------------------------------------------------------------------

@dataclass
class _Spec:
    """The channel structure of a layer, tracked while a recipe is checked before anything changes."""

    family: str  # 'conv', 'convT', 'linear', 'norm', 'prelu'
    out: int
    inp: int
    groups: int = 1


def _spec(module: nn.Module) -> _Spec:
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return _Spec("convT", module.out_channels, module.in_channels, module.groups)
    if isinstance(module, nn.modules.conv._ConvNd):
        return _Spec("conv", module.out_channels, module.in_channels, module.groups)
    if isinstance(module, nn.Linear):
        return _Spec("linear", module.out_features, module.in_features)
    if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
        return _Spec("norm", module.num_features, module.num_features)
    if isinstance(module, nn.PReLU):
        return _Spec("prelu", module.num_parameters, module.num_parameters)
    raise ThinningError(f"thinning cannot edit a {type(module).__name__}")


Ops = dict[str, list[tuple[int, list[int]]]]


def _surgery(name: str, spec: _Spec, keep_out: list[int], keep_in: list[int]) -> tuple[Ops, dict[str, int], _Spec]:
    """Index selections per tensor attribute, new attribute values, and the spec after the edit."""
    full_out, full_in = list(range(spec.out)), list(range(spec.inp))
    if any(not 0 <= i < spec.out for i in keep_out) or any(not 0 <= i < spec.inp for i in keep_in) \
            or keep_out != sorted(set(keep_out)) or keep_in != sorted(set(keep_in)):
        raise ThinningError(f"recipe for '{name}' keeps channel indices outside its {spec.out} outputs / "
                            f"{spec.inp} inputs, or not in increasing order")
    if not keep_out or not keep_in:
        side = "output" if not keep_out else "input"
        raise ThinningError(f"thinning would remove every {side} channel of '{name}'; keep at least one "
                            "channel in each group (lower the pruning level of this layer's group)")

    def sel(dim: int, keep: list[int], full: list[int]) -> list[tuple[int, list[int]]]:
        return [] if keep == full else [(dim, keep)]

    if spec.family in ("norm", "prelu"):
        if keep_out != keep_in:
            raise ThinningError(f"'{name}' is per-channel: it must keep the same outputs as inputs")
        ops = {a: sel(0, keep_out, full_out) for a in ("weight", "bias", "running_mean", "running_var")}
        attr = "num_features" if spec.family == "norm" else "num_parameters"
        return ops, {attr: len(keep_out)}, _Spec(spec.family, len(keep_out), len(keep_out))
    if spec.family == "linear":
        ops = {"weight": sel(0, keep_out, full_out) + sel(1, keep_in, full_in), "bias": sel(0, keep_out, full_out)}
        return ops, {"out_features": len(keep_out), "in_features": len(keep_in)}, \
            _Spec("linear", len(keep_out), len(keep_in))
    g = spec.groups
    if spec.family == "convT":
        if g != 1:
            raise ThinningError(f"'{name}': grouped transposed convolutions are not thinned")
        ops = {"weight": sel(0, keep_in, full_in) + sel(1, keep_out, full_out), "bias": sel(0, keep_out, full_out)}
        return ops, {"out_channels": len(keep_out), "in_channels": len(keep_in)}, \
            _Spec("convT", len(keep_out), len(keep_in))
    ipg, opg = spec.inp // g, spec.out // g
    if g == 1:
        ops = {"weight": sel(0, keep_out, full_out) + sel(1, keep_in, full_in), "bias": sel(0, keep_out, full_out)}
        return ops, {"out_channels": len(keep_out), "in_channels": len(keep_in)}, \
            _Spec("conv", len(keep_out), len(keep_in))
    if ipg == 1:  # depthwise: whole groups go
        expected = [j * opg + k for j in keep_in for k in range(opg)]
        if keep_out != expected:
            raise ThinningError(f"depthwise conv '{name}' must keep the {opg} filter(s) of each input channel it keeps")
        ops = {"weight": sel(0, keep_out, full_out), "bias": sel(0, keep_out, full_out)}
        n = len(keep_in)
        return ops, {"out_channels": len(keep_out), "in_channels": n, "groups": n}, _Spec("conv", len(keep_out), n, n)
    positions = [i for i in keep_in if i < ipg]
    kept_k = [k for k in keep_out if k < opg]
    if keep_in != [j * ipg + i for j in range(g) for i in positions] or \
            keep_out != [j * opg + k for j in range(g) for k in kept_k]:
        raise ThinningError(f"grouped conv '{name}' must keep the same positions in each of its {g} groups")
    ops = {"weight": sel(0, keep_out, full_out) + sel(1, positions, list(range(ipg))),
           "bias": sel(0, keep_out, full_out)}
    return ops, {"out_channels": len(keep_out), "in_channels": g * len(positions)}, \
        _Spec("conv", len(keep_out), g * len(positions), g)


def _select(t: torch.Tensor, ops: list[tuple[int, list[int]]]) -> torch.Tensor:
    for dim, keep in ops:
        t = t.index_select(dim, torch.tensor(keep, dtype=torch.long, device=t.device))
    return t


def _modules(model: nn.Module) -> dict[str, nn.Module]:
    return {canonical(n): m for n, m in unwrap(model).named_modules()}


def apply_recipe(model: nn.Module, recipe: ThinningStep | Mapping[str, Any] | Sequence[Any],
                 optimizer: torch.optim.Optimizer | None = None, masks: MaskStore | None = None) -> None:
    """Apply thinning step(s) to `model`: all are checked first; on any error nothing changes.

    `recipe` is one step or a list of steps (`ThinningStep` or its `to_dict()` form). Parameters are
    replaced by smaller ones; `optimizer` state (momentum, Adam moments) and param_groups, and the
    masks of `masks`, follow.
    """
    steps = [recipe] if isinstance(recipe, (ThinningStep, Mapping)) else list(recipe)
    steps = [s if isinstance(s, ThinningStep) else ThinningStep.from_dict(s) for s in steps]
    modules = _modules(model)
    specs: dict[str, _Spec] = {}
    planned: list[list[tuple[nn.Module, str, Ops, dict[str, int]]]] = []
    for step in steps:  # check everything on specs before touching the model
        edits = []
        for e in step.layers:
            module = modules.get(e.name)
            if module is None:
                raise ThinningError(f"thinning recipe names layer '{e.name}', which the model does not have; "
                                    "rebuild the model with the architecture the checkpoint was saved from")
            if type(module).__name__ != e.type:
                raise ThinningError(f"thinning recipe expects '{e.name}' to be a {e.type}, "
                                    f"the model has a {type(module).__name__}")
            spec = specs.get(e.name) or _spec(module)
            if (spec.out, spec.inp) != (e.out_before, e.in_before):
                raise ThinningError(f"thinning recipe expects '{e.name}' with {e.out_before} outputs and "
                                    f"{e.in_before} inputs, the model has {spec.out} and {spec.inp}; "
                                    "apply recipes to the dense model they were made from, in order")
            ops, attrs, specs[e.name] = _surgery(e.name, spec, e.keep_out, e.keep_in)
            edits.append((module, e.name, ops, attrs))
        planned.append(edits)
    for edits in planned:
        _apply_edits(edits, optimizer, masks)


def _apply_edits(edits: list[tuple[nn.Module, str, Ops, dict[str, int]]],
                 optimizer: torch.optim.Optimizer | None, masks: MaskStore | None) -> None:
    mask_state = masks.state_dict() if masks is not None else None
    replaced: dict[int, nn.Parameter] = {}
    for module, name, ops, attrs in edits:
        for attr, sel in ops.items():
            old = getattr(module, attr, None)
            if old is None or not sel:
                continue
            full = canonical(f"{name}.{attr}" if name else attr)
            with torch.no_grad():
                new = _select(old.detach(), sel).clone()
            if isinstance(old, nn.Parameter):
                param = nn.Parameter(new, requires_grad=old.requires_grad)
                setattr(module, attr, param)
                replaced[id(old)] = param
                if optimizer is not None:
                    _thin_optimizer_state(optimizer, old, param, sel)
            else:
                module._buffers[attr] = new
            if mask_state is not None and full in mask_state["masks"]:
                mask_state["masks"][full] = _select(mask_state["masks"][full], sel)
        for attr, value in attrs.items():
            setattr(module, attr, value)
    if optimizer is not None:
        for group in optimizer.param_groups:
            group["params"] = [replaced.get(id(p), p) for p in group["params"]]
    if masks is not None:
        masks.refresh()
        masks.load_state_dict(mask_state)


def _thin_optimizer_state(optimizer: torch.optim.Optimizer, old: nn.Parameter, new: nn.Parameter,
                          sel: list[tuple[int, list[int]]]) -> None:
    state = optimizer.state.pop(old, None)
    if state is None:
        return
    optimizer.state[new] = {k: _select(v, sel) if torch.is_tensor(v) and v.shape == old.shape else v
                            for k, v in state.items()}


# planning ------------------------------------------------------------------------------------------

def _zero_in_mask(masks: Mapping[str, torch.Tensor], slot: Slot) -> bool:
    mask = masks.get(slot.param)
    return mask is not None and not bool(mask.select(slot.dim, slot.index).any())


def select_classes(analysis: Analysis, masks: Mapping[str, torch.Tensor], kind: Kind,
                   params: Mapping[str, torch.Tensor] | None = None) -> list[int]:
    """Classes the masks zeroed as a whole coupled group.

    kind='filters': every filter of the class is masked and no layer still reads the channel (its
    input-channel slots are masked or zero); kind='channels': every input-channel slot is masked.
    A class whose filters are masked while a layer still reads it (the masks missed part of the
    group, e.g. a following BatchNorm's shift) is left in place with a warning: removing it would
    change the model's output.
    """
    role = "filter" if kind == "filters" else "channel"
    chosen = []
    for c in range(analysis.num_classes):
        if c in analysis.blocked:
            continue
        slots = analysis.slots.get(c, [])
        own = [s for s in slots if s.role == role]
        if not own or not all(_zero_in_mask(masks, s) for s in own):
            continue
        readers = [s for s in slots if s.role == "channel" and not _zero_in_mask(masks, s)
                   and (params is None or bool(params[s.param].detach().select(s.dim, s.index).any()))]
        if readers:
            log.warning("not removing a channel whose filters are masked: '%s' still reads it (index %d of dim %d);"
                        " mask the whole coupled group (pass dummy_input= so pruners use the traced groups)",
                        readers[0].param, readers[0].index, readers[0].dim)
            continue
        chosen.append(c)
    return chosen


def plan(model: nn.Module, analysis: Analysis, remove: Iterable[int], kind: Kind,
         epoch: int | None = None) -> ThinningStep:
    """The layer edits that remove channel classes `remove`, after checking removal is exact.

    Removing a class changes nothing downstream only if every layer that reads it multiplies it by
    zero: each input-channel slot of the class must be zero now. Otherwise the masks did not cover
    the whole coupled group (e.g. a filter was pruned but the next layer still reads the channel
    through a BatchNorm shift), and thinning is refused.
    """
    remove = set(remove)
    params = {canonical(n): p for n, p in unwrap(model).named_parameters()}
    for c in sorted(remove):
        for slot in analysis.slots.get(c, []):
            if slot.role == "channel" and bool(params[slot.param].detach().select(slot.dim, slot.index).any()):
                raise ThinningError(
                    f"cannot remove a channel that '{slot.param}' still reads (index {slot.index} of dim "
                    f"{slot.dim} is not zero): removing it would change the model's output. Prune with the "
                    "traced groups (pass dummy_input= to compress.file_config/dict_config) so every member "
                    "of the coupled group is masked")
    edits = []
    for layer in analysis.layers.values():
        keep_out = [f for f, c in enumerate(layer.out_classes) if c not in remove]
        keep_in = [i for i, c in enumerate(layer.in_classes) if c not in remove]
        if len(keep_out) == len(layer.out_classes) and len(keep_in) == len(layer.in_classes):
            continue
        if not keep_out or not keep_in:
            side = "filter (output channel)" if not keep_out else "input channel"
            raise ThinningError(f"thinning would remove every {side} of '{layer.name}' ({layer.type}); "
                                "a group cannot be pruned to zero channels: lower its pruning level")
        edits.append(LayerEdit(layer.name, layer.type, len(layer.out_classes), len(layer.in_classes),
                               keep_out, keep_in))
    return ThinningStep(kind, epoch, len(remove), edits)


def thin(model: nn.Module, dummy_input: Any, masks: Mapping[str, torch.Tensor], kind: Kind = "filters", *,
         optimizer: torch.optim.Optimizer | None = None, mask_store: MaskStore | None = None,
         protected: Sequence[str] = (), epoch: int | None = None, analysis: Analysis | None = None) -> ThinningStep:
    """Trace, select the classes `masks` zeroed, check, and remove them. Returns the recipe step.

    `analysis`: the model's current analysis with these `protected` layers, if already traced (saves a trace).
    On any failure a ThinningError is raised and the model, optimizer and masks are unchanged.
    """
    analysis = analysis or analyse(model, dummy_input, protected)
    params = {canonical(n): p for n, p in unwrap(model).named_parameters()}
    step = plan(model, analysis, select_classes(analysis, masks, kind, params), kind, epoch)
    if step.layers:
        apply_recipe(model, step, optimizer, mask_store)
    log.info("thinning (%s): removed %d channel group(s), edited %d layer(s)", kind, step.removed, len(step.layers))
    return step
