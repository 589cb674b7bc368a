"""Timing shared by the benchmark scripts: median, min and max over repeats after warm-up."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> tuple[float, float, float]:
    """Seconds per call of ``fn``: (median, min, max) over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), max(times)


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each of ``fns`` in ``repeats`` rounds after ``warmup`` rounds. Every round calls each
    function once, in an order reversed every other round, so that a machine whose load drifts (another process
    on the same cores) slows them alike and per-round ratios stay meaningful."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return times
