"""Box mixtures: densities vs quadrature, denoiser vs autograd (Tweedie) and vs high-precision references,
the α = 0 and t = 0 ends, float32, exact sampling, support and distance, chunking, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from _target_points import alpha_sigma, mixed_cond, noisy_points, truncated_normal_mp
from guidelab.paths import PATHS, get_path
from guidelab.targets import BoxMixture
from guidelab.targets.box_mixture import box_log_prob_and_mean

ALL_PATHS = [get_path(name) for name in PATHS]
TIMES = [1e-4, 1e-2, 0.3, 0.9, 1.0]


def random_boxes(dim: int, num_components: int = 4, num_classes: int = 2, seed: int = 0) -> BoxMixture:
    rng = np.random.default_rng(seed)
    low = rng.normal(scale=2.0, size=(num_components, dim))
    high = low + rng.uniform(0.2, 2.0, size=(num_components, dim))
    return BoxMixture(
        low,
        high,
        rng.uniform(0.2, 1.0, num_components),
        np.arange(num_components) % num_classes,
        class_prior=rng.uniform(0.3, 1.0, num_classes),
    )


def _quad(x: float, a: float, s: float, low: float, high: float, power: int) -> tuple[float, float]:
    """∫_low^high y^power·exp(−(x − a·y)²/(2s²) + q) dy by adaptive quadrature, scaled by the peak exponent q."""
    y_star = min(max(x / a, low), high)  # where the kernel peaks on [low, high]
    q = (x - a * y_star) ** 2 / (2 * s * s)
    # Break points at geometric distances from the peak, down to its width, so a narrow spike is resolved.
    width = s * s / max(a * abs(x - a * y_star), a * s)
    steps = [y_star + sign * width * 10.0**j for j in range(10) for sign in (-1, 1)]
    points = sorted(p for p in steps if low < p < high) or None
    val, _ = integrate.quad(
        lambda y: y**power * math.exp(-((x - a * y) ** 2) / (2 * s * s) + q),
        low,
        high,
        points=points,
        epsabs=0,
        epsrel=1e-11,
        limit=400,
    )
    return val, q


def quad_log_density(x: float, a: float, s: float, low: float, high: float) -> float:
    """log ∫_low^high N(x; a·y, s²) dy/(high − low): the convolution of the uniform with the Gaussian kernel."""
    val, q = _quad(x, a, s, low, high, 0)
    return math.log(val) - q - math.log(s * math.sqrt(2 * math.pi)) - math.log(high - low)


def quad_mean(x: float, a: float, s: float, low: float, high: float) -> float:
    """E[x0 | x_t = x] = ∫ y N(x; a·y, s²) dy / ∫ N(x; a·y, s²) dy over [low, high]."""
    return _quad(x, a, s, low, high, 1)[0] / _quad(x, a, s, low, high, 0)[0]


# --- densities and denoiser ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [get_path("ou"), get_path("rf"), get_path("ve")], ids=lambda p: p.name)
def test_1d_log_prob_and_mean_match_quadrature(path):
    target = BoxMixture([[1.0], [-2.0]], [[2.0], [-1.0]], None, [0, 1], ["pos", "neg"])
    xs = np.linspace(-3.0, 3.0, 13)
    for t in (1e-3, 0.05, 0.3, 0.7):
        a, s = alpha_sigma(path, t)
        x = torch.tensor(xs)[:, None]
        comp = target.component_log_prob_t(x, t, path).numpy()
        ref = np.array([[quad_log_density(v, a, s, 1.0, 2.0), quad_log_density(v, a, s, -2.0, -1.0)] for v in xs])
        np.testing.assert_allclose(comp, ref, rtol=1e-9, atol=1e-9)
        mean_pos = target.posterior_mean(x, t, path, 0)[:, 0].numpy()
        np.testing.assert_allclose(mean_pos, [quad_mean(v, a, s, 1.0, 2.0) for v in xs], rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("dim", [1, 2, 5])
@pytest.mark.parametrize("path", ALL_PATHS, ids=lambda p: p.name)
def test_posterior_mean_is_tweedie_of_log_prob(dim, path):
    """E[x0 | x_t, c] = (x_t + σ²∇log p_t(x_t | c))/α with ∇ from autograd of log_prob_t (float64)."""
    target = random_boxes(dim, seed=dim)
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


def test_truncated_normal_against_high_precision():
    """All regimes (far tails, tiny σ, tiny α, near the series/closed-form switch) vs 50-digit mpmath."""
    reference = truncated_normal_mp

    rng = np.random.default_rng(0)
    rows = []
    for a, s in [(0.1, 0.9), (0.9, 0.1), (1 - 1e-4, 1e-4), (0.02, 0.98), (0.005, 1.0), (1e-5, 1.0), (0.3, 0.95)]:
        for _ in range(40):
            lo = rng.normal() * 2
            hi = lo + rng.uniform(0.2, 2)
            rows.append((a * rng.normal() * 2 + s * rng.normal() * 3, a, s, lo, hi))
    x, a, s, lo, hi = (torch.tensor(col, dtype=torch.float64) for col in zip(*rows, strict=True))
    log_p, mean = box_log_prob_and_mean(x, a, s, lo, hi)
    ref = np.array([reference(*row) for row in rows])
    np.testing.assert_allclose(log_p.numpy(), ref[:, 0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(mean.numpy(), ref[:, 1], rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("path", ALL_PATHS, ids=lambda p: p.name)
def test_class_posterior_is_bayes_rule(path):
    target = random_boxes(2, num_components=6, num_classes=3, seed=4)
    x = noisy_points(target, path, 0.3, 20)
    log_post = target.class_log_posterior(x, 0.3, path)
    torch.testing.assert_close(log_post.exp().sum(-1), torch.ones(20, dtype=torch.float64))
    per_class = torch.stack([target.log_prob_t(x, 0.3, path, c) for c in range(3)], dim=-1)
    bayes = torch.log(target.class_prior) + per_class - target.log_prob_t(x, 0.3, path)[:, None]
    torch.testing.assert_close(log_post, bayes, rtol=1e-10, atol=1e-10)


def test_alpha_zero_is_prior_and_continuous():
    """rf at t = 1: p_1 = N(0, σ²I), E[x0 | x_1, c] = E[x0 | c]; and t → 1 approaches both continuously."""
    target = random_boxes(2, seed=5)
    rf = get_path("rf")
    x = torch.randn(10, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2
    ref = stats.multivariate_normal(np.zeros(2), np.eye(2)).logpdf(x.numpy())
    for cond in (None, 0, 1):
        np.testing.assert_allclose(target.log_prob_t(x, 1.0, rf, cond).numpy(), ref, rtol=1e-12)
        torch.testing.assert_close(target.posterior_mean(x, 1.0, rf, cond), target.mean(cond).expand(10, 2))
        near = target.posterior_mean(x, 1 - 1e-7, rf, cond)
        torch.testing.assert_close(near, target.mean(cond).expand(10, 2), rtol=0, atol=1e-5)
        torch.testing.assert_close(
            target.log_prob_t(x, 1 - 1e-7, rf, cond), target.log_prob_t(x, 1.0, rf, cond), rtol=0, atol=1e-5
        )


def test_data_end():
    """t = 0: log p is the uniform log-density (−∞ off the support) and the posterior mean is x itself."""
    target = BoxMixture([[1.0, 1.0], [-2.0, -2.0]], [[2.0, 3.0], [-1.0, -1.0]], [1, 1], [0, 1])
    rf = get_path("rf")
    x = torch.tensor([[1.5, 2.0], [-1.5, -1.2], [0.0, 0.0], [1.5, -1.5]], dtype=torch.float64)
    log_p = target.log_prob_t(x, 0.0, rf)
    expected = torch.tensor([math.log(0.5 / 2), math.log(0.5 / 1), -math.inf, -math.inf], dtype=torch.float64)
    torch.testing.assert_close(log_p, expected)
    assert target.log_prob_t(x, 0.0, rf, 1)[0] == -math.inf
    for cond in (None, 0, 1):
        torch.testing.assert_close(target.posterior_mean(x, 0.0, rf, cond), x, rtol=0, atol=0)


@pytest.mark.parametrize("path", ALL_PATHS, ids=lambda p: p.name)
def test_float32_no_nan_and_matches_float64(path):
    target = random_boxes(3, num_components=6, num_classes=3, seed=6)
    n = 64
    cond = mixed_cond(n, 3)
    for t in [0.0, *np.geomspace(1e-4, 1.0, 9)]:
        x = noisy_points(target, path, float(t), n, seed=2)
        x0_64, logp_64 = target.posterior_mean_and_log_prob(x, float(t), path, cond)
        x0_32, logp_32 = target.posterior_mean_and_log_prob(x.float(), float(t), path, cond)
        assert x0_32.dtype == torch.float32
        assert logp_32.dtype == torch.float32
        assert torch.isfinite(x0_32).all(), (path.name, t)
        finite = torch.isfinite(logp_64)
        assert (torch.isfinite(logp_32) == finite).all(), (path.name, t)
        err = (x0_32.double() - x0_64).norm(dim=-1) / x0_64.norm(dim=-1).clamp_min(1.0)
        assert err.max() <= 1e-4, (path.name, t, float(err.max()))
        rel = (logp_32.double() - logp_64)[finite].abs() / logp_64[finite].abs().clamp_min(1.0)
        assert rel.max() <= 1e-4, (path.name, t, float(rel.max()))


def test_chunked_equals_unchunked_and_per_sample_times():
    target = random_boxes(3, num_components=5, num_classes=2, seed=7)
    path = get_path("vp-cosine")
    n = 50
    x = noisy_points(target, path, 0.4, n)
    t = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    cond = mixed_cond(n, 2)
    full = target.posterior_mean_and_log_prob(x, t, path, cond)
    target.max_chunk_bytes = 16 * 5 * 3 * 8 * 3  # 3 particles per chunk
    chunked = target.posterior_mean_and_log_prob(x, t, path, cond)
    # Equal to rounding: each entry is evaluated by its own regime's formula on the gathered entries of that regime,
    # so its position among SIMD lanes (vector body or scalar tail of a special function) depends on the chunk.
    torch.testing.assert_close(chunked[0], full[0], rtol=1e-15, atol=1e-300)
    torch.testing.assert_close(chunked[1], full[1], rtol=1e-15, atol=1e-300)
    for i in (0, 7, n - 1):
        one = target.posterior_mean_and_log_prob(x[i : i + 1], float(t[i]), path, cond[i : i + 1])
        torch.testing.assert_close(one[0], full[0][i : i + 1])
        torch.testing.assert_close(one[1], full[1][i : i + 1])


# --- sampling and support --------------------------------------------------------------------------------


def test_sampling_inside_support_and_uniform():
    target = BoxMixture([[1.0, -1.0], [-2.0, 0.5]], [[2.0, 0.0], [-1.0, 3.0]], [0.3, 0.7], [0, 0])
    x = target.sample(20_000, 0, torch.Generator().manual_seed(0), dtype=torch.float64)
    assert target.support_contains(x, 0).all()
    first = (x[:, 0] > 0).numpy()
    assert abs(first.mean() - 0.3) < 5 * math.sqrt(0.3 * 0.7 / len(x))
    for k, rows in enumerate((first, ~first)):
        for d in range(2):
            lo, hi = float(target.low[k, d]), float(target.high[k, d])
            result = stats.kstest(x[rows, d].numpy(), "uniform", args=(lo, hi - lo))
            assert result.pvalue > 1e-3, (k, d, result)


def test_support_and_distance_against_brute_force():
    target = random_boxes(3, num_components=5, num_classes=2, seed=8)
    gen = torch.Generator().manual_seed(1)
    x = torch.cat([torch.randn(200, 3, generator=gen, dtype=torch.float64) * 3, target.sample(50, dtype=torch.float64)])
    low, high = target.low.numpy(), target.high.numpy()
    for cond in (None, 0, 1):
        members = range(5) if cond is None else [k for k in range(5) if target.component_class[k] == cond]
        dist = np.full(len(x), np.inf)
        inside = np.zeros(len(x), dtype=bool)
        for k in members:
            nearest = np.clip(x.numpy(), low[k], high[k])  # the closest point of box k
            dist = np.minimum(dist, np.linalg.norm(x.numpy() - nearest, axis=1))
            inside |= ((x.numpy() >= low[k]) & (x.numpy() <= high[k])).all(axis=1)
        np.testing.assert_allclose(target.distance_to_support(x, cond).numpy(), dist, rtol=1e-12, atol=0)
        np.testing.assert_array_equal(target.support_contains(x, cond).numpy(), inside)
    assert target.support_contains(x, None)[200:].all()


# --- validation ------------------------------------------------------------------------------------------


def test_validation_messages_name_the_field():
    with pytest.raises(ValueError, match=r"high\[1\]: must exceed low in every dimension \(dim 0: low 1.0, high 0.5\)"):
        BoxMixture([[0.0], [1.0]], [[1.0], [0.5]])
    with pytest.raises(ValueError, match=r"high: expected shape \(2, 1\)"):
        BoxMixture([[0.0], [1.0]], [[1.0]])
    with pytest.raises(ValueError, match=r"low: expected a 2-d array"):
        BoxMixture([0.0, 1.0], [[1.0], [2.0]])
    with pytest.raises(ValueError, match=r"weights\[0\]: must be >= 0"):
        BoxMixture([[0.0], [1.0]], [[1.0], [2.0]], [-1, 1])
    target = BoxMixture([[0.0], [1.0]], [[1.0], [2.0]], None, [0, 1], ["lo", "hi"])
    assert "BoxMixture(" in repr(target)
    assert "lo: 1" in repr(target)
    rebuilt = BoxMixture(
        [c["low"] for cls in target.config()["classes"] for c in cls["components"]],
        [c["high"] for cls in target.config()["classes"] for c in cls["components"]],
    )
    torch.testing.assert_close(rebuilt.low, target.low)
