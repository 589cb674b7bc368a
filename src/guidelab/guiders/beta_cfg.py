"""β-CFG, classifier-free guidance with adaptive scaling (Malarz et al. 2025, arXiv 2502.10574; docs/methods.md §6)."""

from __future__ import annotations

import math
from typing import Any

import torch

from guidelab.guiders._checks import check_flag, check_number
from guidelab.guiders.base import (
    COND,
    UNCOND,
    GuidedStep,
    Pass,
    Predictions,
    Scale,
    ScheduledGuider,
    StepContext,
    is_neutral,
)
from guidelab.guiders.combine import affine_pair
from guidelab.guiders.context import as_batch
from guidelab.guiders.reductions import EPS, norm
from guidelab.guiders.registry import register_guider
from guidelab.guiders.schedules import Schedule

__all__ = ["BetaCFG", "beta_pdf", "beta_pdf_max"]


def beta_pdf(p: float, a: float, b: float) -> float:
    """The Beta(a, b) density at p ∈ [0, 1] (a, b ≥ 1, so it is finite on the closed interval)."""
    log_norm = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    return p ** (a - 1) * (1 - p) ** (b - 1) * math.exp(-log_norm)


def beta_pdf_max(a: float, b: float) -> float:
    """The maximum of the Beta(a, b) density on [0, 1] (a, b ≥ 1): its value at the mode (a − 1)/(a + b − 2), which
    is 0 for a = 1 and 1 for b = 1; 1 for a = b = 1 (the uniform density)."""
    if a == 1 and b == 1:
        return 1.0
    return beta_pdf((a - 1) / (a + b - 2), a, b)


@register_guider
class BetaCFG(ScheduledGuider):
    """β-CFG: a Beta-density time profile and a normalized guidance direction, in ε space::

        ε̂ = ε̂_u + ω·Beta_pdf(p; a, b)/M·Δ/||Δ||^g,    Δ = ε̂_c − ε̂_u,   p = i/(N − 1)

    as in the official code (unnormalized density, M = 1, p = step/(N − 1); README example a = 2, b = 3, g = 1).
    ``normalize=True`` is the official ``get_from_beta(..., normalize=True)`` (gmum/beta-CFG,
    ``latent_diffusion.py``, ``latent_sdxl.py``): M = Beta_pdf(mode; a, b), the density's maximum, so the profile
    peaks at 1 and ω is the largest weight. The official default is ``False`` and no official sampler turns it on;
    the official code asserts a, b > 1 for it, here a = 1 or b = 1 use the maximum at p = 0 or 1 (1 for a = b = 1).
    The schedule gives ω (not a Ho-form γ: with g > 0 there is no setting of ω alone that is unguided); its
    neutral setting is a = b = 1, g = 0, ω = 1, which is the conditional prediction, and only then (the
    effective weight ω·Beta_pdf/M equal to 1 with g = 0) is the unconditional pass skipped. The rule is a
    per-sample affine combination of u and c (weights summing to 1), so once the weight is measured in ε it is
    formed in the model's own space and converted to the pair once (regular at pure noise, where x0̂ from ε̂
    alone is undefined); norms use max(||Δ||, ε).
    At Δ = 0 the guidance term Δ/||Δ||^g is 0 for every g (the limit for g < 1; for g ≥ 1 there is none, and
    0 keeps x̂ = ε̂_u = ε̂_c): the weight is set to 0 there, so ε^−g cannot overflow into inf·0.

    Args:
        schedule: ω(step); a number means constant.
        beta_a: Beta shape a ≥ 1.
        beta_b: Beta shape b ≥ 1.
        norm_power: exponent g ≥ 0 of the norm normalization (0 = none).
        normalize: divide the density by its maximum M (official option, default off as there).

    Raises:
        ValueError: a parameter out of range, naming it.
    """

    name = "beta-cfg"
    space = "eps"
    source = "arXiv 2502.10574"
    default_scale = None  # required: docs/methods.md §9

    def __init__(
        self,
        schedule: Schedule | Scale | None = None,
        beta_a: float = 2.0,
        beta_b: float = 3.0,
        norm_power: float = 1.0,
        normalize: bool = False,
    ):
        super().__init__(schedule)
        self.beta_a = check_number("beta_a", beta_a, lo=1.0)
        self.beta_b = check_number("beta_b", beta_b, lo=1.0)
        self.norm_power = check_number("norm_power", norm_power, lo=0.0)
        self.normalize = check_flag("normalize", normalize)

    def weight(self, ctx: StepContext) -> Scale:
        """The effective weight ω·Beta_pdf(p; a, b)/M at this step (M = 1, or the density's maximum with
        ``normalize``)."""
        profile = beta_pdf(ctx.progress, self.beta_a, self.beta_b)
        if self.normalize:
            profile /= beta_pdf_max(self.beta_a, self.beta_b)
        return self.schedule(ctx) * profile

    def passes(self, ctx: StepContext) -> tuple[Pass, ...]:
        if self.norm_power == 0 and is_neutral(self.weight(ctx)):
            return (COND,)
        return (COND, UNCOND)

    def combine(self, preds: Predictions, ctx: StepContext, gamma: Scale) -> GuidedStep:
        eps_c, eps_u = preds.get("cond", "eps"), preds.get("uncond", "eps")
        w = as_batch(self.weight(ctx), eps_c)
        if self.norm_power != 0:
            n = norm(eps_c - eps_u)
            w = w / n.clamp_min(EPS) ** self.norm_power  # ω·B(p)/||Δ||^g  (batch,) float64
            w = torch.where(n > 0, w, 0.0)  # Δ = 0: no guidance term
        return affine_pair(preds, w)

    def params(self) -> dict[str, Any]:
        return {
            "beta_a": self.beta_a,
            "beta_b": self.beta_b,
            "norm_power": self.norm_power,
            "normalize": self.normalize,
        }
