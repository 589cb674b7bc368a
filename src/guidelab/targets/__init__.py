"""Analytic targets with exact noisy densities and denoisers on any path: Gaussian and box mixtures with
classes, a score-error wrapper, an under-conditioned (leaky) denoiser, a scaled-conditional one (a known best
guidance scale), and the registry of named and file-defined targets."""

from guidelab.targets.base import ExactDenoiser, Target
from guidelab.targets.box_mixture import BoxMixture
from guidelab.targets.gaussian_mixture import GaussianMixture
from guidelab.targets.registry import TargetSpec, get_target, list_targets, load_target_file
from guidelab.targets.scaled_conditional import ScaledConditionalDenoiser
from guidelab.targets.score_error import ScoreErrorDenoiser
from guidelab.targets.under_conditioned import UnderConditionedDenoiser

__all__ = [
    "BoxMixture",
    "ExactDenoiser",
    "GaussianMixture",
    "ScaledConditionalDenoiser",
    "ScoreErrorDenoiser",
    "Target",
    "TargetSpec",
    "UnderConditionedDenoiser",
    "get_target",
    "list_targets",
    "load_target_file",
]
