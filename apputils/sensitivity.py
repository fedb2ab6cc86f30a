"""Pruning sensitivity: how each metric moves when one weight alone is pruned to each level.

Every prunable weight (2 or more dimensions) is pruned to each sparsity level in turn — by element
magnitude, by L1-ranked filters or by L1-ranked input channels (with the whole coupled channel group)
— the model is evaluated, and the weight is restored in place. Nothing is deep-copied and the model is
bit-identical when the function returns, also when the evaluation raises.

Two forms of `test_func` are accepted:

* any callable `test_func(model) -> {'psnr': .., 'ssim': .., ...}`: the whole test runs per step;
* an `Evaluation(loader, metrics)`: the tool drives the loader itself and, when the model traces with
  torch.fx, runs the layers before the pruned one only once per weight. The activations that cross
  the pruned layer's position (its input, plus any skip tensors a branchy network keeps alive) are
  cached per batch, and each level re-runs only the layers from the pruned one to the output, in
  channels-last memory format when the model's convolutions allow it (faster CPU kernels), with
  narrow-output convolutions (an image network's output layer) run as a matrix product plus shifted
  sums where that is measured faster (apputils.conv_taps).

A level that leaves a weight unchanged (level 0, or a level at or below the weight's existing
sparsity) is not re-evaluated: the baseline metrics are reused, since the model is the same.
"""
from __future__ import annotations

import difflib
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import torch
import torch.fx
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from compress.masks import canonical
from compress.pruning.criteria import count_to_prune, lowest, magnitude_level_mask
from compress.pruning.groups import GroupResolver, LocalGroups, group_importance, group_mask
from compress.thinning import TracedGroups

from .conv_taps import TapsConv, runs_by_taps
from .workbooks import write_sensitivity_workbook

log = logging.getLogger(__name__)

SenseType = Literal["element", "filter", "channel"]
SENSE_TYPES: tuple[str, ...] = ("element", "filter", "channel")
MemoryFormat = Literal["auto", "contiguous", "channels_last"]
MEMORY_FORMATS: tuple[str, ...] = ("auto", "contiguous", "channels_last")
#: the most output channels (levels x the layer's own) a stacked evaluation of the levels may have
STACK_CHANNELS = 32
DEFAULT_SPARSITIES: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(10))

Metrics = dict[str, float]
_IN_PLACE_OPERATORS = {"iadd", "isub", "imul", "itruediv", "ifloordiv", "imod", "ipow", "iand", "ior", "ixor",
                       "ilshift", "irshift", "imatmul", "setitem"}


def pair(batch: Any) -> tuple[Any, Any]:
    """The default `Evaluation.split`: a batch is an `(input, target)` pair."""
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise TypeError("the Evaluation's loader must yield (input, target) pairs, or give the Evaluation a "
                        f"split(batch) -> (input, target) function; it yielded {type(batch).__name__}")
    return batch[0], batch[1]


@dataclass
class Evaluation:
    """A test set and a metric function: the form of `test_func` that lets the tool skip layers.

    `loader` must give the same batches every time it is iterated (a test loader: no shuffling, no
    random crops). `split(batch)` returns `(model input, target)` (default: the batch is that pair);
    the input is moved to the model's device, and so is the target when it is a tensor.
    `metrics(output, target)` returns the batch's mean of each named metric; batches are averaged
    weighted by their size (the input's first dimension).
    Calling an Evaluation with a model runs the whole test, so it also works as a plain test_func.
    """

    loader: Iterable[Any]
    metrics: Callable[[Any, Any], Mapping[str, float | torch.Tensor]]
    split: Callable[[Any], tuple[Any, Any]] = pair

    def batches(self, device: torch.device) -> Iterator[tuple[Any, Any]]:
        """(input, target) per batch, on `device`."""
        for batch in self.loader:
            x, y = self.split(batch)
            yield (x.to(device) if torch.is_tensor(x) else x), (y.to(device) if torch.is_tensor(y) else y)

    def __call__(self, model: nn.Module) -> Metrics:
        acc = _MetricAverage()
        states = _eval_mode(model)
        try:
            with torch.no_grad():
                for x, y in self.batches(_device_of(model)):
                    acc.add(self.metrics(model(x), y), _batch_size(x))
        finally:
            _restore_modes(states)
        return acc.result()


