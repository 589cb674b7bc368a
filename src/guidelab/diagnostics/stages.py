"""Stage probes of guided sampling (Jin, Shi & Gu 2025, arXiv 2509.22007): CFG sampling runs through
(1) Direction Shift: guidance pulls samples toward the γ-amplified weighted mean, biasing their start and
growing their norm; (2) Mode Separation: the inherited bias suppresses the weaker modes; (3)
Concentration: guidance contracts samples within a mode.

The probes, each along a recorded trajectory (``SampleResult.times``, ``.trajectory`` or ``.x0_trajectory``):

- :func:`distance_to_amplified_mean`: ``‖x_t − α_t·m_γ‖`` (or ``‖x0̂ − m_γ‖``) with
  ``m_γ = m_u + γ(m_c − m_u)``, m_c = E[x | c], m_u = E[x]: at high noise the CFG denoiser is
  ``x0̂ ≈ m_u + γ(m_c − m_u)``, the amplified weighted mean of the class components (our reading of the
  paper's "weighted mean"; pass ``center`` to probe another point).
- :func:`mode_posterior_mass`: mean posterior mass ``(1/n) Σ_i p_t(k | x_t^i, c)`` of each component over time.
- :func:`pairwise_contraction`: ``‖x_t^i − x_t^j‖ / ‖x_{t_ref}^i − x_{t_ref}^j‖`` for initially-nearest pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from guidelab.denoiser import NULL_COND
from guidelab.diagnostics._series import Series, as_trajectory, summarize
from guidelab.metrics.base import (
    DEFAULT_QUANTILES,
    Record,
    chunk_rows,
    float_or_none,
    resolve_cond,
    seeded_generator,
)
from guidelab.metrics.classes import component_log_responsibilities
from guidelab.paths import NoisePath

__all__ = [
    "Contraction",
    "ModeMass",
    "amplified_mean",
    "class_mean",
    "distance_to_amplified_mean",
    "distance_to_center",
    "mode_posterior_mass",
    "nearest_neighbour_pairs",
    "pairwise_contraction",
]


def class_mean(target: object, cond: int | str | None = None, *, num_samples: int = 200_000, seed: int = 0) -> Tensor:
    """``E[x | c]`` (D,) float64 (``cond=None``: E[x]): exact from ``target.mean(cond)`` when the target has it,
    else a Monte Carlo mean of ``num_samples`` exact samples (seeded)."""
    c = resolve_cond(target, cond)
    arg = None if c == NULL_COND else c
    if hasattr(target, "mean"):
        return torch.as_tensor(target.mean(arg), dtype=torch.float64).reshape(-1)
    x = target.sample(num_samples, arg, seeded_generator(seed))  # type: ignore[attr-defined]
    return x.double().reshape(num_samples, -1).mean(dim=0)


def amplified_mean(target: object, cond: int | str, scale: float, **kwargs: int) -> Tensor:
    """The γ-amplified weighted mean ``m_γ = m_u + γ(m_c − m_u)`` (D,): where the CFG denoiser points at high
    noise (arXiv 2509.22007, Direction Shift stage). Keyword arguments go to :func:`class_mean`."""
    m_c = class_mean(target, cond, **kwargs)
    m_u = class_mean(target, None, **kwargs)
    return m_u + float(scale) * (m_c - m_u)


def distance_to_center(
    states: Tensor,
    times: Tensor | Sequence[float],
    center: Tensor,
    *,
    path: NoisePath | None = None,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
) -> Series:
    """Per-time summary of ``‖x_r − α_{t_r}·center‖`` (with ``path``: the center as seen in x_t) or of
    ``‖x_r − center‖`` (``path=None``: for x0̂ trajectories)."""
    states, times = as_trajectory(states, times)
    center = torch.as_tensor(center, dtype=torch.float64).reshape(1, 1, -1)
    if center.shape[-1] != states.shape[-1]:
        raise ValueError(f"center: expected {states.shape[-1]} coordinates, got {center.shape[-1]}")
    scale = torch.ones(times.numel(), dtype=torch.float64)
    if path is not None:
        scale = path.coefficients(times).alpha.double().reshape(-1)
    dist = torch.linalg.vector_norm(states - scale[:, None, None] * center, dim=-1)  # (R, n)
    return summarize(times, dist, quantiles)


def distance_to_amplified_mean(
    states: Tensor,
    times: Tensor | Sequence[float],
    target: object,
    cond: int | str,
    scale: float,
    *,
    path: NoisePath | None = None,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    seed: int = 0,
) -> Series:
    """Distance of the trajectory to the γ-amplified weighted mean ``m_γ`` (see the module docstring); give the
    sampling ``path`` for x_t trajectories (center ``α_t·m_γ``), leave it None for x0̂ trajectories."""
    center = amplified_mean(target, cond, scale, seed=seed)
    return distance_to_center(states, times, center, path=path, quantiles=quantiles)


@dataclass(frozen=True)
class ModeMass(Record):
    """Mean posterior mass of each component at each recorded time.

    Attributes:
        times: the times.
        components: component indices (those of the class, or all for the null condition).
        mass: per time, ``(1/n) Σ_i p_t(k | x_t^i, c)`` per component (time × component).
        undefined_fraction: per time, the fraction of samples where the posterior is undefined (excluded).
    """

    times: list[float]
    components: list[int]
    mass: list[list[float | None]]
    undefined_fraction: list[float]


def mode_posterior_mass(
    states: Tensor,
    times: Tensor | Sequence[float],
    target: object,
    path: NoisePath,
    cond: int | str | None = None,
) -> ModeMass:
    """Posterior mass of each mode over time: ``p_t(k | x_t, c) ∝ w_k^{(c)} p_t(x_t | k)`` under the class
    sub-mixture (all components for ``cond=None``), averaged over samples (arXiv 2509.22007, Mode Separation:
    guidance drains the weaker modes early)."""
    states, times = as_trajectory(states, times)
    c = resolve_cond(target, cond)
    members = torch.nonzero(torch.isfinite(target.log_mixture_weights(c, 1)[0])).flatten()  # type: ignore[attr-defined]
    mass, undefined = [], []
    for r, t in enumerate(times.tolist()):
        log_r = component_log_responsibilities(states[r], target, c, t=t, path=path)[:, members]  # (n, K_c)
        ok = ~torch.isnan(log_r).any(dim=1)
        undefined.append(1 - float(ok.double().mean()))
        m = log_r[ok].exp().mean(dim=0) if bool(ok.any()) else torch.full((members.numel(),), float("nan"))
        mass.append([float_or_none(v) for v in m])
    return ModeMass(times.tolist(), members.tolist(), mass, undefined)


def nearest_neighbour_pairs(x: Tensor, *, budget: int = 2**23) -> Tensor:
    """Each point with its nearest neighbour, as unordered pairs (P, 2) int64 (i < j), duplicates removed."""
    n = x.shape[0]
    if n < 2:
        raise ValueError("states: need at least 2 samples to form pairs")
    nn = torch.empty(n, dtype=torch.long)
    step = chunk_rows(n, n, budget)
    for lo in range(0, n, step):
        d = torch.cdist(x[lo : lo + step], x)
        rows = torch.arange(d.shape[0])
        d[rows, rows + lo] = float("inf")
        nn[lo : lo + step] = d.argmin(dim=1).cpu()
    i = torch.arange(n)
    pairs = torch.stack([torch.minimum(i, nn), torch.maximum(i, nn)], dim=1)
    return torch.unique(pairs, dim=0)


@dataclass(frozen=True)
class Contraction(Record):
    """Ratios of pair distances to their distance at the reference time, per recorded time.

    Attributes:
        times: the times.
        reference_time: the time at which the pairs were nearest neighbours.
        num_pairs: pairs used.
        geometric_mean: per time, ``exp(mean log ratio)`` (< 1: trajectories contract).
        ratio: per-time summary (mean, sd, quantiles) of the ratios.
    """

    times: list[float]
    reference_time: float
    num_pairs: int
    geometric_mean: list[float]
    ratio: Series


def pairwise_contraction(
    states: Tensor,
    times: Tensor | Sequence[float],
    *,
    reference_index: int = 0,
    pairs: Tensor | None = None,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
) -> Contraction:
    """Pairwise contraction of nearby trajectories (arXiv 2509.22007, Concentration stage):
    ``ρ_ij(t) = ‖x_t^i − x_t^j‖ / ‖x_{t_ref}^i − x_{t_ref}^j‖`` for pairs that are nearest neighbours at the reference
    record (default the first, the noisiest), or the given ``pairs`` (P, 2). Pairs at distance 0 are dropped."""
    states, times = as_trajectory(states, times)
    R = states.shape[0]
    if not -R <= reference_index < R:
        raise ValueError(f"reference_index: must lie in [{-R}, {R - 1}], got {reference_index}")
    ref = states[reference_index]
    pairs = nearest_neighbour_pairs(ref) if pairs is None else torch.as_tensor(pairs, dtype=torch.long).reshape(-1, 2)
    d0 = torch.linalg.vector_norm(ref[pairs[:, 0]] - ref[pairs[:, 1]], dim=-1)
    pairs = pairs[d0 > 0]
    d0 = d0[d0 > 0]
    if pairs.shape[0] == 0:
        raise ValueError("pairs: every pair is at distance 0 at the reference time")
    d = torch.linalg.vector_norm(states[:, pairs[:, 0]] - states[:, pairs[:, 1]], dim=-1)  # (R, P)
    ratio = d / d0[None, :]
    with torch.no_grad():
        geo = torch.exp(torch.log(ratio).mean(dim=1))
    return Contraction(
        times=times.tolist(),
        reference_time=float(times[reference_index]),
        num_pairs=int(pairs.shape[0]),
        geometric_mean=geo.tolist(),
        ratio=summarize(times, ratio, quantiles),
    )
