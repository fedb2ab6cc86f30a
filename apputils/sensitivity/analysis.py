"""The analysis: check the request, choose the channel groups and the evaluator, visit every (weight, level)."""
from __future__ import annotations

import difflib
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from compress.masks import canonical
from compress.modules import eval_mode, unwrap
from compress.pruning.groups import GroupResolver, LocalGroups
from compress.thinning import TracedGroups

from .. import distributed
from ..workbooks import write_sensitivity_workbook
from .evaluation import Evaluation, device_of
from .evaluators import CachedEvaluation, Evaluator, WholeModel, try_trace
from .steps import SENSE_TYPES, Plan, SenseType, prunable_weights
from .tuning import MEMORY_FORMATS, MemoryFormat

log = logging.getLogger(__name__)

DEFAULT_SPARSITIES: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(10))


def sensitivity_analysis(model: nn.Module, sensitivity_file: str | Path | None,
                         test_func: Callable[[nn.Module], Mapping[str, float]] | Evaluation,
                         sense_type: SenseType = "element", sparsities: Sequence[float] | None = None, *,
                         weights: Sequence[str] | None = None, group_resolver: GroupResolver | None = None,
                         dummy_input: torch.Tensor | None = None, use_cache: bool = True,
                         memory_format: MemoryFormat = "auto", fast_kernels: bool = True,
                         progress: bool = True) -> pd.DataFrame:
    """Prune each weight alone to each level, evaluate, restore; write the results and return them.

    Returns a long DataFrame: `parameter`, `sparsity` (requested), `actual_sparsity` (of that weight
    after pruning), then one column per metric. `sensitivity_file` (.xlsx) gets one sheet per metric
    (rows = weights, columns = levels) with a line chart, plus the long table; a .csv of the long
    table is written next to it. `weights` limits the analysis to some weights.
    For 'filter' / 'channel', the coupled channel groups come from `group_resolver`, else from a
    trace of the model on `dummy_input` (or the Evaluation's first batch); weights whose
    filters / channels cannot be pruned (e.g. the model's output layer) are skipped and listed in the
    workbook. `use_cache=False` turns the layer-skipping off (for comparison).
    `memory_format` (cached path only): 'auto' runs the layers channels-last (NHWC) when the model
    has 2-D convolutions and gives the same output that way; 'contiguous' keeps NCHW. Channels-last
    sums in another order, so its metrics can differ from an NCHW run in the last float digits.
    `fast_kernels` (cached path, CPU): convolutions with few output channels run as a matrix product
    plus shifted sums (apputils.conv_taps) where that is measured faster on the first batch; their
    sums run in another order too.
    """
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f"memory_format={memory_format!r} is not supported: use one of {', '.join(MEMORY_FORMATS)}")
    levels, names = _validate(model, sense_type, sparsities, weights)
    inner = unwrap(model)
    params = {canonical(n): p for n, p in inner.named_parameters()}
    with eval_mode(model):
        resolver = group_resolver or _default_resolver(inner, sense_type, test_func, dummy_input)
        names, skipped = _prunable_by_groups(names, weights is not None, resolver, sense_type)
        runner = try_trace(inner) if use_cache and isinstance(test_func, Evaluation) else None
        evaluator: Evaluator = (WholeModel(model, test_func, params) if runner is None else
                                CachedEvaluation(runner, test_func, model, params, memory_format, fast_kernels))
        rows = _analyse(Plan(params, names, levels, sense_type, resolver), evaluator, progress)
    df = pd.DataFrame(rows)
    if sensitivity_file is not None and distributed.is_main():
        metric_names = [c for c in df.columns if c not in ("parameter", "sparsity", "actual_sparsity")]
        write_sensitivity_workbook(df, sensitivity_file, metric_names, sense_type,
                                   notes=[(f"skipped {n}", r) for n, r in skipped])
    return df


def _analyse(plan: Plan, evaluator: Evaluator, progress: bool) -> list[dict[str, Any]]:
    """One row per (weight, level); a level that leaves the weight unchanged reuses the baseline.

    Under torchrun (a process group of W processes) the (weight, level) pairs are shared out across the
    ranks by what they cost (`shares`) and every rank gets all rows, in the plan's order: the same table as
    one process.
    """
    baseline = evaluator.baseline()
    rows: list[dict[str, Any]] = []
    work = [WeightWork(name, plan.levels, *evaluator.cost(plan.members(name))) for name in plan.names]
    mine = shares(work, distributed.world_size())[distributed.rank()]
    my_levels: dict[str, set[float]] = {}
    for name, level in mine:
        my_levels.setdefault(name, set()).add(level)
    with tqdm(total=len(mine), desc=f"sensitivity ({plan.sense_type})",
              disable=not progress or not distributed.is_main(), unit="step") as bar:
        for name in (n for n in plan.names if n in my_levels):
            levels = my_levels[name]
            bar.set_postfix_str(name)
            steps = [s for s in plan.steps(name) if s.level in levels]
            measured = evaluator.evaluate([s for s in steps if s.changed])
            for step in steps:
                metrics = next(measured) if step.changed else dict(baseline)
                rows.append({"parameter": name, "sparsity": step.level, "actual_sparsity": step.actual, **metrics})
                bar.update(1)
    if not distributed.active():
        return rows
    by_pair = {(row["parameter"], row["sparsity"]): row for share in distributed.all_gather_object(rows)
               for row in share}
    return [by_pair[(name, level)] for name in plan.names for level in plan.levels]


