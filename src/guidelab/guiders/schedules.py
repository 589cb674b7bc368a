"""Guidance-weight schedules γ(step): a schedule maps a :class:`StepContext` to the scale γ (Ho form,
``guided = u + γ·(c − u)``; γ = 1 is the conditional model). See docs/methods.md §1.

Every combiner whose rule has a scale takes a ``schedule`` (TV-CFG weights inside APG, an interval around
AdaMaG, …). Where a schedule gives γ = 1 for every sample, the guider asks only for the conditional pass. No
schedule is clamped at γ ≥ 1: the negative window needs γ < 1. Scales may be per-sample tensors (batch,).

Schedules written in time (TV-CFG's Δt, the TV-CFG interval baseline, the negative window's τ) read the
rectified-flow time ``s = σ/(α + σ) = λ/(1 + λ)`` of the step's grid point (:meth:`NoisePath.rf_time
<guidelab.paths.NoisePath.rf_time>`), not the path's own t, so a setting means the same noise levels on every
path; on ``rf`` s = t and the values are those of the official code. λ-based bounds (``interval``) transfer
already, and the step-index schedules (Wang, step probes, negative switch) read p = i/(N − 1).

========================  ===============================================================================
name                      rule
========================  ===============================================================================
``constant``              γ
``interval``              γ if λ_lo < λ_i ≤ λ_hi else 1 (λ at the step's grid point)
``wang``                  unit-mean shapes in p (linear, cosine, mirrors, V, Λ), extra or Ho reading
``tv-cfg``                triangle low → high → low peaking at N//2, rescaled so Σ γ_i·Δs_i = γ̄
``tv-interval``           TV-CFG code's baseline: γ in s ∈ (s_lo, s_hi), 1 outside, Σ γ_i·Δs_i = γ̄
``step-up``/``step-down`` low then high (or high then low) around p_switch
``negative-window``       1 + w₀ + ω·s (below 1 near the data)
``negative-switch``       γ_high for p < p_switch, then scale_late (0 = unconditional)
========================  ===============================================================================
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from guidelab.guiders._checks import check_choice, check_flag, check_number, construct
from guidelab.guiders.context import Scale, StepContext, scale_from_config, scale_to_config, step_contexts
from guidelab.guiders.scales import extra_to_ho, ho_to_extra
from guidelab.paths import NoisePath
from guidelab.progress import counted
from guidelab.validation import did_you_mean

__all__ = [
    "SCHEDULES",
    "WANG_SHAPES",
    "ConstantSchedule",
    "IntervalSchedule",
    "NegativeSwitchSchedule",
    "NegativeWindowSchedule",
    "Schedule",
    "StepDownSchedule",
    "StepUpSchedule",
    "TVCFGSchedule",
    "TVIntervalSchedule",
    "WangSchedule",
    "as_schedule",
    "build_schedule",
    "normalized_dt",
    "register_schedule",
    "rf_grid",
    "step_lam",
    "triangle",
    "tv_cfg_weights",
    "tv_interval_weights",
]

SCHEDULES: dict[str, type[Schedule]] = {}


def register_schedule(cls: type[Schedule]) -> type[Schedule]:
    """Class decorator: make a schedule buildable by its ``name``."""
    SCHEDULES[cls.name] = cls
    return cls


class Schedule(ABC):
    """γ as a function of the step; scalars or per-sample tensors (batch,)."""

    name: ClassVar[str]
    source: ClassVar[str] = ""

    @abstractmethod
    def __call__(self, ctx: StepContext) -> Scale:
        """γ at this step."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """Parameters (without the name) that rebuild this schedule."""

    def mean_scale(self, grid: Tensor, path: NoisePath) -> float:
        """The run's guidance scale as one number: ``Σ_i γ_i·Δs_i / Σ_i Δs_i`` over the N steps of ``grid`` on
        ``path``, with s the rectified-flow time (so TV-CFG gives its γ̄, a constant schedule its γ, an interval
        its time-weighted mean), averaged over samples for a per-sample scale."""
        grid = torch.as_tensor(grid, dtype=torch.float64)
        s = rf_grid(grid, path)
        total = 0.0
        for ctx in step_contexts(grid, path):
            value = float(torch.as_tensor(self(ctx), dtype=torch.float64).mean())
            total += value * float(s[ctx.index] - s[ctx.index + 1])
        return total / float(s[0] - s[-1])

    def spec(self) -> dict[str, Any]:
        """The nested block ``{name, **config()}`` that :func:`~guidelab.guiders.registry.build_schedule`
        rebuilds this schedule from."""
        return {"name": self.name, **self.config()}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({params})"


@register_schedule
class ConstantSchedule(Schedule):
    """γ_i = scale at every step (Ho & Salimans 2022, arXiv 2207.12598)."""

    name = "constant"
    source = "arXiv 2207.12598"

    def __init__(self, scale: Scale = 1.0):
        self.scale = scale_from_config(scale)

    def __call__(self, ctx: StepContext) -> Scale:
        return self.scale

    def config(self) -> dict[str, Any]:
        return {"scale": scale_to_config(self.scale)}


# --- helpers --------------------------------------------------------------------------------------------


def _maximum(value: Scale, floor: float) -> Scale:
    """max(value, floor) for a number or elementwise for a per-sample tensor."""
    if isinstance(value, Tensor):
        return torch.clamp_min(value, floor)
    return max(value, floor)


def _check_scale(field: str, scale: Scale, *, lo: float | None = None) -> None:
    if lo is None:
        return
    low = float(scale.min()) if isinstance(scale, Tensor) else scale
    if low < lo:
        raise ValueError(f"{field}: must be ≥ {lo:g} (every sample), got {scale_to_config(scale)!r}")


class _PerGrid:
    """One quantity computed per (grid, path), recomputed only when either object changes."""

    def __init__(self, fn: Callable[[Tensor, NoisePath], Any]):
        self.fn = fn
        self._key: tuple[Tensor, NoisePath] | None = None
        self._value: Any = None

    def __call__(self, ctx: StepContext) -> Any:
        if self._key is None or self._key[0] is not ctx.grid or self._key[1] is not ctx.path:
            self._value = self.fn(ctx.grid, ctx.path)
            self._key = (ctx.grid, ctx.path)
        return self._value


def rf_grid(grid: Tensor, path: NoisePath) -> Tensor:
    """The grid in rectified-flow time, s_i = σ_i/(α_i + σ_i) (float64; the grid itself on ``rf``)."""
    return path.rf_time(torch.as_tensor(grid, dtype=torch.float64))


def step_lam(ctx: StepContext) -> float:
    """λ_i of the step's own grid point t_i (the same for every stage of the step)."""
    if ctx.stage == 0:
        return ctx.lam
    return float(ctx.path.lam(torch.as_tensor(ctx.grid[ctx.index], dtype=torch.float64)))


