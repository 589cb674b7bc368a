"""Samplers and the guided loop.

:class:`GuidedModel` turns a denoiser, a guider, class labels and a time grid into a function
``(x_t, step) -> GuidedStep`` (the guided pair x0̂, ε̂): it asks the guider which passes the step needs,
runs every pass of one model as **one batched call**, counts network evaluations, and converts.

Every solver is written on the guided pair (docs/methods.md §0). A guider's pair need not be consistent with the
state (``x_t = α·x0̂ + σ·ε̂`` fails for CFG++, which renoises with the unconditional ε̂, and for thresholding
without renoising): wherever a solver formula reads the state it reads the pair's **implied state**
``x̂ = α_t·x0̂ + σ_t·ε̂``, and multistep history stores the clean estimate that ε̂ renoises from,
``(x_t − σ_t·ε̂)/α_t``. For a consistent pair x̂ = x_t and the history is x0̂, so nothing changes; for CFG++
the solvers it shares with the official code give the official CFG++ update (Chung et al. 2024, arXiv 2406.08070,
code CFGpp-diffusion/CFGpp ``latent_diffusion.py``; tests/test_solvers_official_cfgpp.py): on VE, Euler is
``x = D_λ + σ_next·(x − D_u)/σ``.

Each sampler is a plain function ``sample_<name>(model, x, *, monitor, ...) -> x`` whose loop reads like
its algorithm. The :class:`Monitor` flags a sample whose state turns non-finite or leaves the divergence
bound, freezes it at its last good state and counts it, and records subsampled trajectories. :func:`sample`
is the driver that wires them together.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from guidelab.denoiser import Denoiser, as_cond, null_labels
from guidelab.guiders.base import GuidedStep, Guider, Pass, Predictions, StepContext
from guidelab.guiders.cfg import CFG
from guidelab.noise import NoiseSource
from guidelab.paths import NoisePath, PathCoefficients, combine, path_scalars
from guidelab.progress import ProgressBar
from guidelab.validation import did_you_mean

if TYPE_CHECKING:
    from guidelab.fkc import FKCConfig, FKCorrector

__all__ = [
    "ETA_SOLVERS",
    "SOLVERS",
    "STOCHASTIC_SOLVERS",
    "GuidedModel",
    "Monitor",
    "NoiseSource",
    "SampleResult",
    "ancestral_step",
    "ddim_kappa",
    "sample",
    "sample_ddim",
    "sample_dpmpp_2m",
    "sample_dpmpp_2s_ancestral",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_euler_maruyama",
    "sample_heun",
]

# Prediction spaces from which x0̂ = (x_t − σ·ε̂)/α is undefined where α = 0 (t = 1 on rf and vp-cosine).
SINGULAR_AT_PURE_NOISE = ("eps", "score")
DEFAULT_DIVERGENCE_FACTOR = 100.0
_START_LAM = 80.0  # EDM's σ_max: where an ε-model starts when the grid starts at α = 0


class GuidedModel:
    """The guided prediction ``(x_t, step index) -> GuidedStep`` with NFE accounting.

    Args:
        denoiser: the main model (:class:`~guidelab.denoiser.Denoiser`).
        guider: combines the passes it asks for; ``None`` means the conditional model alone.
        cond: class labels (batch,) (``NULL_COND`` = unconditional).
        grid: the N + 1 times of the grid, t_0 = t_max, …, t_N = 0.

    Attributes:
        nfe: network evaluations per sample so far (a batched cond + uncond call counts 2).
        calls: forward calls made (one per model per evaluation).
    """

    def __init__(self, denoiser: Denoiser, guider: Guider | None, cond: Tensor, grid: Tensor):
        self.denoiser = denoiser
        self.guider = guider if guider is not None else CFG(1.0)
        self.cond = cond
        self.grid = grid
        self.path: NoisePath = denoiser.path
        self.nfe = 0
        self.calls = 0

    @property
    def grid(self) -> Tensor:
        return self._grid

    @grid.setter
    def grid(self, grid: Tensor) -> None:
        self._grid = grid
        self._times = [float(v) for v in grid.reshape(-1).tolist()]  # t(i) is read several times per step

    @property
    def steps(self) -> int:
        return self.grid.numel() - 1

    def t(self, i: int) -> float:
        return self._times[i]

    def coefficients(self, t: float, like: Tensor) -> PathCoefficients:
        """Path coefficients at scalar ``t`` (computed in float64, from the cached :meth:`scalars`) as 0-d tensors
        in ``like``'s dtype and device."""
        values = torch.tensor(self.scalars(t), dtype=like.dtype, device=like.device)
        return PathCoefficients(*values.unbind())

    def context(self, i: int, t: float | None = None, stage: int = 0) -> StepContext:
        t = self.t(i) if t is None else t
        lam = self.lam(t)
        return StepContext(i, self.steps, t, lam, self.grid, self.path, stage, cond=self.cond, evaluate=self.predict)

    def predict(self, passes: tuple[Pass, ...], x_t: Tensor, t: float) -> Predictions:
        """Evaluate ``passes`` at (x_t, t); passes of the same model run as one batched call."""
        n = x_t.shape[0]
        raw: dict[str, tuple[Tensor, str]] = {}
        groups: dict[int, list[Pass]] = {}
        for p in passes:
            groups.setdefault(id(p.model), []).append(p)
        for group in groups.values():
            model = group[0].model or self.denoiser
            labels = [self.cond if p.cond == "cond" else null_labels(model, self.cond) for p in group]
            x_in = x_t if len(group) == 1 else torch.cat([x_t] * len(group))
            t_in = torch.full((n * len(group),), t, dtype=x_t.dtype, device=x_t.device)
            out = model(x_in, t_in, torch.cat(labels))
            for k, p in enumerate(group):
                raw[p.name] = (out[k * n : (k + 1) * n], model.prediction)
            self.calls += 1
        self.nfe += len(passes)
        return Predictions(raw, x_t, self.coefficients(t, x_t), self.scalars(t))

    def __call__(self, x_t: Tensor, i: int, *, t: float | None = None, stage: int = 0) -> GuidedStep:
        ctx = self.context(i, t, stage)
        preds = self.predict(self.guider.passes(ctx), x_t, ctx.t)
        return self.guider.guide(preds, ctx)

    def scalars(self, t: float) -> tuple[float, float, float, float]:
        """(α, σ, α', σ') at ``t`` as Python floats (computed in float64, cached per path and time)."""
        return path_scalars(self.path, float(t))

    def lam(self, t: float) -> float:
        """Noise level λ = σ/α at ``t`` (∞ where α = 0, 0 at t = 0)."""
        a, s, _, _ = self.scalars(t)
        return math.inf if a == 0 else s / a

    def velocity(self, out: GuidedStep, t: float) -> Tensor:
        """Probability-flow velocity of the guided pair, ``dx/dt = α'·x0̂ + σ'·ε̂``."""
        _, _, da, ds = self.scalars(t)
        return combine(da, out.x0_hat, ds, out.eps_hat)

    def implied_state(self, out: GuidedStep, t: float) -> Tensor:
        """The state the pair stands for, ``x̂ = α_t·x0̂ + σ_t·ε̂`` (x_t itself for a consistent pair)."""
        a, s, _, _ = self.scalars(t)
        return combine(a, out.x0_hat, s, out.eps_hat)

    def history(self, out: GuidedStep, x: Tensor, t: float) -> Tensor:
        """The clean estimate that ε̂ renoises from, ``(x_t − σ_t·ε̂)/α_t`` (x0̂ for a consistent pair; the
        unconditional x0̂ for CFG++). Where α = 0 it is undefined and x0̂ stands in (it carries no weight
        there: the multistep correction after a step from λ = ∞ vanishes)."""
        a, s, _, _ = self.scalars(t)
        if a == 0:
            return out.x0_hat
        return torch.add(x, out.eps_hat, alpha=-s).div_(a)


