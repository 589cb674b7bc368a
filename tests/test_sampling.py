"""Samplers and the guided loop against closed forms: exact flow maps, solver orders, NFE accounting,
divergence freezing, and the guided OU drift of Chidambaram et al. (arXiv 2409.13074)."""

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from conftest import GaussianDenoiser, TwoGaussians1D
from guidelab.grids import make_grid
from guidelab.guiders import CFG
from guidelab.paths import get_path
from guidelab.sampling import SOLVERS, sample

MEAN, STD = 0.7, 0.5


def exact_state(path, x_start: torch.Tensor, t_start: float, t_end: float) -> torch.Tensor:
    """PF-ODE of N(μ, s²) transports quantiles: x_t = α_t μ + √(α_t² s² + σ_t²)·z with z fixed."""

    def coef(t):
        c = path.coefficients(torch.tensor(t, dtype=torch.float64))
        return c.alpha, torch.sqrt(c.alpha**2 * STD**2 + c.sigma**2)

    a0, s0 = coef(t_start)
    a1, s1 = coef(t_end)
    return a1 * MEAN + s1 * (x_start - a0 * MEAN) / s0


def ode_error(path, solver, steps, kind="edm", t_max=1.0, t_min=0.01):
    """Max error of the state at t_min (before the final denoising jump) against the exact flow."""
    den = GaussianDenoiser(path, MEAN, STD)
    grid = make_grid(kind, steps, path, t_max=t_max, t_min=t_min)
    x_start = torch.linspace(-2.5, 2.5, 11, dtype=torch.float64)[:, None]
    out = sample(den, None, grid=grid, x_init=x_start, solver=solver, dtype=torch.float64, record_every=1)
    return float((out.trajectory[-2] - exact_state(path, x_start, float(grid[0]), t_min)).abs().max())


@pytest.mark.parametrize(("solver", "order"), [("euler", 1), ("ddim", 1), ("heun", 2), ("dpm++2m", 2)])
@pytest.mark.parametrize("path_name", ["vp-cosine", "rf", "ve"])
def test_solver_order_on_closed_form_flow(solver, order, path_name):
    path = get_path(path_name)
    steps = [20, 40, 80]
    errors = [ode_error(path, solver, n, t_max=0.98 if path_name != "ve" else 1.0) for n in steps]
    slopes = np.diff(np.log(errors)) / np.diff(np.log(steps))
    assert errors[-1] < errors[0]
    assert -slopes[-1] == pytest.approx(order, abs=0.3), f"errors {errors}, slopes {slopes}"


def test_rf_euler_equals_ddim():
    path = get_path("rf")
    assert ode_error(path, "ddim", 50, kind="uniform") == pytest.approx(
        ode_error(path, "euler", 50, kind="uniform"), rel=1e-9, abs=1e-12
    )


@pytest.mark.parametrize(
    ("solver", "path_name", "t_max"),
    [
        ("ddim", "vp-cosine", 1.0),
        ("ddim", "rf", 1.0),
        ("euler-maruyama", "ou", 1.0),
        ("euler-maruyama", "vp-linear", 1.0),
        ("euler", "ve", 1.0),
        ("heun", "rf", 1.0),
        ("euler-ancestral", "vp-cosine", 1.0),
        ("euler-ancestral", "ve", 1.0),
        ("dpm++2s-ancestral", "rf", 1.0),
        ("dpm++2s-ancestral", "vp-linear", 1.0),
        ("dpm++2m", "ou", 1.0),
    ],
)
def test_unguided_sampling_reproduces_the_gaussian(solver, path_name, t_max):
    path = get_path(path_name)
    den = GaussianDenoiser(path, MEAN, STD)
    kind = "uniform" if path_name in ("rf", "vp-cosine") else "geometric"
    grid = make_grid(kind, 200, path, t_max=t_max, t_min=1e-4)
    out = sample(
        den,
        None,
        grid=grid,
        n=40_000,
        shape=(1,),
        solver=solver,
        seed=3,
        eta=1.0 if solver == "ddim" else None,
        dtype=torch.float64,
    )
    se_mean = STD / math.sqrt(40_000)
    assert float(out.x.mean()) == pytest.approx(MEAN, abs=5 * se_mean + 0.01 * STD)
    assert float(out.x.std()) == pytest.approx(STD, rel=0.03)
    assert out.num_diverged == 0


def test_same_seed_same_numbers_and_different_seed_differs():
    path = get_path("vp-cosine")
    den = GaussianDenoiser(path)
    grid = make_grid("uniform", 20, path)
    a = sample(den, CFG(2.0), grid=grid, n=64, shape=(3,), solver="ddim", seed=5, eta=0.5)
    b = sample(den, CFG(2.0), grid=grid, n=64, shape=(3,), solver="ddim", seed=5, eta=0.5)
    c = sample(den, CFG(2.0), grid=grid, n=64, shape=(3,), solver="ddim", seed=6, eta=0.5)
    assert torch.equal(a.x, b.x)
    assert not torch.equal(a.x, c.x)


