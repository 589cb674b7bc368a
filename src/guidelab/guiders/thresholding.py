"""Dynamic thresholding (Saharia et al. 2022, Imagen, arXiv 2205.11487 §2.3; METHODS.md §6)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from guidelab.guiders._checks import check_number
from guidelab.guiders._common import ScheduledGuider, Step, as_batch, flat, keep_neutral, per_sample
from guidelab.guiders.base import GuidedStep, Scale, StepContext
from guidelab.guiders.registry import register_guider
from guidelab.guiders.schedules import Schedule

__all__ = ["DynamicThresholding"]


def upper_quantile(x: Tensor, q: float) -> Tensor:
    """``torch.quantile(x, q, dim=1)`` (linear interpolation, as numpy's percentile) from the top order statistics
    only: a partial top-k instead of a full sort, (batch,)."""
    n = x.shape[1]
    pos = q * (n - 1)
    lo = math.floor(pos)
    frac = pos - lo
    top = torch.topk(x, n - lo, dim=1, sorted=True).values  # descending: top[:, -1] is order statistic lo
    below = top[:, -1]
    if frac == 0 or n - lo < 2:
        return below
    return torch.lerp(below, top[:, -2], frac)


@register_guider
class DynamicThresholding(ScheduledGuider):
    """CFG in x0 space, then Imagen's dynamic thresholding of the guided clean estimate, per sample::

        x0̂ = x0̂_u + γ·(x0̂_c − x0̂_u)
        s   = max(quantile(|x0̂|, p), 1)
        x0̂ ← clip(x0̂, −s, s)/s

    The sampler denoises with the clipped x0̂ and renoises with the ε̂ of the *unclipped* guided prediction
    (the pair view), so only the clean estimate is thresholded. It assumes data in [−1, 1]. γ = 1 means
    unguided: the conditional pair, not thresholded.

    Args:
        schedule: the scale γ(step); a number means constant.
        percentile: the quantile p ∈ (0, 1] of |x0̂| (linear interpolation, as numpy's percentile).
    """

    name = "dynamic-thresholding"
    space = "x0"
    source = "arXiv 2205.11487"

    def __init__(self, schedule: Schedule | Scale = 1.0, percentile: float = 0.995):
        super().__init__(schedule)
        self.percentile = check_number("percentile", percentile, lo=0.0, hi=1.0, lo_open=True)

    def combine(self, step: Step, ctx: StepContext, gamma: Scale) -> GuidedStep:
        c, u = step.get("cond", "x0"), step.get("uncond", "x0")
        x0_guided = torch.lerp(u, c, per_sample(as_batch(gamma, c), c))
        eps_hat = step.pair(x0_guided, self.space).eps_hat  # ε̂ of the unclipped guided prediction
        s = upper_quantile(flat(x0_guided).abs(), self.percentile).clamp_min_(1.0)  # (batch,)
        s = s.reshape(-1, *([1] * (c.ndim - 1)))
        x0_hat = torch.clamp(x0_guided, -s, s) / s
        return keep_neutral(GuidedStep(x0_hat, eps_hat), step, gamma)

    def params(self) -> dict[str, Any]:
        return {"percentile": self.percentile}
