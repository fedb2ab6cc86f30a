"""How the analysis measures a step: the whole test per step, or only the layers from the pruned one on.

Both evaluators give `baseline()` (the unpruned model by the whole test: the reference),
`evaluate(steps)`, which yields the metrics of each step in turn with the step's values put into the
parameters and restored afterwards, and `cost(params)`, what the steps of a weight cost (to share the
analysis out across ranks).
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol

import torch
import torch.fx
from torch import nn
from torch.nn import functional as F

from .. import distributed
from .evaluation import Evaluation, MetricAverage, Metrics, batch_size, call_test, device_of
from .partial_run import PartialRunner
from .steps import Step, with_values
from .tuning import choose_kernels, choose_memory_format, node_costs

log = logging.getLogger(__name__)

#: the most output channels (levels x the layer's own) a stacked evaluation of the levels may have
STACK_CHANNELS = 32


class Evaluator(Protocol):
    """Measures the unpruned model, then the steps of one weight."""

    def baseline(self) -> Metrics:
        """The unpruned model's metrics by the whole test."""

    def evaluate(self, steps: list[Step]) -> Iterator[Metrics]:
        """The metrics of each step (all of one weight, each changing the model), in order."""

    def cost(self, params: Iterable[str]) -> tuple[float, float]:
        """(once per rank that evaluates any step changing `params`, each such step), in one unit."""


class WholeModel:
    """Runs the user's whole test per step: works with any test_func and any model."""

    def __init__(self, model: nn.Module, test_func: Any, params: Mapping[str, nn.Parameter]):
        self.model, self.test_func, self.params = model, test_func, params

    def run(self) -> Metrics:
        """The whole test on the model as it is now."""
        return call_test(self.test_func, self.model)

    def baseline(self) -> Metrics:
        """The unpruned model's metrics by the whole test."""
        return self.run()

    def evaluate(self, steps: list[Step]) -> Iterator[Metrics]:
        """Each step's metrics by the whole test, its values in place."""
        for step in steps:
            yield with_values(self.params, step.new_values, self.run)

    def cost(self, params: Iterable[str]) -> tuple[float, float]:
        """Every step runs the whole test: no set-up, one unit per step."""
        return 0.0, 1.0


class CachedEvaluation:
    """Evaluates from a cached point of the traced graph: the layers before it run once per batch."""

    def __init__(self, runner: PartialRunner, evaluation: Evaluation, model: nn.Module,
                 params: Mapping[str, nn.Parameter], memory_format: str, fast_kernels: bool):
        self.runner, self.evaluation, self.model, self.params = runner, evaluation, model, params
        self.memory_format, self.fast_kernels = memory_format, fast_kernels
        self.batches = list(evaluation.batches(device_of(model)))
        self.start = -1
        self.cache: list[tuple[dict[torch.fx.Node, Any], Any, int]] = []
        #: seconds per traced node on the first batch, measured when the analysis is shared out
        self.node_costs: list[float] | None = None

    def baseline(self) -> Metrics:
        """The unpruned model's metrics by the whole test; then (the test set now known to be non-empty)
        the runner's memory format and kernels are chosen on the first batch."""
        metrics = call_test(self.evaluation, self.model)
        first = self.batches[0][0]
        choose_memory_format(self.runner, self.model, first, self.memory_format)
        if self.fast_kernels:
            choose_kernels(self.runner, first)
        if distributed.world_size() > 1:
            self.node_costs = node_costs(self.runner, first)
        return metrics

    def cost(self, params: Iterable[str]) -> tuple[float, float]:
        """(the layers before the first that reads `params`, run once per rank to fill the cache; those
        from it on, run per step), in seconds per test set (node counts when not measured)."""
        start = self.runner.first_use(params)
        costs = self.node_costs or [1.0] * len(self.runner.nodes)
        return len(self.batches) * sum(costs[:start]), len(self.batches) * sum(costs[start:])

    def evaluate(self, steps: list[Step]) -> Iterator[Metrics]:
        """Cache what crosses the first layer the steps change, then run each step from there."""
        if not steps:
            return
        self.cache_at(self.runner.first_use(steps[0].new_values))  # the group is the same at every level
        stacked = self.stacked(steps)
        if stacked is not None:
            yield from stacked
            return
        for step in steps:
            yield with_values(self.params, step.new_values, self.run)

    def cache_at(self, start: int) -> None:
        """Run the layers before node `start` on every batch and keep what crosses that point."""
        with torch.no_grad():
            self.cache = [(self.runner.run_prefix(start, x), y, batch_size(x)) for x, y in self.batches]
        self.start = start

    def run(self) -> Metrics:
        """The test's metrics, running only the layers from the cached point on."""
        acc = MetricAverage()
        with torch.no_grad():
            for cached, y, n in self.cache:
                acc.add(self.evaluation.metrics(self.runner.run_suffix(self.start, cached), y), n)
        return acc.result()

    def stacked(self, steps: list[Step]) -> list[Metrics] | None:
        """Metrics of every step at once when the pruned layer is a narrow-output Conv2d (an image
        network's output layer): one convolution with the levels' weights stacked as output channels
        costs about as much as one level (CPU kernels are inefficient for 1-3 output channels), then the
        layers after it run per level. None when the layer does not qualify (then steps run one by one)."""
        node = self.runner.nodes[self.start]
        conv = self.runner.module(node) if node.op == "call_module" else None
        weight = f"{node.target}.weight"
        if (type(conv) is not nn.Conv2d or conv.groups != 1 or conv.padding_mode != "zeros"
                or isinstance(conv.padding, str) or len(node.args) != 1 or node.kwargs
                or conv.out_channels * len(steps) > STACK_CHANNELS
                or any(set(s.new_values) != {weight} for s in steps)):
            return None
        w = torch.cat([s.new_values[weight] for s in steps])
        b = conv.bias.detach().repeat(len(steps)) if conv.bias is not None else None
        accs = [MetricAverage() for _ in steps]
        with torch.no_grad():
            for cached, y, n in self.cache:
                x = cached[node.args[0]] if isinstance(node.args[0], torch.fx.Node) else node.args[0]
                outs = F.conv2d(x, w, b, conv.stride, conv.padding, conv.dilation).split(conv.out_channels, dim=1)
                for acc, out in zip(accs, outs, strict=True):
                    acc.add(self.evaluation.metrics(self.runner.run_suffix(self.start + 1, {**cached, node: out}),
                                                    y), n)
        return [acc.result() for acc in accs]


def try_trace(model: nn.Module) -> PartialRunner | None:
    """A partial runner for `model`, or None (and a log line) when it does not trace with torch.fx."""
    try:
        return PartialRunner(model)
    except Exception as err:  # noqa: BLE001 - any tracing failure means: use the whole-model path
        log.info("sensitivity: the model does not trace with torch.fx (%s: %s); every step re-runs the "
                 "whole model", type(err).__name__, str(err).splitlines()[0] if str(err) else "")
        return None
