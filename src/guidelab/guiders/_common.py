"""Shared pieces of the guider catalogue: per-sample reductions (METHODS.md §0) and the scheduled-guider base.

Per-sample quantities (norms, dot products, standard deviations) are taken over all non-batch dimensions as one
BLAS reduction each in at least float32 (:func:`upcast`: float16 / bfloat16 are reduced in float32, float32 and
float64 in their own dtype); the ratios and angles built from them are float64, with an ε in every norm division.
A :class:`Step` hands the guiders half-precision predictions upcast to float32 and casts the guided pair back to
the predictions' dtype, so that no intermediate product overflows float16 (max 65504) and every rule runs in at
least float32; float32 and float64 predictions are used as they are (no copy). No Python loop over samples, no
host sync on the hot path beyond what :func:`~guidelab.guiders.base.is_neutral` needs to decide whether a pass
can be skipped.
"""

from __future__ import annotations

import functools
import math
from abc import abstractmethod
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from guidelab.guiders.base import (
    COND,
    UNCOND,
    GuidedStep,
    Guider,
    Pass,
    Predictions,
    Scale,
    StepContext,
    is_neutral,
)
from guidelab.guiders.schedules import ConstantSchedule, Schedule
from guidelab.paths import NoisePath

__all__ = [
    "EPS",
    "ScheduledGuider",
    "Step",
    "affine_pair",
    "as_batch",
    "as_schedule",
    "dot",
    "dot_over",
    "eps_space_step",
    "flat",
    "keep_neutral",
    "linear_step",
    "norm",
    "norm_over",
    "per_sample",
    "raw_space",
    "resolve_dims",
    "sq_norm",
    "std",
    "std_mean",
    "upcast",
]

EPS = 1e-12  # added to every per-sample norm (or squared norm) that divides


def flat(x: Tensor) -> Tensor:
    """(batch, ...) → (batch, D)."""
    return x if x.ndim == 2 else x.reshape(x.shape[0], -1)


def is_half(x: Tensor) -> bool:
    """Whether ``x`` is a floating tensor narrower than float32 (float16, bfloat16, float8)."""
    return x.dtype.is_floating_point and x.dtype.itemsize < 4


def upcast(x: Tensor) -> Tensor:
    """``x`` in at least float32: half types (float16, bfloat16) are upcast to float32; float32 and float64 are
    returned as they are (no copy)."""
    return x.float() if is_half(x) else x


def dot(a: Tensor, b: Tensor) -> Tensor:
    """<a, b> per sample over all non-batch dimensions (one BLAS reduction in at least float32), as float64 for
    the divisions that follow: (batch,)."""
    return torch.linalg.vecdot(flat(upcast(a)), flat(upcast(b))).to(torch.float64)


def sq_norm(a: Tensor) -> Tensor:
    """||a||² per sample (in at least float32), as float64: (batch,)."""
    return dot(a, a)


def norm(a: Tensor) -> Tensor:
    """||a|| per sample (reduced in at least float32), as float64: (batch,)."""
    x = flat(a)
    return torch.linalg.vector_norm(x, dim=1, dtype=torch.float32 if is_half(x) else None).to(torch.float64)


def resolve_dims(field: str, dims: tuple[int, ...], ndim: int) -> tuple[int, ...]:
    """``dims`` (from :func:`~guidelab.guiders._checks.check_dims`) as non-negative non-batch dimensions of a
    (batch, ...) tensor of rank ``ndim``; a ValueError naming ``field`` where one is out of range, is the batch, or
    two name the same dimension."""
    out = tuple(d % ndim if -ndim <= d < ndim else -1 for d in dims)
    if any(d <= 0 for d in out) or len(set(out)) != len(out):
        raise ValueError(
            f"{field}: {list(dims)} must name distinct non-batch dimensions of predictions of shape (batch, ...) "
            f"with {ndim} dimensions"
        )
    return out


def dot_over(a: Tensor, b: Tensor, dims: tuple[int, ...]) -> Tensor:
    """<a, b> over the non-batch dimensions ``dims`` (in at least float32), as float64, with those dimensions kept
    as size 1 so that it broadcasts against ``a``: e.g. (batch, 1, H, W) for ``dims = (1,)`` on (batch, C, H, W)."""
    return (upcast(a) * upcast(b)).sum(dim=dims, keepdim=True).to(torch.float64)


