"""Noise paths ``x_t = α_t·x0 + σ_t·ε`` on ``t ∈ [0, 1]`` (t = 1 noise, t = 0 data) and exact
conversions between the prediction spaces x0, ε, velocity and score.

Every path gives its coefficients at once (:class:`PathCoefficients`, derivatives included), its noise
level ``λ = σ/α`` (the EDM σ) and the inverse ``t(λ)``, so settings given in λ (interval bounds, EDM
grids) transfer between paths. All paths reach the data at t = 0 (``σ_0 = 0``, ``λ_0 = 0``).

Conversions (given the path and ``x_t``; ``v = dx_t/dt = α'·x0 + σ'·ε``)::

    ε = (x_t − α·x0)/σ          x0 = (x_t − σ·ε)/α           score = −ε/σ
    x0 = (σ·v − σ'·x_t)/(σ·α' − σ'·α)     ε = (α·v − α'·x_t)/(α·σ' − α'·σ)

For rectified flow (α = 1 − t, σ = t) these reduce to ``v = ε − x0``, ``x0 = x_t − t·v``,
``ε = x_t + (1 − t)·v``.
"""

from __future__ import annotations

import functools
import inspect
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from guidelab.validation import did_you_mean

__all__ = [
    "PATHS",
    "SPACES",
    "DiscreteVPPath",
    "NoisePath",
    "OrnsteinUhlenbeckPath",
    "PathCoefficients",
    "PredictionSpace",
    "RectifiedFlowPath",
    "Scalars",
    "VPCosinePath",
    "VPLinearPath",
    "VarianceExplodingPath",
    "combine",
    "convert",
    "eps_to_score",
    "eps_to_x0",
    "get_path",
    "pair_coefficients",
    "path_scalars",
    "score_to_eps",
    "space_coefficients",
    "to_x0_eps",
    "velocity_from_x0_eps",
    "x0_to_eps",
]

PredictionSpace = Literal["x0", "eps", "velocity", "score"]
SPACES: tuple[str, ...] = ("x0", "eps", "velocity", "score")


@dataclass(frozen=True)
class PathCoefficients:
    """α_t, σ_t and their t-derivatives, shaped to broadcast against ``x_t`` (batch, 1, ..., 1)."""

    alpha: Tensor
    sigma: Tensor
    d_alpha: Tensor
    d_sigma: Tensor

    @property
    def lam(self) -> Tensor:
        """Noise level λ = σ/α (∞ where α = 0)."""
        return self.sigma / self.alpha

    def expand_as(self, x: Tensor) -> PathCoefficients:
        """Reshape per-sample (batch,) or scalar coefficients to broadcast against ``x`` (batch, ...)."""

        def shape(c: Tensor) -> Tensor:
            c = c.to(dtype=x.dtype, device=x.device)
            if c.ndim == 0:
                return c
            return c.reshape(c.shape[0], *([1] * (x.ndim - 1)))

        return PathCoefficients(shape(self.alpha), shape(self.sigma), shape(self.d_alpha), shape(self.d_sigma))


class NoisePath(ABC):
    """A Gaussian noise path ``x_t = α_t·x0 + σ_t·ε`` with t = 0 data and t = 1 noise.

    A path is an immutable value: two paths of the same class with the same :meth:`config` (which must name every
    parameter, as :func:`get_path` rebuilds a path from it) are equal and hash alike, so that the per-time cache of
    :func:`path_scalars` serves a path rebuilt from the same settings (``generate`` builds one per call).
    """

    name: str

    def _value_key(self) -> tuple[tuple, int]:
        """(config as a tuple, its hash), computed once: the config of an immutable path does not change."""
        key = self.__dict__.get("_value")
        if key is None:
            items = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in self.config().items())
            key = self.__dict__["_value"] = (items, hash((type(self), items)))
        return key

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self is other or self._value_key() == other._value_key()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return self._value_key()[1]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_value", None)  # its hash is per process (string hashes are salted): recomputed after unpickling
        return state

    @abstractmethod
    def coefficients(self, t: Tensor) -> PathCoefficients:
        """α, σ, dα/dt, dσ/dt at ``t`` (any shape; float tensor)."""

    @abstractmethod
    def t_of_lam(self, lam: Tensor) -> Tensor:
        """Inverse of the noise level: the t at which σ_t/α_t = λ (λ ≥ 0; may be ∞)."""

    def lam(self, t: Tensor) -> Tensor:
        """Noise level λ = σ_t/α_t."""
        c = self.coefficients(t)
        return c.sigma / c.alpha

    def rf_time(self, t: Tensor) -> Tensor:
        """The rectified-flow time ``s = σ/(α + σ) = λ/(1 + λ)`` ∈ [0, 1] at ``t`` (float64, any shape).

        The path-independent clock of schedules written in time (docs/methods.md §0): two paths at the same noise
        level λ have the same s, and on ``rf`` s = t exactly. α = 0 (pure noise) gives s = 1, σ = 0 (data) s = 0.
        """
        c = self.coefficients(_as_tensor(t).to(torch.float64))
        return c.sigma / (c.alpha + c.sigma)

    def diffusion_sq(self, t: Tensor) -> Tensor:
        """g(t)² of the forward SDE ``dx = (α'/α)·x dt + g dW``: ``g² = 2σσ' − 2(α'/α)σ²``."""
        c = self.coefficients(t)
        return 2 * c.sigma * c.d_sigma - 2 * (c.d_alpha / c.alpha) * c.sigma**2

    def config(self) -> dict:
        """Parameters that rebuild this path with :func:`get_path`."""
        return {"name": self.name}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"


