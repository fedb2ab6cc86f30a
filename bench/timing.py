"""Helpers the timing benchmarks share: a wall + CPU stopwatch, rotating the order of variants, and an
interval for a median."""
from __future__ import annotations

import random
import statistics
import time
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


class Stopwatch:
    """Wall and CPU (this process) seconds, summed over the blocks it times (`with watch: ...`)."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def __enter__(self) -> Stopwatch:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall += time.perf_counter() - self._wall
        self.cpu += time.process_time() - self._cpu


def rotation(items: Sequence[T], k: int) -> list[T]:
    """`items` starting at position k (mod len): round k of a rotation, so no variant always runs first."""
    k %= len(items)
    return [*items[k:], *items[:k]]


def median_interval(values: Sequence[float], confidence: float = 0.95, resamples: int = 2000,
                    seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval of the median of `values` (percentiles of the medians of resamples)."""
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    tail = (1 - confidence) / 2
    return medians[int(tail * resamples)], medians[min(int((1 - tail) * resamples), resamples - 1)]
