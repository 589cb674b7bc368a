"""Gaussian mixtures: exact densities vs scipy, denoiser vs autograd (Tweedie), Bayes rule, exact sampling,
float32 at scale, chunking, the α = 0 and t = 0 ends, input validation."""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from _target_points import alpha_sigma, mixed_cond, noisy_points
from guidelab.paths import PATHS, get_path
from guidelab.targets import GaussianMixture

ALL_PATHS = [get_path(name) for name in PATHS]
TIMES = [1e-4, 1e-2, 0.3, 0.9, 1.0]


def random_gmm(dim: int, num_components: int = 5, num_classes: int = 2, seed: int = 0) -> GaussianMixture:
    """Full, non-isotropic covariances (eigenvalues in [0.05, 2]) and spread means, classes interleaved."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(num_components, dim, dim)))
    eig = rng.uniform(0.05, 2.0, size=(num_components, dim))
    covs = np.einsum("kij,kj,klj->kil", q, eig, q)
    means = rng.normal(scale=2.0, size=(num_components, dim))
    return GaussianMixture(
        means,
        covs,
        rng.uniform(0.2, 1.0, num_components),
        np.arange(num_components) % num_classes,
        class_prior=rng.uniform(0.3, 1.0, num_classes),
    )


# --- densities -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [1, 2, 5])
@pytest.mark.parametrize("path", ALL_PATHS, ids=lambda p: p.name)
def test_log_prob_matches_scipy(dim, path):
    target = random_gmm(dim, seed=dim)
    mu, cov = target.means.numpy(), target.covariances.numpy()
    log_w = target.log_mixture_weights(None, 1)[0].numpy()
    for t in [0.0, *TIMES]:
        a, s = alpha_sigma(path, t)
        x = noisy_points(target, path, t, 12)
        comp = np.stack(
            [multivariate_normal(a * mu[k], a * a * cov[k] + s * s * np.eye(dim)).logpdf(x.numpy()) for k in range(5)],
            axis=-1,
        ).reshape(len(x), 5)
        np.testing.assert_allclose(target.component_log_prob_t(x, t, path).numpy(), comp, rtol=1e-10, atol=1e-10)
        ref = logsumexp(comp + log_w, axis=-1)
        np.testing.assert_allclose(target.log_prob_t(x, t, path).numpy(), ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dim", [1, 2, 5])
@pytest.mark.parametrize("path", ALL_PATHS, ids=lambda p: p.name)
def test_posterior_mean_is_tweedie_of_log_prob(dim, path):
    """E[x0 | x_t, c] = (x_t + σ²∇log p_t(x_t | c))/α with ∇ from autograd of log_prob_t (float64)."""
    target = random_gmm(dim, seed=10 + dim)
    n = 16
    for t in TIMES:
        a, s = alpha_sigma(path, t)
        if a == 0:
            continue
        x = noisy_points(target, path, t, n, seed=1)
        for cond in (None, 1, mixed_cond(n, target.num_classes)):
            x_req = x.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(target.log_prob_t(x_req, t, path, cond).sum(), x_req)
            tweedie = (x + s * s * grad) / a
            x0_hat = target.posterior_mean(x, t, path, cond)
            err = (x0_hat - tweedie).norm(dim=-1) / x0_hat.norm(dim=-1).clamp_min(1.0)
            assert err.max() <= 1e-6, (path.name, t, cond, float(err.max()))


def test_posterior_mean_single_gaussian_closed_form():
    """One component: E[x0|x_t] = μ + αΣ(α²Σ + σ²I)⁻¹(x_t − αμ), written with a plain linear solve."""
    rng = np.random.default_rng(3)
    A = rng.normal(size=(3, 3))
    cov = A @ A.T + 0.2 * np.eye(3)
    mu = rng.normal(size=3)
    target = GaussianMixture(mu[None], cov[None])
    path = get_path("vp-cosine")
    a, s = alpha_sigma(path, 0.4)
    x = torch.tensor(rng.normal(size=(7, 3)))
    ref = mu + (a * cov @ np.linalg.solve(a * a * cov + s * s * np.eye(3), (x.numpy() - a * mu).T)).T
    np.testing.assert_allclose(target.posterior_mean(x, 0.4, path, None).numpy(), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("path", ALL_PATHS, ids=lambda p: p.name)
def test_class_posterior_is_bayes_rule(path):
    target = random_gmm(3, num_components=6, num_classes=3, seed=4)
    x = noisy_points(target, path, 0.3, 20)
    log_post = target.class_log_posterior(x, 0.3, path)
    torch.testing.assert_close(log_post.exp().sum(-1), torch.ones(20, dtype=torch.float64))
    per_class = torch.stack([target.log_prob_t(x, 0.3, path, c) for c in range(3)], dim=-1)
    bayes = torch.log(target.class_prior) + per_class - target.log_prob_t(x, 0.3, path)[:, None]
    torch.testing.assert_close(log_post, bayes, rtol=1e-10, atol=1e-10)


def test_per_sample_times_match_shared_time():
    target = random_gmm(4, num_components=7, num_classes=3, seed=5)
    path = get_path("vp-linear")
    n = 9
    x = noisy_points(target, path, 0.5, n)
    t = torch.linspace(0.05, 0.95, n, dtype=torch.float64)
    cond = mixed_cond(n, 3)
    x0_hat, log_p = target.posterior_mean_and_log_prob(x, t, path, cond)
    comp = target.component_log_prob_t(x, t, path)
    for i in range(n):
        ref_mean, ref_logp = target.posterior_mean_and_log_prob(x[i : i + 1], float(t[i]), path, cond[i : i + 1])
        torch.testing.assert_close(x0_hat[i : i + 1], ref_mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(log_p[i : i + 1], ref_logp, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(comp[i : i + 1], target.component_log_prob_t(x[i : i + 1], float(t[i]), path))
    # A (batch,) t with one value everywhere, a 0-d tensor and a float agree.
    for t_same in (0.3, torch.tensor(0.3, dtype=torch.float64), torch.full((n,), 0.3, dtype=torch.float64)):
        torch.testing.assert_close(
            target.posterior_mean(x, t_same, path, cond), target.posterior_mean(x, 0.3, path, cond)
        )


def test_alpha_zero_and_data_ends():
    """rf at t = 1 (α = 0): p_1 = N(0, σ²I) and E[x0 | x_1, c] = E[x0 | c]. At t = 0: p_0 = p, E[x0 | x_0] = x_0."""
    target = random_gmm(3, seed=6)
    rf = get_path("rf")
    x = torch.randn(10, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ref = multivariate_normal(np.zeros(3), np.eye(3)).logpdf(x.numpy())
    np.testing.assert_allclose(target.log_prob_t(x, 1.0, rf, 0).numpy(), ref, rtol=1e-12)
    for cond in (None, 0, 1):
        x0_hat = target.posterior_mean(x, 1.0, rf, cond)
        torch.testing.assert_close(x0_hat, target.mean(cond).expand(10, 3), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(target.posterior_mean(x, 0.0, rf, None), x, rtol=1e-12, atol=1e-12)
    mu, cov = target.means.numpy(), target.covariances.numpy()
    w = target.log_mixture_weights(None, 1)[0].exp().numpy()
    ref0 = np.log(sum(w[k] * multivariate_normal(mu[k], cov[k]).pdf(x.numpy()) for k in range(5)))
    np.testing.assert_allclose(target.log_prob_t(x, 0.0, rf).numpy(), ref0, rtol=1e-10)


# --- sampling --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cond", [None, 0, 1])
def test_exact_sampling_moments(cond):
    target = random_gmm(3, seed=7)
    n = 200_000
    x = target.sample(n, cond, torch.Generator().manual_seed(1), dtype=torch.float64)
    assert x.shape == (n, 3)
    mean, cov = target.mean(cond), target.covariance(cond)
    se_mean = torch.sqrt(torch.diagonal(cov) / n)
    assert ((x.mean(0) - mean).abs() <= 5 * se_mean).all()
    xc = x - mean
    prod = xc[:, :, None] * xc[:, None, :]
    se_cov = prod.std(0) / n**0.5
    assert ((prod.mean(0) - cov).abs() <= 5 * se_cov).all()


def test_sampling_is_seeded_and_typed():
    target = random_gmm(2, seed=8)
    a = target.sample(50, "1", torch.Generator().manual_seed(3))
    b = target.sample(50, 1, torch.Generator().manual_seed(3))
    assert a.dtype == torch.float32
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert target.sample(0).shape == (0, 2)


# --- float32 at scale, chunking --------------------------------------------------------------------------


@functools.cache
def large_gmm(seed: int = 0) -> GaussianMixture:
    """D = 64, K = 100, 10 classes (built once per seed)."""
    rng = np.random.default_rng(seed)
    K, D = 100, 64
    q, _ = np.linalg.qr(rng.normal(size=(K, D, D)))
    covs = np.einsum("kij,kj,klj->kil", q, rng.uniform(0.1, 1.0, size=(K, D)), q)
    return GaussianMixture(rng.normal(scale=0.5, size=(K, D)), covs, rng.uniform(0.2, 1, K), np.arange(K) % 10)


@pytest.mark.parametrize("path", ALL_PATHS, ids=lambda p: p.name)
def test_float32_large_no_nan_and_matches_float64(path):
    target = large_gmm()
    n = 32
    cond = mixed_cond(n, 10)
    for t in np.geomspace(1e-4, 1.0, 5):
        x = noisy_points(target, path, float(t), n, seed=2)
        x0_64, logp_64 = target.posterior_mean_and_log_prob(x, float(t), path, cond)
        x0_32, logp_32 = target.posterior_mean_and_log_prob(x.float(), float(t), path, cond)
        assert x0_32.dtype == torch.float32
        assert torch.isfinite(x0_32).all(), (path.name, t)
        assert torch.isfinite(logp_32).all(), (path.name, t)
        err = (x0_32.double() - x0_64).norm(dim=-1) / x0_64.norm(dim=-1).clamp_min(1.0)
        assert err.max() <= 1e-3, (path.name, t, float(err.max()))
        rel = (logp_32.double() - logp_64).abs() / logp_64.abs().clamp_min(1.0)
        assert rel.max() <= 1e-4, (path.name, t, float(rel.max()))


@pytest.mark.parametrize("per_sample", [False, True])
def test_chunked_equals_unchunked(per_sample):
    target = copy.copy(large_gmm(1))
    path = get_path("rf")
    n = 120
    x = noisy_points(target, path, 0.4, n).float()
    t = torch.rand(n, generator=torch.Generator().manual_seed(0)) if per_sample else 0.4
    cond = mixed_cond(n, 10)
    full = target.posterior_mean_and_log_prob(x, t, path, cond)
    comp = target.component_log_prob_t(x, t, path)
    target.max_chunk_bytes = 3 * 100 * 64 * 4 * 7  # 7 particles per chunk: many chunks and a ragged end
    target.cache_chunk_bytes = target.max_chunk_bytes
    chunked = target.posterior_mean_and_log_prob(x, t, path, cond)
    torch.testing.assert_close(chunked[0], full[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(chunked[1], full[1], rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(target.component_log_prob_t(x, t, path), comp, rtol=1e-6, atol=1e-5)


def test_posterior_mean_jacobian_autograd_matches_finite_differences():
    """Autograd through the denoiser (needed by divergence diagnostics) is correct: d x0̂/dx_t = (α/σ²)Cov[x0|x_t],
    symmetric, and equal to central differences."""
    target = random_gmm(3, seed=9)
    path = get_path("rf")
    x = noisy_points(target, path, 0.5, 1, seed=4)[0]
    jac = torch.autograd.functional.jacobian(lambda v: target.posterior_mean(v[None], 0.5, path, 0)[0], x)
    eps = 1e-6
    fd = torch.stack(
        [
            (
                target.posterior_mean((x + eps * e)[None], 0.5, path, 0)
                - target.posterior_mean((x - eps * e)[None], 0.5, path, 0)
            )[0]
            / (2 * eps)
            for e in torch.eye(3, dtype=torch.float64)
        ],
        dim=1,
    )
    torch.testing.assert_close(jac, fd, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(jac, jac.T, rtol=1e-9, atol=1e-10)


def test_score_helper_is_tweedie():
    target = random_gmm(2, seed=11)
    path = get_path("ou")
    x = noisy_points(target, path, 0.05, 8).requires_grad_(True)
    (grad,) = torch.autograd.grad(target.log_prob_t(x, 0.05, path, 1).sum(), x)
    torch.testing.assert_close(target.score(x.detach(), 0.05, path, 1), grad, rtol=1e-9, atol=1e-9)


# --- validation ------------------------------------------------------------------------------------------


def test_validation_messages_name_the_field():
    mu = np.zeros((4, 2))
    cov = np.stack([np.eye(2)] * 4)
    bad = cov.copy()
    bad[3] = [[1.0, 0.0], [0.0, -0.2]]
    with pytest.raises(ValueError, match=r"covariances\[3\]: not positive definite \(smallest eigenvalue -0.2\)"):
        GaussianMixture(mu, bad)
    asym = cov.copy()
    asym[1] = [[1.0, 0.5], [0.0, 1.0]]
    with pytest.raises(ValueError, match=r"covariances\[1\]: not symmetric"):
        GaussianMixture(mu, asym)
    with pytest.raises(ValueError, match=r"covariances: expected shape \(4, 2, 2\)"):
        GaussianMixture(mu, cov[:3])
    with pytest.raises(ValueError, match=r"weights\[2\]: must be >= 0"):
        GaussianMixture(mu, cov, [1, 1, -1, 1])
    with pytest.raises(ValueError, match=r"weights: expected 4 values"):
        GaussianMixture(mu, cov, [1, 1])
    with pytest.raises(ValueError, match="class '1' have total weight 0"):
        GaussianMixture(mu, cov, [1, 0, 1, 0], [0, 1, 0, 1])
    with pytest.raises(ValueError, match="class_prior: expected 2 values"):
        GaussianMixture(mu, cov, None, [0, 1, 0, 1], class_prior=[1.0])
    with pytest.raises(ValueError, match="class_prior: must be >= 0"):
        GaussianMixture(mu, cov, None, [0, 1, 0, 1], class_prior=[1.0, -0.5])
    with pytest.raises(ValueError, match="component_class: class 'c' .* has no component"):
        GaussianMixture(mu, cov, None, [0, 1, 0, 1], ["a", "b", "c"])
    with pytest.raises(ValueError, match="means: contains non-finite values"):
        GaussianMixture(np.full((4, 2), np.nan), cov)
    target = GaussianMixture(mu, cov, None, [0, 1, 0, 1], ["a", "b"])
    with pytest.raises(ValueError, match=r"x_t: expected shape \(batch, 2\)"):
        target.posterior_mean(torch.zeros(3, 3), 0.5, get_path("rf"), None)
    with pytest.raises(ValueError, match=r"cond: labels must lie in \[-1, 1\]"):
        target.posterior_mean(torch.zeros(3, 2), 0.5, get_path("rf"), torch.tensor([0, 2, -1]))
    with pytest.raises(ValueError, match="t: expected a scalar or 3 times"):
        target.posterior_mean(torch.zeros(3, 2), torch.rand(2), get_path("rf"), None)
    assert "GaussianMixture(" in repr(target)
    assert "a: 2" in repr(target)
    rebuilt = GaussianMixture(**_spec_to_args(target.config()))
    torch.testing.assert_close(rebuilt.covariances, target.covariances)


def _spec_to_args(spec: dict) -> dict:
    comps = [(c, comp) for c, cls in enumerate(spec["classes"]) for comp in cls["components"]]
    return {
        "means": [comp["mean"] for _, comp in comps],
        "covariances": [comp["cov"] for _, comp in comps],
        "weights": [comp["weight"] for _, comp in comps],
        "component_class": [c for c, _ in comps],
        "class_names": [cls["name"] for cls in spec["classes"]],
        "class_prior": [cls["prior"] for cls in spec["classes"]],
    }


@pytest.mark.slow
def test_throughput_is_near_matmul_speed():
    """D = 64, K = 100, 10⁵ particles, float32: the posterior mean runs at ≥ 75% of a plain float32 matmul's
    GFLOP/s (its two GEMMs are 4·n·K·D² FLOPs). Best of several interleaved runs, so load spikes cancel."""
    import time

    target = large_gmm()
    n = 100_000
    x = torch.randn(n, 64, generator=torch.Generator().manual_seed(0))
    t = torch.full((n,), 0.5)
    cond = mixed_cond(n, 10)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    out = torch.empty(2048, 2048)
    path = get_path("rf")
    target.posterior_mean(x[:1000], t[:1000], path, cond[:1000])
    best_mm, best_pm = float("inf"), float("inf")
    for _ in range(5):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best_mm = min(best_mm, time.perf_counter() - start)
        start = time.perf_counter()
        target.posterior_mean(x, t, path, cond)
        best_pm = min(best_pm, time.perf_counter() - start)
    ratio = (4 * n * 100 * 64**2 / best_pm) / (2 * 2048**3 / best_mm)
    assert ratio >= 0.75, f"posterior_mean at {ratio:.0%} of matmul GFLOP/s"