class _MetricAverage:
    """Batch-size-weighted mean of named metrics."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, values: Mapping[str, float | torch.Tensor], n: int) -> None:
        checked = _check_metrics(values, "Evaluation.metrics")
        for k, v in checked.items():
            self.sums[k] = self.sums.get(k, 0.0) + v * n
        self.count += n

    def result(self) -> Metrics:
        if self.count == 0:
            raise ValueError("the Evaluation's loader yielded no batches: give it a non-empty test set")
        return {k: v / self.count for k, v in self.sums.items()}


def _check_metrics(values: Any, where: str) -> Metrics:
    """Metrics as plain floats, or a clear error naming what was returned."""
    if not isinstance(values, Mapping) or not values:
        raise TypeError(f"{where} must return a non-empty dict of named metrics, e.g. "
                        f"{{'psnr': 30.1, 'ssim': 0.91}}; it returned {type(values).__name__}: {values!r:.80}")
    out = {}
    for k, v in values.items():
        try:
            out[str(k)] = float(v)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"{where} returned metric {k!r} = {v!r:.60}, which is not a number") from err
    return out


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _batch_size(x: Any) -> int:
    return int(x.shape[0]) if torch.is_tensor(x) and x.dim() > 0 else 1


def _eval_mode(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    states = [(m, m.training) for m in model.modules()]
    model.eval()
    return states


def _restore_modes(states: list[tuple[nn.Module, bool]]) -> None:
    for m, training in states:
        m.training = training


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside DataParallel / DistributedDataParallel."""
    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    return model


# --------------------------------------------------------------------------------------------
# What one step prunes


def prunable_weights(model: nn.Module) -> list[str]:
    """Canonical names of the weights sensitivity analysis visits: parameters of 2+ dimensions."""
    return [canonical(n) for n, p in model.named_parameters() if p.dim() >= 2]


def pruned_tensors(params: Mapping[str, torch.Tensor], name: str, level: float, sense_type: str,
                   resolver: GroupResolver) -> dict[str, torch.Tensor]:
    """The new values of every tensor that pruning `name` to `level` changes (the group's members)."""
    weight = params[name].detach()
    if sense_type == "element":
        return {name: weight * magnitude_level_mask(weight, level)}
    group = resolver.group(name, "filters" if sense_type == "filter" else "channels")
    scores = group_importance(group, params, 1)
    keep = ~lowest(scores, count_to_prune(level, group.size))
    masks = group_mask(group, keep, {n: params[n].shape for n in group.params})
    return {n: params[n].detach() * m.to(device=params[n].device, dtype=params[n].dtype)
            for n, m in masks.items()}


# --------------------------------------------------------------------------------------------
# Running only the layers after the pruned one


