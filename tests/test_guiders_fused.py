"""The fused one-scale paths of CFG-Zero*, APG and MAMBO-G (per-sample weights promoted to float64 inside the operator
that needs them, γ folded into the pair conversion) against the rules written out here in numpy, float64, on the same
(rounded) inputs: float16, float32 and float64 predictions, conditional and unconditional predictions that are not
close to each other, the model predicting x0, ε or velocity, on rf and vp-cosine. The per-sample scale (a tensor)
takes the general path, so both paths are checked against the same reference. Each rule also runs with the compiled
combines (guidelab.guiders.fused_jit, float32 and float64) on and off: the ``compiled`` fixture (conftest.py)."""

import numpy as np
import pytest
import torch

from guidelab.guiders import Predictions, StepContext, build_guider
from guidelab.guiders.reductions import dots, norms, plus_eps, scaled_product, scaled_ratio, sq_plus_eps
from guidelab.paths import get_path

D64 = torch.float64
EPS = 1e-12
# relative error of the pair, per sample: float64 arithmetic; float32 with the cancellation of γ = 5 rules; float16
# outputs rounded once (2^-11) after float32 rules
TOLERANCE = {torch.float64: 1e-11, torch.float32: 2e-5, torch.float16: 2 * 2.0**-10}
DTYPES = [torch.float16, torch.float32, torch.float64]
SPACES = ["x0", "eps", "velocity"]
PATHS = [("rf", 0.6), ("vp-cosine", 0.4)]


def coefficients(path, t):
    c = path.coefficients(torch.tensor(t, dtype=D64))
    return float(c.alpha), float(c.sigma), float(c.d_alpha), float(c.d_sigma)


def to_pair(pred, space, x_t, a, s, da, ds):
    """(x0, ε) of a prediction in ``space`` at fixed x_t (numpy, float64): x_t = a·x0 + s·ε, v = da·x0 + ds·ε."""
    if space == "x0":
        return pred, (x_t - a * pred) / s
    if space == "eps":
        return (x_t - s * pred) / a, pred
    x0 = (s * pred - ds * x_t) / (s * da - ds * a)
    return x0, (x_t - a * x0) / s


def in_space(x0, eps, space, da, ds):
    return {"x0": x0, "eps": eps, "velocity": da * x0 + ds * eps}[space]


def rows(x):
    return x.reshape(x.shape[0], -1)


def row_dot(x, y):
    return (rows(x) * rows(y)).sum(1).reshape(-1, *([1] * (x.ndim - 1)))


def row_norm(x):
    return np.sqrt(row_dot(x, x))


def case(dtype, space, path_name, t, shape=(3, 4, 5), seed=0):
    """x_t and two unrelated predictions in ``space`` (the unconditional one is not near the conditional one), rounded
    to ``dtype``; their float64 numpy copies."""
    g = torch.Generator().manual_seed(seed)
    x_t, c, u = (torch.randn(*shape, generator=g, dtype=D64) for _ in range(3))
    u = 2.0 * u - 0.5 * c  # inconsistent: another direction and scale
    x_t, c, u = x_t.to(dtype), c.to(dtype), u.to(dtype)
    return (x_t, c, u), tuple(v.double().numpy() for v in (x_t, c, u))


def guide(guider, path, t, x_t, c, u, space, index=3):
    grid = torch.linspace(1.0, 0.0, 11, dtype=D64)
    ctx = StepContext(index, 10, t, float(path.lam(torch.tensor(t, dtype=D64))), grid, path)
    coefs = path.coefficients(torch.tensor(t, dtype=D64)).expand_as(x_t)
    return guider.guide(Predictions({"cond": (c, space), "uncond": (u, space)}, x_t, coefs), ctx)


def check(out, x0, eps, dtype):
    assert out.x0_hat.dtype == out.eps_hat.dtype == dtype
    got_x0, got_eps = out.x0_hat.double().numpy(), out.eps_hat.double().numpy()
    num = (rows(got_x0 - x0) ** 2).sum(1) + (rows(got_eps - eps) ** 2).sum(1)
    den = (rows(x0) ** 2).sum(1) + (rows(eps) ** 2).sum(1)
    error = np.sqrt(num / den)
    assert error.max() <= TOLERANCE[dtype], error


