"""Independent references for the image metrics' tests: the Fréchet distance with scipy's matrix square root, and
the documented matched-size protocol (five seeded halvings of the reference) written out here."""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch

FLOOR_SEED = 20_170_706  # the seed the module documents


def fd_scipy(a: np.ndarray, b: np.ndarray) -> float:
    """‖μ_a − μ_b‖² + tr(Σ_a + Σ_b − 2(Σ_a Σ_b)^{1/2}), unbiased covariances, scipy's sqrtm."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False, ddof=1)), np.atleast_2d(np.cov(b, rowvar=False, ddof=1))
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def halvings(m: int, count: int = 5, seed: int = FLOOR_SEED) -> list[tuple[np.ndarray, np.ndarray]]:
    """The documented halvings: ``count`` successive ``torch.randperm(m)`` of a generator seeded ``seed``, each cut
    at m // 2."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        order = torch.randperm(m, generator=g).numpy()
        out.append((order[: m // 2], order[m // 2 :]))
    return out


def matched_fd(gen: np.ndarray, ref: np.ndarray, count: int = 5, seed: int = FLOOR_SEED) -> float:
    """A run's FD: per halving (A, B), a random |A|-subset of ``gen`` (successive ``randperm(n)`` of a generator
    seeded ``seed + 1``) against B, averaged."""
    g = torch.Generator().manual_seed(seed + 1)
    values = []
    for first, second in halvings(ref.shape[0], count, seed):
        chosen = torch.randperm(gen.shape[0], generator=g).numpy()[: first.size]
        values.append(fd_scipy(gen[chosen], ref[second]))
    return float(np.mean(values))


def floor_fd(ref: np.ndarray, count: int = 5, seed: int = FLOOR_SEED) -> float:
    """The floor: per halving, A against B, averaged."""
    return float(np.mean([fd_scipy(ref[a], ref[b]) for a, b in halvings(ref.shape[0], count, seed)]))
