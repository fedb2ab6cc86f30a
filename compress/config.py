"""Building a CompressionScheduler from a schedule: check everything first, then change the model."""
from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ArgumentError, ScheduleError, did_you_mean
from .lr_schedulers import EPOCH_BASES, LRSchedulerStep
from .masks import MaskStore
from .policy import Context, Inactive, Policy, Timing
from .pruning.groups import GroupResolver, LocalGroups
from .pruning.masking import MASKING_ARGS, MaskingArgs, PruningPolicy
from .pruning.pruner import Pruner
from .registry import SECTIONS, build
from .regularization import RegularizationPolicy
from .schedule_source import KeyPath, ScheduleSource, read_schedule
from .scheduler import CompressionScheduler, InputReady
from .thinning.extension import StructureRemover
from .thinning.graph import ThinningError, TracedGroups, check_traceable
from .thinning.inputs import DATASET_SHAPES, is_shape, one_sample, zeros_input

log = logging.getLogger(__name__)

TOP_LEVEL = ("version", "input_shape", *SECTIONS, "policies")
POLICY_KINDS = {kind: section for section, (kind, _) in SECTIONS.items()}
TIMING_KEYS = ("starting_epoch", "ending_epoch", "frequency", "epochs")
#: Kinds that only act while training: without an optimizer they are checked, not built, and inactive.
TRAINING_ONLY = ("lr_scheduler", "distiller")
#: Policy `args` each kind accepts, with their types (or their allowed values).
POLICY_ARGS: dict[str, dict[str, type | tuple[str, ...]]] = {
    "pruner": {"mini_batch_pruning_frequency": int, "mask_gradients": bool, **dict.fromkeys(MASKING_ARGS, bool)},
    "regularizer": {"keep_mask": bool},
    "lr_scheduler": {"metric": str, "epoch_basis": EPOCH_BASES},
}


def file_config(model: nn.Module, optimizer: torch.optim.Optimizer | None, path: str | Path, *,
                dummy_input: torch.Tensor | None = None,
                teachers: Mapping[str, nn.Module] | None = None) -> CompressionScheduler:
    """Build a CompressionScheduler from a YAML schedule file (format and classes: docs/schedules.md).

    `teachers` are the distillation teachers a `distillers:` section may name (besides `self`).
    """
    return _config(model, optimizer, read_schedule(path), dummy_input, teachers)


def dict_config(model: nn.Module, optimizer: torch.optim.Optimizer | None, schedule: dict[str, Any], *,
                dummy_input: torch.Tensor | None = None, name: str | None = None,
                teachers: Mapping[str, nn.Module] | None = None) -> CompressionScheduler:
    """Build a CompressionScheduler from a schedule already loaded as a dict."""
    return _config(model, optimizer, ScheduleSource(copy.deepcopy(schedule), name or "<schedule dict>"), dummy_input,
                   teachers)


def group_resolver(model: nn.Module, dummy_input: Any | None, protected: Sequence[str] = ()) -> GroupResolver:
    """Channel groups for structured pruning: traced from the graph when an input is given, else per module."""
    if dummy_input is None:
        return LocalGroups(model)
    return TracedGroups(model, dummy_input, protected)


