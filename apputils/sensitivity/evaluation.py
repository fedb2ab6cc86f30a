"""The evaluation API: a test set plus a metric function (`Evaluation`), and checking what a test returns."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from compress.modules import eval_mode

Metrics = dict[str, float]


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
        acc = MetricAverage()
        with eval_mode(model), torch.no_grad():
            for x, y in self.batches(device_of(model)):
                acc.add(self.metrics(model(x), y), batch_size(x))
        return acc.result()


class MetricAverage:
    """Batch-size-weighted mean of named metrics."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, values: Mapping[str, float | torch.Tensor], n: int) -> None:
        """Add one batch's mean metrics, weighted by its size `n`."""
        checked = check_metrics(values, "Evaluation.metrics")
        for k, v in checked.items():
            self.sums[k] = self.sums.get(k, 0.0) + v * n
        self.count += n

    def result(self) -> Metrics:
        """The mean of every metric over all batches added."""
        if self.count == 0:
            raise ValueError("the Evaluation's loader yielded no batches: give it a non-empty test set")
        return {k: v / self.count for k, v in self.sums.items()}


def check_metrics(values: Any, where: str) -> Metrics:
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


def call_test(test_func: Any, model: nn.Module) -> Metrics:
    """Run a user's test_func (or an Evaluation) on `model` and check that it returned named metrics."""
    if not callable(test_func):
        raise TypeError(f"test_func must be a callable test_func(model) -> dict of metrics or an "
                        f"apputils.sensitivity.Evaluation; got {type(test_func).__name__}")
    return check_metrics(test_func(model), f"test_func {getattr(test_func, '__name__', test_func)!r}")


def device_of(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def batch_size(x: Any) -> int:
    """The number of samples in a model input: its first dimension (1 for anything else)."""
    return int(x.shape[0]) if torch.is_tensor(x) and x.dim() > 0 else 1
