"""Dynamic and static thresholding (Saharia et al. 2022, Imagen, arXiv 2205.11487 §2.3; docs/methods.md §6)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from guidelab.guiders._checks import check_choice, check_flag, check_number
from guidelab.guiders.base import GuidedStep, Predictions, Scale, ScheduledGuider, StepContext
from guidelab.guiders.combine import affine_pair, keep_neutral
from guidelab.guiders.context import as_batch, per_sample
from guidelab.guiders.reductions import flat
from guidelab.guiders.registry import register_guider
from guidelab.guiders.schedules import Schedule
from guidelab.paths import NoisePath, x0_to_eps

__all__ = ["MODES", "DynamicThresholding"]

MODES: tuple[str, ...] = ("dynamic", "static")
IMAGEN_RANGE = (-1.0, 1.0)  # pixels, Imagen's (and diffusers') assumption


def upper_quantile(x: Tensor, q: float) -> Tensor:
    """``torch.quantile(x, q, dim=1)`` (linear interpolation, as numpy's percentile) from the top order statistics
    only: a partial top-k instead of a full sort, (batch,)."""
    n = x.shape[1]
    pos = q * (n - 1)
    lo = math.floor(pos)
    frac = pos - lo
    top = torch.topk(x, n - lo, dim=1, sorted=True).values  # descending: top[:, -1] is order statistic lo
    below = top[:, -1]
    if frac == 0 or n - lo < 2:
        return below
    return torch.lerp(below, top[:, -2], frac)


def _data_range(value: Any) -> tuple[float, float]:
    if isinstance(value, str) or not isinstance(value, list | tuple) or len(value) != 2:
        raise ValueError(f"data_range: expected a pair (low, high), got {value!r}")
    low = check_number("data_range", value[0])
    high = check_number("data_range", value[1])
    if not low < high:
        raise ValueError(f"data_range: need low < high, got {value!r}")
    return low, high


@register_guider
class DynamicThresholding(ScheduledGuider):
    """CFG in x0 space, then Imagen's dynamic (or static) thresholding of the guided clean estimate, per sample.

    With c, h the centre and half-width of the data range (c = 0, h = 1 for (−1, 1), where this is exactly
    Imagen's rule and diffusers' ``_threshold_sample``)::

        x0̂ = x0̂_u + γ·(x0̂_c − x0̂_u)
        dynamic:  s = clamp(quantile(|x0̂ − c|/h, p), 1, sample_max_value)
                  x0̂ ← c + clip(x0̂ − c, −s·h, s·h)/s                 (into [c − h, c + h])
        static:   x0̂ ← clip(x0̂, c − h, c + h)                        (Imagen's static thresholding)

    the quantile over all non-batch dimensions (linear interpolation, as numpy's percentile and
    ``torch.quantile``). Static is dynamic with s ≡ 1 (diffusers: ``sample_max_value = 1``), so it is a
    ``mode`` of this guider, sharing the renoising and unguided options, rather than a second guider.

    Renoising: Imagen's sampler sees only the clipped clean estimate, so by default
    (``use_clipped_model_output=True``) the pair is consistent, ``ε̂ = (x_t − α·x0̂)/σ`` with the clipped x0̂.
    At pure noise (α = 0) that is x_t/σ, the only ε there, whatever x0̂ is. ``False`` keeps the ε̂ of the
    unclipped guided prediction (diffusers' schedulers' default, guidelab's before): only the clean estimate is
    thresholded. Where σ = 0 (the data end, where no solver renoises) ε cannot be recovered from x0̂, and the
    unclipped guided ε̂ (CFG's, formed in the models' own space) is kept in both settings.

    γ = 1 means unguided: one network evaluation, and by default the conditional pair untouched;
    ``threshold_unguided=True`` still makes only the conditional pass but thresholds its x0̂ (and renoises as
    above), so that the thresholding acts at every step. Shapes: predictions (batch, ...); the data range is
    one pair for all samples.

    Data range: by default (``data_range=None``) the range of the data the sampler's denoiser models, read from
    its ``data_range`` attribute when the sampler calls :meth:`prepare` (a target's exact denoiser gives the
    0.05%/99.95% quantiles of its coordinates); a denoiser without one gets Imagen's (−1, 1) with a warning, as
    do direct :meth:`guide` calls before any :meth:`prepare`. A given ``data_range`` that does not cover the
    denoiser's (by more than 1% of its width at either end) warns that the data itself will be clipped.

    Sources: arXiv 2205.11487 §2.3; diffusers ``schedulers/scheduling_ddpm.py`` (``_threshold_sample``,
    ``dynamic_thresholding_ratio``, ``sample_max_value``, ``clip_sample``) and ``scheduling_ddim.py``
    (``use_clipped_model_output``).

    Args:
        schedule: the scale γ(step); a number means constant.
        percentile: the quantile p ∈ (0, 1] of |x0̂ − c|/h (diffusers' ``dynamic_thresholding_ratio``);
            dynamic mode only.
        mode: ``dynamic`` or ``static``.
        sample_max_value: upper cap of s (≥ 1, in units of h); ``None`` for none, as Imagen. Dynamic only.
        data_range: (low, high), the range of the data, low < high; ``None`` (default) for the denoiser's
            ``data_range``, else (−1, 1).
        use_clipped_model_output: renoise with the ε̂ of the clipped x0̂ (Imagen); ``False`` with the unclipped
            guided ε̂.
        threshold_unguided: threshold the conditional x0̂ at γ = 1 too (still one pass).

    Raises:
        ValueError: a parameter outside its range, naming it.
    """

    name = "dynamic-thresholding"
    space = "x0"
    source = "arXiv 2205.11487"
    default_scale = 3.0  # docs/methods.md §9

    def __init__(
        self,
        schedule: Schedule | Scale | None = None,
        percentile: float = 0.995,
        mode: str = "dynamic",
        sample_max_value: float | None = None,
        data_range: tuple[float, float] | list[float] | None = None,
        use_clipped_model_output: bool = True,
        threshold_unguided: bool = False,
    ):
        super().__init__(schedule)
        self.percentile = check_number("percentile", percentile, lo=0.0, hi=1.0, lo_open=True)
        check_choice("mode", mode, MODES)
        self.mode = mode
        self.sample_max_value = (
            None if sample_max_value is None else check_number("sample_max_value", sample_max_value, lo=1.0)
        )
        self.data_range = None if data_range is None else _data_range(data_range)
        self.range: tuple[float, float] = self.data_range or IMAGEN_RANGE  # the range in use
        self.use_clipped_model_output = check_flag("use_clipped_model_output", use_clipped_model_output)
        self.threshold_unguided = check_flag("threshold_unguided", threshold_unguided)

    def prepare(self, grid: Tensor, path: NoisePath, denoiser: Any = None) -> None:
        """Take the range to clip into: the given ``data_range``, else the denoiser's ``data_range``, else
        (−1, 1); warn where the range in use does not fit the denoiser's data (see the class docstring)."""
        known = getattr(denoiser, "data_range", None)
        known = None if known is None else _data_range(list(known))
        if self.data_range is None:
            if known is None:
                warnings.warn(
                    "dynamic-thresholding: the denoiser declares no data_range; clipping x0̂ into Imagen's (-1, 1). "
                    "Give data_range=(low, high) if the data (e.g. latents) lie elsewhere",
                    UserWarning,
                    stacklevel=3,
                )
            self.range = known or IMAGEN_RANGE
            return
        self.range = self.data_range
        if known is not None:
            slack = 0.01 * (known[1] - known[0])
            if known[0] < self.range[0] - slack or known[1] > self.range[1] + slack:
                warnings.warn(
                    f"data_range: ({self.range[0]:g}, {self.range[1]:g}) does not cover the data's range "
                    f"({known[0]:.3g}, {known[1]:.3g}); thresholding will clip the data itself",
                    UserWarning,
                    stacklevel=3,
                )

    def threshold(self, x0: Tensor) -> Tensor:
        """The thresholded clean estimate (batch, ...) of ``x0`` (batch, ...)."""
        low, high = self.range
        if self.mode == "static":
            return torch.clamp(x0, low, high)
        centre, half = (low + high) / 2, (high - low) / 2
        plain = centre == 0 and half == 1  # (−1, 1): Imagen's rule exactly, no affine map
        z = x0 if plain else (x0 - centre) / half
        s = upper_quantile(flat(z).abs(), self.percentile).clamp_min_(1.0)  # (batch,)
        if self.sample_max_value is not None:
            s = s.clamp_max_(self.sample_max_value)
        s = s.reshape(-1, *([1] * (x0.ndim - 1)))
        z = torch.clamp(z, -s, s) / s
        return z if plain else z * half + centre

    def _renoise(self, preds: Predictions, x0_hat: Tensor, unclipped: Callable[[], Tensor]) -> Tensor:
        """ε̂ to renoise with: that of the clipped x0̂, or ``unclipped()`` (also where σ = 0)."""
        if not self.use_clipped_model_output:
            return unclipped()
        if preds.sc is not None:
            return unclipped() if preds.sc[1] == 0 else preds.pair(x0_hat, self.space).eps_hat
        coefficients = preds.coefficients
        eps = x0_to_eps(x0_hat, preds.x_t, coefficients)
        at_data = coefficients.sigma == 0
        return torch.where(at_data, unclipped(), eps) if bool(at_data.any()) else eps

    def _thresholded_pair(self, preds: Predictions, x0: Tensor, unclipped: Callable[[], Tensor]) -> GuidedStep:
        x0_hat = self.threshold(x0)
        return GuidedStep(x0_hat, self._renoise(preds, x0_hat, unclipped))

    def _conditional(self, preds: Predictions) -> GuidedStep:
        """The conditional pair, thresholded if ``threshold_unguided``."""
        if not self.threshold_unguided:
            return preds.cond_pair()
        return self._thresholded_pair(preds, preds.get("cond", "x0"), lambda: preds.get("cond", "eps"))

    def guide(self, preds: Predictions, ctx: StepContext) -> GuidedStep:
        if "uncond" not in preds:
            return self._conditional(preds)
        return self.combine(preds, ctx, self.schedule(ctx))

    def combine(self, preds: Predictions, ctx: StepContext, gamma: Scale) -> GuidedStep:
        c, u = preds.get("cond", "x0"), preds.get("uncond", "x0")
        x0_guided = torch.lerp(u, c, per_sample(as_batch(gamma, c), c))
        out = self._thresholded_pair(preds, x0_guided, lambda: affine_pair(preds, gamma).eps_hat)  # unclipped: CFG's ε̂
        return keep_neutral(out, preds, gamma, unguided=lambda: self._conditional(preds))

    def params(self) -> dict[str, Any]:
        return {
            "percentile": self.percentile,
            "mode": self.mode,
            "sample_max_value": self.sample_max_value,
            "data_range": None if self.data_range is None else list(self.data_range),
            "use_clipped_model_output": self.use_clipped_model_output,
            "threshold_unguided": self.threshold_unguided,
        }