def norm_over(a: Tensor, dims: tuple[int, ...]) -> Tensor:
    """||a|| over the non-batch dimensions ``dims`` (in at least float32), as float64, dimensions kept (see
    :func:`dot_over`)."""
    return torch.linalg.vector_norm(upcast(a), dim=dims, keepdim=True).to(torch.float64)


def std_mean(a: Tensor) -> tuple[Tensor, Tensor]:
    """Population standard deviation and mean per sample over all non-batch dimensions (two-pass, in at least
    float32), as float64: two (batch,) tensors."""
    x = flat(upcast(a))
    mean = x.mean(dim=1, keepdim=True)
    sd = torch.linalg.vector_norm(x - mean, dim=1) / math.sqrt(x.shape[1])
    return sd.to(torch.float64), mean.reshape(-1).to(torch.float64)


def std(a: Tensor) -> Tensor:
    """Population standard deviation per sample over all non-batch dimensions (two-pass, in at least float32), as
    float64: (batch,)."""
    return std_mean(a)[0]


def as_batch(scale: Scale, like: Tensor) -> Tensor | float:
    """A scale ready for per-sample float64 arithmetic: a float stays a float, a tensor becomes (batch,) float64
    on ``like``'s device."""
    if isinstance(scale, Tensor):
        if scale.ndim == 0:
            return float(scale)
        return scale.to(device=like.device, dtype=torch.float64).reshape(-1)
    return float(scale)


def per_sample(value: Tensor | float, like: Tensor) -> Tensor | float:
    """A per-sample (batch,) quantity reshaped to broadcast against ``like`` (batch, ...) in its dtype."""
    if isinstance(value, Tensor):
        return value.to(dtype=like.dtype).reshape(value.shape[0], *([1] * (like.ndim - 1)))
    return value


def as_schedule(schedule: Schedule | Scale | Mapping[str, Any]) -> Schedule:
    """A schedule, its nested block ``{name, **parameters}``, or a number / per-sample list meaning a constant
    scale."""
    if isinstance(schedule, Schedule):
        return schedule
    if isinstance(schedule, Mapping):
        from guidelab.guiders.registry import build_schedule

        return build_schedule(schedule)
    return ConstantSchedule(schedule)


# --- fast conversions -------------------------------------------------------------------------------------
#
# Every conversion between prediction spaces at fixed x_t is affine, ``dst = m·pred + k·x_t``, with scalars m, k
# that depend only on (α, σ, α', σ') at the step. The generic :func:`guidelab.paths.convert` recomputes them as
# tensor arithmetic and forms both x0 and ε on every call (≈ 14 kernels from velocity); with the scalars as
# Python floats each conversion is one or two fused kernels. Used when the step's coefficients are one scalar per
# step (what the sampler passes); per-sample coefficients take the generic path.


@functools.lru_cache(maxsize=4096)
def _path_scalars(path: NoisePath, t: float) -> tuple[float, float, float, float]:
    c = path.coefficients(torch.tensor(t, dtype=torch.float64))
    return float(c.alpha), float(c.sigma), float(c.d_alpha), float(c.d_sigma)


def _scalars(preds: Predictions, ctx: StepContext) -> tuple[float, float, float, float] | None:
    """(α, σ, α', σ') as floats, or None for per-sample coefficients. On an accelerator, or where the coefficients
    were rounded to a half type, they come from the context's path and time in float64 (computed on the host, no
    device sync); on the CPU from the coefficients."""
    c = preds.coefficients
    if not (isinstance(c.alpha, Tensor) and c.alpha.ndim == 0 and c.sigma.ndim == 0):
        return None
    if c.alpha.device.type == "cpu" and not is_half(c.alpha):
        return float(c.alpha), float(c.sigma), float(c.d_alpha), float(c.d_sigma)
    return _path_scalars(ctx.path, float(ctx.t))


def _div(a: float, b: float) -> float | None:
    return None if b == 0 else a / b


def _to_pair(space: str, sc: tuple[float, float, float, float]) -> tuple[float, float, float, float] | None:
    """(p0, q0, p1, q1) with x0 = p0·pred + q0·x_t and ε = p1·pred + q1·x_t, or None where undefined."""
    a, s, da, ds = sc
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


def _from_pair(space: str, sc: tuple[float, float, float, float]) -> tuple[float, float] | None:
    """(A, B) with pred = A·x0 + B·ε in ``space``, or None where undefined."""
    _, s, da, ds = sc
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