class Monitor:
    """Per-step bookkeeping shared by every sampler: divergence freezing, trajectory recording, callback.

    A sample whose next state is non-finite or has a coordinate beyond the bound at the next time is flagged
    as diverged and frozen at its last good state; it is never propagated as NaN. The bound at time t is
    ``factor·(α_t·data_scale + σ_t)`` (a multiple of the state's natural scale: the data scale near t = 0, the
    noise level near t = 1), or a fixed ``bound`` when one is given.

    Args:
        batch: number of samples.
        bound: a fixed bound on |x| (every time), overriding the relative one.
        factor: the relative bound's multiple (default 100).
        data_scale: the data's coordinate scale (largest typical |x0| coordinate; default 1).
    """

    def __init__(
        self,
        batch: int,
        *,
        bound: float | None = None,
        factor: float = DEFAULT_DIVERGENCE_FACTOR,
        data_scale: float = 1.0,
        record_every: int | None = None,
        callback: Callable[[dict[str, Any]], None] | None = None,
        progress: Callable[[], None] | None = None,
    ):
        if record_every is not None and record_every < 1:
            raise ValueError(f"record_every: must be ≥ 1, got {record_every}")
        if bound is not None and not bound > 0:
            raise ValueError(f"divergence_bound: must be > 0, got {bound}")
        if not factor > 0:
            raise ValueError(f"divergence_factor: must be > 0, got {factor}")
        if not (data_scale > 0 and math.isfinite(data_scale)):
            raise ValueError(f"data_scale: must be a finite number > 0, got {data_scale}")
        self.bound, self.factor, self.data_scale = bound, factor, data_scale
        self.record_every = record_every
        self.callback = callback
        self.progress = progress
        self.corrector: FKCorrector | None = None  # weights and resamples the particles after each step
        self.diverged = torch.zeros(batch, dtype=torch.bool)
        self.times: list[float] = []
        self.states: list[Tensor] = []
        self.x0_hats: list[Tensor] = []

    def bound_at(self, path: NoisePath, t: float) -> float:
        """The bound on |x| coordinates at time ``t`` of ``path``."""
        if self.bound is not None:
            return self.bound
        a, s, _, _ = path_scalars(path, float(t))
        return self.factor * (a * self.data_scale + s)

    def update(self, model: GuidedModel, i: int, x: Tensor, x_next: Tensor, out: GuidedStep) -> Tensor:
        """The state after step ``i`` with diverged samples frozen."""
        flat = x_next.reshape(x_next.shape[0], -1)
        bound = self.bound_at(model.path, model.t(i + 1))
        # One comparison flags both a non-finite and an out-of-bound state (NaN and ±∞ fail |x| ≤ bound); with no
        # finite bound (factor ∞) only non-finite states are flagged.
        ok = (flat.abs() <= bound) if math.isfinite(bound) else torch.isfinite(flat)
        bad = ~ok.all(dim=1)
        self.diverged = self.diverged.to(bad.device) | bad
        x_next = torch.where(self.diverged.reshape(-1, *([1] * (x.ndim - 1))), x, x_next)
        if self.corrector is not None:
            x_next = self.corrector.correct(model, i, x_next, self)
        if self.record_every is not None and i % self.record_every == 0:
            self.times.append(model.t(i))
            self.states.append(x.detach().clone())
            self.x0_hats.append(out.x0_hat.detach().clone())
        if i == model.steps - 1 and self.record_every is not None:
            self.times.append(model.t(i + 1))
            self.states.append(x_next.detach().clone())
            self.x0_hats.append(x_next.detach().clone())
        if self.callback is not None:
            self.callback(
                {
                    "i": i,
                    "t": model.t(i),
                    "t_next": model.t(i + 1),
                    "x": x,
                    "x_next": x_next,
                    "x0_hat": out.x0_hat,
                    "eps_hat": out.eps_hat,
                    "diverged": self.diverged,
                }
            )
        if self.progress is not None:
            self.progress()
        return x_next


