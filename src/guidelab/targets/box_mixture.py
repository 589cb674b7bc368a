"""Class-conditional mixtures of uniform densities on axis-aligned boxes: exact noisy densities and
denoisers on any path (the compactly supported setting of Chidambaram et al., arXiv 2409.13074, §3).

Per dimension, a uniform on [a, b] under ``x_t = α·x0 + σ·ε`` has

    p_t(x) = [Φ(u) − Φ(w)] / (α(b − a)),   u = (x − αa)/σ,  w = (x − αb)/σ,
    E[x0 | x_t] = x/α − (σ/α)·E[z],  z ~ N(0, 1) truncated to [w, u],

and a box is the product over dimensions. With ``m = (u + w)/2`` and ``h = (u − w)/2 = α(b − a)/(2σ)`` the
log-mass ``log(Φ(u) − Φ(w))`` and ``E[z]`` are computed without cancellation (docs/methods.md §3 asks for stable
log-differences of normal CDFs): outside the box (|m| ≥ h, both ends in one tail) from erfcx-scaled tails,
inside from ``1 − (two tail masses)`` with ``log_ndtr``; ``φ(w) − φ(u) = sign(m)·φ(h − |m|)(1 − e^{−2|m|h})``.
When h and |m|·h are small (α → 0) a Hermite series in h replaces both, so the density tends to N(0, σ²)
and the mean to the box centre, exactly at α = 0. At σ = 0 (t = 0) the density is the uniform itself and
the mean is x/α. Gradients of the log-density use the closed-form derivatives (``_LogMass``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from guidelab.denoiser import NULL_COND
from guidelab.paths import NoisePath
from guidelab.targets.base import FusedTarget, as_float_array, compiling, init_classes, path_time

__all__ = ["BoxMixture"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
_LN2 = math.log(2.0)
_SQRT_HALF = math.sqrt(0.5)
_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
# Series region: h < _H_SERIES and |m|·h < _H_SERIES. There the omitted Hermite terms are below 1e-14.
_H_SERIES = 0.02


def _log1mexp(d: Tensor) -> Tensor:
    """log(1 − e^d) for d < 0, accurate on both sides of −ln 2 (Mächler 2012); autograd-safe branches."""
    near = d > -_LN2
    d_near = torch.where(near, d, -1.0)
    d_far = torch.where(near, -1.0, d)
    return torch.where(near, torch.log(-torch.expm1(d_near)), torch.log1p(-torch.exp(d_far)))


def _log_phi(x: Tensor) -> Tensor:
    """log φ(x) of the standard normal density."""
    return -0.5 * x * x - _HALF_LOG_2PI


class _LogMass(torch.autograd.Function):
    """Passes ``log Z(m, h)`` through with the exact gradients ``∂/∂m = −E[z]``, ``∂/∂h = (φ(m+h) + φ(m−h))/Z``.

    Autograd through the erfcx formulas loses digits far in the tails (erfcx' = 2y·erfcx(y) − 2/√π cancels);
    these closed-form derivatives are as accurate as the values.
    """

    @staticmethod
    def forward(ctx, m: Tensor, h: Tensor, log_Z: Tensor, e_z: Tensor, f: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(e_z, f)
        return log_Z.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        e_z, f = ctx.saved_tensors
        grad_m = -grad * e_z if ctx.needs_input_grad[0] else None
        grad_h = grad * f if ctx.needs_input_grad[1] else None
        return grad_m, grad_h, None, None, None


def _tails_outside(am: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    """``log Z`` and the Mills ratio ``φ(h − |m|)/Z`` where ``am = |m| ≥ h`` (both ends in one tail), from erfcx.

    ``log Φ(h − |m|) = log(erfcx(y/√2)/2) − y²/2`` with ``y = |m| − h ≥ 0`` reuses the near tail's erfcx (no
    ``log_ndtr``: the special functions are most of the cost)."""
    y = am - h
    erfcx_near = torch.special.erfcx(y * _SQRT_HALF)
    log_near = torch.log(erfcx_near)
    log_r = -2 * am * h + torch.log(torch.special.erfcx((am + h) * _SQRT_HALF)) - log_near
    log_Z = (log_near - _LN2 - 0.5 * y * y) + _log1mexp(log_r)
    return log_Z, _SQRT_2_OVER_PI / (erfcx_near * -torch.expm1(log_r))


def _tails_inside(am: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    """``log Z`` and the Mills ratio ``φ(h − |m|)/Z`` where ``am = |m| < h``: Z = 1 − (two small tail masses)."""
    log_tails = torch.logaddexp(torch.special.log_ndtr(-(am + h)), torch.special.log_ndtr(am - h))
    log_Z = _log1mexp(log_tails)
    return log_Z, torch.exp(_log_phi(h - am) - log_Z)


def _closed_form(m: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    """``log Z = log(Φ(m + h) − Φ(m − h))`` and ``E[z]`` for z ~ N(0, 1) truncated to [m − h, m + h], h > 0.

    Both are symmetric in m (odd for E[z]), so work with |m|. Outside (|m| ≥ h, both ends in one tail) with
    erfcx, ``Φ(−y) = ½ erfcx(y/√2) e^{−y²/2}``: the ratio of the two tail masses is
    ``r = e^{−2|m|h}·erfcx((|m| + h)/√2)/erfcx((|m| − h)/√2)``, ``log Z = log Φ(h − |m|) + log(1 − r)`` and
    ``|E[z]| = √(2/π)(1 − e^{−2|m|h})/(erfcx((|m| − h)/√2)(1 − r))``, free of the cancellation of two large
    log-CDFs. Inside (|m| < h): ``Z = 1 − Φ(−(|m| + h)) − Φ(|m| − h)`` and
    ``|E[z]| = φ(h − |m|)(1 − e^{−2|m|h})/Z``. (φ(u) + φ(w))/Z, the h-derivative of log Z, uses 1 + e^{−2|m|h}.

    Eagerly each entry goes through its own formula only (the special functions are most of the cost); under
    ``torch.compile`` both are evaluated everywhere and selected, as the split would be data-dependent.
    """
    abs_m, h = torch.broadcast_tensors(m.abs(), h)
    outside = abs_m >= h
    if compiling():  # both formulas everywhere, selected (no data-dependent shapes)
        log_Z_a, mills_a = _tails_outside(torch.where(outside, abs_m, h + 1), h)  # safe inputs keep autograd finite
        log_Z_b, mills_b = _tails_inside(torch.where(outside, 0.0, abs_m), h)
        log_Z_ab, mills = torch.where(outside, log_Z_a, log_Z_b), torch.where(outside, mills_a, mills_b)
    elif bool(outside.all()):
        log_Z_ab, mills = _tails_outside(abs_m, h)
    elif not bool(outside.any()):
        log_Z_ab, mills = _tails_inside(abs_m, h)
    else:  # each entry through its own formula only: the special functions are most of the cost
        flat_m, flat_h, flat_out = abs_m.reshape(-1), h.reshape(-1), outside.reshape(-1)
        i_out, i_in = flat_out.nonzero().squeeze(1), (~flat_out).nonzero().squeeze(1)
        lz_out, mills_out = _tails_outside(flat_m[i_out], flat_h[i_out])
        lz_in, mills_in = _tails_inside(flat_m[i_in], flat_h[i_in])
        empty = flat_m.new_empty(flat_m.shape)
        log_Z_ab = empty.index_copy(0, i_out, lz_out).index_copy(0, i_in, lz_in).view(abs_m.shape)
        mills = empty.index_copy(0, i_out, mills_out).index_copy(0, i_in, mills_in).view(abs_m.shape)
    am = abs_m
    decay = torch.exp(-2 * am * h)
    e_z = torch.sign(m) * mills * -torch.expm1(-2 * am * h)
    f = mills * (1 + decay)
    log_Z = _LogMass.apply(m, h, log_Z_ab.detach(), e_z.detach(), f.detach())
    return log_Z, e_z


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


def box_log_prob_and_mean(x: Tensor, alpha: Tensor, sigma: Tensor, low: Tensor, high: Tensor) -> tuple[Tensor, Tensor]:
    """Per-dimension log p_t(x | uniform[low, high]) and E[x0 | x_t = x] (both broadcast of all inputs).

    ``alpha``/``sigma`` may be 0 (α = 0: N(0, σ²), mean the centre; σ = 0: the uniform itself, mean x/α).
    Autograd-safe: every branch gets inputs where it is finite.
    """
    at_data = sigma == 0
    # Which of the three regimes occur (eager only: under torch.compile every branch is evaluated, as before).
    dynamic = not compiling()
    any_data = not dynamic or bool(at_data.any())
    sigma_ = torch.where(at_data, 1.0, sigma) if any_data else sigma
    centre, half = 0.5 * (low + high), 0.5 * (high - low)
    c = alpha / sigma_  # α/σ
    m = (x - alpha * centre) / sigma_  # (u + w)/2
    h = c * half  # (u − w)/2
    series = (h < _H_SERIES) & (m.abs() * h < _H_SERIES)
    any_series = not dynamic or bool(series.any())
    all_series = dynamic and any_series and bool(series.all())
    if any_series:
        # Series branch (small h): log p = log φ(m) − log σ + log S; E[x0] = centre − E[s]/c = centre + c·half²·T/S.
        m_s = torch.where(series, m, 0.0) if not all_series else m
        h_s = torch.where(series, h, 0.0) if not all_series else h
        S, T = _hermite_series(m_s, h_s)
        log_p_series = _log_phi(m_s) - torch.log(sigma_) + torch.log(S)
        mean_series = centre + c * half * half * T / S
    if not all_series:
        # Closed branch: log Z = log(Φ(u) − Φ(w)), log p = log Z − log(α(b − a)), E[x0] = x/α − E[z]/c.
        m_c = torch.where(series, 1.0, m) if any_series else m
        h_c = torch.where(series, 1.0, h) if any_series else h
        alpha_c = torch.where(series, 1.0, alpha) if any_series else alpha
        c_c = torch.where(series, 1.0, c) if any_series else c
        log_Z, e_z = _closed_form(m_c, h_c)
        log_p_closed = log_Z - torch.log(alpha_c * (high - low))
        mean_closed = x / alpha_c - e_z / c_c
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
    """

    max_chunk_bytes: int = 200 * 2**20

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
            self._cache[key] = _Params(
                *(p.to(dtype=dtype, device=device) for p in (self.low, self.high, self.log_weight_table()))
            )
        return self._cache[key]

    def _chunk_size(self, x_t: Tensor) -> int:
        # About 16 live (n, K, D) float64 temporaries in box_log_prob_and_mean.
        per_particle = 16 * self.num_components * self.dim * 8
        return max(1, self.max_chunk_bytes // per_particle)

    def _evaluate(
        self, x_t: Tensor, t: Tensor | float, path: NoisePath, cond: Tensor | int | None, want_mean: bool
    ) -> tuple[Tensor | None, Tensor]:
        """Posterior mean (or None) and log p_t(x_t | c) (batch,), or per-component log p_t (batch, K).

        Computed in float64 whatever the dtype of ``x_t`` (except on MPS) and returned in that dtype: the
        work is elementwise over (n, K, D) and cheap, and at small α the float32 truncated-normal mean
        x/α − E[z]/c loses digits to cancellation.
        """
        self.check_input(x_t)
        out_dtype = x_t.dtype
        wide = torch.float64 if x_t.device.type != "mps" else x_t.dtype
        x_t = x_t.to(wide)
        n, K = x_t.shape[0], self.num_components
        p = self._params(wide, x_t.device)
        time = path_time(path, t, x_t)
        rows = None if cond is None and not want_mean else self.cond_rows(cond, n, x_t.device)
        means, log_probs = [], []
        step = self._chunk_size(x_t)
        for lo in range(0, n, step):
            hi = min(lo + step, n)
            x = x_t[lo:hi, None, :]  # (m, 1, D)
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
                data = (sigma[:, :, 0] == 0).expand_as(mean)  # at t = 0 the posterior mean is x/α itself
                means.append(torch.where(data, x[:, 0] / torch.where(data, alpha[:, :, 0], 1.0), mean))
        empty = x_t.new_empty((0,) if rows is not None else (0, K))
        log_prob = (torch.cat(log_probs) if log_probs else empty).to(out_dtype)
        mean = (torch.cat(means) if means else torch.empty_like(x_t)).to(out_dtype) if want_mean else None
        return mean, log_prob

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
