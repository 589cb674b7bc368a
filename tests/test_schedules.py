"""Weight schedules γ(step) (docs/methods.md §1): closed forms, the identities of the issue, snapping, NFE."""

import math

import numpy as np
import pytest
import torch

from guidelab.grids import make_grid
from guidelab.guiders import (
    SCHEDULES,
    Predictions,
    StepContext,
    build_guider,
    extra_to_ho,
    ho_to_extra,
)
from guidelab.guiders.schedules import normalized_dt, triangle, tv_cfg_weights
from guidelab.paths import get_path
from guidelab.sampling import sample


def contexts(path, grid):
    steps = len(grid) - 1
    return [StepContext(i, steps, float(grid[i]), float(path.lam(grid[i])), grid, path) for i in range(steps)]


def gammas(schedule, path, grid):
    return [schedule(ctx) for ctx in contexts(path, grid)]


def rf_s(path, grid):
    """The rectified-flow time λ/(1 + λ) of each grid point (1 where λ = ∞)."""
    lam = path.lam(torch.as_tensor(grid, dtype=torch.float64))
    return torch.where(torch.isinf(lam), torch.ones_like(lam), lam / (1 + lam))


class LinearGaussian:
    """x0 | c ~ N(μ_c, s_c² I) in 2-D: the exact posterior mean on any path (a cheap stand-in for a network)."""

    prediction = "x0"

    def __init__(self, path):
        self.path = path

    def __call__(self, x, t, cond):
        c = self.path.coefficients(t.double()).expand_as(x)
        is_cond = (cond >= 0).reshape(-1, 1)
        mu = torch.where(is_cond, torch.tensor([2.0, -1.0]), torch.zeros(2)).to(x)
        s2 = torch.where(is_cond, torch.tensor(0.25), torch.tensor(4.0)).to(x)
        return mu + c.alpha * s2 / (c.alpha**2 * s2 + c.sigma**2) * (x - c.alpha * mu)


# --- converters -------------------------------------------------------------------------------------------


def test_scale_converters_are_inverse():
    assert extra_to_ho(6.5) == 7.5
    assert ho_to_extra(7.5) == 6.5
    w = torch.tensor([0.0, 1.5, -1.0])
    torch.testing.assert_close(ho_to_extra(extra_to_ho(w)), w)


# --- constant and interval ----------------------------------------------------------------------------------


def test_interval_is_half_open_in_lambda_and_snapped_to_step_edges():
    path = get_path("ve", sigma_max=1.0)  # λ = t exactly
    grid = torch.tensor([1.0, 0.8, 0.5, 0.3, 0.1, 0.0], dtype=torch.float64)
    schedule = SCHEDULES["interval"](scale=3.0, lam_lo=0.3, lam_hi=0.8)
    assert gammas(schedule, path, grid) == [1.0, 3.0, 3.0, 1.0, 1.0]  # (0.3, 0.8]: 0.8 in, 0.3 out
    # Heun's corrector of step 2 evaluates at t_3 = 0.3 (outside) but uses step 2's decision (λ_2 = 0.5, inside).
    corrector = StepContext(2, 5, 0.3, 0.3, grid, path, stage=1)
    assert schedule(corrector) == 3.0
    corrector = StepContext(0, 5, 0.8, 0.8, grid, path, stage=1)
    assert schedule(corrector) == 1.0


@pytest.mark.parametrize("path_name", ["rf", "vp-cosine", "ve"])
def test_interval_zero_to_infinity_equals_cfg(path_name):
    path = get_path(path_name)
    grid = make_grid("uniform", 8, path)
    interval = build_guider("cfg", schedule="interval", scale=2.5, lam_lo=0.0, lam_hi=None)
    constant = build_guider("cfg", scale=2.5)
    den = LinearGaussian(path)
    a = sample(den, interval, grid=grid, n=16, shape=(2,), cond=0, seed=3)
    b = sample(den, constant, grid=grid, n=16, shape=(2,), cond=0, seed=3)
    assert a.nfe == b.nfe == 16
    torch.testing.assert_close(a.x, b.x, rtol=0, atol=0)