class _PartialRunner:
    """Runs a torch.fx trace of the model from any node, given the values that cross that point.

    The traced GraphModule shares the model's submodules and parameters, so a weight changed in
    place in the model is seen here.
    """

    def __init__(self, model: nn.Module):
        self.gm = torch.fx.symbolic_trace(model)
        self.nodes = list(self.gm.graph.nodes)
        self.index = {n: i for i, n in enumerate(self.nodes)}
        self.interp = torch.fx.Interpreter(self.gm, garbage_collect_values=False)
        #: index of the first node after the inputs: running from here is running the whole model
        self.body = sum(1 for n in self.nodes if n.op == "placeholder")
        self._in_place: dict[int, bool] = {}
        #: per node index, the nodes whose value is read for the last time there (freed afterwards,
        #: as a plain forward frees them: keeping every activation alive made runs ~2x slower on CPU)
        self._free_after: list[list[torch.fx.Node]] = [[] for _ in self.nodes]
        for node in self.nodes:
            if node.users:
                self._free_after[max(self.index[u] for u in node.users)].append(node)
        #: when True, every 4-D value is kept channels-last (NHWC), which CPU convolution kernels run
        #: faster than NCHW (measured 1.6x on C2SRCNN); see `choose_memory_format`
        self.channels_last = False
        #: per call_module node, a faster function of its single input that gives the same value
        #: (apputils.conv_taps for narrow-output convolutions); see `choose_kernels`
        self.kernels: dict[torch.fx.Node, Callable[[torch.Tensor], torch.Tensor]] = {}

    def _run(self, env: dict[torch.fx.Node, Any], start: int, stop: int) -> None:
        """Run nodes [start, stop) into `env`, dropping each value after its last reader."""
        for i in range(start, stop):
            node = self.nodes[i]
            kernel = self.kernels.get(node)
            value = kernel(env[node.args[0]]) if kernel is not None else self.interp.run_node(node)
            if self.channels_last and torch.is_tensor(value) and value.dim() == 4:
                value = value.contiguous(memory_format=torch.channels_last)
            env[node] = value
            for done in self._free_after[i]:
                env.pop(done, None)

    def first_use(self, params: Iterable[str]) -> int:
        """Index of the first node that reads any of `params` (the output node when none does)."""
        wanted = set(params)
        for i, node in enumerate(self.nodes):
            if node.op in ("call_module", "get_attr"):
                prefix = f"{node.target}."
                if any(p == node.target or p.startswith(prefix) for p in wanted):
                    return max(i, self.body)
        return len(self.nodes) - 1

    def frontier(self, start: int) -> list[torch.fx.Node]:
        """Nodes before `start` whose values are read at or after it."""
        return [n for n in self.nodes[:start] if any(self.index[u] >= start for u in n.users)]

    def run_prefix(self, start: int, x: Any) -> dict[torch.fx.Node, Any]:
        """Run nodes [0, start) on input x; return the frontier's values."""
        env: dict[torch.fx.Node, Any] = {}
        self.interp.env = env
        self.interp.args_iter = iter((x,))
        self._run(env, 0, start)
        return {n: env[n] for n in self.frontier(start)}

    def input_of(self, node: torch.fx.Node, x: Any) -> Any:
        """The value of `node`'s first argument when the model runs on input x."""
        return self.run_prefix(self.index[node], x)[node.args[0]]

    def _maybe_in_place(self, node: torch.fx.Node) -> bool:
        """Whether `node` may write into one of its inputs (`x += y`, `relu_`, `ReLU(inplace=True)`)."""
        if node.op == "call_module":
            return bool(getattr(self.gm.get_submodule(str(node.target)), "inplace", False))
        if node.op in ("call_function", "call_method"):
            name = getattr(node.target, "__name__", str(node.target))
            return bool(node.kwargs.get("inplace", False)) or name.endswith("_") and not name.endswith("__") \
                or name in _IN_PLACE_OPERATORS
        return False

    def writes_in_place(self, start: int) -> bool:
        """Whether any node from `start` on may write into a tensor (then cached values are cloned)."""
        if start not in self._in_place:
            self._in_place[start] = any(self._maybe_in_place(n) for n in self.nodes[start:])
        return self._in_place[start]

    def run_suffix(self, start: int, cached: Mapping[torch.fx.Node, Any]) -> Any:
        """Run nodes [start, end) from cached frontier values; return the model's output.

        When a later node may write in place (`x += skip`, possibly through a view), the cached
        tensors are cloned first, so the cache stays valid for the next level.
        """
        clone = self.writes_in_place(start)
        env = {n: (v.clone() if clone and torch.is_tensor(v) else v) for n, v in cached.items()}
        self.interp.env = env
        self.interp.args_iter = iter(())
        output = self.nodes[-1]
        if output.op != "output":
            raise RuntimeError("the traced graph does not end in an output node")
        self._run(env, start, len(self.nodes) - 1)
        return self.interp.run_node(output)


