"""A denoiser with a controlled score error: the setting of Chidambaram et al. (arXiv 2409.13074, Th. 3),
where any nonzero score error plus a large enough guidance scale puts samples outside the support.

The error is a smooth, bounded, seeded vector field added to the wrapped model's score,

    ŝ(x, t, c) = s(x, t, c) + δ·h(x, t, c),   h_j = tanh(g_j)/√D,   g_j = √(2/F)·Σ_f A_jf cos(ω_f·x + ν_f t + b_f),

with F random Fourier features (ω_f ~ N(0, ν²I), b_f ~ U[0, 2π), A_jf = ±1, ν_f ~ N(0, ν_t²)), so ``‖h‖ < 1``
everywhere and each g_j is approximately a unit-variance Gaussian field of length scale 1/ν. The features
are drawn from a generator seeded by (seed, condition): the conditional and the unconditional errors are
independent, so a guided score ``γ·ŝ_c + (1 − γ)·ŝ_u`` carries an error that grows like γ.

The error is added in score space and carried exactly to the model's space with x_t fixed:
``Δε = −σ·Δs``, ``Δx0 = σ²·Δs/α``, ``Δv = α'·Δx0 + σ'·Δε`` (no division by σ, so t → 0 is safe).
A fixed score error is an unbounded x0 error where α → 0 (pure noise on rf and vp-cosine), so for a
degraded model used on the whole path (a weak guide for autoguidance) put the error on x0 instead
(``error_space="x0"``: ``Δx0 = δ·h``, ``Δε = −α·Δx0/σ``), bounded at every t > 0.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from guidelab.denoiser import NULL_COND, Denoiser, as_cond
from guidelab.paths import PathCoefficients
from guidelab.validation import did_you_mean

__all__ = ["ScoreErrorDenoiser"]


class ScoreErrorDenoiser:
    """Wrap a denoiser and add a smooth bounded seeded error of norm < δ to its score.

    Args:
        base: any Denoiser (``path``, ``prediction``, ``__call__(x_t, t, cond)``).
        delta: error size δ ≥ 0; ``‖ŝ − s‖ < δ`` everywhere. δ = 0 returns the base prediction unchanged.
        seed: seed of the random features; the features of condition c come from (seed, c).
        num_features: F, the number of random Fourier features (default 16).
        frequency_scale: ν, the standard deviation of the spatial frequencies (default 1.0).
        time_frequency: ν_t, the standard deviation of the frequencies in t (default 0: the error does not
            depend on t).
        error_space: ``"score"`` (default; Chidambaram's setting) or ``"x0"`` (bounded where α = 0).
    """

    def __init__(
        self,
        base: Denoiser,
        delta: float,
        seed: int = 0,
        num_features: int = 16,
        frequency_scale: float = 1.0,
        time_frequency: float = 0.0,
        error_space: str = "score",
    ):
        for attr in ("path", "prediction"):
            if not hasattr(base, attr):
                raise ValueError(f"base: a Denoiser needs attribute {attr!r}; got {type(base).__name__}")
        if not (math.isfinite(delta) and delta >= 0):
            raise ValueError(f"delta: must be a finite number >= 0, got {delta}")
        if int(num_features) != num_features or num_features < 1:
            raise ValueError(f"num_features: must be a positive integer, got {num_features}")
        if not (math.isfinite(frequency_scale) and frequency_scale > 0):
            raise ValueError(f"frequency_scale: must be > 0, got {frequency_scale}")
        if not (math.isfinite(time_frequency) and time_frequency >= 0):
            raise ValueError(f"time_frequency: must be >= 0, got {time_frequency}")
        if error_space not in ("score", "x0"):
            raise ValueError(f"error_space: must be 'score' or 'x0', got {error_space!r}")
        self.error_space = error_space
        self.base = base
        self.path = base.path
        self.prediction = base.prediction
        self.delta = float(delta)
        self.seed = int(seed)
        self.num_features = int(num_features)
        self.frequency_scale = float(frequency_scale)
        self.time_frequency = float(time_frequency)
        self._features: dict[tuple[int, int, torch.dtype, torch.device], tuple[Tensor, ...]] = {}

    def _feature_params(self, cond: int, dim: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, ...]:
        """ω (D, F), ν (F,), b (F,), A (F, D) for condition ``cond``, drawn in float64 from seed (seed, cond)."""
        key = (cond, dim, dtype, device)
        if key not in self._features:
            state = np.random.SeedSequence([self.seed, cond - NULL_COND]).generate_state(2, dtype=np.uint64)
            gen = torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))
            F = self.num_features
            omega = self.frequency_scale * torch.randn(dim, F, generator=gen, dtype=torch.float64)
            nu = self.time_frequency * torch.randn(F, generator=gen, dtype=torch.float64)
            phase = 2 * math.pi * torch.rand(F, generator=gen, dtype=torch.float64)
            sign = torch.randint(0, 2, (F, dim), generator=gen).to(torch.float64) * 2 - 1
            amp = sign * math.sqrt(2.0 / F)
            self._features[key] = tuple(p.to(dtype=dtype, device=device) for p in (omega, nu, phase, amp))
        return self._features[key]

    def error(self, x_t: Tensor, t: Tensor | float, cond: Tensor | int | None) -> Tensor:
        """The score error δ·h(x_t, t, c), same shape as ``x_t`` (batch, ...); ``‖δ·h‖ < δ`` per sample."""
        batch = x_t.shape[0]
        x = x_t.reshape(batch, -1)
        D = x.shape[1]
        cond = as_cond(cond, batch, x_t.device)
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1).expand(batch)
        out = torch.empty_like(x)
        # One pass per distinct condition in the batch (typically two: c and null), not per sample.
        for c in torch.unique(cond).tolist():
            rows = torch.nonzero(cond == c).flatten()
            omega, nu, phase, amp = self._feature_params(int(c), D, x.dtype, x.device)
            arg = torch.addmm(phase, x[rows], omega) + t[rows, None] * nu  # (n_c, F) ω·x + ν t + b
            g = torch.cos(arg) @ amp  # (n_c, D) √(2/F)·Σ_f A_jf cos(·)
            out[rows] = torch.tanh(g) * (self.delta / math.sqrt(D))
        return out.reshape(x_t.shape)

    def __call__(self, x_t: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        pred = self.base(x_t, t, cond)
        if self.delta == 0:
            return pred
        err = self.error(x_t, t, cond)
        c = self.path.coefficients(torch.as_tensor(t, dtype=torch.float64)).expand_as(x_t)
        to_space = score_delta_in_space if self.error_space == "score" else x0_delta_in_space
        return pred + to_space(err, self.prediction, c).to(pred.dtype)

    def config(self) -> dict:
        """The error's parameters (the wrapped denoiser is not included)."""
        return {
            "delta": self.delta,
            "seed": self.seed,
            "num_features": self.num_features,
            "frequency_scale": self.frequency_scale,
            "time_frequency": self.time_frequency,
            "error_space": self.error_space,
        }

    def __repr__(self) -> str:
        return (
            f"ScoreErrorDenoiser({self.base!r}, delta={self.delta}, seed={self.seed}, "
            f"num_features={self.num_features}, frequency_scale={self.frequency_scale}, "
            f"time_frequency={self.time_frequency}, error_space={self.error_space!r})"
        )


def score_delta_in_space(d_score: Tensor, space: str, c: PathCoefficients) -> Tensor:
    """The change of a prediction in ``space`` when its score changes by ``d_score`` with x_t fixed.

    ``Δε = −σ·Δs``, ``Δx0 = −σ·Δε/α = σ²·Δs/α``, ``Δv = α'·Δx0 + σ'·Δε`` (docs/methods.md §0 conversions).
    """
    d_score = d_score.to(torch.promote_types(d_score.dtype, c.alpha.dtype))
    if space == "score":
        return d_score
    d_eps = -c.sigma * d_score
    if space == "eps":
        return d_eps
    d_x0 = c.sigma**2 * d_score / c.alpha
    if space == "x0":
        return d_x0
    if space == "velocity":
        return c.d_alpha * d_x0 + c.d_sigma * d_eps
    raise ValueError(f"prediction: unknown space {space!r}{did_you_mean(space, ('x0', 'eps', 'velocity', 'score'))}")


def x0_delta_in_space(d_x0: Tensor, space: str, c: PathCoefficients) -> Tensor:
    """The change of a prediction in ``space`` when its x0 changes by ``d_x0`` with x_t fixed.

    ``Δε = −α·Δx0/σ``, ``Δs = −Δε/σ``, ``Δv = α'·Δx0 + σ'·Δε`` (docs/methods.md §0 conversions).
    """
    d_x0 = d_x0.to(torch.promote_types(d_x0.dtype, c.alpha.dtype))
    if space == "x0":
        return d_x0
    d_eps = -c.alpha * d_x0 / c.sigma
    if space == "eps":
        return d_eps
    if space == "score":
        return -d_eps / c.sigma
    if space == "velocity":
        return c.d_alpha * d_x0 + c.d_sigma * d_eps
    raise ValueError(f"prediction: unknown space {space!r}{did_you_mean(space, ('x0', 'eps', 'velocity', 'score'))}")
