"""Shared plumbing of the reproductions: size lookup, one torch thread, the result file."""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor

from guidelab.denoiser import Denoiser, as_cond
from guidelab.guiders import Guider
from guidelab.io import write_json_atomic
from guidelab.sampling import SampleResult, sample
from guidelab.validation import did_you_mean

__all__ = ["Run", "config_for", "is_nondecreasing", "per_copy", "rounded", "sample_copies", "slope"]

C = TypeVar("C")


def config_for(name: str, size: str, sizes: Mapping[str, C]) -> C:
    """The config of ``size`` (``ci`` or ``paper``), or a ValueError naming the accepted sizes."""
    if size not in sizes:
        raise ValueError(f"size: unknown size {size!r} for reproduction {name!r}{did_you_mean(size, sizes)}")
    return sizes[size]


def per_copy(values: Sequence[float], n: int) -> Tensor:
    """A per-sample parameter for :func:`sample_copies`: value k for the k-th block of n samples, float64 (k·n,)."""
    return torch.tensor(values, dtype=torch.float64).repeat_interleave(n)


def sample_copies(
    denoiser: Denoiser, guider: Guider, copies: int, n: int, cond: Tensor | int, **options: Any
) -> SampleResult:
    """``copies`` settings of one guider in one float64 run of ``copies·n`` samples, copy-major (the settings as
    per-sample parameters, e.g. :func:`per_copy` scales), every copy from the same noise: sample i of each copy
    draws noise stream i, so settings differ by the setting alone. ``cond`` (an int or n labels) is repeated per
    copy; ``options`` go to :func:`~guidelab.sampling.sample` (grid, shape, seed, solver, ...)."""
    labels = as_cond(cond, n).repeat(copies)
    ids = torch.arange(n).repeat(copies)
    return sample(denoiser, guider, n=copies * n, cond=labels, noise_ids=ids, dtype=torch.float64, **options)


def is_nondecreasing(values: Sequence[float], tol: float = 0.0) -> bool:
    """Whether each value is at least the previous one minus ``tol``."""
    return all(b >= a - tol for a, b in itertools.pairwise(values))


def slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of y on x (NaN with fewer than two points)."""
    if len(x) < 2:
        return math.nan
    xt = torch.tensor(x, dtype=torch.float64)
    yt = torch.tensor(y, dtype=torch.float64)
    xc = xt - xt.mean()
    return float((xc * (yt - yt.mean())).sum() / (xc * xc).sum())


def rounded(value: Any, digits: int = 6) -> Any:
    """Floats (in nested lists and dicts) rounded to ``digits`` significant digits for readable JSON."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}") if math.isfinite(value) else value
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [rounded(v, digits) for v in value]
    return value


@contextmanager
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: per-op overhead dominates, and one thread gives one set of numbers
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class Run:
    """One reproduction run: times it, records the figures written, and writes ``<out_dir>/<name>.json``.

    Use as ``with Run(name, source, size, out_dir, config) as run: ...; return run.finish(results, claims)``.
    """

    def __init__(self, name: str, source: str, size: str, out_dir: str | Path, config: Any, settings: dict):
        self.name = name
        self.source = source
        self.size = size
        self.out_dir = Path(out_dir)
        self.config = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
        self.settings = settings
        self.figures: list[str] = []
        self.notes: list[str] = []
        self._start = 0.0
        self._threads: Any = None

    def __enter__(self) -> Run:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._start = time.perf_counter()
        self._threads = _one_thread()
        self._threads.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._threads.__exit__(*exc)

    def figure_path(self, suffix: str) -> Path:
        """``<out_dir>/<name>-<suffix>.png``, recorded in the result's ``figures``."""
        file = f"{self.name}-{suffix}.png"
        self.figures.append(file)
        return self.out_dir / file

    def finish(self, results: dict[str, Any], claims: dict[str, bool]) -> dict[str, Any]:
        """Write the JSON (numbers, claims, notes, figures, wall time) atomically and return it."""
        out = {
            "reproduction": self.name,
            "source": self.source,
            "size": self.size,
            "config": self.config,
            "settings": self.settings,
            "results": rounded(results),
            "claims": {k: bool(v) for k, v in claims.items()},
            "notes": self.notes,
            "figures": self.figures,
            "wall_time_s": round(time.perf_counter() - self._start, 2),
        }
        write_json_atomic(self.out_dir / f"{self.name}.json", out)
        return out