# --- samplers -----------------------------------------------------------------------------------------
#
# Every sampler reads the guided pair (x0̂, ε̂) and, where its formula needs the state, the pair's implied
# state x̂ = α_t·x0̂ + σ_t·ε̂ (see the module docstring). The last step lands on t = 0, where x = x0̂.


def sample_euler(model: GuidedModel, x: Tensor, *, monitor: Monitor) -> Tensor:
    """Euler on the probability-flow ODE, from the implied state: ``x_next = x̂ + (t_next − t)·(α'·x0̂ + σ'·ε̂)``
    (first order). On paths affine in t (rf, ve) this equals DDIM (η = 0) for every guider."""
    for i in range(model.steps):
        t, t_next = model.t(i), model.t(i + 1)
        out = model(x, i)
        x_hat = model.implied_state(out, t)
        x = monitor.update(model, i, x, x_hat + (t_next - t) * model.velocity(out, t), out)
    return x


def sample_heun(model: GuidedModel, x: Tensor, *, monitor: Monitor) -> Tensor:
    """Heun's second-order method on the probability-flow ODE (Karras et al. 2022, arXiv 2206.00364, Alg. 1)
    from the implied state: ``x' = x̂ + Δt·d``, ``x_next = x̂ + Δt·(d + d')/2`` with d' the velocity of the
    pair at (x', t_next); the last step, which lands on t = 0, is an Euler step."""
    for i in range(model.steps):
        t, t_next = model.t(i), model.t(i + 1)
        out = model(x, i)
        x_hat = model.implied_state(out, t)
        d_cur = model.velocity(out, t)
        x_next = x_hat + (t_next - t) * d_cur
        if t_next > 0:
            d_next = model.velocity(model(x_next, i, t=t_next, stage=1), t_next)
            x_next = x_hat + (t_next - t) * 0.5 * (d_cur + d_next)
        x = monitor.update(model, i, x, x_next, out)
    return x


