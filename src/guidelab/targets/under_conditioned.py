"""An imperfect model with an exact form: the denoiser of a target whose conditionals leak into the marginal.

A network trained with noisy labels, too little capacity for the label or too few steps learns a conditional that
is too broad. Its exact analogue is the posterior mean under the leaky conditional

    q(x | c) = (1 − ℓ)·p(x | c) + ℓ·p(x),       ℓ = ``leak`` ∈ (0, 1),

which on a path is the mixture of the two exact denoisers weighted by their noisy densities:

    D_q(x_t, c) = w·D(x_t, c) + (1 − w)·D(x_t, ∅),   w = (1 − ℓ)p_t(x_t | c) / ((1 − ℓ)p_t(x_t | c) + ℓ·p_t(x_t)).

The unconditional pass is exact (``q(x) = p(x)``). Sampled without guidance it draws from q(· | c), not p(· | c):
guidance with γ > 1 moves it back toward the class, so the fidelity-against-diversity trade-off of real models
appears with the true conditional known exactly (the imperfect-model setting of arXiv 2510.00815, where the
conditional network is the weaker one).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from guidelab.paths import NoisePath
from guidelab.targets.base import Target, TargetModel

__all__ = ["UnderConditionedDenoiser"]


class UnderConditionedDenoiser(TargetModel):
    """``E_q[x0 | x_t, c]`` under ``q(x | c) = (1 − leak)·p(x | c) + leak·p(x)`` (module docstring); x0 prediction.

    Args:
        target: the analytic target (its classes and exact densities).
        path: the noise path.
        leak: ℓ in (0, 1), the share of the marginal in every conditional.
    """

    def __init__(self, target: Target, path: NoisePath, leak: float):
        if not (isinstance(leak, (int, float)) and 0 < leak < 1):
            raise ValueError(f"leak: must lie in (0, 1), got {leak!r}")
        super().__init__(target, path)
        self.leak = float(leak)

    def __call__(self, x_t: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        uncond, conditional, has_class, labels = self.exact_pair(x_t, t, cond)
        if conditional is None:
            return uncond
        log_c = self.target.log_prob_t(x_t, t, self.path, labels) + math.log1p(-self.leak)
        log_u = self.target.log_prob_t(x_t, t, self.path, None) + math.log(self.leak)
        w = torch.sigmoid(log_c - log_u)[:, None]  # (1 − ℓ)p_c / ((1 − ℓ)p_c + ℓ p)
        mixed = w * conditional + (1 - w) * uncond
        return torch.where(has_class[:, None], mixed, uncond)

    def __repr__(self) -> str:
        return f"UnderConditionedDenoiser({self.target!r}, {self.path!r}, leak={self.leak})"
