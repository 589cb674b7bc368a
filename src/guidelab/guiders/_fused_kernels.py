"""The compiled loops of :mod:`guidelab.guiders.fused_jit` (numba). Imports numba: imported only by
:func:`guidelab.guiders.fused_jit._build`, never at import time of guidelab.

Every kernel takes its arrays as integer addresses (``Tensor.data_ptr()``, ~0.06 µs, where ``Tensor.numpy()`` costs
~0.7 µs each) of C-contiguous buffers of one dtype, and its sizes: ``n`` elements, or ``rows`` × ``d`` for the
per-sample rules, one row per sample. :func:`make` compiles one set per dtype; the Python-float coefficients are
rounded to that dtype inside the kernel (float64 scalars against float32 data keep LLVM from vectorising), and every
per-sample reduction accumulates in float64. The per-sample weights are computed in float64 by helpers compiled
without fast-math flags (exact IEEE arithmetic), then rounded once to the dtype.

Notation: ``c``, ``u`` the conditional and unconditional predictions in the model's space, ``x`` = x_t; a rule
measured in another space S reads ``c_S = ac·c + bc·x`` and ``u_S = ac·u + bc·x``; the guided prediction ``pred``
becomes the pair ``x0̂ = P0·pred + Q0·x``, ``ε̂ = P1·pred + Q1·x``.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numba
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from guidelab import jit

EPS = 1e-12  # guidelab.guiders.reductions.EPS (not imported: that module imports torch)


@intrinsic
def _at(typingctx, address):  # pragma: no cover - compiled by numba
    """The integer ``address`` as a void pointer, for ``numba.carray``."""
    if not isinstance(address, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return types.voidptr(address), codegen


exact = jit.njit(fastmath=False)


@exact
def shrink_of(sq_norm, threshold):  # pragma: no cover - compiled by numba
    """min(1, r/(||Δ̄|| + ε)); 1 where ``threshold`` < 0 (no threshold)."""
    if threshold < 0:
        return 1.0
    return min(1.0, threshold / (math.sqrt(sq_norm) + EPS))


@exact
def mambo_weight(sq_delta, sq_u, ac, alpha, g1):  # pragma: no cover - compiled by numba
    """(γ − 1)·exp(−α·r), r = |ac|·||c − u||/(||u_S|| + ε)."""
    r = abs(ac) * math.sqrt(sq_delta) / (math.sqrt(sq_u) + EPS)
    return g1 * math.exp(-alpha * r)


@exact
def rescale_factor(sum_c, sum_x, ss_c, ss_x, d, phi, tiny):  # pragma: no cover - compiled by numba
    """φ·(std(c) + ε)/(std(x) + ε) + (1 − φ), or 1 where x is constant (std(x) ≤ tiny·|mean(x)|) or φ = 0."""
    std_x = math.sqrt(ss_x / d)
    if phi == 0 or std_x <= tiny * abs(sum_x / d):
        return 1.0
    std_c = math.sqrt(ss_c / d)
    return (std_c + EPS) / (std_x + EPS) * phi + (1.0 - phi)


@exact
def tangential_weights(a, b, dd, g):  # pragma: no cover - compiled by numba
    """(γ + (1 − γ)p, (1 − γ)q) with (u·v₁)·v₁ = p·c + q·u, v₁ the top right singular vector of [c; u], from the
    Gram matrix [[a, b], [b, dd]] (:func:`guidelab.guiders.tangential.top_singular_projection`; the eigenvector's
    larger entry formed as a sum of two non-negative terms, μ₁ − dd = (a − dd)/2 + h)."""
    half = 0.5 * (a - dd)
    h = math.hypot(half, b)
    if a >= dd:
        e0 = half + h  # μ₁ − dd
        e1 = b
    else:
        e0 = b
        e1 = h - half  # μ₁ − a
    scale = max(abs(e0), abs(e1))
    if not scale > 0:
        scale = 1.0
    e0 = e0 / scale
    e1 = e1 / scale
    sq = e0 * e0 + e1 * e1
    inv = 1.0 / sq if sq > 0 else 0.0
    p = e0 * e1 * inv
    q = e1 * e1 * inv
    return g + (1.0 - g) * p, (1.0 - g) * q


@jit.njit(inline="always")
def operands(c_at, u_at, x_at, x0_at, eps_at, shape, dt):  # pragma: no cover - compiled by numba
    """The arrays at the addresses of c, u, x_t and the pair's outputs, each of ``shape`` and dtype ``dt``."""
    return (
        numba.carray(_at(c_at), shape, dt),
        numba.carray(_at(u_at), shape, dt),
        numba.carray(_at(x_at), shape, dt),
        numba.carray(_at(x0_at), shape, dt),
        numba.carray(_at(eps_at), shape, dt),
    )


