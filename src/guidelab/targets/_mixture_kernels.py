"""The compiled loops of :mod:`guidelab.targets.mixture_jit` (imports numba; imported only by its ``build``).

Module-level functions, so that numba's on-disk cache finds them again in a new process (a closure's references to
other compiled functions would key the cache by objects that change every process). Documented in
:mod:`guidelab.targets.mixture_jit`.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from guidelab import jit
from guidelab.targets._mixture_constants import (
    _ERFC_NEGLIGIBLE,
    _FAR_NEGLIGIBLE,
    _H_SERIES,
    _HALF_LOG_2PI,
    _INV_SQRT_PI,
    _LN2,
    _LOG_2PI,
    _SQRT2,
    _SQRT_2_OVER_PI,
    _SQRT_HALF,
    _WIDTH,
    _Y_TAIL,
    COMPONENTS,
    MEAN,
    PRUNE,
)

BLOCK = 256  # particles per block of the vectorised loops
_LOG2E = 1.4426950408889634
_LN2_HI = 0.6931471803691238  # ln 2 in two parts (the usual split): k·_LN2_HI is exact for |k| < 2^11
_LN2_LO = 1.9082149292705877e-10
_EXP_FLOOR = -700.0
_TINY_PRODUCT, _HUGE_PRODUCT = 1e-290, 1e290  # a product of variances inside these is a normal, finite number
_EXP_C3, _EXP_C4, _EXP_C5, _EXP_C6 = 1 / 6, 1 / 24, 1 / 120, 1 / 720
_EXP_C7, _EXP_C8, _EXP_C9, _EXP_C10 = 1 / 5040, 1 / 40320, 1 / 362880, 1 / 3628800
_EXP_C11, _EXP_C12, _EXP_C13 = 1 / 39916800, 1 / 479001600, 1 / 6227020800
_MANTISSA, _ONE_BITS = (1 << 52) - 1, 1023 << 52  # a double's mantissa bits, and the exponent bits of 1.0
_FAR_LIMIT = 1e100  # distances beyond (or NaN) go to the scalar pass
_LANES = 8  # doubles in a vector register (AVX-512); the box loop pads its particle lists to a multiple
_BOX_BLOCK_ENTRIES = (
    1 << 18
)  # the box loop's per-component (K, block) and per-dimension (D, block) work arrays: 2 MB each
_ERFCX_L = 4.0
_ERFCX_G = (  # erfcx(y)·(y + L) in t = (y − L)/(y + L): the degree-22 interpolant at the Chebyshev points
    1.095995661000491,
    -0.9765487290808824,
    0.7732087022652361,
    -0.5408538313131965,
    0.33085158787810337,
    -0.17401093724091568,
    0.07638151490700863,
    -0.026370053328949945,
    0.0061120556821152045,
    -0.0002809589371945609,
    -0.0004550528495048933,
    0.00017681308475719695,
    -3.634558037436345e-06,
    -1.8861481777975764e-05,
    4.693043799316667e-06,
    1.42495728038385e-06,
    -8.444415138513227e-07,
    -7.597760874906101e-08,
    1.231160742255897e-07,
    8.276487613621898e-10,
    -1.5522062791612513e-08,
    2.6471770049944693e-10,
    1.252169228211782e-09,
)

compiled = jit.njit()
inline = jit.njit(inline="always")
# No fast-math: the box loop's vectorised loops and their scalar remainders must give the same bits (which particles
# a remainder takes depends on the block), and LLVM contracts multiply-adds differently in the two; the fused
# multiply-adds it needs are written out (:func:`fma`).
compiled_lanewise = jit.njit(fastmath=False)


@inline
def erfcx(y, table):  # pragma: no cover - compiled by numba
    """e^{y²}erfc(y) for y ≥ 0 (NaN gives NaN): the table below 26, the asymptotic series above."""
    if y < _Y_TAIL:
        i = int(y * (1.0 / _WIDTH))
        s = (y - (i + 0.5) * _WIDTH) * (2.0 / _WIDTH)
        s2 = s * s
        s4 = s2 * s2
        # Estrin's scheme (a shorter dependency chain than Horner's; the terms fall off fast, |s| ≤ 1)
        low = (table[i, 0] + table[i, 1] * s) + s2 * (table[i, 2] + table[i, 3] * s)
        mid = (table[i, 4] + table[i, 5] * s) + s2 * (table[i, 6] + table[i, 7] * s)
        high = (table[i, 8] + table[i, 9] * s) + s2 * table[i, 10]
        return low + s4 * (mid + s4 * high)
    z = 0.5 / (y * y)
    r = z * 10395.0 - 945.0
    r = r * z + 105.0
    r = r * z - 15.0
    r = r * z + 3.0
    r = r * z - 1.0
    r = r * z + 1.0
    return r / y * _INV_SQRT_PI


@inline
def box_entry(mq, hq, table, take_log):  # pragma: no cover - compiled by numba
    """One dimension of one box: (series?, f, a, r) with log Z = log f + a and r = E[z], or for the series
    log S − m²/2 = log f + a and r = T/S; with ``take_log`` f is returned as log f (one dimension: no product to
    take the log of later)."""
    am = abs(mq)
    if hq < _H_SERIES * _SQRT_HALF and am * hq < 0.5 * _H_SERIES:
        m = mq * _SQRT2
        h = hq * _SQRT2
        he2 = m * m - 1.0
        he3 = m * he2 - 2.0 * m
        he4 = m * he3 - 3.0 * he2
        he5 = m * he4 - 4.0 * he3
        he6 = m * he5 - 5.0 * he4
        he7 = m * he6 - 6.0 * he5
        h2 = h * h
        big_s = 1.0 + h2 * (he2 / 6.0 + h2 * (he4 / 120.0 + h2 * he6 / 5040.0))
        big_t = m / 3.0 + h2 * (he3 / 30.0 + h2 * (he5 / 840.0 + h2 * he7 / 45360.0))
        return True, math.log(big_s) if take_log else big_s, -0.5 * m * m, big_t / big_s
    near = abs(am - hq)
    far = am + hq
    expo = 4.0 * am * hq
    # em = e^{−4|m'|h'} − 1: expm1 only where the difference cancels (e^{−x} − 1 loses no more than 4 ulps from x = 1/2,
    # and costs 4 ns against expm1's 14)
    if expo < 0.5:
        em = math.expm1(-expo)
    elif expo < _FAR_NEGLIGIBLE:
        em = math.exp(-expo) - 1.0
    else:
        em = -1.0
    if am >= hq:  # outside: 2Z·e^{n²} = erfcx(n) − e^{−4|m'|h'}·erfcx(f)
        two_z = erfcx(near, table)
        if expo < _FAR_NEGLIGIBLE:
            two_z -= (em + 1.0) * erfcx(far, table)
        add = -_LN2 - near * near
        mills = _SQRT_2_OVER_PI / two_z
    else:  # inside: 2Z = 2 − erfc(n) − erfc(f)
        e_near = math.exp(-near * near)
        two_z = 2.0
        if near < _ERFC_NEGLIGIBLE:
            two_z -= erfcx(near, table) * e_near
        if far < _ERFC_NEGLIGIBLE:
            two_z -= erfcx(far, table) * math.exp(-far * far)
        add = -_LN2
        mills = _SQRT_2_OVER_PI * e_near / two_z
    return False, math.log(two_z) if take_log else two_z, add, math.copysign(mills * em, mq)


@intrinsic
def float_from_bits(typingctx, bits):  # pragma: no cover - compiled by numba
    """The float64 whose bit pattern is the int64 ``bits`` (a bitcast, which LLVM vectorises)."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


