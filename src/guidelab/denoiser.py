"""The contract every model meets: the Denoiser protocol ``(x_t, t, cond) -> prediction`` in a declared space
on a declared path, the null condition and label handling.

A condition is a class index (or, for text models, a prompt's row in the model's condition table); ``NULL_COND``
(−1) or ``cond=None`` is the unconditional model. One batch may mix conditions, the null one included, so that a
guider's cond and uncond passes run as one call. A denoiser whose null condition depends on the sample's condition
(each prompt with its own negative prompt) says so with a ``null_cond(cond) -> labels`` method; :func:`null_labels`
asks it.

This module is the ground floor: it imports nothing of guidelab at run time, and everything else may import it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import Tensor

if TYPE_CHECKING:
    from guidelab.paths import NoisePath

__all__ = ["NULL_COND", "Denoiser", "as_cond", "as_times", "null_labels"]

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


def as_times(t: Tensor | float, batch: int, device: torch.device | str | None = None) -> Tensor:
    """Times as a tensor (batch,): a scalar (or one-element tensor) is repeated; ValueError names ``t``."""
    t = torch.as_tensor(t, device=device).reshape(-1)
    if t.numel() == 1:
        t = t.expand(batch)
    if t.numel() != batch:
        raise ValueError(f"t: expected a scalar or {batch} times, got shape {tuple(t.shape)}")
    return t


def null_labels(model: object, cond: Tensor) -> Tensor:
    """The labels of the unconditional pass for samples with labels ``cond`` (batch,): the model's
    ``null_cond(cond)`` where it defines one, else ``NULL_COND`` for every sample."""
    hook = getattr(model, "null_cond", None)
    return hook(cond) if hook is not None else torch.full_like(cond, NULL_COND)