# --- interval -------------------------------------------------------------------------------------------


@register_schedule
class IntervalSchedule(Schedule):
    """Guidance in a noise-level interval: γ where ``λ_lo < λ_i ≤ λ_hi``, 1 elsewhere.

    Kynkäänniemi et al. 2024, arXiv 2404.07724 (EDM2-XXL: FID 1.81 → 1.40 at γ = 2.0, λ ∈ (0.19, 1.61], the
    defaults). Bounds are noise levels λ = σ/α (the EDM σ), so a setting transfers between paths. The decision
    is snapped to step edges: it is made from λ_i at the step's grid point t_i, so every evaluation of a step
    (Heun's corrector included) uses the same γ, and steps outside the interval skip the unconditional pass.
    The interval is half-open as in EDM2.

    Args:
        scale: γ inside the interval (a number or a per-sample list).
        lam_lo: lower bound (excluded), ≥ 0.
        lam_hi: upper bound (included), > lam_lo; ``None`` (or ``inf``) for none: (0, ∞] is plain CFG.
    """

    name = "interval"
    source = "arXiv 2404.07724"

    def __init__(self, scale: Scale = 2.0, lam_lo: float = 0.19, lam_hi: float | None = 1.61):
        self.scale = scale_from_config(scale)
        self.lam_lo = check_number("lam_lo", lam_lo, lo=0.0)
        if lam_hi is None or (isinstance(lam_hi, int | float) and lam_hi == math.inf):
            self.lam_hi = math.inf
        else:
            self.lam_hi = check_number("lam_hi", lam_hi, lo=self.lam_lo, lo_open=True)
        if not self.lam_hi > self.lam_lo:
            raise ValueError(f"lam_hi: must exceed lam_lo={self.lam_lo}, got {lam_hi}")

    def inside(self, ctx: StepContext) -> bool:
        """Whether the step's grid point lies in (λ_lo, λ_hi]."""
        return self.lam_lo < step_lam(ctx) <= self.lam_hi

    def __call__(self, ctx: StepContext) -> Scale:
        return self.scale if self.inside(ctx) else 1.0

    def config(self) -> dict[str, Any]:
        lam_hi = None if math.isinf(self.lam_hi) else self.lam_hi
        return {"scale": scale_to_config(self.scale), "lam_lo": self.lam_lo, "lam_hi": lam_hi}


