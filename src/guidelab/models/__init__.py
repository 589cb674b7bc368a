"""Networks and adapters that meet the Denoiser contract (:mod:`guidelab.denoiser`): the small conditional MLP
denoiser and the learned guidance-weight network."""

from guidelab.models.guidance_weights import GuidanceWeights, load_weights, save_weights
from guidelab.models.mlp import MLPDenoiser

__all__ = ["GuidanceWeights", "MLPDenoiser", "load_weights", "save_weights"]
