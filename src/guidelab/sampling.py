"""Samplers and the guided loop.

:class:`GuidedModel` turns a denoiser, a guider, class labels and a time grid into a function
``(x_t, step) -> GuidedStep`` (the guided pair x0̂, ε̂): it asks the guider which passes the step needs,
runs every pass of one model as **one batched call**, counts network evaluations, and converts.

Each sampler is a plain function ``sample_<name>(model, x, *, monitor, ...) -> x`` whose loop reads like
its algorithm; all consume only the guided pair. The :class:`Monitor` flags a sample whose state turns
non-finite or leaves ``|x| ≤ bound`` as diverged, freezes it at its last good state and counts it, and
records subsampled trajectories. :func:`sample` is the driver that wires them together.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from guidelab.guiders.base import GuidedStep, Guider, Pass, Predictions, StepContext
from guidelab.guiders.cfg import CFG
from guidelab.models.base import NULL_COND, Denoiser, as_cond
from guidelab.paths import NoisePath, PathCoefficients, velocity_from_x0_eps

__all__ = [
    "SOLVERS",
    "GuidedModel",
    "Monitor",
    "NoiseSource",
    "SampleResult",
    "sample",
    "sample_ddim",
    "sample_dpmpp_2m",
    "sample_euler",
    "sample_euler_maruyama",
    "sample_heun",
]


class NoiseSource:
    """Standard normal noise from one seeded generator: same seed, same numbers."""

    def __init__(self, seed: int = 0, device: torch.device | str = "cpu"):
        self.generator = torch.Generator(device=device).manual_seed(int(seed))

    def __call__(self, like: Tensor) -> Tensor:
        return torch.randn(like.shape, generator=self.generator, dtype=like.dtype, device=like.device)


class GuidedModel:
    """The guided prediction ``(x_t, step index) -> GuidedStep`` with NFE accounting.

    Args:
        denoiser: the main model (:class:`~guidelab.models.base.Denoiser`).
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
    def steps(self) -> int:
        return self.grid.numel() - 1

    def t(self, i: int) -> float:
        return float(self.grid[i])

    def coefficients(self, t: float, like: Tensor) -> PathCoefficients:
        """Path coefficients at scalar ``t`` (computed in float64) in ``like``'s dtype and device."""
        c = self.path.coefficients(torch.tensor(t, dtype=torch.float64))
        return c.expand_as(like)

    def context(self, i: int, t: float | None = None, stage: int = 0) -> StepContext:
        t = self.t(i) if t is None else t
        lam = float(self.path.lam(torch.tensor(t, dtype=torch.float64)))
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
            labels = [self.cond if p.cond == "cond" else torch.full_like(self.cond, NULL_COND) for p in group]
            x_in = x_t if len(group) == 1 else x_t.repeat(len(group), *([1] * (x_t.ndim - 1)))
            t_in = torch.full((n * len(group),), t, dtype=x_t.dtype, device=x_t.device)
            out = model(x_in, t_in, torch.cat(labels))
            for k, p in enumerate(group):
                raw[p.name] = (out[k * n : (k + 1) * n], model.prediction)
            self.calls += 1
        self.nfe += len(passes)
        return Predictions(raw, x_t, self.coefficients(t, x_t))

    def __call__(self, x_t: Tensor, i: int, *, t: float | None = None, stage: int = 0) -> GuidedStep:
        ctx = self.context(i, t, stage)
        preds = self.predict(self.guider.passes(ctx), x_t, ctx.t)
        return self.guider.guide(preds, ctx)

    def velocity(self, out: GuidedStep, t: float) -> Tensor:
        """Probability-flow velocity of the guided pair, ``dx/dt = α'·x0̂ + σ'·ε̂``."""
        return velocity_from_x0_eps(out.x0_hat, out.eps_hat, self.coefficients(t, out.x0_hat))


class Monitor:
    """Per-step bookkeeping shared by every sampler: divergence freezing, trajectory recording, callback.

    A sample whose next state is non-finite or has a coordinate beyond ``bound`` is flagged as diverged
    and frozen at its last good state; it is never propagated as NaN.
    """

    def __init__(
        self,
        batch: int,
        *,
        bound: float = 1e6,
        record_every: int | None = None,
        callback: Callable[[dict[str, Any]], None] | None = None,
        progress: Callable[[], None] | None = None,
    ):
        if record_every is not None and record_every < 1:
            raise ValueError(f"record_every: must be ≥ 1, got {record_every}")
        self.bound = bound
        self.record_every = record_every
        self.callback = callback
        self.progress = progress
        self.diverged = torch.zeros(batch, dtype=torch.bool)
        self.times: list[float] = []
        self.states: list[Tensor] = []
        self.x0_hats: list[Tensor] = []

    def update(self, model: GuidedModel, i: int, x: Tensor, x_next: Tensor, out: GuidedStep) -> Tensor:
        """The state after step ``i`` with diverged samples frozen."""
        flat = x_next.reshape(x_next.shape[0], -1)
        bad = ~torch.isfinite(flat).all(dim=1) | (flat.abs() > self.bound).any(dim=1)
        self.diverged = self.diverged.to(bad.device) | bad
        x_next = torch.where(self.diverged.reshape(-1, *([1] * (x.ndim - 1))), x, x_next)
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


