"""Distances between sample sets against closed forms and brute-force references: W2 (1D quantiles, POT,
sliced, Bures), energy distance, MMD."""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import linalg, optimize, stats

from guidelab.metrics import (
    energy_distance,
    gaussian_w2,
    median_heuristic_bandwidth,
    mmd2,
    w2_1d,
    w2_exact,
    w2_sliced,
    wasserstein2,
)


def quantile_sample(n: int, mean: float, std: float) -> torch.Tensor:
    """n stratified points of N(mean, std²): the quantiles at (i − ½)/n (deterministic, W2 error O(log n / n))."""
    u = (np.arange(n) + 0.5) / n
    return torch.from_numpy(mean + std * stats.norm.ppf(u))[:, None]


def randn(gen, n, d, shift=0.0, scale=1.0):
    return shift + scale * torch.randn(n, d, generator=gen, dtype=torch.float64)


# --- W2 ------------------------------------------------------------------------------------------------


def test_w2_1d_gaussians_closed_form():
    """W2²(N(μ1, s1²), N(μ2, s2²)) = (μ1 − μ2)² + (s1 − s2)²."""
    x = quantile_sample(20000, 0.3, 1.0)
    y = quantile_sample(15000, -0.7, 2.0)
    expected = math.sqrt((0.3 + 0.7) ** 2 + (1.0 - 2.0) ** 2)
    assert w2_1d(x, y) == pytest.approx(expected, rel=2e-3)


def brute_w2_lp(x: np.ndarray, y: np.ndarray) -> float:
    """W2 by the transport linear program, solved with scipy's HiGHS (independent of POT)."""
    n, m = len(x), len(y)
    cost = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1).reshape(-1)
    a_eq = np.zeros((n + m, n * m))
    for i in range(n):
        a_eq[i, i * m : (i + 1) * m] = 1
    for j in range(m):
        a_eq[n + j, j::m] = 1
    b_eq = np.concatenate([np.full(n, 1 / n), np.full(m, 1 / m)])
    res = optimize.linprog(cost, A_eq=a_eq, b_eq=b_eq, bounds=(0, None), method="highs")
    assert res.success
    return math.sqrt(res.fun)


@pytest.mark.parametrize(("n", "m"), [(7, 7), (5, 3), (4, 9), (1, 6)])
def test_w2_1d_matches_transport_lp(n, m):
    gen = torch.Generator().manual_seed(n * 10 + m)
    x, y = randn(gen, n, 1), randn(gen, m, 1, shift=0.4, scale=1.5)
    assert w2_1d(x, y) == pytest.approx(brute_w2_lp(x.numpy(), y.numpy()), rel=1e-7)
    assert w2_1d(x[:, 0], y[:, 0]) == pytest.approx(w2_1d(x, y), rel=1e-12)  # (n,) accepted


def test_w2_exact_matches_assignment_on_equal_sizes():
    """With equal sizes the optimal plan is a permutation: W2² = min_σ (1/n) Σ ‖x_i − y_σ(i)‖²."""
    gen = torch.Generator().manual_seed(1)
    x, y = randn(gen, 40, 3), randn(gen, 40, 3, shift=0.5)
    cost = torch.cdist(x, y).square().numpy()
    rows, cols = optimize.linear_sum_assignment(cost)
    assert w2_exact(x, y) == pytest.approx(math.sqrt(cost[rows, cols].mean()), rel=1e-9)


def test_w2_exact_matches_lp_on_unequal_sizes():
    gen = torch.Generator().manual_seed(2)
    x, y = randn(gen, 6, 2), randn(gen, 4, 2, shift=1.0)
    assert w2_exact(x, y) == pytest.approx(brute_w2_lp(x.numpy(), y.numpy()), rel=1e-7)


def test_w2_exact_refuses_a_plan_short_of_optimality():
    """POT stopped by num_iter_max: an error naming the option, not a wrong distance (read from POT's own log, so
    that it holds on a sweep's worker threads too)."""
    gen = torch.Generator().manual_seed(3)
    x, y = randn(gen, 30, 2), randn(gen, 30, 2, shift=1.0)
    with pytest.warns(UserWarning, match="numItermax"), pytest.raises(RuntimeError, match="optimality.*num_iter_max"):
        w2_exact(x, y, num_iter_max=1)