def _as_tensor(t: Tensor | float) -> Tensor:
    if isinstance(t, Tensor):
        return t if t.is_floating_point() else t.double()
    return torch.tensor(float(t), dtype=torch.float64)


class RectifiedFlowPath(NoisePath):
    """Rectified flow / linear interpolant: α = 1 − t, σ = t; velocity ``v = ε − x0``."""

    name = "rf"

    def coefficients(self, t: Tensor) -> PathCoefficients:
        t = _as_tensor(t)
        return PathCoefficients(1 - t, t, -torch.ones_like(t), torch.ones_like(t))

    def t_of_lam(self, lam: Tensor) -> Tensor:
        lam = _as_tensor(lam)
        return torch.where(torch.isinf(lam), torch.ones_like(lam), lam / (1 + lam))

    def rf_time(self, t: Tensor) -> Tensor:
        """s = t exactly (σ/(α + σ) would round (1 − t) + t)."""
        return _as_tensor(t).to(torch.float64).clone()


class VPCosinePath(NoisePath):
    """Variance-preserving cosine path: α = cos(πt/2), σ = sin(πt/2), λ = tan(πt/2)."""

    name = "vp-cosine"

    def coefficients(self, t: Tensor) -> PathCoefficients:
        t = _as_tensor(t)
        h = 0.5 * math.pi
        # cos(π/2) is 6e-17 in float64: pin α(1) = 0 exactly so that λ(1) = ∞ as in theory.
        alpha = torch.where(t >= 1, torch.zeros_like(t), torch.cos(h * t))
        return PathCoefficients(alpha, torch.sin(h * t), -h * torch.sin(h * t), h * torch.cos(h * t))

    def t_of_lam(self, lam: Tensor) -> Tensor:
        return torch.atan(_as_tensor(lam)) / (0.5 * math.pi)


class VPLinearPath(NoisePath):
    """DDPM's variance-preserving path with linear β(t) = β_min + t(β_max − β_min):
    ``log α = −(β_min·t/2 + (β_max − β_min)·t²/4)``, σ = √(1 − α²) (Song et al. 2021, arXiv 2011.13456).
    """

    name = "vp-linear"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        if not 0 < beta_min < beta_max:
            raise ValueError(f"vp-linear: need 0 < beta_min < beta_max, got beta_min={beta_min}, beta_max={beta_max}")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def _log_alpha(self, t: Tensor) -> Tensor:
        return -(0.5 * self.beta_min * t + 0.25 * (self.beta_max - self.beta_min) * t**2)

    def coefficients(self, t: Tensor) -> PathCoefficients:
        t = _as_tensor(t)
        log_alpha = self._log_alpha(t)
        alpha = torch.exp(log_alpha)
        sigma = torch.sqrt(-torch.expm1(2 * log_alpha))
        d_log_alpha = -(0.5 * self.beta_min + 0.5 * (self.beta_max - self.beta_min) * t)
        d_alpha = alpha * d_log_alpha
        d_sigma = -(alpha**2) * d_log_alpha / sigma  # d√(1−α²)/dt = −α·α'/σ
        return PathCoefficients(alpha, sigma, d_alpha, d_sigma)

    def t_of_lam(self, lam: Tensor) -> Tensor:
        # −2 log α = log(1 + λ²) = β_min·t + (β_max − β_min)·t²/2: the positive root.
        lam = _as_tensor(lam)
        c = torch.log1p(lam**2)
        a = 0.5 * (self.beta_max - self.beta_min)
        b = self.beta_min
        return 2 * c / (b + torch.sqrt(b * b + 4 * a * c))

    def config(self) -> dict:
        return {"name": self.name, "beta_min": self.beta_min, "beta_max": self.beta_max}