@pytest.mark.parametrize("solver", list(SOLVERS))
def test_nfe_one_pass_when_conditional_only_two_when_guided(solver):
    path = get_path("vp-linear")
    grid = make_grid("uniform", 10, path, t_max=0.99)
    # Heun and DPM++(2S): two evaluations per step, one on the final step (onto t = 0)
    evaluations = {"heun": 2 * 10 - 1, "dpm++2s-ancestral": 2 * 10 - 1}.get(solver, 10)
    for gamma, passes in ((1.0, 1), (3.0, 2)):
        den = GaussianDenoiser(path)
        out = sample(den, CFG(gamma), grid=grid, n=8, shape=(2,), solver=solver, cond=0)
        assert out.nfe == passes * evaluations
        assert out.calls == evaluations == den.calls, "cond and uncond must run as one batched call"
        assert set(den.batch_sizes) == {passes * 8}


class NaNForSomeSamples(GaussianDenoiser):
    """Returns NaN at the first step (t = 1) for samples whose x_t is above 1.0 (an unstable model)."""

    def __call__(self, x_t, t, cond):
        out = super().__call__(x_t, t, cond)
        return torch.where((x_t > 1.0) & (t[:, None] == 1.0), torch.nan, out)


def test_diverging_samples_are_flagged_frozen_and_never_nan():
    path = get_path("rf")
    grid = make_grid("uniform", 30, path)
    x_init = torch.linspace(-3, 3, 50)[:, None]
    out = sample(NaNForSomeSamples(path), CFG(1.0), grid=grid, x_init=x_init, solver="euler")
    assert torch.isfinite(out.x).all()
    expected = x_init[:, 0] > 1.0
    assert torch.equal(out.diverged, expected)
    assert out.num_diverged == int(expected.sum())
    torch.testing.assert_close(out.x[expected], x_init[expected])  # frozen at their last good state


def test_bound_flags_escaping_samples():
    path = get_path("rf")
    grid = make_grid("uniform", 20, path)
    out = sample(
        GaussianDenoiser(path, mean=0.0, std=5.0), None, grid=grid, n=2000, shape=(1,), divergence_bound=8.0, seed=0
    )
    assert 0 < out.num_diverged < 2000
    assert float(out.x.abs().max()) <= 8.0


def test_trajectory_recording_subsamples_and_ends_at_result():
    path = get_path("rf")
    grid = make_grid("uniform", 10, path)
    out = sample(GaussianDenoiser(path), None, grid=grid, n=5, shape=(2,), record_every=3)
    torch.testing.assert_close(out.times, torch.tensor([1.0, 0.7, 0.4, 0.1, 0.0], dtype=torch.float64))
    assert out.trajectory.shape == (5, 5, 2)
    torch.testing.assert_close(out.trajectory[-1], out.x)
    torch.testing.assert_close(out.x0_trajectory[-1], out.x)


@pytest.mark.parametrize("w", [0.0, 2.0, 6.0])
@pytest.mark.parametrize("solver", ["heun", "dpm++2m"])
def test_chidambaram_guided_ou_drift_matches_closed_form(w, solver):
    """Guided OU PF-ODE of ½N(1,1) + ½N(−1,1), class +: reverse-time drift dx/d(−τ) = m[(w+1) − w·tanh(m x)],
    m = e^{−τ} (arXiv 2409.13074 §3, with w = γ − 1). Integrate it accurately with scipy and compare."""
    T, tau_min = 10.0, 1e-3
    path = get_path("ou", horizon=T)
    grid = make_grid("geometric", 400, path, t_min=tau_min / T, lam_cap=math.inf)
    x_start = torch.linspace(-3, 3, 9, dtype=torch.float64)[:, None]
    out = sample(
        TwoGaussians1D(path),
        CFG(1.0 + w),
        grid=grid,
        x_init=x_start,
        cond=0,
        solver=solver,
        dtype=torch.float64,
        record_every=399,
    )
    # the state at t_min (before the final denoising step) is the ODE solution at τ_min
    x_at_tmin = out.trajectory[-2, :, 0].numpy()

    def reverse_drift(tau, x):
        m = np.exp(-tau)
        return -m * ((w + 1) - w * np.tanh(m * x))  # dx/dτ in forward τ; integrate from T down to τ_min

    ref = solve_ivp(reverse_drift, (T, tau_min), x_start[:, 0].numpy(), rtol=1e-11, atol=1e-12, method="DOP853")
    np.testing.assert_allclose(x_at_tmin, ref.y[:, -1], rtol=0, atol=2e-3)


def test_bad_input():
    path = get_path("rf")
    den = GaussianDenoiser(path)
    grid = make_grid("uniform", 5, path)
    with pytest.raises(ValueError, match="^solver:"):
        sample(den, None, grid=grid, n=2, shape=(1,), solver="rk45")
    with pytest.raises(ValueError, match="^n:"):
        sample(den, None, grid=grid, n=-1, shape=(1,))
    with pytest.raises(ValueError, match="^grid:"):
        sample(den, None, grid=torch.tensor([0.5, 0.7, 0.0]), n=2, shape=(1,))
    with pytest.raises(ValueError, match="^t_max:"):
        sample(den, None, grid=grid, n=2, shape=(1,), solver="euler-maruyama")
    with pytest.raises(ValueError, match="^eta:"):
        sample(den, None, grid=grid, n=2, shape=(1,), solver="ddim", eta=1.5)