# --- Wang et al. shapes ---------------------------------------------------------------------------------

WANG_SHAPES: tuple[str, ...] = ("linear", "cosine", "linear-down", "cosine-down", "v", "lambda")
CONVENTIONS: tuple[str, ...] = ("extra", "ho")


def wang_profile(shape: str, p: float) -> float:
    """The unit-mean profile f(p) on p ∈ [0, 1] (0 = noisiest step) of each shape."""
    if shape == "linear":
        return 2 * p
    if shape == "cosine":
        return 1 - math.cos(math.pi * p)
    if shape == "linear-down":
        return 2 * (1 - p)
    if shape == "cosine-down":
        return 1 + math.cos(math.pi * p)
    if shape == "v":
        return 2 * abs(2 * p - 1)
    if shape == "lambda":
        return 2 * (1 - abs(2 * p - 1))
    raise ValueError(f"shape: got {shape!r}{did_you_mean(shape, WANG_SHAPES)}")


@register_schedule
class WangSchedule(Schedule):
    """Monotone and V/Λ weight shapes in the progress p = i/(N − 1) (Wang et al. 2024, arXiv 2404.13040).

    Each shape is a unit-mean profile f(p): ``linear`` 2p, ``cosine`` 1 − cos πp, their decreasing mirrors
    ``linear-down`` 2(1 − p) and ``cosine-down`` 1 + cos πp, ``v`` 2|2p − 1| and ``lambda`` 2(1 − |2p − 1|).
    The paper's scale convention is uncertain, so both readings are offered, neither guessed:

    - ``convention="extra"`` (docs/methods.md §1): the paper's weight is the extra-form w, so with w̄ = γ̄ − 1
      (:func:`~guidelab.guiders.scales.ho_to_extra`) ``γ(p) = 1 + max(w̄·f(p), floor)``; linear gives
      ``1 + 2w̄p``, and ``floor=1`` the teaser rule ``w = max(1, 2w̄p)``.
    - ``convention="ho"``: the paper's weight is γ itself, ``γ(p) = max(γ̄·f(p), floor)``.

    ``floor`` is in the convention's own units; ``None`` for no clamp. The unclamped mean over p is γ̄.

    Args:
        scale: γ̄, the mean scale in Ho form (a number or a per-sample list).
        shape: one of ``linear``, ``cosine``, ``linear-down``, ``cosine-down``, ``v``, ``lambda``.
        convention: ``extra`` or ``ho``, how the paper's weight is read (see above).
        floor: optional clamp floor, in the convention's units.
    """

    name = "wang"
    source = "arXiv 2404.13040"

    def __init__(
        self, scale: Scale = 2.0, shape: str = "linear", convention: str = "extra", floor: float | None = None
    ):
        self.scale = scale_from_config(scale)
        check_choice("shape", shape, WANG_SHAPES)
        check_choice("convention", convention, CONVENTIONS)
        self.shape = shape
        self.convention = convention
        self.floor = None if floor is None else check_number("floor", floor)

    def __call__(self, ctx: StepContext) -> Scale:
        f = wang_profile(self.shape, ctx.progress)
        if self.convention == "extra":
            w = ho_to_extra(self.scale) * f
            return extra_to_ho(w if self.floor is None else _maximum(w, self.floor))
        gamma = self.scale * f
        return gamma if self.floor is None else _maximum(gamma, self.floor)

    def config(self) -> dict[str, Any]:
        return {
            "scale": scale_to_config(self.scale),
            "shape": self.shape,
            "convention": self.convention,
            "floor": self.floor,
        }


# --- TV-CFG ---------------------------------------------------------------------------------------------


