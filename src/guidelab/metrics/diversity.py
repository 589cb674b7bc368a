"""The Vendi score (Friedman & Dieng 2022, arXiv 2210.02410): the effective number of distinct samples.

    VS_q(x_1..n) = exp(H_q(λ)),  λ = eigenvalues of K/n,  K_ij = k(x_i, x_j), k(x, x) = 1,
    H_1 = −Σ λ log λ (Shannon),  H_q = log(Σ λ^q)/(1 − q) (Rényi, order q; Pasarkar & Dieng 2023, arXiv 2310.12952).

n copies of one point give 1; n mutually orthogonal points under the cosine kernel give n.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from guidelab.metrics.base import as_points, seeded_generator
from guidelab.metrics.distances import median_heuristic_bandwidth
from guidelab.validation import did_you_mean

__all__ = ["vendi_score"]


def _entropy_exp(lam: Tensor, q: float) -> float:
    lam = lam.clamp(min=0)
    lam = lam / lam.sum()
    lam = lam[lam > 0]
    if q == 1:
        return float(torch.exp(-(lam * torch.log(lam)).sum()))
    if q == float("inf"):
        return float(1 / lam.max())
    return float(torch.exp(torch.log((lam**q).sum()) / (1 - q)))


def vendi_score(
    x: Tensor,
    *,
    kernel: Literal["gaussian", "cosine"] = "gaussian",
    bandwidth: float | None = None,
    q: float = 1.0,
    max_points: int = 2000,
    seed: int = 0,
) -> float:
    """Vendi score ``exp(−Σ_i λ_i log λ_i)`` of the eigenvalues λ of K/n (order q: the Rényi form).

    Args:
        x: samples (n, ...).
        kernel: ``"gaussian"``: ``k = exp(−‖a − b‖²/(2h²))`` with h = ``bandwidth`` or the median heuristic
            (seeded); ``"cosine"``: ``k = <a, b>/(‖a‖‖b‖)``, exact for any n through the D × D matrix
            ``X̂ᵀX̂/n``, which has the same non-zero eigenvalues as K/n.
        q: order (1 = Shannon, the paper's default; ``inf`` gives 1/λ_max).
        max_points: the Gaussian kernel needs the n × n eigen-decomposition; above ``max_points`` it uses a
            uniform subset of that size drawn with ``seed`` (the score then estimates the subset's).
    """
    x = as_points(x, "x")
    if not q >= 0:
        raise ValueError(f"q: order must be ≥ 0, got {q}")
    if kernel == "cosine":
        norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
        if bool((norms == 0).any()):
            raise ValueError("x: the cosine kernel is undefined at the zero vector")
        xn = x / norms
        return _entropy_exp(torch.linalg.eigvalsh(xn.T @ xn / x.shape[0]), q)
    if kernel != "gaussian":
        raise ValueError(f"kernel: unknown kernel {kernel!r}{did_you_mean(kernel, ('gaussian', 'cosine'))}")
    if x.shape[0] > max_points:
        x = x[torch.randperm(x.shape[0], generator=seeded_generator(seed))[:max_points].to(x.device)]
    h = median_heuristic_bandwidth(x, seed=seed) if bandwidth is None else float(bandwidth)
    if not h > 0:
        raise ValueError(f"bandwidth: must be > 0, got {h}")
    gram = torch.exp(-0.5 * torch.cdist(x, x).square() / h**2)
    return _entropy_exp(torch.linalg.eigvalsh(gram / x.shape[0]), q)