def sample_euler(model: GuidedModel, x: Tensor, *, monitor: Monitor) -> Tensor:
    """Euler on the probability-flow ODE ``dx/dt = α'·x0̂ + σ'·ε̂`` (first order)."""
    for i in range(model.steps):
        t, t_next = model.t(i), model.t(i + 1)
        out = model(x, i)
        x = monitor.update(model, i, x, x + (t_next - t) * model.velocity(out, t), out)
    return x


def sample_heun(model: GuidedModel, x: Tensor, *, monitor: Monitor) -> Tensor:
    """Heun's second-order method on the probability-flow ODE (Karras et al. 2022, arXiv 2206.00364,
    Alg. 1); the last step, which lands on t = 0, is an Euler step."""
    for i in range(model.steps):
        t, t_next = model.t(i), model.t(i + 1)
        out = model(x, i)
        d_cur = model.velocity(out, t)
        x_next = x + (t_next - t) * d_cur
        if t_next > 0:
            d_next = model.velocity(model(x_next, i, t=t_next, stage=1), t_next)
            x_next = x + (t_next - t) * 0.5 * (d_cur + d_next)
        x = monitor.update(model, i, x, x_next, out)
    return x


def sample_ddim(
    model: GuidedModel, x: Tensor, *, monitor: Monitor, eta: float = 0.0, noise: NoiseSource | None = None
) -> Tensor:
    """DDIM with churn η ∈ [0, 1] (Song et al. 2021, arXiv 2010.02502; parametrized as in arXiv 2510.00815):
    ``κ = 1 − η²(1 − α_t σ_s/(α_s σ_t))``, ``x_s = α_s x0̂ + σ_s(κ ε̂ + √(1 − κ²) ξ)``.

    η = 0 is deterministic DDIM, η = 1 the ancestral (DDPM posterior) step.
    """
    if not 0 <= eta <= 1:
        raise ValueError(f"eta: churn must lie in [0, 1], got {eta}")
    if eta > 0 and noise is None:
        raise ValueError("noise: a NoiseSource is required when eta > 0")
    for i in range(model.steps):
        t, t_next = model.t(i), model.t(i + 1)
        out = model(x, i)
        c_t, c_s = model.coefficients(t, x), model.coefficients(t_next, x)
        x_next = c_s.alpha * out.x0_hat
        if t_next > 0:
            kappa = 1 - eta**2 * (1 - c_t.alpha * c_s.sigma / (c_s.alpha * c_t.sigma))
            direction = kappa * out.eps_hat
            if eta > 0:
                direction = direction + torch.sqrt(torch.clamp(1 - kappa**2, min=0)) * noise(x)
            x_next = x_next + c_s.sigma * direction
        x = monitor.update(model, i, x, x_next, out)
    return x


def sample_euler_maruyama(
    model: GuidedModel, x: Tensor, *, monitor: Monitor, noise: NoiseSource | None = None
) -> Tensor:
    """Euler–Maruyama on the reverse SDE ``dx = [f·x − g²·∇log p_t] dt + g dW̄`` with ``f = α'/α``,
    ``g² = 2σσ' − 2fσ²`` and ``∇log p_t = −ε̂/σ`` (Song et al. 2021, arXiv 2011.13456). The last step,
    onto t = 0, takes the drift without noise."""
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
        c = model.coefficients(t, x)
        f = c.d_alpha / c.alpha
        g_sq = 2 * c.sigma * c.d_sigma - 2 * f * c.sigma**2
        drift = f * x + g_sq * out.eps_hat / c.sigma  # f·x − g²·score, score = −ε̂/σ
        x_next = x + (t_next - t) * drift
        if t_next > 0:
            x_next = x_next + torch.sqrt(g_sq * (t - t_next)) * noise(x)
        x = monitor.update(model, i, x, x_next, out)
    return x


