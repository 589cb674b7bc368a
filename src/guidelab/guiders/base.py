"""The guider contract: per step, which predictions are needed, and how they combine into a guided step.

A :class:`Guider` is asked for its :class:`Pass` es at each step (the conditional one, the unconditional
one, extra guide models) and gets them back as :class:`Predictions`, convertible to any space. It
returns a :class:`GuidedStep`: a clean estimate ``x0_hat`` to denoise with and a noise estimate
``eps_hat`` to renoise with. Every sampler consumes that pair, so CFG (both guided), CFG++ (ε̂
unconditional) and thresholding (x0̂ clipped) need no sampler special cases.

A guider that needs only the conditional prediction at a step must return only the conditional pass
then, so that the step costs one network evaluation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from guidelab.denoiser import Denoiser
from guidelab.paths import SPACES, NoisePath, PathCoefficients, convert, to_x0_eps

__all__ = [
    "COND",
    "UNCOND",
    "GuidedStep",
    "Guider",
    "Pass",
    "Predictions",
    "Scale",
    "StepContext",
    "broadcast_scale",
    "step_contexts",
]

Scale = float | Tensor


@dataclass(frozen=True)
class StepContext:
    """Where a guider is called: step ``index`` of ``steps`` on ``grid``, evaluating at time ``t``.

    ``t`` is ``grid[index]`` except at a solver's intermediate stage (Heun's corrector evaluates at
    ``grid[index + 1]``, ``stage = 1``). ``lam`` is the noise level σ/α at ``t``. ``cond`` holds the
    samples' class labels (batch,) (``NULL_COND`` = unconditional), for guiders whose rule depends on the class.
    """

    index: int
    steps: int
    t: float
    lam: float
    grid: Tensor
    path: NoisePath
    stage: int = 0
    cond: Tensor | None = field(default=None, repr=False, compare=False)
    evaluate: Callable[[Tensor, float, Tensor], Tensor] | None = field(default=None, repr=False, compare=False)

    @property
    def progress(self) -> float:
        """p = i/(N − 1): 0 at the noisiest step, 1 at the last (0 when N = 1)."""
        return self.index / (self.steps - 1) if self.steps > 1 else 0.0

    @property
    def t_next(self) -> float:
        return float(self.grid[self.index + 1])


def step_contexts(grid: Tensor, path: NoisePath) -> list[StepContext]:
    """The first evaluation (stage 0) of every step of ``grid`` on ``path``: N contexts, for looking at a guider
    or schedule over a whole run before sampling (checks, tables, the effective scale)."""
    grid = torch.as_tensor(grid, dtype=torch.float64)
    steps = grid.numel() - 1
    lams = path.lam(grid[:-1])
    return [StepContext(i, steps, float(grid[i]), float(lams[i]), grid, path) for i in range(steps)]


@dataclass(frozen=True)
class Pass:
    """One prediction a guider asks for: ``name``, with the sample's condition or the null one, from the
    main denoiser (``model=None``) or another one (a weaker guide model)."""

    name: str
    cond: Literal["cond", "null"] = "cond"
    model: Denoiser | None = field(default=None, compare=False)


COND = Pass("cond", "cond")
UNCOND = Pass("uncond", "null")


class Predictions:
    """The predictions of one step, by pass name, each convertible to any space (cached).

    Args:
        raw: name -> (prediction tensor (batch, ...), its space).
        x_t: the current state (batch, ...).
        coefficients: the path's coefficients at the evaluation time, broadcastable to ``x_t``.
    """

    def __init__(self, raw: dict[str, tuple[Tensor, str]], x_t: Tensor, coefficients: PathCoefficients):
        self._raw = raw
        self.x_t = x_t
        self.coefficients = coefficients
        self._cache: dict[tuple[str, str], Tensor] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._raw

    def names(self) -> tuple[str, ...]:
        return tuple(self._raw)

    def raw(self, name: str) -> tuple[Tensor, str]:
        """Prediction ``name`` as the model gave it, with its space (no conversion)."""
        if name not in self._raw:
            raise KeyError(f"prediction {name!r} was not requested; have {', '.join(self._raw)}")
        return self._raw[name]

    def get(self, name: str, space: str) -> Tensor:
        """Prediction ``name`` in ``space``."""
        key = (name, space)
        if key not in self._cache:
            if name not in self._raw:
                raise KeyError(f"prediction {name!r} was not requested; have {', '.join(self._raw)}")
            pred, src = self._raw[name]
            self._cache[key] = convert(pred, src, space, self.x_t, self.coefficients)
        return self._cache[key]

    def to_step(self, pred: Tensor, space: str) -> GuidedStep:
        """The consistent (x0̂, ε̂) pair of a combined prediction in ``space``."""
        x0_hat, eps_hat = to_x0_eps(pred, space, self.x_t, self.coefficients)
        return GuidedStep(x0_hat, eps_hat)


@dataclass
class GuidedStep:
    """A guided step: ``x0_hat`` to denoise with, ``eps_hat`` to renoise with (both (batch, ...))."""

    x0_hat: Tensor
    eps_hat: Tensor


def broadcast_scale(scale: Scale, like: Tensor) -> Tensor | float:
    """A scalar stays a float; a per-sample tensor (batch,) is reshaped to (batch, 1, ..., 1)."""
    if isinstance(scale, Tensor):
        if scale.ndim == 0:
            return float(scale)
        return scale.to(like).reshape(scale.shape[0], *([1] * (like.ndim - 1)))
    return scale


def is_neutral(scale: Scale, neutral: float = 1.0) -> bool:
    """True where a scale equals its neutral value for every sample (the unconditional pass can be skipped)."""
    if isinstance(scale, Tensor):
        return bool((scale == neutral).all())
    return scale == neutral


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


def check_space(space: str) -> None:
    if space not in SPACES:
        raise ValueError(f"space: unknown prediction space {space!r}; accepted: {', '.join(SPACES)}")


def scale_to_config(scale: Scale) -> float | list[float]:
    """A scale as plain JSON (per-sample tensors become lists)."""
    if isinstance(scale, Tensor):
        return scale.tolist() if scale.ndim else float(scale)
    return float(scale)


def scale_from_config(scale: Any, field_name: str = "scale") -> Scale:
    """Parse a scale: a number or a list of per-sample numbers (→ float64 tensor)."""
    if isinstance(scale, Tensor):
        if not torch.isfinite(scale).all():
            raise ValueError(f"{field_name}: must be finite, got {scale}")
        return scale
    if isinstance(scale, list | tuple):
        try:
            return torch.tensor([float(s) for s in scale], dtype=torch.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{field_name}: expected a number or a list of numbers, got {scale!r}") from None
    if isinstance(scale, bool):
        raise ValueError(f"{field_name}: expected a number, got {scale!r}")
    try:
        value = float(scale)
    except (TypeError, ValueError):
        raise ValueError(f"{field_name}: expected a number, got {scale!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{field_name}: must be finite, got {scale!r}")
    return value
