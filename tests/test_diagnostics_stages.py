"""Stage probes (arXiv 2509.22007): amplified mean, distance to it, mode posterior mass and pairwise
contraction on hand-built trajectories and a guided run."""

import json

import numpy as np
import pytest
import torch

from guidelab.diagnostics import (
    amplified_mean,
    class_mean,
    distance_to_amplified_mean,
    distance_to_center,
    mode_posterior_mass,
    nearest_neighbour_pairs,
    pairwise_contraction,
)
from guidelab.grids import make_grid
from guidelab.guiders import CFG
from guidelab.paths import get_path
from guidelab.sampling import sample
from guidelab.targets.gaussian_mixture import GaussianMixture
from test_metrics_targets import chidambaram_boxes_1d


def mixture() -> GaussianMixture:
    """Class a: modes at (3, 0) (weight 0.8) and (−3, 0) (0.2); class b: one mode at (0, 4)."""
    return GaussianMixture(
        means=[[3.0, 0.0], [-3.0, 0.0], [0.0, 4.0]],
        covariances=[0.3 * np.eye(2)] * 3,
        weights=[0.8, 0.2, 1.0],
        component_class=[0, 0, 1],
        class_names=["a", "b"],
    )


def test_amplified_mean_closed_form():
    gm = mixture()
    m_a = torch.tensor([0.8 * 3 - 0.2 * 3, 0.0], dtype=torch.float64)  # (1.8, 0)
    m_u = 0.5 * m_a + 0.5 * torch.tensor([0.0, 4.0], dtype=torch.float64)
    assert torch.allclose(class_mean(gm, "a"), m_a)
    assert torch.allclose(amplified_mean(gm, "a", 4.0), m_u + 4.0 * (m_a - m_u))
    boxes = chidambaram_boxes_1d(0.5, 1.5)  # no closed-form mean: Monte Carlo, seeded
    assert float(class_mean(boxes, 0, num_samples=20000)) == pytest.approx(1.0, abs=0.01)
    assert torch.equal(class_mean(boxes, 0, num_samples=1000, seed=1), class_mean(boxes, 0, num_samples=1000, seed=1))


def test_distance_to_center_scales_the_center_with_alpha():
    path = get_path("rf")
    times = torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64)
    center = torch.tensor([2.0, 0.0], dtype=torch.float64)
    states = torch.stack([torch.zeros(3, 2), torch.full((3, 2), 1.0), center.repeat(3, 1)]).double()
    res = distance_to_center(states, times, center, path=path)
    # α = 1 − t: centers (0, 0), (1, 0), (2, 0)
    assert res.mean == pytest.approx([0.0, 1.0, 0.0])
    raw = distance_to_center(states, times, center)
    assert raw.mean == pytest.approx([2.0, 2**0.5, 0.0])
    json.dumps(res.to_dict(), allow_nan=False)


def test_mode_posterior_mass_at_noise_and_data():
    """At t = 1 on RF (α = 0) every component has the same density: the mass is the prior weights.
    At t = 0 points sitting on the modes give the assignment fractions."""
    gm = mixture()
    path = get_path("rf")
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(50, 2, generator=gen, dtype=torch.float64)
    data = torch.cat([gm.means[0].repeat(30, 1), gm.means[1].repeat(20, 1)])
    states = torch.stack([noise, data])
    res = mode_posterior_mass(states, [1.0, 0.0], gm, path, "a")
    assert res.components == [0, 1]
    assert res.mass[0] == pytest.approx([0.8, 0.2], abs=1e-12)
    assert res.mass[1] == pytest.approx([0.6, 0.4], abs=1e-9)
    assert res.undefined_fraction == [0.0, 0.0]
    uncond = mode_posterior_mass(states, [1.0, 0.0], gm, path, None)
    assert uncond.mass[0] == pytest.approx([0.4, 0.1, 0.5], abs=1e-12)


def test_strong_guidance_drains_the_weak_mode():
    """Mode Separation: with γ = 4 the weak mode of class a (weight 0.2) ends well below its share (CFG on exact
    scores, RF, 20 Euler steps)."""
    gm = mixture()
    path = get_path("rf")
    grid = make_grid("uniform", 20, path)
    masses = {}
    for gamma in (1.0, 4.0):
        out = sample(
            gm.denoiser(path), CFG(gamma), grid=grid, n=200, shape=(2,), cond=0, dtype=torch.float64, record_every=10
        )
        masses[gamma] = mode_posterior_mass(out.trajectory, out.times, gm, path, "a").mass[-1][1]
    assert masses[1.0] == pytest.approx(0.2, abs=0.08)
    assert masses[4.0] < 0.6 * masses[1.0]


def test_pairwise_contraction_of_a_scaled_trajectory():
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(40, 3, generator=gen, dtype=torch.float64)
    scales = torch.tensor([1.0, 0.8, 0.5, 0.25], dtype=torch.float64)
    states = scales[:, None, None] * x0[None]
    res = pairwise_contraction(states, [1.0, 0.6, 0.3, 0.0])
    assert res.geometric_mean == pytest.approx(scales.tolist(), rel=1e-12)
    assert res.ratio.mean == pytest.approx(scales.tolist(), rel=1e-12)
    assert res.reference_time == 1.0
    assert res.num_pairs >= 20
    pairs = torch.tensor([[0, 1], [2, 3]])
    assert pairwise_contraction(states, [1.0, 0.6, 0.3, 0.0], pairs=pairs).num_pairs == 2
    json.dumps(res.to_dict(), allow_nan=False)


def test_nearest_neighbour_pairs_brute_force():
    x = torch.tensor([[0.0], [1.0], [1.5], [5.0], [5.2]], dtype=torch.float64)
    assert nearest_neighbour_pairs(x).tolist() == [[0, 1], [1, 2], [3, 4]]
    gen = torch.Generator().manual_seed(2)
    y = torch.randn(30, 2, generator=gen, dtype=torch.float64)
    d = torch.cdist(y, y) + torch.diag(torch.full((30,), float("inf"), dtype=torch.float64))
    nn = d.argmin(dim=1)
    expected = {(min(i, int(j)), max(i, int(j))) for i, j in enumerate(nn)}
    assert {tuple(p) for p in nearest_neighbour_pairs(y, budget=64).tolist()} == expected


def test_distance_to_amplified_mean_on_a_guided_run_starts_at_the_noise_scale():
    gm = mixture()
    path = get_path("rf")
    grid = make_grid("uniform", 20, path)
    out = sample(gm.denoiser(path), CFG(3.0), grid=grid, n=100, shape=(2,), cond=0, dtype=torch.float64, record_every=5)
    res = distance_to_amplified_mean(out.x0_trajectory, out.times, gm, 0, 3.0)
    # at t = 1 (α = 0) the CFG clean estimate is exactly m_u + γ(m_c − m_u)
    assert res.mean[0] == pytest.approx(0.0, abs=1e-9)