def test_interval_transfers_between_paths_through_lambda():
    schedule = SCHEDULES["interval"]()  # EDM2 defaults: γ = 2 in (0.19, 1.61]
    for name in ("rf", "vp-cosine", "ve"):
        path = get_path(name)
        grid = make_grid("edm", 32, path)
        lams = path.lam(grid[:-1])
        expected = [2.0 if 0.19 < float(lam) <= 1.61 else 1.0 for lam in lams]
        assert gammas(schedule, path, grid) == expected


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_interval_saves_the_unconditional_pass_outside(solver):
    path = get_path("rf")
    grid = make_grid("edm", 10, path)
    guider = build_guider("cfg", schedule="interval", scale=2.0)
    inside = sum(0.19 < float(path.lam(t)) <= 1.61 for t in grid[:-1])
    assert 0 < inside < 10  # the grid crosses the interval
    result = sample(LinearGaussian(path), guider, grid=grid, n=4, shape=(2,), cond=0, solver=solver)
    per_step = [1 + (0.19 < float(path.lam(t)) <= 1.61) for t in grid[:-1]]  # evaluations of each step's passes
    if solver == "heun":  # a corrector with the same passes on every step but the last (which lands on t = 0)
        per_step = [2 * n for n in per_step[:-1]] + per_step[-1:]
    assert result.nfe == sum(per_step)


def test_interval_validation_names_the_field():
    with pytest.raises(ValueError, match="lam_hi"):
        SCHEDULES["interval"](lam_lo=1.0, lam_hi=0.5)
    with pytest.raises(ValueError, match="lam_lo"):
        SCHEDULES["interval"](lam_lo=-0.1)
    assert SCHEDULES["interval"](lam_hi=math.inf).config()["lam_hi"] is None


# --- Wang et al. shapes -------------------------------------------------------------------------------------


def _wang(shape, convention="extra", floor=None, scale=4.0, steps=11):
    path = get_path("rf")
    grid = make_grid("uniform", steps, path)
    schedule = SCHEDULES["wang"](scale=scale, shape=shape, convention=convention, floor=floor)
    p = np.linspace(0, 1, steps)
    return np.array(gammas(schedule, path, grid)), p


def test_wang_closed_forms_in_the_extra_reading():
    w = 3.0  # γ̄ = 4
    g, p = _wang("linear")
    np.testing.assert_allclose(g, 1 + 2 * w * p)
    g, p = _wang("cosine")
    np.testing.assert_allclose(g, 1 + w * (1 - np.cos(np.pi * p)))
    g_down, _ = _wang("linear-down")
    np.testing.assert_allclose(g_down, (1 + 2 * w * p)[::-1])
    g_down, _ = _wang("cosine-down")
    np.testing.assert_allclose(g_down, (1 + w * (1 - np.cos(np.pi * p)))[::-1], atol=1e-12)
    g_v, _ = _wang("v")
    np.testing.assert_allclose(g_v, 1 + 2 * w * np.abs(2 * p - 1))
    g_l, _ = _wang("lambda")
    np.testing.assert_allclose(g_l, 1 + 2 * w * (1 - np.abs(2 * p - 1)))


def test_wang_teaser_rule_and_ho_reading():
    g, p = _wang("linear", floor=1.0)  # extra form w = max(1, 2w̄p)
    np.testing.assert_allclose(g, 1 + np.maximum(1.0, 2 * 3.0 * p))
    g, p = _wang("linear", convention="ho")
    np.testing.assert_allclose(g, 2 * 4.0 * p)
    g, p = _wang("linear", convention="ho", floor=1.0)
    np.testing.assert_allclose(g, np.maximum(1.0, 8.0 * p))


@pytest.mark.parametrize("shape", ["linear", "cosine", "linear-down", "cosine-down", "v", "lambda"])
@pytest.mark.parametrize("convention", ["extra", "ho"])
def test_wang_shapes_have_mean_gamma_bar(shape, convention):
    g, _ = _wang(shape, convention, steps=2001)
    assert abs(np.trapezoid(g, dx=1 / 2000) - 4.0) < 1e-5


def test_wang_rejects_unknown_shape_and_convention():
    with pytest.raises(ValueError, match="shape"):
        SCHEDULES["wang"](shape="square")
    with pytest.raises(ValueError, match="convention"):
        SCHEDULES["wang"](convention="paper")


# --- TV-CFG -------------------------------------------------------------------------------------------------


