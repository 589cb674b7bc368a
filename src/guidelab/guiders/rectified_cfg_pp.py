"""Rectified-CFG++ (Saini, Gupta, Bovik 2025, arXiv 2510.07631; official code shreshthsaini/Rectified-CFGpp,
``rect-cfg-SD3-pipeline/pipeline.py``; docs/methods.md §7): a predictor–corrector flow step. The conditional velocity
predicts half a step ahead; the guidance difference is read there; the step is taken from the current point with the
conditional velocity plus that difference. Three network evaluations per guided step, two of them asked for through
the sampler's extra-evaluation callback (``StepContext.evaluate``)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from guidelab.guiders._checks import check_choice, check_int, check_number
from guidelab.guiders.base import COND, UNCOND, GuidedStep, Pass, Predictions, Scale, ScheduledGuider, StepContext
from guidelab.guiders.context import as_batch, is_neutral, per_sample
from guidelab.guiders.registry import register_guider
from guidelab.guiders.schedules import Schedule
from guidelab.noise import NoiseSource
from guidelab.paths import path_scalars

__all__ = ["RectifiedCFGPlusPlus"]

VARIANTS = ("paper", "official")
OFFICIAL_PREDICTOR_NOISE = 0.005  # the official pipeline's ``sigma_noise`` default
NUM_TRAIN_TIMESTEPS = 1000  # SD3's scheduler: timestep = 1000·σ, while the official dt is in σ units


@register_guider
class RectifiedCFGPlusPlus(ScheduledGuider):
    """Rectified-CFG++: guide with the difference read at a predictor point half a step ahead on the conditional flow.

    Per step t → t + Δt (Δt = t_next − t < 0; t = 1 is noise, as in the paper, whose t is the flow-matching σ, the
    same convention as guidelab's), with v the probability-flow velocity ``dx/dt = α'·x0̂ + σ'·ε̂`` (``ε − x0`` on
    rf)::

        v0     = v_c(x_t, t)
        x̃      = x_t + (Δt/2)·v0                                  (predictor)
        v̂      = v0 + w·[v_c(x̃, t + Δt/2) − v_u(x̃, t + Δt/2)]     (corrector)
        w      = (γ − 1)·(1 − s)^κ                                (s = σ/(α + σ) at t: s = t on rf)
        x_next = x_t + Δt·v̂

    The guider returns the consistent pair of v̂ at (x_t, t), so the Euler step (every path) and DDIM with η = 0 (on
    rf and ve, where it equals Euler) give exactly ``x_next``; on vp DDIM takes the exponential-integrator step of the
    same guided prediction. Only those two solvers are accepted (:meth:`check_solver`, called by
    :func:`~guidelab.sampling.sample` before any evaluation): Heun and DPM++ 2S would nest a second
    predictor–corrector inside the step, DPM++ 2M would extrapolate across steps, and the stochastic solvers renoise
    what is a deterministic step. Network evaluations (``result.nfe``): 1 where w = 0 for every sample (γ = 1, or
    s = 1 with κ > 0: the first step from pure noise), 3 otherwise.

    ``scale`` is γ in Ho form (γ = 1 unguided; the paper's λ_max and the official ``true_cfg`` are w = γ − 1). The
    weight reads the rectified-flow time of the step's start so that a setting means the same noise levels on every
    path (docs/methods.md §0); on rf, the paper's path, it is t.

    ``variant="official"`` follows the official pipeline instead: a full-step predictor ``x̃ = x_t + Δt·v0 + σ_n·ξ``
    (σ_n = ``predictor_noise``, default 0.005 there, 0 in the paper variant; not added where t ≤ 10⁻⁴, the official
    ``t > 0.1`` on SD3's 0–1000 timesteps), a constant ``w = γ − 1`` (κ is not used), and the corrector evaluated at
    ``t + Δt/1000``: the official timestep ``t + dt`` adds a σ-unit ``dt`` to a 0–1000 timestep, so it sits a
    thousandth of a step from t, not at t_next. The official loop also evaluates the unconditional model at x_t and
    discards it; that evaluation is not made here. ξ comes from a :class:`~guidelab.noise.NoiseSource` seeded by
    ``seed`` (restarted by :meth:`reset`).

    Shapes: predictions and states (batch, ...); γ a number or per-sample (batch,).

    Args:
        schedule: γ(step); a number means constant.
        kappa: exponent κ ≥ 0 of the weight's (1 − s)^κ (paper variant).
        variant: ``paper`` or ``official``.
        predictor_noise: σ_n ≥ 0 added to the predictor point; ``None``: 0 (paper) or 0.005 (official).
        seed: the predictor noise's seed.
    """

    name = "rectified-cfg++"
    space = "velocity"
    source = "arXiv 2510.07631"
    default_scale = 5.5  # docs/methods.md §9: the official true_cfg = 4.5 (w = γ − 1)
    solvers: ClassVar[tuple[str, ...]] = ("euler", "ddim")

    def __init__(
        self,
        schedule: Schedule | Scale | None = None,
        kappa: float = 1.0,
        variant: str = "paper",
        predictor_noise: float | None = None,
        seed: int = 0,
    ):
        super().__init__(schedule)
        self.kappa = check_number("kappa", kappa, lo=0.0)
        check_choice("variant", variant, VARIANTS)
        self.variant = variant
        self.predictor_noise = (
            None if predictor_noise is None else check_number("predictor_noise", predictor_noise, lo=0.0)
        )
        self.seed = check_int("seed", seed)
        self._noise: NoiseSource | None = None

    @property
    def sigma_noise(self) -> float:
        """σ_n in use: ``predictor_noise``, or the variant's default."""
        if self.predictor_noise is not None:
            return self.predictor_noise
        return OFFICIAL_PREDICTOR_NOISE if self.variant == "official" else 0.0

    def reset(self, batch: int) -> None:
        self._noise = None

    def check_solver(self, solver: str, eta: float = 0.0) -> None:
        """A ValueError naming ``solver`` (or ``eta``) where the solver's step is not the rule's (see the class)."""
        if solver not in self.solvers:
            raise ValueError(
                f"solver: {self.name} is a whole predictor–corrector step that only {' and '.join(self.solvers)} "
                f"take as it is; got {solver!r}"
            )
        if eta != 0:
            raise ValueError(f"eta: {self.name} is a deterministic step; {solver} needs eta = 0, got {eta}")

    def weight(self, gamma: Scale, ctx: StepContext, like: Tensor) -> Tensor | float:
        """w = (γ − 1)·(1 − s)^κ (paper) or γ − 1 (official) at ``ctx``: a number or (batch,) float64."""
        extra = as_batch(gamma, like) - 1
        if self.variant == "official":
            return extra
        alpha, sigma, _, _ = path_scalars(ctx.path, float(ctx.t))
        return extra * (1 - sigma / (alpha + sigma)) ** self.kappa

    def passes(self, ctx: StepContext) -> tuple[Pass, ...]:
        return (COND,)  # the unconditional model is read only at the predictor point (ctx.evaluate)

    def guide(self, preds: Predictions, ctx: StepContext) -> GuidedStep:
        gamma = self.schedule(ctx)
        if is_neutral(gamma):
            return preds.cond_pair()
        v0 = preds.get("cond", "velocity")
        w = self.weight(gamma, ctx, v0)
        if is_neutral(w, 0.0):
            return preds.cond_pair()
        if ctx.evaluate is None or ctx.stage != 0:
            raise ValueError(
                f"guider: {self.name!r} evaluates the model at a predictor point inside each step; only guidelab's "
                "euler and ddim solvers can run it (guidelab.pipelines.generate(pipe, ...) or `guidelab generate`)"
            )
        t = float(ctx.t)
        dt = ctx.t_next - t
        if self.variant == "official":
            x_pred, t_pred = torch.add(preds.x_t, v0, alpha=dt), t + dt / NUM_TRAIN_TIMESTEPS
        else:
            x_pred, t_pred = torch.add(preds.x_t, v0, alpha=dt / 2), t + dt / 2
        if self.sigma_noise > 0 and (self.variant == "paper" or t > 0.1 / NUM_TRAIN_TIMESTEPS):
            if self._noise is None:
                self._noise = NoiseSource(self.seed, x_pred.device)
            x_pred = x_pred + self.sigma_noise * self._noise(x_pred)
        pred = ctx.evaluate((COND, UNCOND), x_pred.to(preds.dtype), t_pred)
        diff = pred.get("cond", "velocity") - pred.get("uncond", "velocity")
        v_hat = torch.add(v0, diff, alpha=w) if isinstance(w, float) else torch.addcmul(v0, per_sample(w, diff), diff)
        return preds.pair(v_hat, self.space)

    def combine(self, preds: Predictions, ctx: StepContext, gamma: Scale) -> GuidedStep:
        raise NotImplementedError(
            "rectified-cfg++ guides through guide(), with an extra evaluation"
        )  # pragma: no cover

    def params(self) -> dict[str, Any]:
        return {
            "kappa": self.kappa,
            "variant": self.variant,
            "predictor_noise": self.predictor_noise,
            "seed": self.seed,
        }
