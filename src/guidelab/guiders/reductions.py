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
    "dots",
    "flat",
    "is_half",
    "norm",
    "norm_over",
    "norms",
    "plus_eps",
    "resolve_dims",
    "row_shape",
    "scaled_product",
    "scaled_ratio",
    "sq_norm",
    "sq_plus_eps",
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


def dot(a: Tensor, b: Tensor) -> Tensor:
    """<a, b> per sample over all non-batch dimensions (one reduction in at least float32), as float64 for the
    divisions that follow: (batch,).

    ``linalg.vecdot`` (a product and a pairwise sum): measured on torch 2.13 CPU with one or two threads it is 2× faster
    than a batched (1 × D)·(D × 1) GEMM at (256, 64) and 6–10× at image sizes (``benchmarks/bench_guiders.py``
    prints both), and it never runs in TF32 on a GPU."""
    return torch.linalg.vecdot(flat(upcast(a)), flat(upcast(b))).to(torch.float64)


def sq_norm(a: Tensor) -> Tensor:
    """||a||² per sample (reduced in at least float32), as float64: (batch,). The norm squared in float64: one
    reduction pass, and float16/bfloat16 inputs (reduced in float32) never overflow. float32 inputs overflow to inf
    from ||a|| ≈ 1.8·10¹⁹ (``torch.linalg.vector_norm`` sums the squares without rescaling), far beyond any
    prediction."""
    return norm(a).square_()


def norm(a: Tensor) -> Tensor:
    """||a|| per sample (reduced in at least float32), as float64: (batch,). A tensor of its own where autograd
    records ``a`` (``vector_norm``'s backward reads its output, which the callers' in-place ops would change)."""
    x = flat(a)
    n = torch.linalg.vector_norm(x, dim=1, dtype=torch.float32 if is_half(x) else None)
    return n.to(torch.float64, copy=needs_grad(n))


# --- the same reductions for the fused combines --------------------------------------------------------------------
#
# At the sizes of the benchmarks a combine costs about as much per dispatched operator as per pass over the data, so
# these spend as few operators as the arithmetic allows on each per-sample quantity: the reductions come back in
# their own dtype (float32 for float32 and half inputs, float64 for float64); the float64 steps promote inside the
# operator that needs them (``plus_eps``, ``sq_plus_eps``); the last one rounds the weight once to the predictions'
# dtype, shaped to broadcast against (batch, ...) (``scaled_ratio``, ``scaled_product``). The arithmetic is that
# of ``dot``/``norm``/``sq_norm`` followed by a cast.


def row_shape(x: Tensor) -> tuple[int, ...]:
    """(batch, 1, ..., 1): a per-sample quantity's shape against ``x`` (batch, ...)."""
    return (x.shape[0],) + (1,) * (x.ndim - 1)


def norms(a: Tensor) -> Tensor:
    """||a|| per sample over all non-batch dimensions, reduced in at least float32 and returned in that dtype (not
    converted): (batch,)."""
    x = flat(a)
    return torch.linalg.vector_norm(x, dim=1, dtype=torch.float32 if is_half(x) else None)


def dots(a: Tensor, b: Tensor) -> Tensor:
    """<a, b> per sample over all non-batch dimensions, reduced in at least float32 and returned in that dtype (not
    converted): (batch,)."""
    return torch.linalg.vecdot(flat(upcast(a)), flat(upcast(b)))


def needs_grad(*tensors: Tensor) -> bool:
    """Whether autograd records operations on any of ``tensors`` (the fused paths write with ``out=``, which
    autograd refuses: they are taken only where this is False)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _constant(value: float, device: torch.device) -> Tensor:
    out = _CONSTANTS.get((value, device))
    if out is None:
        out = _CONSTANTS[(value, device)] = torch.full((1,), value, dtype=torch.float64, device=device)
    return out


_CONSTANTS: dict[tuple[float, torch.device], Tensor] = {}


def plus_eps(n: Tensor) -> Tensor:
    """``n + ε`` in float64 (one operator: the sum is formed in float64 from ``n`` as it is): ``n``'s shape."""
    return torch.add(n, _constant(EPS, n.device))


def sq_plus_eps(n: Tensor) -> Tensor:
    """``n² + ε`` in float64 (one operator: the square of ``n`` formed in float64, as :func:`sq_norm`): ``n``'s
    shape."""
    return torch.addcmul(_constant(EPS, n.device), n, n)


def scaled_ratio(
    num: Tensor, den: Tensor, scale: float, like: Tensor, offset: float = 0.0, dtype: torch.dtype | None = None
) -> Tensor:
    """``offset + scale·num/den`` per sample (``num``, ``den`` (batch,), ``den`` float64) computed in float64 and
    rounded once to ``dtype`` (default ``like``'s), in one operator, shaped to broadcast against ``like`` (batch, ...):
    (batch, 1, ..., 1)."""
    out = torch.empty(num.shape[0], dtype=like.dtype if dtype is None else dtype, device=like.device)
    torch.addcdiv(_constant(offset, like.device), num, den, value=scale, out=out)
    return out.view(row_shape(like))


def scaled_product(a: Tensor, b: Tensor | None, scale: float, like: Tensor, offset: float = 0.0) -> Tensor:
    """``offset + scale·a·b`` per sample (``a``, ``b`` (batch,), one of them float64; ``b = None``: ``scale·a``)
    computed in float64 and rounded once to ``like``'s dtype, in one operator, shaped to broadcast against ``like``
    (batch, ...): (batch, 1, ..., 1)."""
    out = torch.empty(a.shape[0], dtype=like.dtype, device=like.device)
    if b is None:
        torch.mul(a, scale, out=out)
    else:
        torch.addcmul(_constant(offset, like.device), a, b, value=scale, out=out)
    return out.view(row_shape(like))


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
