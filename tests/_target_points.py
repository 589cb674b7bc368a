"""Shared ground of the exact-target tests: noisy points where a target's density lives, random Gaussian mixtures
paired with their oracle, mixed labels, a relative comparison that also matches non-finite entries, and the 50-digit
mpmath truncated normal (one box, one dimension)."""

from __future__ import annotations

import functools

import numpy as np
import torch

import _oracle_gaussian_mixture as oracle
from guidelab.targets import GaussianMixture


def alpha_sigma(path, t: float) -> tuple[float, float]:
    c = path.coefficients(torch.tensor(t, dtype=torch.float64))
    return float(c.alpha), float(c.sigma)


def noisy_points(target, path, t: float, n: int, seed: int = 0, far: int = 2, spread: float = 3.0) -> torch.Tensor:
    """x_t = α·x0 + σ·ε from exact samples (so points sit where the density lives), the first ``far`` of them
    scaled by ``spread`` out into the tails (float64)."""
    gen = torch.Generator().manual_seed(seed)
    a, s = alpha_sigma(path, t)
    x0 = target.sample(n, None, gen, dtype=torch.float64)
    x = a * x0 + s * torch.randn(n, target.dim, generator=gen, dtype=torch.float64)
    x[:far] *= spread
    return x


# x_t from exact samples with the first 3 points 8× out in the tails
tail_points = functools.partial(noisy_points, far=3, spread=8.0)


def mixture_pair(dim: int, components: int, classes: int, seed: int) -> tuple[GaussianMixture, oracle.GaussianMixture]:
    """A random full-covariance mixture (eigenvalues in [0.05, 2]) built twice: the library's and the oracle's."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(components, dim, dim)))
    covs = np.einsum("kij,kj,klj->kil", q, rng.uniform(0.05, 2.0, size=(components, dim)), q)
    args = (rng.normal(scale=2.0, size=(components, dim)), covs, rng.uniform(0.2, 1.0, components))
    kwargs = {"component_class": np.arange(components) % classes, "class_prior": rng.uniform(0.3, 1.0, classes)}
    return GaussianMixture(*args, **kwargs), oracle.GaussianMixture(*args, **kwargs)


def mixed_cond(n: int, num_classes: int) -> torch.Tensor:
    """Labels cycling through the null class (−1) and every class."""
    return torch.arange(n) % (num_classes + 1) - 1


def assert_relative(new: torch.Tensor, old: torch.Tensor, rtol: float = 1e-10) -> None:
    """|new − old| ≤ rtol·max(|old|, 1) elementwise, same non-finite entries."""
    assert new.shape == old.shape and new.dtype == old.dtype
    assert torch.equal(torch.isfinite(new), torch.isfinite(old))
    ok = torch.isfinite(old)
    err = ((new - old).abs() / old.abs().clamp_min(1.0))[ok]
    assert err.numel() == 0 or float(err.max()) <= rtol, float(err.max())


def truncated_normal_mp(x: float, a: float, s: float, lo: float, hi: float) -> tuple[float, float]:
    """log p_t(x) and E[x0 | x_t = x] of a uniform box [lo, hi] under x_t = a·x0 + s·ε, by 50-digit mpmath."""
    import mpmath as mp  # a dependency of torch (through sympy)

    with mp.workdps(50):
        x, a, s, lo, hi = (mp.mpf(v) for v in (x, a, s, lo, hi))
        u, w = (x - a * lo) / s, (x - a * hi) / s
        r2 = mp.sqrt(2)
        Z = (mp.erfc(w / r2) - mp.erfc(u / r2)) / 2 if w > 0 else (mp.erfc(-u / r2) - mp.erfc(-w / r2)) / 2
        E_z = (mp.npdf(w) - mp.npdf(u)) / Z
        return float(mp.log(Z / (a * (hi - lo)))), float(x / a - s / a * E_z)
