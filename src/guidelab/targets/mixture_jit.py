"""The exact Gaussian- and box-mixture denoisers at small sizes as JIT-compiled loops (numba, the optional ``fast``
extra), for :mod:`guidelab.targets.gaussian_mixture` and :mod:`guidelab.targets.box_mixture`; the loops themselves
are in :mod:`guidelab.targets._mixture_kernels`, imported (with numba) only when they are first used.

At D = 2 and a handful of components the eager torch evaluation is bound by per-operation overhead: twenty-odd
passes over (n, K·D) arrays of a few entries per particle. Here each particle is visited once: for every component
the Mahalanobis norm in its rotated, whitened basis (Gaussian) or the per-dimension truncated-normal mass and mean
(box), the log-sum-exp over the condition's components, the responsibilities, and the posterior mean and log p_t
written straight into the outputs.

- Gaussian mixtures run in blocks of 256 particles with every inner loop over the particles of a block, so that LLVM
  vectorises them, with an exp written out for that (2^k·e^r, Taylor degree 13, flushing below e^{−700} to 0 as the
  torch path does below twice the smallest normal): 2.5–3.3× the torch path at D = 2, K = 8. The targets use them
  where they measured faster (see ``GaussianMixture.uses_compiled_kernels``); the D² multiply-adds per component
  are scalar per particle, so from D = 8 the torch path's GEMMs win.
- Box mixtures run in blocks of particles too. Per component, the particles that take it are copied to contiguous
  rows and every entry's closed form is computed branch-free (both ends, inside and outside, one selected), so that
  LLVM vectorises it: ``erfcx(y) = e^{y²}erfc(y)`` of both ends without a table (a lookup is a gather, which LLVM
  does not vectorise on the CPUs measured): erfcx(y)·(y + 4) is one polynomial of degree 22 in t = (y − 4)/(y + 4)
  over all of [0, ∞) (5e-16 relative, checked against mpmath in the tests), both ends sharing one division; the
  far end's factor e^{−4|m'|h'} and its expm1 from one exp reduction, e^{−n²} inside, one log a component, each
  written out. Components that cannot matter are skipped: an entry outside its box has ``log Z ≤ −ln 2 − n²`` (n
  the distance of the near end in units of σ√2) and one inside ``log Z ≤ 0``; each particle first takes its
  best-bound component, then only those whose bound lies at most :data:`PRUNE` below that one's exact log-weight
  (the others would move the sums by less than e^{−50} relative, below rounding; their responsibility is taken as
  0), folding each into a running log-sum-exp and mean. (Per-component log-densities, asked for without a
  condition, are always computed in full.) Components outside a particle's class are skipped. The rare entries
  (the Hermite series at small α, distances beyond 1e100 or NaN, products of factors out of the normal range) are
  done again by the scalar code: there erfcx comes from a table of degree-10 polynomials on 104 intervals of width
  1/4 over [0, 26) (:func:`erfcx_table`, built once per process from ``math.erfc``) and beyond 26 from the
  asymptotic series of the torch path. The box loop is compiled without fast-math, its fused multiply-adds written
  out: LLVM contracted differently in a vectorised loop and its scalar remainder, which would tie a particle's bits
  to its place in a block. About 0.8× the Gaussian mixture's rate at D = 1, K = 2 and 0.6× at D = 2, K = 8 (the
  README's table): an entry costs two erfcx, two exp and two divisions (~17 cycles, vectorised) where the Gaussian
  mixture's costs a few multiply-adds.

Everything is computed in float64 (float32 inputs are widened and the results rounded back once: at least as
accurate as the torch path in float32), with the same formulas as the torch paths, so the two agree to a few ulps
in float64 (the tests hold them to 1e-10 relative, and to the pre-issue-17 oracles and mpmath). A NaN or infinite
coordinate gives NaN outputs for its particle, as on the torch path.

Each particle's values are computed on their own, so splitting the particles over threads (:func:`run`, one
contiguous range per torch thread, at least :data:`MIN_CHUNK` particles each) gives the same bits at every thread
count; the loops release the GIL. Loading the compiled loops from numba's cache takes about 0.5–0.8 s once per
process, numba's import included (compiling them, once per install, took about a minute on a busy 2-core machine).
Where numba is missing or ``GUIDELAB_COMPILE=0`` is set, :func:`available` is False and the targets take their torch
paths.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from guidelab import jit
from guidelab.denoiser import NULL_COND, as_cond
from guidelab.targets._mixture_constants import (
    _DEGREE,
    _LOG_2PI,
    _SQRT_HALF,
    _VELTKAMP,
    _WIDTH,
    _Y_TAIL,
    COMPONENTS,
    LOG_PROB,
    MEAN,
    PRUNE,
)

__all__ = [
    "COMPONENTS",
    "KERNELS",
    "LOG_PROB",
    "MEAN",
    "MIN_CHUNK",
    "PRUNE",
    "available",
    "erfcx_table",
    "mode_and_labels",
    "run",
]

MIN_CHUNK = 2048  # particles per thread below which a call runs on the calling thread alone


def _erfcx_reference(y: float) -> float:
    """e^{y²}erfc(y) to a few ulps for 0 ≤ y ≤ 26: ``math.erfc`` times e^{y²} with y split (Veltkamp) so that the
    square is exact in its high part, as :func:`guidelab.targets.box_mixture._exp_square`."""
    t = y * _VELTKAMP
    hi = t - (t - y)
    d = (y - hi) * (hi + y)
    return math.exp(hi * hi) * (1.0 + d + 0.5 * d * d) * math.erfc(y)


def erfcx_table() -> np.ndarray:
    """(104, 11) monomial coefficients in s ∈ [−1, 1] of erfcx on each interval [i/4, (i + 1)/4): the polynomial
    through the degree-10 Chebyshev points of the first kind (max relative error ~1e-15 against mpmath), for the box
    loop's scalar pass."""
    count = round(_Y_TAIL / _WIDTH)
    nodes = np.cos(np.pi * (np.arange(_DEGREE + 1) + 0.5) / (_DEGREE + 1))
    to_cheb = np.linalg.inv(np.polynomial.chebyshev.chebvander(nodes, _DEGREE))
    table = np.zeros((count, _DEGREE + 1))
    for i in range(count):
        centre = (i + 0.5) * _WIDTH
        values = np.array([_erfcx_reference(centre + 0.5 * _WIDTH * s) for s in nodes])
        coefficients = np.polynomial.chebyshev.cheb2poly(to_cheb @ values)
        table[i, : len(coefficients)] = coefficients
    return table


