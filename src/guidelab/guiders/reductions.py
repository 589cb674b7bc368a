"""Per-sample reductions of the guider catalogue (docs/methods.md §0): norms, dot products and standard deviations
over all non-batch dimensions (or chosen ones), each one BLAS reduction in at least float32 (float16 / bfloat16
are reduced in float32, float32 and float64 in their own dtype), returned as float64 for the ratios and angles
built from them, with an ε in every norm division. No Python loop over samples."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "EPS",
    "dot",
    "dot_over",
    "flat",
    "is_half",
    "norm",
    "norm_over",
    "resolve_dims",
    "sq_norm",
    "std",
    "std_mean",
    "upcast",
]

EPS = 1e-12  # added to every per-sample norm (or squared norm) that divides


def flat(x: Tensor) -> Tensor:
    """(batch, ...) → (batch, D)."""
    return x if x.ndim == 2 else x.reshape(x.shape[0], -1)


def is_half(x: Tensor) -> bool:
    """Whether ``x`` is a floating tensor narrower than float32 (float16, bfloat16, float8)."""
    return x.dtype.is_floating_point and x.dtype.itemsize < 4


def upcast(x: Tensor) -> Tensor:
    """``x`` in at least float32: half types (float16, bfloat16) are upcast to float32; float32 and float64 are
    returned as they are (no copy)."""
    return x.float() if is_half(x) else x


_BMM_MIN = 16  # rows at least this long take one batched GEMM; shorter ones the elementwise product and sum


def dot(a: Tensor, b: Tensor) -> Tensor:
    """<a, b> per sample over all non-batch dimensions (one BLAS reduction in at least float32), as float64 for
    the divisions that follow: (batch,).

    One batched (1 × D)·(D × 1) GEMM: ``linalg.vecdot`` is a product and a sum on the CPU (two passes and a
    (batch, D) temporary), about 3× slower at D = 64; rows shorter than 16, and other devices (where a float32
    GEMM may run in TF32 under ``set_float32_matmul_precision("high")``), keep ``vecdot``."""
    x, y = flat(upcast(a)), flat(upcast(b))
    if x.shape[1] < _BMM_MIN or x.dtype != y.dtype or x.device.type != "cpu":  # CUDA bmm may run in TF32
        return torch.linalg.vecdot(x, y).to(torch.float64)
    return torch.bmm(x.unsqueeze(1), y.unsqueeze(2)).reshape(-1).to(torch.float64)


def sq_norm(a: Tensor) -> Tensor:
    """||a||² per sample (reduced in at least float32), as float64: (batch,). The norm squared in float64: one
    reduction pass, and no float32 overflow of the square sum where the norm itself is representable."""
    return norm(a).square_()


def norm(a: Tensor) -> Tensor:
    """||a|| per sample (reduced in at least float32), as float64: (batch,)."""
    x = flat(a)
    return torch.linalg.vector_norm(x, dim=1, dtype=torch.float32 if is_half(x) else None).to(torch.float64)


def resolve_dims(field: str, dims: tuple[int, ...], ndim: int) -> tuple[int, ...]:
    """``dims`` (from :func:`~guidelab.guiders._checks.check_dims`) as non-negative non-batch dimensions of a
    (batch, ...) tensor of rank ``ndim``; a ValueError naming ``field`` where one is out of range, is the batch, or
    two name the same dimension."""
    out = tuple(d % ndim if -ndim <= d < ndim else -1 for d in dims)
    if any(d <= 0 for d in out) or len(set(out)) != len(out):
        raise ValueError(
            f"{field}: {list(dims)} must name distinct non-batch dimensions of predictions of shape (batch, ...) "
            f"with {ndim} dimensions"
        )
    return out


def dot_over(a: Tensor, b: Tensor, dims: tuple[int, ...]) -> Tensor:
    """<a, b> over the non-batch dimensions ``dims`` (in at least float32), as float64, with those dimensions kept
    as size 1 so that it broadcasts against ``a``: e.g. (batch, 1, H, W) for ``dims = (1,)`` on (batch, C, H, W)."""
    return (upcast(a) * upcast(b)).sum(dim=dims, keepdim=True).to(torch.float64)


def norm_over(a: Tensor, dims: tuple[int, ...]) -> Tensor:
    """||a|| over the non-batch dimensions ``dims`` (in at least float32), as float64, dimensions kept (see
    :func:`dot_over`)."""
    return torch.linalg.vector_norm(upcast(a), dim=dims, keepdim=True).to(torch.float64)


def std_mean(a: Tensor) -> tuple[Tensor, Tensor]:
    """Population standard deviation and mean per sample over all non-batch dimensions (two-pass, in at least
    float32), as float64: two (batch,) tensors."""
    x = flat(upcast(a))
    mean = x.mean(dim=1, keepdim=True)
    sd = torch.linalg.vector_norm(x - mean, dim=1) / math.sqrt(x.shape[1])
    return sd.to(torch.float64), mean.reshape(-1).to(torch.float64)


def std(a: Tensor) -> Tensor:
    """Population standard deviation per sample over all non-batch dimensions (two-pass, in at least float32), as
    float64: (batch,)."""
    return std_mean(a)[0]
