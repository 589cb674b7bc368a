"""guidelab: guidance for diffusion and flow-matching models, measured on exact targets."""

__version__ = "0.1.0"
