"""Combination rules shared by the guiders: an affine combination of two predictions formed in the models' own
space and converted to the pair once (CFG's ``u + γ·(c − u)``), the per-sample neutral scale, and ε-space rules
kept regular at pure noise."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from guidelab.guiders import fused_jit
from guidelab.guiders.base import GuidedStep, Predictions
from guidelab.guiders.context import Scale, as_batch, per_sample
from guidelab.guiders.reductions import is_half
from guidelab.paths import combine, pair_coefficients

__all__ = ["affine_pair", "eps_space_step", "keep_neutral", "linear_step"]


def affine_pair(preds: Predictions, weight: Scale | Tensor, base: str = "uncond") -> GuidedStep:
    """The pair of ``base + w·(cond − base)`` (w a number or per-sample (batch,)). An affine combination whose
    weights sum to 1 is the same in every prediction space at fixed x_t, so it is formed in the models' own space
    (no conversion of the inputs) and converted to the pair once: regular wherever the models' own pair is. A number
    ``w`` takes the compiled loop where it applies (:func:`guidelab.guiders.fused_jit.linear`, as :func:`linear_step`:
    the same numbers as CFG's step)."""
    if not isinstance(weight, Tensor):
        out = fused_jit.linear(preds, float(weight), base)
        if out is not None:
            return out
    return _affine_pair(preds, weight, base)


def _affine_pair(preds: Predictions, weight: Scale | Tensor, base: str) -> GuidedStep:
    """:func:`affine_pair` in torch."""
    src = preds.space("cond")
    space = src if preds.space(base) == src else "x0"
    c, u = preds.get("cond", space), preds.get(base, space)
    return preds.pair(torch.lerp(u, c, per_sample(as_batch(weight, c), c)), space)


def linear_step(preds: Predictions, weight: Scale, base: str = "uncond") -> GuidedStep:
    """:func:`affine_pair` as one fused kernel in the models' own space plus the conversion to the pair (two
    kernels on rf), for a scalar weight and full-precision predictions; otherwise :func:`affine_pair` (half
    precision in float32, so that the conversion's products cannot overflow). Where the compiled combines apply
    (:mod:`~guidelab.guiders.fused_jit`: CPU, float32/float64, no autograd), one compiled loop writes the pair."""
    if not isinstance(weight, Tensor):
        out = fused_jit.linear(preds, float(weight), base)
        if out is not None:
            return out
    cond, src = preds.raw("cond")
    other, src_other = preds.raw(base)
    fast = src == src_other and not isinstance(weight, Tensor) and not is_half(cond) and not is_half(other)
    coefs = pair_coefficients(src, preds.sc) if fast and preds.sc is not None else None
    if coefs is None:
        return _affine_pair(preds, weight, base)
    p0, q0, p1, q1 = coefs
    mixed = torch.lerp(other, cond, float(weight))
    return GuidedStep(combine(p0, mixed, q0, preds.x_t), combine(p1, mixed, q1, preds.x_t))


def keep_neutral(
    out: GuidedStep,
    preds: Predictions,
    gamma: Scale,
    neutral: float = 1.0,
    unguided: Callable[[], GuidedStep] | None = None,
) -> GuidedStep:
    """Where a per-sample scale equals its neutral value, replace the guided pair by the unguided one (the
    conditional pair, or ``unguided()``), so a sample's result does not depend on the scales of the other samples
    in its batch. The pair is returned in the predictions' dtype (:meth:`Predictions.cast`)."""
    out = preds.cast(out)
    if not isinstance(gamma, Tensor) or gamma.ndim == 0 or not bool((gamma == neutral).any()):
        return out
    mask = (gamma == neutral).to(out.x0_hat.device).reshape(-1, *([1] * (out.x0_hat.ndim - 1)))
    cond = preds.cast(unguided()) if unguided is not None else preds.cond_pair()
    return GuidedStep(torch.where(mask, cond.x0_hat, out.x0_hat), torch.where(mask, cond.eps_hat, out.eps_hat))


def eps_space_step(preds: Predictions, pred: Tensor, space: str, x0_at_pure_noise: Callable[[], Tensor]) -> GuidedStep:
    """The pair of a prediction combined in ``space``, regular at pure noise.

    In ε or score space x0̂ = (x_t − σ·ε̂)/α is undefined where α = 0 (t = 1 on rf and vp-cosine): every ε̂ equals
    x_t there and carries no guidance. At such points x0̂ comes from ``x0_at_pure_noise()`` (the same rule
    written in x0) and ε̂ stays as combined. Other spaces convert directly.
    """
    out = preds.pair(pred, space)
    if space in ("eps", "score") and preds.alpha_is_zero():
        at_noise = preds.coefficients.alpha == 0
        return GuidedStep(torch.where(at_noise, x0_at_pure_noise().to(out.x0_hat.dtype), out.x0_hat), out.eps_hat)
    return out
