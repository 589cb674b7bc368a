"""Numerical edge cases that must not pass silently: ε-models at α = 0, the relative divergence bound, the data
range of thresholding."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from conftest import GaussianDenoiser
from guidelab.grids import make_grid
from guidelab.guiders import build_guider
from guidelab.paths import convert, get_path
from guidelab.sampling import SOLVERS, Monitor, sample
from guidelab.targets import get_target

ODE_SOLVERS = ("euler", "heun", "ddim", "dpm++2m")


class EpsGaussian:
    """The exact ε-prediction of N(mean, std²·I), through the x0 denoiser and the exact conversion."""

    prediction = "eps"

    def __init__(self, path, mean=0.7, std=0.5):
        self.inner = GaussianDenoiser(path, mean, std)
        self.path = path

    def __call__(self, x, t, cond):
        c = self.path.coefficients(t.double()).expand_as(x)
        return convert(self.inner(x, t, cond), "x0", "eps", x, c)


class TinyEpsNet(nn.Module):
    """A user's small convolutional ε-network, unconditional: the exact ε of N(0, I) data, σ·x/(α² + σ²), plus a
    random convolutional residual (an imperfect network)."""

    prediction = "eps"

    def __init__(self, path):
        super().__init__()
        torch.manual_seed(0)
        self.path = path
        self.net = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, 1, 3, padding=1))

    def forward(self, x, t, cond):
        tt = t.reshape(-1, 1, 1, 1).expand_as(x).to(x)
        c = self.path.coefficients(t.double()).expand_as(x)
        exact = (c.sigma * x / (c.alpha**2 + c.sigma**2)).to(x)
        return exact + 0.05 * self.net(torch.cat([x, tt], dim=1))


@pytest.mark.parametrize("path_name", ["rf", "vp-cosine"])
@pytest.mark.parametrize("solver", ODE_SOLVERS)
def test_eps_model_on_the_default_grid_samples_the_data_not_noise(path_name, solver):
    path = get_path(path_name)
    grid = make_grid("uniform", 64, path)  # starts at t = 1, α = 0
    out = sample(EpsGaussian(path), None, grid=grid, n=20_000, shape=(1,), solver=solver, dtype=torch.float64)
    assert out.num_diverged == 0
    assert float(out.x.mean()) == pytest.approx(0.7, abs=0.03)
    assert float(out.x.std()) == pytest.approx(0.5, rel=0.05)
    assert out.notes and "start moved" in out.notes[0]
    assert 0 < float(out.grid[0]) < 1 and float(out.grid[0]) > float(out.grid[1])
    lam0 = float(path.lam(out.grid[0]))
    assert lam0 >= 80 - 1e-9  # at least EDM's σ_max: the first step covers the whole noise range


@pytest.mark.parametrize("solver", ODE_SOLVERS)
def test_a_user_eps_network_returns_samples_with_every_grid(solver):
    path = get_path("rf")
    net = TinyEpsNet(path)
    for kind in ("uniform", "edm", "geometric", "shifted"):
        grid = make_grid(kind, 12, path)
        out = sample(net, None, grid=grid, n=4, shape=(1, 8, 8), solver=solver, seed=1)
        start = sample(net, None, grid=grid, n=4, shape=(1, 8, 8), solver=solver, seed=1, record_every=1).trajectory[0]
        assert torch.isfinite(out.x).all() and out.num_diverged == 0, kind
        assert float((out.x - start).abs().max()) > 1e-2, "samples must not be the starting noise"


def test_x0_and_velocity_models_keep_the_grid():
    path = get_path("rf")
    grid = make_grid("uniform", 8, path)
    out = sample(GaussianDenoiser(path), None, grid=grid, n=4, shape=(1,))
    assert out.notes == [] and torch.equal(out.grid, grid)


def test_single_step_grid_from_pure_noise_moves_to_lam_80():
    path = get_path("rf")
    out = sample(EpsGaussian(path), None, grid=make_grid("uniform", 1, path), n=8, shape=(1,))
    assert float(out.grid[0]) == pytest.approx(80 / 81)


class Runaway:
    """An x0-model that sends every sample to 1e4 (a target of scale 1)."""

    prediction = "x0"

    def __init__(self, path):
        self.path = path

    def __call__(self, x, t, cond):
        return torch.full_like(x, 1e4)


def test_runaway_samples_are_flagged_relative_to_the_data_scale():
    path = get_path("rf")
    grid = make_grid("uniform", 8, path)
    out = sample(Runaway(path), None, grid=grid, n=6, shape=(2,), data_scale=1.0)
    assert out.num_diverged == 6 and out.diverged_indices == list(range(6))
    # the same run on data of scale 1e3 is not a divergence
    out = sample(Runaway(path), None, grid=grid, n=6, shape=(2,), data_scale=1e3)
    assert out.num_diverged == 0
    # a fixed bound overrides the relative one
    assert sample(Runaway(path), None, grid=grid, n=6, shape=(2,), divergence_bound=1e6).num_diverged == 0


def test_beta_cfg_at_scale_100_flags_exactly_the_runaway_samples(monkeypatch):
    """β-CFG with g = 2 divides by ||Δ||², so where Δ is small it throws a sample far beyond the data (γ = 10: one
    of 400 ends at |x| ≈ 3e4 on data of scale 2.7): the default relative bound flags exactly the runaway samples,
    a fixed bound of 1e6 none. With the default g = 1 the guidance term is bounded and γ = 100 flags nothing.

    The runaway comes from float32 rounding noise in Δ where the conditional and unconditional means agree, so the
    denoiser is pinned to the torch path computed in float32 (the compiled loop of ``targets.mixture_jit`` computes
    in float64 and rounds once: there Δ is exactly 0 and this seed has no runaway)."""
    target, path = get_target("multimodal-2d"), get_path("rf")
    monkeypatch.setattr(target, "jit_max_work", 0)
    grid = make_grid("uniform", 32, path)
    kw = dict(grid=grid, n=400, shape=(2,), cond=0)
    den = target.denoiser(path)
    loose = sample(den, build_guider("beta-cfg", scale=10.0, norm_power=2.0), divergence_bound=1e6, **kw)
    runaway = (loose.x.abs() > 100 * target.data_scale).any(dim=1)
    assert loose.num_diverged == 0 and int(runaway.sum()) >= 1 and float(loose.x.abs().max()) > 1e3
    out = sample(den, build_guider("beta-cfg", scale=10.0, norm_power=2.0), **kw)
    assert out.diverged_indices == torch.nonzero(runaway).reshape(-1).tolist()
    kept = torch.ones(400, dtype=torch.bool)
    kept[out.diverged_indices] = False
    assert float(out.x[kept].abs().max()) <= 100 * target.data_scale
    # the default g = 1 bounds the guidance term (ω·Δ/||Δ||): nothing runs away, nothing is flagged
    bounded = sample(den, build_guider("beta-cfg", scale=100.0), **kw)
    assert bounded.num_diverged == 0 and float(bounded.x.abs().max()) < 100 * target.data_scale


def test_high_noise_states_are_not_false_positives():
    """At σ = 80 (ve) the state is ~80·ξ: the relative bound grows with σ_t, so nothing is flagged."""
    path = get_path("ve")
    grid = make_grid("edm", 16, path)
    out = sample(GaussianDenoiser(path), None, grid=grid, n=20_000, shape=(2,), dtype=torch.float64)
    assert out.num_diverged == 0


def test_monitor_bound_is_the_documented_formula():
    path = get_path("vp-cosine")
    m = Monitor(3, factor=50.0, data_scale=2.0)
    for t in (0.0, 0.3, 1.0):
        c = path.coefficients(torch.tensor(t, dtype=torch.float64))
        assert m.bound_at(path, t) == pytest.approx(50 * (2 * float(c.alpha) + float(c.sigma)))
    assert Monitor(3, bound=7.0).bound_at(path, 0.5) == 7.0
    with pytest.raises(ValueError, match="^divergence_factor:"):
        Monitor(3, factor=0.0)
    with pytest.raises(ValueError, match="^data_scale:"):
        Monitor(3, data_scale=math.inf)


@pytest.mark.parametrize("solver", list(SOLVERS))
def test_eta_is_refused_where_the_solver_has_none(solver):
    path = get_path("vp-linear")
    grid = make_grid("uniform", 4, path, t_max=0.99)
    kw = dict(grid=grid, n=2, shape=(1,), solver=solver, eta=0.5)
    if solver in ("ddim", "euler-ancestral", "dpm++2s-ancestral"):
        assert torch.isfinite(sample(GaussianDenoiser(path), None, **kw).x).all()
    else:
        with pytest.raises(ValueError, match="^eta:"):
            sample(GaussianDenoiser(path), None, **kw)


# --- thresholding's data range (issue §6.4) ---------------------------------------------------------------------


def test_a_box_targets_data_range_is_its_support():
    low, high = get_target("chidambaram-uniform-2d").data_range  # uniform on [−2, 2] per coordinate
    assert -2.0 <= low < -1.99 and 1.99 < high <= 2.0


def test_thresholding_clips_into_the_targets_range_by_default():
    target, path = get_target("chidambaram-uniform-2d"), get_path("rf")
    den = target.denoiser(path)
    kw = dict(grid=make_grid("uniform", 16, path), n=256, shape=(2,), cond=0, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the range is known: no warning
        default = sample(den, build_guider("dynamic-thresholding", scale=4.0, percentile=0.9), **kw)
        given = sample(
            den, build_guider("dynamic-thresholding", scale=4.0, percentile=0.9, data_range=target.data_range), **kw
        )
    torch.testing.assert_close(default.x, given.x, rtol=0, atol=0)
    low, high = target.data_range
    assert float(default.x.min()) >= low - 1e-6 and float(default.x.max()) <= high + 1e-6
    assert float(default.x.abs().max()) > 1.5  # not Imagen's (−1, 1)
    with pytest.warns(UserWarning, match=r"data_range: \(-1, 1\) does not cover"):
        narrow = sample(den, build_guider("dynamic-thresholding", scale=4.0, data_range=(-1, 1)), **kw)
    assert float(narrow.x.abs().max()) <= 1.0 + 1e-6


def test_thresholding_without_a_known_range_warns_and_uses_imagens():
    path = get_path("rf")
    kw = dict(grid=make_grid("uniform", 8, path), n=16, shape=(3,), cond=0)
    with pytest.warns(UserWarning, match="declares no data_range"):
        out = sample(EpsGaussian(path, mean=3.0), build_guider("dynamic-thresholding", scale=2.0), **kw)
    assert float(out.x.abs().max()) <= 1.0 + 1e-6  # the data (mean 3) clipped into (−1, 1), as asked
