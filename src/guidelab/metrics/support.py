"""Support statistics for compactly supported targets (box mixtures): in-support fraction, distance to the
support, and the edge concentration of Chidambaram et al. (arXiv 2409.13074, Th. 1): as the guidance scale
grows, samples of class + (support ``[α1, α2]``) pile up at the far edge α2, with probability
``1 − e^{−Ω(w)}`` inside ``[α2(1 − O(1/√ln w)), α2]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from guidelab.denoiser import NULL_COND
from guidelab.metrics.base import DEFAULT_QUANTILES, Record, as_points, quantile_list, resolve_cond

__all__ = [
    "EdgeConcentration",
    "SupportDistance",
    "class_far_edge",
    "distance_to_far_edge",
    "distance_to_support",
    "edge_concentration",
    "in_support_fraction",
]


def _cond_arg(target: object, cond: int | str | None) -> int | None:
    if not hasattr(target, "support_contains"):
        raise ValueError(f"target: {type(target).__name__} has no bounded support (support_contains); use a box target")
    c = resolve_cond(target, cond)
    return None if c == NULL_COND else c


def in_support_fraction(x: Tensor, target: object, cond: int | str | None = None) -> float:
    """Fraction of samples inside the support of p(x | c): ``(1/n) Σ_i 1[x_i ∈ supp p(· | c)]``, from the
    target's exact ``support_contains(x, cond)``."""
    x = as_points(x, "x")
    c = _cond_arg(target, cond)
    return float(target.support_contains(x, c).reshape(-1).double().mean())  # type: ignore[attr-defined]


@dataclass(frozen=True)
class SupportDistance(Record):
    """Euclidean distance from each sample to the support of p(x | c) (0 inside).

    Attributes:
        in_support_fraction: fraction at distance 0.
        mean, max: over all samples.
        mean_outside: mean over the samples outside (None when all are inside).
        quantile_levels, quantiles: quantiles of the distance.
    """

    in_support_fraction: float
    mean: float
    max: float
    mean_outside: float | None
    quantile_levels: list[float]
    quantiles: list[float]


def distance_to_support(
    x: Tensor, target: object, cond: int | str | None = None, *, quantiles: Sequence[float] = DEFAULT_QUANTILES
) -> SupportDistance:
    """``d(x, supp p(· | c)) = min_{y ∈ supp} ‖x − y‖`` per sample from the target's ``distance_to_support``."""
    x = as_points(x, "x")
    c = _cond_arg(target, cond)
    d = target.distance_to_support(x, c).reshape(-1).double()  # type: ignore[attr-defined]
    outside = d > 0
    return SupportDistance(
        in_support_fraction=float((~outside).double().mean()),
        mean=float(d.mean()),
        max=float(d.max()),
        mean_outside=float(d[outside].mean()) if bool(outside.any()) else None,
        quantile_levels=[float(q) for q in quantiles],
        quantiles=quantile_list(d, quantiles),
    )


def distance_to_far_edge(
    x: Tensor, far_edge: float | Sequence[float], direction: float | Sequence[float] | None = None
) -> Tensor:
    """Signed distance to the far edge along each axis, (n, D): ``d = s·(α2 − x)`` with ``s = sign(α2)`` (or the
    given ``direction`` ±1 per axis), so ``d ≥ 0`` on the inner side of the edge and ``d < 0`` beyond it.

    For class + on ``[α1, α2]`` (α2 > 0) this is ``α2 − x``; for class − on ``[−α2, −α1]`` it is ``x + α2``.
    """
    x = as_points(x, "x")
    edge = torch.as_tensor(far_edge, dtype=torch.float64, device=x.device).reshape(-1)
    if edge.numel() not in (1, x.shape[1]):
        raise ValueError(f"far_edge: expected 1 or {x.shape[1]} values (one per axis), got {edge.numel()}")
    if direction is None:
        s = torch.sign(edge)
        if bool((s == 0).any()):
            raise ValueError("far_edge: an edge at 0 has no outward side; give direction (+1 or −1 per axis)")
    else:
        s = torch.as_tensor(direction, dtype=torch.float64, device=x.device).reshape(-1)
        if not bool(((s == 1) | (s == -1)).all()):
            raise ValueError(f"direction: expected +1 or −1 per axis, got {s.tolist()}")
    return s * (edge - x)


def class_far_edge(target: object, cond: int | str) -> list[float]:
    """The far edge α2 of a box target's class support, per axis: of the hull ``[min_k a_k, max_k b_k]`` of the
    class's boxes, the end farther from the origin (class + on [α1, α2] gives α2, class − on [−α2, −α1]
    gives −α2; for boxes not placed around the origin pass the edge to :func:`edge_concentration` directly).
    """
    if not (hasattr(target, "low") and hasattr(target, "high")):
        raise ValueError(f"target: {type(target).__name__} has no boxes (low, high); give far_edge directly")
    c = resolve_cond(target, cond)
    if c == NULL_COND:
        raise ValueError("cond: the far edge is defined for a class, got the null condition")
    members = target.component_class == c  # type: ignore[attr-defined]
    lo = torch.as_tensor(target.low, dtype=torch.float64)[members].amin(dim=0)
    hi = torch.as_tensor(target.high, dtype=torch.float64)[members].amax(dim=0)
    return torch.where(hi.abs() >= lo.abs(), hi, lo).tolist()


@dataclass(frozen=True)
class EdgeConcentration(Record):
    """Quantiles of the signed distance to the far edge α2, per axis (see :func:`distance_to_far_edge`).

    Attributes:
        far_edge: α2 per axis.
        quantile_levels: the levels.
        quantiles: per axis, the quantiles of d (axis × level).
        mean: per axis, the mean of d.
        beyond_fraction: per axis, the fraction with d < 0 (past the edge, outside the support).
        within_fraction: per axis, the fraction with 0 ≤ d ≤ width (None without a width).
        width: the band width used for ``within_fraction``.
    """

    far_edge: list[float]
    quantile_levels: list[float]
    quantiles: list[list[float]]
    mean: list[float]
    beyond_fraction: list[float]
    within_fraction: list[float] | None
    width: float | None


def edge_concentration(
    x: Tensor,
    far_edge: float | Sequence[float],
    *,
    direction: float | Sequence[float] | None = None,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    width: float | None = None,
) -> EdgeConcentration:
    """Edge concentration of Chidambaram et al. (arXiv 2409.13074, Th. 1): quantiles of the distance
    ``d = s·(α2 − x)`` of each coordinate to the far edge α2 of the class support (1D, or per axis for the
    product supports in 2D), and the fraction inside the band ``0 ≤ d ≤ width`` (e.g.
    ``width = α2/√ln w``). Stronger guidance moves every quantile toward 0.
    """
    x = as_points(x, "x")
    d = distance_to_far_edge(x, far_edge, direction)  # (n, D)
    edge = torch.as_tensor(far_edge, dtype=torch.float64).reshape(-1).expand(x.shape[1])
    within = None
    if width is not None:
        if not width >= 0:
            raise ValueError(f"width: must be ≥ 0, got {width}")
        within = [float(((d[:, a] >= 0) & (d[:, a] <= width)).double().mean()) for a in range(x.shape[1])]
    return EdgeConcentration(
        far_edge=edge.tolist(),
        quantile_levels=[float(q) for q in quantiles],
        quantiles=[quantile_list(d[:, a], quantiles) for a in range(x.shape[1])],
        mean=d.mean(dim=0).tolist(),
        beyond_fraction=(d < 0).double().mean(dim=0).tolist(),
        within_fraction=within,
        width=None if width is None else float(width),
    )