class VarianceExplodingPath(NoisePath):
    """Variance-exploding (EDM) path: α = 1, σ = λ = σ_max·t (EDM's σ(t) = t, rescaled to t ∈ [0, 1]);
    Karras et al. 2022, arXiv 2206.00364. The smallest σ used is the grid's t_min."""

    name = "ve"

    def __init__(self, sigma_max: float = 80.0):
        if not sigma_max > 0:
            raise ValueError(f"ve: sigma_max must be > 0, got {sigma_max}")
        self.sigma_max = float(sigma_max)

    def coefficients(self, t: Tensor) -> PathCoefficients:
        t = _as_tensor(t)
        one = torch.ones_like(t)
        return PathCoefficients(one, self.sigma_max * t, torch.zeros_like(t), self.sigma_max * one)

    def t_of_lam(self, lam: Tensor) -> Tensor:
        return _as_tensor(lam) / self.sigma_max

    def config(self) -> dict:
        return {"name": self.name, "sigma_max": self.sigma_max}


class OrnsteinUhlenbeckPath(NoisePath):
    """The OU process of Chidambaram et al. (arXiv 2409.13074): ``x_τ = e^{−τ}x0 + √(1 − e^{−2τ})ε``,
    τ = T·t ∈ [0, T]. Forward SDE ``dx = −x dτ + √2 dW``, so ``g² = 2T`` per unit t."""

    name = "ou"

    def __init__(self, horizon: float = 10.0):
        if not horizon > 0:
            raise ValueError(f"ou: horizon T must be > 0, got {horizon}")
        self.horizon = float(horizon)

    def coefficients(self, t: Tensor) -> PathCoefficients:
        t = _as_tensor(t)
        T = self.horizon
        alpha = torch.exp(-T * t)
        sigma = torch.sqrt(-torch.expm1(-2 * T * t))
        return PathCoefficients(alpha, sigma, -T * alpha, T * alpha**2 / sigma)

    def t_of_lam(self, lam: Tensor) -> Tensor:
        return torch.log1p(_as_tensor(lam) ** 2) / (2 * self.horizon)

    def tau(self, t: Tensor) -> Tensor:
        """The paper's time τ = T·t."""
        return self.horizon * _as_tensor(t)

    def config(self) -> dict:
        return {"name": self.name, "horizon": self.horizon}


