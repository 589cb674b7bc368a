"""Guiders: one module per method family, all behind the contract of :mod:`guidelab.guiders.base`."""

from guidelab.guiders.base import COND, UNCOND, GuidedStep, Guider, Pass, Predictions, StepContext
from guidelab.guiders.cfg import CFG
from guidelab.guiders.registry import GUIDERS, build_guider, guider_parameters, register_guider
from guidelab.guiders.schedules import SCHEDULES, ConstantSchedule, Schedule, register_schedule

__all__ = [
    "CFG",
    "COND",
    "GUIDERS",
    "SCHEDULES",
    "UNCOND",
    "ConstantSchedule",
    "GuidedStep",
    "Guider",
    "Pass",
    "Predictions",
    "Schedule",
    "StepContext",
    "build_guider",
    "guider_parameters",
    "register_guider",
    "register_schedule",
]