def _build() -> SimpleNamespace:
    import numba  # noqa: F401 - first, so that a missing numba fails here even once the kernel module is loaded

    from guidelab.targets import _mixture_kernels as kernels

    return SimpleNamespace(
        box=kernels.box_kernel,
        gaussian_shared=kernels.gaussian_shared,
        gaussian_per_sample=kernels.gaussian_per_sample,
        table=erfcx_table(),
    )


def _probe(kernels: SimpleNamespace) -> bool:
    """The kernels agree with plain numpy/math references on a small case: 1e-12 relative in float64, and float32
    inputs and outputs (compiled here too, so that no run compiles them later) to float32 rounding."""
    ok = True
    # Gaussian: two components in 2-D, one time, against the textbook density and posterior mean.
    means = np.array([[0.5, -1.0], [-1.5, 0.25]])
    covs = np.array([[[1.0, 0.3], [0.3, 0.5]], [[0.4, -0.1], [-0.1, 0.8]]])
    x = np.cos(np.arange(14.0)).reshape(7, 2) * 2
    a, s = 0.8, 0.6
    log_w = np.log(np.array([[0.3, 0.7], [0.5, 0.5]]))  # a class row and the null row
    labels = np.array([0, -1, 0, -1, 0, 0, -1], dtype=np.int64)
    logits, posts = [], []
    for k in range(2):
        cov_t = a * a * covs[k] + s * s * np.eye(2)
        res = x - a * means[k]
        sol = np.linalg.solve(cov_t, res.T).T
        logits.append(-0.5 * ((res * sol).sum(1) + np.log(np.linalg.det(cov_t)) + 2 * _LOG_2PI))
        posts.append(means[k] + a * sol @ covs[k])
    logits = np.stack(logits, 1) + log_w[np.where(labels < 0, 1, labels)]
    top = logits.max(1, keepdims=True)
    r = np.exp(logits - top)
    ref_lp = (top + np.log(r.sum(1, keepdims=True)))[:, 0]
    ref_mean = np.einsum("nk,knd->nd", r / r.sum(1, keepdims=True), np.stack(posts))
    eig, vec = np.linalg.eigh(covs)
    u = np.ascontiguousarray(vec.transpose(0, 2, 1).reshape(4, 2))  # u[kD + j, d] = U_k[d, j]
    m_rot = np.einsum("kdj,kd->kj", vec, means).reshape(4)
    s_all = eig.reshape(4)
    var = a * a * s_all + s * s
    w_fwd = np.concatenate([u / np.sqrt(var)[:, None], (-a * m_rot / np.sqrt(var))[:, None]], 1)
    const = -0.5 * (np.log(var).reshape(2, 2).sum(1) + 2 * _LOG_2PI)
    w_back = u * (a * s_all / np.sqrt(var))[:, None]
    for dtype, rtol in ((np.float64, 1e-12), (np.float32, 1e-6)):
        xd = x.astype(dtype)
        out_mean, out_lp = np.empty((7, 2), dtype=dtype), np.empty((7, 1), dtype=dtype)
        per_sample = (np.full(7, a), np.full(7, s), u, m_rot, s_all, means, log_w, labels, MEAN, 0, 7)
        kernels.gaussian_per_sample(xd, *per_sample, out_mean, out_lp)
        ok &= bool(np.allclose(out_lp[:, 0], ref_lp, rtol=rtol, atol=0) and np.allclose(out_mean, ref_mean, rtol=rtol))
        kernels.gaussian_shared(xd, w_fwd, const, w_back, means, log_w, labels, MEAN, 0, 7, out_mean, out_lp)
        ok &= bool(np.allclose(out_lp[:, 0], ref_lp, rtol=rtol, atol=0) and np.allclose(out_mean, ref_mean, rtol=rtol))
    # Box: one interval [low, high], inside and on both sides, against math.erfc directly (moderate distances).
    low, high = -0.5, 1.0
    xs = np.linspace(-3.0, 3.0, 9)[:, None]
    box = (
        np.array([a]),
        np.array([s]),
        np.array([[0.5 * (low + high)]]),
        np.array([[0.5 * (high - low)]]),
        np.array([[math.log(high - low)]]),
        np.zeros((1, 1)),
        np.zeros(9, dtype=np.int64),
        kernels.table,
        MEAN,
        True,
        0,
        9,
    )
    for dtype, rtol in ((np.float64, 1e-12), (np.float32, 1e-6)):
        out_mean, out_lp = np.empty((9, 1), dtype=dtype), np.empty((9, 1), dtype=dtype)
        kernels.box(xs.astype(dtype), *box, out_mean, out_lp)
        for i, xv in enumerate(xs[:, 0]):
            u_end, w_end = (xv - a * low) / s, (xv - a * high) / s
            mass = 0.5 * (math.erfc(-u_end * _SQRT_HALF) - math.erfc(-w_end * _SQRT_HALF))
            density = (math.exp(-0.5 * w_end * w_end) - math.exp(-0.5 * u_end * u_end)) / math.sqrt(2 * math.pi)
            ok &= math.isclose(out_lp[i, 0], math.log(mass / (a * (high - low))), rel_tol=rtol)
            ok &= math.isclose(out_mean[i, 0], xv / a - (s / a) * density / mass, rel_tol=rtol, abs_tol=rtol)
    return bool(ok)