class DiscreteVPPath(NoisePath):
    """The variance-preserving path of a discrete-time DDPM scheduler (diffusers' ``DDPMScheduler``,
    ``DDIMScheduler``, ``DPMSolverMultistepScheduler``, ``EulerDiscreteScheduler``, …): ``α_k = √ᾱ_k``,
    ``σ_k = √(1 − ᾱ_k)`` at the training timesteps k = 0 … N − 1, with ᾱ the scheduler's ``alphas_cumprod``,
    computed from its beta schedule exactly as diffusers does (in float32; the same numbers bit for bit).

    Timestep k sits at ``t = (k + 1)/N``, so t = 0 is the data (σ = 0) as on every guidelab path and t = 1 the
    last training timestep. Between timesteps log λ is linear in t (k-diffusion's interpolation of log σ in
    ``DiscreteSchedule``); below the first timestep λ falls linearly to 0 at t = 0. With a zero terminal SNR
    (ᾱ_{N−1} = 0, Lin et al. 2023, arXiv 2305.08891) α falls linearly to 0 on the last interval instead.
    The network's timestep at t is :meth:`timestep` ``= N·t − 1``: an integer at the scheduler's own times.

    Args:
        num_train_timesteps: N.
        beta_schedule: ``linear`` (DDPM), ``scaled_linear`` (Stable Diffusion: linear in √β) or
            ``squaredcos_cap_v2`` (Nichol & Dhariwal's cosine, β ≤ 0.999).
        beta_start, beta_end: the linear schedules' end points.
        rescale_betas_zero_snr: rescale to zero terminal SNR as diffusers does.
        trained_betas: explicit betas (N values); the schedule's other fields are then ignored.

    Raises:
        ValueError: naming the field, for an unknown schedule or bad numbers.
    """

    name = "discrete-vp"
    BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "scaled_linear",
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        rescale_betas_zero_snr: bool = False,
        trained_betas: list[float] | tuple[float, ...] | None = None,
    ):
        if trained_betas is not None:
            betas = torch.tensor(list(trained_betas), dtype=torch.float32)
            num_train_timesteps = betas.numel()
        else:
            if beta_schedule not in self.BETA_SCHEDULES:
                raise ValueError(
                    f"beta_schedule: unknown name {beta_schedule!r}{did_you_mean(beta_schedule, self.BETA_SCHEDULES)}"
                )
            if not (isinstance(num_train_timesteps, int) and num_train_timesteps >= 2):
                raise ValueError(f"num_train_timesteps: must be an integer ≥ 2, got {num_train_timesteps!r}")
            if beta_schedule != "squaredcos_cap_v2" and not 0 < beta_start < beta_end < 1:
                raise ValueError(
                    f"beta_start, beta_end: need 0 < beta_start < beta_end < 1, got {beta_start}, {beta_end}"
                )
            betas = _betas(beta_schedule, num_train_timesteps, beta_start, beta_end)
        if betas.ndim != 1 or betas.numel() < 2 or not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError("trained_betas: need at least 2 values in (0, 1]")
        if rescale_betas_zero_snr:
            betas = _rescale_zero_terminal_snr(betas)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        if rescale_betas_zero_snr:
            alphas_cumprod[-1] = 0.0  # diffusers' rescale leaves a rounding residue; the point is ᾱ_{N−1} = 0
        self.num_train_timesteps = int(num_train_timesteps)
        self.beta_schedule, self.beta_start, self.beta_end = beta_schedule, float(beta_start), float(beta_end)
        self.rescale_betas_zero_snr = bool(rescale_betas_zero_snr)
        self.trained_betas = None if trained_betas is None else [float(b) for b in trained_betas]
        self.alphas_cumprod = alphas_cumprod.to(torch.float64)  # (N,), the scheduler's float32 values widened
        a = self.alphas_cumprod.sqrt()
        s = (1 - self.alphas_cumprod).sqrt()
        self._log_lam = torch.log(s) - torch.log(a)  # (N,); +∞ at a zero terminal SNR
        self.zero_terminal_snr = bool(a[-1] == 0)

    @classmethod
    def from_scheduler(cls, scheduler: object) -> DiscreteVPPath:
        """The path of a diffusers scheduler with ``alphas_cumprod`` (read from its config, checked against its
        table). Raises ValueError naming ``scheduler`` when it has no such table or the config does not rebuild it."""
        config = getattr(scheduler, "config", None)
        table = getattr(scheduler, "alphas_cumprod", None)
        if config is None or table is None:
            raise ValueError(
                f"scheduler: {type(scheduler).__name__} has no discrete alphas_cumprod; flow-matching schedulers use "
                "the rf path"
            )
        fields = ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "rescale_betas_zero_snr")
        kwargs = {k: config[k] for k in fields if k in config}
        if config.get("trained_betas") is not None:
            kwargs["trained_betas"] = [float(b) for b in config["trained_betas"]]
        path = cls(**kwargs)
        table = torch.as_tensor(table).to(torch.float64)
        if table.shape != path.alphas_cumprod.shape or not torch.allclose(
            table[:-1], path.alphas_cumprod[:-1], rtol=1e-6, atol=0
        ):
            raise ValueError(f"scheduler: alphas_cumprod of {type(scheduler).__name__} is not rebuilt by its config")
        return path

    def _u(self, t: Tensor) -> Tensor:
        return t * self.num_train_timesteps - 1  # fractional timestep

    def coefficients(self, t: Tensor) -> PathCoefficients:
        t = _as_tensor(t).to(torch.float64)
        n = self.num_train_timesteps
        log_lam = self._log_lam.to(t.device)
        u = self._u(t)
        k = u.floor().clamp(0, n - 2).long()
        w = u - k
        lo, hi = log_lam[k], log_lam[k + 1]
        finite = torch.isfinite(hi)
        slope = torch.where(finite, hi - lo, torch.zeros_like(hi))
        log_l = lo + w * slope
        lam = torch.exp(log_l)
        d_lam = lam * slope * n  # dλ/dt on the log-linear pieces
        # Below the first timestep: λ = λ_0·N·t, linear to 0 at t = 0.
        below = u < 0
        lam0 = torch.exp(log_lam[0])
        lam = torch.where(below, lam0 * n * t, lam)
        d_lam = torch.where(below, lam0 * n * torch.ones_like(t), d_lam)
        alpha = torch.rsqrt(1 + lam**2)
        sigma = lam * alpha
        d_alpha = -(alpha**3) * lam * d_lam
        d_sigma = alpha**3 * d_lam
        if self.zero_terminal_snr:  # last interval: α linear from α_{N−2} to 0
            last = ~below & ~finite
            a0 = self.alphas_cumprod[-2].sqrt().to(t.device)
            a_lin = (a0 * (1 - w)).clamp_min(0)
            s_lin = torch.sqrt(1 - a_lin**2)
            da_lin = -a0 * n * torch.ones_like(t)
            alpha = torch.where(last, a_lin, alpha)
            sigma = torch.where(last, s_lin, sigma)
            d_alpha = torch.where(last, da_lin, d_alpha)
            d_sigma = torch.where(last, -a_lin * da_lin / s_lin, d_sigma)
        return PathCoefficients(alpha, sigma, d_alpha, d_sigma)

    def t_of_lam(self, lam: Tensor) -> Tensor:
        lam = _as_tensor(lam).to(torch.float64)
        n = self.num_train_timesteps
        log_lam = self._log_lam.to(lam.device)
        lam0 = float(torch.exp(log_lam[0]))
        finite = log_lam[torch.isfinite(log_lam)]
        x = torch.log(lam.clamp_min(1e-300))
        k = (torch.searchsorted(finite, x.reshape(-1).contiguous()) - 1).clamp(0, finite.numel() - 2).reshape(x.shape)
        lo, hi = finite[k], finite[k + 1]
        u = k + (x - lo) / (hi - lo)  # extrapolates linearly beyond the last finite timestep
        t = (u + 1) / n
        t = torch.where(lam <= lam0, lam / (lam0 * n), t)
        if self.zero_terminal_snr:  # on the α-linear last interval: α = α_{N−2}(1 − w)
            a0 = float(self.alphas_cumprod[-2].sqrt())
            alpha = torch.rsqrt(1 + lam**2)
            w = 1 - alpha / a0
            t = torch.where(x > finite[-1], (n - 1 + w) / n, t)
        return torch.where(torch.isinf(lam), torch.full_like(t, 1.0 if self.zero_terminal_snr else math.inf), t)

    def timestep(self, t: Tensor) -> Tensor:
        """The scheduler's (fractional) timestep ``N·t − 1`` at guidelab time ``t``, snapped to the nearest
        integer within 1e-6 (so the scheduler's own times give its integer timesteps exactly)."""
        u = self._u(_as_tensor(t).to(torch.float64))
        r = u.round()
        return torch.where((u - r).abs() < 1e-6, r, u)

    def time_of_timestep(self, timestep: Tensor | float) -> Tensor:
        """The guidelab time ``(k + 1)/N`` of scheduler timestep k (float64)."""
        return (_as_tensor(timestep).to(torch.float64) + 1) / self.num_train_timesteps

    def config(self) -> dict:
        if self.trained_betas is not None:
            out: dict = {"name": self.name, "trained_betas": self.trained_betas}
        else:
            out = {
                "name": self.name,
                "num_train_timesteps": self.num_train_timesteps,
                "beta_schedule": self.beta_schedule,
                "beta_start": self.beta_start,
                "beta_end": self.beta_end,
            }
        if self.rescale_betas_zero_snr:
            out["rescale_betas_zero_snr"] = True
        return out

    def __repr__(self) -> str:
        if self.trained_betas is not None:
            return f"DiscreteVPPath(trained_betas=<{self.num_train_timesteps} values>)"
        return super().__repr__()


