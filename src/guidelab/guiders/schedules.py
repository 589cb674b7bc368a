"""Guidance-weight schedules γ(step): a schedule maps a :class:`StepContext` to the scale γ (Ho form,
``guided = u + γ·(c − u)``; γ = 1 is the conditional model). See METHODS.md §1.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from guidelab.guiders.base import Scale, StepContext, scale_from_config, scale_to_config

__all__ = ["SCHEDULES", "ConstantSchedule", "Schedule", "register_schedule"]

SCHEDULES: dict[str, type[Schedule]] = {}


def register_schedule(cls: type[Schedule]) -> type[Schedule]:
    """Class decorator: make a schedule buildable by its ``name``."""
    SCHEDULES[cls.name] = cls
    return cls


class Schedule(ABC):
    """γ as a function of the step; scalars or per-sample tensors (batch,)."""

    name: ClassVar[str]
    source: ClassVar[str] = ""

    @abstractmethod
    def __call__(self, ctx: StepContext) -> Scale:
        """γ at this step."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """Parameters (without the name) that rebuild this schedule."""

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({params})"


@register_schedule
class ConstantSchedule(Schedule):
    """γ_i = scale at every step (Ho & Salimans 2022, arXiv 2207.12598)."""

    name = "constant"
    source = "arXiv 2207.12598"

    def __init__(self, scale: Scale = 1.0):
        self.scale = scale_from_config(scale)

    def __call__(self, ctx: StepContext) -> Scale:
        return self.scale

    def config(self) -> dict[str, Any]:
        return {"scale": scale_to_config(self.scale)}