KERNELS = jit.Kernels(
    _build, _probe, "mixtures", "guidelab's fast loops for the exact targets", "about a minute on 2 cores"
)


def available() -> bool:
    """Whether the compiled kernels can be used: numba installed, not turned off by ``GUIDELAB_COMPILE=0``, and
    the kernels agree with numpy on a probe (checked once per process; compiles or loads them)."""
    return KERNELS.available()


def mode_and_labels(target: Any, cond: Any, n: int, want_mean: bool) -> tuple[int, np.ndarray]:
    """The kernels' mode and each particle's label (int64, −1 for the null class) as numpy; the labels are checked
    in numpy, and :meth:`~guidelab.targets.base.Target.cond_rows` raises its ValueError naming ``cond`` for a label
    outside [−1, C − 1]."""
    if cond is None and not want_mean:
        return COMPONENTS, np.zeros(0, dtype=np.int64)
    labels = as_cond(cond, n, "cpu").numpy()
    if n and (labels.min() < NULL_COND or labels.max() >= target.num_classes):
        target.cond_rows(cond, n, "cpu")  # raises
    return (MEAN if want_mean else LOG_PROB), labels


def run(kernel: Any, n: int, *args: Any, out: tuple[np.ndarray, np.ndarray]) -> None:
    """Call ``kernel(*args, lo, hi, *out)`` over particles [0, n), split into one contiguous range per torch thread
    (at least :data:`MIN_CHUNK` particles each); the calling thread takes the first range. The values do not
    depend on the split."""
    threads = min(max(1, torch.get_num_threads()), n // MIN_CHUNK)
    if threads <= 1:
        kernel(*args, 0, n, *out)
        return
    bounds = [n * j // threads for j in range(threads + 1)]
    pool = jit.pool(threads - 1)
    futures = [pool.submit(kernel, *args, bounds[j], bounds[j + 1], *out) for j in range(1, threads)]
    kernel(*args, bounds[0], bounds[1], *out)
    for future in futures:
        future.result()