def _betas(schedule: str, n: int, start: float, end: float) -> Tensor:
    """diffusers' beta schedules, in float32 as diffusers computes them."""
    if schedule == "linear":
        return torch.linspace(start, end, n, dtype=torch.float32)
    if schedule == "scaled_linear":
        return torch.linspace(start**0.5, end**0.5, n, dtype=torch.float32) ** 2
    # squaredcos_cap_v2: betas_for_alpha_bar with the cosine ᾱ(t) = cos²((t + 0.008)/1.008·π/2), β ≤ 0.999

    def alpha_bar(x: float) -> float:
        return math.cos((x + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)]
    return torch.tensor(betas, dtype=torch.float32)


def _rescale_zero_terminal_snr(betas: Tensor) -> Tensor:
    """Lin et al.'s Algorithm 1 (arXiv 2305.08891) as diffusers applies it: shift √ᾱ to end at 0, rescale to keep
    its first value."""
    root = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    bar = root**2
    alphas = torch.cat([bar[0:1], bar[1:] / bar[:-1]])
    return 1 - alphas


PATHS: dict[str, type[NoisePath]] = {
    p.name: p
    for p in (
        RectifiedFlowPath,
        VPCosinePath,
        VPLinearPath,
        VarianceExplodingPath,
        OrnsteinUhlenbeckPath,
        DiscreteVPPath,
    )
}


