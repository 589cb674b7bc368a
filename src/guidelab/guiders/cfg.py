"""Classifier-free guidance (Ho & Salimans 2022, arXiv 2207.12598): ``D̂ = u + γ·(c − u)``.

Linear, so the result is the same in every prediction space; combined here in the denoiser's x0 space.
"""

from __future__ import annotations

from typing import Any

from guidelab.guiders.base import GuidedStep, Predictions, ScheduledGuider, StepContext
from guidelab.guiders.combine import linear_step
from guidelab.guiders.context import Scale
from guidelab.guiders.registry import register_guider
from guidelab.guiders.schedules import Schedule

__all__ = ["CFG"]


@register_guider
class CFG(ScheduledGuider):
    """Classifier-free guidance ``x0̂ = x0̂_u + γ·(x0̂_c − x0̂_u)`` with γ from a schedule (default constant).

    Linear, so formed in the models' own space with scalar coefficients (the same result in every space) and
    converted to the pair once.

    Args:
        schedule: the weight schedule γ(step); a number means a constant scale.
    """

    name = "cfg"
    space = "x0"
    source = "arXiv 2207.12598"
    default_scale = 3.0  # docs/methods.md §9

    def __init__(self, schedule: Schedule | Scale | None = None):
        super().__init__(schedule)

    def combine(self, preds: Predictions, ctx: StepContext, gamma: Scale) -> GuidedStep:
        return linear_step(preds, gamma)

    def params(self) -> dict[str, Any]:
        return {}
