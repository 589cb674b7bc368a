"""Guide only some channels: the original DiT code's classifier-free guidance, which guides the first 3 of 4
latent channels and leaves the 4th conditional (Peebles & Xie 2023, arXiv 2212.09748; code facebookresearch/DiT,
``models.py``, ``forward_with_cfg``: ``eps, rest = model_out[:, :3], model_out[:, 3:]``).

diffusers' ``DiTPipeline`` guides every latent channel since 0.2x; guidelab guides every channel too, and offers
this wrapper (``generate(..., guided_channels=3)``) to reproduce samples of the original code.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from guidelab.guiders.base import GuidedStep, Guider, Pass, Predictions, StepContext
from guidelab.paths import NoisePath

__all__ = ["GuidedChannels"]


class GuidedChannels(Guider):
    """``guider`` on channels ``[0, channels)`` of dim 1; the other channels take the conditional pair.

    Replacing channels of the pair (x0̂, ε̂) equals replacing them in any prediction space, since every conversion
    at one step is the same affine map on each element.

    Args:
        guider: the guidance rule of the guided channels.
        channels: how many leading channels are guided (≥ 1).

    Raises:
        ValueError: naming ``channels`` when it is not a positive integer, or exceeds a state's channel count.
    """

    name = "guided-channels"

    def __init__(self, guider: Guider, channels: int):
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels: must be an integer ≥ 1, got {channels!r}")
        self.guider = guider
        self.channels = channels
        self.space = guider.space
        self.source = "arXiv 2212.09748 (facebookresearch/DiT, models.py forward_with_cfg)"

    def reset(self, batch: int) -> None:
        self.guider.reset(batch)

    def prepare(self, grid: Tensor, path: NoisePath, denoiser: Any = None) -> None:
        self.guider.prepare(grid, path, denoiser)

    def effective_scale(self, grid: Tensor, path: NoisePath, cond: int | None = None) -> float | None:
        return self.guider.effective_scale(grid, path, cond)

    def passes(self, ctx: StepContext) -> tuple[Pass, ...]:
        return self.guider.passes(ctx)

    def guide(self, preds: Predictions, ctx: StepContext) -> GuidedStep:
        out = self.guider.guide(preds, ctx)
        if "uncond" not in preds:
            return out
        k = self.channels
        if out.x0_hat.ndim < 2 or k > out.x0_hat.shape[1]:
            raise ValueError(f"channels: {k} guided channels, but the state has shape {tuple(out.x0_hat.shape)}")
        cond = preds.cond_pair()
        x0 = torch.cat([out.x0_hat[:, :k], cond.x0_hat[:, k:].to(out.x0_hat.dtype)], dim=1)
        eps = torch.cat([out.eps_hat[:, :k], cond.eps_hat[:, k:].to(out.eps_hat.dtype)], dim=1)
        return GuidedStep(x0, eps)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "guider": self.guider.config(), "channels": self.channels}