def _official_symmetric(n, low, high):
    """The shape of the official TV-CFG code's ``symmetric`` (numpy linspace), before normalization."""
    half = n // 2
    if n % 2 == 0:
        return np.concatenate([np.linspace(low, high, half, endpoint=False), np.linspace(high, low, half)])
    return np.concatenate([np.linspace(low, high, half + 1), np.linspace(high, low, half + 1)[1:]])


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 7, 10, 25])
def test_tv_cfg_triangle_matches_the_official_shape(steps):
    np.testing.assert_allclose(1 + 4 * triangle(steps).numpy(), _official_symmetric(steps, 1.0, 5.0), atol=1e-12)
    if steps > 1:
        assert int(np.argmax(triangle(steps).numpy())) == steps // 2


@pytest.mark.parametrize(
    ("kind", "path_name", "options"),
    [
        ("uniform", "rf", {}),
        ("shifted", "rf", {"shift": 3.0}),
        ("edm", "ve", {}),
        ("geometric", "vp-cosine", {}),
        ("uniform", "rf", {"t_max": 0.9}),
    ],
)
@pytest.mark.parametrize("gamma_bar", [1.5, 4.0, 9.0])
def test_tv_cfg_dt_weighted_mean_equals_gamma_bar(kind, path_name, options, gamma_bar):
    path = get_path(path_name)
    grid = make_grid(kind, 10, path, **options)
    g = torch.tensor(gammas(SCHEDULES["tv-cfg"](scale=gamma_bar), path, grid), dtype=torch.float64)
    s = rf_s(path, grid)  # Δ in rectified-flow time: Δt on rf, the same noise levels elsewhere
    s = s / s[0]  # s_0 = 1, s_N = 0
    dt = s[:-1] - s[1:]
    assert abs(float((g * dt).sum()) - gamma_bar) < 1e-12
    # the shape is the triangle from 1 to 2γ̄ − 1, up to one factor
    ratio = g / (1 + (2 * gamma_bar - 2) * triangle(10))
    torch.testing.assert_close(ratio, torch.full_like(ratio, float(ratio[0])))


def test_tv_cfg_per_sample_and_neutral():
    path = get_path("rf")
    grid = make_grid("shifted", 9, path)
    w = tv_cfg_weights(grid, torch.tensor([1.0, 2.0, 7.0], dtype=torch.float64))
    means = (w * normalized_dt(grid).reshape(-1, 1)).sum(0)
    torch.testing.assert_close(means, torch.tensor([1.0, 2.0, 7.0], dtype=torch.float64))
    assert bool((w[:, 0] == 1).all())
    guider = build_guider("cfg", schedule="tv-cfg", scale=1.0)
    assert all(guider.passes(ctx) == guider.passes(contexts(path, grid)[0]) for ctx in contexts(path, grid))
    assert len(guider.passes(contexts(path, grid)[0])) == 1
    with pytest.raises(ValueError, match="scale"):
        SCHEDULES["tv-cfg"](scale=0.2)


def test_tv_cfg_inside_apg_builds_and_uses_the_grid():
    guider = build_guider("apg", schedule="tv-cfg", scale=5.0, eta=0.0)
    assert guider.config()["schedule"]["name"] == "tv-cfg"
    path = get_path("rf")
    grid = make_grid("uniform", 6, path)
    expected = tv_cfg_weights(grid, 5.0)
    assert [guider.schedule(ctx) for ctx in contexts(path, grid)] == pytest.approx(expected.tolist())


# --- probes and negative windows ----------------------------------------------------------------------------


def test_step_probes_follow_the_official_code():
    path = get_path("rf")
    grid = make_grid("uniform", 9, path)  # p = i/8: p < 0.25 for i = 0, 1
    up = gammas(SCHEDULES["step-up"](scale=6.0), path, grid)
    down = gammas(SCHEDULES["step-down"](scale=6.0), path, grid)
    assert up == [2.0, 2.0] + [6.0] * 7
    assert down == [6.0, 6.0] + [2.0] * 7
    custom = gammas(SCHEDULES["step-up"](scale=6.0, scale_low=1.0, p_switch=0.5), path, grid)
    assert custom == [1.0] * 4 + [6.0] * 5


def test_negative_window_closed_form_goes_below_one():
    path = get_path("rf")
    grid = make_grid("uniform", 10, path)
    g = gammas(SCHEDULES["negative-window"](w0=-0.8, omega=3.0), path, grid)
    expected = [1 - 0.8 + 3.0 * float(t) for t in grid[:-1]]
    assert g == pytest.approx(expected)
    assert min(g) < 1 < max(g)
    with pytest.raises(ValueError, match="w0"):
        SCHEDULES["negative-window"](w0=-1.5)
    with pytest.raises(ValueError, match="omega"):
        SCHEDULES["negative-window"](omega=-1.0)


