"""MAMBO-G, magnitude-aware mitigation for boosted guidance (Zhu et al. 2025, arXiv 2508.03442; docs/methods.md §6)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from guidelab.guiders import fused_jit
from guidelab.guiders._checks import check_guider_space, check_number
from guidelab.guiders.base import GuidedStep, Predictions, Scale, ScheduledGuider, StepContext
from guidelab.guiders.combine import affine_pair
from guidelab.guiders.context import as_batch
from guidelab.guiders.reductions import EPS, needs_grad, norm, norms, plus_eps, scaled_ratio
from guidelab.guiders.registry import register_guider
from guidelab.guiders.schedules import Schedule

__all__ = ["MamboG"]


@register_guider
class MamboG(ScheduledGuider):
    """MAMBO-G: damp the scale where the guidance update is large relative to the prediction::

        r  = ||c − u||/||u||                (per sample, in the declared space)
        γ' = 1 + (γ − 1)·exp(−α·r)
        x̂  = u + γ'·(c − u)

    γ = 1 is the conditional prediction. The paper applies it to flow velocities (SD3.5, Lumina, Wan), the
    default space. The rule is a per-sample affine combination of u and c (weights summing to 1), so once γ' is
    known the combination is the same in every space: it is formed in the model's own space and converted to the
    pair once, regular wherever the model's own predictions are (also at pure noise for ``space="eps"``).
    At u = 0 with c ≠ 0, r = ||c||/ε is huge and γ' = 1 (x̂ = c), the limit of r → ∞ as u → 0; at c = u = 0,
    x̂ = 0.

    Args:
        schedule: the scale γ(step); a number means constant.
        alpha: damping rate α ≥ 0 (α = 0 is CFG).
        space: prediction space r is measured in: ``x0``, ``eps``, ``velocity`` or ``score``.
    """

    name = "mambo-g"
    space = "velocity"
    source = "arXiv 2508.03442"
    default_scale = 3.0  # docs/methods.md §9

    def __init__(self, schedule: Schedule | Scale | None = None, alpha: float = 8.0, space: str = "velocity"):
        super().__init__(schedule)
        self.alpha = check_number("alpha", alpha, lo=0.0)
        self.space = check_guider_space(space)

    def damped_scale(self, preds: Predictions, gamma: Scale) -> Scale:
        """γ' per sample (batch,) float64 (a number when α = 0 and γ is a number)."""
        c, u = preds.get("cond", self.space), preds.get("uncond", self.space)
        g = as_batch(gamma, c)
        if self.alpha == 0:
            return g
        r = norm(c - u).div_(norm(u).add_(EPS))  # ||Δ||/||u||  (batch,) float64
        return torch.exp(r * -self.alpha) * (g - 1) + 1  # 1 + (γ − 1)·exp(−α·r) (exp's output kept for autograd)

    def combine(self, preds: Predictions, ctx: StepContext, gamma: Scale) -> GuidedStep:
        if not isinstance(gamma, Tensor):  # one compiled loop where it applies (guidelab.guiders.fused_jit)
            out = fused_jit.mambo(preds, float(gamma), self.alpha, self.space)
            if out is not None:
                return out
        src = preds.space("cond")
        fusable = self.alpha != 0 and self.space == src == preds.space("uncond") and not isinstance(gamma, Tensor)
        if fusable and not needs_grad(*(preds.raw(name)[0] for name in ("cond", "uncond"))):
            # x̂ = u + γ'·(c − u) = c + (γ − 1)·exp(−α·r)·(c − u): Δ, two norms and one product-sum in the model's
            # own space, the per-sample weight in float64 rounded once to the predictions' dtype
            c, u = preds.get("cond", src), preds.get("uncond", src)
            delta = c - u
            r = scaled_ratio(norms(delta), plus_eps(norms(u)), -self.alpha, delta, dtype=torch.float64)  # −α·r
            w = torch.mul(r.exp_(), float(gamma) - 1, out=torch.empty_like(r, dtype=c.dtype))  # (γ − 1)·exp(−α·r)
            return preds.pair(torch.addcmul(c, w, delta), src)
        return affine_pair(preds, self.damped_scale(preds, gamma))

    def params(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "space": self.space}
