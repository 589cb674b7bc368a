"""Sums of pairwise Euclidean distances ``Σ_ij ‖x_i − y_j‖``, the O(n·m) core of the energy distance (Székely &
Rizzo 2013, doi:10.1016/j.jspi.2013.03.018), computed exactly in float64 at a fraction of ``torch.cdist``'s
cost, and a per-process cache of a reference set's self-term.

Three exact methods, chosen by the dimension D:

- D = 1: by sorting, O((n + m) log(n + m)). Between two consecutive points of the merged sorted sample a gap
  ``g`` is crossed by ``a·(m − b) + b·(n − a)`` pairs (a of the n x-points and b of the m y-points lie left
  of it), so ``Σ_ij |x_i − y_j| = Σ_gaps g·(a(m − b) + b(n − a))`` and, within one set,
  ``Σ_{i<j} |x_i − x_j| = Σ_gaps g·a(n − a)``: sums of non-negative terms, without cancellation.
- 2 ≤ D ≤ :data:`DIRECT_MAX_DIM`: the differences themselves, ``Σ_k (x_ik − y_jk)²``, in tiles of 2¹⁸ pairs
  with reused work arrays (exact to rounding; no ``‖a‖² + ‖b‖² − 2a·b`` cancellation).
- larger D: the GEMM form ``‖a‖² + ‖b‖² − 2a·b`` on centred points (the pooled mean removed), in the same
  tiles; the pairs whose squared distance is below ``GEMM_GUARD·(‖a‖² + ‖b‖²)``, where the GEMM form's
  rounding error ``≲ (D + 2)·ε·(‖a‖² + ‖b‖²)`` could reach 10⁻¹² of the distance, are recomputed by
  differences (near-duplicates, exact duplicates: distance exactly 0).

The square roots, the costliest step (an eager float64 ``sqrt`` costs about ten float32 ``rsqrt`` in torch 2.13 on
AVX-512), are taken as a
float32 ``r ≈ 1/√d²`` refined by one Newton step in float64: with ``t = d²·r``, ``√d² = t + t(1 − t·r)/2`` to
within 1.5·(relative error of r)² ≈ 2·10⁻¹⁴ (checked once per process; float64 ``sqrt`` where the platform's
float32 ``rsqrt`` is not correctly rounded to 10⁻⁶). The points are first divided by a power of two (exact) so
that every d² lies in float32's range.

Every tile is summed in float64 and the tile sums are added with :func:`math.fsum`, so the result does not
depend on the tile sizes beyond rounding (≲ 10⁻¹³ relative in practice).

Optionally (``compiled=``), for 2 ≤ D ≤ 8 each row's sum is one JIT-compiled loop (differences, correctly rounded
float64 ``sqrt``, sum; :mod:`guidelab.metrics.pairwise_jit`, numba, the ``fast`` extra): 4–7× faster than the
eager tiles on a 2-core AVX-512 machine, ~0.5 s to load once per process, and free of the GIL, so that a sweep's
runs on several threads measure in parallel. Its rows are added with :func:`math.fsum`, so its sums do not depend
on the thread count; they agree with the eager tiles to rounding (~10⁻¹⁵ relative), not bit for bit. A sweep's
energy-distance measure uses it from :data:`COMPILE_MIN_PAIRS` pairs.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict

import torch
from torch import Tensor

from guidelab.metrics.base import as_points

__all__ = [
    "COMPILE_MIN_PAIRS",
    "DIRECT_MAX_DIM",
    "GEMM_GUARD",
    "cached_self_distance_mean",
    "pairwise_distance_sum",
    "self_distance_mean",
]

DIRECT_MAX_DIM = 8  # up to this dimension the differences are cheaper than the GEMM form
GEMM_GUARD = 1e-2  # relative squared distance below which the GEMM form is recomputed by differences
_TILE_ELEMENTS = 1 << 18  # 2 MB of float64 per work array (per-operation overhead dominates below)
_TILE_COLS = 1024
_CACHE_SIZE = 16


def _gap_sum_cross(x: Tensor, y: Tensor) -> float:
    """Σ_ij |x_i − y_j| for 1-D x (n,), y (m,) by the gaps of the merged sorted sample."""
    n, m = x.shape[0], y.shape[0]
    z = torch.cat([x, y])
    is_x = torch.cat([z.new_ones(n, dtype=torch.float64), z.new_zeros(m, dtype=torch.float64)])  # on z's device
    z, order = torch.sort(z, stable=True)
    a = torch.cumsum(is_x[order], 0)[:-1]  # x-points left of each gap (exact integers in float64)
    b = torch.arange(1, n + m, dtype=torch.float64, device=z.device) - a  # y-points left of it
    gaps = z[1:] - z[:-1]
    return float((gaps * (a * (m - b) + b * (n - a))).sum())


def _gap_sum_self(x: Tensor) -> float:
    """Σ_{i<j} |x_i − x_j| for 1-D x (n,) by the gaps of the sorted sample."""
    n = x.shape[0]
    z, _ = torch.sort(x)
    a = torch.arange(1, n, dtype=torch.float64, device=x.device)
    return float(((z[1:] - z[:-1]) * (a * (n - a))).sum())


_TINY = 1e-30  # floor of d² in the float32 rsqrt, so that d² = 0 gives t = 0 (not 0·∞)
_rsqrt_ok: bool | None = None


def _rsqrt32_accurate() -> bool:
    """Whether this platform's float32 rsqrt is accurate to 10⁻⁶ relative (a Newton step then gives ~10⁻¹⁴)."""
    global _rsqrt_ok
    if _rsqrt_ok is None:
        d = torch.logspace(-20, 20, 4097, dtype=torch.float64)
        r = torch.rsqrt(d.float()).double()
        _rsqrt_ok = bool(((r * d.sqrt() - 1).abs() < 1e-6).all())
    return _rsqrt_ok


