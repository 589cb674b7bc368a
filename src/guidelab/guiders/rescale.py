"""Guidance rescale (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps Are Flawed",
arXiv 2305.08891, §3.4; docs/methods.md §6)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from guidelab.guiders import fused_jit
from guidelab.guiders._checks import check_guider_space, check_number
from guidelab.guiders.base import GuidedStep, Predictions, Scale, ScheduledGuider, StepContext
from guidelab.guiders.combine import eps_space_step
from guidelab.guiders.context import as_batch, per_sample
from guidelab.guiders.reductions import EPS, std, std_mean
from guidelab.guiders.registry import register_guider
from guidelab.guiders.schedules import Schedule

__all__ = ["GuidanceRescale"]

_CONSTANT_RTOL = 64  # std(x) ≤ 64·eps·|mean(x)| is a constant x (the two-pass std's rounding floor, D ≤ 2^64)


@register_guider
class GuidanceRescale(ScheduledGuider):
    """CFG followed by rescaling the guided prediction's per-sample standard deviation toward the conditional one::

        x = u + γ·(c − u)
        x ← φ·x·std(c)/std(x) + (1 − φ)·x

    φ = 0 is CFG. The paper works with v-prediction; ``space="velocity"`` (the default) is exactly that on every
    variance-preserving path, where guidelab's dx/dt is a per-time multiple of α·ε − σ·x0 and the std ratio is
    scale-free. ``space`` declares where it runs (diffusers applies it to whatever the model predicts). Ratios
    use (std(c) + ε)/(std(x) + ε).

    A guided prediction with zero variance (x constant per sample, up to the rounding of its mean) is left
    unchanged: no factor can give a constant x the standard deviation of c, and x·std(c)/std(x) has no limit as
    std(x) → 0 (it diverges wherever mean(x) ≠ 0), so the rescale is skipped as for φ = 0. std(c) = 0 is regular:
    x ← (1 − φ)·x, the limit of the rule.

    Args:
        schedule: the scale γ(step); a number means constant.
        phi: rescale strength φ ∈ [0, 1].
        space: prediction space the rule works in: ``x0``, ``eps``, ``velocity`` or ``score``.
    """

    name = "rescale"
    space = "velocity"
    source = "arXiv 2305.08891"
    default_scale = 3.0  # docs/methods.md §9

    def __init__(self, schedule: Schedule | Scale | None = None, phi: float = 0.7, space: str = "velocity"):
        super().__init__(schedule)
        self.phi = check_number("phi", phi, lo=0.0, hi=1.0)
        self.space = check_guider_space(space)

    def _rule(self, preds: Predictions, gamma: Scale, space: str) -> Tensor:
        c, u = preds.get("cond", space), preds.get("uncond", space)
        x = torch.lerp(u, c, per_sample(as_batch(gamma, c), c))
        if self.phi == 0:
            return x
        # φ·std(c)/std(x) + (1 − φ), population stds: only their ratio over the same entries enters
        std_x, mean_x = std_mean(x)
        factor = std(c).add_(EPS).div_(std_x + EPS).mul_(self.phi).add_(1 - self.phi)  # (batch,) float64
        # zero variance (a two-pass std of a constant row is |its mean's rounding error|, ≤ log2(D)·eps·|mean|)
        constant = std_x <= _CONSTANT_RTOL * torch.finfo(x.dtype).eps * mean_x.abs()
        factor = torch.where(constant, 1.0, factor)  # leave x unchanged
        return x * per_sample(factor, x)

    def combine(self, preds: Predictions, ctx: StepContext, gamma: Scale) -> GuidedStep:
        if not isinstance(gamma, Tensor):  # one compiled loop where it applies (guidelab.guiders.fused_jit)
            out = fused_jit.rescale(preds, float(gamma), self.phi, self.space)
            if out is not None:
                return out
        pred = self._rule(preds, gamma, self.space)
        return eps_space_step(preds, pred, self.space, lambda: self._rule(preds, gamma, "x0"))

    def params(self) -> dict[str, Any]:
        return {"phi": self.phi, "space": self.space}
