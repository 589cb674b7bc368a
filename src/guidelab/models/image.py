"""A class-conditional image denoiser (a small UNet or an MLP on the pixels) on any noise path, predicting x0,
ε or the velocity: what ``guidelab train --data`` trains and the shipped models are.

With ``x_t = α·x0 + σ·ε``, ``ρ² = σ² + α²σ_d²`` and EDM's preconditioning (Karras et al. 2022, arXiv
2206.00364, Table 1, written for any path as in :mod:`guidelab.models.mlp`), the network ``F_θ`` sees
``c_in·x_t = x_t/ρ`` (unit variance for data of scale σ_d) and ``c_noise = ¼·log λ``, and its output is read as

    x0:        x0̂ = c_skip·x_t + c_out·F_θ,     c_skip = σ_d²·α/ρ²,  c_out = σ·σ_d/ρ
    eps:       ε̂  = F_θ
    velocity:  v̂  = s_v·F_θ,                    s_v = √(α̇²σ_d² + σ̇²)   (v = α̇·x0 + σ̇·ε)

so that every training target ``(x0 − c_skip·x_t)/c_out``, ``ε`` or ``v/s_v`` has unit variance. The class
enters through an embedding with one extra row, the null class (``cond = −1``), trained by classifier-free
dropout (Ho & Salimans 2022, arXiv 2207.12598), so one network gives both passes of a guider.

The UNet: a 3×3 input convolution, per level a residual block (GroupNorm, SiLU, 3×3 convolutions; the time and
class embedding enters as a scale and shift after the second norm, as in ADM, Dhariwal & Nichol 2021, arXiv
2105.05233) and a stride-2 downsampling, a middle block, and the mirror path up with skip connections; the last
convolution starts at zero (F_θ ≡ 0: the Gaussian fit). The MLP: residual layers on the flattened image.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from guidelab.denoiser import NULL_COND, as_cond, as_times
from guidelab.models.mlp import edm_preconditioning, sinusoidal_embedding
from guidelab.paths import NoisePath, get_path
from guidelab.validation import did_you_mean

__all__ = ["ARCHS", "PREDICTIONS", "ImageDenoiser"]

ARCHS = ("unet", "mlp")
PREDICTIONS = ("x0", "eps", "velocity")


def _groups(channels: int) -> int:
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


class _ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.film = nn.Linear(emb, 2 * c_out)
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(nn.functional.silu(h))


class _UNet(nn.Module):
    """``F(x, emb)`` for x (batch, C, H, W); H and W divisible by 2^(levels − 1)."""

    def __init__(self, in_channels: int, channels: tuple[int, ...], emb: int):
        super().__init__()
        self.inp = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.pool = nn.ModuleList()
        prev = channels[0]
        for i, ch in enumerate(channels):
            self.down.append(_ResBlock(prev, ch, emb))
            self.pool.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1) if i < len(channels) - 1 else nn.Identity())
            prev = ch
        self.mid = _ResBlock(prev, prev, emb)
        self.up = nn.ModuleList()
        for ch in reversed(channels):
            self.up.append(_ResBlock(prev + ch, ch, emb))
            prev = ch
        self.norm = nn.GroupNorm(_groups(prev), prev)
        self.out = nn.Conv2d(prev, in_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.inp(x)
        skips = []
        for block, pool in zip(self.down, self.pool, strict=True):
            h = block(h, emb)
            skips.append(h)
            h = pool(h)
        h = self.mid(h, emb)
        for block in self.up:
            skip = skips.pop()
            if h.shape[-2:] != skip.shape[-2:]:
                h = nn.functional.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = block(torch.cat([h, skip], dim=1), emb)
        return self.out(nn.functional.silu(self.norm(h)))


class _MLP(nn.Module):
    """``F(x, emb)`` on the flattened image: residual SiLU layers, the embedding added to the first."""

    def __init__(self, dim: int, hidden: int, depth: int, emb: int):
        super().__init__()
        self.inp = nn.Linear(dim, hidden)
        self.emb = nn.Linear(emb, hidden)
        self.blocks = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(depth)])
        self.out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.inp(x.flatten(1)) + self.emb(emb)
        for block in self.blocks:
            h = h + block(nn.functional.silu(h))
        return self.out(nn.functional.silu(h)).reshape(x.shape)


class ImageDenoiser(nn.Module):
    """A class-conditional image denoiser meeting the :class:`~guidelab.denoiser.Denoiser` contract.

    Args:
        shape: one image's shape (C, H, W).
        num_classes: classes C (the class embedding has C + 1 rows, the last the null class).
        path: the noise path it is trained on (a name or a :class:`NoisePath`).
        arch: ``"unet"`` or ``"mlp"``.
        prediction: the output space, ``"x0"``, ``"eps"`` or ``"velocity"`` (see the module docstring).
        channels: the UNet's channels per level (its H and W halve at each level but the last).
        hidden, depth: the MLP's width and residual layers.
        embed_dim: size of the time and class embeddings.
        sigma_data: σ_d of the preconditioning (the data's standard deviation).
        path_params: parameters of ``path`` when it is given by name.

    Attributes:
        data_range: ``(−1.0, 1.0)``, the pixel range of guidelab's datasets (what thresholding guiders clip to).

    Calling it: ``model(x_t, t, cond)`` with x_t (batch, C, H, W), t (batch,) or a scalar, cond (batch,) int64
    (−1 the null class) or None; returns the prediction (batch, C, H, W) in ``x_t``'s dtype.
    """

    def __init__(
        self,
        shape: tuple[int, int, int] | list[int],
        num_classes: int,
        path: str | NoisePath = "rf",
        *,
        arch: str = "unet",
        prediction: str = "x0",
        channels: tuple[int, ...] | list[int] = (32, 64),
        hidden: int = 256,
        depth: int = 3,
        embed_dim: int = 64,
        sigma_data: float = 0.5,
        path_params: dict[str, float] | None = None,
    ):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"arch: unknown {arch!r}{did_you_mean(arch, ARCHS)}")
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction: unknown {prediction!r}{did_you_mean(prediction, PREDICTIONS)}")
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"shape: expected (C, H, W) with positive sizes, got {shape}")
        channels = tuple(int(c) for c in channels)
        if not channels or min(channels) < 1:
            raise ValueError(f"channels: expected positive channel counts per level, got {list(channels)}")
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes: must be an integer ≥ 0, got {num_classes!r}")
        if embed_dim < 2 or embed_dim % 2:
            raise ValueError(f"embed_dim: must be even and ≥ 2, got {embed_dim}")
        if not sigma_data > 0:
            raise ValueError(f"sigma_data: must be > 0, got {sigma_data}")
        self.path = get_path(path, **(path_params or {}))
        self.shape, self.num_classes, self.arch, self.prediction = shape, num_classes, arch, prediction
        self.channels, self.hidden, self.depth = channels, int(hidden), int(depth)
        self.embed_dim, self.sigma_data = int(embed_dim), float(sigma_data)
        self.time_mlp = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))
        self.class_embed = nn.Embedding(num_classes + 1, embed_dim)
        dim = shape[0] * shape[1] * shape[2]
        self.net = _UNet(shape[0], channels, embed_dim) if arch == "unet" else _MLP(dim, self.hidden, depth, embed_dim)

    data_range = (-1.0, 1.0)

    def config(self) -> dict[str, Any]:
        """Constructor arguments (plain JSON) that rebuild this network."""
        path_config = self.path.config()
        return {
            "kind": "image-denoiser",
            "shape": list(self.shape),
            "num_classes": self.num_classes,
            "path": path_config["name"],
            "path_params": {k: v for k, v in path_config.items() if k != "name"},
            "arch": self.arch,
            "prediction": self.prediction,
            "channels": list(self.channels),
            "hidden": self.hidden,
            "depth": self.depth,
            "embed_dim": self.embed_dim,
            "sigma_data": self.sigma_data,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ImageDenoiser:
        """Rebuild from :meth:`config` (extra keys are ignored)."""
        for key in ("shape", "num_classes"):
            if key not in config:
                raise ValueError(f"config: missing field {key!r}")
        keys = ("path", "arch", "prediction", "channels", "hidden", "depth", "embed_dim", "sigma_data", "path_params")
        return cls(config["shape"], config["num_classes"], **{k: config[k] for k in keys if k in config})

    def output_scaling(self, t: Tensor, x_t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(skip, out, c_in, c_noise)``, each (batch,) in ``x_t``'s dtype: the prediction is
        ``skip·x_t + out·F_θ(c_in·x_t, c_noise, c)``, for the model's prediction space."""
        c_skip, c_out, c_in, c_noise = edm_preconditioning(self.path, self.sigma_data, t, x_t)
        if self.prediction == "x0":
            return c_skip, c_out, c_in, c_noise
        zero = torch.zeros_like(c_skip)
        if self.prediction == "eps":
            return zero, torch.ones_like(c_out), c_in, c_noise
        c = self.path.coefficients(t.detach().to(torch.float64).cpu())
        s_v = torch.sqrt(c.d_alpha**2 * self.sigma_data**2 + c.d_sigma**2).to(dtype=x_t.dtype, device=x_t.device)
        return zero, s_v, c_in, c_noise

    def raw(self, x_scaled: Tensor, c_noise: Tensor, cond: Tensor) -> Tensor:
        """``F_θ(c_in·x_t, c_noise, c)`` (batch, C, H, W); ``cond`` int64 (batch,) with −1 for null."""
        if bool(((cond < NULL_COND) | (cond >= self.num_classes)).any()):
            raise ValueError(f"cond: labels must lie in [-1, {self.num_classes - 1}], got {cond.unique().tolist()}")
        labels = torch.where(cond == NULL_COND, self.num_classes, cond)
        emb = self.time_mlp(sinusoidal_embedding(c_noise, self.embed_dim)) + self.class_embed(labels)
        return self.net(x_scaled, nn.functional.silu(emb))

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        if tuple(x_t.shape[1:]) != self.shape:
            raise ValueError(f"x_t: expected shape (batch, {', '.join(map(str, self.shape))}), got {tuple(x_t.shape)}")
        batch = x_t.shape[0]
        t = as_times(t, batch, x_t.device)
        labels = as_cond(cond, batch, x_t.device)
        w = next(self.parameters())
        x_in = x_t.to(w.dtype)
        skip, out, c_in, c_noise = (v.reshape(-1, 1, 1, 1) if v.ndim else v for v in self.output_scaling(t, x_in))
        pred = skip * x_in + out * self.raw(c_in * x_in, c_noise.reshape(-1), labels)
        return pred.to(x_t.dtype)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "kind")
        return f"ImageDenoiser({args})"