def scales(gamma, batch):
    """The scale as a number (fused path) and as a per-sample tensor of the same values (general path)."""
    return [gamma, torch.full((batch,), gamma, dtype=D64)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize(("path_name", "t"), PATHS)
@pytest.mark.parametrize("gamma", [5.0, 0.5, 0.0])
def test_cfg_zero_star_matches_the_rule_in_numpy(compiled, dtype, space, path_name, t, gamma):
    path = get_path(path_name)
    (x_t, c, u), (xn, cn, un) = case(dtype, space, path_name, t)
    a, s, da, ds = coefficients(path, t)
    v_c = in_space(*to_pair(cn, space, xn, a, s, da, ds), "velocity", da, ds)
    v_u = in_space(*to_pair(un, space, xn, a, s, da, ds), "velocity", da, ds)
    s_star = row_dot(v_c, v_u) / (row_dot(v_u, v_u) + EPS)
    v_hat = s_star * v_u + gamma * (v_c - s_star * v_u)  # diffusers' / the official update
    x0, eps = to_pair(v_hat, "velocity", xn, a, s, da, ds)
    for scale in scales(gamma, x_t.shape[0]):
        out = guide(build_guider("cfg-zero-star", scale=scale, zero_init_steps=0), path, t, x_t, c, u, space)
        check(out, x0, eps, dtype)


def apg_reference(c, u, prev, gamma, eta, momentum, threshold):
    """The paper's APG in x0 (numpy): momentum sum, norm threshold, projection on x0̂_c; returns (x0̂, Δ̄)."""
    delta = c - u
    average = delta if prev is None else delta + momentum * prev
    d = average
    if threshold is not None:
        d = d * np.minimum(1.0, threshold / (row_norm(d) + EPS))
    parallel = row_dot(d, c) / (row_dot(c, c) + EPS) * c
    return c + (gamma - 1) * (d - parallel + eta * parallel), average


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize(("path_name", "t"), PATHS)
@pytest.mark.parametrize(
    "params",
    [
        {"eta": 0.0, "momentum": -0.5, "norm_threshold": 15.0},  # the threshold acts on no sample
        {"eta": 0.0, "momentum": -0.5, "norm_threshold": 2.0},  # the threshold acts
        {"eta": 0.3, "momentum": 0.0, "norm_threshold": None},
    ],
    ids=["r15", "r2", "no-threshold"],
)
def test_apg_matches_the_rule_in_numpy_over_two_steps(compiled, dtype, space, path_name, t, params):
    """Two steps on one trajectory (the second reads the first's momentum), each against numpy."""
    path = get_path(path_name)
    a, s, da, ds = coefficients(path, t)
    gamma = 5.0
    for scale in scales(gamma, 3):
        guider = build_guider("apg", scale=scale, **params)
        guider.reset(3)
        prev = None
        for step in range(2):
            (x_t, c, u), (xn, cn, un) = case(dtype, space, path_name, t, seed=step)
            c0 = to_pair(cn, space, xn, a, s, da, ds)[0]
            u0 = to_pair(un, space, xn, a, s, da, ds)[0]
            x0_hat, prev = apg_reference(
                c0, u0, prev, gamma, params["eta"], params["momentum"], params["norm_threshold"]
            )
            out = guide(guider, path, t, x_t, c, u, space, index=3 + step)
            check(out, x0_hat, (xn - a * x0_hat) / s, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize(("path_name", "t"), PATHS)
@pytest.mark.parametrize("measured_in", ["own", "x0"])
def test_mambo_g_matches_the_rule_in_numpy(compiled, dtype, space, path_name, t, measured_in):
    """r measured in the model's own space (the fused path) or in x0 (the general one)."""
    path = get_path(path_name)
    (x_t, c, u), (xn, cn, un) = case(dtype, space, path_name, t)
    a, s, da, ds = coefficients(path, t)
    where = space if measured_in == "own" else "x0"
    rc = in_space(*to_pair(cn, space, xn, a, s, da, ds), where, da, ds)
    ru = in_space(*to_pair(un, space, xn, a, s, da, ds), where, da, ds)
    for gamma, alpha in [(6.0, 8.0), (3.0, 0.5)]:
        r = row_norm(rc - ru) / (row_norm(ru) + EPS)
        weight = 1 + (gamma - 1) * np.exp(-alpha * r)
        x0, eps = to_pair(un + weight * (cn - un), space, xn, a, s, da, ds)  # affine: the same pair in every space
        for scale in scales(gamma, x_t.shape[0]):
            out = guide(build_guider("mambo-g", scale=scale, alpha=alpha, space=where), path, t, x_t, c, u, space)
            check(out, x0, eps, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_reductions_match_numpy(dtype):
    g = torch.Generator().manual_seed(4)
    x, y = (torch.randn(3, 2, 7, generator=g, dtype=D64).to(dtype) for _ in range(2))
    xn, yn = x.double().numpy(), y.double().numpy()
    reduced = torch.float64 if dtype == torch.float64 else torch.float32
    rtol = 1e-14 if dtype == torch.float64 else 1e-6
    assert dots(x, y).dtype == norms(x).dtype == reduced
    np.testing.assert_allclose(dots(x, y).double().numpy(), row_dot(xn, yn).reshape(-1), rtol=rtol)
    np.testing.assert_allclose(norms(x).double().numpy(), row_norm(xn).reshape(-1), rtol=rtol)
    n, d = norms(x), dots(x, y)
    assert sq_plus_eps(n).dtype == plus_eps(n).dtype == D64
    np.testing.assert_allclose(sq_plus_eps(n).numpy(), n.double().numpy() ** 2 + EPS, rtol=1e-15)
    np.testing.assert_allclose(plus_eps(n).numpy(), n.double().numpy() + EPS, rtol=1e-15)
    like = x.float() if dtype == torch.float16 else x
    ratio = scaled_ratio(d, sq_plus_eps(n), -2.5, like, offset=1.0)
    assert ratio.shape == (3, 1, 1) and ratio.dtype == like.dtype
    expected = 1.0 - 2.5 * d.double().numpy() / (n.double().numpy() ** 2 + EPS)
    np.testing.assert_allclose(ratio.reshape(-1).double().numpy(), expected, rtol=1e-15 if dtype == D64 else 1e-7)
    product = scaled_product(sq_plus_eps(n), d, 0.5, like, offset=2.0)
    expected = 2.0 + 0.5 * (n.double().numpy() ** 2 + EPS) * d.double().numpy()
    np.testing.assert_allclose(product.reshape(-1).double().numpy(), expected, rtol=1e-15 if dtype == D64 else 1e-7)
    # a half vector whose square sum exceeds float16's range: reduced in float32
    long = torch.full((1, 65536), 1.5, dtype=torch.float16)
    assert float(norms(long)) == 1.5 * 256 and float(dots(long, long)) == 65536 * 2.25


class _TinyVelocityNet(torch.nn.Module):
    """A small smooth, class-conditional velocity model on 2-D points (nonlinear in x, so divergences differ)."""

    prediction = "velocity"
    shape = (2,)

    def __init__(self, dtype):
        super().__init__()
        self.path = get_path("rf")
        self.layer = torch.nn.Linear(3, 2).to(dtype)

    def forward(self, x, t, cond):
        c = cond.to(x.dtype)[:, None] if torch.is_tensor(cond) else torch.zeros(x.shape[0], 1, dtype=x.dtype)
        return torch.tanh(self.layer(torch.cat([x, c], 1))) * x + 0.1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["cfg", "apg", "cfg-zero-star", "mambo-g", "rescale", "tangential", "adg", "adamag"])
def test_guided_fields_stay_differentiable(name, dtype):
    """The fused paths write with ``out=`` and the others use in-place ops: where autograd records the predictions
    (the conservation diagnostics' exact divergence), neither may break it. The autograd divergence of the guided
    field equals its central-difference divergence in float64."""
    from guidelab.diagnostics.conservation import divergence_exact, guidance_field
    from guidelab.grids import make_grid

    torch.manual_seed(0)
    net = _TinyVelocityNet(dtype)
    grid = make_grid("uniform", 8, net.path)
    field = guidance_field(net, build_guider(name, scale=3.0), 0, grid, 3)
    x = torch.randn(6, 2, dtype=dtype)
    exact = divergence_exact(field, x, method="autograd")
    assert torch.isfinite(exact).all()
    if dtype == torch.float64:
        fd = divergence_exact(field, x, method="fd")
        np.testing.assert_allclose(exact.numpy(), fd.numpy(), rtol=1e-6, atol=1e-7)
