"""The conservation decomposition ∇·(p g)/p = ∇·g + g·∇log p (arXiv 2605.20079): divergences against traces
and closed forms, Hutchinson within its standard error, a divergence-free flux, and the guidance field of CFG
on ½N(1, 1) + ½N(−1, 1) against its closed-form divergence."""

import json
import math

import pytest
import torch

from conftest import TwoGaussians1D
from guidelab.diagnostics import (
    conservation_along_trajectory,
    conservation_terms,
    divergence_exact,
    divergence_hutchinson,
    guidance_field,
)
from guidelab.grids import make_grid
from guidelab.guiders import CFG
from guidelab.paths import get_path
from guidelab.sampling import sample
from guidelab.targets.gaussian_mixture import GaussianMixture


def points(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def nonlinear_field(x: torch.Tensor) -> torch.Tensor:
    """A coupled nonlinear field on R³ (dense Jacobian)."""
    w = torch.tensor([[0.5, -1.0, 0.3], [0.8, 0.2, -0.6], [-0.4, 0.9, 0.7]], dtype=x.dtype)
    return torch.tanh(x @ w.T) + x.roll(1, dims=1) * x**2


@pytest.mark.parametrize("method", ["autograd", "fd"])
def test_divergence_of_a_linear_field_is_the_trace(method):
    a = torch.tensor([[1.0, 2.0, -1.0], [0.5, -3.0, 0.0], [4.0, 1.0, 0.25]], dtype=torch.float64)
    x = points(10, 3)
    div = divergence_exact(lambda z: z @ a.T, x, method=method)
    assert torch.allclose(div, torch.full((10,), float(torch.trace(a)), dtype=torch.float64), atol=1e-8)
    est = divergence_hutchinson(lambda z: z @ a.T, x, num_probes=400, method=method, seed=1)
    assert bool(((est.mean - torch.trace(a)).abs() < 4 * est.se + 1e-8).all())


def test_exact_divergence_matches_jacobian_trace_and_fd():
    x = points(6, 3, seed=2)
    ref = torch.stack([torch.trace(torch.autograd.functional.jacobian(nonlinear_field, xi[None])[0, :, 0]) for xi in x])
    assert torch.allclose(divergence_exact(nonlinear_field, x, method="autograd"), ref, atol=1e-12)
    assert torch.allclose(divergence_exact(nonlinear_field, x, method="fd"), ref, atol=1e-7)


@pytest.mark.parametrize("method", ["autograd", "fd"])
def test_hutchinson_agrees_with_the_exact_trace_within_its_standard_error(method):
    x = points(20, 3, seed=3)
    exact = divergence_exact(nonlinear_field, x, method="autograd")
    est = divergence_hutchinson(nonlinear_field, x, num_probes=64, seed=4, method=method)
    assert bool((est.se > 0).all())
    assert bool(((est.mean - exact).abs() < 4 * est.se).all())
    again = divergence_hutchinson(nonlinear_field, x, num_probes=64, seed=4, method=method)
    assert torch.equal(est.mean, again.mean)  # same seed, same numbers


def gaussian_log_p(x: torch.Tensor) -> torch.Tensor:
    """log N(x; 0, I) in 2D."""
    return -0.5 * (x**2).sum(dim=1) - math.log(2 * math.pi)


def stream_function(x: torch.Tensor) -> torch.Tensor:
    return torch.sin(x[:, 0]) * torch.cos(0.5 * x[:, 1]) + 0.3 * x[:, 0] * x[:, 1] ** 2


def rotated_gradient(fn, x: torch.Tensor) -> torch.Tensor:
    """R∇ψ = (−∂₂ψ, ∂₁ψ): divergence free."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(fn(xg).sum(), xg, create_graph=True)
    return torch.stack([-grad[:, 1], grad[:, 0]], dim=1)


def conserving_field(x: torch.Tensor) -> torch.Tensor:
    """g = R∇ψ / p: then p·g is divergence free, so ∇·g + g·∇log p = 0 although neither term is."""
    return rotated_gradient(stream_function, x) * torch.exp(-gaussian_log_p(x))[:, None]


@pytest.mark.parametrize("method", ["autograd", "fd"])
def test_residual_vanishes_for_a_divergence_free_flux(method):
    x = 0.8 * points(12, 2, seed=5)
    terms = conservation_terms(conserving_field, -x, x, method=method)  # ∇log N(0, I) = −x
    scale = terms.flux.abs().max()
    assert float(terms.divergence.abs().min()) > 1e-3
    assert float(scale) > 1e-2
    assert torch.allclose(terms.residual, torch.zeros(12, dtype=torch.float64), atol=1e-6 * float(scale))
    assert terms.divergence_se is None


def test_residual_is_div_of_p_g_over_p():
    """∇·(p g) computed by autograd on the product equals p·(∇·g + g·∇log p) for an arbitrary g and p."""
    x = points(9, 3, seed=6)

    def log_p(z):  # a two-component mixture, by hand
        a = -0.5 * ((z - 1.0) ** 2).sum(dim=1)
        b = -0.5 * ((z + 0.5) ** 2 / 0.5).sum(dim=1)
        return torch.logsumexp(torch.stack([a + math.log(0.3), b + math.log(0.7 / 0.5**1.5)]), dim=0)

    def score(z):
        with torch.enable_grad():
            zg = z.detach().requires_grad_(True)
            return torch.autograd.grad(log_p(zg).sum(), zg)[0]

    terms = conservation_terms(nonlinear_field, score, x, method="autograd")
    div_pg = divergence_exact(lambda z: torch.exp(log_p(z))[:, None] * nonlinear_field(z), x, method="autograd")
    assert torch.allclose(div_pg, torch.exp(log_p(x)) * terms.residual, rtol=1e-10, atol=1e-14)
    hutch = conservation_terms(nonlinear_field, score, x, divergence="hutchinson", num_probes=64, method="autograd")
    assert torch.equal(hutch.flux, terms.flux)
    assert bool(((hutch.residual - terms.residual).abs() < 4 * hutch.divergence_se).all())


def test_cfg_guidance_field_divergence_closed_form():
    """RF path, target ½N(1, 1) + ½N(−1, 1): v = (x − x0̂)/t, so the field against the conditional flow is
    g = −(γ − 1)(x0̂_c − x0̂_u)/t and ∇·g = (γ − 1)/t·p₊(1 − p₊)·(2a/v)·(2 − 2a²/v), a = 1 − t, v = a² + t²,
    p₊ = sigmoid(2ax/v)."""
    path = get_path("rf")
    grid = make_grid("uniform", 20, path)
    gamma, index = 3.0, 10
    t = float(grid[index])
    field = guidance_field(TwoGaussians1D(path), CFG(gamma), 0, grid, index)
    x = torch.linspace(-2, 2, 9, dtype=torch.float64)[:, None]
    a, v = 1 - t, (1 - t) ** 2 + t**2
    p_plus = torch.sigmoid(2 * a * x[:, 0] / v)
    closed = (gamma - 1) / t * p_plus * (1 - p_plus) * (2 * a / v) * (2 - 2 * a**2 / v)
    assert torch.allclose(divergence_exact(field, x, method="autograd"), closed, rtol=1e-10)
    assert torch.allclose(divergence_exact(field, x, method="fd"), closed, rtol=1e-6, atol=1e-9)
    g_closed = -(gamma - 1) * (2 - 2 * a**2 / v) * (1 - p_plus) / t  # x0̂_c − x0̂_u = (1 − p₊)(plus − minus)
    assert torch.allclose(field(x)[:, 0], g_closed, rtol=1e-10)
    assert torch.allclose(guidance_field(TwoGaussians1D(path), CFG(1.0), 0, grid, index)(x), torch.zeros_like(x))


def test_conservation_along_a_guided_trajectory():
    path = get_path("rf")
    grid = make_grid("uniform", 12, path)
    target = GaussianMixture(means=[[1.0], [-1.0]], covariances=[[[1.0]], [[1.0]]], component_class=[0, 1])
    den = target.denoiser(path)
    out = sample(den, CFG(3.0), grid=grid, n=40, shape=(1,), cond=0, dtype=torch.float64, record_every=3)
    res = conservation_along_trajectory(den, CFG(3.0), target, out.times, out.trajectory, 0, grid)
    assert res.times == pytest.approx([1.0, 0.75, 0.5, 0.25])  # the final t = 0 (σ = 0) is skipped
    # the flux uses the exact conditional score: check one time against the closed form −(x − a)/(a² + σ²)
    r = 2
    x, t = out.trajectory[r], float(out.times[r])
    g = guidance_field(den, CFG(3.0), 0, grid, 6)(x)[:, 0]
    flux = g * (-(x[:, 0] - (1 - t)) / ((1 - t) ** 2 + t**2))
    assert res.flux.mean[r] == pytest.approx(float(flux.mean()), rel=1e-9)
    assert max(abs(m) for m in res.abs_residual.mean) > 0.1  # CFG does not conserve p_t(x | c)
    neutral = conservation_along_trajectory(den, CFG(1.0), target, out.times, out.trajectory, 0, grid)
    assert max(abs(m) for m in neutral.abs_residual.mean) < 1e-6
    hutch = conservation_along_trajectory(
        den, CFG(3.0), target, out.times, out.trajectory, 0, grid, divergence="hutchinson", reference="uncond"
    )
    assert hutch.divergence_se_mean == [0.0] * 4  # 1D: v² = 1, Hutchinson is exact
    json.dumps(hutch.to_dict(), allow_nan=False)
    with pytest.raises(ValueError, match="grid"):
        conservation_along_trajectory(den, CFG(3.0), target, out.times + 0.01, out.trajectory, 0, grid)


@pytest.mark.parametrize("estimator", ["exact", "hutchinson"])
def test_autograd_refuses_a_field_without_a_graph_instead_of_reading_zero(estimator):
    """A field evaluated under no_grad (or detached) has no graph to x; autograd would read its divergence as 0.
    It is refused naming the method, and the finite differences give the true value."""
    x = torch.randn(5, 3, dtype=torch.float64)

    def field(z):
        with torch.no_grad():
            return 2.0 * z  # ∇·g = 6

    run = divergence_exact if estimator == "exact" else divergence_hutchinson
    with pytest.raises(ValueError, match="^method: the field's output has no autograd graph"):
        run(field, x, method="autograd")
    fd = run(field, x, method="fd")
    assert torch.allclose(fd if estimator == "exact" else fd.mean, torch.full((5,), 6.0, dtype=torch.float64))
