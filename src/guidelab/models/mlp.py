"""A small conditional MLP denoiser with EDM preconditioning on any noise path (prediction space x0).

Written in the path's noise level ``λ = σ/α`` (the EDM σ; docs/methods.md §0) and with ``ρ² = σ² + α²σ_d²``,
EDM's preconditioning (Karras et al. 2022, arXiv 2206.00364, Table 1) of ``x_t/α = x0 + λ·ε`` becomes

    x0̂ = c_skip·x_t + c_out·F_θ(c_in·x_t, c_noise, c),
    c_skip = σ_d²·α/ρ²,   c_out = σ·σ_d/ρ,   c_in = 1/ρ,   c_noise = ¼·log λ,

finite on the whole path (α = 0 at the noise end of rf and vp-cosine included). ``F_θ ≡ 0`` is the
exact denoiser of ``N(0, σ_d²·I)`` data, so an under-trained network starts from a Gaussian fit.

The class enters through an embedding with one extra row, the null class (``cond = −1``), which
classifier-free-guidance dropout trains (Ho & Salimans 2022, arXiv 2207.12598). The time enters through
sinusoidal features of ``c_noise`` (Vaswani et al. 2017; as EDM's positional embedding).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from guidelab.denoiser import NULL_COND, as_cond, as_times
from guidelab.paths import NoisePath, get_path

__all__ = ["MLPDenoiser", "edm_preconditioning", "sinusoidal_embedding"]

_LOG_LAM_CLAMP = 12.0  # |log λ| ≤ 12 (λ from 6e-6 to 1.6e5) before embedding


def edm_preconditioning(
    path: NoisePath, sigma_data: float, t: Tensor, like: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """EDM's ``c_skip, c_out, c_in, c_noise`` (each (batch,)) on ``path`` at times ``t`` (batch,), computed in
    float64 and cast to ``like``'s dtype and device (the formulas are in the module docstring)."""
    c = path.coefficients(t.detach().to(torch.float64).cpu())
    alpha, sigma = c.alpha, c.sigma
    sd2 = sigma_data**2
    rho = torch.sqrt(sigma**2 + alpha**2 * sd2)  # ρ = α·√(λ² + σ_d²)
    c_skip = sd2 * alpha / rho**2
    c_out = sigma * sigma_data / rho
    c_in = 1 / rho
    log_lam = torch.log(sigma).sub(torch.log(alpha)).nan_to_num(posinf=_LOG_LAM_CLAMP, neginf=-_LOG_LAM_CLAMP)
    c_noise = 0.25 * log_lam.clamp(-_LOG_LAM_CLAMP, _LOG_LAM_CLAMP)
    return tuple(v.to(dtype=like.dtype, device=like.device) for v in (c_skip, c_out, c_in, c_noise))  # type: ignore[return-value]


