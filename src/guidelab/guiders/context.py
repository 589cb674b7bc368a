"""Where a guider is called and with what scale: the step context, the passes a guider asks for, and the scale γ
(a number or per-sample (batch,)) with its plain-JSON form. The lowest floor of the guider package: schedules
and the guider contract (:mod:`guidelab.guiders.base`) stand on it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from guidelab.denoiser import Denoiser
from guidelab.paths import NoisePath
from guidelab.progress import counted

__all__ = [
    "COND",
    "UNCOND",
    "Pass",
    "Scale",
    "StepContext",
    "as_batch",
    "is_neutral",
    "per_sample",
    "scale_from_config",
    "scale_to_config",
    "step_contexts",
]

Scale = float | Tensor


@dataclass(frozen=True)
class StepContext:
    """Where a guider is called: step ``index`` of ``steps`` on ``grid``, evaluating at time ``t``.

    ``t`` is ``grid[index]`` except at a solver's intermediate stage (Heun's corrector evaluates at
    ``grid[index + 1]``, ``stage = 1``). ``lam`` is the noise level σ/α at ``t``. ``cond`` holds the
    samples' class labels (batch,) (``NULL_COND`` = unconditional), for guiders whose rule depends on the class.
    ``evaluate(passes, x, t)`` runs extra passes at another point ``x`` (batch, ...) and time ``t`` and returns their
    :class:`~guidelab.guiders.base.Predictions` (a predictor-corrector rule such as Rectified-CFG++ uses it).
    """

    index: int
    steps: int
    t: float
    lam: float
    grid: Tensor
    path: NoisePath
    stage: int = 0
    cond: Tensor | None = field(default=None, repr=False, compare=False)
    # evaluate(passes, x, t) -> Predictions: extra network evaluations at another point (counted in the NFE)
    evaluate: Callable[[tuple[Pass, ...], Tensor, float], Any] | None = field(default=None, repr=False, compare=False)

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


def is_neutral(scale: Scale, neutral: float = 1.0) -> bool:
    """True where a scale equals its neutral value for every sample (the unconditional pass can be skipped)."""
    if isinstance(scale, Tensor):
        return bool((scale == neutral).all())
    return scale == neutral


def as_batch(scale: Scale, like: Tensor) -> Tensor | float:
    """A scale ready for per-sample float64 arithmetic: a float stays a float, a tensor becomes (batch,) float64
    on ``like``'s device. A per-sample scale of another length than the batch is a ValueError naming ``scale``."""
    if isinstance(scale, Tensor):
        if scale.ndim == 0:
            return float(scale)
        if scale.numel() != like.shape[0]:
            raise ValueError(
                f"scale: {scale.numel()} per-sample values for a batch of {counted(like.shape[0], 'sample')}; give "
                "one number or one value per sample"
            )
        return scale.to(device=like.device, dtype=torch.float64).reshape(-1)
    return float(scale)


def per_sample(value: Tensor | float, like: Tensor) -> Tensor | float:
    """A per-sample (batch,) quantity reshaped to broadcast against ``like`` (batch, ...) in its dtype."""
    if isinstance(value, Tensor):
        return value.to(dtype=like.dtype).reshape(value.shape[0], *([1] * (like.ndim - 1)))
    return value


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
