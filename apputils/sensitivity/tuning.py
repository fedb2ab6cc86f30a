"""CPU kernel tuning for the partial runs: channels-last memory format, and narrow convolutions by taps;
and what each node costs, to share an analysis out across ranks.

The first two are checked on the first batch to give the same output as the plain model (up to the order of
float sums); the taps are also timed and kept only where they are measured faster on this machine.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.fx
from torch import nn

from apputils import distributed
from apputils.conv_taps import TapsConv, runs_by_taps

from .partial_run import PartialRunner

log = logging.getLogger(__name__)

MemoryFormat = Literal["auto", "contiguous", "channels_last"]
MEMORY_FORMATS: tuple[str, ...] = ("auto", "contiguous", "channels_last")


def choose_memory_format(runner: PartialRunner, model: nn.Module, x: Any, memory_format: str) -> None:
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


def choose_kernels(runner: PartialRunner, x: Any, repeats: int = 3) -> None:
    """Run narrow-output convolutions by taps (apputils.conv_taps) where that gives the same output
    on `x` and is measured at least 10% faster (best of `repeats`, interleaved) on this machine.

    Under a process group every rank takes rank 0's choice, so the ranks' shares of an analysis are
    computed alike (timings differ from rank to rank)."""
    runner.kernels = {}
    if not torch.is_tensor(x) or x.device.type != "cpu":  # the timing below is for CPU kernels
        return
    candidates = [n for n in runner.nodes if n.op == "call_module" and len(n.args) == 1 and not n.kwargs
                  and isinstance(n.args[0], torch.fx.Node) and runs_by_taps(runner.module(n))]
    with torch.no_grad():
        for node in candidates:
            value = runner.input_of(node, x)
            conv = runner.module(node)
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
    chosen = set(distributed.broadcast_object(sorted(node.name for node in runner.kernels)))
    runner.kernels = {node: runner.kernels.get(node) or TapsConv(runner.module(node))
                      for node in candidates if node.name in chosen}


def node_costs(runner: PartialRunner, x: Any, repeats: int = 2) -> list[float]:
    """Seconds each traced node takes on `x` (best of `repeats`), as the runner now runs it: what a step
    costs from any node on. Measured on rank 0 only (the others would disturb its timing) and sent to every
    rank, so every rank shares the analysis out alike."""
    best: list[float] = []
    if distributed.is_main():
        with torch.no_grad():
            runs = [runner.node_seconds(x) for _ in range(repeats)]
        best = [min(times) for times in zip(*runs, strict=True)]
    return distributed.broadcast_object(best)


def best_times(functions: Sequence[Callable[[Any], Any]], value: Any, repeats: int) -> list[float]:
    """Best wall time of each function on `value` over `repeats` interleaved calls."""
    times = [math.inf] * len(functions)
    for _ in range(repeats):
        for k, fn in enumerate(functions):
            t0 = time.perf_counter()
            fn(value)
            times[k] = min(times[k], time.perf_counter() - t0)
    return times
