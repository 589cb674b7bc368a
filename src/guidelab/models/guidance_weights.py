"""The guidance-weight network ω_φ(c, s, t) ≥ 0 of Learn to Guide (Galashov et al., arXiv 2510.00815).

A small MLP on embeddings of the log noise levels ``log λ_s`` and ``log λ_t`` (``λ = σ/α``, so
``log λ = −½·log-SNR``; docs/methods.md §0 and §4) of the step's two times and, in the conditional variant, a
learned class embedding. The output is made non-negative by a softplus or a ReLU. It **never sees x_t**:
the guided clean prediction of a step t → s is

    x0̂(ω) = x0̂_c + ω_φ(c, s, t)·(x0̂_c − x0̂_u)          (γ = 1 + ω in Ho form).

Because the inputs are noise levels, not times, the same weights apply on any noise path. The null
class (``c = −1``) always gets ω = 0 (its conditional and unconditional predictions coincide).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from guidelab.denoiser import NULL_COND
from guidelab.io import torch_load_checked, torch_save_atomic
from guidelab.paths import NoisePath
from guidelab.validation import did_you_mean

__all__ = ["OUTPUTS", "GuidanceWeights", "load_weights", "log_noise_level", "save_weights"]

OUTPUTS: tuple[str, ...] = ("softplus", "relu")
LOG_LAM_CLAMP = 12.0  # |log λ| ≤ 12 before embedding (λ = 0 at the data end, ∞ at the rf noise end)


def log_noise_level(path: NoisePath, t: Tensor | float) -> Tensor:
    """``log λ_t = log σ_t − log α_t`` in float64, clamped to ``[−12, 12]`` (finite at t = 0 and at α = 0)."""
    t = torch.as_tensor(t, dtype=torch.float64).cpu()
    c = path.coefficients(t)
    log_lam = torch.log(c.sigma) - torch.log(c.alpha)
    return log_lam.nan_to_num(nan=0.0, posinf=LOG_LAM_CLAMP, neginf=-LOG_LAM_CLAMP).clamp(-LOG_LAM_CLAMP, LOG_LAM_CLAMP)


def _fourier(u: Tensor, num: int) -> Tensor:
    """``[u, sin(2^j·u), cos(2^j·u)]_{j<num}`` for ``u`` (batch,) -> (batch, 1 + 2·num)."""
    freqs = 2.0 ** torch.arange(num, dtype=u.dtype, device=u.device)
    angles = u[:, None] * freqs[None, :]
    return torch.cat([u[:, None], torch.sin(angles), torch.cos(angles)], dim=-1)


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))  # log(e^y − 1), stable for large y


class GuidanceWeights(nn.Module):
    """``ω_φ(c, s, t) = out(MLP([emb(log λ_s), emb(log λ_t), E_c]))`` with ``out`` softplus or ReLU.

    Args:
        num_classes: number of classes C for the class embedding; ``0`` makes the conditioning-agnostic
            variant ω_φ(s, t).
        hidden: width of the hidden layers.
        depth: number of hidden layers (≥ 1).
        frequencies: Fourier frequencies per noise level; each ``log λ`` (scaled by 1/4) enters as
            ``[u, sin(2^j u), cos(2^j u)]``.
        class_dim: size of the class embedding.
        output: ``"softplus"`` or ``"relu"`` (the ReLU can reach exactly 0, skipping the unconditional pass).
        init_omega: ω at initialisation, the same for every input (> 0; the last layer starts at zero
            weights and this bias).
    """

    def __init__(
        self,
        num_classes: int = 0,
        *,
        hidden: int = 64,
        depth: int = 2,
        frequencies: int = 4,
        class_dim: int = 16,
        output: str = "softplus",
        init_omega: float = 0.5,
    ):
        super().__init__()
        for field_name, value, low in (
            ("num_classes", num_classes, 0),
            ("hidden", hidden, 1),
            ("depth", depth, 1),
            ("frequencies", frequencies, 0),
            ("class_dim", class_dim, 1),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{field_name}: must be an integer ≥ {low}, got {value!r}")
        if output not in OUTPUTS:
            raise ValueError(f"output: unknown {output!r}{did_you_mean(output, OUTPUTS)}")
        if not (math.isfinite(init_omega) and init_omega > 0):
            raise ValueError(f"init_omega: must be a finite number > 0, got {init_omega}")
        self.num_classes, self.hidden, self.depth = num_classes, hidden, depth
        self.frequencies, self.class_dim, self.output, self.init_omega = frequencies, class_dim, output, init_omega
        width = 2 * (1 + 2 * frequencies) + (class_dim if num_classes else 0)
        self.class_embed = nn.Embedding(num_classes, class_dim) if num_classes else None
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.constant_(self.head.bias, _inverse_softplus(init_omega) if output == "softplus" else init_omega)

    @property
    def conditional(self) -> bool:
        """True when ω depends on the class."""
        return self.num_classes > 0

    def config(self) -> dict[str, Any]:
        """Constructor arguments (plain JSON) that rebuild this network."""
        return {
            "num_classes": self.num_classes,
            "hidden": self.hidden,
            "depth": self.depth,
            "frequencies": self.frequencies,
            "class_dim": self.class_dim,
            "output": self.output,
            "init_omega": self.init_omega,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> GuidanceWeights:
        """Rebuild from :meth:`config`."""
        return cls(**config)

    def forward(self, cond: Tensor, log_lam_s: Tensor, log_lam_t: Tensor) -> Tensor:
        """ω (batch,) for labels ``cond`` (batch,) int64 (−1 null → ω = 0) and log noise levels (batch,).

        The conditioning-agnostic variant ignores the label except for the null one.
        """
        w = self.head.weight
        u_s = log_lam_s.to(dtype=w.dtype, device=w.device).clamp(-LOG_LAM_CLAMP, LOG_LAM_CLAMP) / 4
        u_t = log_lam_t.to(dtype=w.dtype, device=w.device).clamp(-LOG_LAM_CLAMP, LOG_LAM_CLAMP) / 4
        cond = cond.to(device=w.device)
        features = [_fourier(u_s, self.frequencies), _fourier(u_t, self.frequencies)]
        if self.class_embed is not None:
            if bool(((cond < NULL_COND) | (cond >= self.num_classes)).any()):
                raise ValueError(f"cond: labels must lie in [-1, {self.num_classes - 1}], got {cond.unique().tolist()}")
            features.append(self.class_embed(cond.clamp(min=0)))
        raw = self.head(self.body(torch.cat(features, dim=-1))).squeeze(-1)
        omega = nn.functional.softplus(raw) if self.output == "softplus" else torch.relu(raw)
        return torch.where(cond == NULL_COND, torch.zeros_like(omega), omega)

    def omega(self, cond: Tensor, s: Tensor | float, t: Tensor | float, path: NoisePath) -> Tensor:
        """ω_φ(c, s, t) (batch,) at times ``s < t`` of ``path`` (scalars or (batch,)), without gradients."""
        cond = torch.as_tensor(cond).long().reshape(-1)
        log_s, log_t = (log_noise_level(path, v).reshape(-1) for v in (s, t))
        log_s, log_t = (v.expand(cond.numel()) if v.numel() == 1 else v for v in (log_s, log_t))
        if log_s.shape != cond.shape or log_t.shape != cond.shape:
            raise ValueError(
                f"s, t: expected scalars or {cond.numel()} times, got {tuple(log_s.shape)}, {tuple(log_t.shape)}"
            )
        with torch.no_grad():
            return self(cond, log_s, log_t)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"GuidanceWeights({args})"


WEIGHTS_FORMAT = "guidelab-omega/1"
CHECKPOINT_FORMAT = "guidelab-learn-checkpoint/1"


def save_weights(weights: GuidanceWeights, path: str | Path, meta: dict[str, Any] | None = None) -> None:
    """Write ``{"format", "config", "state_dict", "meta"}`` to ``path`` atomically (``torch.save`` + ``os.replace``).

    ``meta`` (plain JSON) records how the weights were learned: the noise path, the class names, the
    learning configuration and the held-out loss.
    """
    torch_save_atomic(
        {"format": WEIGHTS_FORMAT, "config": weights.config(), "state_dict": weights.state_dict(), "meta": meta or {}},
        path,
    )


def load_weights(path: str | Path) -> tuple[GuidanceWeights, dict[str, Any]]:
    """Load learned weights, in eval mode without gradients, and their ``meta``.

    ``path`` is a weights file written by :func:`save_weights`, a training checkpoint (its best weights
    so far are used) or a learning output folder (its ``weights.pt``, else its ``checkpoint.pt``).
    """
    path = Path(path)
    if path.is_dir():
        candidates = [path / "weights.pt", path / "checkpoint.pt"]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise FileNotFoundError(f"checkpoint: folder {str(path)!r} holds neither weights.pt nor checkpoint.pt")
        path = found
    blob = torch_load_checked(path)
    kind = blob.get("format") if isinstance(blob, dict) else None
    if kind == WEIGHTS_FORMAT:
        config, state, meta = blob["config"], blob["state_dict"], dict(blob.get("meta") or {})
    elif kind == CHECKPOINT_FORMAT:
        config, meta = blob["weights_config"], dict(blob.get("meta") or {})
        state = blob["best_weights"] if blob.get("best_weights") is not None else blob["weights"]
    else:
        raise ValueError(f"checkpoint: {str(path)!r} is not a guidelab learned-weights file or training checkpoint")
    weights = GuidanceWeights.from_config(config)
    weights.load_state_dict(state)
    weights.eval()
    weights.requires_grad_(False)
    return weights, meta
