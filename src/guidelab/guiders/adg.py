"""Angle Domain Guidance (ADG, arXiv 2506.11039; METHODS.md §5, official code read).

Guidance as a bounded turn of the conditional clean estimate away from the unconditional one, instead of a
linear extrapolation: the norm can grow at most by the factor √(1 + sin 2a·sin θ).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from guidelab.guiders._checks import check_flag, check_number
from guidelab.guiders._common import EPS, ScheduledGuider, Step, as_batch, dot, per_sample, sq_norm
from guidelab.guiders.base import GuidedStep, Scale, StepContext
from guidelab.guiders.registry import register_guider
from guidelab.guiders.schedules import Schedule

__all__ = ["ADG"]


@register_guider
class ADG(ScheduledGuider):
    """Angle Domain Guidance: turn x0̂_c away from x0̂_u by an angle that grows with γ, capped.

    Per sample, in x0 space, with F = x0̂_c and B = x0̂_u (one vector each)::

        θ  = ∠(F, B)                              (clamped cosine; atan2(|F⊥|/|F|, cos θ), in float64)
        a  = min((γ − 1)₊·θ, θ_max)               θ_max = π/3
        q  = (F − proj_B F)/sin θ                 (|q| = |F|)
        x0̂ = cos(a)·F + sin(a)·q

    so ``||x0̂||² = ||F||²(1 + sin 2a·sin θ)``: the norm is bounded, but this is not an exact rotation, and it
    is implemented as written. Where F⊥ vanishes (F and B parallel or antiparallel, sin θ = 0) the turn
    has no plane and x0̂ = F, the small-angle limit, which keeps the norm identity. The pair is then taken
    back to (x0̂, ε̂) with x_t fixed. At F = 0, x0̂ = 0 (the limit: |x0̂| ≤ √2·|F|). At B = 0 the angle is
    undefined; the ε in the cosine's denominator makes cos θ = 0, θ = π/2 and q = F, so x0̂ = (cos a + sin a)·F:
    the limit along any B ⊥ F, reached continuously once ||F||·||B|| ≪ ε.
    Ablations: ``norm_rescale`` rescales x0̂ to exactly ||F||;
    ``theta_max=None`` removes the angle cap.

    Args:
        schedule: the scale γ(step); a number means constant. γ ≤ 1 gives the conditional prediction.
        theta_max: angle cap in radians, in (0, π]; ``None`` for no cap (ablation).
        norm_rescale: rescale x0̂ to ||F|| (ablation).
    """

    name = "adg"
    space = "x0"
    source = "arXiv 2506.11039"

    def __init__(
        self, schedule: Schedule | Scale = 1.0, theta_max: float | None = math.pi / 3, norm_rescale: bool = False
    ):
        super().__init__(schedule)
        self.theta_max = (
            None if theta_max is None else check_number("theta_max", theta_max, lo=0.0, hi=math.pi, lo_open=True)
        )
        self.norm_rescale = check_flag("norm_rescale", norm_rescale)

    def combine(self, step: Step, ctx: StepContext, gamma: Scale) -> GuidedStep:
        f_in = step.get("cond", "x0")
        # float64 throughout: F⊥ is divided by sin θ, and in float32 its rounding is not orthogonal to B
        f, b = f_in.to(torch.float64), step.get("uncond", "x0").to(torch.float64)
        ff, bb, fb = sq_norm(f), sq_norm(b), dot(f, b)  # (batch,) float64
        k = fb / (bb + EPS)  # proj_B F = k·B
        f_perp = f - per_sample(k, f) * b
        n_f = ff.sqrt()
        n_perp = sq_norm(f_perp).sqrt()
        cos_theta = (fb / (n_f * bb.sqrt() + EPS)).clamp(-1.0, 1.0)
        theta = torch.atan2(n_perp / (n_f + EPS), cos_theta)
        g = as_batch(gamma, f)
        excess = max(g - 1.0, 0.0) if isinstance(g, float) else (g - 1).clamp_min(0.0)  # (γ − 1)₊
        a = excess * theta
        if self.theta_max is not None:
            a = a.clamp_max(self.theta_max)
        degenerate = n_perp <= EPS * (n_f + EPS)  # F ∥ B: no plane to turn in, x0̂ = F
        a = torch.where(degenerate, torch.zeros_like(a), a)
        q_coef = torch.sin(a) * n_f / n_perp.clamp_min(EPS)  # sin(a)·|F|/|F⊥|: sin(a)·q = q_coef·F⊥
        x0_hat = per_sample(torch.cos(a), f) * f + per_sample(q_coef, f) * f_perp
        if self.norm_rescale:
            x0_hat = x0_hat * per_sample(n_f / (sq_norm(x0_hat).sqrt() + EPS), f)
        return step.pair(x0_hat.to(f_in.dtype), self.space)

    def params(self) -> dict[str, Any]:
        return {"theta_max": self.theta_max, "norm_rescale": self.norm_rescale}
