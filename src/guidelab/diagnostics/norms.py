"""Norm of the clean estimate over time: guidance grows ‖x0̂‖ (Jin et al., ADG, arXiv 2506.11039; the
Direction Shift stage of arXiv 2509.22007). Per-sample norms are over all non-batch dimensions, in float64.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from guidelab.diagnostics._series import Series, as_trajectory, summarize
from guidelab.metrics.base import DEFAULT_QUANTILES

__all__ = ["norm_trajectory", "per_sample_norms"]


def per_sample_norms(x: Tensor) -> Tensor:
    """``‖x_i‖₂`` over all non-batch dimensions, (n,) float64."""
    if not isinstance(x, Tensor) or x.ndim < 1:
        raise ValueError("x: expected a tensor (n, ...)")
    return torch.linalg.vector_norm(x.reshape(x.shape[0], -1).double(), dim=1)


def norm_trajectory(
    states: Tensor, times: Tensor | Sequence[float], *, quantiles: Sequence[float] = DEFAULT_QUANTILES
) -> Series:
    """Per-time mean, sd and quantiles of the per-sample norms ``‖x0̂_i(t)‖`` (or of any recorded states), e.g.
    ``norm_trajectory(result.x0_trajectory, result.times)``."""
    states, times = as_trajectory(states, times)
    return summarize(times, torch.linalg.vector_norm(states, dim=-1), quantiles)