@intrinsic
def fma(typingctx, a, b, c):  # pragma: no cover - compiled by numba
    """a·b + c rounded once (llvm.fma): the same bits in a vectorised loop and in its scalar remainder, which
    contraction left to the compiler does not promise."""

    def codegen(context, builder, signature, args):
        double = ir.DoubleType()
        fn = builder.module.declare_intrinsic("llvm.fma", [double], ir.FunctionType(double, [double] * 3))
        return builder.call(fn, args)

    return types.float64(types.float64, types.float64, types.float64), codegen


@intrinsic
def bits_of(typingctx, value):  # pragma: no cover - compiled by numba
    """The bit pattern of the float64 ``value`` as an int64."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(types.float64), codegen


@inline
def exp_pair(d):  # pragma: no cover - compiled by numba
    """(e^d, e^d − 1) for d ≤ 0 as :func:`exp_row` (2^k·e^r, Taylor degree 13), both flushed below −700 (to 0 and
    −1; −∞ too): e^d − 1 = 2^k·(e^r − 1) + (2^k − 1) keeps its digits where it is small (k = 0 for |d| < ln 2/2, and
    no worse than 2 ulps beyond). Straight-line code, so that a loop around it vectorises; Horner's scheme in fused
    multiply-adds, as :func:`erfcx_poly`."""
    k = math.floor((d if d > _EXP_FLOOR else _EXP_FLOOR) * _LOG2E + 0.5)  # not max(): its NaN test stops LLVM
    r = fma(-k, _LN2_LO, fma(-k, _LN2_HI, d))  # k·ln 2's high part is exact
    q = fma(_EXP_C13, r, _EXP_C12)  # e^r − 1 = r·Σ_{i≤12} r^i/(i + 1)!
    q = fma(q, r, _EXP_C11)
    q = fma(q, r, _EXP_C10)
    q = fma(q, r, _EXP_C9)
    q = fma(q, r, _EXP_C8)
    q = fma(q, r, _EXP_C7)
    q = fma(q, r, _EXP_C6)
    q = fma(q, r, _EXP_C5)
    q = fma(q, r, _EXP_C4)
    q = fma(q, r, _EXP_C3)
    q = fma(q, r, 0.5)
    q = fma(q, r, 1.0) * r
    scale = float_from_bits((np.int64(k) + 1023) << 52)
    flush = d < _EXP_FLOOR
    return (0.0 if flush else fma(scale, q, scale)), (-1.0 if flush else fma(scale, q, scale - 1.0))


@inline
def log_normal(v):  # pragma: no cover - compiled by numba
    """log v for a positive normal v (NaN gives NaN), straight-line so that a loop around it vectorises: v = 2^e·f
    with f ∈ [√½, √2) from the bits, log f = 2·atanh(s), s = (f − 1)/(f + 1) (|s| ≤ 0.172; the series to s^21,
    truncation below 1e-18), e·ln 2 in two parts (exact high part): within a few ulps."""
    bits = bits_of(v)
    e = (bits >> 52) - 1023
    f = float_from_bits((bits & _MANTISSA) | _ONE_BITS)  # [1, 2)
    big = f > _SQRT2
    f = 0.5 * f if big else f
    e = e + 1 if big else e
    s = (f - 1.0) / (f + 1.0)
    z = s * s
    p = fma(1 / 21, z, 1 / 19)
    p = fma(p, z, 1 / 17)
    p = fma(p, z, 1 / 15)
    p = fma(p, z, 1 / 13)
    p = fma(p, z, 1 / 11)
    p = fma(p, z, 1 / 9)
    p = fma(p, z, 1 / 7)
    p = fma(p, z, 1 / 5)
    p = fma(p, z, 1 / 3)
    s2 = s + s
    log_f = fma(s2, z * p, s2)
    return v if v != v else e * _LN2_HI + (e * _LN2_LO + log_f)


@inline
def erfcx_poly(t):  # pragma: no cover - compiled by numba
    """G(t) = erfcx(y)·(y + L) at t = (y − L)/(y + L) ∈ [−1, 1), L = :data:`_ERFCX_L`: smooth in t on [−1, 1] (it
    tends to 1/√π as y → ∞), its degree-22 interpolant at the Chebyshev points (:data:`_ERFCX_G`, monomial
    coefficients from 60-digit mpmath), by Horner's scheme in fused multiply-adds (each coefficient an operand read
    from memory; Estrin's shorter chains measured slower in the box loop, whose registers they exhaust)."""
    c = _ERFCX_G
    g = fma(c[22], t, c[21])
    g = fma(g, t, c[20])
    g = fma(g, t, c[19])
    g = fma(g, t, c[18])
    g = fma(g, t, c[17])
    g = fma(g, t, c[16])
    g = fma(g, t, c[15])
    g = fma(g, t, c[14])
    g = fma(g, t, c[13])
    g = fma(g, t, c[12])
    g = fma(g, t, c[11])
    g = fma(g, t, c[10])
    g = fma(g, t, c[9])
    g = fma(g, t, c[8])
    g = fma(g, t, c[7])
    g = fma(g, t, c[6])
    g = fma(g, t, c[5])
    g = fma(g, t, c[4])
    g = fma(g, t, c[3])
    g = fma(g, t, c[2])
    g = fma(g, t, c[1])
    g = fma(g, t, c[0])
    return g


