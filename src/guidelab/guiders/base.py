"""The guider contract: per step, which predictions are needed, and how they combine into a guided step.

A :class:`Guider` is asked for its :class:`Pass` es at each step (the conditional one, the unconditional
one, extra guide models) and gets them back as :class:`Predictions`, convertible to any space. It
returns a :class:`GuidedStep`: a clean estimate ``x0_hat`` to denoise with and a noise estimate
``eps_hat`` to renoise with. Every sampler consumes that pair, so CFG (both guided), CFG++ (ε̂
unconditional) and thresholding (x0̂ clipped) need no sampler special cases.

A guider that needs only the conditional prediction at a step must return only the conditional pass
then, so that the step costs one network evaluation. Every guider with a scale is a :class:`ScheduledGuider`:
it takes γ from a schedule and writes only its :meth:`~ScheduledGuider.combine`.

Half-precision predictions (float16, bfloat16) are handed to the rules upcast to float32, and the guided pair is
cast back to the predictions' dtype, so that every rule runs, and every intermediate product is formed, in at
least float32 (float16 overflows at 65504); float32 and float64 predictions are used as they are (no copy).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from guidelab.guiders.context import (
    COND,
    UNCOND,
    Pass,
    Scale,
    StepContext,
    as_batch,
    is_neutral,
    per_sample,
    scale_from_config,
    scale_to_config,
    step_contexts,
)
from guidelab.guiders.reductions import is_half, upcast
from guidelab.guiders.schedules import Schedule, as_schedule
from guidelab.paths import (
    NoisePath,
    PathCoefficients,
    Scalars,
    combine,
    convert,
    pair_coefficients,
    space_coefficients,
    to_x0_eps,
)

__all__ = [
    "COND",
    "UNCOND",
    "GuidedStep",
    "Guider",
    "Pass",
    "Predictions",
    "Scale",
    "ScheduledGuider",
    "StepContext",
    "as_batch",
    "is_neutral",
    "per_sample",
    "scale_from_config",
    "scale_to_config",
    "step_contexts",
]


@dataclass
class GuidedStep:
    """A guided step: ``x0_hat`` to denoise with, ``eps_hat`` to renoise with (both (batch, ...))."""

    x0_hat: Tensor
    eps_hat: Tensor


class Predictions:
    """The predictions of one step, by pass name, each convertible to any space (cached per call).

    With one scalar per step (``scalars`` = (α, σ, α', σ') as floats, what the sampler passes; or read from 0-d
    CPU coefficients) a conversion is one or two fused kernels (:func:`~guidelab.paths.pair_coefficients`);
    per-sample coefficients take the elementwise path (:func:`~guidelab.paths.convert`).

    Args:
        raw: name -> (prediction tensor (batch, ...), its space).
        x_t: the current state (batch, ...).
        coefficients: the path's coefficients at the evaluation time, broadcastable to ``x_t``.
        scalars: (α, σ, α', σ') as Python floats where the step has one time; None to read them from
            ``coefficients`` (0-d, on the CPU, not rounded to a half type) or use the elementwise path.
    """

    __slots__ = ("_cache", "_raw", "coefficients", "dtype", "sc", "x_t")

    def __init__(
        self,
        raw: dict[str, tuple[Tensor, str]],
        x_t: Tensor,
        coefficients: PathCoefficients,
        scalars: Scalars | None = None,
    ):
        self._raw = raw
        self.dtype = x_t.dtype
        self.x_t = upcast(x_t)
        self.coefficients = coefficients
        self.sc = scalars if scalars is not None else _scalars_of(coefficients)
        self._cache: dict[tuple[str, str], Tensor] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._raw

    def names(self) -> tuple[str, ...]:
        return tuple(self._raw)

    def raw(self, name: str) -> tuple[Tensor, str]:
        """Prediction ``name`` as the model gave it, with its space (no conversion, no upcast)."""
        if name not in self._raw:
            raise KeyError(f"prediction {name!r} was not requested; have {', '.join(self._raw)}")
        return self._raw[name]

    def space(self, name: str) -> str:
        """The space the model predicted ``name`` in."""
        return self.raw(name)[1]

    def get(self, name: str, space: str) -> Tensor:
        """Prediction ``name`` in ``space`` (in at least float32)."""
        key = (name, space)
        out = self._cache.get(key)
        if out is None:
            pred, src = self.raw(name)
            pred = upcast(pred)
            out = self.convert(pred, src, space)
            if out is None:
                out = convert(pred, src, space, self.x_t, self.coefficients)
            self._cache[key] = out
        return out

    def convert(self, pred: Tensor, src: str, dst: str) -> Tensor | None:
        """``pred`` from ``src`` to ``dst`` with the step's scalars (None where they do not apply)."""
        if src == dst:
            return pred
        if self.sc is None:
            return None
        to_pair, from_pair = pair_coefficients(src, self.sc), space_coefficients(dst, self.sc)
        if to_pair is None or from_pair is None:
            return None
        p0, q0, p1, q1 = to_pair
        a_, b_ = from_pair
        return combine(a_ * p0 + b_ * p1, pred, a_ * q0 + b_ * q1, self.x_t)

    def pair(self, pred: Tensor, space: str, scale: float = 1.0) -> GuidedStep:
        """The consistent (x0̂, ε̂) pair of the combined prediction ``scale·pred`` in ``space``, in the predictions'
        dtype (``scale`` is folded into the conversion's weights where the step has scalars: no extra pass)."""
        coefs = None if self.sc is None else pair_coefficients(space, self.sc)
        if coefs is None:
            if scale != 1:
                pred = pred * scale
            out = GuidedStep(*to_x0_eps(pred, space, self.x_t, self.coefficients))
        else:
            p0, q0, p1, q1 = coefs
            out = GuidedStep(combine(p0 * scale, pred, q0, self.x_t), combine(p1 * scale, pred, q1, self.x_t))
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
        """Whether α = 0 (pure noise) at this step, for any sample."""
        if self.sc is not None:
            return self.sc[0] == 0
        return bool((self.coefficients.alpha == 0).any())


