"""k-NN precision, recall, density and coverage between real (reference) and generated samples.

With ``r_k(z)`` the distance from z to its k-th nearest neighbour within its own set (itself excluded) and
``B(z, r)`` the closed ball:

    precision = (1/M) Σ_j 1[∃i: Y_j ∈ B(X_i, r_k(X_i))]        (Kynkäänniemi et al. 2019, arXiv 1904.06991)
    recall    = (1/N) Σ_i 1[∃j: X_i ∈ B(Y_j, r_k(Y_j))]        (same, eq. 1–2)
    density   = (1/(kM)) Σ_j Σ_i 1[Y_j ∈ B(X_i, r_k(X_i))]     (Naeem et al. 2020, arXiv 2002.09797)
    coverage  = (1/N) Σ_i 1[∃j: Y_j ∈ B(X_i, r_k(X_i))]        (same)

X = real (N points), Y = generated (M points). Precision and density measure fidelity (density can exceed
1), recall and coverage diversity. Distance matrices are chunked so 10⁴ × 10⁴ fits in memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from guidelab.metrics.base import Record, as_points, check_same_dim, chunk_rows

__all__ = ["PRDC", "knn_radii", "prdc"]

_EXACT = "donot_use_mm_for_euclid_dist"  # symmetric, chunk-independent distances: ties at r_k stay inside


def knn_radii(x: Tensor, k: int, *, budget: int = 2**23) -> Tensor:
    """Distance from each point to its k-th nearest neighbour in the same set, itself excluded, (n,)."""
    x = as_points(x, "x")
    n = x.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k: need 1 ≤ k < n (n = {n}), got {k}")
    out = torch.empty(n, dtype=torch.float64, device=x.device)
    step = chunk_rows(n, n, budget)
    for lo in range(0, n, step):
        d = torch.cdist(x[lo : lo + step], x, compute_mode=_EXACT)  # (c, n)
        rows = torch.arange(d.shape[0], device=x.device)
        d[rows, rows + lo] = 0  # self distance: exactly 0, so it is the first of the k + 1 smallest
        out[lo : lo + step] = torch.topk(d, k + 1, dim=1, largest=False).values[:, k]
    return out


@dataclass(frozen=True)
class PRDC(Record):
    """k-NN precision, recall, density and coverage (see the module docstring)."""

    precision: float
    recall: float
    density: float
    coverage: float
    k: int


def prdc(real: Tensor, fake: Tensor, *, k: int = 5, budget: int = 2**23) -> PRDC:
    """Precision and recall (arXiv 1904.06991) and density and coverage (arXiv 2002.09797) of ``fake``
    samples (M, ...) against ``real`` ones (N, ...) with k-NN balls (default k = 5, Naeem et al.'s choice).

    Identical sets give precision = recall = coverage = 1; disjoint, far-apart sets give 0 for all four.
    """
    x, y = as_points(real, "real"), as_points(fake, "fake")
    check_same_dim(x, y, "prdc")
    r_x = knn_radii(x, k, budget=budget)  # (N,)
    r_y = knn_radii(y, k, budget=budget)  # (M,)
    n, m = x.shape[0], y.shape[0]
    in_real_ball = torch.zeros(m, dtype=torch.bool, device=y.device)  # Y_j inside some real ball
    real_ball_count = torch.zeros((), dtype=torch.float64, device=y.device)
    step = chunk_rows(m, n, budget)
    for lo in range(0, m, step):
        inside = torch.cdist(y[lo : lo + step], x, compute_mode=_EXACT) <= r_x[None, :]  # (c, N)
        in_real_ball[lo : lo + step] = inside.any(dim=1)
        real_ball_count += inside.sum()
    recalled = torch.zeros(n, dtype=torch.bool, device=x.device)  # X_i inside some fake ball
    covered = torch.zeros(n, dtype=torch.bool, device=x.device)  # some Y_j inside X_i's ball
    step = chunk_rows(n, m, budget)
    for lo in range(0, n, step):
        d = torch.cdist(x[lo : lo + step], y, compute_mode=_EXACT)  # (c, M)
        recalled[lo : lo + step] = (d <= r_y[None, :]).any(dim=1)
        covered[lo : lo + step] = d.min(dim=1).values <= r_x[lo : lo + step]
    return PRDC(
        precision=float(in_real_ball.double().mean()),
        recall=float(recalled.double().mean()),
        density=float(real_ball_count / (k * m)),
        coverage=float(covered.double().mean()),
        k=k,
    )