def test_negative_window_with_zero_slope_and_offset_is_the_conditional_model():
    path = get_path("rf")
    grid = make_grid("uniform", 8, path)
    den = LinearGaussian(path)
    guider = build_guider("cfg", schedule="negative-window", w0=0.0, omega=0.0)
    guided = sample(den, guider, grid=grid, n=8, shape=(2,), cond=0, seed=1)
    conditional = sample(den, None, grid=grid, n=8, shape=(2,), cond=0, seed=1)
    assert guided.nfe == 8
    torch.testing.assert_close(guided.x, conditional.x, rtol=0, atol=0)


def test_negative_switch_goes_unconditional_late():
    path = get_path("rf")
    grid = make_grid("uniform", 10, path)
    g = gammas(SCHEDULES["negative-switch"](scale=4.0, p_switch=0.6), path, grid)
    p = np.linspace(0, 1, 10)
    assert g == [4.0 if pi < 0.6 else 0.0 for pi in p]


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_every_schedule_round_trips_and_accepts_per_sample_scales(name):
    cls = SCHEDULES[name]
    schedule = cls()
    again = cls(**schedule.config())
    assert again.config() == schedule.config()
    assert repr(schedule).startswith(cls.__name__ + "(")
    path = get_path("rf")
    grid = make_grid("uniform", 5, path)
    if "scale" in schedule.config():
        per_sample = cls(**{**schedule.config(), "scale": [1.5, 3.0]})
        for ctx in contexts(path, grid):
            value = per_sample(ctx)
            assert isinstance(value, float | torch.Tensor)
            if isinstance(value, torch.Tensor):
                assert value.shape == (2,)


# --- one clock for every path: the rectified-flow time s = λ/(1 + λ) (docs/methods.md §0) ------------------------

