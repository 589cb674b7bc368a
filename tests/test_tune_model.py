"""The scaled-conditional denoiser, the tuner's known-optimum model: ``ρ·x0̂_c + (1 − ρ)·x0̂_u`` for a class and
``x0̂_u`` for the null class, which CFG at γ = 1/ρ undoes exactly."""

from __future__ import annotations

import pytest
import torch

from guidelab.denoiser import NULL_COND
from guidelab.grids import make_grid
from guidelab.guiders import build_guider
from guidelab.paths import get_path
from guidelab.recipe import ModelSpec, SampleConfig, run_sample
from guidelab.sampling import sample
from guidelab.targets import ScaledConditionalDenoiser, get_target


@pytest.fixture(autouse=True)
def one_thread():
    """Small float64 batches: one torch thread is ~100x faster than two on a busy two-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("rho", [0.5, 0.8, 1.7])
@pytest.mark.parametrize("path_name", ["rf", "vp-cosine", "ve"])
def test_it_is_the_documented_combination_of_the_exact_denoisers(rho, path_name):
    target, path = get_target("multimodal-2d"), get_path(path_name)
    exact = target.denoiser(path)
    model = ScaledConditionalDenoiser(target, path, rho)
    g = torch.Generator().manual_seed(0)
    x = 2 * torch.randn(12, 2, generator=g, dtype=torch.float64)
    t = torch.rand(12, generator=g, dtype=torch.float64) * 0.9 + 0.05
    cond = torch.tensor([0, 1, NULL_COND] * 4)
    got = model(x, t, cond)
    c = exact(x, t, cond.clamp(min=0))
    u = exact(x, t, None)
    want = torch.where((cond != NULL_COND)[:, None], rho * c + (1 - rho) * u, u)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(model(x, t, None), u, rtol=0, atol=0)


@pytest.mark.parametrize("rho", [0.5, 0.8])
@pytest.mark.parametrize("solver", ["heun", "euler-maruyama"])
def test_cfg_at_one_over_rho_samples_the_exact_conditional(rho, solver):
    """The guided x0̂ is x0̂_u + (1/ρ)·ρ·(x0̂_c − x0̂_u) = x0̂_c at every step: the same trajectories as the exact
    conditional denoiser without guidance, to rounding."""
    target, path = get_target("multimodal-2d"), get_path("rf")
    grid = make_grid("uniform", 24, path, t_max=0.98)
    kw = dict(grid=grid, n=256, shape=(2,), cond=0, solver=solver, seed=3, dtype=torch.float64)
    tuned = sample(ScaledConditionalDenoiser(target, path, rho), build_guider("cfg", scale=1 / rho), **kw)
    exact = sample(target.denoiser(path), build_guider("cfg", scale=1.0), **kw)
    torch.testing.assert_close(tuned.x, exact.x, rtol=0, atol=1e-10)
    off = sample(ScaledConditionalDenoiser(target, path, rho), build_guider("cfg", scale=1.1 / rho), **kw)
    assert (off.x - exact.x).abs().max() > 1e-3  # another γ does not


def test_model_spec_builds_it_and_keeps_other_kinds_hashes():
    spec = ModelSpec(kind="scaled-conditional", rho=0.8)
    target, path = get_target("multimodal-2d"), get_path("rf")
    built = spec.build(target, path)
    assert isinstance(built, ScaledConditionalDenoiser) and built.rho == 0.8
    assert spec.model_dump()["rho"] == 0.8
    assert "rho" not in ModelSpec().model_dump()  # other kinds dump as before: their run hashes do not change
    out = run_sample(SampleConfig(target="multimodal-2d", cond="a", steps=8, n=16, model=spec))
    assert out.resolved["model"]["rho"] == 0.8


@pytest.mark.parametrize("bad", [0, -1, float("inf"), float("nan")])
def test_a_bad_rho_is_refused_naming_it(bad):
    with pytest.raises(ValueError, match="rho"):
        ModelSpec(kind="scaled-conditional", rho=bad)
    with pytest.raises(ValueError, match="rho"):
        ScaledConditionalDenoiser(get_target("multimodal-2d"), get_path("rf"), bad)


def test_rho_on_another_kind_is_refused():
    with pytest.raises(ValueError, match="rho: not a field"):
        ModelSpec(kind="exact", rho=0.5)