@inline
def erfcx_fast(y):  # pragma: no cover - compiled by numba
    """e^{y²}erfc(y) for 0 ≤ y ≤ 1e100 without a table (straight-line, so that a loop around it vectorises):
    :func:`erfcx_poly`, within 5e-16 relative of erfcx over [0, 1e100] in double arithmetic (the tests check it
    against mpmath); the box loop takes the same polynomial with one division for both ends (:func:`closed_entry`)."""
    r = 1.0 / (y + _ERFCX_L)
    return erfcx_poly((y - _ERFCX_L) * r) * r


@inline
def closed_entry(mq, hq):  # pragma: no cover - compiled by numba
    """:func:`box_entry`'s closed form, straight-line so that a loop around it vectorises (both branches computed, one
    selected): (2Z, its log's other term, E[z], whether the entry is left to the scalar pass). The scalar pass takes
    the Hermite series' entries (small h' and |m'|h') and far ends past 1e100 or NaN, whose values here are ignored.

    With n, f the ends' distances: outside 2Z·e^{n²} = erfcx(n) − e^{−4|m'|h'}·erfcx(f), inside 2Z = 2 − erfc(n) −
    erfc(f) with erfc(f) = e^{−n²}·e^{−4|m'|h'}·erfcx(f), and |E[z]| = φ(near end)/Z·(1 − e^{−4|m'|h'}). Terms that
    the scalar code skips as negligible (the far end past e^{−4|m'|h'} < e^{−50}, inside an end past 6.5) are kept:
    below rounding. Both erfcx by :func:`erfcx_poly` with one division: 1/((n + L)(f + L))."""
    am = abs(mq)
    near = abs(am - hq)
    far = am + hq
    expo = 4.0 * am * hq
    special = ((hq < _H_SERIES * _SQRT_HALF) & (am * hq < 0.5 * _H_SERIES)) | (not (far < _FAR_LIMIT))
    e_expo, em = exp_pair(-expo)
    sq = near * near
    e_near, _ = exp_pair(-sq)
    a_near = near + _ERFCX_L
    a_far = far + _ERFCX_L
    inv = 1.0 / (a_near * a_far)
    g_near = erfcx_poly((near - _ERFCX_L) * a_far * inv) * a_far  # erfcx(n)·(n + L)(f + L)
    g_far = erfcx_poly((far - _ERFCX_L) * a_near * inv) * a_near * e_expo  # e^{−4|m'|h'}·erfcx(f)·(n + L)(f + L)
    outside = am >= hq
    two_z = (g_near - g_far) * inv if outside else fma(-(e_near * inv), g_near + g_far, 2.0)
    mills = (_SQRT_2_OVER_PI if outside else _SQRT_2_OVER_PI * e_near) / two_z
    add = -_LN2 - sq if outside else -_LN2
    return two_z, add, math.copysign(mills * em, mq), special


