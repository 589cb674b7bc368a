"""Gaussian mixtures with singular (rank-deficient) covariances: data on planes.

The reference is written in each component's latent coordinates, independently of the mixture's eigen-
decomposition: x0 = μ_k + A_k z, z ~ N(0, I_r), so x_t | k ~ N(α μ_k, α² A_k A_kᵀ + σ² I) (scipy's density)
and E[z | x_t, k] = α (α² A_kᵀA_k + σ² I_r)⁻¹ A_kᵀ (x_t − α μ_k) (Gaussian conjugacy in r dimensions), mixed by
Bayes' rule over the components of the class."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from guidelab.grids import make_grid
from guidelab.guiders import build_guider
from guidelab.paths import get_path
from guidelab.sampling import sample
from guidelab.targets import GaussianMixture

DIM, RANK = 12, 2


def _planes(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Four rank-2 components (two per class) on random planes: means (4, D), factors A (4, D, 2), weights,
    classes."""
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=0.7, size=(4, DIM))
    factors = rng.normal(size=(4, DIM, RANK)) * rng.uniform(0.3, 1.5, size=(4, 1, RANK))
    return means, factors, np.array([0.3, 0.7, 0.5, 0.5]), np.array([0, 0, 1, 1])


def _mixture(seed: int = 0) -> tuple[GaussianMixture, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    means, factors, weights, classes = _planes(seed)
    covs = np.einsum("kir,kjr->kij", factors, factors)
    return GaussianMixture(means, covs, weights, classes, allow_singular=True), means, factors, weights, classes


def _reference(x: np.ndarray, alpha: float, sigma: float, cond: int, means, factors, weights, classes):
    """(E[x0 | x_t, c] (n, D), log p_t(x_t | c) (n,)) from the latent-space closed form."""
    members = np.flatnonzero(classes == cond)
    w = weights[members] / weights[members].sum()
    logs, comp_means = [], []
    for k in members:
        mu, a = means[k], factors[k]
        cov = alpha**2 * a @ a.T + sigma**2 * np.eye(DIM)
        logs.append(multivariate_normal(alpha * mu, cov).logpdf(x))
        gain = alpha * np.linalg.solve(alpha**2 * a.T @ a + sigma**2 * np.eye(RANK), a.T)  # (r, D)
        comp_means.append(mu + (x - alpha * mu) @ gain.T @ a.T)
    joint = np.log(w)[:, None] + np.stack(logs)  # (K_c, n)
    log_p = logsumexp(joint, axis=0)
    resp = np.exp(joint - log_p)
    return np.einsum("kn,knd->nd", resp, np.stack(comp_means)), log_p


@pytest.mark.parametrize("path_name", ["rf", "vp-cosine"])
@pytest.mark.parametrize("t", [1e-3, 0.05, 0.4, 0.95])
def test_denoiser_and_density_match_the_latent_closed_form(path_name, t):
    target, means, factors, weights, classes = _mixture()
    path = get_path(path_name)
    c = path.coefficients(torch.tensor(t, dtype=torch.float64))
    alpha, sigma = float(c.alpha), float(c.sigma)
    gen = torch.Generator().manual_seed(1)
    x0 = target.sample(16, None, gen, dtype=torch.float64)
    x = alpha * x0 + sigma * torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    for cond in (0, 1):
        mean_ref, log_ref = _reference(x.numpy(), alpha, sigma, cond, means, factors, weights, classes)
        mean, log_p = target.posterior_mean_and_log_prob(x, t, path, cond)
        np.testing.assert_allclose(mean.numpy(), mean_ref, rtol=1e-7, atol=1e-8)
        np.testing.assert_allclose(log_p.numpy(), log_ref, rtol=1e-8, atol=1e-7)


def test_per_sample_times_match_shared_times():
    target = _mixture()[0]
    path = get_path("rf")
    x = target.sample(6, 0, torch.Generator().manual_seed(2), dtype=torch.float64) * 0.9
    times = torch.tensor([0.01, 0.1, 0.2, 0.5, 0.7, 0.99], dtype=torch.float64)
    per_sample = target.posterior_mean(x, times, path, 1)
    shared = torch.stack([target.posterior_mean(x[i : i + 1], float(times[i]), path, 1)[0] for i in range(6)])
    torch.testing.assert_close(per_sample, shared, rtol=1e-10, atol=1e-12)


def test_samples_lie_on_their_planes_and_near_data_the_denoiser_projects():
    target, means, factors, _, classes = _mixture()
    x = target.sample(400, 0, torch.Generator().manual_seed(3), dtype=torch.float64).numpy()
    # distance of each sample to the nearest plane of class 0: zero up to round-off
    dist = []
    for k in np.flatnonzero(classes == 0):
        q, _ = np.linalg.qr(factors[k])
        r = x - means[k]
        dist.append(np.linalg.norm(r - r @ q @ q.T, axis=1))
    assert np.min(np.stack(dist), axis=0).max() < 1e-10
    # at σ → 0 a point off the planes is denoised onto the nearest one (its orthogonal projection)
    k = 2
    q, _ = np.linalg.qr(factors[k])
    on = means[k] + factors[k] @ np.array([0.3, -0.2])
    off = on + 0.01 * (np.eye(DIM)[0] - q @ q.T @ np.eye(DIM)[0])
    t = 1e-6
    x_t = torch.tensor((1 - t) * off, dtype=torch.float64)[None]
    out = target.posterior_mean(x_t, t, get_path("rf"), 1)[0].numpy()
    np.testing.assert_allclose(out, on, atol=1e-5)


def test_nearly_singular_full_rank_mixture_converges_to_it():
    target, means, factors, weights, classes = _mixture()
    covs = np.einsum("kir,kjr->kij", factors, factors)
    near = GaussianMixture(means, covs + 1e-9 * np.eye(DIM), weights, classes)
    path = get_path("rf")
    x = target.sample(32, None, torch.Generator().manual_seed(4), dtype=torch.float64)
    x_t = 0.9 * x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    torch.testing.assert_close(
        target.posterior_mean(x_t, 0.1, path, 0), near.posterior_mean(x_t, 0.1, path, 0), rtol=1e-6, atol=1e-6
    )


def test_sampling_reaches_the_planes_and_sigma_zero_is_refused():
    target, means, factors, _, classes = _mixture()
    path = get_path("rf")
    res = sample(
        target.denoiser(path),
        build_guider("cfg", scale=2.0),
        n=64,
        cond=1,
        grid=make_grid("uniform", 16, path),
        shape=(DIM,),
        seed=0,
        dtype=torch.float64,
    )
    x = res.x.numpy()
    assert np.isfinite(x).all()
    dist = []
    for k in np.flatnonzero(classes == 1):
        q, _ = np.linalg.qr(factors[k])
        r = x - means[k]
        dist.append(np.linalg.norm(r - r @ q @ q.T, axis=1))
    assert np.min(np.stack(dist), axis=0).max() < 1e-9  # rf Euler's last step lands on x0̂, on a class-1 plane
    with pytest.raises(ValueError, match="t: σ = 0 with a singular covariance"):
        target.posterior_mean(torch.zeros(2, DIM, dtype=torch.float64), 0.0, path, 0)


def test_validation_of_singular_covariances():
    means, factors, weights, classes = _planes()
    covs = np.einsum("kir,kjr->kij", factors, factors)
    with pytest.raises(ValueError, match=r"covariances\[0\]: not positive definite"):
        GaussianMixture(means, covs, weights, classes)  # singular needs the opt-in
    bad = covs.copy()
    bad[2] -= 0.5 * np.eye(DIM)
    with pytest.raises(ValueError, match=r"covariances\[2\]: not positive semi-definite"):
        GaussianMixture(means, bad, weights, classes, allow_singular=True)
    full = GaussianMixture(means, covs + np.eye(DIM), weights, classes, allow_singular=True)
    assert not full.singular


def test_spec_round_trip_and_file_validation():
    from guidelab.targets import get_target

    target = _mixture()[0]
    spec = target.to_spec()
    assert spec["allow_singular"] is True
    again = get_target(spec)
    x = target.sample(8, None, torch.Generator().manual_seed(6), dtype=torch.float64) * 0.8
    path = get_path("rf")
    torch.testing.assert_close(again.posterior_mean(x, 0.2, path, 1), target.posterior_mean(x, 0.2, path, 1))
    flat = {
        "kind": "gaussian-mixture",
        "classes": [{"name": "a", "components": [{"mean": [0, 0], "cov": [[1, 0], [0, 0]]}]}],
    }
    with pytest.raises(ValueError, match="not positive definite"):
        get_target(flat)
    assert get_target({**flat, "allow_singular": True}).singular
    with pytest.raises(ValueError, match="allow_singular: only for kind gaussian-mixture"):
        get_target(
            {
                "kind": "box-mixture",
                "allow_singular": True,
                "classes": [{"name": "a", "components": [{"low": [0], "high": [1]}]}],
            }
        )
