"""CFG-Zero* (Fan et al. 2025, arXiv 2503.18886; docs/methods.md §6): an optimized scale on the unconditional
velocity, and zero velocity for the first steps."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from guidelab.guiders import fused_jit
from guidelab.guiders._checks import check_flag, check_int
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
from guidelab.guiders.context import as_batch, per_sample
from guidelab.guiders.reductions import EPS, dot, dots, needs_grad, norms, scaled_ratio, sq_norm, sq_plus_eps
from guidelab.guiders.registry import register_guider
from guidelab.guiders.schedules import Schedule

__all__ = ["CFGZeroStar"]


@register_guider
class CFGZeroStar(ScheduledGuider):
    """CFG-Zero*, in flow-velocity space::

        s* = <v_c, v_u>/||v_u||²                      (per sample)
        v̂  = s*·v_u + γ·(v_c − s*·v_u)

    and ``v̂ = 0`` at the first ``zero_init_steps`` steps (step index i < K, every stage of the step). A
    zero-init step needs no prediction at all, so it asks for no pass (zero network evaluations). With the
    scale fixed to s* = 1 (``optimized_scale=False``) and ``zero_init_steps=0`` it is CFG. At v_u = 0, s* = 0
    (v̂ = γ·v_c) as in the official code, whose ε in ||v_u||² + ε gives s*·v_u → 0 once ||v_u||² ≪ ε (at exactly 0
    the projection of v_c on v_u has no direction).

    K counts steps; the official code's ``zero_steps`` is the last zeroed step index, inclusive
    (WeichenFan/CFG-Zero-star, ``models/sd/sd3_pipeline.py`` and its flux, wan, hunyuan, Cogview4, HiDream and
    easycontrol pipelines: ``if (i <= zero_steps) and use_zero_init``). So official ``zero_steps = Z`` is
    ``zero_init_steps = Z + 1`` here, and ``use_zero_init=False`` is ``zero_init_steps = 0``. Its Wan
    image-to-video script (``models/wan/image2video_cfg_zero_star.py``) calls the same inclusive index
    ``zero_init_steps`` (``i <= zero_init_steps``; its 0, "2.5% zero out" of 40 steps, is K = 1 here). Default
    K = 1, the official default ``zero_steps=0`` (one zeroed step; its HiDream pipeline defaults to 1, two
    steps). diffusers' ``zero_init_steps`` (``guiders/classifier_free_zero_star_guidance.py``,
    ``step < zero_init_steps``) is this K.

    Args:
        schedule: the scale γ(step); a number means constant.
        optimized_scale: use s*; ``False`` fixes s* = 1.
        zero_init_steps: number K ≥ 0 of initial steps with zero velocity (the official ``zero_steps`` + 1).
    """

    name = "cfg-zero-star"
    space = "velocity"
    source = "arXiv 2503.18886"
    default_scale = 3.0  # docs/methods.md §9

    def __init__(
        self, schedule: Schedule | Scale | None = None, optimized_scale: bool = True, zero_init_steps: int = 1
    ):
        super().__init__(schedule)
        self.optimized_scale = check_flag("optimized_scale", optimized_scale)
        self.zero_init_steps = check_int("zero_init_steps", zero_init_steps)

    def passes(self, ctx: StepContext) -> tuple[Pass, ...]:
        if ctx.index < self.zero_init_steps:
            return ()
        return (COND,) if is_neutral(self.schedule(ctx)) else (COND, UNCOND)

    def guide(self, preds: Predictions, ctx: StepContext) -> GuidedStep:
        if ctx.index < self.zero_init_steps:
            return preds.pair(torch.zeros_like(preds.x_t), self.space)
        return super().guide(preds, ctx)

    def combine(self, preds: Predictions, ctx: StepContext, gamma: Scale) -> GuidedStep:
        if not isinstance(gamma, Tensor):  # one compiled loop where it applies (guidelab.guiders.fused_jit)
            g = float(gamma)
            out = fused_jit.cfg_zero(preds, g) if self.optimized_scale else fused_jit.linear(preds, g)
            if out is not None:
                return out
        v_c, v_u = preds.get("cond", "velocity"), preds.get("uncond", "velocity")
        g = as_batch(gamma, v_c)
        if not self.optimized_scale:
            return preds.pair(torch.lerp(v_u, v_c, per_sample(g, v_c)), self.space)
        if isinstance(g, float) and g != 0 and not needs_grad(v_c, v_u):
            # v̂ = γ·(v_c + ((1 − γ)/γ)·s*·v_u): one product-sum, γ folded into the conversion to the pair
            w = scaled_ratio(dots(v_c, v_u), sq_plus_eps(norms(v_u)), (1 - g) / g, v_c)  # ((1−γ)/γ)·s*  (batch, 1, ...)
            return preds.pair(torch.addcmul(v_c, w, v_u), self.space, scale=g)
        s_star = dot(v_c, v_u).div_(sq_norm(v_u).add_(EPS))  # <v_c, v_u>/||v_u||²  (batch,) float64
        # v̂ = γ·v_c + (1 − γ)·s*·v_u
        if isinstance(g, float):
            v_hat = torch.addcmul(v_c * g, per_sample(s_star, v_u), v_u, value=1 - g)
        else:
            v_hat = torch.addcmul(v_c * per_sample(g, v_c), per_sample(s_star.mul_(1 - g), v_u), v_u)
        return preds.pair(v_hat, self.space)

    def params(self) -> dict[str, Any]:
        return {"optimized_scale": self.optimized_scale, "zero_init_steps": self.zero_init_steps}
