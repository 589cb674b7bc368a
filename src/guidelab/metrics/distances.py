"""Distances between two sample sets."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["energy_distance"]


def _mean_pairwise_norm(x: Tensor, y: Tensor, exclude_diagonal: bool, chunk: int) -> Tensor:
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[0], chunk):
        total += torch.cdist(x[start : start + chunk], y).sum()
    pairs = x.shape[0] * (y.shape[0] - 1) if exclude_diagonal else x.shape[0] * y.shape[0]
    return total / pairs  # the diagonal of cdist(x, x) is 0, so excluding it only changes the count


def energy_distance(x: Tensor, y: Tensor, *, chunk: int = 2048) -> float:
    """Energy distance ``2E‖X − Y‖ − E‖X − X'‖ − E‖Y − Y'‖`` (Székely & Rizzo 2013), within-set terms as
    U-statistics (diagonal excluded), so it is unbiased and ≈ 0 for two samples of one distribution.

    Args:
        x: samples (n, ...) ; y: samples (m, ...), flattened over non-batch dimensions, in float64.
    """
    x = x.reshape(x.shape[0], -1).double()
    y = y.reshape(y.shape[0], -1).double()
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"energy_distance: dimensions differ, {x.shape[1]} vs {y.shape[1]}")
    if min(x.shape[0], y.shape[0]) < 2:
        raise ValueError("energy_distance: need at least 2 samples in each set")
    xy = _mean_pairwise_norm(x, y, False, chunk)
    xx = _mean_pairwise_norm(x, x, True, chunk)
    yy = _mean_pairwise_norm(y, y, True, chunk)
    return float(2 * xy - xx - yy)
