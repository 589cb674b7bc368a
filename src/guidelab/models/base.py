"""The Denoiser protocol: ``(x_t, t, cond) -> prediction`` in a declared space on a declared path.

A condition is a class index; ``NULL_COND`` (−1) or ``cond=None`` is the unconditional model. One batch
may mix conditions, the null one included, so that a guider's cond and uncond passes run as one call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import Tensor

from guidelab.paths import NoisePath

if TYPE_CHECKING:
    from guidelab.targets.base import Target

__all__ = ["NULL_COND", "Denoiser", "ExactDenoiser", "as_cond"]

NULL_COND = -1


@runtime_checkable
class Denoiser(Protocol):
    """A conditional denoiser.

    Attributes:
        path: the noise path it was trained on (or, for exact targets, is evaluated on).
        prediction: the space of its output: ``"x0"``, ``"eps"``, ``"velocity"`` or ``"score"``.
    """

    path: NoisePath
    prediction: str

    def __call__(self, x_t: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        """Predict for ``x_t`` (batch, ...) at times ``t`` (batch,) under labels ``cond`` (batch,)."""
        ...


def as_cond(cond: Tensor | int | None, batch: int, device: torch.device | str | None = None) -> Tensor:
    """Labels as an int64 tensor (batch,); ``None`` means unconditional (all ``NULL_COND``)."""
    if cond is None:
        return torch.full((batch,), NULL_COND, dtype=torch.long, device=device)
    if isinstance(cond, int):
        return torch.full((batch,), cond, dtype=torch.long, device=device)
    cond = torch.as_tensor(cond, device=device)
    if cond.dtype.is_floating_point or cond.dtype == torch.bool:
        raise ValueError(f"cond: class labels must be integers, got dtype {cond.dtype}")
    if cond.ndim == 0:
        return cond.long().expand(batch).clone()
    if cond.shape != (batch,):
        raise ValueError(f"cond: expected shape ({batch},), got {tuple(cond.shape)}")
    return cond.long()


class ExactDenoiser:
    """The exact posterior mean ``E[x0 | x_t, c]`` of an analytic target on a path (prediction ``x0``).

    Swaps freely with a network: samplers and guiders run on ground truth through the same protocol.
    """

    prediction = "x0"

    def __init__(self, target: Target, path: NoisePath):
        self.target = target
        self.path = path

    @property
    def data_scale(self) -> float:
        """The target's coordinate scale (sets the sampler's relative divergence bound)."""
        return self.target.data_scale

    @property
    def data_range(self) -> tuple[float, float]:
        """The target's coordinate range (low, high) (the default range of thresholding guiders)."""
        return self.target.data_range

    def __call__(self, x_t: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        return self.target.posterior_mean(x_t, t, self.path, cond)

    def __repr__(self) -> str:
        return f"ExactDenoiser({self.target!r}, {self.path!r})"
