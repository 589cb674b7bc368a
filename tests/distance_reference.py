"""The energy distance as guidelab computed it before the tiled pairwise sums (issue 17), kept verbatim as the
oracle of tests/test_metrics_pairwise.py, and a brute-force sum of pairwise distances by explicit differences."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from guidelab.metrics.base import as_points, check_same_dim


def _pairwise_sum(x: Tensor, y: Tensor, fn: Callable[[Tensor], Tensor], same: bool, chunk: int) -> Tensor:
    """Σ_ij fn(‖x_i − y_j‖) over all pairs, chunked over rows of x; ``same``: x is y, diagonal excluded."""
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for lo in range(0, x.shape[0], chunk):
        block = fn(torch.cdist(x[lo : lo + chunk], y))  # (c, m)
        if same:
            rows = torch.arange(block.shape[0], device=x.device)
            block[rows, rows + lo] = 0  # the diagonal pairs (i, i)
        total += block.sum()
    return total


def _pair_count(n: int, m: int, same: bool) -> int:
    return n * (n - 1) if same else n * m


def energy_distance_old(x: Tensor, y: Tensor, *, chunk: int = 2048) -> float:
    """guidelab.metrics.energy_distance up to commit e405afc (torch.cdist over row chunks)."""
    x, y = as_points(x, "x"), as_points(y, "y")
    check_same_dim(x, y, "energy_distance")
    if min(x.shape[0], y.shape[0]) < 2:
        raise ValueError("energy_distance: need at least 2 samples in each set")
    n, m = x.shape[0], y.shape[0]
    xy = _pairwise_sum(x, y, lambda d: d, False, chunk) / _pair_count(n, m, False)
    xx = _pairwise_sum(x, x, lambda d: d, True, chunk) / _pair_count(n, n, True)
    yy = _pairwise_sum(y, y, lambda d: d, True, chunk) / _pair_count(m, m, True)
    return float(2 * xy - xx - yy)


def brute_distance_sum(x: np.ndarray, y: np.ndarray | None = None) -> float:
    """Σ_ij ‖x_i − y_j‖ (or Σ_{i<j} ‖x_i − x_j‖ with y None) by explicit float64 differences, row by row,
    each row's distances summed exactly (math.fsum)."""
    import math

    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    rows = []
    for i in range(len(x)):
        other = x[i + 1 :] if y is None else np.asarray(y, dtype=np.float64).reshape(len(y), -1)
        rows.append(math.fsum(np.sqrt(((x[i] - other) ** 2).sum(axis=1))))
    return math.fsum(rows)


def brute_energy_exact(x: np.ndarray, y: np.ndarray) -> float:
    """The energy distance's U-statistic form from :func:`brute_distance_sum`."""
    n, m = len(x), len(y)
    return (
        2 * brute_distance_sum(x, y) / (n * m)
        - 2 * brute_distance_sum(x) / (n * (n - 1))
        - 2 * brute_distance_sum(y) / (m * (m - 1))
    )