def test_w2_exact_large_samples_approach_bures():
    """Empirical W2 between large samples of two Gaussians tends to the Bures closed form (margin for the
    O(n^{-1/2}) sampling error in 2D)."""
    gen = torch.Generator().manual_seed(3)
    s1 = torch.tensor([[1.0, 0.0], [0.0, 0.25]], dtype=torch.float64)
    s2 = torch.tensor([[0.5, 0.2], [0.2, 0.8]], dtype=torch.float64)
    m1, m2 = torch.zeros(2, dtype=torch.float64), torch.tensor([1.5, -0.5], dtype=torch.float64)
    x = m1 + randn(gen, 1500, 2) @ torch.linalg.cholesky(s1).T
    y = m2 + randn(gen, 1500, 2) @ torch.linalg.cholesky(s2).T
    truth = gaussian_w2(m1, s1, m2, s2)
    assert w2_exact(x, y) == pytest.approx(truth, abs=0.08)


def test_gaussian_w2_matches_scipy_sqrtm_and_commuting_form():
    s1 = np.array([[2.0, 0.3], [0.3, 0.5]])
    s2 = np.array([[1.0, -0.4], [-0.4, 1.5]])
    m1, m2 = np.array([0.0, 1.0]), np.array([2.0, -1.0])
    r2 = linalg.sqrtm(s2)
    ref = ((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * np.real(linalg.sqrtm(r2 @ s1 @ r2)))
    assert gaussian_w2(torch.tensor(m1), torch.tensor(s1), torch.tensor(m2), torch.tensor(s2)) == pytest.approx(
        math.sqrt(ref), rel=1e-9
    )
    a, b = np.array([1.0, 4.0]), np.array([9.0, 0.25])  # diagonal: W2² = |Δm|² + Σ(√a − √b)²
    expected = math.sqrt(8.0 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum())
    assert gaussian_w2(
        torch.tensor(m1), torch.diag(torch.tensor(a)), torch.tensor(m2), torch.diag(torch.tensor(b))
    ) == (pytest.approx(expected, rel=1e-12))
    assert gaussian_w2(0.5, 1.0, -0.5, 4.0) == pytest.approx(math.sqrt(1.0 + 1.0), rel=1e-12)  # 1D scalars


def test_w2_sliced_seeded_and_bounded_by_w2():
    gen = torch.Generator().manual_seed(4)
    x, y = randn(gen, 300, 3), randn(gen, 200, 3, shift=0.7, scale=1.3)
    sw = w2_sliced(x, y, num_projections=64, seed=5)
    assert sw == w2_sliced(x, y, num_projections=64, seed=5)
    assert sw != w2_sliced(x, y, num_projections=64, seed=6)
    assert 0 < sw <= w2_exact(x, y)
    # a pure shift δ: each projection is W2 = |θ·δ| exactly, so SW2² = E(θ·δ)² = |δ|²/D up to the Monte Carlo
    # error over θ (relative sd of SW2 ≈ 0.45/√L = 1% at L = 2000)
    delta = torch.tensor([2.0, 0.0, 0.0], dtype=torch.float64)
    z = randn(gen, 50, 3)
    assert w2_sliced(z, z + delta, num_projections=2000) == pytest.approx(2.0 / math.sqrt(3), rel=0.04)


def test_wasserstein2_dispatch():
    gen = torch.Generator().manual_seed(7)
    x1, y1 = randn(gen, 30, 1), randn(gen, 20, 1)
    assert wasserstein2(x1, y1) == w2_1d(x1, y1)
    x2, y2 = randn(gen, 30, 2), randn(gen, 20, 2)
    assert wasserstein2(x2, y2) == w2_exact(x2, y2)
    assert wasserstein2(x2, y2, max_exact_points=10, seed=3) == w2_sliced(x2, y2, seed=3)
    with pytest.raises(ValueError, match="method"):
        wasserstein2(x2, y2, method="emd")
    with pytest.raises(ValueError, match="dimensions differ"):
        wasserstein2(x1, y2)
    with pytest.raises(ValueError, match="non-finite"):
        wasserstein2(torch.tensor([[0.0, float("nan")]]), y2)


# --- energy distance and MMD -----------------------------------------------------------------------------


def brute_energy(x: np.ndarray, y: np.ndarray) -> float:
    n, m = len(x), len(y)
    d = lambda a, b: float(np.sqrt(((a - b) ** 2).sum()))  # noqa: E731
    xy = sum(d(a, b) for a in x for b in y) / (n * m)
    xx = sum(d(x[i], x[j]) for i, j in itertools.permutations(range(n), 2)) / (n * (n - 1))
    yy = sum(d(y[i], y[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    return 2 * xy - xx - yy


def test_energy_distance_matches_double_loop():
    gen = torch.Generator().manual_seed(8)
    x, y = randn(gen, 7, 3), randn(gen, 5, 3, shift=0.5)
    ref = brute_energy(x.numpy(), y.numpy())
    assert energy_distance(x, y) == pytest.approx(ref, rel=1e-10)


def test_energy_distance_gaussian_closed_form_1d():
    """For X ~ N(μ1, s1²), Y ~ N(μ2, s2²): E|X − Y| = s·√(2/π)·e^{−δ²/2s²} + δ(1 − 2Φ(−δ/s)), s² = s1² + s2²,
    E|X − X'| = 2s1/√π."""
    mu1, s1, mu2, s2 = 0.0, 1.0, 1.2, 0.6
    s, delta = math.hypot(s1, s2), mu2 - mu1
    e_xy = s * math.sqrt(2 / math.pi) * math.exp(-(delta**2) / (2 * s**2)) + delta * (
        1 - 2 * stats.norm.cdf(-delta / s)
    )
    expected = 2 * e_xy - 2 * s1 / math.sqrt(math.pi) - 2 * s2 / math.sqrt(math.pi)
    x, y = quantile_sample(3000, mu1, s1), quantile_sample(2500, mu2, s2)
    assert energy_distance(x, y) == pytest.approx(expected, rel=5e-3)


def test_energy_and_mmd_near_zero_for_one_distribution():
    gen = torch.Generator().manual_seed(9)
    x, y = randn(gen, 400, 2), randn(gen, 400, 2)
    shifted = randn(gen, 400, 2, shift=1.0)
    ed_same, ed_diff = energy_distance(x, y), energy_distance(x, shifted)
    assert abs(ed_same) < 0.03 < ed_diff
    assert abs(mmd2(x, y)) < 0.01 < mmd2(x, shifted)
    # identical sets: 2·(S/n²) − 2·S/(n(n − 1)) = −2·mean_{i≠j}‖x_i − x_j‖/n, S the sum of all pair distances
    mean_offdiag = float(torch.cdist(x, x).sum()) / (400 * 399)
    assert energy_distance(x, x) == pytest.approx(-2 * mean_offdiag / 400, rel=1e-9)


def brute_mmd2(x: np.ndarray, y: np.ndarray, h: float) -> float:
    k = lambda a, b: math.exp(-((a - b) ** 2).sum() / (2 * h * h))  # noqa: E731
    n, m = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(n), 2)) / (n * (n - 1))
    kyy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    kxy = sum(k(a, b) for a in x for b in y) / (n * m)
    return kxx + kyy - 2 * kxy


def test_mmd2_matches_double_loop_with_given_and_median_bandwidth():
    gen = torch.Generator().manual_seed(10)
    x, y = randn(gen, 8, 2), randn(gen, 6, 2, shift=0.8)
    assert mmd2(x, y, bandwidth=0.7) == pytest.approx(brute_mmd2(x.numpy(), y.numpy(), 0.7), rel=1e-10)
    assert mmd2(x, y, bandwidth=0.7, chunk=3) == pytest.approx(brute_mmd2(x.numpy(), y.numpy(), 0.7), rel=1e-10)
    z = np.concatenate([x.numpy(), y.numpy()])
    pair_d = [np.sqrt(((z[i] - z[j]) ** 2).sum()) for i, j in itertools.combinations(range(len(z)), 2)]
    h = float(np.median(pair_d))
    assert median_heuristic_bandwidth(x, y) == pytest.approx(h, rel=1e-12)
    assert mmd2(x, y) == pytest.approx(brute_mmd2(x.numpy(), y.numpy(), h), rel=1e-10)


def test_median_heuristic_is_seeded_on_large_sets():
    gen = torch.Generator().manual_seed(11)
    x = randn(gen, 3000, 2)
    assert median_heuristic_bandwidth(x, max_points=500, seed=1) == median_heuristic_bandwidth(
        x, max_points=500, seed=1
    )
    # median distance of N(0, I₂) pairs: ‖X − X'‖ ~ √2·Rayleigh, median √2·√(2 ln 2)
    assert median_heuristic_bandwidth(x, max_points=2000) == pytest.approx(2 * math.sqrt(math.log(2)), rel=0.05)
    assert median_heuristic_bandwidth(torch.zeros(5, 2)) == 1.0