def choose_memory_format(runner: _PartialRunner, model: nn.Module, x: Any, memory_format: str) -> None:
    """Run the traced suffixes channels-last when asked, or ('auto') when the model has 2-D
    convolutions, writes nothing in place, and gives the same output that way on `x`
    (a `.view()` that needs NCHW strides, for instance, falls back to NCHW)."""
    runner.channels_last = False
    if memory_format == "contiguous" or (memory_format == "auto" and (
            not any(isinstance(m, nn.Conv2d) for m in model.modules()) or runner.writes_in_place(runner.body))):
        return
    with torch.no_grad():
        reference = model(x)
        runner.channels_last = True
        try:
            out = runner.run_suffix(runner.body, runner.run_prefix(runner.body, x))
            same = torch.is_tensor(out) and torch.is_tensor(reference) and out.shape == reference.shape \
                and torch.allclose(out.float(), reference.float(), rtol=1e-4, atol=1e-5)
        except RuntimeError as err:
            if memory_format == "channels_last":
                raise
            log.info("sensitivity: the model does not run channels-last (%s); using NCHW", str(err).splitlines()[0])
            same = False
    runner.channels_last = same or memory_format == "channels_last"


def choose_kernels(runner: _PartialRunner, x: Any, repeats: int = 3) -> None:
    """Run narrow-output convolutions by taps (apputils.conv_taps) where that gives the same output
    on `x` and is measured at least 10% faster (best of `repeats`, interleaved) on this machine."""
    runner.kernels = {}
    if not torch.is_tensor(x) or x.device.type != "cpu":  # the timing below is for CPU kernels
        return
    candidates = [n for n in runner.nodes if n.op == "call_module" and len(n.args) == 1 and not n.kwargs
                  and isinstance(n.args[0], torch.fx.Node) and runs_by_taps(runner.gm.get_submodule(str(n.target)))]
    with torch.no_grad():
        for node in candidates:
            value = runner.input_of(node, x)
            conv = runner.gm.get_submodule(str(node.target))
            if not torch.is_tensor(value) or value.dim() != 4:
                continue
            kernel = TapsConv(conv)
            reference, by_taps = conv(value), kernel(value)
            scale = float(reference.abs().max()) or 1.0
            if not torch.allclose(by_taps, reference, rtol=1e-4, atol=1e-5 * scale):
                log.info("sensitivity: %s differs when run by taps; keeping conv2d", node.target)
                continue
            taps, plain = best_times((kernel, conv), value, repeats)
            if taps < 0.9 * plain:
                runner.kernels[node] = kernel
                log.info("sensitivity: %s runs by taps (%.1f ms vs %.1f ms for conv2d on the first batch)",
                         node.target, 1e3 * taps, 1e3 * plain)


def best_times(functions: Sequence[Callable[[Any], Any]], value: Any, repeats: int) -> list[float]:
    """Best wall time of each function on `value` over `repeats` interleaved calls."""
    times = [math.inf] * len(functions)
    for _ in range(repeats):
        for k, fn in enumerate(functions):
            t0 = time.perf_counter()
            fn(value)
            times[k] = min(times[k], time.perf_counter() - t0)
    return times


def _try_trace(model: nn.Module) -> _PartialRunner | None:
    try:
        return _PartialRunner(model)
    except Exception as err:  # noqa: BLE001 - any tracing failure means: use the whole-model path
        log.info("sensitivity: the model does not trace with torch.fx (%s: %s); every step re-runs the "
                 "whole model", type(err).__name__, str(err).splitlines()[0] if str(err) else "")
        return None


# --------------------------------------------------------------------------------------------
# The analysis


@dataclass
class _Step:
    """One (weight, level) of the analysis and what pruning it does."""

    name: str
    level: float
    new_values: dict[str, torch.Tensor]
    actual: float
    changed: bool


