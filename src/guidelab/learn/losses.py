"""The self-consistency loss of Learn to Guide (Galashov et al., arXiv 2510.00815; docs/methods.md §4).

For a data point ``(x0, c)`` and a time pair ``s < t``:

- m true particles ``x_s^k = α_s·x0 + σ_s·ε_k`` and m independent proposals ``x_t^j = α_t·x0 + σ_t·ε'_j``;
- one guided stochastic DDIM step t → s from every proposal, reparametrized (the noise ξ_j is drawn
  outside), so it is differentiable in ω:

      x0̂(ω) = x0̂_c + ω·(x0̂_c − x0̂_u),   ε̂ = (x_t − α_t·x0̂)/σ_t,
      κ = 1 − η²·(1 − α_t·σ_s/(α_s·σ_t)),  x̃_s = α_s·x0̂ + σ_s·(κ·ε̂ + √(1 − κ²)·ξ)      (η = 1: churn 1);

- the energy distance between the two particle sets

      L = mean_{j,k} ‖x̃_s^j − x_s^k‖^β − (λ/2)·mean_{j≠k} ‖x̃_s^j − x̃_s^k‖^β,   β = 1.75, λ = 1,

  a strictly proper scoring rule for 0 < β < 2 and λ = 1 (Székely & Rizzo 2013; Gneiting & Raftery
  2007). ``β = 2, λ = 0`` is the ℓ2 variant (a mean squared error: it drives ω towards the denoiser's
  own mean, i.e. towards 0 for an exact denoiser).

With the oracle ``x0̂ = x0`` and η = 1 the step is the exact posterior ``q(x_s | x_t, x0)``, so the true
particles are what a perfect guided step produces; ω is learned to bring the frozen denoiser closest.
"""

from __future__ import annotations

import torch
from torch import Tensor

from guidelab.sampling import ddim_kappa

__all__ = ["energy_distance_loss", "guided_ddim_step", "sample_time_pairs"]


def _pow_norm(diff: Tensor, beta: float, eps: float) -> Tensor:
    """``‖diff‖^β`` over the last dimension; ``(‖·‖² + eps)^{β/2}`` keeps the gradient finite at 0."""
    sq = diff.pow(2).sum(-1)
    if beta == 2:
        return sq
    return (sq + eps).pow(0.5 * beta)


def energy_distance_loss(
    x_model: Tensor, x_true: Tensor, *, beta: float = 1.75, repulsion: float = 1.0, eps: float = 1e-12
) -> Tensor:
    """Per-group energy distance ``mean_{j,k}‖x̃^j − x^k‖^β − (λ/2)·mean_{j≠k}‖x̃^j − x̃^{j'}‖^β`` (arXiv 2510.00815).

    Args:
        x_model: model particles x̃ (batch, m, ...), m ≥ 2 when λ > 0.
        x_true: true particles (batch, m', ...).
        beta: exponent β ∈ (0, 2].
        repulsion: weight λ ∈ [0, 1] of the repulsive (within-model) term.
        eps: added to squared norms before the power (β < 2), so the gradient is finite at coincident points.

    Returns:
        (batch,) loss per group (the constant within-true term is left out).
    """
    if not 0 < beta <= 2:
        raise ValueError(f"beta: must lie in (0, 2], got {beta}")
    if not 0 <= repulsion <= 1:
        raise ValueError(f"repulsion: must lie in [0, 1], got {repulsion}")
    if x_model.ndim < 2 or x_true.ndim < 2 or x_model.shape[0] != x_true.shape[0]:
        raise ValueError(
            "x_model, x_true: expected (batch, m, ...) with equal batch, "
            f"got {tuple(x_model.shape)}, {tuple(x_true.shape)}"
        )
    batch, m = x_model.shape[:2]
    xm = x_model.reshape(batch, m, -1)
    xt = x_true.reshape(batch, x_true.shape[1], -1)
    cross = _pow_norm(xm[:, :, None, :] - xt[:, None, :, :], beta, eps).mean(dim=(1, 2))  # (batch,)
    if repulsion == 0:
        return cross
    if m < 2:
        raise ValueError(f"x_model: the repulsive term needs m ≥ 2 particles per group, got {m}")
    within = _pow_norm(xm[:, :, None, :] - xm[:, None, :, :], beta, eps)  # (batch, m, m)
    off_diagonal = ~torch.eye(m, dtype=torch.bool, device=xm.device)
    within = (within * off_diagonal).sum(dim=(1, 2)) / (m * (m - 1))
    return cross - 0.5 * repulsion * within


def guided_ddim_step(
    x_t: Tensor,
    x0_cond: Tensor,
    x0_uncond: Tensor,
    omega: Tensor,
    alpha_t: Tensor,
    sigma_t: Tensor,
    alpha_s: Tensor,
    sigma_s: Tensor,
    noise: Tensor,
    eta: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """One guided DDIM step t → s with churn η, differentiable in ω (docs/methods.md §4):
    ``x0̂ = x0̂_c + ω(x0̂_c − x0̂_u)``, ``ε̂ = (x_t − α_t x0̂)/σ_t``, ``κ = 1 − η²(1 − α_t σ_s/(α_s σ_t))``,
    ``x_s = α_s x0̂ + σ_s(κ ε̂ + √(1 − κ²) ξ)``.

    Args:
        x_t, x0_cond, x0_uncond, noise: (batch, ...) state, frozen predictions and the noise ξ ~ N(0, I).
        omega, alpha_t, sigma_t, alpha_s, sigma_s: broadcastable to ``x_t`` (e.g. (batch, 1, ..., 1)).
        eta: churn in [0, 1].

    Returns:
        ``(x_s, x0_hat)``.
    """
    x0_hat = x0_cond + omega * (x0_cond - x0_uncond)
    eps_hat = (x_t - alpha_t * x0_hat) / sigma_t
    kappa = ddim_kappa(eta, alpha_t * sigma_s / (alpha_s * sigma_t))
    x_s = alpha_s * x0_hat + sigma_s * (kappa * eps_hat + torch.sqrt(torch.clamp(1 - kappa**2, min=0)) * noise)
    return x_s, x0_hat


def sample_time_pairs(
    n: int, generator: torch.Generator, *, delta: float = 0.1, zeta: float = 0.0, s_min: float = 0.0
) -> tuple[Tensor, Tensor]:
    """Time pairs (float64, (n,) each) ``s ~ U[s_min, 1 − ζ − δ]``, ``t = s + U[δ, 1 − ζ − s]`` (docs/methods.md §4)."""
    if not (s_min >= 0 and delta > 0 and zeta >= 0 and s_min + delta + zeta < 1):
        raise ValueError(
            f"delta, zeta, s_min: need s_min ≥ 0, delta > 0, zeta ≥ 0 and s_min + delta + zeta < 1, "
            f"got s_min={s_min}, delta={delta}, zeta={zeta}"
        )
    u = torch.rand(2, n, generator=generator, dtype=torch.float64)
    s = s_min + (1 - zeta - delta - s_min) * u[0]
    t = s + delta + (1 - zeta - s - delta) * u[1]
    return s, t
