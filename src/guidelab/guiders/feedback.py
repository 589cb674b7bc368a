"""Feedback guidance (FBG, Koulischer et al. 2025, arXiv 2506.06085; official code FelixKoulischer/FBG_using_edm2,
``generate_images_FBG.py``; docs/methods.md §7).

A per-sample scale fed back from the trajectory itself: each sample carries a running estimate L of its log class
posterior ratio, updated after every step from how much better the conditional than the unconditional model
predicted the state the step reached; γ = e^L/(e^L − (1 − π)) is large where the class evidence is weak.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from guidelab.guiders._checks import check_number
from guidelab.guiders.base import COND, UNCOND, GuidedStep, Guider, Pass, Predictions, Scale, StepContext
from guidelab.guiders.combine import affine_pair
from guidelab.guiders.context import as_batch, is_neutral, step_contexts
from guidelab.guiders.reductions import dot, upcast
from guidelab.guiders.registry import register_guider
from guidelab.guiders.schedules import Schedule, as_schedule, rf_grid
from guidelab.paths import NoisePath, path_scalars

__all__ = ["LOG_POSTERIOR_MAX", "FeedbackGuidance", "fbg_constants", "transition_variances"]

LOG_POSTERIOR_MAX = 3.0  # the official upper clip of L
_LAMBDA_REF = 3.0  # the official ``lambda_ref`` of delta_from_t0: pure drift from L = 0 reaches γ = 3 at t0
_ALPHA = 10.0  # the official ``alpha`` of Temp_from_t1


def transition_variances(grid: Tensor, path: NoisePath) -> Tensor:
    """The official ``get_sigma_square_tilde``: σ̃²_i = (λ_i² − λ_{i+1}²)·λ_{i+1}²/λ_i² of the steps i = 0 … N − 2 of
    the N-step ``grid`` (the last step, onto λ = 0, is left out), stored at index N − 1 − i of an (N,) float64 tensor
    (index 0 stays 0). λ = σ/α; a step from λ = ∞ has its limit σ̃² = λ_{i+1}²."""
    grid = torch.as_tensor(grid, dtype=torch.float64)
    steps = grid.numel() - 1
    out = torch.zeros(max(steps, 1), dtype=torch.float64)
    lams = [_lam(path, float(t)) for t in grid[:steps].tolist()]
    for i in range(steps - 1):
        out[steps - 1 - i] = _kernel(lams[i], lams[i + 1])[1]
    return out


def fbg_constants(
    grid: Tensor,
    path: NoisePath,
    *,
    pi: float,
    t0: float,
    t1: float,
    gamma_max: float,
    cfg_scale: Scale = 1.0,
    delta: float | None = None,
    tau: float | None = None,
) -> dict[str, Any]:
    """FBG's offset δ, temperature τ and lower clip L_min on an N-step ``grid``, as the official code derives them
    (``delta_from_t0``, ``Temp_from_t1``, each rounded to 4 decimals, τ from the rounded δ)::

        δ     = log((1 − π)·3/2) / ((1 − t0)·N)
        τ     = |2·σ̃²(t1)/10·δ|,  σ̃²(t1) = (1 − a)·σ̃²[j] + a·σ̃²[j + 1],  j = ⌊t1·N⌋, a = t1·N − j
        L_min = log((1 − π)·(γ_max − γ_c + 1)/(γ_max − γ_c))

    with σ̃² the :func:`transition_variances` and γ_c the hybrid's constant scale (1 for pure FBG, where L_min =
    log((1 − π)·γ_max/(γ_max − 1)), the L at which γ = γ_max). ``cfg_scale`` may be per-sample (batch,): L_min is then
    (batch,). A given ``delta`` or ``tau`` is kept (τ is then derived from the given δ). π = 1 gives δ = τ = 0 and
    L_min = None (no feedback).

    Raises:
        ValueError: naming ``t1`` where τ is derived and ⌊t1·N⌋ + 1 > N − 1 (the official code would index past its
            table), or ``gamma_max`` where γ_max ≤ γ_c.
    """
    steps = torch.as_tensor(grid).numel() - 1
    if pi == 1:
        return {"delta": 0.0, "tau": 0.0, "log_posterior_min": None}
    if delta is None:
        delta = round(math.log((1 - pi) * _LAMBDA_REF / (_LAMBDA_REF - 1)) / ((1 - t0) * steps), 4)
    if tau is None:
        tau = 0.0
        if steps > 1:  # with one step L is never updated
            variances = transition_variances(grid, path)
            j = math.floor(t1 * steps)
            if j + 1 > steps - 1:
                raise ValueError(f"t1: ⌊t1·N⌋ + 1 = {j + 1} must be ≤ N − 1 = {steps - 1} on this {steps}-step grid")
            a = t1 * steps - j
            tau = round(abs(2 * float((1 - a) * variances[j] + a * variances[j + 1]) / _ALPHA * delta), 4)
    gamma_c = cfg_scale
    if isinstance(gamma_c, Tensor):
        gamma_c = gamma_c.to(torch.float64)
        if bool((gamma_c >= gamma_max).any()):
            raise ValueError(f"gamma_max: must exceed the hybrid's scale γ_c = {gamma_c.tolist()}, got {gamma_max}")
        log_min: Tensor | float = torch.log((1 - pi) * (gamma_max - gamma_c + 1) / (gamma_max - gamma_c))
    else:
        if gamma_c >= gamma_max:
            raise ValueError(f"gamma_max: must exceed the hybrid's scale γ_c = {gamma_c}, got {gamma_max}")
        log_min = math.log((1 - pi) * (gamma_max - gamma_c + 1) / (gamma_max - gamma_c))
    return {"delta": delta, "tau": tau, "log_posterior_min": log_min}


@register_guider
class FeedbackGuidance(Guider):
    """Feedback guidance: a per-sample γ = e^L/(e^L − (1 − π)) fed back from a running estimate L of the class log
    posterior ratio, updated after every step as the official code does.

    The rule, per sample::

        γ_k  = e^{L_k}/(e^{L_k} − (1 − π)) + (γ_s(k) − 1),      L_0 = 0          (γ_s: the schedule, 1 = pure FBG)
        x0̂   = x0̂_u + γ_k·(x0̂_c − x0̂_u)                                          (CFG at γ_k, per sample)
        after step k (λ_cur → λ_next, x̃ = x/α, from the first-stage x0̂_c, x0̂_u):
        r = λ_next²/λ_cur²,  σ̃² = (λ_cur² − λ_next²)·r,  μ̃_• = r·x̃_cur + (1 − r)·x0̂_•
        D = ||x̃_next − μ̃_c||² − ||x̃_next − μ̃_u||²           (per sample, float64)
        L ← clip(L − τ/(2σ̃²)·D + δ, L_min, 3)

    With exact reverse kernels −D/(2σ̃²) is log p(c | x_next) − log p(c | x_cur), so with τ = 1, δ = 0 L is the
    class log posterior gained along the trajectory; τ tempers it and δ < 0 drifts every sample towards γ_max.
    L_min = log[(1 − π)·γ_max/(γ_max − 1)] is where γ = γ_max; L = 3 gives γ ≈ 1. δ and τ are derived from (π, t0,
    t1) on the sampling grid (:func:`fbg_constants`) unless given.

    **When L is updated.** The sampler has no hook after a step, so the update of step k − 1 runs at the start of
    step k's first evaluation (stage 0), whose ``x_t`` is the state step k − 1 reached, from the x0̂_c, x0̂_u, λ and
    x̃ stored at step k − 1: the same L as the official loop at every evaluation. A solver's intermediate stages
    (``stage > 0``, Heun's corrector) use the step's γ and update nothing (the official Heun does the same). L is per
    sample (batch,), cleared by :meth:`reset` (the sampler calls it before every run); steps must follow each other.

    **Passes.** The update needs x0̂_u at every step, so both passes always run; the unconditional pass is skipped
    only where γ = 1 for every sample, i.e. π = 1 (γ_FBG ≡ 1) with a neutral schedule at that step.

    **Hybrids** (the official ``FBG_CFG``, ``FBG_LIG``): the schedule adds γ_s − 1. A constant ``scale`` γ_c is
    ``FBG_CFG`` (``--constant_guidance``); an ``interval`` schedule is ``FBG_LIG`` (the official interval is open at
    both ends, ``t_end < σ < t_start``; guidelab's is ``(lam_lo, lam_hi]``). L_min then uses the official
    ``log[(1 − π)(γ_max − γ_c + 1)/(γ_max − γ_c)]`` with γ_c the schedule's largest γ over the grid.

    Defaults: π = 0.999, t0 = 0.556, t1 = 0.429, γ_max = 10, the README's reported optimum (its Example 1, the DinoV2
    optimum on EDM2-XS); on a 32-step EDM grid they give δ = −0.4576, τ = 0.0515, L_min = −6.802395. The official
    command-line defaults (π = 0.5, t0 = 0.5, t1 = 0.35, γ_max = 2) keep γ at 2: L_min = 0 = L_0 and δ < 0, so γ
    starts at its cap 2 and only strong class evidence (L > 0) lowers it.

    ``t0`` and ``t1`` are fractions of the step count (the official code's), not times: pure drift from L = 0 reaches
    γ = 3 after (1 − t0)·N steps, and τ is read off σ̃² at index t1·N of the table of :func:`transition_variances`.

    The update's Gaussian kernel is the official stochastic sampler's, which guidelab's ``ddim`` with η = 1 follows
    on every path (and ``euler_ancestral`` with η = 1 on ``ve``); with deterministic solvers (the official
    ``1st_order_Euler``, ``2nd_order_Heun``) the same update runs on their x_next.

    Args:
        schedule: the hybrid's CFG scale γ_s(step) added as γ_s − 1; a number is constant (1: pure FBG).
        pi: π ∈ (0, 1]: the prior of the class; γ at L = 0 is 1/π (π = 1: no feedback guidance, γ = γ_s).
        t0, t1: fractions in [0, 1) that set δ and τ (ignored where ``delta`` / ``tau`` are given).
        gamma_max: the largest γ of FBG, > 1 (> γ_c for a hybrid).
        delta: the offset δ added each step; ``None`` derives it from (π, t0). The official code derives both
            δ and τ when ``--temp`` is left out, overriding a given ``--offset``; here a given δ is kept.
        tau: the temperature τ ≥ 0; ``None`` derives it from (δ, t1).

    Raises:
        ValueError: naming the parameter out of range; ``t1``, ``gamma_max`` against the grid (:meth:`prepare`); a
            batch other than :meth:`reset`'s, or steps out of order.
    """

    name = "fbg"
    space = "x0"
    source = "arXiv 2506.06085"

    def __init__(
        self,
        schedule: Schedule | Scale | None = None,
        pi: float = 0.999,
        t0: float = 0.556,
        t1: float = 0.429,
        gamma_max: float = 10.0,
        delta: float | None = None,
        tau: float | None = None,
    ):
        self.schedule = as_schedule(1.0 if schedule is None else schedule)
        self.pi = check_number("pi", pi, lo=0.0, hi=1.0, lo_open=True)
        self.t0 = check_number("t0", t0, lo=0.0, hi=1.0, hi_open=True)
        self.t1 = check_number("t1", t1, lo=0.0, hi=1.0, hi_open=True)
        self.gamma_max = check_number("gamma_max", gamma_max, lo=1.0, lo_open=True)
        self.delta = None if delta is None else check_number("delta", delta)
        self.tau = None if tau is None else check_number("tau", tau, lo=0.0)
        self.reset(None)

    # --- state ----------------------------------------------------------------------------------------------------

    def reset(self, batch: int | None) -> None:
        """Clear L (to 0), the stored step and the constants before sampling ``batch`` trajectories."""
        self._batch = batch
        self._log_posterior: Tensor | None = None  # L (batch,) float64
        self._stored: dict[str, Any] | None = None  # what step k − 1 left for the update at step k
        self._constants: dict[str, Any] | None = None
        self._gamma: Tensor | None = None  # γ of the current step (batch,)
        self.history: list[Tensor] = []  # γ (batch,) float64 of every step so far, stage 0

    def prepare(self, grid: Tensor, path: NoisePath, denoiser: Any = None) -> None:
        """Derive δ, τ and L_min on ``grid`` (:func:`fbg_constants`) before the first evaluation."""
        self._constants = self.constants(grid, path)

    def constants(self, grid: Tensor, path: NoisePath) -> dict[str, Any]:
        """δ, τ (the given ones, else derived) and L_min on ``grid``: ``{"delta", "tau", "log_posterior_min"}``."""
        return fbg_constants(
            grid,
            path,
            pi=self.pi,
            t0=self.t0,
            t1=self.t1,
            gamma_max=self.gamma_max,
            cfg_scale=self._hybrid_scale(grid, path),
            delta=self.delta,
            tau=self.tau,
        )

    def _hybrid_scale(self, grid: Tensor, path: NoisePath) -> Scale:
        """γ_c: the schedule's largest γ over the grid's steps (per sample where the schedule is)."""
        values = [self.schedule(ctx) for ctx in step_contexts(grid, path)]
        if any(isinstance(v, Tensor) and v.ndim > 0 for v in values):
            tensors = torch.broadcast_tensors(*(torch.as_tensor(v, dtype=torch.float64) for v in values))
            return torch.stack(tensors).amax(dim=0)
        return max(float(v) for v in values)

    @property
    def log_posterior(self) -> Tensor | None:
        """The current L (batch,) float64 (``None`` before the first step)."""
        return self._log_posterior

    # --- the rule -------------------------------------------------------------------------------------------------

    def passes(self, ctx: StepContext) -> tuple[Pass, ...]:
        return (COND,) if self.pi == 1 and is_neutral(self.schedule(ctx)) else (COND, UNCOND)

    def guide(self, preds: Predictions, ctx: StepContext) -> GuidedStep:
        if "uncond" not in preds:
            return preds.cond_pair()
        batch = preds.x_t.shape[0]
        if self._batch is not None and batch != self._batch:
            raise ValueError(f"fbg: reset for {self._batch} trajectories, got a batch of {batch}")
        offset = as_batch(self.schedule(ctx), preds.x_t)
        if self.pi == 1:
            return affine_pair(preds, offset)
        if self._constants is None:
            self._constants = self.constants(ctx.grid, ctx.path)
        c, u = preds.get("cond", "x0"), preds.get("uncond", "x0")
        if ctx.stage == 0:
            self._advance(preds, ctx, batch)
            assert self._log_posterior is not None
            e = torch.exp(self._log_posterior)
            self._gamma = e / (e - (1 - self.pi))
            self.history.append(self._gamma)
            self._store(preds, ctx, c, u)
        elif self._gamma is None:
            raise ValueError("fbg: a solver's intermediate stage before any first-stage evaluation; call reset(batch)")
        gamma = self._gamma.to(preds.x_t.device) + (offset - 1)
        return affine_pair(preds, gamma)

    def _advance(self, preds: Predictions, ctx: StepContext, batch: int) -> None:
        """L of step k: 0 at the first step, else step k − 1's update on the state x_t it reached."""
        stored = self._stored
        if self._log_posterior is None or stored is None:
            if self.history:
                raise ValueError(f"fbg: step {ctx.index} follows the last step of a trajectory; call reset(batch)")
            self._log_posterior = torch.zeros(batch, dtype=torch.float64, device=preds.x_t.device)
            return
        if ctx.index != stored["index"] + 1:
            raise ValueError(
                f"fbg: step {ctx.index} after step {stored['index']}: L is updated between consecutive steps; "
                "call reset(batch) before a new trajectory"
            )
        alpha = path_scalars(ctx.path, ctx.t)[0]
        x_next = upcast(preds.x_t) / alpha  # x̃_next
        diff = 2 * dot(stored["d"], x_next - stored["m"])  # D = 2<μ̃_u − μ̃_c, x̃_next − (μ̃_c + μ̃_u)/2>
        constants = self._constants
        assert constants is not None
        update = self._log_posterior - constants["tau"] / (2 * stored["var"]) * diff + constants["delta"]
        low = constants["log_posterior_min"]
        low = low.to(update) if isinstance(low, Tensor) else torch.tensor(low, dtype=update.dtype, device=update.device)
        self._log_posterior = torch.minimum(torch.maximum(update, low), torch.tensor(LOG_POSTERIOR_MAX).to(update))

    def _store(self, preds: Predictions, ctx: StepContext, c: Tensor, u: Tensor) -> None:
        """What step k's update needs at step k + 1: d = μ̃_u − μ̃_c, m = (μ̃_c + μ̃_u)/2 and σ̃²."""
        if ctx.index + 1 >= ctx.steps:
            self._stored = None
            return
        lam_cur, lam_next = ctx.lam, _lam(ctx.path, ctx.t_next)
        r, var = _kernel(lam_cur, lam_next)
        mean = 0.5 * (c + u)
        m = mean * (1 - r)
        if r != 0:
            m = m + (r / path_scalars(ctx.path, ctx.t)[0]) * upcast(preds.x_t)  # r·x̃_cur
        self._stored = {"index": ctx.index, "d": (u - c) * (1 - r), "m": m, "var": var}

    def effective_scale(self, grid: Tensor, path: NoisePath, cond: int | None = None) -> float | None:
        """The mean over samples of γ_k + γ_s(k) − 1, averaged over the steps in rectified-flow time, from the last
        run on ``grid``; before a run on that grid, the scale of a trajectory whose L stays 0 (γ_FBG = 1/π)."""
        grid = torch.as_tensor(grid, dtype=torch.float64)
        base = self.schedule.mean_scale(grid, path) - 1
        steps = grid.numel() - 1
        if len(self.history) != steps or self.pi == 1:
            return base + 1 / self.pi
        s = rf_grid(grid, path)
        ds = (s[:-1] - s[1:]).tolist()
        total = sum(float(g.double().mean()) * w for g, w in zip(self.history, ds, strict=True))
        return base + total / float(s[0] - s[-1])

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pi": self.pi,
            "t0": self.t0,
            "t1": self.t1,
            "gamma_max": self.gamma_max,
            "delta": self.delta,
            "tau": self.tau,
            "schedule": self.schedule.spec(),
        }


def _lam(path: NoisePath, t: float) -> float:
    a, s, _, _ = path_scalars(path, t)
    return math.inf if a == 0 else s / a


def _kernel(lam_cur: float, lam_next: float) -> tuple[float, float]:
    """(r, σ̃²) of the Gaussian backward kernel λ_cur → λ_next in x̃ = x/α: r = λ_next²/λ_cur², σ̃² = (λ_cur² −
    λ_next²)·r (the limits r = 0, σ̃² = λ_next² from λ_cur = ∞)."""
    if math.isinf(lam_cur):
        return 0.0, lam_next**2
    r = lam_next**2 / lam_cur**2
    return r, (lam_cur**2 - lam_next**2) * r