class _Work:
    """Tile-sized work arrays, reused across tiles: ``acc`` and ``tmp`` (float64), ``low`` (float32)."""

    def __init__(self, size: int, device: torch.device):
        self.acc = torch.empty(size, dtype=torch.float64, device=device)
        self.tmp = torch.empty(size, dtype=torch.float64, device=device)
        self.low = torch.empty(size, dtype=torch.float32, device=device) if _rsqrt32_accurate() else None

    def views(self, r: int, w: int) -> tuple[Tensor, Tensor]:
        return self.acc[: r * w].view(r, w), self.tmp[: r * w].view(r, w)

    def sqrt_sum(self, d2: Tensor) -> Tensor:
        """Σ √d² over a tile (r, w) of squared distances (``d2`` is a view of ``acc``; overwritten)."""
        if self.low is None:
            return d2.sqrt_().sum()
        n = d2.numel()
        low, r = self.low[:n].view_as(d2), self.tmp[:n].view_as(d2)
        low.copy_(d2).clamp_min_(_TINY).rsqrt_()
        r.copy_(low)  # r ≈ 1/√d², float32-accurate
        t = d2.mul_(r)  # t = d²·r ≈ √d²
        s1 = t.sum()
        s2 = r.mul_(t).mul_(t).sum()  # Σ t²·r
        return s1 + 0.5 * (s1 - s2)  # Σ t(1 + (1 − t·r)/2): one Newton step


def _pow2_scale(*sets: Tensor) -> float:
    """A power of two ≥ the largest |coordinate| (1 for all zeros): dividing by it is exact."""
    top = max(float(s.abs().max()) for s in sets)
    return 2.0 ** math.ceil(math.log2(top)) if top > 0 else 1.0


