"""KL/TV on grids against closed forms, exact cell masses, and the NLL under the true conditional."""

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from guidelab.metrics import (
    CellGrid,
    cell_masses,
    grid_divergences,
    histogram,
    negative_log_likelihood,
    target_log_density,
)
from guidelab.paths import get_path
from guidelab.targets.gaussian_mixture import GaussianMixture
from test_metrics_targets import chidambaram_boxes_1d


def normal_log_density(mean: float, std: float):
    def log_density(x):
        return torch.from_numpy(stats.norm.logpdf(x[:, 0].numpy(), mean, std))

    return log_density


def quantile_sample(n: int, mean: float, std: float) -> torch.Tensor:
    return torch.from_numpy(mean + std * stats.norm.ppf((np.arange(n) + 0.5) / n))[:, None]


def test_cell_masses_match_cdf_differences_1d_and_2d():
    grid = CellGrid.from_bounds((-3.0, 4.0), 35)
    masses = cell_masses(normal_log_density(0.5, 1.2), grid)
    edges = grid.edges(0).numpy()
    ref = np.diff(stats.norm.cdf(edges, 0.5, 1.2))
    assert np.allclose(masses.numpy(), ref, atol=1e-9)
    # 2D product of normals; row-major cells (first axis slowest)
    grid2 = CellGrid.from_bounds([(-2.0, 2.0), (-1.0, 3.0)], (8, 5))

    def log_density2(x):
        return torch.from_numpy(
            stats.norm.logpdf(x[:, 0].numpy(), 0.2, 0.8) + stats.norm.logpdf(x[:, 1].numpy(), 1.0, 1.5)
        )

    m2 = cell_masses(log_density2, grid2).reshape(8, 5).numpy()
    ref2 = np.outer(
        np.diff(stats.norm.cdf(grid2.edges(0).numpy(), 0.2, 0.8)),
        np.diff(stats.norm.cdf(grid2.edges(1).numpy(), 1.0, 1.5)),
    )
    assert np.allclose(m2, ref2, atol=1e-9)


def test_cell_index_and_histogram():
    grid = CellGrid.from_bounds([(0.0, 2.0), (0.0, 3.0)], (2, 3))
    x = torch.tensor([[0.5, 0.5], [1.5, 2.5], [2.0, 3.0], [0.0, 1.0], [-0.1, 1.0], [1.0, 3.1]])
    assert grid.cell_index(x).tolist() == [0, 5, 5, 1, -1, -1]
    counts, outside = histogram(x, grid)
    assert counts.tolist() == [1, 1, 0, 0, 0, 2]
    assert outside == 2
    assert torch.allclose(grid.centers()[5], torch.tensor([1.5, 2.5], dtype=torch.float64))


def test_kl_and_tv_between_gaussians_on_a_grid_match_closed_forms():
    """KL(N(μ1, s1²) ‖ N(μ2, s2²)) = log(s2/s1) + (s1² + (μ1 − μ2)²)/(2s2²) − ½; for equal variances
    TV = 2Φ(|μ1 − μ2|/(2s)) − 1. Stratified samples make the histogram the exact cell masses to O(1/n)."""
    mu1, s1, mu2, s2 = 0.0, 1.0, 0.5, 1.3
    grid = CellGrid.from_bounds((-7.0, 7.0), 280)
    x = quantile_sample(200_000, mu1, s1)
    res = grid_divergences(x, normal_log_density(mu2, s2), grid, floor_draws=0)
    kl = math.log(s2 / s1) + (s1**2 + (mu1 - mu2) ** 2) / (2 * s2**2) - 0.5
    assert res.kl == pytest.approx(kl, abs=2e-3)
    # reverse direction with samples of the wider law (they cover every cell the truth puts mass on)
    wide = grid_divergences(quantile_sample(200_000, mu2, s2), normal_log_density(mu1, s1), grid, floor_draws=0)
    assert wide.kl_reverse == pytest.approx(kl, abs=2e-3)
    equal = grid_divergences(x, normal_log_density(0.8, 1.0), grid, floor_draws=0)
    assert equal.tv == pytest.approx(2 * stats.norm.cdf(0.8 / 2) - 1, abs=2e-3)
    assert math.isnan(res.kl_floor)


