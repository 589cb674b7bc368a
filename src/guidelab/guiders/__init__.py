"""Guiders: one module per method family, all behind the contract of :mod:`guidelab.guiders.base`.

Every guider is registered by name (``build_guider(name, **params)``); every combiner whose rule has a scale
takes a ``schedule`` (:mod:`guidelab.guiders.schedules`). :func:`describe_guiders` lists them all. diffusers' own
guiders build as ``diffusers:ClassName`` (:class:`DiffusersGuider`; diffusers is imported only then).
"""

from guidelab.guiders import (
    feedback,  # noqa: F401 - registers feedback guidance, fbg (arXiv 2506.06085)
    learned,  # noqa: F401 - registers the learned guider (arXiv 2510.00815)
)
from guidelab.guiders.adamag import AdaMaG
from guidelab.guiders.adg import ADG
from guidelab.guiders.apg import APG
from guidelab.guiders.base import COND, UNCOND, GuidedStep, Guider, Pass, Predictions, ScheduledGuider, StepContext
from guidelab.guiders.beta_cfg import BetaCFG
from guidelab.guiders.cfg import CFG
from guidelab.guiders.cfg_pp import CFGPlusPlus
from guidelab.guiders.cfg_zero import CFGZeroStar
from guidelab.guiders.describe import describe_guiders, describe_schedules, schedule_table
from guidelab.guiders.diffusers_guiders import DiffusersGuider
from guidelab.guiders.mambo import MamboG
from guidelab.guiders.rectified_cfg_pp import RectifiedCFGPlusPlus
from guidelab.guiders.registry import GUIDERS, build_guider, guider_parameters, register_guider
from guidelab.guiders.rescale import GuidanceRescale
from guidelab.guiders.scales import extra_to_ho, ho_to_extra
from guidelab.guiders.schedules import (
    SCHEDULES,
    ConstantSchedule,
    IntervalSchedule,
    NegativeSwitchSchedule,
    NegativeWindowSchedule,
    Schedule,
    StepDownSchedule,
    StepUpSchedule,
    TVCFGSchedule,
    TVIntervalSchedule,
    WangSchedule,
    register_schedule,
)
from guidelab.guiders.tangential import TangentialCFG
from guidelab.guiders.thresholding import DynamicThresholding
from guidelab.guiders.weak_model import WeakModelGuidance

__all__ = [
    "ADG",
    "APG",
    "CFG",
    "COND",
    "GUIDERS",
    "SCHEDULES",
    "UNCOND",
    "AdaMaG",
    "BetaCFG",
    "CFGPlusPlus",
    "CFGZeroStar",
    "ConstantSchedule",
    "DiffusersGuider",
    "DynamicThresholding",
    "GuidanceRescale",
    "GuidedStep",
    "Guider",
    "IntervalSchedule",
    "MamboG",
    "NegativeSwitchSchedule",
    "NegativeWindowSchedule",
    "Pass",
    "Predictions",
    "RectifiedCFGPlusPlus",
    "Schedule",
    "ScheduledGuider",
    "StepContext",
    "StepDownSchedule",
    "StepUpSchedule",
    "TVCFGSchedule",
    "TVIntervalSchedule",
    "TangentialCFG",
    "WangSchedule",
    "WeakModelGuidance",
    "build_guider",
    "describe_guiders",
    "describe_schedules",
    "extra_to_ho",
    "guider_parameters",
    "ho_to_extra",
    "register_guider",
    "register_schedule",
    "schedule_table",
]
