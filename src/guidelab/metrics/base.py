"""The ground the metrics and diagnostics stand on: input checks, JSON-able records, chunking, quantiles,
seeded generators and class resolution. Import the metric functions themselves from :mod:`guidelab.metrics`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from guidelab.denoiser import NULL_COND
from guidelab.paths import NoisePath, RectifiedFlowPath

__all__ = [
    "DEFAULT_QUANTILES",
    "Record",
    "as_points",
    "check_same_dim",
    "chunk_rows",
    "float_or_none",
    "path_for",
    "quantile_list",
    "resolve_cond",
    "seeded_generator",
]

DEFAULT_QUANTILES: tuple[float, ...] = (0.05, 0.25, 0.5, 0.75, 0.95)


class Record:
    """Mixin for the small result dataclasses: :meth:`to_dict` gives plain JSON-able Python values."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]


def as_points(x: Tensor, field: str = "x", *, dtype: torch.dtype = torch.float64) -> Tensor:
    """Samples as a finite (n, D) tensor in ``dtype``: (n,) becomes (n, 1), (n, ...) is flattened.

    Raises a ValueError naming ``field`` for a non-tensor, an empty set or non-finite rows.
    """
    if not isinstance(x, Tensor):
        raise ValueError(f"{field}: expected a torch tensor (n, ...), got {type(x).__name__}")
    if x.ndim == 0:
        raise ValueError(f"{field}: expected a tensor (n, ...), got a scalar")
    x = x.reshape(x.shape[0], -1) if x.ndim != 1 else x[:, None]
    if x.shape[0] == 0:
        raise ValueError(f"{field}: empty sample set")
    x = x.to(dtype)
    bad = ~torch.isfinite(x).all(dim=1)
    if bool(bad.any()):
        raise ValueError(f"{field}: {int(bad.sum())} of {x.shape[0]} rows contain non-finite values")
    return x


def check_same_dim(x: Tensor, y: Tensor, what: str) -> None:
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"{what}: dimensions differ, {x.shape[1]} vs {y.shape[1]}")


def chunk_rows(n_rows: int, n_cols: int, budget: int = 2**23) -> int:
    """Rows per chunk so that a (rows, n_cols) work array holds at most ``budget`` elements (64 MB in float64)."""
    return max(1, min(n_rows, budget // max(1, n_cols)))


def seeded_generator(seed: int | torch.Generator, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh generator seeded by ``seed`` (a given generator is used as is)."""
    if isinstance(seed, torch.Generator):
        return seed
    return torch.Generator(device=device).manual_seed(int(seed))


def path_for(t: float, path: NoisePath | None) -> NoisePath:
    """The path to evaluate a target on at time ``t``: ``path``; at t = 0 (the data, where every path agrees)
    it may be omitted. A ValueError naming ``path`` when t > 0 and none is given: the noisy density there
    depends on the path, so it is never assumed."""
    if path is not None:
        return path
    if t > 0:
        raise ValueError(f"path: evaluating at t = {t:g} > 0 depends on the noise path; pass path=get_path(...)")
    return RectifiedFlowPath()  # any path: α = 1, σ = 0 at t = 0


def resolve_cond(target: Any, cond: int | str | None) -> int:
    """A class index (``NULL_COND`` for None) checked against the target's classes."""
    if cond is None:
        return NULL_COND
    if isinstance(cond, Tensor):
        if cond.numel() != 1:
            raise ValueError(f"cond: expected one class (int, name or None), got a tensor of shape {tuple(cond.shape)}")
        cond = int(cond)
    return int(target.class_index(cond))


def quantile_list(values: Tensor, levels: Sequence[float]) -> list[float]:
    """Quantiles of a 1-d tensor at ``levels`` (linear interpolation), as floats; NaNs when empty."""
    levels = [float(q) for q in levels]
    for q in levels:
        if not 0 <= q <= 1:
            raise ValueError(f"quantiles: levels must lie in [0, 1], got {q}")
    values = values.reshape(-1).double()
    if values.numel() == 0:
        return [math.nan] * len(levels)
    q = np.quantile(values.detach().cpu().numpy(), levels)  # numpy: no size limit (torch.quantile has one)
    return [float(v) for v in q]


def float_or_none(value: float | Tensor) -> float | None:
    """A float, or None where it is NaN (undefined), so that records stay strict JSON."""
    value = float(value)
    return None if math.isnan(value) else value
