"""Learned guidance weights ω_φ(c, s, t) by self-consistency (Learn to Guide, Galashov et al., arXiv 2510.00815)."""

from guidelab.learn.config import LearnConfig, LearnResult
from guidelab.learn.data import build_denoiser, image_data, target_data
from guidelab.learn.losses import energy_distance_loss, guided_ddim_step, sample_time_pairs
from guidelab.learn.trainer import learn
from guidelab.models.guidance_weights import GuidanceWeights, load_weights, log_noise_level, save_weights

__all__ = [
    "GuidanceWeights",
    "LearnConfig",
    "LearnResult",
    "build_denoiser",
    "energy_distance_loss",
    "guided_ddim_step",
    "image_data",
    "learn",
    "load_weights",
    "log_noise_level",
    "sample_time_pairs",
    "save_weights",
    "target_data",
]