def _mapping(src: ScheduleSource, value: Any, path: KeyPath, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise src.error(path, f"expected {what} (a mapping), got {type(value).__name__}")
    return value


def _check_top_level(src: ScheduleSource) -> dict[str, Any]:
    data = src.data
    if data is None:
        raise src.error((), "the schedule is empty", hint="see schedules/examples/ for complete schedules")
    if not isinstance(data, dict):
        raise src.error((), f"a schedule is a mapping of sections, got {type(data).__name__}")
    for key in data:
        if key not in TOP_LEVEL:
            hint = did_you_mean(str(key), TOP_LEVEL) or f"sections: {', '.join(TOP_LEVEL)}"
            raise src.error((key,), f"unknown section '{key}'", hint=hint)
    if "version" in data and data["version"] != 1:
        raise src.error(("version",), f"unsupported schedule version {data['version']!r}", hint="use version: 1")
    return data


def _build_components(src: ScheduleSource, data: dict, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                      **injected: Any) -> dict[str, dict[str, Any]]:
    """Every declared component by section and instance name (TRAINING_ONLY kinds only checked without optimizer)."""
    built: dict[str, dict[str, Any]] = {}
    for section, (kind, registry) in SECTIONS.items():
        built[section] = {}
        for instance, cfg in _mapping(src, data.get(section), (section,), f"{kind} definitions").items():
            path = (section, instance)
            construct = not (kind in TRAINING_ONLY and optimizer is None)
            built[section][instance] = build(cfg, registry, source=src, path=path, name=str(instance),
                                             model=model, optimizer=optimizer, construct=construct, **injected)
    return built


def _check_weights(src: ScheduleSource, built: dict[str, dict[str, Any]], params: dict[str, nn.Parameter]) -> None:
    for section in ("pruners", "regularizers"):
        for instance, component in built[section].items():
            for weight, rel in getattr(component, "referenced_weights", list)():
                if weight in params:
                    continue
                near = did_you_mean(weight, params)
                hint = (f"{near + ' ' if near else ''}list the model's names with "
                        "[n for n, _ in model.named_parameters()]")
                raise src.error((section, instance, *rel),
                                f"the model has no parameter '{weight}'", hint=hint)
            if section == "regularizers":
                try:
                    component.check(params)
                except ArgumentError as exc:
                    raise src.error((section, instance, *exc.key), str(exc), hint=exc.hint) from None


def _timing(src: ScheduleSource, item: dict, path: KeyPath, minibatch_frequency: int | None) -> Timing:
    def integer(key: str, minimum: int) -> int:
        value = item[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise src.error(path + (key,), f"{key} must be an integer >= {minimum}, got {value!r}")
        return value

    if "epochs" in item:
        clash = [k for k in ("starting_epoch", "ending_epoch", "frequency") if k in item]
        if clash:
            raise src.error(path + (clash[0],), f"give either 'epochs' or '{clash[0]}', not both")
        epochs = item["epochs"]
        if not isinstance(epochs, list) or not epochs or any(
                isinstance(e, bool) or not isinstance(e, int) or e < 0 for e in epochs):
            raise src.error(path + ("epochs",), f"epochs must be a non-empty list of integers >= 0, got {epochs!r}")
        if len(set(epochs)) != len(epochs):
            raise src.error(path + ("epochs",), f"epochs lists an epoch twice: {epochs}")
        return Timing(tuple(sorted(epochs)), minibatch_frequency)
    if "starting_epoch" not in item or "ending_epoch" not in item:
        missing = "starting_epoch" if "starting_epoch" not in item else "ending_epoch"
        raise src.error(path, f"policy has no '{missing}'",
                        hint="give starting_epoch and ending_epoch (and optionally frequency), or epochs: [..]")
    start, end = integer("starting_epoch", 0), integer("ending_epoch", 0)
    frequency = integer("frequency", 1) if "frequency" in item else 1
    if end <= start:
        raise src.error(path + ("ending_epoch",), f"ending_epoch {end} must be after starting_epoch {start}",
                        hint="ending_epoch is exclusive: starting_epoch 0, ending_epoch 10 runs epochs 0..9")
    return Timing.from_range(start, end, frequency, minibatch_frequency)


def _policy_args(src: ScheduleSource, kind: str, args: Any, path: KeyPath) -> dict[str, Any]:
    args = _mapping(src, args, path, "policy arguments")
    accepted = POLICY_ARGS.get(kind, {})
    for key, value in args.items():
        if key not in accepted:
            hint = did_you_mean(str(key), accepted) or (
                f"{kind} policies take: {', '.join(accepted)}" if accepted else f"{kind} policies take no args")
            raise src.error(path + (key,), f"unknown {kind} policy argument '{key}'", hint=hint)
        tp = accepted[key]
        if isinstance(tp, tuple):
            if value not in tp:
                raise src.error(path + (key,), f"{key} must be one of {', '.join(tp)}, got {value!r}",
                                hint=did_you_mean(str(value), tp))
            continue
        ok = isinstance(value, tp) and not (tp is int and isinstance(value, bool))
        if not ok or (tp is int and value < 1):
            raise src.error(path + (key,), f"{key} must be {'an integer >= 1' if tp is int else tp.__name__}, "
                            f"got {value!r}")
    return args


def _build_policies(src: ScheduleSource, data: dict, built: dict[str, dict[str, Any]]) -> list[Policy]:
    items = data.get("policies")
    if items is None:
        return []
    if not isinstance(items, list):
        raise src.error(("policies",), "policies must be a list (each item starts with '- ')")
    policies = []
    for i, item in enumerate(items):
        path: KeyPath = ("policies", i)
        if not isinstance(item, dict):
            raise src.error(path, f"a policy is a mapping, got {item!r}")
        kinds = [k for k in item if k in POLICY_KINDS]
        for key in item:
            if key not in POLICY_KINDS and key not in TIMING_KEYS:
                hint = did_you_mean(str(key), [*POLICY_KINDS, *TIMING_KEYS])
                raise src.error(path + (key,), f"unknown policy key '{key}'",
                                hint=hint or f"a policy has one of {', '.join(POLICY_KINDS)} and its timing")
        if len(kinds) != 1:
            raise src.error(path, f"a policy names exactly one of {', '.join(POLICY_KINDS)}; found "
                            f"{', '.join(kinds) or 'none'}")
        kind = kinds[0]
        section = POLICY_KINDS[kind]
        ref = _mapping(src, item[kind], path + (kind,), f"the {kind} reference")
        for key in ref:
            if key not in ("instance_name", "args"):
                raise src.error(path + (kind, key), f"unknown key '{key}'",
                                hint="a policy's component takes instance_name and optionally args")
        instance = ref.get("instance_name")
        if instance is None:
            raise src.error(path + (kind,), "missing instance_name",
                            hint=f"name one of the {section}: {', '.join(map(str, built[section])) or 'none defined'}")
        if instance not in built[section]:
            elsewhere = [s for s, comps in built.items() if instance in comps]
            hint = (f"'{instance}' is defined under {elsewhere[0]}, not {section}" if elsewhere else
                    did_you_mean(str(instance), map(str, built[section]))
                    or f"defined {section}: {', '.join(map(str, built[section])) or 'none'}")
            raise src.error(path + (kind, "instance_name"), f"instance_name '{instance}' is not defined in {section}",
                            hint=hint)
        args = _policy_args(src, kind, ref.get("args"), path + (kind, "args"))
        timing = _timing(src, item, path, args.get("mini_batch_pruning_frequency"))
        component = built[section][instance]
        if kind in TRAINING_ONLY and component is None:
            component = Inactive(f"no optimizer: a {kind} acts only while training")
        elif kind == "lr_scheduler":
            component = LRSchedulerStep(component, args.get("metric", "loss"), args.get("epoch_basis", "absolute"))
        elif kind == "pruner" and isinstance(component, Pruner):
            component = PruningPolicy(component, MaskingArgs.from_args(args))
        elif kind == "pruner" and set(args) & set(MASKING_ARGS):
            raise src.error(path + (kind, "args"), f"{type(component).__name__} is not built on compress's Pruner: "
                            f"it cannot take {', '.join(sorted(set(args) & set(MASKING_ARGS)))}")
        elif kind == "regularizer" and args.get("keep_mask"):
            component = RegularizationPolicy(component)
        policies.append(Policy(kind, str(instance), component, timing, args))
    return policies


def _check_conflicts(src: ScheduleSource, policies: list[Policy], ctx: Context) -> None:
    """Two pruning policies may not prune a tensor the same way in the same epoch.

    Element-wise pruners claim the whole tensor from other element-wise pruners (their levels would fight);
    structured pruners claim the dimension their coupled group indexes, so one pruning a layer's filters
    and another pruning the input channels coupled to them may share the tensor. An element-wise and a
    structured pruner may share it too: masks only combine, and an element-wise level counts the zeros
    already there. Transient (DropFilter) masks do not last and claim nothing.
    """
    claimed: dict[tuple[str, int | None], list[tuple[int, str, set[int]]]] = {}
    for i, policy in enumerate(policies):
        if policy.kind != "pruner":
            continue
        component = policy.component
        try:
            claims = (component.claims(ctx) if hasattr(component, "claims") else
                      {(name, None): name for name in component.pruned_params(ctx)})
        except ValueError as exc:
            raise src.error(("pruners", policy.instance_name), str(exc)) from None
        if getattr(component, "transient", False):
            continue
        epochs = set(policy.timing.epochs)
        for (name, dim), listed in sorted(claims.items(), key=lambda c: (c[0][0], -1 if c[0][1] is None else c[0][1])):
            rivals = claimed.get((name, dim), [])
            for j, other_listed, other_epochs in rivals:
                both = sorted(other_epochs & epochs)
                if not both:
                    continue
                coupled = name not in (listed, other_listed) or listed != other_listed
                raise src.error(("policies", i), _conflict(policies[j].instance_name, other_listed, j,
                                                           policy.instance_name, listed, i, name, dim, both),
                                hint=("list the coupled weights in one pruner (group_dependency: Leader ranks "
                                      "them together) or make the policies' epochs disjoint") if coupled else
                                "give each tensor one pruner at a time: make their epochs disjoint")
            claimed.setdefault((name, dim), []).append((i, listed, epochs))


def _conflict(first: str, first_listed: str, first_policy: int, second: str, second_listed: str,
              second_policy: int, name: str, dim: int | None, epochs: list[int]) -> str:
    """Which two pruners meet on which tensor, and through which listed weights."""
    what = "'" + name + "'" if dim is None else f"dimension {dim} of '{name}'"
    when = f"epoch {epochs[0]}{' and others' if len(epochs) > 1 else ''}"
    text = (f"pruners '{first}' (policy {first_policy}) and '{second}' (policy {second_policy}) both prune "
            f"{what} in {when}")
    if name not in (first_listed, second_listed):
        text += f": neither lists it; the traced graph couples it to '{first_listed}' and '{second_listed}'"
    elif first_listed != second_listed:
        coupled = first_listed if name == second_listed else second_listed
        text += f": '{name}' is listed, and '{coupled}' is coupled to it in the traced graph"
    return text


def _unscheduled_post_training(src: ScheduleSource, built: dict[str, dict[str, Any]], data: dict) -> list[Policy]:
    """Post-training quantizers no policy names: applied from the start, as Distiller applies the
    quantizer of a `--qe-config-file` (a file with a quantizers section and no policies)."""
    named = {item["quantizer"].get("instance_name") for item in data.get("policies") or []
             if isinstance(item, dict) and isinstance(item.get("quantizer"), dict)}
    out = []
    for instance, component in built["quantizers"].items():
        if instance not in named and getattr(component, "applies_unscheduled", False):
            log.info("%s: quantizer '%s' has no policy: applied from the start, as Distiller applies a "
                     "--qe-config-file", src.name, instance)
            out.append(Policy("quantizer", str(instance), component, Timing((0,))))
    return out


@dataclass(frozen=True)
class TraceInput:
    """What the model is traced on (coupled channel groups, thinning), and where the schedule asked for it.

    `value` is None when nothing needs a trace, or (`pending`) until the model's first forward.
    """

    value: Any
    origin: str
    path: KeyPath = ()
    pending: bool = False


def _trace_input(src: ScheduleSource, data: dict, built: dict[str, dict[str, Any]], model: nn.Module,
                 dummy_input: Any | None) -> TraceInput:
    """The first of: dummy_input=, the schedule's `input_shape`, a thinning extension's `dataset`, the first forward
    (when a thinning extension or a pruner's fold_batchnorm needs the graph)."""
    shape = data.get("input_shape")
    if shape is not None and not is_shape(shape):
        raise src.error(("input_shape",), f"input_shape must be a list of positive integers, got {shape!r}",
                        hint="one sample's shape, e.g. [1, 3, 32, 32]; for a forward() of several tensors, "
                             "one such list per tensor")
    removers = {str(n): c for n, c in built["extensions"].items() if isinstance(c, StructureRemover)}
    datasets = {n: c.dataset for n, c in removers.items() if c.dataset is not None}
    first = next(iter(datasets.items()), None)
    for name, dataset in datasets.items():
        if dataset != first[1]:
            raise src.error(("extensions", name, "dataset"), f"dataset '{dataset}' differs from '{first[1]}' of "
                            f"extension '{first[0]}': the model is traced on one input",
                            hint="give every thinning extension the same dataset, or the top-level input_shape")
    given = [what for what, value in (("input_shape", shape), ("dataset", first)) if value is not None]
    if dummy_input is not None:
        if given:
            log.info("%s: tracing on dummy_input=%s; the schedule's %s is not used", src.name,
                     tuple(getattr(dummy_input, "shape", ())), " and ".join(given))
        return TraceInput(dummy_input, "dummy_input=")
    if shape is not None:
        if first is not None:
            log.info("%s: tracing on input_shape %s; dataset '%s' is not used", src.name, shape, first[1])
        return TraceInput(zeros_input(model, shape), f"input_shape {list(shape)}", ("input_shape",))
    if first is not None:
        return TraceInput(zeros_input(model, DATASET_SHAPES[first[1]]),
                          f"dataset '{first[1]}' (input {list(DATASET_SHAPES[first[1]])})",
                          ("extensions", first[0], "dataset"))
    if removers:
        return TraceInput(None, "the model's first forward", ("extensions", next(iter(removers))), pending=True)
    folds = [i for i, item in enumerate(data.get("policies") or []) if isinstance(item, dict)
             and isinstance(item.get("pruner"), dict) and (item["pruner"].get("args") or {}).get("fold_batchnorm")]
    if folds:
        return TraceInput(None, "the model's first forward", ("policies", folds[0], "pruner", "args", "fold_batchnorm"),
                          pending=True)
    return TraceInput(None, "none")


def _protected(built: dict[str, dict[str, Any]]) -> list[str]:
    """Layers some thinning extension protects: structured pruners must not mask what thinning keeps."""
    return sorted({p for c in built["extensions"].values() if isinstance(c, StructureRemover) for p in c.protected})


def _traced_groups(src: ScheduleSource, model: nn.Module, trace: TraceInput, protected: list[str]) -> GroupResolver:
    """The resolver for `trace`: traced groups when it has a value, else per-module groups (traceability checked)."""
    hint = ("give the schedule's input_shape: [N, C, H, W] that the model accepts, or pass dummy_input="
            if trace.value is not None else None)
    try:
        if trace.value is None:
            if trace.pending:
                check_traceable(model, protected)
            return LocalGroups(model)
        return group_resolver(model, trace.value, protected)
    except ThinningError as exc:
        raise src.error(trace.path, f"tracing on {trace.origin}: {exc}", hint=hint) from None


def _mask_gradients(policies: list[Policy], ctx: Context) -> None:
    for policy in policies:
        if (policy.kind == "pruner" and policy.args.get("mask_gradients")
                and not getattr(policy.component, "transient", False)):
            for name in sorted(policy.component.pruned_params(ctx)):
                ctx.masks.mask_gradients(name)


def _when_input_seen(src: ScheduleSource, policies: list[Policy], trace: TraceInput,
                     protected: list[str]) -> InputReady:
    """What the scheduler runs at the model's first forward: trace on it, then the checks that need the trace."""
    def ready(ctx: Context, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        try:
            inputs = one_sample(args, kwargs)
        except ThinningError as exc:
            raise src.error(trace.path, str(exc)) from None
        ctx.groups = _traced_groups(src, ctx.model, TraceInput(inputs, f"the first forward's input {_shapes(inputs)}",
                                                                trace.path), protected)
        ctx.dummy_input = inputs
        _check_conflicts(src, policies, ctx)
        _mask_gradients(policies, ctx)
        log.info("%s: traced the model on its first forward's input %s", src.name, _shapes(inputs))

    return ready


def _shapes(inputs: Any) -> str:
    items = inputs if isinstance(inputs, tuple) else (inputs,)
    return ", ".join("x".join(map(str, t.shape)) for t in items)


def _config(model: nn.Module, optimizer: torch.optim.Optimizer | None, src: ScheduleSource,
            dummy_input: Any | None, teachers: Mapping[str, nn.Module] | None = None) -> CompressionScheduler:
    data = _check_top_level(src)
    masks = MaskStore(model)
    built = _build_components(src, data, model, optimizer, teachers=dict(teachers or {}), dummy_input=dummy_input)
    _check_weights(src, built, masks.params)
    policies = _build_policies(src, data, built) + _unscheduled_post_training(src, built, data)
    trace = _trace_input(src, data, built, model, dummy_input)
    protected = _protected(built)
    ctx = Context(model, optimizer, masks, _traced_groups(src, model, trace, protected), trace.value)
    _check_conflicts(src, policies, ctx)  # with per-module groups until a pending trace is done, then again
    used = {(POLICY_KINDS[p.kind], p.instance_name) for p in policies}
    for section, comps in built.items():
        for instance in comps:
            if (section, str(instance)) not in used:
                log.warning("%s: %s '%s' is defined but no policy uses it", src.name, section[:-1], instance)
    for policy in policies:
        if isinstance(policy.component, Inactive):
            log.info("%s: %s '%s' is inactive: %s (its saved state is kept)", src.name, policy.kind,
                     policy.instance_name, policy.component.reason)
    _mask_gradients(policies, ctx)
    # Only now, with the whole schedule checked, may components change the model.
    prepared: set[int] = set()
    for policy in policies:
        if id(policy.component) not in prepared:
            prepared.add(id(policy.component))
            policy.component.prepare(ctx)
    masks.refresh()
    if trace.pending:
        log.info("%s: no dummy_input, input_shape or dataset: the model is traced on its first forward's input, "
                 "before that forward runs", src.name)
    ready = _when_input_seen(src, policies, trace, protected) if trace.pending else None
    return CompressionScheduler(ctx, policies, data, input_ready=ready)


__all__ = ["ScheduleError", "dict_config", "file_config", "group_resolver"]
