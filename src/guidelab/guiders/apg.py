"""Adaptive Projected Guidance (APG, Sadat, Hilliges, Weber 2024, arXiv 2410.02416; METHODS.md §6).

The anchors carry three incompatible APG formulas (in the model's raw space, from ``u`` or from ``c``); this
one follows the paper: in x0 space, from the conditional prediction.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from guidelab.guiders._checks import check_number
from guidelab.guiders._common import EPS, ScheduledGuider, Step, as_batch, dot, norm, per_sample, sq_norm
from guidelab.guiders.base import GuidedStep, Scale, StepContext
from guidelab.guiders.registry import register_guider
from guidelab.guiders.schedules import Schedule

__all__ = ["APG"]


@register_guider
class APG(ScheduledGuider):
    """Adaptive Projected Guidance, paper form, in x0 space::

        Δ  = x0̂_c − x0̂_u
        Δ̄  = Δ + β_m·Δ̄_prev                          (momentum; β_m < 0 in the paper)
        Δ  ← Δ̄·min(1, r/||Δ̄||)                        (norm threshold r)
        Δ∥ = (<Δ, x0̂_c>/||x0̂_c||²)·x0̂_c,  Δ⊥ = Δ − Δ∥
        x0̂ = x0̂_c + (γ − 1)·(Δ⊥ + η·Δ∥)

    η = 1, no threshold and no momentum is exactly CFG. The momentum buffer is per trajectory: the sampler
    calls :meth:`reset` before sampling; it is updated once per step (a solver's corrector evaluation,
    ``stage > 0``, reads it without writing), and not for samples whose γ = 1 at that step (their
    unconditional pass may not even run). Defaults: η = 0 (METHODS.md), β_m = −0.5 and r = 15 (the values
    the paper's code and diffusers use with latent diffusion; r depends on the data scale).
    Degenerate points: Δ̄ = 0 gives x0̂ = x0̂_c (no change; min(1, r/(||Δ̄|| + ε)) = 1, the continuous limit);
    x0̂_c = 0 gives Δ∥ = 0 (a projection on the zero vector; then x0̂ = (γ − 1)·Δ, as CFG).

    Args:
        schedule: the scale γ(step); a number means constant.
        eta: weight η of the parallel component.
        momentum: β_m in (−1, 1); 0 for no momentum.
        norm_threshold: r > 0; ``None`` for no threshold.
    """

    name = "apg"
    space = "x0"
    source = "arXiv 2410.02416"

    def __init__(
        self,
        schedule: Schedule | Scale = 1.0,
        eta: float = 0.0,
        momentum: float = -0.5,
        norm_threshold: float | None = 15.0,
    ):
        super().__init__(schedule)
        self.eta = check_number("eta", eta)
        self.momentum = check_number("momentum", momentum, lo=-1.0, hi=1.0, lo_open=True, hi_open=True)
        self.norm_threshold = (
            None if norm_threshold is None else check_number("norm_threshold", norm_threshold, lo=0.0, lo_open=True)
        )
        self._average: Tensor | None = None
        self._batch: int | None = None

    def reset(self, batch: int) -> None:
        """Clear the momentum buffer before sampling ``batch`` trajectories."""
        self._average = None
        self._batch = batch

    def _momentum(self, delta: Tensor, gamma: Scale, ctx: StepContext) -> Tensor:
        prev = self._average
        if prev is not None and prev.shape != delta.shape:
            raise ValueError(
                f"apg: momentum state has shape {tuple(prev.shape)} but this step has {tuple(delta.shape)}; "
                "call reset(batch) before sampling a new batch"
            )
        if self._batch is not None and delta.shape[0] != self._batch:
            raise ValueError(f"apg: reset for {self._batch} trajectories, got a batch of {delta.shape[0]}")
        average = delta if prev is None else torch.add(delta, prev, alpha=self.momentum)
        if ctx.stage == 0:
            if isinstance(gamma, Tensor) and gamma.ndim > 0:
                keep = (gamma == 1).to(delta.device).reshape(-1, *([1] * (delta.ndim - 1)))
                self._average = torch.where(keep, torch.zeros_like(delta) if prev is None else prev, average)
            else:
                self._average = average
        return average

    def combine(self, step: Step, ctx: StepContext, gamma: Scale) -> GuidedStep:
        c, u = step.get("cond", "x0"), step.get("uncond", "x0")
        delta = c - u
        if self.momentum != 0:
            delta = self._momentum(delta, gamma, ctx)
        k = dot(delta, c).div_(sq_norm(c).add_(EPS))  # Δ∥ = k·x0̂_c before the threshold  (batch,) float64
        g1 = as_batch(gamma, c) - 1  # γ − 1
        if self.norm_threshold is not None:
            shrink = torch.div(self.norm_threshold, norm(delta).add_(EPS)).clamp_max_(1.0)  # min(1, r/||Δ||)
            coef_delta = shrink * g1
            k.mul_(shrink)
        else:
            coef_delta = g1
        coef_c = k.mul_(-(1 - self.eta) * g1).add_(1)  # x0̂ = (1 − (γ−1)(1−η)k)·x0̂_c + (γ−1)·Δ
        scaled_c = c * per_sample(coef_c, c)
        if isinstance(coef_delta, float):
            x0_hat = torch.add(scaled_c, delta, alpha=coef_delta)
        else:
            x0_hat = torch.addcmul(scaled_c, per_sample(coef_delta, c), delta)
        return step.pair(x0_hat, self.space)

    def params(self) -> dict[str, Any]:
        return {"eta": self.eta, "momentum": self.momentum, "norm_threshold": self.norm_threshold}
