"""An imperfect model with a known best guidance scale: the exact conditional denoiser pulled toward the
unconditional one by a constant factor ρ.

    x0̂'(x_t, c) = ρ·x0̂(x_t, c) + (1 − ρ)·x0̂(x_t, ∅),      x0̂'(x_t, ∅) = x0̂(x_t, ∅),

with x0̂ the exact posterior mean of the target. Classifier-free guidance in x0 space,
``x0̂_u + γ·(x0̂'_c − x0̂_u) = x0̂_u + γρ·(x0̂_c − x0̂_u)``, gives back the exact conditional denoiser at
γ = 1/ρ at every step and every noise level, so the sampler then follows the exact conditional flow: sampled
with CFG at γ = 1/ρ this model draws p(x | c) (up to the solver's error), and no other constant γ does. That makes
it the known-optimum check of a tuner (``guidelab tune``): the scale that minimises the distance to the true
conditional is 1/ρ. (It is a constant-ρ version of the per-class, time-decaying under-fitting of the learned-
guidance reproduction, arXiv 2510.00815; ρ > 1 over-conditions and has its optimum at γ = 1/ρ < 1.)
"""

from __future__ import annotations

import torch
from torch import Tensor

from guidelab.paths import NoisePath
from guidelab.targets.base import Target, TargetModel

__all__ = ["ScaledConditionalDenoiser"]


class ScaledConditionalDenoiser(TargetModel):
    """``ρ·E[x0 | x_t, c] + (1 − ρ)·E[x0 | x_t]`` for a class, ``E[x0 | x_t]`` for the null class (module
    docstring); x0 prediction.

    Args:
        target: the analytic target (its exact posterior means).
        path: the noise path.
        rho: ρ > 0, the share of the exact conditional in the conditional prediction (1: the exact denoiser).
    """

    def __init__(self, target: Target, path: NoisePath, rho: float):
        if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not rho > 0 or rho == float("inf"):
            raise ValueError(f"rho: must be a finite number > 0, got {rho!r}")
        super().__init__(target, path)
        self.rho = float(rho)

    def __call__(self, x_t: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        uncond, conditional, has_class, _ = self.exact_pair(x_t, t, cond)
        if conditional is None:
            return uncond
        scaled = self.rho * conditional + (1 - self.rho) * uncond  # ρ·x0̂_c + (1 − ρ)·x0̂_u
        return torch.where(has_class[:, None], scaled, uncond)

    def __repr__(self) -> str:
        return f"ScaledConditionalDenoiser({self.target!r}, {self.path!r}, rho={self.rho})"
