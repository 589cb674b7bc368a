"""AdaMaG, probability-conserving flow guidance (Esmati, Hyung et al. 2026, arXiv 2605.20079; docs/methods.md §2).

Adding a guidance field g to a flow that already transports p_t keeps the density path iff
``∇·g + g·∇log p_t = 0``: a divergence term, which blows up near the data, and a score-parallel flux. AdaMaG
decays the scale late and damps the score-parallel part of the guidance residual. No extra evaluations.
"""

from __future__ import annotations

from typing import Any

import torch

from guidelab.guiders._checks import check_number
from guidelab.guiders.base import GuidedStep, Predictions, Scale, ScheduledGuider, StepContext
from guidelab.guiders.combine import keep_neutral
from guidelab.guiders.context import as_batch, per_sample
from guidelab.guiders.reductions import EPS, dot, sq_norm
from guidelab.guiders.registry import register_guider
from guidelab.guiders.schedules import Schedule
from guidelab.paths import NoisePath, path_scalars

__all__ = ["AdaMaG"]


def _rf_time(path: NoisePath, t: float) -> float:
    """s = σ/(α + σ) at t on ``path``, from the library's one cache of path scalars (no device sync)."""
    alpha, sigma, _, _ = path_scalars(path, t)
    return sigma / (alpha + sigma)


@register_guider
class AdaMaG(ScheduledGuider):
    """Adaptive Manifold Guidance: damp the score-parallel part of the residual and decay the scale late.

    In flow-velocity space (docs/methods.md §2, from two independent reimplementations)::

        g   = v_c − v_u
        n   = ε̂_c                                   (= x_t + (1 − t)·v_c on rf; parallel to the score)
        g∥  = (<g, n>/||n||²)·n,   g⊥ = g − g∥      (per sample)
        ω_s = max(ω_min, γ·s^κ)                     (s = σ/(α + σ): 1 noise, 0 data)
        v̂  = v_u + ω_s·(g⊥ + β·g∥)

    β = 1, κ = 0 (and γ ≥ ω_min) is exactly CFG. On other paths the rule is written with the same
    n = ε̂_c; since ε is an affine function of v at fixed x_t with one scalar per time, the velocity form equals
    the ε/score form of docs/methods.md §2 wherever α > 0, and stays defined at pure noise (α = 0), where every
    ε̂ equals x_t. The decay reads the rectified-flow time s = σ/(α + σ) = λ/(1 + λ) of the evaluation point
    (:meth:`~guidelab.paths.NoisePath.rf_time`; s = t on ``rf``, the sources' path), so the same noise level
    gets the same ω on every path. γ = 1 means unguided (the conditional pair, one evaluation), although the
    formula there would still damp g∥; κ = 4 and ω_min = 1 are uncertain in the source.
    At n = 0 the projection on n is taken as 0 (g∥ = 0, v̂ = v_u + ω_s·g): there is no score direction to damp
    (the ε in ||n||² + ε gives exactly this, and g∥ → 0 continuously once ||n||² ≪ ε).

    Args:
        schedule: the scale γ(step); a number means constant.
        beta: damping β ≥ 0 of the score-parallel part (1 = none).
        kappa: decay exponent κ ≥ 0 of s^κ.
        omega_min: floor ω_min ≥ 0 of the effective scale ω_t.
    """

    name = "adamag"
    space = "velocity"
    source = "arXiv 2605.20079"
    default_scale = 3.0  # docs/methods.md §9

    def __init__(
        self, schedule: Schedule | Scale | None = None, beta: float = 0.1, kappa: float = 4.0, omega_min: float = 1.0
    ):
        super().__init__(schedule)
        self.beta = check_number("beta", beta, lo=0.0)
        self.kappa = check_number("kappa", kappa, lo=0.0)
        self.omega_min = check_number("omega_min", omega_min, lo=0.0)

    def omega(self, gamma: Scale, s: float) -> Scale:
        """ω_s = max(ω_min, γ·s^κ) at rectified-flow time s, a number or per-sample (batch,)."""
        scaled = gamma * s**self.kappa
        if isinstance(scaled, float):
            return max(self.omega_min, scaled)
        return scaled.clamp_min(self.omega_min)

    def combine(self, preds: Predictions, ctx: StepContext, gamma: Scale) -> GuidedStep:
        v_c, v_u = preds.get("cond", "velocity"), preds.get("uncond", "velocity")
        n = preds.get("cond", "eps")
        g = v_c - v_u
        omega = self.omega(as_batch(gamma, g), _rf_time(ctx.path, float(ctx.t)))
        k = dot(g, n).div_(sq_norm(n).add_(EPS))  # <g, n>/||n||²  (batch,) float64
        damp = k.mul_(omega * (1 - self.beta))  # v̂ = v_u + ω_t·g − ω_t(1 − β)k·n
        if isinstance(omega, float):
            v_hat = torch.add(v_u, g, alpha=omega)
        else:
            v_hat = torch.addcmul(v_u, per_sample(omega, g), g)
        v_hat = torch.addcmul(v_hat, per_sample(damp, n), n, value=-1.0)
        return keep_neutral(preds.pair(v_hat, self.space), preds, gamma)

    def params(self) -> dict[str, Any]:
        return {"beta": self.beta, "kappa": self.kappa, "omega_min": self.omega_min}