def make(dt) -> SimpleNamespace:
    """The kernels for one dtype (``numpy.float32`` or ``numpy.float64``); compiled on first call, cached on disk.

    numba keys a closure's cache entry on its pickled free variables, so the kernels close over ``dt`` only (a
    class, pickled by name): a compiled function among them (a dispatcher, pickled with a per-process id) would
    miss the cache in every new process and compile again, about 4 s.
    """
    fast = jit.njit()

    @fast
    def affine(c_at, u_at, x_at, x0_at, eps_at, n, w, p0, q0, p1, q1):  # pragma: no cover - compiled by numba
        """CFG: m = u + w·(c − u); x0̂ = p0·m + q0·x, ε̂ = p1·m + q1·x (flat, n elements)."""
        c, u, x, x0, eps = operands(c_at, u_at, x_at, x0_at, eps_at, n, dt)
        w_, p0_, q0_, p1_, q1_ = dt(w), dt(p0), dt(q0), dt(p1), dt(q1)
        for j in range(n):
            m = u[j] + w_ * (c[j] - u[j])
            x0[j] = p0_ * m + q0_ * x[j]
            eps[j] = p1_ * m + q1_ * x[j]

    @fast
    def cfg_zero(c_at, u_at, x_at, x0_at, eps_at, rows, d, ac, bc, g, p0, q0, p1, q1):  # pragma: no cover
        """CFG-Zero*: s* = <v_c, v_u>/(||v_u||² + ε); v̂ = γ·v_c + (1 − γ)·s*·v_u (v in velocity: ac, bc)."""
        shape = (rows, d)
        c, u, x, x0, eps = operands(c_at, u_at, x_at, x0_at, eps_at, shape, dt)
        ac_, bc_, g_, p0_, q0_, p1_, q1_ = dt(ac), dt(bc), dt(g), dt(p0), dt(q0), dt(p1), dt(q1)
        for i in range(rows):
            ci, ui, xi, oi, ei = c[i], u[i], x[i], x0[i], eps[i]
            s_cu = 0.0
            s_uu = 0.0
            for j in range(d):
                vc = ac_ * ci[j] + bc_ * xi[j]
                vu = ac_ * ui[j] + bc_ * xi[j]
                s_cu += float(vc) * float(vu)
                s_uu += float(vu) * float(vu)
            b_ = dt((1.0 - g) * (s_cu / (s_uu + EPS)))
            for j in range(d):
                vc = ac_ * ci[j] + bc_ * xi[j]
                vu = ac_ * ui[j] + bc_ * xi[j]
                v = g_ * vc + b_ * vu
                oi[j] = p0_ * v + q0_ * xi[j]
                ei[j] = p1_ * v + q1_ * xi[j]

    @fast
    def mambo(c_at, u_at, x_at, x0_at, eps_at, rows, d, ac, bc, alpha, g1, p0, q0, p1, q1):  # pragma: no cover
        """MAMBO-G: pred = c + (γ − 1)·exp(−α·r)·(c − u), r = ||c_S − u_S||/(||u_S|| + ε), pair from the model's
        space."""
        shape = (rows, d)
        c, u, x, x0, eps = operands(c_at, u_at, x_at, x0_at, eps_at, shape, dt)
        ac_, bc_, p0_, q0_, p1_, q1_ = dt(ac), dt(bc), dt(p0), dt(q0), dt(p1), dt(q1)
        for i in range(rows):
            ci, ui, xi, oi, ei = c[i], u[i], x[i], x0[i], eps[i]
            s_dd = 0.0
            s_uu = 0.0
            for j in range(d):
                delta = float(ci[j] - ui[j])
                us = float(ac_ * ui[j] + bc_ * xi[j])
                s_dd += delta * delta
                s_uu += us * us
            w_ = dt(mambo_weight(s_dd, s_uu, ac, alpha, g1))
            for j in range(d):
                pred = ci[j] + w_ * (ci[j] - ui[j])
                oi[j] = p0_ * pred + q0_ * xi[j]
                ei[j] = p1_ * pred + q1_ * xi[j]

    @fast
    def apg(c_at, u_at, x_at, prev_at, avg_at, x0_at, eps_at, rows, d, ac, bc, momentum, ema, g1, eta, threshold,
            p1, q1):  # fmt: skip  # pragma: no cover - compiled by numba
        """APG in x0 (c0 = ac·c + bc·x, u0 likewise): Δ̄ = Δ + β·prev (``ema``: Δ + β·(prev − Δ); ``prev_at`` = 0:
        Δ̄ = Δ) written to ``avg``; x0̂ = (1 − (γ−1)(1−η)·k·s)·c0 + (γ−1)·s·Δ̄ with k = <Δ̄, c0>/(||c0||² + ε),
        s = min(1, r/(||Δ̄|| + ε)) (1 without threshold: ``threshold`` < 0); ε̂ = p1·x0̂ + q1·x."""
        shape = (rows, d)
        c, u, x, x0, eps = operands(c_at, u_at, x_at, x0_at, eps_at, shape, dt)
        has_prev = prev_at != 0
        prev = numba.carray(_at(prev_at if has_prev else avg_at), shape, dt)
        avg = numba.carray(_at(avg_at), shape, dt)
        ac_, bc_, m_, p1_, q1_ = dt(ac), dt(bc), dt(momentum), dt(p1), dt(q1)
        for i in range(rows):
            ci, ui, xi, pi, ai, oi, ei = c[i], u[i], x[i], prev[i], avg[i], x0[i], eps[i]
            s_aa = 0.0
            s_ac = 0.0
            s_cc = 0.0
            for j in range(d):
                c0 = ac_ * ci[j] + bc_ * xi[j]
                delta = c0 - (ac_ * ui[j] + bc_ * xi[j])
                a = delta
                if has_prev:
                    a = delta + m_ * (pi[j] - delta) if ema else delta + m_ * pi[j]
                ai[j] = a
                s_aa += float(a) * float(a)
                s_ac += float(a) * float(c0)
                s_cc += float(c0) * float(c0)
            shrink = shrink_of(s_aa, threshold)
            coef_c = dt(1.0 - g1 * (1.0 - eta) * (s_ac / (s_cc + EPS)) * shrink)
            coef_d = dt(g1 * shrink)
            for j in range(d):
                c0 = ac_ * ci[j] + bc_ * xi[j]
                out = coef_c * c0 + coef_d * ai[j]
                oi[j] = out
                ei[j] = p1_ * out + q1_ * xi[j]

    @fast
    def rescale(c_at, u_at, x_at, x0_at, eps_at, rows, d, ac, bc, g, phi, tiny, p0, q0, p1, q1):  # pragma: no cover
        """Guidance rescale in S: x_S = u_S + γ·(c_S − u_S), pred = x_S·(φ·(std(c_S) + ε)/(std(x_S) + ε) + 1 − φ)
        (two-pass population stds in float64; factor 1 where x_S is constant)."""
        shape = (rows, d)
        c, u, x, x0, eps = operands(c_at, u_at, x_at, x0_at, eps_at, shape, dt)
        ac_, bc_, g_, p0_, q0_, p1_, q1_ = dt(ac), dt(bc), dt(g), dt(p0), dt(q0), dt(p1), dt(q1)
        for i in range(rows):
            ci, ui, xi, oi, ei = c[i], u[i], x[i], x0[i], eps[i]
            sum_c = 0.0
            sum_x = 0.0
            for j in range(d):
                cs = ac_ * ci[j] + bc_ * xi[j]
                us = ac_ * ui[j] + bc_ * xi[j]
                sum_c += float(cs)
                sum_x += float(us + g_ * (cs - us))
            mean_c = sum_c / d
            mean_x = sum_x / d
            ss_c = 0.0
            ss_x = 0.0
            for j in range(d):
                cs = ac_ * ci[j] + bc_ * xi[j]
                us = ac_ * ui[j] + bc_ * xi[j]
                dc = float(cs) - mean_c
                dx = float(us + g_ * (cs - us)) - mean_x
                ss_c += dc * dc
                ss_x += dx * dx
            f_ = dt(rescale_factor(sum_c, sum_x, ss_c, ss_x, d, phi, tiny))
            for j in range(d):
                cs = ac_ * ci[j] + bc_ * xi[j]
                us = ac_ * ui[j] + bc_ * xi[j]
                pred = (us + g_ * (cs - us)) * f_
                oi[j] = p0_ * pred + q0_ * xi[j]
                ei[j] = p1_ * pred + q1_ * xi[j]

    @fast
    def tangential(c_at, u_at, x_at, x0_at, eps_at, rows, d, ac, bc, g, p0, q0, p1, q1):  # pragma: no cover
        """TCFG in S: pred = (γ + (1 − γ)p)·c_S + (1 − γ)q·u_S, u' = p·c_S + q·u_S the projection of u_S on the top
        right singular vector of [c_S; u_S] (from the three float64 dot products)."""
        shape = (rows, d)
        c, u, x, x0, eps = operands(c_at, u_at, x_at, x0_at, eps_at, shape, dt)
        ac_, bc_, p0_, q0_, p1_, q1_ = dt(ac), dt(bc), dt(p0), dt(q0), dt(p1), dt(q1)
        for i in range(rows):
            ci, ui, xi, oi, ei = c[i], u[i], x[i], x0[i], eps[i]
            s_cc = 0.0
            s_cu = 0.0
            s_uu = 0.0
            for j in range(d):
                cs = float(ac_ * ci[j] + bc_ * xi[j])
                us = float(ac_ * ui[j] + bc_ * xi[j])
                s_cc += cs * cs
                s_cu += cs * us
                s_uu += us * us
            wc, wu = tangential_weights(s_cc, s_cu, s_uu, g)
            wc_, wu_ = dt(wc), dt(wu)
            for j in range(d):
                pred = wc_ * (ac_ * ci[j] + bc_ * xi[j]) + wu_ * (ac_ * ui[j] + bc_ * xi[j])
                oi[j] = p0_ * pred + q0_ * xi[j]
                ei[j] = p1_ * pred + q1_ * xi[j]

    return SimpleNamespace(
        affine=affine, cfg_zero=cfg_zero, mambo=mambo, apg=apg, rescale=rescale, tangential=tangential
    )
