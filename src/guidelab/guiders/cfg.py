"""Classifier-free guidance (Ho & Salimans 2022, arXiv 2207.12598): ``D̂ = u + γ·(c − u)``.

Linear, so the result is the same in every prediction space; combined here in the denoiser's x0 space.
"""

from __future__ import annotations

from typing import Any

from guidelab.guiders._common import Step, linear_step
from guidelab.guiders.base import (
    COND,
    UNCOND,
    GuidedStep,
    Guider,
    Pass,
    Predictions,
    StepContext,
    is_neutral,
)
from guidelab.guiders.registry import register_guider
from guidelab.guiders.schedules import ConstantSchedule, Schedule

__all__ = ["CFG"]


@register_guider
class CFG(Guider):
    """Classifier-free guidance ``x0̂ = x0̂_u + γ·(x0̂_c − x0̂_u)`` with γ from a schedule (default constant).

    Args:
        schedule: the weight schedule γ(step); a number means a constant scale.
    """

    name = "cfg"
    space = "x0"
    source = "arXiv 2207.12598"

    def __init__(self, schedule: Schedule | float = 1.0):
        self.schedule = schedule if isinstance(schedule, Schedule) else ConstantSchedule(schedule)

    def passes(self, ctx: StepContext) -> tuple[Pass, ...]:
        return (COND,) if is_neutral(self.schedule(ctx)) else (COND, UNCOND)

    def guide(self, preds: Predictions, ctx: StepContext) -> GuidedStep:
        if "uncond" not in preds:
            return Step(preds, ctx).cond_pair()
        # linear, so formed in the models' own space with scalar coefficients (same result in every space)
        return linear_step(preds, ctx, self.schedule(ctx))

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "schedule": self.schedule.spec()}
