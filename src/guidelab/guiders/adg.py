"""Angle Domain Guidance (ADG, arXiv 2506.11039; docs/methods.md §5, official code read).

Guidance as a bounded turn of the conditional clean estimate away from the unconditional one, instead of a
linear extrapolation: the norm can grow at most by the factor √(1 + sin 2a·sin θ).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

import torch

from guidelab.guiders._checks import check_dims, check_flag, check_number
from guidelab.guiders.base import GuidedStep, Predictions, Scale, ScheduledGuider, StepContext
from guidelab.guiders.context import as_batch, per_sample
from guidelab.guiders.reductions import EPS, dot, norm_over, resolve_dims, sq_norm
from guidelab.guiders.registry import register_guider
from guidelab.guiders.schedules import Schedule

__all__ = ["ADG"]


@register_guider
class ADG(ScheduledGuider):
    """Angle Domain Guidance: turn x0̂_c away from x0̂_u by an angle that grows with γ, capped.

    Per sample, in x0 space, with F = x0̂_c and B = x0̂_u (one vector each)::

        θ  = ∠(F, B)                              (clamped cosine; atan2(|F⊥|/|F|, cos θ), in float64)
        a  = min(((γ − 1)₊ + δ)·θ, θ_max)         θ_max = π/3, δ = 0 (paper)
        q  = (F − proj_B F)/sin θ                 (|q| = |F|)
        x0̂ = cos(a)·F + sin(a)·q

    so ``||x0̂||² = ||F||²(1 + sin 2a·sin θ)``: the norm is bounded, but this is not an exact rotation, and it
    is implemented as written. Where F⊥ vanishes (F and B parallel or antiparallel, sin θ = 0) the turn
    has no plane and x0̂ = F, the small-angle limit, which keeps the norm identity. The pair is then taken
    back to (x0̂, ε̂) with x_t fixed. At F = 0, x0̂ = 0 (the limit: |x0̂| ≤ √2·|F|). At B = 0 the angle is
    undefined; the ε in the cosine's denominator makes cos θ = 0, θ = π/2 and q = F, so x0̂ = (cos a + sin a)·F:
    the limit along any B ⊥ F, reached continuously once ||F||·||B|| ≪ ε.
    Ablations: ``norm_rescale`` rescales x0̂ to exactly ||F||;
    ``theta_max=None`` removes the angle cap.

    The official code (jinc7461/ADG, ``method/ADG_SD3.py``) uses other constants: the weight
    ``(γ − 1)₊ + 1e-3`` (δ = ``weight_offset`` = 1e-3) and the cap ``3.14/3`` (``theta_max`` = 1.04666…, not
    π/3), in all three of its variants: ``ADG_SD3`` (capped), ``ADG_SD3_w_norm`` (capped, then the norm rescale
    *per pixel over the channels*, ``rescale_dims=[1]`` on (batch, C, H, W)) and ``ADG_SD3_wo_clip``
    (``theta_max=None``). :attr:`OFFICIAL` holds the two constants. Its θ and F⊥ are over the whole sample, as
    here (its (n, 1) factors broadcast against (n, C, H, W) only for one sample per call, n = 1). Two differences
    remain: γ = 1 stays unguided here for every ``weight_offset`` (the step skips the unconditional pass; the
    official code always runs both and turns by 10⁻³·θ there), and its branch for sin θ ≤ 10⁻³ (``F⊥·weight`` in
    place of ``F⊥·sin a/sin θ``) is not copied: near θ = 0 it differs from the rule by a relative O((weight·θ)²),
    near θ = π it drops the turn the rule makes.

    Args:
        schedule: the scale γ(step); a number means constant. γ ≤ 1 gives the conditional prediction (with a
            ``weight_offset`` δ > 0, only γ = 1 does: γ < 1 turns by δ·θ, as the official code).
        theta_max: angle cap in radians, in (0, π]; ``None`` for no cap (ablation). Official code: 3.14/3.
        norm_rescale: rescale x0̂ to ||F|| (ablation).
        weight_offset: δ ≥ 0 added to the weight (γ − 1)₊ wherever γ ≠ 1; 0 in the paper, 1e-3 in the
            official code.
        rescale_dims: the dimensions of the norms of ``norm_rescale``: ``None`` (default) for all non-batch
            dimensions (one norm per sample), or a list such as ``[1]`` for one norm per pixel over the channels of
            (batch, C, H, W) predictions (the official ``ADG_SD3_w_norm``); used only with ``norm_rescale``.

    Raises:
        ValueError: a parameter out of range (naming it), or ``rescale_dims`` that do not fit the predictions.
    """

    OFFICIAL: ClassVar[Mapping[str, float]] = MappingProxyType({"weight_offset": 1e-3, "theta_max": 3.14 / 3})
    """The official code's constants (``ADG_SD3.py``): ``build_guider("adg", scale=γ, **ADG.OFFICIAL)``."""

    name = "adg"
    space = "x0"
    source = "arXiv 2506.11039"
    default_scale = 3.0  # docs/methods.md §9

    def __init__(
        self,
        schedule: Schedule | Scale | None = None,
        theta_max: float | None = math.pi / 3,
        norm_rescale: bool = False,
        weight_offset: float = 0.0,
        rescale_dims: int | list[int] | None = None,
    ):
        super().__init__(schedule)
        self.theta_max = (
            None if theta_max is None else check_number("theta_max", theta_max, lo=0.0, hi=math.pi, lo_open=True)
        )
        self.norm_rescale = check_flag("norm_rescale", norm_rescale)
        self.weight_offset = check_number("weight_offset", weight_offset, lo=0.0)
        self.rescale_dims = check_dims("rescale_dims", rescale_dims)

    def combine(self, preds: Predictions, ctx: StepContext, gamma: Scale) -> GuidedStep:
        f_in = preds.get("cond", "x0")
        # float64 throughout: F⊥ is divided by sin θ, and in float32 its rounding is not orthogonal to B
        f, b = f_in.to(torch.float64), preds.get("uncond", "x0").to(torch.float64)
        ff, bb, fb = sq_norm(f), sq_norm(b), dot(f, b)  # (batch,) float64
        k = fb / (bb + EPS)  # proj_B F = k·B
        f_perp = f - per_sample(k, f) * b
        n_f = ff.sqrt()
        n_perp = sq_norm(f_perp).sqrt()
        cos_theta = (fb / (n_f * bb.sqrt() + EPS)).clamp(-1.0, 1.0)
        theta = torch.atan2(n_perp / (n_f + EPS), cos_theta)
        g = as_batch(gamma, f)
        delta = self.weight_offset
        if isinstance(g, float):
            excess = 0.0 if g == 1 else max(g - 1.0, 0.0) + delta  # (γ − 1)₊ + δ, 0 at γ = 1
        else:
            excess = (g - 1).clamp_min(0.0)
            if delta:
                excess = torch.where(g == 1, 0.0, excess + delta)
        a = excess * theta
        if self.theta_max is not None:
            a = a.clamp_max(self.theta_max)
        degenerate = n_perp <= EPS * (n_f + EPS)  # F ∥ B: no plane to turn in, x0̂ = F
        a = torch.where(degenerate, torch.zeros_like(a), a)
        q_coef = torch.sin(a) * n_f / n_perp.clamp_min(EPS)  # sin(a)·|F|/|F⊥|: sin(a)·q = q_coef·F⊥
        x0_hat = per_sample(torch.cos(a), f) * f + per_sample(q_coef, f) * f_perp
        if self.norm_rescale and self.rescale_dims is None:
            x0_hat = x0_hat * per_sample(n_f / (sq_norm(x0_hat).sqrt() + EPS), f)
        elif self.norm_rescale:  # ||F|| / ||x0̂|| over the chosen dimensions, e.g. per pixel over the channels
            dims = resolve_dims("rescale_dims", self.rescale_dims, f.ndim)
            x0_hat = x0_hat * (norm_over(f, dims) / (norm_over(x0_hat, dims) + EPS))
        return preds.pair(x0_hat.to(f_in.dtype), self.space)

    def params(self) -> dict[str, Any]:
        return {
            "theta_max": self.theta_max,
            "norm_rescale": self.norm_rescale,
            "weight_offset": self.weight_offset,
            "rescale_dims": None if self.rescale_dims is None else list(self.rescale_dims),
        }