def _affine(m: float, pred: Tensor, k: float, x_t: Tensor) -> Tensor:
    """m·pred + k·x_t in as few kernels as the scalars allow."""
    if k == 0:
        return pred if m == 1 else pred * m
    if m == 0:
        return x_t * k
    if k == 1:
        return torch.add(x_t, pred, alpha=m)
    if m == 1:
        return torch.add(pred, x_t, alpha=k)
    return torch.add(pred * m, x_t, alpha=k)


def raw_space(preds: Predictions, name: str) -> str:
    """The space the model predicted ``name`` in (read from the predictions' raw store)."""
    return preds.raw(name)[1]


class Step:
    """One guide call's view of the predictions: conversions and the final pair through the fast scalar path
    when the step has scalar coefficients, through :class:`Predictions` otherwise. Converted predictions are
    cached for the call.

    Predictions in a half type (float16, bfloat16) are handed out upcast to float32 (:func:`upcast`), so that every
    rule runs, and every intermediate product is formed, in at least float32; :meth:`pair` and :meth:`cond_pair`
    return the pair in the predictions' own dtype (``dtype``). float32 and float64 predictions are used as they are.
    """

    __slots__ = ("_cache", "dtype", "preds", "sc", "x_t")

    def __init__(self, preds: Predictions, ctx: StepContext):
        self.preds = preds
        self.dtype = preds.x_t.dtype
        self.x_t = upcast(preds.x_t)
        self.sc = _scalars(preds, ctx)
        self._cache: dict[tuple[str, str], Tensor] = {}

    def get(self, name: str, space: str) -> Tensor:
        """Prediction ``name`` in ``space``."""
        key = (name, space)
        out = self._cache.get(key)
        if out is None:
            raw, src = self.preds.raw(name) if name in self.preds else (None, None)
            raw = None if raw is None else upcast(raw)
            out = None
            if raw is not None and src == space:
                out = raw
            elif raw is not None and self.sc is not None:
                out = self.convert(raw, src, space)
            if out is None:
                out = upcast(self.preds.get(name, space))
            self._cache[key] = out
        return out

    def convert(self, pred: Tensor, src: str, dst: str) -> Tensor | None:
        """``pred`` from ``src`` to ``dst`` (None where the fast path does not apply)."""
        if src == dst:
            return pred
        if self.sc is None:
            return None
        to_pair, from_pair = _to_pair(src, self.sc), _from_pair(dst, self.sc)
        if to_pair is None or from_pair is None:
            return None
        p0, q0, p1, q1 = to_pair
        a_, b_ = from_pair
        return _affine(a_ * p0 + b_ * p1, pred, a_ * q0 + b_ * q1, self.x_t)

    def pair(self, pred: Tensor, space: str) -> GuidedStep:
        """The (x0̂, ε̂) pair of a combined prediction in ``space``, in the predictions' dtype."""
        coefs = None if self.sc is None else _to_pair(space, self.sc)
        if coefs is None:
            out = self.preds.to_step(pred, space)
        else:
            p0, q0, p1, q1 = coefs
            out = GuidedStep(_affine(p0, pred, q0, self.x_t), _affine(p1, pred, q1, self.x_t))
        return self.cast(out)

    def cast(self, out: GuidedStep) -> GuidedStep:
        """``out`` in the predictions' dtype (no copy where it already is)."""
        if out.x0_hat.dtype == self.dtype and out.eps_hat.dtype == self.dtype:
            return out
        return GuidedStep(out.x0_hat.to(self.dtype), out.eps_hat.to(self.dtype))

    def cond_pair(self) -> GuidedStep:
        """The conditional model's own pair, in the predictions' dtype."""
        return self.cast(GuidedStep(self.get("cond", "x0"), self.get("cond", "eps")))

    def alpha_is_zero(self) -> bool:
        if self.sc is not None:
            return self.sc[0] == 0
        return bool((self.preds.coefficients.alpha == 0).any())


def affine_pair(step: Step, weight: Scale | Tensor, base: str = "uncond") -> GuidedStep:
    """The pair of ``base + w·(cond − base)`` (w a number or per-sample (batch,)). An affine combination whose
    weights sum to 1 is the same in every prediction space at fixed x_t, so it is formed in the models' own space
    (no conversion of the inputs) and converted to the pair once: regular wherever the models' own pair is."""
    src = raw_space(step.preds, "cond")
    space = src if raw_space(step.preds, base) == src else "x0"
    c, u = step.get("cond", space), step.get(base, space)
    return step.pair(torch.lerp(u, c, per_sample(as_batch(weight, c), c)), space)


