"""Row sums of pairwise Euclidean distances as one JIT-compiled loop (numba, the optional ``fast`` extra), for the
exact pairwise sums of :mod:`guidelab.metrics.pairwise` in 2 ≤ D ≤ 8.

``row_sums(x, y, same)`` returns ``r_i = Σ_j ‖x_i − y_j‖`` for every row i of x (n, D), or with ``same`` (y is x)
``r_i = Σ_{j>i} ‖x_i − x_j‖``, in float64 with correctly rounded square roots; the caller adds the rows with
:func:`math.fsum`. Each row is one pass over y's coordinates (``yt``, (D, m), a contiguous row per coordinate):
the differences, their squares and the square root fused, the row's sum vectorised (its additions reassociated
into SIMD lanes, the only relaxation: ≲ √m·ε relative per row). A row's value does not depend on how the rows
are split, so the result is the same for every thread count; the loops release the GIL, so runs on several
threads of one process (a sweep's thread workers) and the chunks of one call run in parallel.

Compiled once per install and cached on disk (numba's ``cache=True``): loading takes ~0.3 s per process, the
first compile ~1–2 s. Where numba is not installed, :func:`available` is False and the caller uses its eager
tiles. Source of the fused-loop form: the kernel ``torch.compile`` generates for the same sum (inductor's
``cpp_fused_*_sqrt_sub_sum``), written out by hand so that no process pays inductor's seconds of start-up and
the loop runs without the GIL.
"""

from __future__ import annotations

import math

import numpy as np

from guidelab import jit

__all__ = ["CHUNK_ROWS", "available", "row_sums", "warm_up"]

CHUNK_ROWS = 512  # rows per task when one call is split over threads (the triangle's rows differ in length)


def _build() -> tuple:
    compiled = jit.njit()

    @compiled
    def plane(x, yt, lo, hi, same, out):  # pragma: no cover - compiled by numba
        """D = 2: out[i] = Σ_j ‖x_i − y_j‖ (j > i where ``same``) for lo ≤ i < hi, one fused loop per row."""
        for i in range(lo, hi):
            j0 = i + 1 if same else 0
            y0 = yt[0, j0:]  # slices, so that the loops start at 0 (LLVM vectorises them only then)
            y1 = yt[1, j0:]
            p = x[i, 0]
            q = x[i, 1]
            s = 0.0
            for j in range(y0.shape[0]):
                u = p - y0[j]
                v = q - y1[j]
                s += math.sqrt(u * u + v * v)
            out[i] = s

    @compiled
    def general(x, yt, lo, hi, same, out):  # pragma: no cover - compiled by numba
        """Any D: the squared distances of a row accumulated per coordinate into ``buf``, then Σ √buf."""
        d, m = yt.shape
        work = np.empty(m)
        for i in range(lo, hi):
            j0 = i + 1 if same else 0
            buf = work[: m - j0]
            p = x[i, 0]
            y0 = yt[0, j0:]
            for j in range(buf.shape[0]):
                u = p - y0[j]
                buf[j] = u * u
            for k in range(1, d):
                p = x[i, k]
                yk = yt[k, j0:]
                for j in range(buf.shape[0]):
                    u = p - yk[j]
                    buf[j] += u * u
            s = 0.0
            for j in range(buf.shape[0]):
                s += math.sqrt(buf[j])
            out[i] = s

    return plane, general


def _reference(x: np.ndarray, y: np.ndarray, same: bool) -> np.ndarray:
    """Row sums by plain numpy (the probe's check)."""
    d = np.sqrt(((x[:, None, :] - y[None, :, :]) ** 2).sum(axis=2))
    return np.triu(d, 1).sum(axis=1) if same else d.sum(axis=1)


def _probe(kernels: tuple) -> bool:
    """The kernels agree with numpy to 10⁻¹² on a small set, across and within."""
    probe = np.cos(np.arange(37 * 3, dtype=np.float64)).reshape(37, 3)
    ok = True
    for kernel, pts in zip(kernels, (probe[:, :2], probe), strict=True):
        pts = np.ascontiguousarray(pts)
        for same in (False, True):
            out = np.zeros(len(pts))
            kernel(pts, np.ascontiguousarray(pts.T), 0, len(pts), same, out)
            ok &= bool(np.allclose(out, _reference(pts, pts, same), rtol=1e-12, atol=0))
    return ok


KERNELS = jit.Kernels(_build, _probe, "pairwise", "guidelab's fast loop for the energy distance", "a few seconds")


def available() -> bool:
    """Whether the compiled kernels can be used: numba installed, not turned off by ``GUIDELAB_COMPILE=0``, and
    the kernels agree with numpy to 10⁻¹² on a probe (checked once per process; compiles or loads them)."""
    return KERNELS.available()


def warm_up() -> None:
    """Load (or compile) the kernels on a background thread, so that the ~0.5 s overlaps other work (a sweep's
    first samplings, which release the GIL); a later :func:`available` waits for it. Does nothing once loaded."""
    KERNELS.warm_up()


def row_sums(x: np.ndarray, y: np.ndarray, same: bool, threads: int = 1) -> np.ndarray:
    """The (n,) row sums ``Σ_j ‖x_i − y_j‖`` (``same``: y is x and j > i), float64.

    Args:
        x: (n, D) float64 points; y: (m, D) float64 points (ignored, x used, where ``same``).
        same: within one set, pairs j > i only.
        threads: threads to split the rows over (chunks of :data:`CHUNK_ROWS`); the values do not depend on it.

    Raises:
        RuntimeError: the kernels are not available (check :func:`available` first).
    """
    plane, general = KERNELS.get()
    x = np.ascontiguousarray(x, dtype=np.float64)
    yt = np.ascontiguousarray((x if same else y).T, dtype=np.float64)
    kernel = plane if x.shape[1] == 2 else general
    n = x.shape[0]
    out = np.zeros(n)
    if threads <= 1 or n <= CHUNK_ROWS:
        kernel(x, yt, 0, n, same, out)
        return out
    chunks = jit.pool(threads).map(
        lambda lo: kernel(x, yt, lo, min(n, lo + CHUNK_ROWS), same, out), range(0, n, CHUNK_ROWS)
    )
    list(chunks)
    return out