@dataclass(frozen=True)
class WeightWork:
    """What analysing one weight costs: `setup` once on each rank that takes any of its levels (the
    layers before it, whose output is cached), `per_level` for each level above 0 (level 0 prunes
    nothing: its row is the baseline's)."""

    name: str
    levels: Sequence[float]
    setup: float
    per_level: float

    def cost(self, levels: Sequence[float]) -> float:
        """What analysing `levels` of this weight on one rank costs."""
        return self.setup + self.per_level * sum(1 for lv in levels if lv > 0)


def shares(work: Sequence[WeightWork], world: int) -> list[set[tuple[str, float]]]:
    """The (weight, level) pairs each of `world` ranks analyses, balanced by cost.

    A weight's levels stay together (its set-up is paid once) unless they cost more than half a rank's
    fair share; then they are cut into that many pieces. The costliest piece goes first, each onto the
    least loaded rank (ties: plan order, lowest rank), so every rank computes the same split from the
    same costs (rank 0's measurements).
    """
    out: list[set[tuple[str, float]]] = [set() for _ in range(world)]
    limit = sum(w.cost(w.levels) for w in work) / world / 2
    pieces: list[tuple[float, int, str, list[float]]] = []
    for order, w in enumerate(work):
        changed = [lv for lv in w.levels if lv > 0]
        n = max(1, min(len(changed), math.ceil(w.cost(w.levels) / limit) if limit > 0 else 1))
        parts = [changed[k * len(changed) // n:(k + 1) * len(changed) // n] for k in range(n)]
        parts[0] += [lv for lv in w.levels if lv <= 0]
        pieces += [(w.cost(part), order, w.name, part) for part in parts]
    loads = [0.0] * world
    for cost, _, name, part in sorted(pieces, key=lambda p: (-p[0], p[1])):
        r = loads.index(min(loads))
        out[r].update((name, lv) for lv in part)
        loads[r] += cost
    return out


def _validate(model: nn.Module, sense_type: str, sparsities: Sequence[float] | None,
              weights: Sequence[str] | None) -> tuple[list[float], list[str]]:
    """The levels and canonical weight names to visit, or a clear error about the request."""
    if sense_type not in SENSE_TYPES:
        raise ValueError(f"sense_type={sense_type!r} is not supported: use one of {', '.join(SENSE_TYPES)} "
                         "('element' = magnitude, 'filter' = L1-ranked filters, 'channel' = input channels)")
    levels = list(DEFAULT_SPARSITIES if sparsities is None else sparsities)
    if not levels:
        raise ValueError("sparsities is empty: give levels in [0, 1), e.g. [0.0, 0.1, ..., 0.9]")
    for s in levels:
        if not isinstance(s, (int, float)) or not 0.0 <= float(s) < 1.0 or math.isnan(float(s)):
            raise ValueError(f"sparsity level {s!r} is outside [0, 1): a level is the fraction pruned")
    if len(set(levels)) != len(levels):
        raise ValueError(f"sparsities {levels} list a level twice; give each level once")
    candidates = prunable_weights(model)
    if weights is None:
        names = candidates
    else:
        names = []
        for w in weights:
            cw = canonical(w)
            if cw not in candidates:
                close = difflib.get_close_matches(cw, candidates, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else f"; prunable weights: {candidates}"
                raise ValueError(f"weight '{w}' is not a prunable weight of the model (parameters with 2 or "
                                 f"more dimensions){hint}")
            names.append(cw)
    if not names:
        raise ValueError("the model has no prunable weights (parameters with 2 or more dimensions)")
    return [float(s) for s in levels], names


def _default_resolver(model: nn.Module, sense_type: str, test_func: Any, dummy_input: Any) -> GroupResolver:
    """Graph-coupled groups (compress.thinning.TracedGroups) when an example input is at hand."""
    if sense_type == "element":
        return LocalGroups(model)
    if dummy_input is None and isinstance(test_func, Evaluation):
        dummy_input = next(iter(test_func.batches(device_of(model))))[0]
    if dummy_input is not None:
        try:
            return TracedGroups(model, dummy_input)
        except Exception as err:  # noqa: BLE001 - fall back to module-local groups, and say so
            log.warning("sensitivity: could not trace channel groups (%s: %s); pruning each weight's own "
                        "filters/channels only", type(err).__name__, err)
    else:
        log.warning("sensitivity: no example input (give dummy_input= or an Evaluation), so '%s' pruning "
                    "covers each weight's own module only, not the layers coupled to it", sense_type)
    return LocalGroups(model)


def _prunable_by_groups(names: list[str], requested: bool, resolver: GroupResolver,
                        sense_type: str) -> tuple[list[str], list[tuple[str, str]]]:
    """The weights whose filters / channels can be pruned, and (name, reason) for the others."""
    if sense_type == "element":
        return names, []
    kind = "filters" if sense_type == "filter" else "channels"
    keep, skipped = [], []
    for name in names:
        try:
            resolver.group(name, kind)
        except ValueError as err:
            if requested:
                raise ValueError(f"weight '{name}' cannot be analysed by {sense_type}: {err}") from err
            skipped.append((name, str(err)))
            log.info("sensitivity: skipping '%s': %s", name, err)
            continue
        keep.append(name)
    if not keep:
        raise ValueError(f"no weight of the model can be pruned by {sense_type}: "
                         + "; ".join(f"{n}: {r}" for n, r in skipped))
    return keep, skipped