def sample_dpmpp_2m(model: GuidedModel, x: Tensor, *, monitor: Monitor) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095, Alg. 2) in data prediction, written on the
    guided pair: with ``h = log(α_s/σ_s) − log(α_t/σ_t)`` and ``D = (1 + 1/2r)·x0̂_i − (1/2r)·x0̂_{i−1}``,
    ``x_s = σ_s·ε̂ + α_s·[e^{−h}·x0̂ + (1 − e^{−h})·D]``; first order on the first and the last step."""
    x0_prev: Tensor | None = None
    h_prev: float | None = None
    for i in range(model.steps):
        t, t_next = model.t(i), model.t(i + 1)
        out = model(x, i)
        cf_t = model.path.coefficients(torch.tensor(t, dtype=torch.float64))
        cf_s = model.path.coefficients(torch.tensor(t_next, dtype=torch.float64))
        if t_next == 0:
            x_next = cf_s.alpha.to(x) * out.x0_hat
        else:
            exp_neg_h = float(cf_t.alpha * cf_s.sigma / (cf_s.alpha * cf_t.sigma))  # e^{−h}
            h = float(torch.log(cf_s.alpha / cf_s.sigma) - torch.log(cf_t.alpha / cf_t.sigma))
            denoised = out.x0_hat
            if x0_prev is not None and h_prev is not None:
                half_inv_r = h / (2 * h_prev)  # 1/(2r), r = h_prev/h
                denoised = (1 + half_inv_r) * out.x0_hat - half_inv_r * x0_prev
            x_next = float(cf_s.sigma) * out.eps_hat + float(cf_s.alpha) * (
                exp_neg_h * out.x0_hat + (1 - exp_neg_h) * denoised
            )
            h_prev = h
        x0_prev = out.x0_hat
        x = monitor.update(model, i, x, x_next, out)
    return x


SOLVERS: dict[str, Callable[..., Tensor]] = {
    "euler": sample_euler,
    "heun": sample_heun,
    "ddim": sample_ddim,
    "euler-maruyama": sample_euler_maruyama,
    "dpm++2m": sample_dpmpp_2m,
}
_STOCHASTIC = {"ddim", "euler-maruyama"}


@dataclass
class SampleResult:
    """What :func:`sample` returns.

    Attributes:
        x: final samples (n, ...); diverged ones hold their last finite state.
        diverged: (n,) bool, samples flagged non-finite or out of bound and frozen.
        nfe: network evaluations per sample (a batched cond + uncond call counts 2).
        calls: forward calls made.
        wall_time: seconds.
        times: recorded times (R,), when recording.
        trajectory: states at ``times`` (R, n, ...), when recording.
        x0_trajectory: guided x0̂ at ``times`` (R, n, ...) (the last entry is the final state).
    """

    x: Tensor
    diverged: Tensor
    nfe: int
    calls: int
    wall_time: float
    times: Tensor | None = None
    trajectory: Tensor | None = None
    x0_trajectory: Tensor | None = None

    @property
    def num_diverged(self) -> int:
        return int(self.diverged.sum())


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
    eta: float = 0.0,
    x_init: Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    record_every: int | None = None,
    divergence_bound: float = 1e6,
    callback: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = False,
) -> SampleResult:
    """Sample ``n`` points of shape ``shape`` from the guided model.

    The start is ``x_init`` or ``σ(t_max)·ξ`` with ξ ~ N(0, I) from a generator seeded by ``seed`` (the
    same generator then drives the stochastic solvers). ``eta`` is DDIM's churn. ``cond`` holds class
    labels (an int for all samples, a tensor (n,), or ``None`` for the unconditional model).
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver: unknown name {solver!r}; accepted: {', '.join(SOLVERS)}")
    grid = torch.as_tensor(grid, dtype=torch.float64)
    if grid.ndim != 1 or grid.numel() < 2 or not bool((grid[1:] < grid[:-1]).all()):
        raise ValueError("grid: must be a strictly decreasing 1-D tensor of at least 2 times")
    if float(grid[0]) > 1 or float(grid[-1]) < 0:
        raise ValueError(f"grid: times must lie in [0, 1], got [{float(grid[-1])}, {float(grid[0])}]")
    noise = NoiseSource(seed, device)
    if x_init is None:
        if n is None or shape is None:
            raise ValueError("n, shape: give both (or x_init)")
        if n < 1:
            raise ValueError(f"n: sample count must be ≥ 1, got {n}")
        sigma_max = float(denoiser.path.coefficients(grid[0]).sigma)
        x = sigma_max * noise(torch.empty((n, *shape), dtype=dtype, device=device))
    else:
        x = x_init.to(device=device)
        n = x.shape[0]
    labels = as_cond(cond, n, device)
    model = GuidedModel(denoiser, guider, labels, grid)
    model.guider.reset(n)
    options: dict[str, Any] = {}
    if solver in _STOCHASTIC:
        options["noise"] = noise
    if solver == "ddim":
        options["eta"] = eta
    start = time.perf_counter()
    with _progress_bar(progress, model.steps, solver) as advance:
        monitor = Monitor(n, bound=divergence_bound, record_every=record_every, callback=callback, progress=advance)
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
        times=torch.tensor(monitor.times, dtype=torch.float64) if recorded else None,
        trajectory=torch.stack(monitor.states) if recorded else None,
        x0_trajectory=torch.stack(monitor.x0_hats) if recorded else None,
    )


class _progress_bar:
    """A rich progress bar over steps, or nothing."""

    def __init__(self, enabled: bool, total: int, label: str):
        self.enabled, self.total, self.label = enabled, total, label
        self._progress: Any = None

    def __enter__(self) -> Callable[[], None] | None:
        if not self.enabled:
            return None
        from rich.progress import Progress

        self._progress = Progress(transient=True)
        self._progress.start()
        task = self._progress.add_task(f"sampling ({self.label})", total=self.total)
        return lambda: self._progress.advance(task)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