def triangle(steps: int) -> Tensor:
    """The TV-CFG triangle fraction f_i ∈ [0, 1] over step indices: 0 at i = 0, rising linearly to 1 at the
    peak i = N//2, falling linearly to 0 at i = N − 1 (as ``symmetric`` in the official code)."""
    i = torch.arange(steps, dtype=torch.float64)
    peak = steps // 2
    up = i / peak if peak > 0 else torch.zeros_like(i)
    down_len = steps - 1 - peak
    down = (steps - 1 - i) / down_len if down_len > 0 else torch.ones_like(i)
    return torch.where(i <= peak, up, down)


def normalized_dt(grid: Tensor) -> Tensor:
    """Δt_i of the grid normalized so that t_0 = 1 and t_N = 0 (they sum to 1): (N,) float64."""
    grid = torch.as_tensor(grid, dtype=torch.float64)
    return (grid[:-1] - grid[1:]) / (grid[0] - grid[-1])


def _mean_scale(scale: Scale) -> tuple[Tensor, bool]:
    """γ̄ as float64: a 0-d tensor, or (1, batch) for a per-sample scale; and whether it is per-sample."""
    if isinstance(scale, Tensor) and scale.ndim > 0:
        return scale.to(torch.float64).reshape(1, -1), True
    return torch.tensor(float(scale), dtype=torch.float64), False  # float64: 1.7 stays 1.7


def tv_cfg_weights(
    grid: Tensor, scale: Scale, low: float = 1.0, high: float | None = None, normalize: bool = True
) -> Tensor:
    """TV-CFG's per-step scales on ``grid``: (N,) for a scalar γ̄, (N, batch) for a per-sample one.

    The official ``symmetric`` schedule: a triangle in the step index from ``low`` up to ``high`` (peak at
    N//2) and back down, ``γ_i = low + (high − low)·f_i`` (:func:`triangle`); with ``normalize`` it is then
    multiplied by ``γ̄/Σ_i γ_i·Δt_i`` so that its Δt-weighted mean over the grid's normalized steps
    (:func:`normalized_dt`) is exactly γ̄. The official defaults are ``low = 1``, ``high = 2γ̄ − 1``
    (``high=None``); γ̄ = 1 then gives exactly 1 at every step. ``grid`` is read as given: the schedule
    passes the grid in rectified-flow time (:func:`rf_grid`), which on ``rf`` is the grid itself.

    Raises:
        ValueError: ``low``/``high`` make the triangle zero on every step (nothing to normalize).
    """
    f = triangle(len(grid) - 1)
    dt = normalized_dt(grid)
    gbar, per_sample = _mean_scale(scale)
    if per_sample:
        f, dt = f.reshape(-1, 1), dt.reshape(-1, 1)
    # high = 2γ̄ − 1 by default; written as 2γ̄ − (1 + low) so that low = 1 gives 1 + (2γ̄ − 2)·f exactly
    slope = 2 * gbar - (1 + low) if high is None else torch.tensor(high - low, dtype=torch.float64)
    raw = low + slope * f
    if per_sample:
        raw = torch.broadcast_to(raw, (raw.shape[0], gbar.shape[1]))
    if not normalize:
        return raw.clone()
    total = (raw * dt).sum(dim=0)
    if bool((total == 0).any()):
        raise ValueError(f"low/high: the triangle from {low} to {high} is zero on every step; nothing to normalize")
    gamma = raw * gbar / total
    neutral = (raw == 1).all(dim=0) & (gbar == 1)  # the all-ones triangle at γ̄ = 1: exactly unguided
    return torch.where(neutral, torch.ones_like(gamma), gamma)


class _GridSchedule(Schedule):
    """A schedule whose scales depend on the whole grid (normalised over it): :meth:`weights` gives all N of them
    at once, computed once per grid and read per step."""

    def __init__(self) -> None:
        self._weights = _PerGrid(self.weights)

    @abstractmethod
    def weights(self, grid: Tensor, path: NoisePath) -> Tensor:
        """The per-step scales on ``grid`` (times of ``path``): (N,) or (N, batch)."""

    def __call__(self, ctx: StepContext) -> Scale:
        if len(ctx.grid) - 1 != ctx.steps:
            raise ValueError(f"grid: has {counted(len(ctx.grid) - 1, 'step')} but the context says {ctx.steps}")
        gamma = self._weights(ctx)[ctx.index]
        return gamma if gamma.ndim > 0 else float(gamma)


