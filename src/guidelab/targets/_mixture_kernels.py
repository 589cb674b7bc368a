"""The compiled loops of :mod:`guidelab.targets.mixture_jit` (imports numba; imported only by its ``build``).

Module-level functions, so that numba's on-disk cache finds them again in a new process (a closure's references to
other compiled functions would key the cache by objects that change every process). Documented in
:mod:`guidelab.targets.mixture_jit`.
"""

from __future__ import annotations

import math

import numpy as np

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

compiled = jit.njit()
inline = jit.njit(inline="always")


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


@compiled
def box_kernel(
    x, alpha, sigma, centre, half, log_width, log_weights, labels, table, mode, prune, lo, hi, out_mean, out_lp
):  # pragma: no cover - compiled by numba
    """Box mixture, particles lo ≤ i < hi; α, σ of length 1 (shared) or n, σ > 0.

    Per entry (component k, dimension d) with m' = (x − α·centre)/(σ√2), h' = α·half/(σ√2): the Hermite series
    where h' and |m'|h' are small (log p = log φ(m) − log σ + log S, mean centre + (α/σ)·half²·T/S), else the
    closed form (log p = log Z − log(α(b − a)), mean x/α − (σ/α)·E[z]). The per-time quantities (per entry: α·centre
    and h' over σ√2, log(α(b − a))) are computed once for a shared time, per particle otherwise."""
    n_comp, dim = centre.shape
    null_row = log_weights.shape[0] - 1  # the unconditional row, for the label −1
    shared = alpha.shape[0] == 1
    logits = np.empty(n_comp)
    bound = np.empty(n_comp)
    means = np.empty((n_comp, dim))
    a_centre = np.empty((n_comp, dim))  # α·centre/(σ√2)
    h_q = np.empty((n_comp, dim))  # h' = α·half/(σ√2)
    log_box = np.empty((n_comp, dim))  # log(α(b − a))
    factors = np.empty(dim)
    one_dim = dim == 1
    a = s = scale = c = log_s = inv_a = s_over_a = 0.0
    for i in range(lo, hi):
        if i == lo or not shared:
            t = 0 if shared else i
            a = alpha[t]
            s = sigma[t]
            scale = _SQRT_HALF / s
            ascale = a * scale
            c = a / s
            log_s = math.log(s)
            log_a = math.log(a) if a > 0 else 0.0
            inv_a = 1.0 / a if a > 0 else 0.0
            s_over_a = s / a if a > 0 else 0.0
            for k in range(n_comp):
                for d in range(dim):
                    a_centre[k, d] = ascale * centre[k, d]
                    h_q[k, d] = ascale * half[k, d]
                    log_box[k, d] = log_a + log_width[k, d]
        row = 0 if mode == COMPONENTS else labels[i] if labels[i] >= 0 else null_row
        poison = 0.0  # NaN where x has a NaN or an infinite coordinate: every output of the particle is then NaN
        for d in range(dim):
            poison += x[i, d] * 0.0
        # Pass 1: an upper bound on each component's log-weight, and the component to evaluate first.
        use_bound = prune and mode != COMPONENTS and a > 0
        first = -1
        best_bound = -np.inf
        for k in range(n_comp):
            lw = log_weights[row, k] if mode != COMPONENTS else 0.0
            if lw == -np.inf:
                bound[k] = -np.inf
                continue
            if not use_bound:
                bound[k] = np.inf
                if first < 0:
                    first = k
                continue
            b = lw
            series = False
            for d in range(dim):  # branch-free but for the rare series entries
                hq = h_q[k, d]
                am = abs(x[i, d] * scale - a_centre[k, d])
                series |= hq < _H_SERIES * _SQRT_HALF and am * hq < 0.5 * _H_SERIES
                gap = am - hq
                b -= (_LN2 + gap * gap if gap >= 0.0 else 0.0) + log_box[k, d]
            if series:
                b = np.inf  # a series entry: no bound
            bound[k] = b
            if first < 0 or b > best_bound:
                first = k
                best_bound = b
        # Pass 2: exact log-weights of the components that can matter, the best bound's first.
        top = -np.inf
        for step in range(n_comp + 1):
            k = first if step == 0 else step - 1
            if k < 0 or (step > 0 and k == first):
                continue
            if bound[k] == -np.inf or (use_bound and step > 0 and bound[k] < top - PRUNE):
                logits[k] = -np.inf
                continue
            total = (log_weights[row, k] if mode != COMPONENTS else 0.0) + poison
            product = 1.0  # of the entries' factors: one log a component (each factor lies in (0, 2])
            for d in range(dim):
                xd = x[i, d]
                series, factor, add, ratio = box_entry(xd * scale - a_centre[k, d], h_q[k, d], table, one_dim)
                if one_dim:
                    add += factor
                else:
                    factors[d] = factor
                    product *= factor
                if series:
                    total += add - _HALF_LOG_2PI - log_s
                    means[k, d] = centre[k, d] + c * half[k, d] * half[k, d] * ratio
                else:
                    total += add - log_box[k, d]
                    means[k, d] = xd * inv_a - ratio * s_over_a
            if not (_TINY_PRODUCT <= product <= _HUGE_PRODUCT):  # far tails (or NaN), or 2^D inside: sum the logs
                product = 1.0
                for d in range(dim):
                    total += math.log(factors[d])
            logits[k] = total + math.log(product)
            if logits[k] > top:  # the best exact log-weight so far, which the bounds are pruned against
                top = logits[k]
        if mode == COMPONENTS:
            for k in range(n_comp):
                out_lp[i, k] = logits[k]
            continue
        weight_sum = 0.0
        for k in range(n_comp):
            if logits[k] == top:
                w = 1.0
            elif logits[k] == -np.inf:
                w = 0.0
            else:
                w = math.exp(logits[k] - top)
            logits[k] = w
            weight_sum += w
        out_lp[i, 0] = top + (math.log(weight_sum) if weight_sum != 1.0 else 0.0)
        if mode == MEAN:
            for d in range(dim):
                acc = 0.0
                for k in range(n_comp):
                    if logits[k] != 0.0:
                        acc += logits[k] * means[k, d]
                out_mean[i, d] = acc / weight_sum


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
def finish_block(
    start, m, logits, z, back, means, mode, top, total, acc, part, bits, out_mean, out_lp
):  # pragma: no cover - compiled by numba
    """For a block's particles p < m with their logits (K, m) (log w_k + log p_k): log p_t = logsumexp into out_lp
    and, in mode MEAN, the mean Σ_k r_k(μ_k + Σ_j z[kD+j]·back[kD+j]) into out_mean (rows start + p). The logits
    are overwritten with e^{logit − max}; top, total, acc, part and bits are work rows."""
    n_comp, dim = means.shape
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
    top = np.empty(BLOCK)
    total = np.empty(BLOCK)
    acc = np.empty(BLOCK)
    part = np.empty(BLOCK)
    bits = np.empty(BLOCK, dtype=np.int64)
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
            finish_block(start, m, logits, z, w_back, means, mode, top, total, acc, part, bits, out_mean, out_lp)


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
    top = np.empty(BLOCK)
    total = np.empty(BLOCK)
    acc = np.empty(BLOCK)
    part = np.empty(BLOCK)
    bits = np.empty(BLOCK, dtype=np.int64)
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
            finish_block(start, m, logits, z, u, means, mode, top, total, acc, part, bits, out_mean, out_lp)
