"""Adaptive Projected Guidance (APG, Sadat, Hilliges, Weber 2024, arXiv 2410.02416; docs/methods.md §6).

The anchors carry three incompatible APG formulas (in the model's raw space, from ``u`` or from ``c``); this
one follows the paper: in x0 space, from the conditional prediction.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from guidelab.guiders import fused_jit
from guidelab.guiders._checks import check_choice, check_dims, check_int, check_number
from guidelab.guiders.base import (
    COND,
    UNCOND,
    GuidedStep,
    Pass,
    Predictions,
    Scale,
    ScheduledGuider,
    StepContext,
    is_neutral,
)
from guidelab.guiders.combine import affine_pair
from guidelab.guiders.context import as_batch, per_sample
from guidelab.guiders.reductions import (
    EPS,
    dot,
    dot_over,
    dots,
    needs_grad,
    norm,
    norm_over,
    norms,
    plus_eps,
    resolve_dims,
    scaled_product,
    scaled_ratio,
    sq_norm,
    sq_plus_eps,
)
from guidelab.guiders.registry import register_guider
from guidelab.guiders.schedules import Schedule

__all__ = ["APG"]

MOMENTUM_FORMS = ("sum", "ema")


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
    unconditional pass may not even run). Defaults: η = 0 (docs/methods.md §6), β_m = −0.5 and r = 15 (the values
    the paper's code and diffusers use with latent diffusion; r depends on the data scale).
    Degenerate points: Δ̄ = 0 gives x0̂ = x0̂_c (no change; min(1, r/(||Δ̄|| + ε)) = 1, the continuous limit);
    x0̂_c = 0 gives Δ∥ = 0 (a projection on the zero vector; then x0̂ = (γ − 1)·Δ, as CFG).

    Options the other codes have (defaults: the paper's rule above):

    - ``norm_dims``: the norm ||Δ̄|| and the projection on x0̂_c are taken over these dimensions of the
      (batch, ...) predictions, one per remaining index (``[1]`` on (batch, C, H, W): per pixel, over the
      channels), as diffusers' ``adaptive_projected_guidance_norm_dim`` (``guiders/adaptive_projected_guidance.py``,
      ``normalized_guidance``); ``None``: all non-batch dimensions, one per sample.
    - ``momentum_form``: ``"sum"`` is the paper's and diffusers' ``MomentumBuffer`` (``running = Δ +
      β_m·running``, from 0); ``"ema"`` is the exponential moving average ``Δ̄ = β_m·Δ̄_prev + (1 − β_m)·Δ``,
      started at the first Δ of each trajectory, whose steady state for a constant Δ is Δ (the sum's is
      Δ/(1 − β_m)). Both give Δ̄ = Δ at a trajectory's first update.
    - ``cfg_steps`` = K > 0 (APG-Mix, diffusers' ``guiders/adaptive_projected_guidance_mix.py``, used by
      HunyuanImage-2.1): the first K steps (index i < K) are CFG, ``u + γ_cfg·(c − u)``, with γ_cfg = ``cfg_scale``
      (``None``: the schedule's γ), while the momentum buffer is already updated with their Δ; APG from step K on.
      diffusers' ``adaptive_projected_guidance_start_step`` S runs CFG while step ≤ S: K = S + 1 (its default
      S = 5 is K = 6). diffusers forms the APG phase from u, ``u + γ·(Δ⊥ + η·Δ∥)``, and in the model's own
      space; here it is the paper's form above in x0. Its ``use_original_formulation=True`` is the paper's form
      with its scale γ − 1.

    Args:
        schedule: the scale γ(step); a number means constant.
        eta: weight η of the parallel component.
        momentum: β_m in (−1, 1); 0 for no momentum.
        norm_threshold: r > 0; ``None`` for no threshold.
        norm_dims: dimensions of the norm and the projection (an integer or a list; ``None``: all non-batch).
        momentum_form: ``"sum"`` (paper, diffusers) or ``"ema"``.
        cfg_steps: number K ≥ 0 of initial CFG steps (APG-Mix); 0 for APG at every step.
        cfg_scale: γ of the CFG steps; ``None`` for the schedule's γ. Used only with ``cfg_steps > 0``.

    Raises:
        ValueError: a parameter out of range (naming it), ``norm_dims`` that do not fit the predictions, or a
            batch that does not match the one of :meth:`reset`.
    """

    name = "apg"
    space = "x0"
    source = "arXiv 2410.02416"
    default_scale = 3.0  # docs/methods.md §9

    def __init__(
        self,
        schedule: Schedule | Scale | None = None,
        eta: float = 0.0,
        momentum: float = -0.5,
        norm_threshold: float | None = 15.0,
        norm_dims: int | list[int] | None = None,
        momentum_form: str = "sum",
        cfg_steps: int = 0,
        cfg_scale: float | None = None,
    ):
        super().__init__(schedule)
        self.eta = check_number("eta", eta)
        self.momentum = check_number("momentum", momentum, lo=-1.0, hi=1.0, lo_open=True, hi_open=True)
        self.norm_threshold = (
            None if norm_threshold is None else check_number("norm_threshold", norm_threshold, lo=0.0, lo_open=True)
        )
        self.norm_dims = check_dims("norm_dims", norm_dims)
        check_choice("momentum_form", momentum_form, MOMENTUM_FORMS)
        self.momentum_form = momentum_form
        self.cfg_steps = check_int("cfg_steps", cfg_steps)
        self.cfg_scale = None if cfg_scale is None else check_number("cfg_scale", cfg_scale)
        self._average: Tensor | None = None
        self._started: Tensor | None = None  # (batch,) bool: the samples with a running average; None: all
        self._batch: int | None = None

    def reset(self, batch: int) -> None:
        """Clear the momentum buffer before sampling ``batch`` trajectories."""
        self._average = None
        self._started = None
        self._batch = batch

    def _scale(self, ctx: StepContext) -> Scale:
        """γ at this step: ``cfg_scale`` in the CFG steps of APG-Mix where given, the schedule's otherwise."""
        if ctx.index < self.cfg_steps and self.cfg_scale is not None:
            return self.cfg_scale
        return self.schedule(ctx)

    def passes(self, ctx: StepContext) -> tuple[Pass, ...]:
        return (COND,) if is_neutral(self._scale(ctx)) else (COND, UNCOND)

    def guide(self, preds: Predictions, ctx: StepContext) -> GuidedStep:
        if "uncond" not in preds:
            return preds.cond_pair()
        return self.combine(preds, ctx, self._scale(ctx))

    def _check_state(self, shape: torch.Size) -> None:
        """A ValueError where the momentum buffer or the batch of :meth:`reset` does not fit predictions of
        ``shape``."""
        prev = self._average
        if prev is not None and prev.shape != shape:
            raise ValueError(
                f"apg: momentum state has shape {tuple(prev.shape)} but this step has {tuple(shape)}; "
                "call reset(batch) before sampling a new batch"
            )
        if self._batch is not None and shape[0] != self._batch:
            raise ValueError(f"apg: reset for {self._batch} trajectories, got a batch of {shape[0]}")

    def _momentum(self, delta: Tensor, gamma: Scale, ctx: StepContext) -> Tensor:
        prev = self._average
        self._check_state(delta.shape)
        if prev is None:
            average = delta
        elif self.momentum_form == "sum":
            average = torch.add(delta, prev, alpha=self.momentum)
        else:
            average = torch.lerp(delta, prev, self.momentum)  # β_m·Δ̄_prev + (1 − β_m)·Δ
            if self._started is not None:  # a sample without an average yet starts at its Δ
                average = torch.where(_rows(self._started, delta), average, delta)
        if ctx.stage == 0:
            if isinstance(gamma, Tensor) and gamma.ndim > 0:
                keep = (gamma == 1).to(delta.device)  # (batch,): no update for unguided samples
                self._average = torch.where(
                    _rows(keep, delta), torch.zeros_like(delta) if prev is None else prev, average
                )
                if prev is None:
                    started = ~keep
                else:
                    started = (torch.ones_like(keep) if self._started is None else self._started) | ~keep
                self._started = None if bool(started.all()) else started
            else:
                self._average = average
                self._started = None
        return average

    def combine(self, preds: Predictions, ctx: StepContext, gamma: Scale) -> GuidedStep:
        if ctx.index >= self.cfg_steps and self.norm_dims is None and not isinstance(gamma, Tensor):
            out = self._compiled(preds, ctx, float(gamma))
            if out is not None:
                return out
        c, u = preds.get("cond", "x0"), preds.get("uncond", "x0")
        delta = c - u
        if ctx.index < self.cfg_steps:  # APG-Mix: CFG, the momentum buffer updated with Δ
            if self.momentum != 0:
                self._momentum(delta, gamma, ctx)
            return affine_pair(preds, gamma)
        if self.momentum != 0:
            delta = self._momentum(delta, gamma, ctx)
        if self.norm_dims is not None:
            return preds.pair(self._over_dims(c, delta, gamma), self.space)
        g1 = as_batch(gamma, c) - 1  # γ − 1
        if isinstance(g1, float) and not needs_grad(c, delta):
            return preds.pair(self._fused(c, delta, g1), self.space)
        k = dot(delta, c).div_(sq_norm(c).add_(EPS))  # Δ∥ = k·x0̂_c before the threshold  (batch,) float64
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
        return preds.pair(x0_hat, self.space)

    def _compiled(self, preds: Predictions, ctx: StepContext, gamma: float) -> GuidedStep | None:
        """The step as one compiled loop (:func:`guidelab.guiders.fused_jit.apg`), the momentum buffer updated as
        :meth:`_momentum` does; None where the kernels do not apply (also an EMA with samples not yet started)."""
        ema = self.momentum_form == "ema"
        if self.momentum != 0:
            if ema and self._started is not None:
                return None
            self._check_state(preds.raw("cond")[0].shape)
        prev = self._average if self.momentum != 0 else None
        result = fused_jit.apg(preds, gamma, self.eta, self.norm_threshold, prev, self.momentum, ema)
        if result is None:
            return None
        out, average = result
        if self.momentum != 0 and ctx.stage == 0:
            self._average = average
            self._started = None
        return out

    def _fused(self, c: Tensor, delta: Tensor, g1: float) -> Tensor:
        """The rule above for one scale (``g1`` = γ − 1): three reductions, the per-sample weights in float64 rounded
        once to the predictions' dtype, and one product plus one product-sum over the data."""
        den = sq_plus_eps(norms(c))  # ||x0̂_c||² + ε  (batch,) float64
        if self.norm_threshold is None:
            # x0̂ = (1 − (γ−1)(1−η)k)·x0̂_c + (γ−1)·Δ,  k = <Δ, x0̂_c>/||x0̂_c||²
            coef_c = scaled_ratio(dots(delta, c), den, -(1 - self.eta) * g1, c, offset=1.0)
            return torch.add(c * coef_c, delta, alpha=g1)
        shrink = torch.div(self.norm_threshold, plus_eps(norms(delta))).clamp_max_(1.0)  # min(1, r/||Δ||)  float64
        k = torch.div(dots(delta, c), den)  # <Δ, x0̂_c>/||x0̂_c||²  float64
        coef_c = scaled_product(k, shrink, -(1 - self.eta) * g1, c, offset=1.0)  # 1 − (γ−1)(1−η)·k·min(1, r/||Δ||)
        return torch.addcmul(c * coef_c, scaled_product(shrink, None, g1, c), delta)

    def _over_dims(self, c: Tensor, delta: Tensor, gamma: Scale) -> Tensor:
        """The rule with the norm and the projection over ``norm_dims``: coefficients of shape (batch, 1, H, W) for
        ``norm_dims = [1]`` on (batch, C, H, W), in float64."""
        dims = resolve_dims("norm_dims", self.norm_dims, c.ndim)
        k = dot_over(delta, c, dims) / (dot_over(c, c, dims) + EPS)  # Δ∥ = k·x0̂_c
        g1 = as_batch(gamma, c)
        g1 = g1 - 1 if isinstance(g1, float) else (g1 - 1).reshape(-1, *([1] * (c.ndim - 1)))  # γ − 1
        coef_delta = g1
        if self.norm_threshold is not None:
            shrink = (self.norm_threshold / (norm_over(delta, dims) + EPS)).clamp_max(1.0)  # min(1, r/||Δ||)
            coef_delta, k = shrink * g1, k * shrink
        coef_c = 1 - (1 - self.eta) * g1 * k  # x0̂ = (1 − (γ−1)(1−η)k)·x0̂_c + (γ−1)·Δ
        coef_delta = coef_delta.to(c.dtype) if isinstance(coef_delta, Tensor) else coef_delta
        return c * coef_c.to(c.dtype) + coef_delta * delta

    def params(self) -> dict[str, Any]:
        return {
            "eta": self.eta,
            "momentum": self.momentum,
            "norm_threshold": self.norm_threshold,
            "norm_dims": None if self.norm_dims is None else list(self.norm_dims),
            "momentum_form": self.momentum_form,
            "cfg_steps": self.cfg_steps,
            "cfg_scale": self.cfg_scale,
        }


def _rows(mask: Tensor, like: Tensor) -> Tensor:
    """A (batch,) mask shaped to broadcast against ``like`` (batch, ...)."""
    return mask.to(like.device).reshape(-1, *([1] * (like.ndim - 1)))