def _validate(model: nn.Module, sense_type: str, sparsities: Sequence[float] | None,
              weights: Sequence[str] | None) -> tuple[list[float], list[str]]:
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
        dummy_input = next(iter(test_func.batches(_device_of(model))))[0]
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
    inner = _unwrap(model)
    params = {canonical(n): p for n, p in inner.named_parameters()}
    states = _eval_mode(model)
    try:
        resolver = group_resolver or _default_resolver(inner, sense_type, test_func, dummy_input)
        names, skipped = _prunable_by_groups(names, weights is not None, resolver, sense_type)
        runner = _try_trace(inner) if use_cache and isinstance(test_func, Evaluation) else None
        rows = _analyse(model, params, names, levels, sense_type, resolver, test_func, runner, memory_format,
                        fast_kernels, progress)
    finally:
        _restore_modes(states)
    df = pd.DataFrame(rows)
    if sensitivity_file is not None:
        metric_names = [c for c in df.columns if c not in ("parameter", "sparsity", "actual_sparsity")]
        write_sensitivity_workbook(df, sensitivity_file, metric_names, sense_type,
                                   notes=[(f"skipped {n}", r) for n, r in skipped])
    return df


class _CachedEvaluation:
    """Evaluates from a cached point of the traced graph: the layers before it ran once per batch."""

    def __init__(self, runner: _PartialRunner, evaluation: Evaluation, device: torch.device):
        self.runner = runner
        self.evaluation = evaluation
        self.batches = list(evaluation.batches(device))
        self.start = -1
        self.cache: list[tuple[dict[torch.fx.Node, Any], Any, int]] = []

    def cache_at(self, start: int) -> None:
        """Run the layers before node `start` on every batch and keep what crosses that point."""
        with torch.no_grad():
            self.cache = [(self.runner.run_prefix(start, x), y, _batch_size(x)) for x, y in self.batches]
        self.start = start

    def __call__(self) -> Metrics:
        acc = _MetricAverage()
        with torch.no_grad():
            for cached, y, n in self.cache:
                acc.add(self.evaluation.metrics(self.runner.run_suffix(self.start, cached), y), n)
        return acc.result()

    def stacked(self, steps: list[_Step]) -> list[Metrics] | None:
        """Metrics of every step at once when the pruned layer is a narrow-output Conv2d (an image
        network's output layer): one convolution with the levels' weights stacked as output channels
        costs about as much as one level (CPU kernels are inefficient for 1-3 output channels), then the
        layers after it run per level. None when the layer does not qualify (then steps run one by one)."""
        node = self.runner.nodes[self.start]
        conv = self.runner.gm.get_submodule(str(node.target)) if node.op == "call_module" else None
        weight = f"{node.target}.weight"
        if (type(conv) is not nn.Conv2d or conv.groups != 1 or conv.padding_mode != "zeros"
                or isinstance(conv.padding, str) or len(node.args) != 1 or node.kwargs
                or conv.out_channels * len(steps) > STACK_CHANNELS
                or any(set(s.new_values) != {weight} for s in steps)):
            return None
        w = torch.cat([s.new_values[weight] for s in steps])
        b = conv.bias.detach().repeat(len(steps)) if conv.bias is not None else None
        accs = [_MetricAverage() for _ in steps]
        with torch.no_grad():
            for cached, y, n in self.cache:
                x = cached[node.args[0]] if isinstance(node.args[0], torch.fx.Node) else node.args[0]
                outs = F.conv2d(x, w, b, conv.stride, conv.padding, conv.dilation).split(conv.out_channels, dim=1)
                for acc, out in zip(accs, outs, strict=True):
                    acc.add(self.evaluation.metrics(self.runner.run_suffix(self.start + 1, {**cached, node: out}),
                                                    y), n)
        return [acc.result() for acc in accs]