def get_path(name: str | NoisePath, **params: float) -> NoisePath:
    """Build a path by name (``rf``, ``vp-cosine``, ``vp-linear``, ``ve``, ``ou``, ``discrete-vp``) with its
    parameters."""
    if isinstance(name, NoisePath):
        return name
    if name not in PATHS:
        raise ValueError(f"path: unknown name {name!r}{did_you_mean(name, PATHS)}")
    signature = inspect.signature(PATHS[name]).parameters
    accepted = [p for p, v in signature.items() if v.kind is not inspect.Parameter.VAR_KEYWORD]
    for key in params:
        if key not in accepted and len(accepted) == len(signature):  # (a **kwargs path takes any)
            raise ValueError(f"path {name!r}: unknown parameter {key!r}{did_you_mean(key, accepted)}")
    try:
        return PATHS[name](**params)
    except TypeError as err:
        raise ValueError(f"path {name!r}: bad parameters {params}: {err}") from None


# --- conversions between prediction spaces (all exact given the path and x_t) ---------------------


def x0_to_eps(x0: Tensor, x_t: Tensor, c: PathCoefficients) -> Tensor:
    """ε = (x_t − α·x0)/σ."""
    return (x_t - c.alpha * x0) / c.sigma


def eps_to_x0(eps: Tensor, x_t: Tensor, c: PathCoefficients) -> Tensor:
    """x0 = (x_t − σ·ε)/α."""
    return (x_t - c.sigma * eps) / c.alpha


def eps_to_score(eps: Tensor, c: PathCoefficients) -> Tensor:
    """∇log p_t = −ε/σ."""
    return -eps / c.sigma


def score_to_eps(score: Tensor, c: PathCoefficients) -> Tensor:
    """ε = −σ·∇log p_t."""
    return -c.sigma * score


def velocity_from_x0_eps(x0: Tensor, eps: Tensor, c: PathCoefficients) -> Tensor:
    """v = dx_t/dt = α'·x0 + σ'·ε."""
    return c.d_alpha * x0 + c.d_sigma * eps


def _velocity_to_x0(v: Tensor, x_t: Tensor, c: PathCoefficients) -> Tensor:
    return (c.sigma * v - c.d_sigma * x_t) / (c.sigma * c.d_alpha - c.d_sigma * c.alpha)


def _velocity_to_eps(v: Tensor, x_t: Tensor, c: PathCoefficients) -> Tensor:
    return (c.alpha * v - c.d_alpha * x_t) / (c.alpha * c.d_sigma - c.d_alpha * c.sigma)


def to_x0_eps(pred: Tensor, space: str, x_t: Tensor, c: PathCoefficients) -> tuple[Tensor, Tensor]:
    """The (x0̂, ε̂) pair implied by a prediction in ``space``; each formula divides only where needed."""
    if space == "x0":
        return pred, x0_to_eps(pred, x_t, c)
    if space == "eps":
        return eps_to_x0(pred, x_t, c), pred
    if space == "velocity":
        return _velocity_to_x0(pred, x_t, c), _velocity_to_eps(pred, x_t, c)
    if space == "score":
        eps = score_to_eps(pred, c)
        return eps_to_x0(eps, x_t, c), eps
    raise ValueError(f"space: unknown prediction space {space!r}{did_you_mean(space, SPACES)}")