@inline
def box_component(x, i, p, k, row, params, mode, times, factors, means, col):  # pragma: no cover - compiled by numba
    """One particle (row i of x, column p of the block's ``times``) and component k entry by entry with
    :func:`box_entry` (the scalar pass, for the entries the vectorised one leaves: the Hermite series, non-finite or
    huge distances, and products of factors out of the normal range): returns the exact log-weight and writes the
    means into means[:, col]. ``params`` = (centre, half, log_width, log_weights, table)."""
    centre, half, log_width, log_weights, table = params
    scale, ascale, c, log_s, log_a = times[0, p], times[1, p], times[2, p], times[3, p], times[4, p]
    inv_a, s_over_a = times[5, p], times[6, p]
    dim = centre.shape[1]
    one_dim = dim == 1
    poison = 0.0  # NaN where x has a NaN or an infinite coordinate: every output of the particle is then NaN
    for d in range(dim):
        poison += x[i, d] * 0.0
    total = (log_weights[row, k] if mode != COMPONENTS else 0.0) + poison
    product = 1.0  # of the entries' factors: one log a component (each factor lies in (0, 2])
    for d in range(dim):
        xd = x[i, d]
        series, factor, add, ratio = box_entry(xd * scale - ascale * centre[k, d], ascale * half[k, d], table, one_dim)
        if one_dim:
            add += factor
        else:
            factors[d] = factor
            product *= factor
        if series:
            total += add - _HALF_LOG_2PI - log_s
            means[d, col] = centre[k, d] + c * half[k, d] * half[k, d] * ratio
        else:
            total += add - (log_a + log_width[k, d])
            means[d, col] = xd * inv_a - ratio * s_over_a
    if not (_TINY_PRODUCT <= product <= _HUGE_PRODUCT):  # far tails (or NaN), or 2^D inside: sum the logs
        product = 1.0
        for d in range(dim):
            total += math.log(factors[d])
    return total + math.log(product)