def _analyse(model: nn.Module, params: dict[str, nn.Parameter], names: list[str], levels: list[float],
             sense_type: str, resolver: GroupResolver, test_func: Any, runner: _PartialRunner | None,
             memory_format: str, fast_kernels: bool, progress: bool) -> list[dict[str, Any]]:
    cached = _CachedEvaluation(runner, test_func, _device_of(model)) if runner is not None else None
    baseline = _call_test(test_func, model)  # the model as it runs normally: the reference
    if cached is not None:
        choose_memory_format(cached.runner, model, cached.batches[0][0], memory_format)
        if fast_kernels:
            choose_kernels(cached.runner, cached.batches[0][0])

    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(names) * len(levels), desc=f"sensitivity ({sense_type})", disable=not progress,
               unit="step")
    try:
        for name in names:
            bar.set_postfix_str(name)
            steps = [_plan_step(params, name, level, sense_type, resolver) for level in levels]
            changed = [s for s in steps if s.changed]
            results: dict[int, Metrics] = {}
            if changed and cached is not None:
                # the group's members are the same at every level
                cached.cache_at(cached.runner.first_use(changed[0].new_values))
                stacked = cached.stacked(changed)
                if stacked is not None:
                    results = {id(s): m for s, m in zip(changed, stacked, strict=True)}
            for step in steps:
                if not step.changed:
                    metrics = dict(baseline)
                elif id(step) in results:
                    metrics = results[id(step)]
                else:
                    run = cached if cached is not None else (lambda: _call_test(test_func, model))
                    metrics = _with_values(params, step.new_values, run)
                rows.append({"parameter": name, "sparsity": step.level, "actual_sparsity": step.actual,
                             **metrics})
                bar.update(1)
    finally:
        bar.close()
    return rows


def _plan_step(params: dict[str, nn.Parameter], name: str, level: float, sense_type: str,
               resolver: GroupResolver) -> _Step:
    new = pruned_tensors(params, name, level, sense_type, resolver)
    changed = any(not torch.equal(v, params[n].detach()) for n, v in new.items())
    actual = float((new[name] == 0).sum().item()) / new[name].numel()
    return _Step(name, level, new, actual, changed)


def _with_values(params: dict[str, nn.Parameter], new_values: dict[str, torch.Tensor],
                 run: Callable[[], Metrics]) -> Metrics:
    """Put `new_values` into the parameters, run, and copy the originals back (also on error)."""
    originals = {n: params[n].detach().clone() for n in new_values}
    try:
        with torch.no_grad():
            for n, v in new_values.items():
                params[n].copy_(v)
        return run()
    finally:
        with torch.no_grad():
            for n, v in originals.items():
                params[n].copy_(v)


def _call_test(test_func: Any, model: nn.Module) -> Metrics:
    if not callable(test_func):
        raise TypeError(f"test_func must be a callable test_func(model) -> dict of metrics or an "
                        f"apputils.sensitivity.Evaluation; got {type(test_func).__name__}")
    return _check_metrics(test_func(model), f"test_func {getattr(test_func, '__name__', test_func)!r}")


def suggest_levels(df: pd.DataFrame, metric: str, tolerance: float, *,
                   higher_is_better: bool = True) -> dict[str, float]:
    """Per weight, the highest tested level that costs at most `tolerance` of `metric`.

    The cost is measured from the weight's lowest tested level (0.0 by default, i.e. the unpruned
    model); a level counts only if it and every lower level stay within the tolerance, so a noisy
    recovery at a high level is not suggested.
    """
    if metric not in df.columns:
        raise ValueError(f"metric '{metric}' is not in the sensitivity table; it has "
                         f"{[c for c in df.columns if c not in ('parameter', 'sparsity', 'actual_sparsity')]}")
    out: dict[str, float] = {}
    for name, rows in df.groupby("parameter", sort=False):
        rows = rows.sort_values("sparsity")
        ref = float(rows[metric].iloc[0])
        best = float(rows["sparsity"].iloc[0])
        for level, value in zip(rows["sparsity"], rows[metric], strict=True):
            cost = ref - value if higher_is_better else value - ref
            if not cost <= tolerance:
                break
            best = float(level)
        out[str(name)] = best
    return out