def ddim_kappa(eta: float, lam_ratio: float | Tensor) -> float | Tensor:
    """The share κ of ε̂ a DDIM step t → s with churn η keeps: ``κ = 1 − η²(1 − λ_s/λ_t)``, λ = σ/α (floats or
    broadcastable tensors; differentiable). The rest of the noise, ``√(1 − κ²)``, is fresh (arXiv 2510.00815)."""
    return 1 - eta**2 * (1 - lam_ratio)


def sample_ddim(
    model: GuidedModel, x: Tensor, *, monitor: Monitor, eta: float = 0.0, noise: NoiseSource | None = None
) -> Tensor:
    """DDIM with churn η ∈ [0, 1] (Song et al. 2021, arXiv 2010.02502; parametrized as in arXiv 2510.00815):
    ``κ = 1 − η²(1 − α_t σ_s/(α_s σ_t))``, ``x_s = α_s x0̂ + σ_s(κ ε̂ + √(1 − κ²) ξ)``.

    η = 0 is deterministic DDIM, η = 1 the ancestral (DDPM posterior) step. The step reads only the pair.
    """
    _check_eta(eta, noise)
    for i in range(model.steps):
        t, t_next = model.t(i), model.t(i + 1)
        out = model(x, i)
        kappa = float(ddim_kappa(eta, _lam_ratio(model, t, t_next)))
        x = monitor.update(
            model, i, x, _renoise(model, out, t_next, kappa, math.sqrt(max(1 - kappa**2, 0)), noise), out
        )
    return x


def ancestral_step(lam_from: float, lam_to: float, eta: float = 1.0) -> tuple[float, float]:
    """k-diffusion's ancestral split of a step from noise level λ_from to λ_to (VE-cast noise levels):
    ``λ_up = min(λ_to, η·λ_to·√(1 − λ_to²/λ_from²))``, ``λ_down = √(λ_to² − λ_up²)`` (Crowson, k-diffusion
    ``sampling.py`` ``get_ancestral_step``; the same in CFGpp-diffusion/CFGpp). λ_from = ∞ is allowed."""
    if eta == 0 or lam_to == 0:
        return lam_to, 0.0
    ratio = 0.0 if math.isinf(lam_from) else lam_to / lam_from
    lam_up = min(lam_to, eta * lam_to * math.sqrt(max(1 - ratio * ratio, 0.0)))
    return math.sqrt(max(lam_to * lam_to - lam_up * lam_up, 0.0)), lam_up


def sample_euler_ancestral(
    model: GuidedModel, x: Tensor, *, monitor: Monitor, eta: float = 1.0, noise: NoiseSource | None = None
) -> Tensor:
    """Euler ancestral (k-diffusion ``sample_euler_ancestral``) on the VE-cast state x/α with noise levels λ,
    written on the pair: ``x_s/α_s = x0̂ + λ_down·ε̂ + λ_up·ξ`` with (λ_down, λ_up) = :func:`ancestral_step`.

    With CFG++'s pair on VE this is the official ``euler_a_cfg++`` step ``x = D_λ + σ_down·(x − D_u)/σ +
    σ_up·ξ``. ``eta`` is k-diffusion's (1 = full ancestral noise, 0 = Euler/DDIM); at η = 1 the step equals
    DDIM with churn 1.
    """
    _check_eta(eta, noise)
    for i in range(model.steps):
        t, t_next = model.t(i), model.t(i + 1)
        out = model(x, i)
        lam_s = model.lam(t_next)
        lam_down, lam_up = ancestral_step(model.lam(t), lam_s, eta)
        kappa, nu = (lam_down / lam_s, lam_up / lam_s) if lam_s > 0 else (0.0, 0.0)
        x = monitor.update(model, i, x, _renoise(model, out, t_next, kappa, nu, noise), out)
    return x


