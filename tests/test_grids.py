"""Time grids: endpoints, monotonicity, and each kind's defining formula."""

import math

import pytest
import torch

from guidelab.grids import GRIDS, make_grid
from guidelab.paths import PATHS, get_path


@pytest.mark.parametrize("kind", GRIDS)
@pytest.mark.parametrize("path_name", list(PATHS))
@pytest.mark.parametrize("steps", [1, 2, 17])
def test_grid_shape_and_endpoints(kind, path_name, steps):
    path = get_path(path_name)
    grid = make_grid(kind, steps, path, t_min=0.01, t_max=0.9 if steps > 1 else 0.01)
    assert grid.shape == (steps + 1,)
    assert grid.dtype == torch.float64
    assert float(grid[-1]) == 0.0
    assert bool((grid[1:] < grid[:-1]).all())
    assert float(grid[-2]) == pytest.approx(0.01, rel=1e-9)
    if steps > 1:
        assert float(grid[0]) == pytest.approx(0.9, rel=1e-9)


def test_uniform_default_is_linspace():
    grid = make_grid("uniform", 10, get_path("rf"))
    torch.testing.assert_close(grid, torch.linspace(1, 0, 11, dtype=torch.float64))


def test_shifted_matches_sd3_formula():
    s = 3.0
    grid = make_grid("shifted", 8, get_path("rf"), shift=s)
    u = torch.linspace(1, 1 / 8, 8, dtype=torch.float64)
    torch.testing.assert_close(grid[:-1], s * u / (1 + (s - 1) * u))


def test_edm_grid_matches_karras_formula_on_ve():
    path = get_path("ve", sigma_max=80.0)
    n, rho, s_min, s_max = 18, 7.0, 0.002, 80.0
    grid = make_grid("edm", n, path, t_min=s_min / 80, t_max=1.0, rho=rho)
    i = torch.arange(n, dtype=torch.float64)
    sigmas = (s_max ** (1 / rho) + i / (n - 1) * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    torch.testing.assert_close(path.lam(grid[:-1]), sigmas, rtol=1e-10, atol=1e-12)


def test_geometric_is_uniform_in_log_lambda_and_caps_infinity():
    path = get_path("rf")
    grid = make_grid("geometric", 12, path, t_min=1e-3, lam_cap=50.0)
    assert float(grid[0]) == 1.0  # rf: λ(1) = ∞, so the grid starts at pure noise
    log_lam = torch.log(path.lam(grid[1:-1]))
    assert float(torch.exp(log_lam[0])) == pytest.approx(50.0, rel=1e-9)
    steps = log_lam[1:] - log_lam[:-1]
    torch.testing.assert_close(steps, torch.full_like(steps, float(steps.mean())), rtol=1e-8, atol=1e-10)
    # near the data the grid is geometric: much finer than uniform
    assert float(grid[-3]) < 0.1 * float(make_grid("uniform", 12, path, t_min=1e-3)[-3])


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"kind": "cosine", "steps": 5}, "grid"),
        ({"kind": "uniform", "steps": 0}, "steps"),
        ({"kind": "uniform", "steps": -3}, "steps"),
        ({"kind": "uniform", "steps": 5, "t_max": 1.5}, "t_max"),
        ({"kind": "uniform", "steps": 5, "t_min": 0.0}, "t_min"),
        ({"kind": "uniform", "steps": 5, "t_min": 0.5, "t_max": 0.4}, "t_min"),
        ({"kind": "edm", "steps": 5, "rho": -1.0}, "rho"),
    ],
)
def test_bad_input_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"^{field}:"):
        make_grid(path=get_path("rf"), **kwargs)


def test_geometric_on_ou_refines_near_data():
    path = get_path("ou")
    grid = make_grid("geometric", 50, path, t_min=1e-4, lam_cap=math.inf)
    lam = path.lam(grid[:-1])
    ratios = lam[1:] / lam[:-1]
    torch.testing.assert_close(ratios, torch.full_like(ratios, float(ratios.mean())), rtol=1e-8, atol=0)


def test_default_caps_keep_a_finite_ou_range_for_geometric_but_edm_uses_sigma_max():
    path = get_path("ou")
    geometric = make_grid("geometric", 20, path, t_min=1e-4)
    lam = path.lam(geometric[:-1])
    assert float(geometric[0]) == 1.0
    ratios = lam[1:] / lam[:-1]
    torch.testing.assert_close(ratios, torch.full_like(ratios, float(ratios.mean())), rtol=1e-8, atol=0)
    edm = make_grid("edm", 20, path, t_min=1e-4)
    assert float(path.lam(edm[1])) == pytest.approx(80.0, rel=1e-9)  # first finite point at σ_max