def linear_step(preds: Predictions, ctx: StepContext, weight: Scale, base: str = "uncond") -> GuidedStep:
    """:func:`affine_pair` on the predictions of a step: CFG's ``u + γ·(c − u)`` as one fused kernel in the models'
    own space plus the conversion to the pair (two kernels on rf). Half-precision predictions go through
    :func:`affine_pair` (in float32, so that the conversion's products cannot overflow)."""
    cond, src = preds.raw("cond")
    other, src_other = preds.raw(base)
    fast = src == src_other and not isinstance(weight, Tensor) and not is_half(cond) and not is_half(other)
    sc = _scalars(preds, ctx) if fast else None
    coefs = None if sc is None else _to_pair(src, sc)
    if coefs is None:
        return affine_pair(Step(preds, ctx), weight, base)
    p0, q0, p1, q1 = coefs
    combined = torch.lerp(other, cond, float(weight))
    return GuidedStep(_affine(p0, combined, q0, preds.x_t), _affine(p1, combined, q1, preds.x_t))


def keep_neutral(out: GuidedStep, step: Step, gamma: Scale, neutral: float = 1.0) -> GuidedStep:
    """Where a per-sample scale equals its neutral value, replace the guided pair by the conditional one, so a
    sample's result does not depend on the scales of the other samples in its batch. The pair is returned in the
    predictions' dtype (:meth:`Step.cast`)."""
    out = step.cast(out)
    if not isinstance(gamma, Tensor) or gamma.ndim == 0:
        return out
    mask = (gamma == neutral).to(out.x0_hat.device).reshape(-1, *([1] * (out.x0_hat.ndim - 1)))
    cond = step.cond_pair()
    return GuidedStep(torch.where(mask, cond.x0_hat, out.x0_hat), torch.where(mask, cond.eps_hat, out.eps_hat))


def eps_space_step(step: Step, pred: Tensor, space: str, x0_at_pure_noise: Callable[[], Tensor]) -> GuidedStep:
    """The pair of a prediction combined in ``space``, regular at pure noise.

    In ε or score space x0̂ = (x_t − σ·ε̂)/α is undefined where α = 0 (t = 1 on rf and vp-cosine): every ε̂ equals
    x_t there and carries no guidance. At such points x0̂ comes from ``x0_at_pure_noise()`` (the same rule
    written in x0) and ε̂ stays as combined. Other spaces convert directly.
    """
    if space in ("eps", "score") and step.alpha_is_zero():
        out = step.preds.to_step(pred, space)
        at_noise = step.preds.coefficients.alpha == 0
        return step.cast(GuidedStep(torch.where(at_noise, x0_at_pure_noise(), out.x0_hat), out.eps_hat))
    return step.pair(pred, space)


class ScheduledGuider(Guider):
    """A guider whose rule has a scale γ taken from a :class:`~guidelab.guiders.schedules.Schedule`.

    γ = 1 for every sample means *unguided*: the step asks only for the conditional prediction (one network
    evaluation) and returns the conditional pair untouched. Subclasses implement :meth:`combine` (both passes
    present) and :meth:`params` (their own constructor parameters).
    """

    def __init__(self, schedule: Schedule | Scale = 1.0):
        self.schedule = as_schedule(schedule)

    def passes(self, ctx: StepContext) -> tuple[Pass, ...]:
        return (COND,) if is_neutral(self.schedule(ctx)) else (COND, UNCOND)

    def guide(self, preds: Predictions, ctx: StepContext) -> GuidedStep:
        step = Step(preds, ctx)
        if "uncond" not in preds:
            return step.cond_pair()
        return self.combine(step, ctx, self.schedule(ctx))

    @abstractmethod
    def combine(self, step: Step, ctx: StepContext, gamma: Scale) -> GuidedStep:
        """The guided pair from the conditional and unconditional predictions at scale ``gamma``."""

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """The guider's own constructor parameters (schedule excluded), JSON-serialisable."""

    def config(self) -> dict[str, Any]:
        return {"name": self.name, **self.params(), "schedule": self.schedule.spec()}