@inline
def box_lanes(
    k, idx, cnt, start, x, xb, lwb, rows, shared, times, mode, initial, params, work, state
):  # pragma: no cover - compiled by numba
    """Component k for the block's particles idx[:cnt].

    The particles are copied to contiguous rows (``work_x``, and their times where they differ), so that the loop
    over them vectorises: per entry :func:`closed_entry`, one log per component (:func:`log_normal`). Particles with
    a series entry, a distance beyond 1e100 (or NaN) or a product out of the normal range are done again by the
    scalar :func:`box_component`. ``work`` = (total, product, flag, work_t, work_x, work_mean, factors): work arrays.

    ``state`` = (logits, top, weight, acc): per-component output (mode COMPONENTS) puts the exact log-weights l_k in
    logits[k]; else they are folded into each particle's running log-sum-exp, top (the largest l so far), weight
    (Σ e^{l − top}) and in mode MEAN acc (D, size) (Σ e^{l − top}·mean_k), each component once, ``initial`` for the
    first (top = l, weight 1, acc = its mean): one exponential per component a particle takes, not one per component.
    A −∞ equal to top counts 1 and a term of weight 0 adds nothing, as in the scalar loop's log-sum-exp."""
    centre, half, log_width = params[0], params[1], params[2]
    total, product, flag, work_t, work_x, work_mean, factors = work
    dim = centre.shape[1]
    # Padded to whole vectors with copies of the last particle (their results are not written out): a vectorised
    # loop's scalar remainder costs as much as its vectors over these short lists.
    padded = min((cnt + _LANES - 1) // _LANES * _LANES, idx.shape[0])
    for j in range(cnt, padded):
        idx[j] = idx[cnt - 1]
    cnt_all, cnt = cnt, padded
    lk = lwb[k]
    for j in range(cnt):
        total[j] = lk[idx[j]]
        product[j] = 1.0
        flag[j] = 0.0
    for d in range(dim):
        xd, row_d = work_x[d], xb[d]
        for j in range(cnt):
            xd[j] = row_d[idx[j]]
    special_count = 0
    if shared:  # the times as scalars, so that LLVM hoists what depends on them alone
        scale, ascale, log_a, inv_a, s_over_a = times[0, 0], times[1, 0], times[4, 0], times[5, 0], times[6, 0]
        for d in range(dim):
            a_centre, hq, log_box = ascale * centre[k, d], ascale * half[k, d], log_a + log_width[k, d]
            xd, md = work_x[d], work_mean[d]
            for j in range(cnt):
                xv = xd[j]
                two_z, add, ratio, special = closed_entry(xv * scale - a_centre, hq)
                product[j] *= two_z
                total[j] += add - log_box
                md[j] = xv * inv_a - ratio * s_over_a
                flag[j] = 1.0 if special else flag[j]
                special_count += 1 if special else 0
    else:
        sc, asc, l_a, i_a, s_a = work_t[0], work_t[1], work_t[2], work_t[3], work_t[4]
        for j in range(cnt):
            q = idx[j]
            sc[j] = times[0, q]
            asc[j] = times[1, q]
            l_a[j] = times[4, q]
            i_a[j] = times[5, q]
            s_a[j] = times[6, q]
        for d in range(dim):
            ck, hk, wk = centre[k, d], half[k, d], log_width[k, d]
            xd, md = work_x[d], work_mean[d]
            for j in range(cnt):
                xv, a_scale = xd[j], asc[j]
                two_z, add, ratio, special = closed_entry(xv * sc[j] - a_scale * ck, a_scale * hk)
                product[j] *= two_z
                total[j] += add - (l_a[j] + wk)
                md[j] = xv * i_a[j] - ratio * s_a[j]
                flag[j] = 1.0 if special else flag[j]
                special_count += 1 if special else 0
    for j in range(cnt):
        v = product[j]
        normal = (v >= _TINY_PRODUCT) & (v <= _HUGE_PRODUCT)
        total[j] += log_normal(v if normal else 1.0)
        flag[j] = flag[j] if normal else 1.0
        special_count += 0 if normal else 1
    cnt = cnt_all
    if special_count:
        for j in range(cnt):
            if flag[j] != 0.0:
                q = idx[j]
                total[j] = box_component(x, start + q, q, k, rows[q], params, mode, times, factors, work_mean, j)
    logits, top, weight, acc = state
    if mode == COMPONENTS:
        lk = logits[k]
        for j in range(cnt):
            lk[idx[j]] = total[j]
        return
    if initial:
        for j in range(cnt):
            q = idx[j]
            v = total[j]
            top[q] = v
            weight[q] = 1.0 if v == v else v  # NaN (a NaN or infinite coordinate): every output NaN
        if mode == MEAN:
            for d in range(dim):
                md, acc_d = work_mean[d], acc[d]
                for j in range(cnt):
                    acc_d[idx[j]] = md[j]
        return
    top_c, weight_c, keep_old, take_new = product, flag, work_t[0], work_t[1]  # free again
    for j in range(cnt):
        q = idx[j]
        top_c[j] = top[q]
        weight_c[j] = weight[q]
    for j in range(cnt):
        v, t = total[j], top_c[j]
        diff = v - t
        e, _ = exp_pair(-abs(diff))
        up = diff > 0.0
        same = v == t  # −∞ and −∞ too
        scale_old = 1.0 if same | (not up) else e
        scale_new = 1.0 if same | up else e
        weight_c[j] = fma(weight_c[j], scale_old, scale_new)
        top_c[j] = v if up else t
        keep_old[j] = scale_old
        take_new[j] = scale_new
    for j in range(cnt):
        q = idx[j]
        top[q] = top_c[j]
        weight[q] = weight_c[j]
    if mode == MEAN:
        part = total  # free again
        for d in range(dim):
            md, acc_d = work_mean[d], acc[d]
            for j in range(cnt):
                part[j] = acc_d[idx[j]]
            for j in range(cnt):
                old, new = keep_old[j], take_new[j]
                part[j] = (part[j] * old if old != 0.0 else 0.0) + (new * md[j] if new != 0.0 else 0.0)
            for j in range(cnt):
                acc_d[idx[j]] = part[j]


@compiled_lanewise
def box_kernel(
    x, alpha, sigma, centre, half, log_width, log_weights, labels, table, mode, prune, lo, hi, out_mean, out_lp
):  # pragma: no cover - compiled by numba
    """Box mixture, particles lo ≤ i < hi; α, σ of length 1 (shared) or n, σ > 0.

    Per entry (component k, dimension d) with m' = (x − α·centre)/(σ√2), h' = α·half/(σ√2): the Hermite series
    where h' and |m'|h' are small (log p = log φ(m) − log σ + log S, mean centre + (α/σ)·half²·T/S), else the
    closed form (log p = log Z − log(α(b − a)), mean x/α − (σ/α)·E[z]).

    Blocks of particles as :func:`gaussian_shared` (fewer than :data:`BLOCK` where K or D is large, to bound the
    work arrays), every loop over a block's particles: (1) each component's upper bound on its log-weight (outside
    its box an entry has log Z ≤ −ln 2 − n², inside log Z ≤ 0) and each particle's best-bound component among those
    of its class; (2) that component's exact log-weight and mean, for the particles grouped by it (:func:`box_lanes`);
    (3) every other component for the particles where it can matter: its bound lies at most :data:`PRUNE` below the
    exact log-weight of (2) (all of them with ``prune`` False or per-component output), folded into each particle's
    running log-sum-exp and mean; (4) log p_t and the mean out. Which components a particle takes, and in which
    order, depends on its own values alone, and every loop computes a particle's values on their own, so a particle
    has the same bits whatever the other particles of its block."""
    n_comp, dim = centre.shape
    null_row = log_weights.shape[0] - 1  # the unconditional row, for the label −1
    shared = alpha.shape[0] == 1
    size = min(BLOCK, max(_LANES, _BOX_BLOCK_ENTRIES // max(n_comp, dim) // _LANES * _LANES))
    use_bound = prune and mode != COMPONENTS
    xb = np.empty((dim, size))
    rows = np.zeros(size, dtype=np.int64)
    times = np.empty((7, size))  # σ√2 scale, α·scale, α/σ, log σ, log α, 1/α, σ/α per particle
    lwb = np.empty((n_comp, size))  # log-weights of the particles' rows
    bound = np.empty((n_comp, size))
    logits = np.empty((n_comp if mode == COMPONENTS else 0, size))
    top, weight, acc = np.empty(size), np.empty(size), np.empty((dim, size))
    first = np.empty(size, dtype=np.int64)
    best = np.empty(size)
    groups = np.empty((n_comp, size), dtype=np.int64)
    count = np.zeros(n_comp, dtype=np.int64)
    idx = np.empty(size, dtype=np.int64)
    kept = np.empty(size, dtype=np.int64)
    series_any = np.empty(size)
    # Separate arrays for what a vectorised loop writes: rows of one array would defeat LLVM's runtime overlap check.
    total, product, flag = np.empty(size), np.empty(size), np.empty(size)
    work_t = np.empty((5, size))  # the times of a component's particles (one time per particle)
    work_x = np.empty((dim, size))
    work_mean = np.empty((dim, size))
    work = (total, product, flag, work_t, work_x, work_mean, np.empty(dim))
    state = (logits, top, weight, acc)
    params = (centre, half, log_width, log_weights, table)
    for start in range(lo, hi, size):
        m = min(size, hi - start)
        for d in range(dim):
            row_d = xb[d]
            for p in range(m):
                row_d[p] = x[start + p, d]
        if mode != COMPONENTS:
            for p in range(m):
                label = labels[start + p]
                rows[p] = label if label >= 0 else null_row
        for p in range(size if shared else m):
            if shared and start > lo:
                break
            t = 0 if shared else start + p
            a, s = alpha[t], sigma[t]
            times[0, p] = _SQRT_HALF / s
            times[1, p] = a * times[0, p]
            times[2, p] = a / s
            times[3, p] = math.log(s)
            times[4, p] = math.log(a) if a > 0 else 0.0
            times[5, p] = 1.0 / a if a > 0 else 0.0
            times[6, p] = s / a if a > 0 else 0.0
        scale, ascale, log_a = times[0], times[1], times[4]
        # (1) bounds: outside its box an entry has log Z ≤ −ln 2 − n² (n = |m'| − h'), inside log Z ≤ 0
        for k in range(n_comp):
            lk, bk = lwb[k], bound[k]
            if mode == COMPONENTS:
                for p in range(m):
                    lk[p] = 0.0
            elif log_weights.shape[0] <= 8:  # few rows: selects, which vectorise, in place of a gather
                for p in range(m):
                    lk[p] = log_weights[0, k]
                for c in range(1, log_weights.shape[0]):
                    v = log_weights[c, k]
                    for p in range(m):
                        lk[p] = v if rows[p] == c else lk[p]
            else:
                for p in range(m):  # a gather: a scalar loop, kept short
                    lk[p] = log_weights[rows[p], k]
            for p in range(m):
                bk[p] = lk[p]
                series_any[p] = 0.0
            for d in range(dim):
                ck, hk, wk = centre[k, d], half[k, d], log_width[k, d]
                row_d = xb[d]
                if shared:  # the times as scalars, so that LLVM hoists what depends on them alone
                    a_centre, hq, log_box = ascale[0] * ck, ascale[0] * hk, log_a[0] + wk
                    may_series = hq < _H_SERIES * _SQRT_HALF
                    for p in range(m):
                        am = abs(row_d[p] * scale[0] - a_centre)
                        gap = am - hq
                        bk[p] -= (_LN2 + gap * gap if gap >= 0.0 else 0.0) + log_box
                        series_any[p] = 1.0 if may_series & (am * hq < 0.5 * _H_SERIES) else series_any[p]
                else:
                    for p in range(m):
                        hq = ascale[p] * hk
                        am = abs(row_d[p] * scale[p] - ascale[p] * ck)
                        gap = am - hq
                        bk[p] -= (_LN2 + gap * gap if gap >= 0.0 else 0.0) + (log_a[p] + wk)
                        series = (hq < _H_SERIES * _SQRT_HALF) & (am * hq < 0.5 * _H_SERIES)
                        series_any[p] = 1.0 if series else series_any[p]
            for p in range(m):
                finite = lk[p] != -np.inf
                no_bound = (series_any[p] != 0.0) | (not use_bound)
                bk[p] = np.inf if finite & no_bound else bk[p] if finite else -np.inf
        for p in range(m):
            first[p] = -1
            best[p] = -np.inf
        for k in range(n_comp):  # the first of the highest bounds among the components of the particle's class
            lk, bk = lwb[k], bound[k]
            for p in range(m):
                take = (lk[p] != -np.inf) & ((first[p] < 0) | (bk[p] > best[p]))
                first[p] = k if take else first[p]
                best[p] = bk[p] if take else best[p]
        # (2) each particle's best-bound component, the particles grouped by it
        for k in range(n_comp):
            count[k] = 0
        for k in range(logits.shape[0]):
            lk = logits[k]
            for p in range(m):
                lk[p] = -np.inf
        for p in range(m):
            top[p] = -np.inf  # a particle without components (none in its class) keeps log p = −∞, mean 0
            weight[p] = 1.0
        for d in range(dim):
            acc_d = acc[d]
            for p in range(m):
                acc_d[p] = 0.0
        for p in range(m):
            k = first[p]
            if k >= 0:
                groups[k, count[k]] = p
                count[k] += 1
        for k in range(n_comp):
            if count[k]:
                box_lanes(
                    k, groups[k], count[k], start, x, xb, lwb, rows, shared, times, mode, True, params, work, state
                )
        if use_bound:
            for p in range(m):
                best[p] = top[p]
        # (3) the components that can matter: a bound less than PRUNE below the exact log-weight of (2)
        for k in range(n_comp):
            bk = bound[k]
            for p in range(m):  # vectorised; the compaction below is a scalar loop, kept short
                keep = (first[p] != k) & (bk[p] != -np.inf) & ((not use_bound) | (bk[p] >= best[p] - PRUNE))
                kept[p] = 1 if keep else 0
            cnt = 0
            for p in range(m):
                idx[cnt] = p
                cnt += kept[p]
            if cnt:
                box_lanes(k, idx, cnt, start, x, xb, lwb, rows, shared, times, mode, False, params, work, state)
        # (4) log p_t and the mean
        if mode == COMPONENTS:
            for k in range(n_comp):
                lk = logits[k]
                for p in range(m):
                    out_lp[start + p, k] = lk[p]
            continue
        out = total  # the outputs' rows are strided: computed here, copied out in a loop of their own
        for p in range(m):
            v = weight[p]
            out[p] = top[p] + (log_normal(v) if v != 1.0 else 0.0)
        for p in range(m):
            out_lp[start + p, 0] = out[p]
        if mode == MEAN:
            for d in range(dim):
                acc_d = acc[d]
                for p in range(m):
                    out[p] = acc_d[p] / weight[p]
                for p in range(m):
                    out_mean[start + p, d] = out[p]


@inline
def exp_row(src, dst, bits, m):  # pragma: no cover - compiled by numba
    """dst[p] = e^{src[p]} for src ≤ 0 (p < m), results below e^{−700} flushed to 0 (−∞ gives 0), a loop LLVM
    vectorises: e^d = 2^k·e^r with k = round(d/ln 2), r = d − k·ln 2 (Cody–Waite, two parts), e^r by its Taylor
    polynomial of degree 13 (|r| ≤ ln 2/2: truncation below 5e-18), 2^k from the exponent bits."""
    for p in range(m):
        d = src[p]
        k = math.floor(max(d, _EXP_FLOOR) * _LOG2E + 0.5)  # a valid exponent whatever d (−∞, NaN)
        r = (d - k * _LN2_HI) - k * _LN2_LO
        e = _EXP_C13
        e = e * r + _EXP_C12
        e = e * r + _EXP_C11
        e = e * r + _EXP_C10
        e = e * r + _EXP_C9
        e = e * r + _EXP_C8
        e = e * r + _EXP_C7
        e = e * r + _EXP_C6
        e = e * r + _EXP_C5
        e = e * r + _EXP_C4
        e = e * r + _EXP_C3
        e = e * r + 0.5
        e = e * r + 1.0
        e = e * r + 1.0
        dst[p] = 0.0 if src[p] < _EXP_FLOOR else e  # NaN stays NaN
        bits[p] = (np.int64(k) + 1023) << 52
    scale = bits.view(np.float64)
    for p in range(m):
        dst[p] *= scale[p]


@inline
def load_block(x, labels, start, hi, mode, null_row, xb, rows):  # pragma: no cover - compiled by numba
    """Copy the particles [start, start + m) of a block into ``xb`` (D, BLOCK), transposed so that the loops over a
    block's particles run over contiguous entries, and their log-weight rows (the null row for the label −1) into
    ``rows``; returns m = min(BLOCK, hi − start)."""
    m = min(BLOCK, hi - start)
    for d in range(x.shape[1]):
        for p in range(m):
            xb[d, p] = x[start + p, d]
    if mode != COMPONENTS:
        for p in range(m):
            label = labels[start + p]
            rows[p] = label if label >= 0 else null_row
    return m


@inline
def finish_work():  # pragma: no cover - compiled by numba
    """The work rows of :func:`finish_block`, :data:`BLOCK` each: top, total, acc, part (float64), bits (int64)."""
    return np.empty(BLOCK), np.empty(BLOCK), np.empty(BLOCK), np.empty(BLOCK), np.empty(BLOCK, dtype=np.int64)


@inline
def finish_block(
    start, m, logits, z, back, means, mode, work, out_mean, out_lp
):  # pragma: no cover - compiled by numba
    """For a block's particles p < m with their logits (K, m) (log w_k + log p_k): log p_t = logsumexp into out_lp
    and, in mode MEAN, the mean Σ_k r_k(μ_k + Σ_j z[kD+j]·back[kD+j]) into out_mean (rows start + p). The logits
    are overwritten with e^{logit − max}; ``work`` holds the work rows (:func:`finish_work`)."""
    n_comp, dim = means.shape
    top, total, acc, part, bits = work
    for p in range(m):
        top[p] = logits[0, p]
    for k in range(1, n_comp):
        lk = logits[k]
        for p in range(m):
            top[p] = max(top[p], lk[p])
    for p in range(m):
        total[p] = 0.0
    for k in range(n_comp):
        lk = logits[k]
        for p in range(m):
            acc[p] = lk[p] - top[p]
        exp_row(acc, lk, bits, m)
        for p in range(m):
            total[p] += lk[p]
    for p in range(m):
        out_lp[start + p, 0] = top[p] + math.log(total[p])
    if mode != MEAN:
        return
    for d in range(dim):
        for p in range(m):
            acc[p] = 0.0
        for k in range(n_comp):
            lk = logits[k]
            mu = means[k, d]
            for p in range(m):
                part[p] = mu
            for j in range(k * dim, (k + 1) * dim):
                w = back[j, d]
                zj = z[j]
                for p in range(m):
                    part[p] += zj[p] * w
            for p in range(m):
                acc[p] += lk[p] * part[p]
        for p in range(m):
            out_mean[start + p, d] = acc[p] / total[p]


@compiled
def gaussian_shared(
    x, w_fwd, const, w_back, means, log_weights, labels, mode, lo, hi, out_mean, out_lp
):  # pragma: no cover - compiled by numba
    """Gaussian mixture at one time: z_kj = Σ_d x_d·w_fwd[kD+j, d] + w_fwd[kD+j, D] (whitened rotated
    residual), log p_k = const_k − |z_k|²/2, mean Σ_k r_k(μ_k + Σ_j z_kj·w_back[kD+j]).

    Blocks of :data:`BLOCK` particles, every loop over the particles of a block (contiguous rows), so that LLVM
    vectorises them; each particle's values are still computed on their own (no sum runs across particles)."""
    n_comp, dim = means.shape
    xb = np.empty((dim, BLOCK))
    z = np.empty((n_comp * dim, BLOCK))
    logits = np.empty((n_comp, BLOCK))
    work = finish_work()
    rows = np.zeros(BLOCK, dtype=np.int64)
    null_row = log_weights.shape[0] - 1  # the unconditional row, for the label −1
    for start in range(lo, hi, BLOCK):
        m = load_block(x, labels, start, hi, mode, null_row, xb, rows)
        for k in range(n_comp):
            lk = logits[k]
            for p in range(m):
                lk[p] = 0.0
            for j in range(k * dim, (k + 1) * dim):
                zj = z[j]
                b = w_fwd[j, dim]
                for p in range(m):
                    zj[p] = b
                for d in range(dim):
                    w = w_fwd[j, d]
                    xd = xb[d]
                    for p in range(m):
                        zj[p] += w * xd[p]
                for p in range(m):
                    lk[p] += zj[p] * zj[p]
            c = const[k]
            if mode == COMPONENTS:
                for p in range(m):
                    out_lp[start + p, k] = c - 0.5 * lk[p]
            else:
                for p in range(m):
                    lk[p] = (c - 0.5 * lk[p]) + log_weights[rows[p], k]
        if mode != COMPONENTS:
            finish_block(start, m, logits, z, w_back, means, mode, work, out_mean, out_lp)


@compiled
def gaussian_per_sample(
    x, alpha, sigma, u, m_rot, s_all, means, log_weights, labels, mode, lo, hi, out_mean, out_lp
):  # pragma: no cover - compiled by numba
    """Gaussian mixture, one time per particle: y = U_kᵀx − α·U_kᵀμ_k, var = α²s + σ², z = y/√var,
    log p_k = −(|z|² + Σ log var + D log 2π)/2, mean Σ_k r_k(μ_k + U_k(α·s·z/√var)).

    Blocks of :data:`BLOCK` particles as :func:`gaussian_shared`; Σ_j log var_kj is taken as the log of the
    product (one log a component), or as the sum of logs where the product leaves the normal range."""
    n_comp, dim = means.shape
    xb = np.empty((dim, BLOCK))
    ab = np.empty(BLOCK)
    s2b = np.empty(BLOCK)
    z = np.empty((n_comp * dim, BLOCK))
    logits = np.empty((n_comp, BLOCK))
    det = np.empty(BLOCK)
    work = finish_work()
    rows = np.zeros(BLOCK, dtype=np.int64)
    null_row = log_weights.shape[0] - 1  # the unconditional row, for the label −1
    for start in range(lo, hi, BLOCK):
        m = load_block(x, labels, start, hi, mode, null_row, xb, rows)
        for p in range(m):
            ab[p] = alpha[start + p]
            s2b[p] = sigma[start + p] * sigma[start + p]
        for k in range(n_comp):
            lk = logits[k]
            for p in range(m):
                lk[p] = 0.0
                det[p] = 1.0
            for j in range(k * dim, (k + 1) * dim):
                zj = z[j]
                mj = m_rot[j]
                sj = s_all[j]
                for p in range(m):
                    zj[p] = -ab[p] * mj
                for d in range(dim):
                    w = u[j, d]
                    xd = xb[d]
                    for p in range(m):
                        zj[p] += w * xd[p]
                for p in range(m):
                    var = ab[p] * ab[p] * sj + s2b[p]
                    inv_std = 1.0 / math.sqrt(var)
                    v = zj[p] * inv_std
                    lk[p] += v * v
                    det[p] *= var
                    zj[p] = v * inv_std * ab[p] * sj  # the gain times y: α·s·z/√var
            for p in range(m):
                log_det = math.log(det[p])
                if not (_TINY_PRODUCT < det[p] < _HUGE_PRODUCT):  # the product left the safe range: sum the logs
                    log_det = 0.0
                    for j in range(k * dim, (k + 1) * dim):
                        log_det += math.log(ab[p] * ab[p] * s_all[j] + s2b[p])
                value = -0.5 * (lk[p] + log_det + dim * _LOG_2PI)
                if mode == COMPONENTS:
                    out_lp[start + p, k] = value
                else:
                    lk[p] = value + log_weights[rows[p], k]
        if mode != COMPONENTS:
            finish_block(start, m, logits, z, u, means, mode, work, out_mean, out_lp)
