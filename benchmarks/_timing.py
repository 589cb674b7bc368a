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