@register_schedule
class TVCFGSchedule(_GridSchedule):
    """TV-CFG, the stage-wise time-varying scale (Jin, Shi, Gu 2025, arXiv 2509.22007; official code
    sqt24/tvcfg, ``guidance_schedulers.py``, ``symmetric``).

    A triangle in the step index rising linearly from ``low`` to ``high`` (peak at i = N//2) and back down,
    ``γ_i = low + (high − low)·f_i``, then (``normalize``) rescaled so that ``Σ_i γ_i·Δs_i = γ̄`` with Δs the
    steps of the grid in rectified-flow time ``s = σ/(α + σ)`` normalized to s_0 = 1, s_N = 0: the same
    guidance budget as constant γ̄ on that grid, moved to the middle stage. The official run uses
    ``low = 1``, ``high = 2γ̄ − 1`` (the defaults) with ``normalize``. The official code measures Δt in SD3's
    time, which is s; so on ``rf`` these are its values, and on every other path the same noise levels get
    the same weights. Reported on SD3.5 at NFE 10, γ̄ = 9: FID 38.99 → 30.26 against constant. Every
    evaluation of step i uses γ_i.

    Args:
        scale: γ̄, the Δs-weighted mean scale (a number or a per-sample list), kept in float64; ≥ 0.5 when
            ``high`` is None, so that the default triangle stays ≥ 0.
        low: the triangle's value at the first and last steps, ≥ 0.
        high: its value at the peak, ≥ 0; ``None`` for 2γ̄ − 1 (per sample).
        normalize: rescale to the Δs-weighted mean γ̄ (official default); ``False`` uses the raw triangle,
            which then does not depend on ``scale`` unless ``high`` is None.
    """

    name = "tv-cfg"
    source = "arXiv 2509.22007"

    def __init__(self, scale: Scale = 2.0, low: float = 1.0, high: float | None = None, normalize: bool = True):
        self.scale = scale_from_config(scale)
        self.low = check_number("low", low, lo=0.0)
        self.high = None if high is None else check_number("high", high, lo=0.0)
        self.normalize = check_flag("normalize", normalize)
        if self.high is None:
            _check_scale("scale", self.scale, lo=0.5)
        super().__init__()

    def weights(self, grid: Tensor, path: NoisePath) -> Tensor:
        """The per-step scales on ``grid`` (times of ``path``): (N,) or (N, batch)."""
        return tv_cfg_weights(rf_grid(grid, path), self.scale, self.low, self.high, self.normalize)

    def config(self) -> dict[str, Any]:
        return {"scale": scale_to_config(self.scale), "low": self.low, "high": self.high, "normalize": self.normalize}


def tv_interval_weights(
    grid: Tensor, scale: Scale, s_lo: float = 0.15, s_hi: float = 0.78, normalize: bool = True
) -> Tensor:
    """The TV-CFG code's interval baseline on ``grid``: (N,) for a scalar γ̄, (N, batch) for a per-sample one.

    With τ_i = (s_i − s_N)/(s_0 − s_N) the normalized time of step i's grid point (open interval, as the code's
    ``left < t < right``): γ_i = v for s_lo < τ_i < s_hi, 1 elsewhere; with ``normalize``,
    ``v = (γ̄ − Σ_out Δs)/Σ_in Δs`` so that Σ_i γ_i·Δs_i = γ̄ (:func:`normalized_dt`), without it v = γ̄.

    Raises:
        ValueError: ``normalize`` and no step of the grid inside the interval.
    """
    grid = torch.as_tensor(grid, dtype=torch.float64)
    tau = (grid[:-1] - grid[-1]) / (grid[0] - grid[-1])
    inside = (s_lo < tau) & (tau < s_hi)
    dt = normalized_dt(grid)
    gbar, per_sample = _mean_scale(scale)
    if per_sample:
        inside, dt = inside.reshape(-1, 1), dt.reshape(-1, 1)
    value = gbar
    if normalize:
        dt_in = (dt * inside).sum(dim=0)
        if float(dt_in.min()) == 0:
            raise ValueError(f"s_lo/s_hi: no step of this {len(tau)}-step grid lies in ({s_lo}, {s_hi})")
        value = torch.where(gbar == 1, torch.ones_like(gbar), (gbar - (dt * ~inside).sum(dim=0)) / dt_in)
    gamma = torch.where(inside, value, torch.ones_like(value))
    return gamma if not per_sample else torch.broadcast_to(gamma, (len(tau), gbar.shape[1])).clone()


