"""Per-time summaries of per-sample quantities along recorded trajectories (not public API)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from guidelab.metrics.base import DEFAULT_QUANTILES, Record, float_or_none, quantile_list

__all__ = ["Series", "as_trajectory", "summarize"]


@dataclass(frozen=True)
class Series(Record):
    """A per-sample quantity summarized at each recorded time (over its finite values).

    Attributes:
        times: the times t (1 = noise, 0 = data), in recording order.
        mean, sd: mean and standard deviation over samples at each time (None where no value is finite).
        quantile_levels: the levels.
        quantiles: per time, the quantiles at the levels (time × level).
    """

    times: list[float]
    mean: list[float | None]
    sd: list[float | None]
    quantile_levels: list[float]
    quantiles: list[list[float | None]]


def summarize(
    times: Tensor | Sequence[float], values: Tensor, quantiles: Sequence[float] = DEFAULT_QUANTILES
) -> Series:
    """Summary of ``values`` (R, n) at the R times."""
    times = torch.as_tensor(times, dtype=torch.float64).reshape(-1)
    if values.ndim != 2 or values.shape[0] != times.numel():
        raise ValueError(f"values: expected shape ({times.numel()}, n), got {tuple(values.shape)}")
    mean, sd, qs = [], [], []
    for row in values.double():
        row = row[torch.isfinite(row)]
        if row.numel() == 0:
            mean.append(None)
            sd.append(None)
            qs.append([None] * len(quantiles))
            continue
        mean.append(float(row.mean()))
        sd.append(float(row.std(unbiased=True)) if row.numel() > 1 else 0.0)
        qs.append([float_or_none(q) for q in quantile_list(row, quantiles)])
    return Series(times.tolist(), mean, sd, [float(q) for q in quantiles], qs)


def as_trajectory(states: Tensor, times: Tensor | Sequence[float], field: str = "states") -> tuple[Tensor, Tensor]:
    """A recorded trajectory as (R, n, D) float64 (non-batch dimensions flattened) and its times (R,) float64."""
    if not isinstance(states, Tensor) or states.ndim < 2:
        raise ValueError(f"{field}: expected a tensor (R, n, ...) of states at the recorded times")
    times = torch.as_tensor(times, dtype=torch.float64).reshape(-1)
    if states.shape[0] != times.numel():
        raise ValueError(f"{field}: {states.shape[0]} recorded states but {times.numel()} times")
    states = states.reshape(states.shape[0], states.shape[1], -1) if states.ndim > 2 else states[:, :, None]
    return states.double(), times