def sample_dpmpp_2s_ancestral(
    model: GuidedModel, x: Tensor, *, monitor: Monitor, eta: float = 1.0, noise: NoiseSource | None = None
) -> Tensor:
    """DPM-Solver++(2S) ancestral (Lu et al. 2022, arXiv 2211.01095; k-diffusion ``sample_dpmpp_2s_ancestral``)
    on the VE-cast state x̃ = x/α with noise levels λ, written on the pair.

    Per step from λ_t: (λ_down, λ_up) = :func:`ancestral_step`; the midpoint λ_m = √(λ_t·λ_down) (half the
    step in log λ); from the implied state x̃̂ = x0̂ + λ_t·ε̂::

        x̃_m    = (λ_m/λ_t)·x̃̂ + (1 − λ_m/λ_t)·x0̂              (evaluated: pair x0̂_m, ε̂_m)
        x̃_next = (λ_down/λ_t)·x̃̂ + (1 − λ_down/λ_t)·x0̂_m + λ_up·ξ

    a first-order step where λ_down = 0 (the last step, or a step from λ = ∞). Two evaluations per step. With
    CFG++'s pair this is ComfyUI's original ``sample_dpmpp_2s_ancestral_cfg_pp`` (which feeds ``x + D_λ − D_u``,
    the implied state). Two other forms differ: CFGpp-diffusion/CFGpp's ``dpm++_2s_a_cfg++`` steps to the midpoint
    with the unconditional pair and then ``x' = D_λ,m + (λ_down/λ_t)·(x − D_u,m)``; ComfyUI's later version (as at
    commit 02159d8) takes the unconditional 2S step and adds the first point's ``D_λ − D_u``.
    """
    _check_eta(eta, noise)
    for i in range(model.steps):
        t, t_next = model.t(i), model.t(i + 1)
        out = model(x, i)
        lam_t, lam_s = model.lam(t), model.lam(t_next)
        lam_down, lam_up = ancestral_step(lam_t, lam_s, eta)
        if lam_down == 0 or math.isinf(lam_t):
            kappa, nu = (lam_down / lam_s, lam_up / lam_s) if lam_s > 0 else (0.0, 0.0)
            x_next = _renoise(model, out, t_next, kappa, nu, noise)
        else:
            lam_m = math.sqrt(lam_t * lam_down)
            t_m = float(model.path.t_of_lam(torch.tensor(lam_m, dtype=torch.float64)))
            a_m = model.scalars(t_m)[0]
            # x̃_m = x0̂ + λ_m·ε̂ (the pair's DDIM step to λ_m), on the path: x_m = α_m·x̃_m
            x_m = combine(a_m, out.x0_hat, a_m * lam_m, out.eps_hat)
            out_m = model(x_m, i, t=t_m, stage=1)
            r = lam_down / lam_t
            a_s = model.scalars(t_next)[0]
            # x̃_next = r·x0̂ + λ_down·ε̂ + (1 − r)·x0̂_m  (+ λ_up·ξ)
            x_next = torch.add(
                combine(r * a_s, out.x0_hat, lam_down * a_s, out.eps_hat), out_m.x0_hat, alpha=(1 - r) * a_s
            )
            if lam_up > 0:
                x_next = x_next + (lam_up * a_s) * noise(x)
        x = monitor.update(model, i, x, x_next, out)
    return x


def sample_euler_maruyama(
    model: GuidedModel, x: Tensor, *, monitor: Monitor, noise: NoiseSource | None = None
) -> Tensor:
    """Euler–Maruyama on the reverse SDE ``dx = [f·x − g²·∇log p_t] dt + g dW̄`` with ``f = α'/α``,
    ``g² = 2σσ' − 2fσ²`` and ``∇log p_t = −ε̂/σ`` (Song et al. 2021, arXiv 2011.13456), from the implied
    state: ``x_next = x̂ + Δt·(f·x̂ + g²·ε̂/σ) + √(g²·|Δt|)·ξ``. The last step, onto t = 0, takes the drift
    without noise."""
    if noise is None:
        raise ValueError("noise: euler-maruyama needs a NoiseSource")
    t0 = torch.tensor(model.t(0), dtype=torch.float64)
    c0 = model.path.coefficients(t0)
    if not (torch.isfinite(c0.d_alpha / c0.alpha) and torch.isfinite(model.path.diffusion_sq(t0))):
        raise ValueError(
            f"t_max: the reverse SDE of path {model.path.name!r} is singular at t={float(t0)} (α = 0); "
            "use a grid with t_max < 1, e.g. 0.999"
        )
    for i in range(model.steps):
        t, t_next = model.t(i), model.t(i + 1)
        out = model(x, i)
        a, s, da, ds = model.scalars(t)
        f = da / a
        g_sq = 2 * s * ds - 2 * f * s * s
        x_hat = model.implied_state(out, t)
        drift = combine(f, x_hat, g_sq / s, out.eps_hat)  # f·x̂ − g²·score, score = −ε̂/σ
        x_next = x_hat + (t_next - t) * drift
        if t_next > 0:
            x_next = x_next + math.sqrt(g_sq * (t - t_next)) * noise(x)
        x = monitor.update(model, i, x, x_next, out)
    return x