EDM_LAMS = torch.cat(
    [
        (80 ** (1 / 7) + torch.arange(32, dtype=torch.float64) / 31 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7,
        torch.zeros(1, dtype=torch.float64),
    ]
)  # the 32 EDM noise levels and the data
SAME_LEVEL_PATHS = [get_path("rf"), get_path("vp-cosine"), get_path("vp-linear"), get_path("ve"), get_path("ou")]
TIME_SCHEDULES = [
    ("constant", {"scale": 3.0}),
    ("interval", {}),
    ("wang", {"scale": 4.0, "shape": "cosine"}),
    ("tv-cfg", {"scale": 5.0}),
    ("tv-cfg", {"scale": 1.7, "low": 0.5, "high": 6.0, "normalize": True}),
    ("tv-interval", {"scale": 5.0}),
    ("step-up", {"scale": 6.0}),
    ("step-down", {"scale": 6.0}),
    ("negative-window", {"w0": -0.8, "omega": 3.0}),
    ("negative-switch", {"scale": 4.0}),
]
TIME_IDS = [f"{n}-{i}" for i, (n, _) in enumerate(TIME_SCHEDULES)]


def level_contexts(path):
    """Contexts of the 32-step grid through the EDM noise levels, on ``path``'s own times."""
    grid = path.t_of_lam(EDM_LAMS)
    return [StepContext(i, 32, float(grid[i]), float(EDM_LAMS[i]), grid, path) for i in range(32)]


@pytest.mark.parametrize(("name", "params"), TIME_SCHEDULES, ids=TIME_IDS)
def test_every_schedule_gives_the_same_weights_at_the_same_noise_levels_on_every_path(name, params):
    reference = [SCHEDULES[name](**params)(ctx) for ctx in level_contexts(SAME_LEVEL_PATHS[0])]
    assert len(set(reference)) > 1 or name == "constant"
    for path in SAME_LEVEL_PATHS[1:]:
        schedule = SCHEDULES[name](**params)  # a fresh one: no cache shared between paths
        np.testing.assert_allclose([schedule(ctx) for ctx in level_contexts(path)], reference, rtol=0, atol=1e-12)


def _tv_cfg_before(grid, gamma_bar):
    """TV-CFG as written before the rectified-flow clock (Δt of the path's own grid, same operations), the
    oracle on rf."""
    steps = len(grid) - 1
    i = torch.arange(steps, dtype=torch.float64)
    peak = steps // 2
    f = torch.where(i <= peak, i / peak, (steps - 1 - i) / (steps - 1 - peak))
    dt = (grid[:-1] - grid[1:]) / (grid[0] - grid[-1])
    gbar = torch.tensor(gamma_bar)  # float32 then; exact for the values tested
    raw = 1 + (2 * gbar - 2) * f
    return (raw * gbar / (raw * dt).sum(dim=0)).tolist()


@pytest.mark.parametrize("kind", ["uniform", "shifted", "edm"])
def test_rf_keeps_the_weights_of_its_own_time(kind):
    path = get_path("rf")
    grid = make_grid(kind, 12, path)
    for gamma_bar in (2.0, 4.5, 9.0):
        g = gammas(SCHEDULES["tv-cfg"](scale=gamma_bar), path, grid)
        assert g == _tv_cfg_before(grid, gamma_bar)
    g = gammas(SCHEDULES["negative-window"](w0=-0.8, omega=3.0), path, grid)
    assert g == [1 + -0.8 + 3.0 * float(t) for t in grid[:-1]]


def test_on_another_path_the_time_schedules_read_s_not_t():
    path = get_path("ve")  # t = λ/80, s = λ/(1 + λ)
    grid = make_grid("edm", 10, path)
    s = (grid * 80 / (1 + grid * 80)).numpy()
    g = gammas(SCHEDULES["negative-window"](w0=-0.8, omega=3.0), path, grid)
    np.testing.assert_allclose(g, 1 - 0.8 + 3.0 * s[:-1], rtol=1e-14)
    assert abs(g[-1] - (1 - 0.8 + 3.0 * float(grid[-2]))) > 1e-3  # t would give something else


def test_adamag_omega_is_the_same_at_the_same_noise_levels_on_every_path():
    """In ε space the AdaMaG rule has no path in it but ω: equal ε predictions must give equal guided ε̂."""
    gen = torch.Generator().manual_seed(7)
    x_t, e_c, e_u = (torch.randn(3, 5, generator=gen, dtype=torch.float64) for _ in range(3))
    guider = build_guider("adamag", scale=6.0, beta=0.1, kappa=4.0, omega_min=1.0)
    outputs = []
    for path in SAME_LEVEL_PATHS:
        rows = []
        for ctx in level_contexts(path)[:-1]:
            coefficients = path.coefficients(torch.tensor(ctx.t, dtype=torch.float64))
            preds = Predictions({"cond": (e_c, "eps"), "uncond": (e_u, "eps")}, x_t, coefficients)
            rows.append(guider.guide(preds, ctx).eps_hat)
        outputs.append(torch.stack(rows))
    for other in outputs[1:]:
        torch.testing.assert_close(other, outputs[0], rtol=1e-9, atol=1e-12)
    # and on rf it is today's rule in t: ω = max(1, 6·t⁴), ε̂ = ε_u + ω(g⊥ + 0.1·g∥)
    g = e_c - e_u
    par = (g * e_c).sum(1, keepdim=True) / (e_c * e_c).sum(1, keepdim=True) * e_c
    for k, ctx in enumerate(level_contexts(SAME_LEVEL_PATHS[0])[:-1]):
        omega = max(1.0, 6.0 * ctx.t**4)
        torch.testing.assert_close(outputs[0][k], e_u + omega * (g - par + 0.1 * par), rtol=1e-9, atol=1e-12)


# --- TV-CFG options against the official code (sqt24/tvcfg, guidance_schedulers.py) --------------------------


def _official_schedules(grid_s, gamma_bar):
    """A numpy transcription of the official ``GuidanceSchedulers``: SD3 timesteps (rectified-flow time × 1000,
    the N evaluation times), normalized by their maximum, Δt with a final 0 appended."""
    timesteps = 1000 * grid_s[:-1]
    t = timesteps / timesteps.max()
    dt = t - np.append(t[1:], 0.0)

    def symmetric(low, high, normalize=True):
        g = _official_symmetric(len(t), low, high)
        return g * gamma_bar / np.sum(g * dt) if normalize else g

    def interval(value, left=0.15, right=0.78, normalize=True):
        mask = (left < t) & (t < right)
        if normalize:
            value = (gamma_bar - dt[~mask].sum()) / dt[mask].sum()
        return np.where(mask, value, 1.0)

    return symmetric, interval, dt


@pytest.mark.parametrize(("kind", "path_name"), [("shifted", "rf"), ("uniform", "rf"), ("edm", "ve"), ("edm", "ou")])
@pytest.mark.parametrize("steps", [7, 10])
def test_tv_cfg_low_high_normalize_match_the_official_symmetric(kind, path_name, steps):
    path = get_path(path_name)
    grid = make_grid(kind, steps, path)
    symmetric, _, _ = _official_schedules(rf_s(path, grid).numpy(), 4.0)
    cases = [({}, (1.0, 7.0, True)), ({"low": 0.5, "high": 9.0}, (0.5, 9.0, True))]
    cases += [({"normalize": False}, (1.0, 7.0, False))]
    cases += [({"low": 2.0, "high": 3.0, "normalize": False}, (2.0, 3.0, False))]
    for params, (low, high, normalize) in cases:
        g = gammas(SCHEDULES["tv-cfg"](scale=4.0, **params), path, grid)
        np.testing.assert_allclose(g, symmetric(low, high, normalize), rtol=1e-13, atol=1e-13)


def test_tv_cfg_keeps_the_mean_scale_in_float64():
    path = get_path("rf")
    grid = make_grid("shifted", 10, path)
    g = np.array(gammas(SCHEDULES["tv-cfg"](scale=1.7), path, grid))
    _, _, dt = _official_schedules(grid.numpy(), 1.7)
    assert abs(float((g * dt).sum()) - 1.7) < 1e-14  # float32 would leave 4.8e-8
    assert g.max() == pytest.approx(1.7 / np.sum((1 + 1.4 * triangle(10).numpy()) * dt) * 2.4, rel=1e-14)


@pytest.mark.parametrize(("kind", "path_name"), [("shifted", "rf"), ("uniform", "rf"), ("edm", "vp-cosine")])
def test_tv_interval_matches_the_official_interval(kind, path_name):
    path = get_path(path_name)
    grid = make_grid(kind, 20, path)
    _, interval, dt = _official_schedules(rf_s(path, grid).numpy(), 5.0)
    g = gammas(SCHEDULES["tv-interval"](scale=5.0), path, grid)
    np.testing.assert_allclose(g, interval(5.0), rtol=1e-13)
    assert abs(float(np.sum(np.array(g) * dt)) - 5.0) < 1e-12
    assert 1.0 in g and g[0] == 1.0  # outside the interval: unguided
    g = gammas(SCHEDULES["tv-interval"](scale=3.0, s_lo=0.2, s_hi=0.6, normalize=False), path, grid)
    np.testing.assert_allclose(g, interval(3.0, 0.2, 0.6, normalize=False), rtol=0)
    per_sample = SCHEDULES["tv-interval"](scale=[1.0, 5.0])
    values = [per_sample(ctx) for ctx in contexts(path, grid)]
    assert all(float(v[0]) == 1.0 for v in values)
    np.testing.assert_allclose([float(v[1]) for v in values], interval(5.0), rtol=1e-13)


def test_tv_options_validation_names_the_field():
    for params, field in [
        ({"low": -1.0}, "low"),
        ({"high": -0.5}, "high"),
        ({"normalize": "yes"}, "normalize"),
        ({"scale": 0.2}, "scale"),
    ]:
        with pytest.raises(ValueError, match=field):
            SCHEDULES["tv-cfg"](**params)
    SCHEDULES["tv-cfg"](scale=0.2, high=3.0)  # an explicit high needs no 2γ̄ − 1 ≥ 0
    with pytest.raises(ValueError, match="low/high"):
        gammas(SCHEDULES["tv-cfg"](low=0.0, high=0.0), get_path("rf"), make_grid("uniform", 4, get_path("rf")))
    bad = [({"s_lo": 0.8, "s_hi": 0.5}, "s_hi"), ({"s_lo": -0.1}, "s_lo"), ({"normalize": 1}, "normalize")]
    for params, field in bad:
        with pytest.raises(ValueError, match=field):
            SCHEDULES["tv-interval"](**params)
    path = get_path("rf")
    empty = SCHEDULES["tv-interval"](s_lo=0.51, s_hi=0.52)  # a 4-step uniform grid has τ = 1, 0.75, 0.5, 0.25
    with pytest.raises(ValueError, match="s_lo/s_hi"):
        gammas(empty, path, make_grid("uniform", 4, path))
