"""CFG++ (Chung et al. 2024, arXiv 2406.08070; METHODS.md §6): denoise with the guided clean estimate, renoise
with the unconditional noise estimate. A sampler-level method, expressed through the guided pair."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from guidelab.guiders._common import ScheduledGuider, Step, as_batch, keep_neutral, per_sample
from guidelab.guiders.base import GuidedStep, Scale, StepContext
from guidelab.guiders.registry import register_guider
from guidelab.guiders.schedules import ConstantSchedule, Schedule

__all__ = ["CFGPlusPlus"]


def _check_lam(value: Scale) -> None:
    bad = bool(((value < 0) | (value > 1)).any()) if isinstance(value, Tensor) else not 0 <= value <= 1
    if bad:
        raise ValueError(f"scale: CFG++'s λ must lie in [0, 1], got {value}")


@register_guider
class CFGPlusPlus(ScheduledGuider):
    """CFG++: the pair ``x0̂ = x0̂_u + λ·(x0̂_c − x0̂_u)``, ``ε̂ = ε̂_u``, λ ∈ [0, 1].

    On a DDIM step this is exactly ``x_s = α_s·x0̂_λ + σ_s·ε̂_u`` (denoise guided, renoise unconditional);
    every other sampler consumes the same pair (Euler: v = α'·x0̂_λ + σ'·ε̂_u). λ is the schedule's scale; λ = 1
    means unguided here as for every guider (the conditional pair (x0̂_c, ε̂_c), one evaluation), not
    (x0̂_c, ε̂_u); λ = 0 is the unconditional model. λ outside [0, 1] is an error (checked when the schedule
    gives it, and at construction for a constant one).

    Args:
        schedule: λ(step) ∈ [0, 1]; a number means constant.
    """

    name = "cfg++"
    space = "x0"
    source = "arXiv 2406.08070"

    def __init__(self, schedule: Schedule | Scale = 1.0):
        super().__init__(schedule)
        if isinstance(self.schedule, ConstantSchedule):
            _check_lam(self.schedule.scale)

    def combine(self, step: Step, ctx: StepContext, gamma: Scale) -> GuidedStep:
        if not isinstance(gamma, Tensor):
            _check_lam(gamma)
        c, u = step.get("cond", "x0"), step.get("uncond", "x0")
        x0_hat = torch.lerp(u, c, per_sample(as_batch(gamma, c), c))
        return keep_neutral(GuidedStep(x0_hat, step.get("uncond", "eps")), step, gamma)

    def params(self) -> dict[str, Any]:
        return {}
