"""The prescriptions of Chidambaram et al. (arXiv 2409.13074, §5): choose the guidance scale as

1. the largest γ whose samples stay in the support (a chosen fraction of them), and
2. on data without a known support, the largest γ whose *mean projected trajectory* — the mean over samples
   of the projection of x_t (or x0̂) onto a direction, as a function of t — is still monotone: larger γ makes
   it overshoot and come back.

Both are searches over γ of a property of samples produced by a user function ``γ -> samples``: over a list
of scales, or by bisection on a bracket (assuming the property holds below some γ* and fails above).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from guidelab.diagnostics._series import as_trajectory
from guidelab.metrics.base import Record

__all__ = [
    "ProjectedTrajectory",
    "ScaleSearch",
    "is_monotone",
    "largest_scale",
    "largest_scale_in_support",
    "largest_scale_monotone",
    "mean_projected_trajectory",
]


@dataclass(frozen=True)
class ScaleSearch(Record):
    """Result of a search for the largest γ with a property.

    Attributes:
        scale: the largest γ found with the property (None if none of the tried scales has it).
        scales: every γ evaluated, in evaluation order.
        values: the property's value at each (e.g. the in-support fraction; 1.0/0.0 for a yes/no property).
        passed: whether each γ had the property.
        method: ``"list"`` or ``"bisection"``.
    """

    scale: float | None
    scales: list[float]
    values: list[float]
    passed: list[bool]
    method: str


def largest_scale(
    score: Callable[[float], float],
    accept: Callable[[float], bool],
    *,
    scales: Sequence[float] | None = None,
    bracket: tuple[float, float] | None = None,
    tol: float = 0.05,
    max_evaluations: int = 30,
) -> ScaleSearch:
    """The largest γ with ``accept(score(γ))``.

    Give either ``scales`` (each is evaluated; the largest passing one is returned, wherever it lies) or
    ``bracket = (lo, hi)`` for a bisection that assumes the property holds on [lo, γ*] and fails above:
    it checks both ends, then halves until ``hi − lo ≤ tol``, and returns the last passing γ.
    """
    if (scales is None) == (bracket is None):
        raise ValueError("scales, bracket: give exactly one of a list of scales and a bisection bracket")
    tried: list[float] = []
    values: list[float] = []
    passed: list[bool] = []

    def evaluate(g: float) -> bool:
        v = float(score(g))
        ok = bool(accept(v))
        tried.append(float(g))
        values.append(v)
        passed.append(ok)
        return ok

    if scales is not None:
        if len(scales) == 0:
            raise ValueError("scales: empty list of scales")
        good = [g for g in scales if evaluate(float(g))]
        return ScaleSearch(max(good) if good else None, tried, values, passed, "list")
    lo, hi = (float(b) for b in bracket)  # type: ignore[union-attr]
    if not lo < hi:
        raise ValueError(f"bracket: need lo < hi, got ({lo}, {hi})")
    if not tol > 0:
        raise ValueError(f"tol: must be > 0, got {tol}")
    if not evaluate(lo):
        return ScaleSearch(None, tried, values, passed, "bisection")
    if evaluate(hi):
        return ScaleSearch(hi, tried, values, passed, "bisection")
    while hi - lo > tol and len(tried) < max_evaluations:
        mid = 0.5 * (lo + hi)
        if evaluate(mid):
            lo = mid
        else:
            hi = mid
    return ScaleSearch(lo, tried, values, passed, "bisection")


def largest_scale_in_support(
    sample_fn: Callable[[float], Tensor],
    in_support: Callable[[Tensor], Tensor],
    *,
    fraction: float = 0.9,
    scales: Sequence[float] | None = None,
    bracket: tuple[float, float] | None = None,
    tol: float = 0.05,
    max_evaluations: int = 30,
) -> ScaleSearch:
    """The largest γ whose samples keep at least ``fraction`` of them in the support (arXiv 2409.13074, §5).

    Args:
        sample_fn: γ -> samples (n, ...) (e.g. a closure over ``guidelab.sampling.sample`` with a fixed seed).
        in_support: samples -> (n,) bool, e.g. ``lambda x: target.support_contains(x, c)``.
        fraction: the required in-support fraction.
        scales / bracket / tol / max_evaluations: see :func:`largest_scale`.
    """
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction: must lie in [0, 1], got {fraction}")

    def score(g: float) -> float:
        return float(torch.as_tensor(in_support(sample_fn(g))).reshape(-1).double().mean())

    return largest_scale(
        score, lambda v: v >= fraction, scales=scales, bracket=bracket, tol=tol, max_evaluations=max_evaluations
    )


@dataclass(frozen=True)
class ProjectedTrajectory(Record):
    """Mean ± sd over samples of the projection onto a direction, per recorded time.

    Attributes:
        times: the times (recording order, noise to data).
        mean, sd: per time, over samples, of ``<x − origin, u>/‖u‖``.
        monotone: whether ``mean`` is monotone over time (see :func:`is_monotone`).
    """

    times: list[float]
    mean: list[float]
    sd: list[float]
    monotone: bool


def is_monotone(
    values: Sequence[float] | Tensor,
    *,
    direction: Literal["either", "increasing", "decreasing"] = "either",
    tolerance: float = 0.0,
) -> bool:
    """Whether a sequence is monotone: every step ``v_{r+1} − v_r ≥ −tolerance`` (non-decreasing) or every step
    ``≤ tolerance`` (non-increasing); ``direction`` restricts to one of them."""
    v = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    if direction not in ("either", "increasing", "decreasing"):
        raise ValueError(f"direction: expected 'either', 'increasing' or 'decreasing', got {direction!r}")
    if v.numel() < 2:
        return True
    steps = v[1:] - v[:-1]
    up = bool((steps >= -tolerance).all())
    down = bool((steps <= tolerance).all())
    return {"either": up or down, "increasing": up, "decreasing": down}[direction]


def mean_projected_trajectory(
    states: Tensor,
    times: Tensor | Sequence[float],
    direction: Tensor,
    *,
    origin: Tensor | None = None,
    monotone_direction: Literal["either", "increasing", "decreasing"] = "either",
    rtol: float = 1e-6,
) -> ProjectedTrajectory:
    """The mean projected trajectory of arXiv 2409.13074 (§5): ``m(t_r) = (1/n) Σ_i <x_r^i − origin, u>/‖u‖`` over the
    recorded states (x_t or x0̂, (R, n, ...)), with its sd, and whether m is monotone in t (to a tolerance of
    ``rtol`` × the range of m)."""
    states, times = as_trajectory(states, times)
    u = torch.as_tensor(direction, dtype=torch.float64).reshape(-1)
    if u.numel() != states.shape[-1]:
        raise ValueError(f"direction: expected {states.shape[-1]} coordinates, got {u.numel()}")
    norm = torch.linalg.vector_norm(u)
    if not norm > 0:
        raise ValueError("direction: must be non-zero")
    if origin is not None:
        states = states - torch.as_tensor(origin, dtype=torch.float64).reshape(1, 1, -1)
    proj = states @ (u / norm)  # (R, n)
    mean = proj.mean(dim=1)
    sd = proj.std(dim=1, unbiased=True) if proj.shape[1] > 1 else torch.zeros_like(mean)
    tol = rtol * float(mean.max() - mean.min())
    return ProjectedTrajectory(
        times=times.tolist(),
        mean=mean.tolist(),
        sd=sd.tolist(),
        monotone=is_monotone(mean, direction=monotone_direction, tolerance=tol),
    )


def largest_scale_monotone(
    trajectory_fn: Callable[[float], tuple[Tensor, Tensor]],
    direction: Tensor,
    *,
    origin: Tensor | None = None,
    monotone_direction: Literal["either", "increasing", "decreasing"] = "either",
    rtol: float = 1e-6,
    scales: Sequence[float] | None = None,
    bracket: tuple[float, float] | None = None,
    tol: float = 0.05,
    max_evaluations: int = 30,
) -> ScaleSearch:
    """The largest γ whose mean projected trajectory is monotone (arXiv 2409.13074, §5, for data without a known
    support). ``trajectory_fn``: γ -> (times (R,), states (R, n, ...)), e.g. from ``SampleResult.times`` and
    ``.x0_trajectory``."""

    def score(g: float) -> float:
        times, states = trajectory_fn(g)
        proj = mean_projected_trajectory(
            states, times, direction, origin=origin, monotone_direction=monotone_direction, rtol=rtol
        )
        return 1.0 if proj.monotone else 0.0

    return largest_scale(
        score, lambda v: v > 0.5, scales=scales, bracket=bracket, tol=tol, max_evaluations=max_evaluations
    )
