"""The analytic-target interface: a class-conditional distribution whose every noisy marginal, score and
denoiser is known exactly on any :class:`~guidelab.paths.NoisePath`.

A target is a mixture of components; each component belongs to one class, each class is a weighted
sub-mixture (so a conditional may be multimodal), and the unconditional is the prior-weighted mixture
of classes. ``cond`` arguments take an int64 tensor (batch,) of class indices where ``NULL_COND`` (−1)
means unconditional, a single int, or ``None`` (all unconditional).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from guidelab.models.base import NULL_COND, ExactDenoiser, as_cond
from guidelab.paths import NoisePath

__all__ = ["Target"]


class Target(ABC):
    """A class-conditional mixture with exact noisy log-densities and denoisers.

    Subclasses set ``dim``, ``class_names`` (one per class), ``class_prior`` (C,), ``component_class``
    (K,) int64 and ``log_component_weight`` (K,): the log of each component's weight *within its
    class* (so ``logsumexp`` over a class's components is 0).
    """

    dim: int
    class_names: list[str]
    class_prior: Tensor
    component_class: Tensor
    log_component_weight: Tensor
    description: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_components(self) -> int:
        return int(self.component_class.numel())

    def class_index(self, name: str | int) -> int:
        """The index of a class given by name or index (``"null"``/``"none"``/−1 give ``NULL_COND``)."""
        if isinstance(name, int) or (isinstance(name, str) and name.lstrip("-").isdigit()):
            idx = int(name)
            if idx == NULL_COND:
                return NULL_COND
            if not 0 <= idx < self.num_classes:
                raise ValueError(f"cond: class index {idx} out of range [0, {self.num_classes - 1}]")
            return idx
        if name.lower() in ("null", "none", "uncond"):
            return NULL_COND
        if name not in self.class_names:
            raise ValueError(f"cond: unknown class {name!r}; accepted: {', '.join(self.class_names)} or null")
        return self.class_names.index(name)

    def log_mixture_weights(self, cond: Tensor | int | None, batch: int) -> Tensor:
        """Log weight of every component under each sample's condition, (batch, K); −∞ outside the class.

        Unconditional rows use ``log π_c + log w_k``.
        """
        cond = as_cond(cond, batch, self.class_prior.device)
        if (cond >= self.num_classes).any() or (cond < NULL_COND).any():
            raise ValueError(f"cond: labels must lie in [-1, {self.num_classes - 1}], got {cond.unique().tolist()}")
        log_prior = torch.log(self.class_prior)
        uncond = log_prior[self.component_class] + self.log_component_weight  # (K,)
        neg_inf = torch.tensor(float("-inf"), dtype=uncond.dtype, device=uncond.device)
        # (C + 1, K) table; the last row is the null condition.
        table = torch.where(
            self.component_class[None, :] == torch.arange(self.num_classes, device=uncond.device)[:, None],
            self.log_component_weight[None, :],
            neg_inf,
        )
        table = torch.cat([table, uncond[None, :]], dim=0)
        return table[torch.where(cond == NULL_COND, self.num_classes, cond)]

    # --- exact quantities, implemented per family -------------------------------------------------------

    @abstractmethod
    def sample(self, n: int, cond: int | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Exact samples (n, dim) of p(x | cond) (``cond=None``: of p(x))."""

    @abstractmethod
    def component_log_prob_t(self, x_t: Tensor, t: Tensor, path: NoisePath) -> Tensor:
        """log p_t(x_t | component k) for every component, (batch, K)."""

    @abstractmethod
    def posterior_mean(self, x_t: Tensor, t: Tensor, path: NoisePath, cond: Tensor | int | None) -> Tensor:
        """E[x0 | x_t, cond] (batch, dim) under ``x_t = α_t·x0 + σ_t·ε``."""

    def log_prob_t(self, x_t: Tensor, t: Tensor, path: NoisePath, cond: Tensor | int | None = None) -> Tensor:
        """log p_t(x_t | cond), (batch,)."""
        log_w = self.log_mixture_weights(cond, x_t.shape[0]).to(x_t.dtype)
        return torch.logsumexp(log_w + self.component_log_prob_t(x_t, t, path), dim=-1)

    def class_log_posterior(self, x_t: Tensor, t: Tensor, path: NoisePath) -> Tensor:
        """log p(c | x_t) for every class, (batch, C)."""
        log_w = self.log_mixture_weights(None, x_t.shape[0]).to(x_t.dtype)
        joint = log_w + self.component_log_prob_t(x_t, t, path)  # (batch, K)
        per_class = torch.stack(
            [torch.logsumexp(joint[:, self.component_class == c], dim=-1) for c in range(self.num_classes)], dim=-1
        )
        return per_class - torch.logsumexp(per_class, dim=-1, keepdim=True)

    def denoiser(self, path: NoisePath) -> ExactDenoiser:
        """The exact denoiser of this target on ``path`` (prediction space x0)."""
        return ExactDenoiser(self, path)
