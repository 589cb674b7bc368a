"""The compiled loops of :mod:`guidelab.targets.mixture_jit` (imports numba; imported only by its ``build``).

Module-level functions, so that numba's on-disk cache finds them again in a new process (a closure's references to
other compiled functions would key the cache by objects that change every process). Documented in
:mod:`guidelab.targets.mixture_jit`.
"""

from __future__ import annotations

import math

import numpy as np

from guidelab import jit
from guidelab.targets.mixture_jit import (
    _DEGREE,
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

compiled = jit.njit()
inline = jit.njit(inline="always")


@inline
def erfcx(y, table):  # pragma: no cover - compiled by numba
    """e^{y²}erfc(y) for y ≥ 0 (NaN gives NaN): the table below 26, the asymptotic series above."""
    if y < _Y_TAIL:
        i = int(y * (1.0 / _WIDTH))
        s = (y - (i + 0.5) * _WIDTH) * (2.0 / _WIDTH)
        c = table[i]
        r = c[_DEGREE]
        for j in range(_DEGREE - 1, -1, -1):
            r = r * s + c[j]
        return r
    z = 0.5 / (y * y)
    r = z * 10395.0 - 945.0
    r = r * z + 105.0
    r = r * z - 15.0
    r = r * z + 3.0
    r = r * z - 1.0
    r = r * z + 1.0
    return r / y * _INV_SQRT_PI


@inline
def box_entry(xq, ascale, centre, half, table):  # pragma: no cover - compiled by numba
    """One dimension of one box: (series?, log Z or log of the series' S-part, E[z] or T/S) — see box_kernel."""
    mq = xq - ascale * centre  # m' = (x − α·centre)/(σ√2)
    hq = ascale * half  # h' = α(b − a)/(2σ√2)
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
        return True, -0.5 * m * m + math.log(big_s), big_t / big_s
    near = abs(am - hq)
    far = am + hq
    expo = 4.0 * am * hq
    em = math.expm1(-expo) if expo < _FAR_NEGLIGIBLE else -1.0  # e^{−4|m'|h'} − 1
    if am >= hq:  # outside: 2Z·e^{n²} = erfcx(n) − e^{−4|m'|h'}·erfcx(f)
        two_z = erfcx(near, table)
        if expo < _FAR_NEGLIGIBLE:
            two_z -= (em + 1.0) * erfcx(far, table)
        log_z = math.log(two_z) - _LN2 - near * near
        mills = _SQRT_2_OVER_PI / two_z
    else:  # inside: 2Z = 2 − erfc(n) − erfc(f)
        e_near = math.exp(-near * near)
        two_z = 2.0
        if near < _ERFC_NEGLIGIBLE:
            two_z -= erfcx(near, table) * e_near
        if far < _ERFC_NEGLIGIBLE:
            two_z -= erfcx(far, table) * math.exp(-far * far)
        log_z = math.log(two_z) - _LN2
        mills = _SQRT_2_OVER_PI * e_near / two_z
    return False, log_z, math.copysign(mills * em, mq)


@compiled
def box_kernel(
    x, alpha, sigma, centre, half, log_width, log_weights, rows, table, mode, prune, lo, hi, out_mean, out_lp
):  # pragma: no cover - compiled by numba
    """Box mixture, particles lo ≤ i < hi; α, σ of length 1 (shared) or n, σ > 0.

    Per entry (component k, dimension d) with m' = (x − α·centre)/(σ√2), h' = α·half/(σ√2): the Hermite series
    where h' and |m'|h' are small (log p = log φ(m) − log σ + log S, mean centre + (α/σ)·half²·T/S), else the
    closed form (log p = log Z − log(α(b − a)), mean x/α − (σ/α)·E[z])."""
    n_comp, dim = centre.shape
    shared = alpha.shape[0] == 1
    logits = np.empty(n_comp)
    bound = np.empty(n_comp)
    means = np.empty((n_comp, dim))
    for i in range(lo, hi):
        t = 0 if shared else i
        a = alpha[t]
        s = sigma[t]
        scale = _SQRT_HALF / s
        ascale = a * scale
        c = a / s
        log_s = math.log(s)
        log_a = math.log(a) if a > 0 else 0.0
        row = rows[i] if mode != COMPONENTS else 0
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
            for d in range(dim):
                mq = x[i, d] * scale - ascale * centre[k, d]
                hq = ascale * half[k, d]
                am = abs(mq)
                if hq < _H_SERIES * _SQRT_HALF and am * hq < 0.5 * _H_SERIES:
                    b = np.inf  # a series entry: no bound
                elif am >= hq:
                    b -= _LN2 + (am - hq) * (am - hq) + log_a + log_width[k, d]
                else:
                    b -= log_a + log_width[k, d]
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
            total = log_weights[row, k] if mode != COMPONENTS else 0.0
            for d in range(dim):
                xd = x[i, d]
                series, value, ratio = box_entry(xd * scale, ascale, centre[k, d], half[k, d], table)
                if series:
                    total += value - _HALF_LOG_2PI - log_s
                    means[k, d] = centre[k, d] + c * half[k, d] * half[k, d] * ratio
                else:
                    total += value - log_a - log_width[k, d]
                    means[k, d] = xd / a - ratio * (s / a)
            logits[k] = total
            if total > top:
                top = total
        if mode == COMPONENTS:
            for k in range(n_comp):
                out_lp[i, k] = logits[k]
            continue
        weight_sum = 0.0
        for k in range(n_comp):
            w = math.exp(logits[k] - top) if logits[k] != -np.inf else 0.0
            logits[k] = w
            weight_sum += w
        out_lp[i, 0] = top + math.log(weight_sum)
        if mode == MEAN:
            for d in range(dim):
                acc = 0.0
                for k in range(n_comp):
                    if logits[k] != 0.0:
                        acc += logits[k] * means[k, d]
                out_mean[i, d] = acc / weight_sum


@inline
def _softmax_weights(logits, top):  # pragma: no cover - compiled by numba
    """logits_k ← e^{logits_k − top} (0 for −∞); returns their sum (at least 1)."""
    total = 0.0
    for k in range(logits.shape[0]):
        w = math.exp(logits[k] - top) if logits[k] != -np.inf else 0.0
        logits[k] = w
        total += w
    return total


@inline
def _back_project(i, z, weights, total, means, back, out_mean):  # pragma: no cover - compiled by numba
    """out_mean[i] = Σ_k (weights_k/total)(μ_k + Σ_j z_kj·back[kD+j])."""
    n_comp, dim = means.shape
    for d in range(dim):
        out_mean[i, d] = 0.0
    for k in range(n_comp):
        w = weights[k]
        if w == 0.0:
            continue
        for d in range(dim):
            acc = means[k, d]
            for j in range(k * dim, (k + 1) * dim):
                acc += z[j] * back[j, d]
            out_mean[i, d] += w * acc
    for d in range(dim):
        out_mean[i, d] /= total


@compiled
def gaussian_shared(
    x, w_fwd, const, w_back, means, log_weights, rows, mode, lo, hi, out_mean, out_lp
):  # pragma: no cover - compiled by numba
    """Gaussian mixture at one time: z_kj = Σ_d x_d·w_fwd[kD+j, d] + w_fwd[kD+j, D] (whitened rotated
    residual), log p_k = const_k − |z_k|²/2, mean Σ_k r_k(μ_k + Σ_j z_kj·w_back[kD+j])."""
    n_comp, dim = means.shape
    z = np.empty(n_comp * dim)
    logits = np.empty(n_comp)
    for i in range(lo, hi):
        row = rows[i] if mode != COMPONENTS else 0
        top = -np.inf
        for k in range(n_comp):
            lw = log_weights[row, k] if mode != COMPONENTS else 0.0
            if lw == -np.inf:
                logits[k] = -np.inf
                continue
            q = 0.0
            for j in range(k * dim, (k + 1) * dim):
                v = w_fwd[j, dim]
                for d in range(dim):
                    v += x[i, d] * w_fwd[j, d]
                z[j] = v
                q += v * v
            value = const[k] - 0.5 * q + lw
            logits[k] = value
            if value > top:
                top = value
        if mode == COMPONENTS:
            for k in range(n_comp):
                out_lp[i, k] = logits[k]
            continue
        total = _softmax_weights(logits, top)
        out_lp[i, 0] = top + math.log(total)
        if mode == MEAN:
            _back_project(i, z, logits, total, means, w_back, out_mean)


@compiled
def gaussian_per_sample(
    x, alpha, sigma, u, m_rot, s_all, means, log_weights, rows, mode, lo, hi, out_mean, out_lp
):  # pragma: no cover - compiled by numba
    """Gaussian mixture, one time per particle: y = U_kᵀx − α·U_kᵀμ_k, var = α²s + σ², z = y/√var,
    log p_k = −(|z|² + Σ log var + D log 2π)/2, mean Σ_k r_k(μ_k + U_k(α·s·z/√var))."""
    n_comp, dim = means.shape
    z = np.empty(n_comp * dim)
    logits = np.empty(n_comp)
    for i in range(lo, hi):
        a = alpha[i]
        s2 = sigma[i] * sigma[i]
        row = rows[i] if mode != COMPONENTS else 0
        top = -np.inf
        for k in range(n_comp):
            lw = log_weights[row, k] if mode != COMPONENTS else 0.0
            if lw == -np.inf:
                logits[k] = -np.inf
                continue
            q = 0.0
            log_det = 0.0
            for j in range(k * dim, (k + 1) * dim):
                v = -a * m_rot[j]
                for d in range(dim):
                    v += x[i, d] * u[j, d]
                var = a * a * s_all[j] + s2
                inv_std = 1.0 / math.sqrt(var)
                v *= inv_std
                q += v * v
                log_det += math.log(var)
                z[j] = v * inv_std * a * s_all[j]  # the gain times y: α·s·z/√var
            value = -0.5 * (q + log_det + dim * _LOG_2PI) + lw
            logits[k] = value
            if value > top:
                top = value
        if mode == COMPONENTS:
            for k in range(n_comp):
                out_lp[i, k] = logits[k]
            continue
        total = _softmax_weights(logits, top)
        out_lp[i, 0] = top + math.log(total)
        if mode == MEAN:
            _back_project(i, z, logits, total, means, u, out_mean)