@register_schedule
class TVIntervalSchedule(_GridSchedule):
    """The interval baseline of the TV-CFG code (arXiv 2509.22007; sqt24/tvcfg, ``guidance_schedulers.py``,
    ``interval``): guidance only where the step's normalized rectified-flow time lies in (s_lo, s_hi), with its
    value chosen so that the Δs-weighted mean scale over the whole grid is γ̄ (``normalize``, as the official
    run), or equal to γ̄ inside (``normalize=False``). Unlike ``interval`` (bounds in λ, EDM2's half-open
    rule, γ given), the bounds are in time and the budget is matched to constant γ̄.

    τ_i = (s_i − s_N)/(s_0 − s_N) with s = σ/(α + σ) (the code divides SD3's timesteps by the first one; the
    same on ``rf``, and the same noise levels on every path); outside the interval the step asks only for the
    conditional pass.

    Args:
        scale: γ̄, the Δs-weighted mean (``normalize``) or the scale inside the interval (a number or a
            per-sample list).
        s_lo: lower bound (excluded) in normalized rectified-flow time, in [0, 1).
        s_hi: upper bound (excluded), in (s_lo, 1].
        normalize: choose the inside value so that the Δs-weighted mean is γ̄ (official default).
    """

    name = "tv-interval"
    source = "arXiv 2509.22007"

    def __init__(self, scale: Scale = 2.0, s_lo: float = 0.15, s_hi: float = 0.78, normalize: bool = True):
        self.scale = scale_from_config(scale)
        self.s_lo = check_number("s_lo", s_lo, lo=0.0, hi=1.0, hi_open=True)
        self.s_hi = check_number("s_hi", s_hi, lo=self.s_lo, hi=1.0, lo_open=True)
        self.normalize = check_flag("normalize", normalize)
        super().__init__()

    def weights(self, grid: Tensor, path: NoisePath) -> Tensor:
        """The per-step scales on ``grid`` (times of ``path``): (N,) or (N, batch)."""
        return tv_interval_weights(rf_grid(grid, path), self.scale, self.s_lo, self.s_hi, self.normalize)

    def config(self) -> dict[str, Any]:
        return {
            "scale": scale_to_config(self.scale),
            "s_lo": self.s_lo,
            "s_hi": self.s_hi,
            "normalize": self.normalize,
        }


# --- step probes ----------------------------------------------------------------------------------------


class _StepProbe(Schedule):
    early_high: bool

    def __init__(self, scale: Scale = 2.0, scale_low: Scale | None = None, p_switch: float = 0.25):
        self.scale = scale_from_config(scale)
        self.scale_low = None if scale_low is None else scale_from_config(scale_low, "scale_low")
        self.p_switch = check_number("p_switch", p_switch, lo=0.0, hi=1.0)

    @property
    def low(self) -> Scale:
        """The low scale: ``scale_low``, or scale/3 as in the official code."""
        return self.scale / 3 if self.scale_low is None else self.scale_low

    def __call__(self, ctx: StepContext) -> Scale:
        early = ctx.progress < self.p_switch
        return self.scale if early == self.early_high else self.low

    def config(self) -> dict[str, Any]:
        low = None if self.scale_low is None else scale_to_config(self.scale_low)
        return {"scale": scale_to_config(self.scale), "scale_low": low, "p_switch": self.p_switch}


@register_schedule
class StepUpSchedule(_StepProbe):
    """Stage probe: low scale for the first steps (progress p < p_switch), then high (arXiv 2509.22007, official
    code: low = γ/3 for the first 25% of steps). Early strong guidance kills global diversity; this keeps it.

    Args:
        scale: the high scale γ (a number or a per-sample list).
        scale_low: the low scale; ``None`` for γ/3 as in the official code.
        p_switch: progress p = i/(N − 1) at which the scale switches (p < p_switch is early).
    """

    name = "step-up"
    source = "arXiv 2509.22007"
    early_high = False


@register_schedule
class StepDownSchedule(_StepProbe):
    """Stage probe: high scale for the first steps (progress p < p_switch), then low (arXiv 2509.22007, official
    code: low = γ/3 after the first 25% of steps). Late strong guidance kills fine variation; this keeps it.

    Args:
        scale: the high scale γ (a number or a per-sample list).
        scale_low: the low scale; ``None`` for γ/3 as in the official code.
        p_switch: progress p = i/(N − 1) at which the scale switches (p < p_switch is early).
    """

    name = "step-down"
    source = "arXiv 2509.22007"
    early_high = True


