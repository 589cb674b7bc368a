"""The metrics and diagnostics on the library's built-in exact targets (guidelab.targets.get_target): exact
samples score as the truth, and guided samples from the exact denoisers move the metrics the way the theory
says (small sizes; the reproductions themselves live elsewhere)."""

import json
import math

import pytest
import torch

from guidelab.diagnostics import conservation_terms, divergence_exact, divergence_hutchinson, guidance_field
from guidelab.grids import make_grid
from guidelab.guiders import CFG
from guidelab.metrics import (
    CellGrid,
    TiltedTarget,
    class_far_edge,
    class_fidelity,
    component_covariances,
    distance_to_support,
    edge_concentration,
    grid_divergences,
    in_support_fraction,
    mode_weights,
    negative_log_likelihood,
    prdc,
    target_log_density,
    w2_sliced,
    within_mode_variance,
)
from guidelab.paths import get_path
from guidelab.sampling import sample
from guidelab.targets import get_target


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def highdim():
    return get_target("gmm-highdim")


@pytest.mark.parametrize("name", ["chidambaram-uniform-1d", "chidambaram-uniform-2d"])
def test_exact_box_samples_score_as_the_truth(name):
    target = get_target(name)
    x = target.sample(1000, "pos", gen(0), dtype=torch.float64)
    assert in_support_fraction(x, target, "pos") == 1.0
    assert distance_to_support(x, target, "pos").max == 0.0
    nll = negative_log_likelihood(x, target, "pos")  # uniform on [1, 2]^D: log p = 0, exactly at t = 0
    assert nll.nll == pytest.approx(0.0, abs=1e-12)
    assert nll.out_of_support_fraction == 0.0
    assert class_fidelity(x, target, "pos").mean_posterior == 1.0
    assert class_far_edge(target, "pos") == [2.0] * target.dim
    assert class_far_edge(target, "neg") == [-2.0] * target.dim
    ec = edge_concentration(x, class_far_edge(target, "pos"), quantiles=(0.5,))
    assert all(q[0] == pytest.approx(0.5, abs=0.06) for q in ec.quantiles)  # d = 2 − x ~ U[0, 1]
    assert torch.allclose(component_covariances(target)[0], torch.eye(target.dim, dtype=torch.float64) / 12)
    bounds = [(-3.0, 3.0)] * target.dim
    res = grid_divergences(x, target_log_density(target, "pos"), CellGrid.from_bounds(bounds, 12))
    assert res.true_outside == pytest.approx(0.0, abs=1e-12)
    assert res.kl < 3 * res.kl_floor
    json.dumps(res.to_dict(), allow_nan=False)


def test_cfg_on_uniform_boxes_concentrates_at_the_far_edge():
    """Chidambaram et al. Th. 1 in miniature: the median distance to α2 = 2 shrinks as γ grows."""
    target = get_target("chidambaram-uniform-1d")
    path = get_path("ou")
    grid = make_grid("geometric", 50, path, t_min=1e-4, lam_cap=80.0)  # most steps near the data
    medians = []
    for gamma in (1.0, 4.0):
        out = sample(target.denoiser(path), CFG(gamma), grid=grid, n=200, shape=(1,), cond=0, dtype=torch.float64)
        medians.append(edge_concentration(out.x, class_far_edge(target, 0), quantiles=(0.5,)).quantiles[0][0])
        assert in_support_fraction(out.x, target, 0) > 0.9
    assert medians[0] == pytest.approx(0.5, abs=0.12)
    assert medians[1] < 0.5 * medians[0]


def test_multimodal_exact_samples_mode_statistics():
    target = get_target("multimodal-2d")
    x = target.sample(2000, "a", gen(1), dtype=torch.float64)
    weights = mode_weights(x, target, "a")
    assert weights.true_weights == pytest.approx([0.75, 0.25])
    assert weights.sample_weights[1] == pytest.approx(0.25, abs=4 * math.sqrt(0.25 * 0.75 / 2000) + 0.01)
    ratios = within_mode_variance(x, target, "a").ratio
    assert ratios[0] == pytest.approx(1.0, abs=0.12)
    assert ratios[1] == pytest.approx(1.0, abs=0.15)


def test_tilted_target_of_boxes_is_the_conditional():
    target = get_target("chidambaram-uniform-2d")
    x = TiltedTarget(target, "pos", 5.0).sample(300, seed=0)
    assert in_support_fraction(x, target, "pos") == 1.0


def test_highdim_guidance_field_hutchinson_within_error_of_exact_trace(highdim):
    """64-D Gaussian mixture: Hutchinson's estimate of ∇·g for CFG agrees with the exact trace (2·64 finite-
    difference evaluations) within 4 standard errors; the flux uses the exact score."""
    target = highdim
    path = get_path("rf")
    grid = make_grid("uniform", 10, path)
    x_t = 0.5 * target.sample(6, "c0", gen(2), dtype=torch.float64) + 0.5 * torch.randn(
        6, 64, generator=gen(3), dtype=torch.float64
    )
    field = guidance_field(target.denoiser(path), CFG(3.0), 0, grid, 5)
    exact = divergence_exact(field, x_t)
    est = divergence_hutchinson(field, x_t, num_probes=32, seed=4)
    assert bool(((est.mean - exact).abs() < 4 * est.se).all())
    score = target.score(x_t, torch.full((6,), float(grid[5]), dtype=torch.float64), path, 0)
    terms = conservation_terms(field, score, x_t)
    assert torch.allclose(terms.residual, exact + (field(x_t) * score).sum(dim=1), rtol=1e-9)


def test_highdim_knn_and_sliced_distances_separate_classes(highdim):
    target = highdim
    a = target.sample(300, "c0", gen(5), dtype=torch.float64)
    a2 = target.sample(300, "c0", gen(6), dtype=torch.float64)
    b = target.sample(300, "c1", gen(7), dtype=torch.float64)
    same, other = prdc(a, a2), prdc(a, b)
    assert same.precision > other.precision
    assert same.coverage > other.coverage
    assert w2_sliced(a, a2, num_projections=64) < w2_sliced(a, b, num_projections=64)