def test_exact_samples_sit_at_the_floor_and_are_seeded():
    gm = GaussianMixture(
        means=[[0.0, 0.0], [2.5, 1.0]], covariances=[np.eye(2), np.diag([0.4, 0.8])], weights=[0.6, 0.4]
    )
    gen = torch.Generator().manual_seed(0)
    x = gm.sample(3000, 0, gen, dtype=torch.float64)
    grid = CellGrid.from_bounds([(-4.0, 6.0), (-4.0, 5.0)], 20)
    res = grid_divergences(x, target_log_density(gm, 0), grid, seed=3)
    assert res == grid_divergences(x, target_log_density(gm, 0), grid, seed=3)
    assert res.kl == pytest.approx(res.kl_floor, rel=0.25)
    assert res.tv == pytest.approx(res.tv_floor, rel=0.25)
    assert res.true_outside < 1e-3
    assert res.sample_outside < 5e-3
    shifted = grid_divergences(x + 0.5, target_log_density(gm, 0), grid, seed=3)
    assert shifted.kl > 3 * res.kl_floor
    assert shifted.tv > 2 * res.tv_floor
    json.dumps(res.to_dict(), allow_nan=True)


def test_box_density_masses_and_infinite_kl_outside_support():
    boxes = chidambaram_boxes_1d(0.5, 1.5)
    grid = CellGrid.from_bounds((-2.0, 2.0), 40)  # edges on ±0.5, ±1.5
    masses = cell_masses(target_log_density(boxes, "+"), grid)
    assert float(masses.sum()) == pytest.approx(1.0, abs=1e-12)
    assert torch.allclose(masses[25:35], torch.full((10,), 0.1, dtype=torch.float64))
    gen = torch.Generator().manual_seed(1)
    inside = boxes.sample(500, 0, gen)
    res = grid_divergences(inside, target_log_density(boxes, 0), grid)
    assert math.isfinite(res.kl)
    assert res.kl < 3 * res.kl_floor
    res_out = grid_divergences(
        torch.cat([inside, torch.tensor([[1.7]], dtype=torch.float64)]), target_log_density(boxes, 0), grid
    )
    assert res_out.kl == math.inf
    assert math.isfinite(res_out.tv)


def test_normalized_masses_of_an_unnormalized_density():
    grid = CellGrid.from_bounds((-6.0, 6.0), 60)
    base = normal_log_density(0.3, 1.0)
    masses = cell_masses(lambda x: base(x) + 5.0, grid, normalize=True)
    assert torch.allclose(masses, cell_masses(base, grid) / cell_masses(base, grid).sum(), rtol=1e-12)


def test_nll_of_exact_samples_is_the_entropy():
    """E[−log N(x; μ, Σ)] = ½ log det(2πeΣ)."""
    cov = np.array([[1.0, 0.3], [0.3, 0.5]])
    gm = GaussianMixture(means=[[1.0, -1.0]], covariances=[cov])
    x = gm.sample(4000, 0, torch.Generator().manual_seed(2), dtype=torch.float64)
    res = negative_log_likelihood(x, gm, 0)
    entropy = 0.5 * math.log(np.linalg.det(2 * math.pi * math.e * cov))
    assert res.nll == pytest.approx(entropy, abs=4 * math.sqrt(1 / 4000))  # sd of −log p is √(D/2) = 1
    assert res.out_of_support_fraction == 0.0


def test_nll_reports_out_of_support_separately():
    boxes = chidambaram_boxes_1d(0.5, 1.5)
    x = torch.tensor([[0.6], [1.0], [1.4], [1.7], [-1.0]], dtype=torch.float64)
    res = negative_log_likelihood(x, boxes, 0)
    assert res.out_of_support_fraction == pytest.approx(0.4)
    assert res.nll == pytest.approx(0.0, abs=1e-12)  # uniform on a unit interval: log p = 0
    small_t = negative_log_likelihood(x, boxes, 0, t=1e-6, path=get_path("rf"))  # finite density outside
    with pytest.raises(ValueError, match="path"):  # t > 0 depends on the path: never assumed
        negative_log_likelihood(x, boxes, 0, t=1e-6)
    assert small_t.out_of_support_fraction == pytest.approx(0.4)
    assert small_t.nll == pytest.approx(0.0, abs=1e-3)
    none_inside = negative_log_likelihood(torch.tensor([[3.0]]), boxes, 0)
    assert none_inside.nll is None
    assert none_inside.out_of_support_fraction == 1.0