# --- negative window ------------------------------------------------------------------------------------


@register_schedule
class NegativeWindowSchedule(Schedule):
    """Negative guidance window, continuous form: ``γ(τ) = 1 + w₀ + ω·τ`` (Ventura et al. 2026, arXiv 2602.00716).

    τ is the forward time normalized to [0, 1] with 0 = data, read as the rectified-flow time
    ``s = σ/(α + σ) = λ/(1 + λ)`` of the step's grid point t_i (= t_i on ``rf``; the same noise levels give the
    same γ on every path; a solver's corrector evaluation of the step uses the step's γ, as with every schedule
    here). With w₀ < 0 < ω the scale is above 1 early (noisy) and below 1 late, toward the unconditional model.
    The form comes from a secondary reading and the paper gives no defaults: the defaults here (w₀ = −0.5,
    ω = 2, so γ runs from 2.5 at noise to 0.5 at the data) are placeholders to tune. w₀ = ω = 0 is the
    conditional model.

    Args:
        w0: offset w₀ ≥ −1 (γ ≥ 0 at the data).
        omega: slope ω ≥ 0.
    """

    name = "negative-window"
    source = "arXiv 2602.00716"

    def __init__(self, w0: Scale = -0.5, omega: Scale = 2.0):
        self.w0 = scale_from_config(w0, "w0")
        self.omega = scale_from_config(omega, "omega")
        _check_scale("w0", self.w0, lo=-1.0)
        _check_scale("omega", self.omega, lo=0.0)
        self._rf_grid = _PerGrid(rf_grid)

    def __call__(self, ctx: StepContext) -> Scale:
        tau = float(self._rf_grid(ctx)[ctx.index])  # s of the step's grid point, every stage
        return 1 + self.w0 + self.omega * tau

    def config(self) -> dict[str, Any]:
        return {"w0": scale_to_config(self.w0), "omega": scale_to_config(self.omega)}


@register_schedule
class NegativeSwitchSchedule(Schedule):
    """Negative guidance window, practical switch form: γ_high while the progress p < p_switch, then
    ``scale_late`` (0 = the unconditional model) (Ventura et al. 2026, arXiv 2602.00716; p_switch of 0.5–0.7
    reported, default 0.6; no default γ_high is given, 2.0 is a placeholder).

    Args:
        scale: γ_high, the early scale (a number or a per-sample list).
        p_switch: progress p = i/(N − 1) at which the scale switches.
        scale_late: the late scale (0 = unconditional; below 1 is allowed).
    """

    name = "negative-switch"
    source = "arXiv 2602.00716"

    def __init__(self, scale: Scale = 2.0, p_switch: float = 0.6, scale_late: Scale = 0.0):
        self.scale = scale_from_config(scale)
        self.p_switch = check_number("p_switch", p_switch, lo=0.0, hi=1.0)
        self.scale_late = scale_from_config(scale_late, "scale_late")

    def __call__(self, ctx: StepContext) -> Scale:
        return self.scale if ctx.progress < self.p_switch else self.scale_late

    def config(self) -> dict[str, Any]:
        return {
            "scale": scale_to_config(self.scale),
            "p_switch": self.p_switch,
            "scale_late": scale_to_config(self.scale_late),
        }


def build_schedule(spec: Mapping[str, Any], label: str = "schedule") -> Schedule:
    """A schedule from its nested block ``{name: NAME, **parameters}`` (``name`` defaults to ``constant``);
    errors name the block (``label``), the parameter and what is accepted."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"{label}: expected a block {{name: ..., parameters}}, got {spec!r}")
    params = dict(spec)
    name = params.pop("name", None) or "constant"
    if name not in SCHEDULES:
        raise ValueError(f"{label}: unknown name {name!r}{did_you_mean(name, sorted(SCHEDULES))}")
    return construct(SCHEDULES[name], f"{label} {name!r}", params, also=("name",))


def as_schedule(schedule: Schedule | Scale | Mapping[str, Any]) -> Schedule:
    """A schedule, its nested block ``{name, **parameters}``, or a number / per-sample list meaning a constant
    scale."""
    if isinstance(schedule, Schedule):
        return schedule
    if isinstance(schedule, Mapping):
        return build_schedule(schedule)
    return ConstantSchedule(schedule)