def convert(pred: Tensor, src: str, dst: str, x_t: Tensor, c: PathCoefficients) -> Tensor:
    """Convert a prediction from space ``src`` to space ``dst`` with ``x_t`` fixed."""
    if src == dst:
        return pred
    x0, eps = to_x0_eps(pred, src, x_t, c)
    if dst == "x0":
        return x0
    if dst == "eps":
        return eps
    if dst == "score":
        return eps_to_score(eps, c)
    if dst == "velocity":
        return velocity_from_x0_eps(x0, eps, c)
    raise ValueError(f"space: unknown prediction space {dst!r}{did_you_mean(dst, SPACES)}")


# --- the same conversions with one scalar per step (Python floats: one or two fused kernels each) --------
#
# Every conversion between prediction spaces at fixed x_t is affine, ``dst = m·pred + k·x_t``, with scalars that
# depend only on (α, σ, α', σ') at the step. The tensor functions above recompute them elementwise (≈ 14 kernels
# from velocity); a sampler, whose step has one time, uses these two paired functions instead.

Scalars = tuple[float, float, float, float]


@functools.lru_cache(maxsize=8192)
def path_scalars(path: NoisePath, t: float) -> Scalars:
    """(α, σ, α', σ') of ``path`` at the scalar time ``t`` as Python floats (computed in float64; one cache for
    the whole library, keyed by path object and time)."""
    c = path.coefficients(torch.tensor(float(t), dtype=torch.float64))
    return float(c.alpha), float(c.sigma), float(c.d_alpha), float(c.d_sigma)


def _div(a: float, b: float) -> float | None:
    return None if b == 0 else a / b


def pair_coefficients(space: str, scalars: Scalars) -> tuple[float, float, float, float] | None:
    """(p0, q0, p1, q1) with ``x0 = p0·pred + q0·x_t`` and ``ε = p1·pred + q1·x_t`` for a prediction in ``space``
    (the scalar form of :func:`to_x0_eps`), or None where that is undefined (ε or score at α = 0, x0 at σ = 0)."""
    a, s, da, ds = scalars
    if space == "x0":
        coefs = (1.0, 0.0, _div(-a, s), _div(1.0, s))
    elif space == "eps":
        coefs = (_div(-s, a), _div(1.0, a), 1.0, 0.0)
    elif space == "velocity":
        den = s * da - ds * a
        coefs = (_div(s, den), _div(-ds, den), _div(-a, den), _div(da, den))
    elif space == "score":
        coefs = (_div(s * s, a), _div(1.0, a), -s, 0.0)
    else:
        return None
    return None if any(v is None for v in coefs) else coefs  # type: ignore[return-value]


def space_coefficients(space: str, scalars: Scalars) -> tuple[float, float] | None:
    """(A, B) with ``pred = A·x0 + B·ε`` in ``space`` (the inverse of :func:`pair_coefficients`), or None where
    undefined (score at σ = 0)."""
    _, s, da, ds = scalars
    if space == "x0":
        return 1.0, 0.0
    if space == "eps":
        return 0.0, 1.0
    if space == "velocity":
        return da, ds
    if space == "score":
        inv = _div(-1.0, s)
        return None if inv is None else (0.0, inv)
    return None


def combine(a: float, x: Tensor, b: float, y: Tensor) -> Tensor:
    """``a·x + b·y`` with Python-float weights in as few kernels as they allow (a zero term is skipped: σ = 0 at
    t = 0, α = 0 at pure noise). Weights that sum to 1 (every pair conversion on ``rf``, where α + σ = 1) are one
    ``lerp(x, y, b)`` kernel instead of a product and a sum; it differs from ``a·x + b·y`` by rounding only."""
    if b == 0:
        return x if a == 1 else x * a
    if a == 0:
        return y * b
    if a == 1:
        return torch.add(x, y, alpha=b)
    if b == 1:
        return torch.add(y, x, alpha=a)
    if a + b == 1 and x.dtype == y.dtype:  # lerp does not promote
        return torch.lerp(x, y, b)
    return torch.add(x * a, y, alpha=b)
