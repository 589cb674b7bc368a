"""Paths: coefficient identities, derivatives against autograd, λ inverse, exact space conversions."""

import itertools

import pytest
import torch

from guidelab.paths import (
    PATHS,
    SPACES,
    combine,
    convert,
    get_path,
    pair_coefficients,
    path_scalars,
    to_x0_eps,
    velocity_from_x0_eps,
)

ALL_PATHS = [get_path(name) for name in PATHS]
T_INTERIOR = torch.tensor([1e-4, 1e-2, 0.1, 0.37, 0.5, 0.8, 0.99], dtype=torch.float64)


@pytest.mark.parametrize("path", ALL_PATHS, ids=lambda p: p.name)
def test_derivatives_match_autograd(path):
    t = T_INTERIOR.clone().requires_grad_(True)
    c = path.coefficients(t)
    (d_alpha,) = torch.autograd.grad((c.alpha + 0 * t).sum(), t, retain_graph=True)
    (d_sigma,) = torch.autograd.grad((c.sigma + 0 * t).sum(), t)
    torch.testing.assert_close(c.d_alpha, d_alpha, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(c.d_sigma, d_sigma, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("path", ALL_PATHS, ids=lambda p: p.name)
def test_data_at_zero_and_lambda_inverse(path):
    c0 = path.coefficients(torch.tensor(0.0, dtype=torch.float64))
    assert float(c0.alpha) == 1.0
    assert float(c0.sigma) == 0.0
    lam = path.lam(T_INTERIOR)
    assert bool((lam[1:] > lam[:-1]).all()), "λ must increase with t"
    torch.testing.assert_close(path.t_of_lam(lam), T_INTERIOR, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["vp-cosine", "vp-linear", "ou"])
def test_variance_preserving(name):
    c = get_path(name).coefficients(T_INTERIOR)
    torch.testing.assert_close(c.alpha**2 + c.sigma**2, torch.ones_like(T_INTERIOR))


def test_closed_forms():
    t = T_INTERIOR
    rf = get_path("rf").coefficients(t)
    torch.testing.assert_close(rf.alpha, 1 - t)
    torch.testing.assert_close(rf.sigma, t)
    assert torch.isinf(get_path("rf").lam(torch.tensor(1.0))).item()
    # RF: t(λ) = λ/(1 + λ) (docs/methods.md §0)
    torch.testing.assert_close(
        get_path("rf").t_of_lam(torch.tensor(3.0, dtype=torch.float64)).double(),
        torch.tensor(0.75, dtype=torch.float64),
    )
    ou = get_path("ou", horizon=10.0)
    tau = 10.0 * t
    c = ou.coefficients(t)
    torch.testing.assert_close(c.alpha, torch.exp(-tau))
    torch.testing.assert_close(c.sigma, torch.sqrt(1 - torch.exp(-2 * tau)))
    # OU forward SDE dx = −x dτ + √2 dW: g² = 2 per unit τ, 2T per unit t.
    torch.testing.assert_close(ou.diffusion_sq(t), torch.full_like(t, 20.0))
    ve = get_path("ve", sigma_max=80.0)
    torch.testing.assert_close(ve.lam(t), 80.0 * t)


@pytest.mark.parametrize(
    ("path", "src", "dst"),
    [(p, a, b) for p, (a, b) in itertools.product(ALL_PATHS, itertools.permutations(SPACES, 2))],
    ids=lambda v: getattr(v, "name", v),
)
def test_conversion_round_trip_float64(path, src, dst):
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(7, 3, generator=gen, dtype=torch.float64)
    eps = torch.randn(7, 3, generator=gen, dtype=torch.float64)
    t = T_INTERIOR.reshape(7)
    c = path.coefficients(t).expand_as(x0)
    x_t = c.alpha * x0 + c.sigma * eps
    truth = {"x0": x0, "eps": eps, "score": -eps / c.sigma, "velocity": c.d_alpha * x0 + c.d_sigma * eps}
    out = convert(truth[src], src, dst, x_t, c)
    torch.testing.assert_close(out, truth[dst], rtol=1e-7, atol=1e-9)
    back = convert(out, dst, src, x_t, c)
    torch.testing.assert_close(back, truth[src], rtol=1e-7, atol=1e-9)


def test_rf_velocity_identities_hold_at_pure_noise():
    """v = ε − x0; x0 = x_t − t·v and ε = x_t + (1 − t)·v, finite even at t = 1 (α = 0)."""
    path = get_path("rf")
    gen = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(2, 5, 4, generator=gen, dtype=torch.float64)
    for t in (0.3, 1.0):
        c = path.coefficients(torch.tensor(t, dtype=torch.float64))
        x_t = c.alpha * x0 + c.sigma * eps
        v = velocity_from_x0_eps(x0, eps, c)
        torch.testing.assert_close(v, eps - x0)
        x0_back, eps_back = to_x0_eps(v, "velocity", x_t, c)
        torch.testing.assert_close(x0_back, x_t - t * v)
        torch.testing.assert_close(eps_back, x_t + (1 - t) * v)
        torch.testing.assert_close(x0_back, x0)


def test_bad_names_are_clear():
    with pytest.raises(ValueError, match="path: unknown name 'nope'"):
        get_path("nope")
    with pytest.raises(ValueError, match="sigma_max"):
        get_path("ve", sigma_max=-1.0)
    with pytest.raises(ValueError, match="space"):
        convert(torch.zeros(1), "x0", "logits", torch.zeros(1), get_path("rf").coefficients(torch.tensor(0.5)))


@pytest.mark.parametrize("path", ALL_PATHS, ids=lambda p: p.name)
def test_rf_time_is_lambda_over_one_plus_lambda(path):
    lam = path.lam(T_INTERIOR)
    torch.testing.assert_close(path.rf_time(T_INTERIOR), lam / (1 + lam), rtol=1e-13, atol=0)
    assert float(path.rf_time(torch.tensor(0.0, dtype=torch.float64))) == 0.0  # σ = 0: the data
    # the same noise level gives the same s on every path: rf's t at that λ
    torch.testing.assert_close(path.rf_time(path.t_of_lam(lam)), get_path("rf").t_of_lam(lam), rtol=1e-12, atol=0)


def test_rf_time_at_pure_noise_and_on_rf():
    for name in ("rf", "vp-cosine"):  # α(1) = 0 exactly: s = 1
        assert float(get_path(name).rf_time(torch.tensor(1.0, dtype=torch.float64))) == 1.0
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    assert torch.equal(get_path("rf").rf_time(t), t)  # s = t bit for bit on rf
    assert get_path("rf").rf_time(0.3).dtype == torch.float64


@pytest.mark.parametrize("t", [1e-6, 0.3, 0.5, 1 - 1e-6])
def test_combine_matches_the_weighted_sum_on_every_branch(t):
    """``combine`` (one kernel where the weights allow: a zero, a one, weights summing to 1 as a lerp) equals
    a·x + b·y computed in float64 to rounding, for the pair coefficients of every space on rf and vp-cosine."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 3, generator=g, dtype=torch.float64), torch.randn(64, 3, generator=g, dtype=torch.float64)
    cases = [(0.0, 2.0), (2.0, 0.0), (1.0, -0.5), (-0.5, 1.0), (0.25, 0.75), (-3.0, 4.0), (0.3, 0.9)]
    for name in ("rf", "vp-cosine"):
        for space in ("x0", "eps", "velocity"):
            coefs = pair_coefficients(space, path_scalars(get_path(name), t))
            if coefs is not None:
                cases += [(coefs[0], coefs[1]), (coefs[2], coefs[3])]
    for a, b in cases:
        expected = a * x + b * y
        scale = (abs(a) * x.abs() + abs(b) * y.abs()).max()
        assert float((combine(a, x, b, y) - expected).abs().max()) <= 1e-14 * float(scale), (a, b)


def test_combine_with_weights_summing_to_one_promotes_mixed_dtypes():
    """A float32 prediction on float64 states (a user's model in float32): the conversion promotes as a·x + b·y
    does instead of failing in lerp."""
    from guidelab.paths import combine

    x = torch.randn(3, 2, dtype=torch.float64)
    y = torch.randn(3, 2, dtype=torch.float32)
    out = combine(0.25, x, 0.75, y)
    assert out.dtype == torch.float64
    assert torch.allclose(out, 0.25 * x + 0.75 * y.double(), rtol=1e-7)