def sample_dpmpp_2m(model: GuidedModel, x: Tensor, *, monitor: Monitor) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095, Alg. 2) in data prediction, written on the pair:
    with ``h = log(α_s/σ_s) − log(α_t/σ_t)``, r = h_prev/h and the history D̃ = (x_t − σ_t·ε̂)/α_t,
    ``x_s = (σ_s/σ_t)·x̂ + α_s(1 − e^{−h})·[x0̂ + (x0̂ − D̃_{i−1})/(2r)]``, i.e.
    ``x_s = σ_s·ε̂ + α_s·[e^{−h}·x0̂ + (1 − e^{−h})·(x0̂ + (x0̂ − D̃_{i−1})/(2r))]``: the difference is the current
    x0̂ minus the previous step's history. First order on the first and the last step. For a consistent pair
    D̃ = x0̂ (the textbook solver); for CFG++ D̃ is the unconditional x0̂ and the difference is x0̂_λ,i − x0̂_u,i−1,
    exactly as in CFGpp-diffusion/CFGpp's ``dpm++_2m_cfg++`` (and ComfyUI's ``sample_dpmpp_2m_cfg_pp``):
    ``x = D_λ − e^{−h}·D_u + e^{−h}·x − expm1(−h)·(D_λ − D_u,prev)/(2r)`` on VE."""
    hist_prev: Tensor | None = None
    h_prev: float | None = None
    for i in range(model.steps):
        t, t_next = model.t(i), model.t(i + 1)
        out = model(x, i)
        hist = model.history(out, x, t)
        a_t, s_t, _, _ = model.scalars(t)
        a_s, s_s, _, _ = model.scalars(t_next)
        if t_next == 0:
            x_next = a_s * out.x0_hat
        else:
            exp_neg_h = a_t * s_s / (a_s * s_t)  # e^{−h}
            h = math.log(a_s / s_s) - (math.log(a_t / s_t) if a_t > 0 else -math.inf)
            denoised = out.x0_hat
            if hist_prev is not None and h_prev is not None and math.isfinite(h_prev):
                half_inv_r = h / (2 * h_prev)  # 1/(2r), r = h_prev/h
                denoised = torch.add(denoised, out.x0_hat - hist_prev, alpha=half_inv_r)
            x_next = torch.add(
                combine(s_s, out.eps_hat, a_s * exp_neg_h, out.x0_hat), denoised, alpha=a_s * (1 - exp_neg_h)
            )
            h_prev = h
        hist_prev = hist
        x = monitor.update(model, i, x, x_next, out)
    return x


def _lam_ratio(model: GuidedModel, t: float, t_next: float) -> float:
    """λ_s/λ_t = α_t σ_s/(α_s σ_t) for a step t → s (0 from λ_t = ∞ or to s = 0)."""
    a_t, s_t, _, _ = model.scalars(t)
    a_s, s_s, _, _ = model.scalars(t_next)
    return a_t * s_s / (a_s * s_t)


def _renoise(
    model: GuidedModel, out: GuidedStep, t_next: float, kappa: float, nu: float, noise: NoiseSource | None
) -> Tensor:
    """The DDIM-family step ``α_s·x0̂ + σ_s·(κ·ε̂ + ν·ξ)`` (ν = 0: deterministic)."""
    a_s, s_s, _, _ = model.scalars(t_next)
    x_next = combine(a_s, out.x0_hat, s_s * kappa, out.eps_hat)
    if nu > 0 and s_s > 0:
        assert noise is not None
        x_next = x_next + (s_s * nu) * noise(out.x0_hat)
    return x_next


def _check_eta(eta: float, noise: NoiseSource | None) -> None:
    if not 0 <= eta <= 1:
        raise ValueError(f"eta: churn must lie in [0, 1], got {eta}")
    if eta > 0 and noise is None:
        raise ValueError("noise: a NoiseSource is required when eta > 0")


SOLVERS: dict[str, Callable[..., Tensor]] = {
    "euler": sample_euler,
    "heun": sample_heun,
    "ddim": sample_ddim,
    "euler-maruyama": sample_euler_maruyama,
    "dpm++2m": sample_dpmpp_2m,
    "euler-ancestral": sample_euler_ancestral,
    "dpm++2s-ancestral": sample_dpmpp_2s_ancestral,
}
STOCHASTIC_SOLVERS = ("ddim", "euler-maruyama", "euler-ancestral", "dpm++2s-ancestral")
ETA_SOLVERS = ("ddim", "euler-ancestral", "dpm++2s-ancestral")
_ETA_DEFAULT = {"ddim": 0.0, "euler-ancestral": 1.0, "dpm++2s-ancestral": 1.0}


@dataclass
class SampleResult:
    """What :func:`sample` returns.

    Attributes:
        x: final samples (n, ...); diverged ones hold their last finite state.
        diverged: (n,) bool, samples flagged non-finite or out of bound and frozen.
        nfe: network evaluations per sample (a batched cond + uncond call counts 2).
        calls: forward calls made.
        wall_time: seconds.
        grid: the times actually used (N + 1,), float64: the given grid unless the start was moved.
        notes: what the sampler changed or decided on the user's behalf (e.g. a moved start), one line each.
        times: recorded times (R,), when recording.
        trajectory: states at ``times`` (R, n, ...), when recording.
        x0_trajectory: guided x0̂ at ``times`` (R, n, ...) (the last entry is the final state).
        ess: with FKC, the effective sample size of each class group before resampling, as a fraction of the
            group's size, per weighted step (N − 1, groups).
        resamplings: with FKC, the number of group resamplings.
    """

    x: Tensor
    diverged: Tensor
    nfe: int
    calls: int
    wall_time: float
    grid: Tensor | None = None
    notes: list[str] = field(default_factory=list)
    times: Tensor | None = None
    trajectory: Tensor | None = None
    x0_trajectory: Tensor | None = None
    ess: Tensor | None = None
    resamplings: int | None = None

    @property
    def num_diverged(self) -> int:
        return int(self.diverged.sum())

    @property
    def diverged_indices(self) -> list[int]:
        """Indices of the flagged samples, ascending."""
        return torch.nonzero(self.diverged.cpu()).reshape(-1).tolist()


def start_time(denoiser: Denoiser, grid: Tensor) -> tuple[Tensor, str | None]:
    """The grid with a start where the main prediction is defined, and a note when it moved.

    An ε- or score-predicting model cannot give x0̂ = (x_t − σ·ε̂)/α where α = 0 (t = 1 on rf and vp-cosine): at
    pure noise ε̂ ≈ x_t carries no information on x0. There the first time moves to
    ``max(t(λ = 80), (t_0 + t_1)/2)`` (EDM's σ_max, or halfway to the next grid time if that is higher), so the
    grid stays strictly decreasing and the step count is unchanged.
    """
    path = denoiser.path
    if getattr(denoiser, "prediction", None) not in SINGULAR_AT_PURE_NOISE:
        return grid, None
    if path_scalars(path, float(grid[0]))[0] != 0:
        return grid, None
    t_cap = float(path.t_of_lam(torch.tensor(_START_LAM, dtype=torch.float64)))
    t_start = max(t_cap, 0.5 * (float(grid[0]) + float(grid[1])))
    moved = grid.clone()
    moved[0] = t_start
    lam = path_scalars(path, t_start)
    note = (
        f"start moved from t={float(grid[0]):g} (α = 0, where a {denoiser.prediction!r} prediction gives no x0̂) "
        f"to t={t_start:.6g} (λ = {lam[1] / lam[0]:.4g})"
    )
    return moved, note


def sample(
    denoiser: Denoiser,
    guider: Guider | None,
    *,
    grid: Tensor,
    n: int | None = None,
    shape: tuple[int, ...] | None = None,
    cond: Tensor | int | None = None,
    solver: str = "euler",
    seed: int = 0,
    eta: float | None = None,
    x_init: Tensor | None = None,
    noise_ids: Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    record_every: int | None = None,
    divergence_bound: float | None = None,
    divergence_factor: float = DEFAULT_DIVERGENCE_FACTOR,
    data_scale: float | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = False,
    fkc: FKCConfig | None = None,
) -> SampleResult:
    """Sample ``n`` points of shape ``shape`` from the guided model.

    Args:
        denoiser: the main model; its path is the sampling path.
        guider: the guidance method (``None``: the conditional model alone).
        grid: N + 1 decreasing times in [0, 1] ending at 0 (:func:`guidelab.grids.make_grid`). Where the
            main model predicts ε or the score and the grid starts at α = 0, the start moves
            (:func:`start_time`) and ``result.notes`` says so.
        n, shape: sample count and per-sample shape (or ``x_init``).
        cond: class labels: an int for all samples, a tensor (n,), or ``None`` for the unconditional model.
        solver: one of :data:`SOLVERS`.
        seed: the noise seed. The start is ``x_init`` or ``σ(t_0)·ξ``; ξ and every stochastic solver's
            noise come from a :class:`~guidelab.noise.NoiseSource`, so sample k's numbers do not depend on
            n, the batch order or the dtype.
        eta: DDIM's churn η ∈ [0, 1] (default 0) or the ancestral solvers' η (default 1).
        noise_ids: stream index per sample (n,) (default 0..n−1): equal ids get equal noise (paired runs).
        dtype, device: of the state.
        record_every: record the state and x0̂ every that many steps.
        divergence_bound: a fixed bound on |x|; by default the bound is relative,
            ``divergence_factor·(α_t·data_scale + σ_t)``.
        data_scale: the data's coordinate scale; default the denoiser's ``data_scale`` attribute, else 1.
        callback: called after every step with a dict of the step's tensors.
        progress: show a progress bar.
        fkc: Feynman–Kac correctors (:class:`guidelab.fkc.FKCConfig`): particles weighted toward
            p(x|c)^γ p(x)^(1−γ) and resampled per class after every step; needs the ``cfg`` guider with a constant
            scale and a stochastic solver. ``result.ess`` and ``result.resamplings`` record them.

    Raises:
        ValueError: naming the field, for an unknown solver, a bad grid, counts or bounds.
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver: unknown name {solver!r}{did_you_mean(solver, SOLVERS)}")
    built_for = getattr(grid, "noise_path", None)
    if built_for is not None and built_for.config() != denoiser.path.config():
        raise ValueError(
            f"grid: built by make_grid for path {built_for.name!r}, but the denoiser is on path "
            f"{denoiser.path.name!r} ({denoiser.path.config()}); build the grid on the denoiser's path"
        )
    grid = torch.as_tensor(grid, dtype=torch.float64)
    if grid.ndim != 1 or grid.numel() < 2 or not bool((grid[1:] < grid[:-1]).all()):
        raise ValueError("grid: must be a strictly decreasing 1-D tensor of at least 2 times")
    if float(grid[0]) > 1 or float(grid[-1]) < 0:
        raise ValueError(f"grid: times must lie in [0, 1], got [{float(grid[-1])}, {float(grid[0])}]")
    if eta is not None and solver not in ETA_SOLVERS and eta != 0:
        raise ValueError(f"eta: solver {solver!r} has no churn; eta applies to {', '.join(ETA_SOLVERS)}")
    grid, note = start_time(denoiser, grid)
    notes = [note] if note else []
    if x_init is None:
        if n is None or shape is None:
            raise ValueError("n, shape: give both (or x_init)")
        if n < 1:
            raise ValueError(f"n: sample count must be ≥ 1, got {n}")
    else:
        x_init = x_init.to(device=device)
        n = x_init.shape[0]
    noise = NoiseSource(seed, device, noise_ids)
    if noise_ids is not None and noise.ids is not None and noise.ids.numel() != n:
        raise ValueError(f"noise_ids: expected {n} stream indices, got {noise.ids.numel()}")
    if x_init is None:
        assert shape is not None
        sigma_max = path_scalars(denoiser.path, float(grid[0]))[1]
        x = sigma_max * noise(torch.empty((n, *shape), dtype=dtype, device=device))
    else:
        x = x_init
    scale = data_scale if data_scale is not None else float(getattr(denoiser, "data_scale", 1.0))
    labels = as_cond(cond, n, device)
    corrector = None
    if fkc is not None:
        churn = (_ETA_DEFAULT[solver] if eta is None else eta) if solver in ETA_SOLVERS else 1.0
        stochastic = solver in STOCHASTIC_SOLVERS and churn > 0
        corrector = fkc.start(guider, labels, solver=solver, stochastic=stochastic, seed=seed)
        guider = corrector.guider
    model = GuidedModel(denoiser, guider, labels, grid)
    model.guider.reset(n)
    model.guider.prepare(model.grid, denoiser.path, denoiser)  # whole-grid checks before any evaluation
    options: dict[str, Any] = {}
    if solver in STOCHASTIC_SOLVERS:
        options["noise"] = noise
    if solver in ETA_SOLVERS:
        options["eta"] = _ETA_DEFAULT[solver] if eta is None else eta
    check_solver = getattr(model.guider, "check_solver", None)  # a guider whose rule is a whole step (rectified-cfg++)
    if check_solver is not None:
        check_solver(solver, options.get("eta", 0.0))
    start = time.perf_counter()
    with ProgressBar(progress, model.steps, f"sampling ({solver})") as bar:
        monitor = Monitor(
            n,
            bound=divergence_bound,
            factor=divergence_factor,
            data_scale=scale,
            record_every=record_every,
            callback=callback,
            progress=bar.advance if bar.enabled else None,
        )
        monitor.corrector = corrector
        with torch.no_grad():
            x = SOLVERS[solver](model, x, monitor=monitor, **options)
    wall = time.perf_counter() - start
    recorded = record_every is not None
    return SampleResult(
        x=x,
        diverged=monitor.diverged,
        nfe=model.nfe,
        calls=model.calls,
        wall_time=wall,
        grid=grid,
        notes=notes,
        times=torch.tensor(monitor.times, dtype=torch.float64) if recorded else None,
        trajectory=torch.stack(monitor.states) if recorded else None,
        x0_trajectory=torch.stack(monitor.x0_hats) if recorded else None,
        ess=corrector.ess_tensor() if corrector is not None else None,
        resamplings=corrector.resamplings if corrector is not None else None,
    )
