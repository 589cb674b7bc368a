"""Each combiner pinned to something independent: identities with CFG, closed forms written out by hand, the
ADG norm identity, a CFG++ DDIM step by hand, the SVD behind TCFG (docs/methods.md §2, §5, §6)."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from guidelab.guiders import (
    CFG,
    COND,
    UNCOND,
    Pass,
    Predictions,
    StepContext,
    build_guider,
)
from guidelab.paths import convert, get_path, velocity_from_x0_eps
from guidelab.sampling import GuidedModel, Monitor, sample_ddim, sample_euler

DTYPE = torch.float64
CATALOGUE = ["adamag", "adg", "apg", "beta-cfg", "cfg", "cfg++", "cfg-zero-star", "dynamic-thresholding"]
CATALOGUE += ["mambo-g", "rescale", "tangential", "weak-model"]
SPACES3 = ("x0", "eps", "velocity")


def context(path, t, index=2, steps=8, stage=0):
    """A context at time t = grid[index] on an otherwise uniform grid."""
    grid = torch.cat(
        [torch.linspace(1.0, t, index + 1, dtype=DTYPE), torch.linspace(t, 0.0, steps - index + 1, dtype=DTYPE)[1:]]
    )
    return StepContext(index, steps, t, float(path.lam(torch.tensor(t, dtype=DTYPE))), grid, path, stage)


def predictions(path, t, x_t, space="x0", **raw):
    coefficients = path.coefficients(torch.tensor(t, dtype=DTYPE)).expand_as(x_t)
    return Predictions({k: (v, space) for k, v in raw.items()}, x_t, coefficients)


def random_case(seed, batch=5, shape=(3, 4), path_name="rf", t=0.6, space="x0"):
    g = torch.Generator().manual_seed(seed)
    path = get_path(path_name)
    x_t = torch.randn(batch, *shape, generator=g, dtype=DTYPE)
    cond = torch.randn(batch, *shape, generator=g, dtype=DTYPE)
    uncond = cond + 0.7 * torch.randn(batch, *shape, generator=g, dtype=DTYPE)
    preds = predictions(path, t, x_t, space, cond=cond, uncond=uncond)
    return path, preds, context(path, t)


def assert_same_step(a, b, **tol):
    torch.testing.assert_close(a.x0_hat, b.x0_hat, **tol)
    torch.testing.assert_close(a.eps_hat, b.eps_hat, **tol)


def flat_dot(a, b):
    return (a.reshape(a.shape[0], -1) * b.reshape(b.shape[0], -1)).sum(1).reshape(-1, *([1] * (a.ndim - 1)))


# --- identities with CFG -------------------------------------------------------------------------------------


ADAMAG_CASES = [(p, t, s) for p, t in [("rf", 0.6), ("rf", 1.0), ("vp-cosine", 0.3), ("ve", 0.5)] for s in SPACES3]


@pytest.mark.parametrize(
    ("path_name", "t", "space"),
    [c for c in ADAMAG_CASES if not (c[1] == 1.0 and c[2] == "eps")],  # an ε model has no x0̂ at pure noise
)
def test_adamag_with_beta_one_and_kappa_zero_is_cfg(path_name, t, space):
    _path, preds, ctx = random_case(0, path_name=path_name, t=t, space=space)
    for gamma in (1.5, 4.0):
        adamag = build_guider("adamag", scale=gamma, beta=1.0, kappa=0.0)
        assert_same_step(adamag.guide(preds, ctx), CFG(gamma).guide(preds, ctx))


@pytest.mark.parametrize("space", ["x0", "velocity"])
def test_apg_with_eta_one_no_threshold_no_momentum_is_cfg(space):
    _, preds, ctx = random_case(1, space=space)
    apg = build_guider("apg", scale=3.0, eta=1.0, momentum=0.0, norm_threshold=None)
    assert_same_step(apg.guide(preds, ctx), CFG(3.0).guide(preds, ctx))


@pytest.mark.parametrize("space", ["x0", "eps", "velocity"])
def test_rescale_with_phi_zero_is_cfg(space):
    _, preds, ctx = random_case(2)
    rescale = build_guider("rescale", scale=5.0, phi=0.0, space=space)
    assert_same_step(rescale.guide(preds, ctx), CFG(5.0).guide(preds, ctx))


def test_cfg_zero_star_with_unit_scale_and_no_zero_init_is_cfg():
    _, preds, ctx = random_case(3, space="velocity")
    guider = build_guider("cfg-zero-star", scale=4.0, optimized_scale=False, zero_init_steps=0)
    assert_same_step(guider.guide(preds, ctx), CFG(4.0).guide(preds, ctx))
    assert guider.passes(context(get_path("rf"), 1.0, index=0)) == (COND, UNCOND)


def test_weak_model_with_the_null_condition_is_cfg():
    path, preds, ctx = random_case(4)
    weak = build_guider("weak-model", scale=2.5)
    assert [p.name for p in weak.passes(ctx)] == ["cond", "guide0"]
    raw = {"cond": preds.get("cond", "x0"), "guide0": preds.get("uncond", "x0")}
    renamed = predictions(path, ctx.t, preds.x_t, **raw)
    assert_same_step(weak.guide(renamed, ctx), CFG(2.5).guide(preds, ctx))


NEUTRAL = {
    "beta-cfg": {"beta_a": 1.0, "beta_b": 1.0, "norm_power": 0.0},
    "cfg-zero-star": {"zero_init_steps": 0},
}


@pytest.mark.parametrize("name", CATALOGUE)
def test_every_guider_at_its_neutral_setting_is_the_conditional_model(name):
    _path, preds, ctx = random_case(5, space="velocity")
    guider = build_guider(name, scale=1.0, **NEUTRAL.get(name, {}))
    assert guider.passes(ctx) == (COND,)
    cond_only = Predictions({"cond": (preds.get("cond", "velocity"), "velocity")}, preds.x_t, preds.coefficients)
    out = guider.guide(cond_only, ctx)
    torch.testing.assert_close(out.x0_hat, preds.get("cond", "x0"))
    torch.testing.assert_close(out.eps_hat, preds.get("cond", "eps"))


@pytest.mark.parametrize("name", sorted(set(CATALOGUE) - {"beta-cfg", "weak-model"}))
def test_samples_with_unit_scale_are_conditional_whatever_their_batch(name):
    _path, preds, ctx = random_case(6, batch=4)
    scale = [1.0, 0.7 if name == "cfg++" else 3.0, 1.0, 0.3 if name == "cfg++" else 2.0]
    guider = build_guider(name, scale=scale, **NEUTRAL.get(name, {}))
    guider.reset(4)
    out = guider.guide(preds, ctx)
    for i in (0, 2):
        torch.testing.assert_close(out.x0_hat[i], preds.get("cond", "x0")[i])
        torch.testing.assert_close(out.eps_hat[i], preds.get("cond", "eps")[i])


# --- AdaMaG ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("t", [1.0, 0.7, 0.2])
def test_adamag_is_the_written_rule_in_rf_velocity(t):
    _path, preds, ctx = random_case(7, path_name="rf", t=t)
    x_t = preds.x_t
    x0_c, x0_u = preds.get("cond", "x0"), preds.get("uncond", "x0")
    # rf by hand: x_t = (1 − t)·x0 + t·ε, v = ε − x0 = (x_t − x0)/t
    v_c, v_u = (x_t - x0_c) / t, (x_t - x0_u) / t
    gamma, beta, kappa, omega_min = 6.0, 0.1, 4.0, 1.0
    g = v_c - v_u
    n = x_t + (1 - t) * v_c
    g_par = flat_dot(g, n) / flat_dot(n, n) * n
    g_perp = g - g_par
    omega = max(omega_min, gamma * t**kappa)
    v_hat = v_u + omega * (g_perp + beta * g_par)
    out = build_guider("adamag", scale=gamma).guide(preds, ctx)
    torch.testing.assert_close(out.eps_hat - out.x0_hat, v_hat)


def test_adamag_equals_its_eps_form_on_a_vp_path():
    _path, preds, ctx = random_case(8, path_name="vp-cosine", t=0.45)
    e_c, e_u = preds.get("cond", "eps"), preds.get("uncond", "eps")
    gamma, beta = 3.0, 0.25
    g = e_c - e_u
    g_par = flat_dot(g, e_c) / flat_dot(e_c, e_c) * e_c
    alpha, sigma = math.cos(math.pi * 0.45 / 2), math.sin(math.pi * 0.45 / 2)
    s = sigma / (alpha + sigma)  # the decay reads the rectified-flow time, not vp's t
    omega = max(1.0, gamma * s**0.5)
    assert omega > 1 and abs(omega - gamma * 0.45**0.5) > 1e-3
    eps_hat = e_u + omega * (g - g_par + beta * g_par)
    out = build_guider("adamag", scale=gamma, beta=beta, kappa=0.5).guide(preds, ctx)
    torch.testing.assert_close(out.eps_hat, eps_hat)


# --- ADG -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("gamma", [1.3, 2.0, 7.0])
def test_adg_norm_identity_and_written_rule(seed, gamma):
    _, preds, ctx = random_case(10 + seed, batch=6, shape=(7,))
    f = preds.get("cond", "x0").numpy()
    b = preds.get("uncond", "x0").numpy()
    cos = np.clip((f * b).sum(1) / np.linalg.norm(f, axis=1) / np.linalg.norm(b, axis=1), -1, 1)
    theta = np.arccos(cos)
    a = np.minimum(max(gamma - 1, 0) * theta, np.pi / 3)
    q = (f - ((f * b).sum(1) / (b * b).sum(1))[:, None] * b) / np.sin(theta)[:, None]
    expected = np.cos(a)[:, None] * f + np.sin(a)[:, None] * q
    out = build_guider("adg", scale=gamma).guide(preds, ctx).x0_hat.numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-9, atol=1e-12)
    sq = (out * out).sum(1)
    np.testing.assert_allclose(sq, (f * f).sum(1) * (1 + np.sin(2 * a) * np.sin(theta)), rtol=1e-10)


def test_adg_ablations():
    _, preds, ctx = random_case(20, batch=4, shape=(9,))
    f = preds.get("cond", "x0")
    rescaled = build_guider("adg", scale=5.0, norm_rescale=True).guide(preds, ctx).x0_hat
    torch.testing.assert_close(rescaled.norm(dim=1), f.norm(dim=1))
    uncapped = build_guider("adg", scale=5.0, theta_max=None).guide(preds, ctx).x0_hat
    capped = build_guider("adg", scale=5.0).guide(preds, ctx).x0_hat
    assert not torch.allclose(uncapped, capped)


@pytest.mark.parametrize("factor", [2.0, -3.0, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adg_parallel_and_antiparallel_give_no_nan(factor, dtype):
    path = get_path("rf")
    f = torch.randn(3, 5, generator=torch.Generator().manual_seed(0), dtype=dtype)
    preds = predictions(path, 0.5, torch.zeros_like(f), cond=f, uncond=factor * f)
    out = build_guider("adg", scale=4.0).guide(preds, context(path, 0.5))
    assert torch.isfinite(out.x0_hat).all()
    assert torch.isfinite(out.eps_hat).all()
    torch.testing.assert_close(out.x0_hat.norm(dim=1), f.norm(dim=1))  # sin θ = 0: the norm is kept
    for cond, uncond in [
        (torch.zeros_like(f), f),
        (f, torch.zeros_like(f)),
        (torch.zeros_like(f), torch.zeros_like(f)),
    ]:
        zero = predictions(path, 0.5, torch.zeros_like(f), cond=cond, uncond=uncond)
        assert torch.isfinite(build_guider("adg", scale=4.0).guide(zero, context(path, 0.5)).x0_hat).all()


# --- APG -------------------------------------------------------------------------------------------------------


def _apg_by_hand(c, u, prev, gamma, eta, beta_m, r):
    delta = c - u if prev is None else c - u + beta_m * prev
    average = delta
    norm = delta.reshape(delta.shape[0], -1).norm(dim=1).reshape(-1, *([1] * (c.ndim - 1)))
    delta = delta * torch.clamp(r / norm, max=1.0)
    par = flat_dot(delta, c) / flat_dot(c, c) * c
    return c + (gamma - 1) * (delta - par + eta * par), average


def test_apg_momentum_threshold_projection_over_steps():
    path = get_path("rf")
    g = torch.Generator().manual_seed(30)
    apg = build_guider("apg", scale=4.0, eta=0.3, momentum=-0.5, norm_threshold=1.5)
    apg.reset(3)
    prev = None
    for i, t in enumerate([0.9, 0.6, 0.3]):
        x_t, c, u = (torch.randn(3, 2, 3, generator=g, dtype=DTYPE) for _ in range(3))
        preds = predictions(path, t, x_t, cond=c, uncond=u)
        ctx = context(path, t, index=i)
        # a corrector evaluation reads the buffer but does not write it
        corrector = apg.guide(predictions(path, t, x_t, cond=u, uncond=c), context(path, t, index=i, stage=1))
        assert torch.isfinite(corrector.x0_hat).all()
        expected, prev = _apg_by_hand(c, u, prev, 4.0, 0.3, -0.5, 1.5)
        torch.testing.assert_close(apg.guide(preds, ctx).x0_hat, expected)
    apg.reset(3)  # a new trajectory starts without momentum
    expected, _ = _apg_by_hand(c, u, None, 4.0, 0.3, -0.5, 1.5)
    torch.testing.assert_close(apg.guide(preds, ctx).x0_hat, expected)
    with pytest.raises(ValueError, match="reset"):
        apg.guide(predictions(path, 0.5, x_t[:2], cond=c[:2], uncond=u[:2]), ctx)


# --- CFG-Zero* -------------------------------------------------------------------------------------------------


def test_cfg_zero_star_optimized_scale_and_zero_init():
    path, preds, ctx = random_case(40, space="velocity", t=0.5)
    v_c, v_u = preds.get("cond", "velocity"), preds.get("uncond", "velocity")
    s = flat_dot(v_c, v_u) / flat_dot(v_u, v_u)
    expected = s * v_u + 3.0 * (v_c - s * v_u)
    guider = build_guider("cfg-zero-star", scale=3.0, zero_init_steps=2)
    out = guider.guide(preds, ctx)  # index 2: past the zero-init steps
    torch.testing.assert_close(velocity_from_x0_eps(out.x0_hat, out.eps_hat, preds.coefficients), expected)
    first = context(path, 1.0, index=1)
    assert guider.passes(first) == ()
    empty = Predictions({}, preds.x_t, path.coefficients(torch.tensor(1.0, dtype=DTYPE)))
    out = guider.guide(empty, first)
    velocity = velocity_from_x0_eps(out.x0_hat, out.eps_hat, empty.coefficients)
    torch.testing.assert_close(velocity, torch.zeros_like(velocity))


# --- guidance rescale, thresholding, MAMBO-G, β-CFG, TCFG -------------------------------------------------------


def test_rescale_is_the_written_rule():
    _, preds, ctx = random_case(50, space="velocity")
    c, u = preds.get("cond", "velocity"), preds.get("uncond", "velocity")
    x = u + 6.0 * (c - u)
    std = lambda v: v.reshape(v.shape[0], -1).std(dim=1).reshape(-1, 1, 1)  # noqa: E731
    expected = 0.7 * x * std(c) / std(x) + 0.3 * x
    out = build_guider("rescale", scale=6.0).guide(preds, ctx)
    torch.testing.assert_close(velocity_from_x0_eps(out.x0_hat, out.eps_hat, preds.coefficients), expected)


def test_dynamic_thresholding_clips_x0_and_keeps_the_unclipped_eps():
    path = get_path("vp-cosine")
    g = torch.Generator().manual_seed(60)
    x_t = torch.randn(4, 50, generator=g, dtype=DTYPE)
    c = 1.5 * torch.randn(4, 50, generator=g, dtype=DTYPE)
    u = 0.2 * torch.randn(4, 50, generator=g, dtype=DTYPE)
    c[0] = 0.01 * c[0]  # a sample whose guided x0 stays within [−1, 1]: s = 1, untouched
    u[0] = 0.01 * u[0]
    preds = predictions(path, 0.4, x_t, cond=c, uncond=u)
    x0 = (u + 3.0 * (c - u)).numpy()
    s = np.maximum(np.percentile(np.abs(x0), 99.5, axis=1), 1.0)[:, None]
    guider = build_guider("dynamic-thresholding", scale=3.0, use_clipped_model_output=False)
    out = guider.guide(preds, context(path, 0.4))
    np.testing.assert_allclose(out.x0_hat.numpy(), np.clip(x0, -s, s) / s, rtol=1e-12)
    np.testing.assert_allclose(out.x0_hat[0].numpy(), x0[0])
    unclipped = CFG(3.0).guide(preds, context(path, 0.4))
    torch.testing.assert_close(out.eps_hat, unclipped.eps_hat)


def test_mambo_g_is_the_written_rule():
    _, preds, ctx = random_case(70, space="velocity")
    c, u = preds.get("cond", "velocity"), preds.get("uncond", "velocity")
    norm = lambda v: v.reshape(v.shape[0], -1).norm(dim=1).reshape(-1, 1, 1)  # noqa: E731
    gamma_eff = 1 + (5.0 - 1) * torch.exp(-8.0 * norm(c - u) / norm(u))
    expected = u + gamma_eff * (c - u)
    out = build_guider("mambo-g", scale=5.0).guide(preds, ctx)
    torch.testing.assert_close(velocity_from_x0_eps(out.x0_hat, out.eps_hat, preds.coefficients), expected)


@pytest.mark.parametrize("index", [0, 3, 7])
def test_beta_cfg_is_the_written_rule(index):
    path, preds, _ = random_case(80, space="eps", path_name="vp-cosine", t=0.5)
    ctx = context(path, 0.5, index=index, steps=8)
    e_c, e_u = preds.get("cond", "eps"), preds.get("uncond", "eps")
    delta = e_c - e_u
    norm = delta.reshape(delta.shape[0], -1).norm(dim=1).reshape(-1, 1, 1)
    weight = 7.5 * stats.beta.pdf(index / 7, 2.0, 3.0)
    expected = e_u + weight * delta / norm
    out = build_guider("beta-cfg", scale=7.5).guide(preds, ctx)
    torch.testing.assert_close(out.eps_hat, expected)
    torch.testing.assert_close(out.x0_hat, convert(expected, "eps", "x0", preds.x_t, preds.coefficients))


@pytest.mark.parametrize("space", ["eps", "velocity", "x0"])
def test_tangential_cfg_matches_the_svd(space):
    _, preds, ctx = random_case(90, batch=6, shape=(2, 5), space=space)
    c, u = preds.get("cond", space), preds.get("uncond", space)
    m = torch.stack([c.reshape(6, -1), u.reshape(6, -1)], dim=1)  # (batch, 2, D)
    _, _, vh = torch.linalg.svd(m, full_matrices=False)
    v1 = vh[:, 0]
    u_flat = u.reshape(6, -1)
    u_proj = ((u_flat * v1).sum(1, keepdim=True) * v1).reshape(u.shape)
    expected = u_proj + 4.0 * (c - u_proj)
    out = build_guider("tangential", scale=4.0, space=space).guide(preds, ctx)
    torch.testing.assert_close(convert(out.x0_hat, "x0", space, preds.x_t, preds.coefficients), expected)


@pytest.mark.parametrize("name", ["tangential", "rescale", "mambo-g", "beta-cfg"])
def test_eps_space_rules_stay_finite_at_pure_noise(name):
    path, preds, _ = random_case(95, path_name="rf", t=1.0)
    params = {"rescale": {"space": "eps"}, "mambo-g": {"space": "eps"}, "beta-cfg": {"beta_a": 1.0}}.get(name, {})
    out = build_guider(name, scale=3.0, **params).guide(preds, context(path, 1.0, index=0))
    assert torch.isfinite(out.x0_hat).all()
    assert torch.isfinite(out.eps_hat).all()
    torch.testing.assert_close(out.eps_hat, preds.x_t)  # every ε̂ is x_t at t = 1


# --- CFG++ -----------------------------------------------------------------------------------------------------


class LinearGaussian:
    """x0 | c ~ N(μ_c, s_c² I) in 2-D: the exact posterior mean on any path."""

    prediction = "x0"

    def __init__(self, path, mean=(2.0, -1.0), var=0.25):
        self.path, self.mean, self.var = path, torch.tensor(mean, dtype=DTYPE), var

    def __call__(self, x, t, cond):
        c = self.path.coefficients(t.double()).expand_as(x)
        is_cond = (cond >= 0).reshape(-1, 1)
        mu = torch.where(is_cond, self.mean, torch.zeros(2, dtype=DTYPE)).to(x)
        s2 = torch.where(is_cond, torch.tensor(self.var, dtype=DTYPE), torch.tensor(4.0, dtype=DTYPE)).to(x)
        return mu + c.alpha * s2 / (c.alpha**2 * s2 + c.sigma**2) * (x - c.alpha * mu)


def test_cfg_pp_on_a_ddim_step_is_the_update_by_hand():
    path = get_path("vp-cosine")
    den = LinearGaussian(path)
    grid = torch.tensor([0.9, 0.5, 0.0], dtype=DTYPE)
    x = torch.tensor([[0.3, -1.2], [2.0, 0.5], [-0.7, 0.1]], dtype=DTYPE)
    labels = torch.zeros(3, dtype=torch.long)
    lam = 0.6
    model = GuidedModel(den, build_guider("cfg++", scale=lam), labels, grid)
    out = sample_ddim(model, x, monitor=Monitor(3), eta=0.0)
    # by hand: x_s = α_s·(x0_u + λ(x0_c − x0_u)) + σ_s·ε_u with ε_u = (x_t − α_t·x0_u)/σ_t
    alpha = lambda t: math.cos(math.pi * t / 2)  # noqa: E731
    sigma = lambda t: math.sin(math.pi * t / 2)  # noqa: E731
    x_hand = x
    for t, s in [(0.9, 0.5), (0.5, 0.0)]:
        tt = torch.full((3,), t, dtype=DTYPE)
        x0_c, x0_u = den(x_hand, tt, labels), den(x_hand, tt, torch.full_like(labels, -1))
        eps_u = (x_hand - alpha(t) * x0_u) / sigma(t)
        x_hand = alpha(s) * (x0_u + lam * (x0_c - x0_u)) + sigma(s) * eps_u
    torch.testing.assert_close(out, x_hand)
    assert model.nfe == 4


def test_cfg_pp_rejects_lambda_outside_the_unit_interval():
    with pytest.raises(ValueError, match="λ"):
        build_guider("cfg++", scale=1.5)
    guider = build_guider("cfg++", schedule="wang", scale=0.9, convention="ho")
    path, preds, _ = random_case(99)
    with pytest.raises(ValueError, match="λ"):
        guider.guide(preds, context(path, 0.2, index=7, steps=8))


# --- weak-model guidance ---------------------------------------------------------------------------------------


def test_autoguidance_with_a_weak_model_through_the_guided_model():
    path = get_path("rf")
    main, weak = LinearGaussian(path), LinearGaussian(path, mean=(1.0, -0.5), var=0.5)
    guider = build_guider("weak-model", scale=2.0, guide_model="weak", guide_cond="cond", models={"weak": weak})
    grid = torch.linspace(1.0, 0.0, 5, dtype=DTYPE)
    labels = torch.tensor([0, 0, 1])
    model = GuidedModel(main, guider, labels, grid)
    x = torch.randn(3, 2, dtype=DTYPE, generator=torch.Generator().manual_seed(0))
    out = model(x, 1)
    t = torch.full((3,), float(grid[1]), dtype=DTYPE)
    d1, d0 = main(x, t, labels), weak(x, t, labels)
    torch.testing.assert_close(out.x0_hat, d0 + 2.0 * (d1 - d0))
    assert model.nfe == 2
    assert model.calls == 2
    config = guider.config()
    assert config["guide_model"] == "weak"
    assert "models" not in config
    again = build_guider(**config, models={"weak": weak})
    assert again.config() == config


def test_weak_model_sums_several_guides_and_skips_neutral_ones():
    path = get_path("rf")
    weak = LinearGaussian(path, mean=(1.0, -0.5), var=0.5)
    extra = [{"model": "weak", "cond": "cond", "schedule": "interval", "scale": 3.0, "lam_lo": 0.0, "lam_hi": 0.5}]
    guider = build_guider("weak-model", scale=2.0, extra_guides=extra, models={"weak": weak})
    early, late = context(path, 0.9, index=1), context(path, 0.2, index=6)  # λ = 9 (outside), 0.25 (inside)
    assert [p.name for p in guider.passes(early)] == ["cond", "guide0"]
    assert [p.name for p in guider.passes(late)] == ["cond", "guide0", "guide1"]
    g = torch.Generator().manual_seed(1)
    x_t, main, g0, g1 = (torch.randn(4, 3, generator=g, dtype=DTYPE) for _ in range(4))
    preds = predictions(path, 0.2, x_t, cond=main, guide0=g0, guide1=g1)
    expected = main + (2.0 - 1) * (main - g0) + (3.0 - 1) * (main - g1)
    torch.testing.assert_close(guider.guide(preds, late).x0_hat, expected)
    assert isinstance(guider.passes(late)[2], Pass)
    assert guider.passes(late)[2].model is weak


def test_weak_model_validation_names_the_field():
    with pytest.raises(ValueError, match="guide"):
        build_guider("weak-model", guide_model="missing")
    with pytest.raises(ValueError, match="guide_cond"):
        build_guider("weak-model", guide_cond="other")
    with pytest.raises(ValueError, match="main"):
        build_guider("weak-model", guide_cond="cond")
    with pytest.raises(ValueError, match=r"extra_guides\[0\]"):
        build_guider("weak-model", extra_guides=[{"model": None, "cond": "null", "schedule": "nope"}])


# --- the scalar fast path of the conversions equals the generic one --------------------------------------------


FAST_CASES = [
    ("cfg", {}),
    ("adamag", {}),
    ("adg", {}),
    ("apg", {}),
    ("beta-cfg", {}),
    ("cfg++", {"scale": 0.4}),
    ("cfg-zero-star", {"zero_init_steps": 0}),
    ("dynamic-thresholding", {}),
    ("mambo-g", {"space": "eps"}),
    ("rescale", {"space": "score"}),
    ("tangential", {"space": "velocity"}),
]


@pytest.mark.parametrize(("name", "params"), FAST_CASES, ids=[c[0] for c in FAST_CASES])
@pytest.mark.parametrize("space", ["x0", "eps", "velocity", "score"])
@pytest.mark.parametrize(("path_name", "t"), [("rf", 0.35), ("vp-cosine", 0.8), ("vp-linear", 0.5), ("ve", 0.2)])
def test_scalar_fast_path_equals_the_generic_conversions(name, params, space, path_name, t):
    path, preds, ctx = random_case(123, batch=3, path_name=path_name, t=t, space=space)
    guider = build_guider(name, **{"scale": 2.5, **params})
    guider.reset(3)
    fast = guider.guide(preds, ctx)
    # per-sample coefficients (batch, 1, 1) take the generic path of Predictions
    per_sample = path.coefficients(torch.full((3,), t, dtype=DTYPE)).expand_as(preds.x_t)
    raw = {k: (preds.get(k, space), space) for k in ("cond", "uncond")}
    guider.reset(3)  # APG: the same momentum state for both calls
    generic = guider.guide(Predictions(raw, preds.x_t, per_sample), ctx)
    assert_same_step(fast, generic, rtol=1e-9, atol=1e-9)


def test_zero_init_steps_make_no_network_evaluation_while_sampling():
    path = get_path("rf")
    den = LinearGaussian(path)
    grid = torch.linspace(1.0, 0.0, 7, dtype=DTYPE)
    model = GuidedModel(
        den, build_guider("cfg-zero-star", scale=3.0, zero_init_steps=2), torch.zeros(4, dtype=torch.long), grid
    )
    x = torch.randn(4, 2, dtype=DTYPE, generator=torch.Generator().manual_seed(5))
    out = sample_euler(model, x, monitor=Monitor(4))
    assert model.nfe == 2 * (6 - 2)
    assert torch.isfinite(out).all()