def _scalars_of(c: PathCoefficients) -> Scalars | None:
    """(α, σ, α', σ') as floats from 0-d CPU coefficients not rounded to a half type (no device sync); None
    otherwise."""
    alpha = c.alpha
    if not (isinstance(alpha, Tensor) and alpha.ndim == 0 and c.sigma.ndim == 0):
        return None
    if alpha.device.type != "cpu" or is_half(alpha):
        return None
    return float(alpha), float(c.sigma), float(c.d_alpha), float(c.d_sigma)


class Guider(ABC):
    """Base of every guidance method.

    Subclasses set ``name`` (registry key), ``space`` (the prediction space they combine in) and
    ``source`` (arXiv id or reference), implement :meth:`passes` and :meth:`guide`, and list their
    constructor parameters in :meth:`config` so that ``build_guider(**guider.config())`` rebuilds them.
    """

    name: ClassVar[str]
    space: ClassVar[str] = "x0"
    source: ClassVar[str] = ""

    def reset(self, batch: int) -> None:  # noqa: B027 - stateless guiders need no reset
        """Clear per-trajectory state before sampling a batch of ``batch`` trajectories."""

    def prepare(self, grid: Tensor, path: NoisePath, denoiser: Any = None) -> None:  # noqa: B027 - most need none
        """Check the guider against the whole sampling ``grid`` on ``path`` before the first network evaluation,
        and read what it needs to know of the ``denoiser`` (e.g. its ``data_range``); a sampler calls it once per
        run, after :meth:`reset`. Raises ValueError naming the offending field."""

    def effective_scale(self, grid: Tensor, path: NoisePath, cond: int | None = None) -> float | None:
        """The run's guidance scale γ (Ho form) as one number, for tables and plots: the rectified-flow-time
        mean of the guider's ``schedule`` over ``grid`` (:meth:`~guidelab.guiders.schedules.Schedule.mean_scale`;
        CFG++ gives its λ, weak-model guidance its first guide's γ); ``None`` for a guider without a scale. ``cond``
        is the class sampled (guiders whose weight depends on the class)."""
        schedule = getattr(self, "schedule", None)
        return None if schedule is None else schedule.mean_scale(grid, path)

    @abstractmethod
    def passes(self, ctx: StepContext) -> tuple[Pass, ...]:
        """The predictions needed at ``ctx``; only ``(COND,)`` where the unconditional one is not used."""

    @abstractmethod
    def guide(self, preds: Predictions, ctx: StepContext) -> GuidedStep:
        """Combine the requested predictions into the guided (x0̂, ε̂) pair."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """Plain, JSON-serialisable parameters, including ``name``."""

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({params})"


class ScheduledGuider(Guider):
    """A guider whose rule has a scale γ taken from a :class:`~guidelab.guiders.schedules.Schedule`.

    γ = 1 for every sample means *unguided*: the step asks only for the conditional prediction (one network
    evaluation) and returns the conditional pair untouched. Subclasses implement :meth:`combine` (both passes
    present) and :meth:`params` (their own constructor parameters).

    ``default_scale`` is the scale used where none is given (no schedule, or a ``constant`` schedule without
    ``scale``); each built-in guider documents its value and source in docs/methods.md §9. ``None`` (the default
    for a guider written outside the catalogue) means the scale is required: leaving it out is a ValueError naming
    ``scale``.
    """

    default_scale: ClassVar[float | None] = None

    def __init__(self, schedule: Schedule | Scale | None = None):
        self.schedule = as_schedule(self.resolve_default_scale() if schedule is None else schedule)

    @classmethod
    def resolve_default_scale(cls) -> float:
        """The scale used where none is given; a ValueError naming ``scale`` where the guider has no default."""
        if cls.default_scale is None:
            raise ValueError(
                f"scale: guider {getattr(cls, 'name', cls.__name__)!r} has no default scale; give one "
                "(--param scale=..., or scale: ... in a sweep file)"
            )
        return cls.default_scale

    def passes(self, ctx: StepContext) -> tuple[Pass, ...]:
        return (COND,) if is_neutral(self.schedule(ctx)) else (COND, UNCOND)

    def guide(self, preds: Predictions, ctx: StepContext) -> GuidedStep:
        if "uncond" not in preds:
            return preds.cond_pair()
        return self.combine(preds, ctx, self.schedule(ctx))

    @abstractmethod
    def combine(self, preds: Predictions, ctx: StepContext, gamma: Scale) -> GuidedStep:
        """The guided pair from the conditional and unconditional predictions at scale ``gamma``."""

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """The guider's own constructor parameters (schedule excluded), JSON-serialisable."""

    def config(self) -> dict[str, Any]:
        return {"name": self.name, **self.params(), "schedule": self.schedule.spec()}