def _tile_rows(cols: int) -> int:
    return max(1, _TILE_ELEMENTS // max(1, cols))


def _direct_tiles(x: Tensor, y: Tensor, same: bool) -> list[float]:
    """Tile sums of ‖x_i − y_j‖ by differences; ``same`` (x is y): pairs i < j only."""
    n, d = x.shape
    m = y.shape[0]
    cols = min(m, _TILE_COLS)
    rows = _tile_rows(cols)
    yt = y.T.contiguous()  # (D, m): each coordinate a contiguous row
    work = _Work(rows * cols, x.device)
    sums: list[Tensor] = []
    for lo in range(0, n, rows):
        xb = x[lo : lo + rows]
        r = xb.shape[0]
        xcols = [xb[:, k : k + 1] for k in range(d)]
        start = lo if same else 0
        for co in range(start, m, cols):
            w = min(cols, m - co)
            acc, tmp = work.views(r, w)
            torch.sub(xcols[0], yt[0, co : co + w], out=acc)
            acc.square_()
            for k in range(1, d):
                torch.sub(xcols[k], yt[k, co : co + w], out=tmp)
                acc.addcmul_(tmp, tmp)
            if same and co < lo + r:  # the tile meets the diagonal block: keep j > i only
                acc.triu_(diagonal=lo - co + 1)
            sums.append(work.sqrt_sum(acc))
    return [float(s) for s in sums]


def _gemm_tiles(x: Tensor, y: Tensor, same: bool) -> list[float]:
    """Tile sums of ‖x_i − y_j‖ by the GEMM form, near pairs recomputed by differences; ``same``: i < j only."""
    center = torch.cat([x, y]).mean(dim=0) if not same else x.mean(dim=0)
    x = x - center
    y = x if same else y - center
    n, m = x.shape[0], y.shape[0]
    xn = x.square().sum(dim=1)  # (n,)
    yn = xn if same else y.square().sum(dim=1)  # (m,)
    cols = min(m, _TILE_COLS)
    rows = _tile_rows(cols)
    yt = y.T.contiguous()
    work = _Work(rows * cols, x.device)
    sums: list[Tensor] = []
    for lo in range(0, n, rows):
        xb = x[lo : lo + rows]
        r = xb.shape[0]
        xnb = xn[lo : lo + r]
        start = lo if same else 0
        for co in range(start, m, cols):
            w = min(cols, m - co)
            acc, _ = work.views(r, w)
            ynb = yn[co : co + w]
            torch.addmm(ynb.expand(r, w), xb, yt[:, co : co + w], alpha=-2.0, out=acc)
            acc.add_(xnb[:, None])
            bound = GEMM_GUARD * (float(xnb.max()) + float(ynb.max()))
            if float(acc.min()) < bound:  # some pair may be near: recompute those by differences
                near = acc < GEMM_GUARD * (xnb[:, None] + ynb[None, :])
                i, j = near.nonzero(as_tuple=True)
                acc[i, j] = (xb[i] - y[co + j]).square().sum(dim=1)
            acc.clamp_min_(0)
            if same and co < lo + r:
                acc.triu_(diagonal=lo - co + 1)
            sums.append(work.sqrt_sum(acc))
    return [float(s) for s in sums]


COMPILE_MIN_PAIRS = 10**7  # "auto" uses the compiled loop from this many pairs (eager ≳ 30 ms; loading it ~0.5 s once)


def _compiled_sum(x: Tensor, y: Tensor | None) -> float:
    """The pairwise sum by the compiled row loop (:mod:`guidelab.metrics.pairwise_jit`), its rows split over
    torch's thread count (the value does not depend on it)."""
    from guidelab.metrics import pairwise_jit

    rows = pairwise_jit.row_sums(
        x.numpy(), x.numpy() if y is None else y.numpy(), y is None, threads=torch.get_num_threads()
    )
    return math.fsum(rows.tolist())


def _use_compiled(compiled: bool | str, pairs: int, x: Tensor) -> bool:
    """Whether ``compiled`` asks for the compiled loop here and it is available."""
    if compiled is False or (compiled == "auto" and pairs < COMPILE_MIN_PAIRS):
        return False
    if not (2 <= x.shape[1] <= DIRECT_MAX_DIM and x.device.type == "cpu"):
        return False
    from guidelab.metrics import pairwise_jit

    return pairwise_jit.available()


def pairwise_distance_sum(x: Tensor, y: Tensor | None = None, *, compiled: bool | str = False) -> float:
    """``Σ_i Σ_j ‖x_i − y_j‖`` over all n·m pairs, or with ``y=None`` ``Σ_{i<j} ‖x_i − x_j‖`` over the
    n(n−1)/2 pairs of one set, exact in float64 (see the module docstring for the method per dimension).

    Args:
        x: (n, D) float64 points; y: (m, D) float64 points or None.
        compiled: for 2 ≤ D ≤ :data:`DIRECT_MAX_DIM` on the CPU, the compiled row loop
            (:mod:`~guidelab.metrics.pairwise_jit`; 4–7× faster, ~0.5 s to load once per process): ``True`` where
            available, ``"auto"`` where available and there are at least :data:`COMPILE_MIN_PAIRS` pairs,
            ``False`` eager. Never required: without numba (or with ``GUIDELAB_COMPILE=0``) the eager tiles; the
            two agree to rounding (~10⁻¹⁵ relative), not bit for bit.

    Returns:
        The sum, in the points' units (times the number of pairs).
    """
    if x.ndim != 2 or (y is not None and (y.ndim != 2 or y.shape[1] != x.shape[1])):
        raise ValueError("x, y: expected (n, D) and (m, D) points of one dimension D")
    if compiled not in (True, False, "auto"):
        raise ValueError(f"compiled: expected True, False or 'auto', got {compiled!r}")
    x = x.to(torch.float64)
    y = None if y is None else y.to(torch.float64)
    d = x.shape[1]
    if d == 1:
        return _gap_sum_self(x[:, 0]) if y is None else _gap_sum_cross(x[:, 0], y[:, 0])
    scale = _pow2_scale(x) if y is None else _pow2_scale(x, y)
    x = x / scale
    y = None if y is None else y / scale
    pairs = x.shape[0] * (x.shape[0] - 1) // 2 if y is None else x.shape[0] * y.shape[0]
    if _use_compiled(compiled, pairs, x):
        return scale * _compiled_sum(x, y)
    tiles = _direct_tiles if d <= DIRECT_MAX_DIM else _gemm_tiles
    return scale * math.fsum(tiles(x, x, True) if y is None else tiles(x, y, False))


def self_distance_mean(y: Tensor, *, compiled: bool | str = False) -> float:
    """``E‖Y − Y'‖`` as the U-statistic ``2/(m(m−1)) Σ_{i<j} ‖y_i − y_j‖`` of (m, D) points, m ≥ 2
    (``compiled``: as in :func:`pairwise_distance_sum`)."""
    m = y.shape[0]
    if m < 2:
        raise ValueError("y: need at least 2 points")
    return 2.0 * pairwise_distance_sum(y, compiled=compiled) / (m * (m - 1))


_self_cache: OrderedDict[tuple, float] = OrderedDict()
_self_lock = threading.Lock()  # guards the cache and the per-set locks
_set_locks: dict[tuple, threading.Lock] = {}  # one per set being measured: a second thread asking waits for it


def cached_self_distance_mean(y: Tensor, *, compiled: bool | str = False) -> float:
    """:func:`self_distance_mean` of ``y``, remembered in this process by the points' bytes (SHA-256), so the
    reference set of a sweep, the same for each of its runs, is measured once per process (thread workers share
    it; a second thread asking for the same set waits for the first, threads asking for different sets do not
    wait). The value is the one computed from the same bytes, so cached and uncached results are identical. The
    last 16 sets are kept."""
    y = as_points(y, "y").cpu().contiguous()
    pairs = y.shape[0] * (y.shape[0] - 1) // 2
    jit = _use_compiled(compiled, pairs, y)  # reads only y's dimension and device
    # the eager sums depend on the thread count in the last bits (GEMM path), and the compiled loop's differ from
    # the eager ones in the last bits: both are part of the key, so a cached value is the one a fresh call gives
    key = (hashlib.sha256(y.numpy().tobytes()).hexdigest(), tuple(y.shape), jit, 0 if jit else torch.get_num_threads())
    with _self_lock:
        if key in _self_cache:
            _self_cache.move_to_end(key)
            return _self_cache[key]
        lock = _set_locks.setdefault(key, threading.Lock())
    with lock:
        with _self_lock:
            if key in _self_cache:  # measured by the thread this one waited for
                return _self_cache[key]
        value = self_distance_mean(y, compiled=jit)
        with _self_lock:
            _self_cache[key] = value
            if len(_self_cache) > _CACHE_SIZE:
                _self_cache.popitem(last=False)
            _set_locks.pop(key, None)
    return value
