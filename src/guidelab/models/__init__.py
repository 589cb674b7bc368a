"""Denoisers: the protocol every model implements, and adapters (exact targets, networks)."""

from guidelab.models.base import NULL_COND, Denoiser, ExactDenoiser, as_cond

__all__ = ["NULL_COND", "Denoiser", "ExactDenoiser", "as_cond"]
