"""Class-conditional mixtures of uniform densities on axis-aligned boxes: exact noisy densities and
denoisers on any path (the compactly supported setting of Chidambaram et al., arXiv 2409.13074, §3).

Per dimension, a uniform on [a, b] under ``x_t = α·x0 + σ·ε`` has

    p_t(x) = [Φ(u) − Φ(w)] / (α(b − a)),   u = (x − αa)/σ,  w = (x − αb)/σ,
    E[x0 | x_t] = x/α − (σ/α)·E[z],  z ~ N(0, 1) truncated to [w, u],

and a box is the product over dimensions. With ``m = (u + w)/2`` and ``h = (u − w)/2 = α(b − a)/(2σ)`` the
log-mass ``log(Φ(u) − Φ(w))`` and ``E[z]`` are computed without cancellation (docs/methods.md §3 asks for stable
log-differences of normal CDFs): outside the box (|m| ≥ h, both ends in one tail) as ``erfcx``-scaled tails
``e^{n²}(erfc(n) − erfc(f))`` of the two ends' distances, inside as ``1 − (two tail masses)``;
``φ(w) − φ(u) = sign(m)·φ(h − |m|)(1 − e^{−2|m|h})`` (:func:`_closed_form`: a few elementwise float64 passes over
all entries, with torch's vectorised erfc, the branches selected by ``torch.where``). When h and |m|·h are small
(α → 0) a Hermite series in h replaces both, so the density tends to N(0, σ²) and the mean to the box centre,
exactly at α = 0. At σ = 0 (t = 0) the density is the uniform itself and the mean is x/α. Gradients use the
closed-form derivatives (``_ClosedForm``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from guidelab.denoiser import NULL_COND
from guidelab.paths import NoisePath
from guidelab.targets import mixture_jit
from guidelab.targets._mixture_constants import (  # one source for the torch path and the compiled loop
    _H_SERIES,
    _HALF_LOG_2PI,
    _INV_SQRT_PI,
    _LN2,
    _SQRT2,
    _SQRT_2_OVER_PI,
    _SQRT_HALF,
    _Y_TAIL,
)
from guidelab.targets.base import FusedTarget, PathTime, as_float_array, compiling, init_classes, path_time

__all__ = ["BoxMixture"]

_Y_TAIL_FLOAT32 = 9.0
_VELTKAMP = 134217729.0  # 2^27 + 1: splits a double into halves whose squares are exact


def _log_phi(x: Tensor) -> Tensor:
    """log φ(x) of the standard normal density."""
    return -0.5 * x * x - _HALF_LOG_2PI


class _ClosedForm(torch.autograd.Function):
    """Passes ``log Z`` and ``E[z]`` of ``(m', h')`` through with their closed-form first derivatives.

    The values come from :func:`_closed_form` without autograd (in place, one pass each); autograd through those
    formulas would lose digits far in the tails (the derivative of e^{y²}erfc(y) cancels) and keep every
    temporary alive. First derivatives only (``once_differentiable``).
    """

    @staticmethod
    def forward(ctx, m, h, log_Z, e_z, lz_m, lz_h, ez_m, ez_h):  # type: ignore[override]
        ctx.save_for_backward(lz_m, lz_h, ez_m, ez_h)
        return log_Z.clone(), e_z.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_log_Z: Tensor, grad_e_z: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        lz_m, lz_h, ez_m, ez_h = ctx.saved_tensors
        grad_m = grad_log_Z * lz_m + grad_e_z * ez_m if ctx.needs_input_grad[0] else None
        grad_h = grad_log_Z * lz_h + grad_e_z * ez_h if ctx.needs_input_grad[1] else None
        return grad_m, grad_h, None, None, None, None, None, None


def _exp_square(y: Tensor) -> Tensor:
    """e^{y²} to a few ulps for |y| ≤ 26 (``y`` unchanged). Rounding y² first would cost up to 6e-14 relative there,
    so y = hi + lo with hi² exact (Veltkamp's split) and e^{y²} = e^{hi²}·e^{lo(hi + y)}, the small second factor
    by its Taylor series to second order (|lo(hi + y)| < 2e-5)."""
    t = y * (_VELTKAMP if y.dtype == torch.float64 else 4097.0)  # 2^12 + 1 for float32 (MPS)
    hi = torch.sub(t, y)
    hi = torch.sub(t, hi, out=hi)  # hi = t − (t − y)
    d = torch.add(hi, y).mul_(torch.sub(y, hi, out=t))  # lo·(hi + y), lo = y − hi
    factor = torch.addcmul(d, d, d, value=0.5, out=t).add_(1)  # 1 + d + d²/2
    return hi.mul_(hi).exp_().mul_(factor)


def _erfcx_tail(y: Tensor) -> Tensor:
    """erfcx(y) = e^{y²}erfc(y) for y ≥ 26 (``y`` unchanged) by its asymptotic series
    ``Σ_{k≤6} (−1)^k (2k−1)!!/(2y²)^k / (y√π)`` (the first omitted term is below 2e-17 there)."""
    z = torch.mul(y, y).reciprocal_().mul_(0.5)  # 1/(2y²)
    s = torch.mul(z, 10395).sub_(945)
    for c in (105, -15, 3, -1, 1):
        s.mul_(z).add_(c)
    return s.div_(y).mul_(_INV_SQRT_PI)


def _closed_form(mq: Tensor, hq: Tensor) -> tuple[Tensor, Tensor]:
    """``log Z = log(Φ(m + h) − Φ(m − h))`` and ``E[z]`` for z ~ N(0, 1) truncated to [m − h, m + h], from
    ``mq = m/√2`` and ``hq = h/√2 > 0`` (broadcast); differentiable in both with the closed-form derivatives
    ``∂log Z/∂m = −E[z]``, ``∂log Z/∂h = (φ(u) + φ(w))/Z``, ``∂E[z]/∂m = (uφ(u) − wφ(w))/Z + E[z]²`` and
    ``∂E[z]/∂h = (uφ(u) + wφ(w))/Z − E[z](φ(u) + φ(w))/Z`` (u = m + h, w = m − h).

    With ``n = ||m'| − h'|`` and ``f = |m'| + h'`` (the two ends' distances from 0, over √2) the tail masses beyond
    the ends are ``erfc(n)/2`` and ``erfc(f)/2``, and ``φ(far end)/φ(near end) = e^{n² − f²} = e^{−4|m'|h'}``:

    - outside (|m| ≥ h, both ends in one tail): ``2Z·e^{n²} = e^{n²}(erfc(n) − erfc(f))``, free of the cancellation
      of two log-CDFs, with ``e^{n²}`` to a few ulps (:func:`_exp_square`) and the far term times
      ``e^{f² − n² − 4|m'|h'}`` (an exponent of rounding size: erfc varies fast, and this makes the rounding of the
      two ends cancel as in ``erfcx(n) − e^{−4|m'|h'}erfcx(f)``); beyond n = 26, where erfc underflows,
      ``erfcx(n) − e^{−4|m'|h'}·erfcx(f)`` by the asymptotic series (:func:`_erfcx_tail`);
    - inside (|m| < h): ``2Z = 2 − erfc(n) − erfc(f)``;
    - ``|E[z]| = (φ(near)/Z)·(1 − e^{−4|m'|h'})`` (expm1), with the sign of m.

    Both erfc are one elementwise pass over the two ends, the rest a few in-place passes; each branch is evaluated
    where it is finite and selected with ``torch.where`` (the tail series only when some entry needs it, and
    always under ``torch.compile``).
    """
    grad = torch.is_grad_enabled() and (mq.requires_grad or hq.requires_grad)
    y_tail = _Y_TAIL if mq.dtype == torch.float64 else _Y_TAIL_FLOAT32
    m_in, h_in = mq, hq
    mq, hq = mq.detach(), hq.detach()
    shape = torch.broadcast_shapes(mq.shape, hq.shape)
    am = mq.abs().expand(shape)
    outside = am >= hq
    ends = mq.new_empty((2, *shape))
    near, far = torch.sub(am, hq, out=ends[0]).abs_(), torch.add(am, hq, out=ends[1])  # rounded ends n, f
    expo = torch.mul(am, hq).mul_(-4)  # −4|m'|h'
    skew = torch.sub(far, near).mul_(far + near).add_(expo)  # f² − n² − 4|m'|h', of rounding size
    em = expo.expm1_()  # e^{−4|m'|h'} − 1
    near_sq = near * near
    tail = scaled_tail = None
    if compiling() or float(near.amax()) > y_tail:
        tail = outside & (near > y_tail)
        erfcx_n, erfcx_f = _erfcx_tail(ends.clamp(min=y_tail))
        scaled_tail = erfcx_n.sub_(erfcx_f.addcmul_(erfcx_f, em))  # erfcx(n) − e^{−4|m'|h'}·erfcx(f)
    exp_n = _exp_square(near.clamp_(max=y_tail))  # e^{n²}
    erfc_n, erfc_f = ends.erfc_()  # in place: n and f are not needed any more
    scaled = torch.sub(erfc_n, skew.mul_(erfc_f).add_(erfc_f)).mul_(exp_n)  # outside: 2Z·e^{n²}
    if scaled_tail is not None:
        scaled = torch.where(tail, scaled_tail, scaled)
    two_z = torch.where(outside, scaled, torch.rsub(erfc_n, 2).sub_(erfc_f))  # 2Z, times e^{n²} outside
    log_Z = torch.log(two_z).sub_(_LN2).sub_(near_sq.mul_(outside))
    mills = exp_n.reciprocal_().masked_fill_(outside, 1.0).mul_(_SQRT_2_OVER_PI).div_(two_z)  # φ(near end)/Z
    e_z = torch.mul(mills, em).copysign_(mq)
    if not grad:
        return log_Z, e_z
    # The derivatives in the original units (m = √2·m', h = √2·h'), for |m|; E[z] is odd in m, ∂E/∂m even.
    am2, h2 = am * _SQRT2, hq * _SQRT2
    wide = (em + 1) * (am2 + h2)  # e^{−2|m|h}(|m| + h): φ(far)/φ(near) times the far end
    lz_m = -e_z * _SQRT2
    lz_h = mills * (em + 2) * _SQRT2
    # ∂E[z]/∂m = 1 − Var[z] lies in [0, 1]; far in a tail (|m| ≳ 1e7, σ → 0) its two terms of size m² cancel to
    # nothing, and the clamp keeps the bound (autograd through the erfcx formulas before was no more accurate there).
    ez_m = (mills * (wide - (am2 - h2)) + e_z * e_z).clamp_(0.0, 1.0) * _SQRT2
    ez_h = torch.sign(mq) * mills * ((am2 - h2) + wide - e_z.abs() * (em + 2)) * _SQRT2
    return _ClosedForm.apply(m_in, h_in, log_Z, e_z, lz_m, lz_h, ez_m, ez_h)


def _hermite_series(m: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    """``S = Σ_{n even} He_n(m) hⁿ/(n+1)!`` and ``T = Σ_{n odd} He_n(m) hⁿ⁻¹/((n+2)·n!)`` up to n = 7.

    From ``exp(−ms − s²/2) = Σ He_n(m)(−s)ⁿ/n!``: its integral over s ∈ [−h, h] is 2h·S and that of s times
    it is −2h·h²·T, so ``Φ(m+h) − Φ(m−h) = φ(m)·2h·S`` and, for z = m + s, ``E[s] = −h²·T/S``.
    """
    he = [torch.ones_like(m), m]
    for n in range(1, 7):
        he.append(m * he[n] - n * he[n - 1])  # He_{n+1} = m·He_n − n·He_{n−1}
    h2 = h * h
    S = 1 + h2 * (he[2] / 6 + h2 * (he[4] / 120 + h2 * he[6] / 5040))
    T = he[1] / 3 + h2 * (he[3] / 30 + h2 * (he[5] / 840 + h2 * he[7] / 45360))
    return S, T


def box_log_prob_and_mean(
    x: Tensor, alpha: Tensor | float, sigma: Tensor | float, low: Tensor, high: Tensor
) -> tuple[Tensor, Tensor]:
    """Per-dimension log p_t(x | uniform[low, high]) and E[x0 | x_t = x] (both broadcast of all inputs).

    ``alpha``/``sigma`` (tensors, or floats for one time shared by all) may be 0 (α = 0: N(0, σ²), mean the
    centre; σ = 0: the uniform itself, mean x/α). Autograd-safe: every branch gets inputs where it is finite.
    """
    grad = torch.is_grad_enabled() and any(isinstance(v, Tensor) and v.requires_grad for v in (x, alpha, sigma))
    dynamic = not compiling()  # eager: skip the regimes that do not occur; compiled: evaluate all, select
    if isinstance(sigma, Tensor):
        at_data = sigma == 0
        any_data = not dynamic or bool(at_data.any())
        sigma_ = torch.where(at_data, 1.0, sigma) if any_data else sigma
    elif sigma == 0:  # t = 0 for all: the uniform density on [αa, αb], mean x/α
        inside = (x >= alpha * low) & (x <= alpha * high)
        log_p = torch.where(inside, -torch.log(alpha * (high - low)), float("-inf"))
        return log_p, (x / alpha).expand_as(log_p)
    else:
        at_data = any_data = False
        sigma_ = sigma
    centre, half = 0.5 * (low + high), 0.5 * (high - low)
    scale = _SQRT_HALF / sigma_  # 1/(σ√2)
    a_scale = alpha * scale
    mq = x * scale - a_scale * centre  # m/√2, m = (u + w)/2 = (x − α·centre)/σ
    hq = a_scale * half  # h/√2, h = (u − w)/2 = α(b − a)/(2σ)
    # The series where h < _H_SERIES and |m|·h < _H_SERIES (h = √2·h', |m|·h = 2|m'|h').
    near_zero = hq < _H_SERIES * _SQRT_HALF
    any_series = not dynamic or bool(near_zero.any())
    series = near_zero & (mq.abs() * hq < 0.5 * _H_SERIES) if any_series else None
    all_series = dynamic and any_series and bool(series.all())
    c = alpha / sigma_  # α/σ
    if any_series:
        # Series branch (small h): log p = log φ(m) − log σ + log S; E[x0] = centre − E[s]/c = centre + c·half²·T/S.
        m_s = mq * _SQRT2 if all_series else torch.where(series, mq * _SQRT2, 0.0)
        h_s = hq * _SQRT2 if all_series else torch.where(series, hq * _SQRT2, 0.0)
        S, T = _hermite_series(m_s, h_s)
        log_sigma = torch.log(sigma_) if isinstance(sigma_, Tensor) else math.log(sigma_)
        log_p_series = _log_phi(m_s) - log_sigma + torch.log(S)
        mean_series = centre + c * half * half * T / S
    if not all_series:
        # Closed branch: log Z = log(Φ(u) − Φ(w)), log p = log Z − log(α(b − a)), E[x0] = x/α − E[z]/c.
        safe = any_series and (grad or not dynamic)  # finite inputs where the series is taken (autograd)
        mq_c = torch.where(series, 1.0, mq) if safe else mq
        hq_c = torch.where(series, 1.0, hq) if safe else hq
        alpha_c = torch.where(series, 1.0, alpha) if safe and isinstance(alpha, Tensor) else alpha  # a float α > 0 here
        log_Z, e_z = _closed_form(mq_c, hq_c)
        log_p_closed = log_Z - torch.log(alpha_c * (high - low))
        mean_closed = x / alpha_c - e_z * (sigma_ / alpha_c)
    if all_series:
        log_p, mean = log_p_series, mean_series
    elif any_series:
        log_p = torch.where(series, log_p_series, log_p_closed)
        mean = torch.where(series, mean_series, mean_closed)
    else:
        log_p, mean = log_p_closed, mean_closed
    if any_data:
        # σ = 0 (t = 0): the uniform density on [αa, αb], mean x/α.
        alpha_d = torch.where(at_data, alpha, 1.0)
        inside = (x >= alpha_d * low) & (x <= alpha_d * high)
        log_p_data = torch.where(inside, -torch.log(alpha_d * (high - low)), float("-inf"))
        log_p = torch.where(at_data, log_p_data, log_p)
        mean = torch.where(at_data, x / alpha_d, mean)
    return log_p, mean


@dataclass(frozen=True)
class _Params:
    low: Tensor  # (K, D)
    high: Tensor  # (K, D)
    log_weights: Tensor  # (C + 1, K)
    centre: Tensor  # (K, D, 1) (a + b)/2, laid out for (K, D, n) work arrays
    half: Tensor  # (K, D, 1) (b − a)/2
    log_volume: Tensor  # (K,) Σ_d log(b_d − a_d)


class BoxMixture(FusedTarget):
    """A class-conditional mixture of uniform densities on boxes ``p(x | c) = Σ_{k ∈ c} w_k U(x; [a_k, b_k])``.

    Args:
        low: (K, D) lower corners a_k.
        high: (K, D) upper corners b_k (> low in every dimension).
        weights: (K,) non-negative component weights, normalized within each class (default equal).
        component_class: (K,) class index of every component (default: one class).
        class_names: one name per class (default ``"0"``, ``"1"``, ...).
        class_prior: (C,) non-negative class priors, normalized (default uniform).
        name: identifier used in configs and reports.
        description: one line for listings.

    Attributes:
        max_chunk_bytes: bound on the working memory of one chunk of particles (default 200 MB).
        cache_chunk_entries: on the CPU, particle × component × dimension entries per chunk of the fused pass
            (default 2¹⁴: 128 KB work arrays stay in cache and are reused by the allocator; with 2¹⁵ and more, each
            chunk's fresh arrays cost hundreds of page faults, 2 ms of a 6 ms call at D = 2, K = 8, n = 4000).
    """

    max_chunk_bytes: int = 200 * 2**20
    cache_chunk_entries: int = 2**14
    jit_max_work: int = 2**16  # the compiled per-particle loop up to K·D entries per particle (all sizes measured)

    def __init__(
        self,
        low: object,
        high: object,
        weights: object | None = None,
        component_class: object | None = None,
        class_names: list[str] | None = None,
        class_prior: object | None = None,
        *,
        name: str = "box-mixture",
        description: str = "",
    ):
        lo = as_float_array(low, "low", 2)
        K, D = lo.shape
        if K < 1 or D < 1:
            raise ValueError(f"low: need at least one component and one dimension, got shape {lo.shape}")
        hi = as_float_array(high, "high", 2)
        if hi.shape != (K, D):
            raise ValueError(f"high: expected shape ({K}, {D}) to match low, got {hi.shape}")
        bad = np.argwhere(~(hi > lo))
        if len(bad):
            k, d = bad[0]
            raise ValueError(
                f"high[{k}]: must exceed low in every dimension (dim {d}: low {lo[k, d]}, high {hi[k, d]})"
            )
        init_classes(self, K, weights, component_class, class_names, class_prior)
        self.dim = D
        self.name = str(name)
        self.description = str(description)
        self.low = torch.from_numpy(lo)
        self.high = torch.from_numpy(hi)
        self._config: dict | None = None
        self._cache: dict[tuple[torch.dtype, torch.device], _Params] = {}

    def _params(self, dtype: torch.dtype, device: torch.device) -> _Params:
        key = (dtype, torch.device(device))
        if key not in self._cache:
            low, high, log_weights = (
                p.to(dtype=dtype, device=device) for p in (self.low, self.high, self.log_weight_table())
            )
            centre, half = (0.5 * (low + high))[:, :, None], (0.5 * (high - low))[:, :, None]
            self._cache[key] = _Params(low, high, log_weights, centre, half, torch.log(high - low).sum(-1))
        return self._cache[key]

    def _chunk_size(self, x_t: Tensor, fused: bool) -> int:
        # About 16 live (n, K, D) float64 temporaries in box_log_prob_and_mean; the fused pass takes chunks of
        # ``cache_chunk_entries`` particle-component-dimension entries.
        per_particle = 16 * self.num_components * self.dim * 8
        step = self.max_chunk_bytes // per_particle
        if fused and x_t.device.type == "cpu":
            step = min(step, self.cache_chunk_entries // (self.num_components * self.dim))
        return max(1, step)

    def _evaluate(
        self, x_t: Tensor, t: Tensor | float, path: NoisePath, cond: Tensor | int | None, want_mean: bool
    ) -> tuple[Tensor | None, Tensor]:
        """Posterior mean (or None) and log p_t(x_t | c) (batch,), or per-component log p_t (batch, K).

        Computed in float64 whatever the dtype of ``x_t`` (except on MPS) and returned in that dtype: the
        work is elementwise over (n, K, D) and cheap, and at small α the float32 truncated-normal mean
        x/α − E[z]/c loses digits to cancellation.

        One time shared by the batch (the samplers' case), σ > 0, no series entry and no autograd take the fused
        pass :meth:`_fused_chunk`; anything else goes through :func:`box_log_prob_and_mean` entry by entry.
        """
        self.check_input(x_t)
        if self.uses_compiled_kernels(x_t, t):
            time = path_time(path, t, x_t, dtype=torch.float64, full=False)
            if time.sigma0 > 0 if time.shared else bool((time.sigma > 0).all()):
                return self._evaluate_compiled(x_t, time, cond, want_mean)
        out_dtype = x_t.dtype
        wide = torch.float64 if x_t.device.type != "mps" else x_t.dtype
        x_t = x_t.to(wide)
        n, K = x_t.shape[0], self.num_components
        p = self._params(wide, x_t.device)
        time = path_time(path, t, x_t)
        rows = None if cond is None and not want_mean else self.cond_rows(cond, n, x_t.device)
        fused = (
            time.shared
            and time.sigma0 > 0
            and not compiling()
            and not (torch.is_grad_enabled() and x_t.requires_grad)
            and time.alpha0 * _SQRT_HALF / time.sigma0 * float(p.half.min()) >= _H_SERIES * _SQRT_HALF
        )
        means, log_probs = [], []
        step = self._chunk_size(x_t, fused)
        for lo in range(0, n, step):
            hi = min(lo + step, n)
            if fused:
                log_p, x0_hat = self._fused_chunk(x_t[lo:hi], time.alpha0, time.sigma0, p, rows, lo, want_mean)
                log_probs.append(log_p)
                if x0_hat is not None:
                    means.append(x0_hat)
                continue
            x = x_t[lo:hi, None, :]  # (m, 1, D)
            if time.shared:  # floats: per-time quantities are (K, D) and computed once
                alpha, sigma = time.alpha0, time.sigma0
            else:
                alpha, sigma = time.alpha[lo:hi, None, None], time.sigma[lo:hi, None, None]
            log_p_dim, mean_k = box_log_prob_and_mean(x, alpha, sigma, p.low, p.high)  # (m, K, D)
            log_p = log_p_dim.sum(-1)  # (m, K)
            if rows is None:
                log_probs.append(log_p)
                continue
            logits = p.log_weights[rows[lo:hi]] + log_p
            # logsumexp and softmax written out: torch's are slow on CPU over a few components. A row of −∞ only
            # (σ = 0, x off the support) has log p = −∞ and NaN responsibilities.
            top = logits.amax(-1, keepdim=True)
            weights = torch.exp(logits - torch.where(torch.isfinite(top), top, 0.0))
            total = weights.sum(-1, keepdim=True)
            log_probs.append((top + torch.log(total)).squeeze(-1))
            if want_mean:
                r = weights / total  # responsibilities
                mean = torch.einsum("mk,mkd->md", r, mean_k)
                if time.shared:  # at t = 0 the posterior mean is x/α itself
                    means.append(x[:, 0] / alpha if sigma == 0 else mean)
                else:
                    data = (sigma[:, :, 0] == 0).expand_as(mean)
                    means.append(torch.where(data, x[:, 0] / torch.where(data, alpha[:, :, 0], 1.0), mean))
        empty = x_t.new_empty((0,) if rows is not None else (0, K))
        log_prob = (torch.cat(log_probs) if log_probs else empty).to(out_dtype)
        mean = (torch.cat(means) if means else torch.empty_like(x_t)).to(out_dtype) if want_mean else None
        return mean, log_prob

    def uses_compiled_kernels(self, x_t: Tensor, t: Tensor | float | None = None) -> bool:
        """Whether a call on ``x_t`` may take the compiled per-particle loop (:mod:`guidelab.targets.mixture_jit`):
        on the CPU, float32 or float64 (computed in float64 either way), no autograd through ``x_t`` or ``t``, not
        traced by ``torch.compile``, at most :attr:`jit_max_work` = K·D entries a particle, and numba available; it
        is taken where moreover σ > 0 for every sample (t = 0 stays on the torch path). The decision depends on the
        install, ``GUIDELAB_COMPILE`` and the inputs only (never on timing)."""
        return (
            x_t.device.type == "cpu"
            and x_t.dtype in (torch.float32, torch.float64)
            and x_t.shape[0] > 0
            and self.num_components * self.dim <= self.jit_max_work
            and not (torch.is_grad_enabled() and (x_t.requires_grad or (isinstance(t, Tensor) and t.requires_grad)))
            and not compiling()
            and mixture_jit.available()
        )

    def _evaluate_compiled(
        self, x_t: Tensor, time: PathTime, cond: Tensor | int | None, want_mean: bool
    ) -> tuple[Tensor | None, Tensor]:
        """:meth:`_evaluate` by the compiled loop (on the CPU, σ > 0), in float64 (float32 inputs read as they are,
        results written in float32 once at the end)."""
        n, D, K = x_t.shape[0], self.dim, self.num_components
        q = self._jit_arrays()
        mode, labels = mixture_jit.mode_and_labels(self, cond, n, want_mean)
        if time.shared:
            alpha, sigma = np.array([time.alpha0]), np.array([time.sigma0])
        else:
            alpha, sigma = time.alpha.numpy(), time.sigma.numpy()
        x = x_t.detach().contiguous().numpy()
        out_mean = np.empty((n if want_mean else 0, D), dtype=x.dtype)
        out_lp = np.empty((n, K if mode == mixture_jit.COMPONENTS else 1), dtype=x.dtype)
        kernels = mixture_jit.KERNELS.get()
        args = (x, alpha, sigma, q["centre"], q["half"], q["log_width"], q["log_weights"], labels, kernels.table)
        mixture_jit.run(kernels.box, n, *args, mode, True, out=(out_mean, out_lp))
        log_prob = torch.from_numpy(out_lp if mode == mixture_jit.COMPONENTS else out_lp.reshape(n))
        return (torch.from_numpy(out_mean) if want_mean else None), log_prob

    def _jit_arrays(self) -> dict[str, np.ndarray]:
        """The float64 parameters of the compiled loop: ``centre``, ``half``, ``log_width`` = log(b − a) (K, D)
        and ``log_weights`` (C + 1, K)."""
        if getattr(self, "_jit_params", None) is None:
            low, high = self.low.numpy(), self.high.numpy()
            self._jit_params = {
                "centre": np.ascontiguousarray(0.5 * (low + high)),
                "half": np.ascontiguousarray(0.5 * (high - low)),
                "log_width": np.ascontiguousarray(np.log(high - low)),
                "log_weights": np.ascontiguousarray(self.log_weight_table().numpy()),
            }
        return self._jit_params

    def _fused_chunk(
        self, x: Tensor, alpha: float, sigma: float, p: _Params, rows: Tensor | None, lo: int, want_mean: bool
    ) -> tuple[Tensor, Tensor | None]:
        """One chunk x (m, D) at one time (α, σ > 0) with no series entry: log p_t(x | c) (m,) (per component
        (m, K) when ``rows`` is None) and the posterior mean (m, D) or None.

        Work arrays are (K, D, m), so the sums over D and K run along the outer axes of contiguous rows, and
        ``Σ_k r_k E[x0 | x, k] = x/α − (σ/α)·Σ_k r_k E[z_k]`` (the responsibilities sum to 1) leaves one (K, D, m)
        product for the mean: ``log p_k = Σ_d log Z_kd − Σ_d log(α(b_d − a_d))``."""
        scale = _SQRT_HALF / sigma  # 1/(σ√2)
        mq = (x.T * scale)[None] - (alpha * scale) * p.centre  # (K, D, m) m' = (x − α·centre)/(σ√2)
        log_Z, e_z = _closed_form(mq, (alpha * scale) * p.half)
        log_p = log_Z.sum(1).sub_((p.log_volume + self.dim * math.log(alpha))[:, None])  # (K, m)
        if rows is None:
            return log_p.T, None
        logits = log_p.add_(p.log_weights[rows[lo : lo + x.shape[0]]].T)  # (K, m)
        # logsumexp and softmax over K written out (torch's are slow on CPU over a few components); every row has a
        # finite logit (σ > 0), so the maximum is finite and the sum of e^{l − max} at least 1.
        top = logits.amax(0)
        r = logits.sub_(top).exp_()
        total = r.sum(0)
        log_prob = top.add_(torch.log(total))
        if not want_mean:
            return log_prob, None
        r.div_(total)  # responsibilities
        e_mean = e_z.mul_(r[:, None, :]).sum(0)  # (D, m) Σ_k r_k E[z_k]
        return log_prob, torch.add(x, e_mean.T, alpha=-sigma).div_(alpha)  # (x − σ·Σ_k r_k E[z_k])/α

    # --- the Target interface -----------------------------------------------------------------------

    def sample(
        self,
        n: int,
        cond: int | str | None = None,
        generator: torch.Generator | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Exact samples (n, D) of p(x | c): k ~ w^{(c)}, then x = a_k + (b_k − a_k)·U, U ~ U[0, 1]^D."""
        k = self.draw_components(n, cond, generator)
        gen_device = k.device
        p = self._params(torch.float64, gen_device)
        u = torch.rand(n, self.dim, generator=generator, dtype=torch.float64, device=gen_device)
        x = p.low[k] + (p.high[k] - p.low[k]) * u
        return x.to(dtype=dtype, device=device if device is not None else gen_device)

    # --- support ------------------------------------------------------------------------------------

    def _allowed(self, cond: Tensor | int | str | None, n: int, device: torch.device) -> Tensor:
        """(n, K) bool: component k has positive weight under each sample's condition."""
        rows = self.cond_rows(self.class_index(cond) if isinstance(cond, str) else cond, n, device)
        return torch.isfinite(self.log_weight_table().to(device)[rows])

    def distance_to_support(self, x: Tensor, cond: Tensor | int | str | None = None) -> Tensor:
        """Euclidean distance from x (n, D) to the union of the boxes of class c (all boxes for null), (n,);
        0 inside. Per box: ``‖max(a − x, 0, x − b)‖``."""
        self.check_input(x)
        n, K, D = x.shape[0], self.num_components, self.dim
        p = self._params(x.dtype, x.device)
        allowed = self._allowed(cond, n, x.device)
        step = max(1, self.max_chunk_bytes // (4 * K * D * x.element_size()))
        out = []
        for lo in range(0, n, step):
            xc = x[lo : lo + step, None, :]
            gap = torch.clamp_min(torch.maximum(p.low - xc, xc - p.high), 0)  # (m, K, D)
            dist = torch.linalg.vector_norm(gap, dim=-1).masked_fill(~allowed[lo : lo + step], float("inf"))
            out.append(dist.amin(-1))
        return torch.cat(out) if out else x.new_empty(0)

    def support_contains(self, x: Tensor, cond: Tensor | int | str | None = None) -> Tensor:
        """Whether each x (n, D) lies in a box of class c (any box for null), (n,) bool."""
        return self.distance_to_support(x, cond) == 0

    # --- moments and config -------------------------------------------------------------------------

    def mean(self, cond: int | str | None = None) -> Tensor:
        """E[x | c] = Σ_k w_k (a_k + b_k)/2, (D,) in float64."""
        c = NULL_COND if cond is None else self.class_index(cond)
        w = torch.exp(self._params(torch.float64, torch.device("cpu")).log_weights[c])
        return w @ (0.5 * (self.low + self.high))

    def to_spec(self) -> dict:
        """A ``TargetSpec``-shaped dict (kind box-mixture) that rebuilds this mixture."""
        prior = self.class_prior.tolist()
        weights = torch.exp(self.log_component_weight).tolist()
        classes = []
        for c, name in enumerate(self.class_names):
            members = torch.nonzero(self.component_class == c).flatten().tolist()
            components = [
                {"weight": weights[k], "low": self.low[k].tolist(), "high": self.high[k].tolist()} for k in members
            ]
            classes.append({"name": name, "prior": prior[c], "components": components})
        return {
            "kind": "box-mixture",
            "name": self.name,
            "description": self.description,
            "dim": self.dim,
            "classes": classes,
        }

    def config(self) -> dict:
        """The built-in name, or the full spec for a mixture built from parameters or a file."""
        return dict(self._config) if self._config else self.to_spec()
