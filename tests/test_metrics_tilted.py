"""The tilted target p(x | c)^γ p(x)^{1−γ}: identities at γ = 0, 1, quadrature references for its normalizer
and mean, agreement of its samplers, and the disjoint-support case."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from guidelab.metrics import CellGrid, TiltedTarget, grid_divergences, target_log_density
from guidelab.targets.gaussian_mixture import GaussianMixture
from test_metrics_targets import chidambaram_boxes_1d

PRIOR_PLUS = 0.3


def two_gaussians() -> GaussianMixture:
    """π₊ = 0.3: N(1, 1) (class +), π₋ = 0.7: N(−1, 0.5²) (class −)."""
    return GaussianMixture(
        means=[[1.0], [-1.0]],
        covariances=[[[1.0]], [[0.25]]],
        component_class=[0, 1],
        class_names=["+", "-"],
        class_prior=[PRIOR_PLUS, 0.7],
    )


def tilted_density_np(x: np.ndarray, gamma: float) -> np.ndarray:
    """Unnormalized p(x | +)^γ p(x)^{1−γ}, written directly with scipy."""
    p_plus = stats.norm.pdf(x, 1, 1)
    p = PRIOR_PLUS * p_plus + 0.7 * stats.norm.pdf(x, -1, 0.5)
    return p_plus**gamma * p ** (1 - gamma)


def test_gamma_one_is_the_conditional_and_zero_the_marginal():
    gm = two_gaussians()
    x = torch.linspace(-4, 4, 41, dtype=torch.float64)[:, None]
    t1 = TiltedTarget(gm, "+", 1.0).log_unnormalized(x)
    assert torch.allclose(t1, target_log_density(gm, "+")(x), atol=1e-12)
    t0 = TiltedTarget(gm, "+", 0.0).log_unnormalized(x)
    assert torch.allclose(t0, target_log_density(gm, None)(x), atol=1e-12)
    t3 = TiltedTarget(gm, "+", 3.0).log_unnormalized(x)
    assert torch.allclose(t3, torch.from_numpy(np.log(tilted_density_np(x.numpy()[:, 0], 3.0))), atol=1e-9)


@pytest.mark.parametrize("gamma", [0.5, 3.0])
def test_normalizer_and_mean_match_quadrature(gamma):
    gm = two_gaussians()
    tilted = TiltedTarget(gm, "+", gamma)
    z = integrate.quad(lambda v: tilted_density_np(np.array(v), gamma), -12, 14)[0]
    mean = integrate.quad(lambda v: v * tilted_density_np(np.array(v), gamma), -12, 14)[0] / z
    second = integrate.quad(lambda v: v * v * tilted_density_np(np.array(v), gamma), -12, 14)[0] / z
    sd = math.sqrt(second - mean**2)
    # grid normalizer: sum of unnormalized cell masses
    grid = CellGrid.from_bounds((-8.0, 9.0), 170)
    from guidelab.metrics import cell_masses

    assert float(cell_masses(tilted.log_unnormalized, grid).sum()) == pytest.approx(z, rel=1e-8)
    assert tilted.log_normalizer(20000, seed=0) == pytest.approx(math.log(z), abs=0.03)
    x = tilted.sample(4000, seed=1)  # exact rejection sampling
    assert abs(float(x.mean()) - mean) < 4 * sd / math.sqrt(4000)
    assert torch.equal(x, tilted.sample(4000, seed=1))
    res = grid_divergences(x, tilted.log_unnormalized, CellGrid.from_bounds((-4.0, 5.0), 30), normalize=True)
    assert res.tv < 2 * res.tv_floor
    on_grid = tilted.sample(4000, seed=2, method="grid", grid=grid)
    assert abs(float(on_grid.mean()) - mean) < 4 * sd / math.sqrt(4000)
    sir = tilted.sample(2000, seed=3, method="importance")
    assert abs(float(sir.mean()) - mean) < 0.1


def test_disjoint_supports_make_the_tilted_target_the_conditional():
    """For boxes p(c | x) = 1 on the class support, so p̃_γ = p(x | c) for every γ > 0."""
    boxes = chidambaram_boxes_1d(0.5, 1.5)
    tilted = TiltedTarget(boxes, "+", 7.0)
    x = torch.tensor([[0.7], [1.2], [-1.0], [3.0]], dtype=torch.float64)
    log_p = tilted.log_unnormalized(x)
    cond = target_log_density(boxes, "+")(x)
    shift = float(log_p[0] - cond[0])  # a constant: log π₊ − γ·log π₊ = 6·log 2
    assert shift == pytest.approx(6 * math.log(2))
    assert torch.allclose(log_p[:2] - shift, cond[:2])
    assert torch.isinf(log_p[2:]).all()
    samples = tilted.sample(500, seed=0)
    assert bool(((samples >= 0.5) & (samples <= 1.5)).all())
    assert tilted.log_normalizer(1000) == pytest.approx(6 * math.log(2), abs=1e-9)


def test_bad_arguments():
    gm = two_gaussians()
    with pytest.raises(ValueError, match="cond"):
        TiltedTarget(gm, None, 2.0)
    with pytest.raises(ValueError, match="grid"):
        TiltedTarget(gm, "+", 2.0).sample(10, method="grid")
    with pytest.raises(ValueError, match="rejection"):
        TiltedTarget(gm, "+", -1.0).sample(10, method="rejection")
    assert TiltedTarget(gm, "+", -1.0).sample(10).shape == (10, 1)  # importance for γ < 0