def sinusoidal_embedding(u: Tensor, dim: int, max_period: float = 1000.0) -> Tensor:
    """Features ``[cos(u·f_j), sin(u·f_j)]`` with ``f_j = max_period^{−j/(dim/2)}``, (batch,) -> (batch, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=u.dtype, device=u.device) / half)
    angles = u[:, None] * freqs[None, :] * (max_period ** (1 / 4))  # stretch so low frequencies still vary
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class MLPDenoiser(nn.Module):
    """``x0̂ = c_skip·x_t + c_out·F_θ(c_in·x_t, c_noise, c)``: a residual MLP ``F_θ`` with class and
    noise-level embeddings (EDM preconditioning, arXiv 2206.00364, written for any path).

    Args:
        dim: data dimension D (inputs are (batch, D)).
        num_classes: number of classes C (the embedding has C + 1 rows, the last the null class);
            0 makes an unconditional model.
        path: the noise path it is trained and evaluated on (a name or a :class:`NoisePath`).
        hidden: width of the hidden layers.
        depth: number of hidden layers (≥ 1).
        embed_dim: size of the time and class embeddings.
        sigma_data: σ_d, the data scale of the preconditioning.
        path_params: parameters of ``path`` when it is given by name.

    Attributes:
        prediction: ``"x0"``.
    """

    prediction = "x0"

    def __init__(
        self,
        dim: int,
        num_classes: int,
        path: str | NoisePath = "rf",
        *,
        hidden: int = 128,
        depth: int = 3,
        embed_dim: int = 32,
        sigma_data: float = 1.0,
        path_params: dict[str, float] | None = None,
    ):
        super().__init__()
        for field_name, value, low in (
            ("dim", dim, 1),
            ("num_classes", num_classes, 0),
            ("hidden", hidden, 1),
            ("depth", depth, 1),
            ("embed_dim", embed_dim, 2),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{field_name}: must be an integer ≥ {low}, got {value!r}")
        if embed_dim % 2:
            raise ValueError(f"embed_dim: must be even, got {embed_dim}")
        if not sigma_data > 0:
            raise ValueError(f"sigma_data: must be > 0, got {sigma_data}")
        self.path = get_path(path, **(path_params or {}))
        self.dim, self.num_classes = dim, num_classes
        self.hidden, self.depth, self.embed_dim, self.sigma_data = hidden, depth, embed_dim, float(sigma_data)
        self.time_mlp = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.SiLU())
        self.class_embed = nn.Embedding(num_classes + 1, embed_dim)
        self.inp = nn.Linear(dim + 2 * embed_dim, hidden)
        self.blocks = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(depth)])
        self.out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.out.weight)  # F_θ ≡ 0 at start: the Gaussian N(0, σ_d²) denoiser
        nn.init.zeros_(self.out.bias)

    def config(self) -> dict[str, Any]:
        """Constructor arguments (plain JSON) that rebuild this network."""
        path_config = self.path.config()
        return {
            "kind": "mlp",
            "dim": self.dim,
            "num_classes": self.num_classes,
            "path": path_config["name"],
            "path_params": {k: v for k, v in path_config.items() if k != "name"},
            "hidden": self.hidden,
            "depth": self.depth,
            "embed_dim": self.embed_dim,
            "sigma_data": self.sigma_data,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> MLPDenoiser:
        """Rebuild from :meth:`config` (extra keys such as training metadata are ignored)."""
        keys = ("dim", "num_classes", "path", "hidden", "depth", "embed_dim", "sigma_data", "path_params")
        missing = [k for k in ("dim", "num_classes") if k not in config]
        if missing:
            raise ValueError(f"config: missing field {missing[0]!r}")
        return cls(**{k: config[k] for k in keys if k in config})

    def preconditioning(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``c_skip, c_out, c_in`` shaped (batch, 1) and ``c_noise`` (batch,), computed in float64."""
        c_skip, c_out, c_in, c_noise = edm_preconditioning(self.path, self.sigma_data, t, like)
        return c_skip[:, None], c_out[:, None], c_in[:, None], c_noise

    def raw(self, x_scaled: Tensor, c_noise: Tensor, cond: Tensor) -> Tensor:
        """``F_θ(c_in·x_t, c_noise, c)`` (batch, D); ``cond`` is int64 (batch,) with −1 for null."""
        if bool(((cond < NULL_COND) | (cond >= self.num_classes)).any()):
            raise ValueError(f"cond: labels must lie in [-1, {self.num_classes - 1}], got {cond.unique().tolist()}")
        labels = torch.where(cond == NULL_COND, self.num_classes, cond)
        h_time = self.time_mlp(sinusoidal_embedding(c_noise, self.embed_dim))
        h = self.inp(torch.cat([x_scaled, h_time, self.class_embed(labels)], dim=-1))
        for block in self.blocks:
            h = h + block(nn.functional.silu(h))
        return self.out(nn.functional.silu(h))

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        """x0̂ (batch, D) for ``x_t`` (batch, D) at times ``t`` (batch,) or scalar under labels ``cond``."""
        if x_t.ndim != 2 or x_t.shape[1] != self.dim:
            raise ValueError(f"x_t: expected shape (batch, {self.dim}), got {tuple(x_t.shape)}")
        batch = x_t.shape[0]
        t = as_times(t, batch, x_t.device)
        labels = as_cond(cond, batch, x_t.device)
        w = next(self.parameters())
        x_in = x_t.to(w.dtype)
        c_skip, c_out, c_in, c_noise = self.preconditioning(t, x_in)
        x0_hat = c_skip * x_in + c_out * self.raw(c_in * x_in, c_noise, labels)
        return x0_hat.to(x_t.dtype)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "kind")
        return f"MLPDenoiser({args})"
