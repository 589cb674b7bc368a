"""Tangential damping CFG (TCFG, Kwon et al. 2025, arXiv 2503.18137; docs/methods.md §6)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from guidelab.guiders import fused_jit
from guidelab.guiders._checks import check_guider_space
from guidelab.guiders.base import GuidedStep, Predictions, Scale, ScheduledGuider, StepContext
from guidelab.guiders.combine import eps_space_step
from guidelab.guiders.context import as_batch, per_sample
from guidelab.guiders.reductions import dot, sq_norm
from guidelab.guiders.registry import register_guider
from guidelab.guiders.schedules import Schedule

__all__ = ["TangentialCFG", "top_singular_projection"]


def top_singular_projection(c: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """Coefficients (p, q) (batch,) float64 with ``(u·v₁)·v₁ = p·c + q·u``, v₁ the top right singular vector of the
    2 × D matrix M = [c; u] of each sample.

    Closed form through the 2 × 2 Gram matrix G = M·Mᵀ = [[a, b], [b, d]]: its top eigenvector e = (e₀, e₁)
    gives v₁ = Mᵀe/√μ₁ and u·v₁ = √μ₁·e₁, hence (u·v₁)·v₁ = e₁·(e₀·c + e₁·u): three dot products instead of an
    SVD. When the top singular value is not unique (c ⊥ u with equal norms, or c = u = 0) v₁ is arbitrary; the
    projection is then taken as 0 (there is no limit at c ⊥ u, |c| = |u|: u' → 0 from |c| > |u|, → u from
    |c| < |u|; at c = u = 0 it is the limit). u = 0 gives u' = 0 and c = 0 gives u' = u, the limits.
    """
    a, b, d = sq_norm(c), dot(c, u), sq_norm(u)
    mu = 0.5 * (a + d) + torch.hypot(0.5 * (a - d), b)  # top eigenvalue μ₁ of G
    use_first = a >= d  # the better-conditioned of the two eigenvector formulas
    e0 = torch.where(use_first, mu - d, b)
    e1 = torch.where(use_first, b, mu - a)
    scale = torch.maximum(e0.abs(), e1.abs())  # normalize in two stages: e0² + e1² may underflow
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    e0, e1 = e0 / scale, e1 / scale
    sq = e0 * e0 + e1 * e1  # in [1, 2], or 0 when the top singular value is not unique
    inv = torch.where(sq > 0, 1 / torch.where(sq > 0, sq, torch.ones_like(sq)), torch.zeros_like(sq))
    return e0 * e1 * inv, e1 * e1 * inv  # e₁e₀, e₁² for the unit eigenvector


@register_guider
class TangentialCFG(ScheduledGuider):
    """Tangential damping CFG: replace u by its projection on the dominant singular direction of [c; u]::

        [c; u] = U·S·Vᵀ  (per sample, one row each),   u' = (u·v₁)·v₁,   x̂ = u' + γ·(c − u')

    removing the component of the unconditional prediction that is tangential to the conditional manifold.
    γ = 1 is the conditional prediction. The paper works with scores, where ε and the score differ by a
    per-time factor that leaves the singular vectors unchanged, so ``space="eps"`` (the default) is the paper's;
    diffusers applies it to whatever the model predicts. In ε or score space at pure noise (α = 0, where every
    ε̂ equals x_t) the clean estimate comes from the same rule in x0.

    Args:
        schedule: the scale γ(step); a number means constant.
        space: prediction space the rule works in: ``x0``, ``eps``, ``velocity`` or ``score``.
    """

    name = "tangential"
    space = "eps"
    source = "arXiv 2503.18137"
    default_scale = 3.0  # docs/methods.md §9

    def __init__(self, schedule: Schedule | Scale | None = None, space: str = "eps"):
        super().__init__(schedule)
        self.space = check_guider_space(space)

    def _rule(self, preds: Predictions, gamma: Scale, space: str) -> Tensor:
        c, u = preds.get("cond", space), preds.get("uncond", space)
        p, q = top_singular_projection(c, u)  # u' = p·c + q·u
        g = as_batch(gamma, c)
        # x̂ = γ·c + (1 − γ)·u' = (γ + (1 − γ)p)·c + (1 − γ)q·u
        return per_sample(g + (1 - g) * p, c) * c + per_sample((1 - g) * q, u) * u

    def combine(self, preds: Predictions, ctx: StepContext, gamma: Scale) -> GuidedStep:
        if not isinstance(gamma, Tensor):  # one compiled loop where it applies (guidelab.guiders.fused_jit)
            out = fused_jit.tangential(preds, float(gamma), self.space)
            if out is not None:
                return out
        pred = self._rule(preds, gamma, self.space)
        return eps_space_step(preds, pred, self.space, lambda: self._rule(preds, gamma, "x0"))

    def params(self) -> dict[str, Any]:
        return {"space": self.space}
