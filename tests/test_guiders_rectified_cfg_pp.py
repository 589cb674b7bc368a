"""Rectified-CFG++ (arXiv 2510.07631; shreshthsaini/Rectified-CFGpp): pins on exact Gaussian velocities, the paper's
and the official code's update written out in numpy on inconsistent random models, NFE, refusals, half precision and
sweeps."""

import itertools
import textwrap

import numpy as np
import pytest
import torch

from guidelab.grids import make_grid
from guidelab.guiders import GUIDERS, build_guider, describe_guiders
from guidelab.paths import get_path
from guidelab.sampling import sample

D64 = torch.float64
X = [0.5, -0.3]
PIN_PAPER = [0.663483, -0.017805]  # γ − 1 = 4.5, κ = 1, t = 0.8 → 0.7
PIN_OFFICIAL = [1.050161, 0.428997]  # w = 4.5 constant, full-step predictor, no noise


def gaussian_velocity(x, t, mean, std):
    """Exact rf velocity E[ε − x0 | x_t] for data N(mean, std²I) on x_t = (1 − t)·x0 + t·ε: with
    V = (1 − t)²std² + t², E[x0|x_t] = m + (1 − t)std²/V·(x_t − (1 − t)m) and E[ε|x_t] = t/V·(x_t − (1 − t)m), so
    v = (t − (1 − t)std²)/V·(x_t − (1 − t)m) − m. Works on numpy arrays and tensors (t broadcastable)."""
    var = (1 - t) ** 2 * std**2 + t**2
    return (t - (1 - t) * std**2) / var * (x - (1 - t) * mean) - mean


class ExactGaussians:
    """Velocity model on rf: cond N((1, 1), 0.5²I), uncond (label −1) N(0, I); counts its calls."""

    prediction = "velocity"

    def __init__(self):
        self.path = get_path("rf")
        self.calls = 0

    def __call__(self, x, t, cond):
        self.calls += 1
        tt = t.to(D64).reshape(-1, *([1] * (x.ndim - 1)))
        xd = x.to(D64)
        vc = gaussian_velocity(xd, tt, torch.ones_like(xd), 0.5)
        vu = gaussian_velocity(xd, tt, torch.zeros_like(xd), 1.0)
        is_cond = (cond >= 0).reshape(-1, *([1] * (x.ndim - 1)))
        return torch.where(is_cond, vc, vu).to(x.dtype)


class RandomModel:
    """An inconsistent random model (no real model gives it): v = tanh(A_c·x)·(1 + t) + b_c·t², per label."""

    def __init__(self, path="rf", prediction="velocity", dim=3, seed=0):
        g = np.random.default_rng(seed)
        self.path, self.prediction = get_path(path), prediction
        self.a = {k: g.normal(size=(dim, dim)) for k in (0, -1)}
        self.b = {k: g.normal(size=dim) for k in (0, -1)}

    def numpy(self, x, t, label):
        return np.tanh(x @ self.a[label].T) * (1 + t) + self.b[label] * t**2

    def __call__(self, x, t, cond):
        out = [self.numpy(xi.double().numpy(), float(ti), int(ci)) for xi, ti, ci in zip(x, t, cond, strict=True)]
        return torch.tensor(np.stack(out), dtype=x.dtype)


def run(model, guider, grid, x, solver="euler", dtype=D64, **kw):
    grid = torch.as_tensor(grid, dtype=D64)
    return sample(model, guider, grid=grid, x_init=torch.as_tensor(x, dtype=dtype), cond=0, dtype=dtype,
                  solver=solver, **kw)  # fmt: skip


# --- pins -------------------------------------------------------------------------------------------------------


def test_the_closed_form_velocity_is_the_exact_one():
    """Against E[ε − x0 | x_t] by Monte Carlo-free algebra: the joint Gaussian's regression at two points."""
    m, s, t = np.array([1.0, 1.0]), 0.5, 0.8
    # Cov(x0, x_t) = (1 − t)s², Var x_t = V; Cov(ε, x_t) = t
    var = (1 - t) ** 2 * s**2 + t**2
    x = np.array(X)
    x0 = m + (1 - t) * s**2 / var * (x - (1 - t) * m)
    eps = t / var * (x - (1 - t) * m)
    np.testing.assert_allclose(gaussian_velocity(x, t, m, s), eps - x0, rtol=1e-14)
    np.testing.assert_allclose((1 - t) * x0 + t * eps, x, rtol=1e-14)  # E[x_t | x_t] = x_t


def test_paper_pin_on_exact_gaussians():
    model = ExactGaussians()
    result = run(model, build_guider("rectified-cfg++", scale=5.5, kappa=1.0), [0.8, 0.7], [X])
    np.testing.assert_allclose(result.x[0].numpy(), PIN_PAPER, atol=5e-7)
    assert result.nfe == 3 and model.calls == 2  # cond at x_t; cond + uncond batched at the predictor point


def test_official_variant_pin_on_exact_gaussians():
    guider = build_guider("rectified-cfg++", scale=5.5, variant="official", predictor_noise=0.0)
    result = run(ExactGaussians(), guider, [0.8, 0.7], [X])
    np.testing.assert_allclose(result.x[0].numpy(), PIN_OFFICIAL, atol=5e-7)
    assert result.nfe == 3  # the official loop's discarded unconditional pass at x_t is not made


def test_pins_need_the_sigma_time_convention():
    """The pins hold with t = 1 noise (the paper's t is the flow σ) and w read at the step's start: the other readings
    give other numbers."""
    vc = lambda x, t: gaussian_velocity(x, t, np.ones(2), 0.5)  # noqa: E731
    vu = lambda x, t: gaussian_velocity(x, t, np.zeros(2), 1.0)  # noqa: E731
    x, t, dt = np.array(X), 0.8, -0.1
    v0 = vc(x, t)
    xp = x + dt / 2 * v0
    for w in (4.5 * (1 - t), 4.5 * t, 4.5 * (1 - (t + dt / 2))):
        out = x + dt * (v0 + w * (vc(xp, t + dt / 2) - vu(xp, t + dt / 2)))
        assert np.allclose(out, PIN_PAPER, atol=5e-7) == (w == 4.5 * (1 - t))


# --- the rules written out in numpy, on an inconsistent random model ------------------------------------------


def numpy_paper(model, grid, x, w_extra, kappa):
    for t, t_next in itertools.pairwise(grid):
        dt = t_next - t
        w = w_extra * (1 - t) ** kappa
        out = []
        for xi in x:
            v0 = model.numpy(xi, t, 0)
            if w == 0:
                out.append(xi + dt * v0)
                continue
            xp, tm = xi + dt / 2 * v0, t + dt / 2
            out.append(xi + dt * (v0 + w * (model.numpy(xp, tm, 0) - model.numpy(xp, tm, -1))))
        x = np.stack(out)
    return x


def numpy_official(model, grid, x, true_cfg):
    """rect-cfg-SD3-pipeline/pipeline.py's loop without predictor noise: timesteps = 1000·σ, ``dt`` in σ units,
    ``x_pred = latents + dt·v_c``, corrector at timestep ``t + dt`` (σ + dt/1000), Euler step with the sum."""
    for sigma, sigma_next in itertools.pairwise(grid):
        dt = sigma_next - sigma
        timestep = 1000 * sigma
        out = []
        for xi in x:
            v_text = model.numpy(xi, timestep / 1000, 0)
            x_pred = xi + dt * v_text
            t2 = (timestep + dt) / 1000
            v = v_text + true_cfg * (model.numpy(x_pred, t2, 0) - model.numpy(x_pred, t2, -1))
            out.append(xi + dt * v)
        x = np.stack(out)
    return x


@pytest.mark.parametrize("solver", ["euler", "ddim"])
@pytest.mark.parametrize("kappa", [1.0, 0.0, 2.5])
def test_paper_rule_matches_numpy_on_random_models(solver, kappa):
    model = RandomModel(seed=1)
    grid = make_grid("uniform", 6, model.path).numpy()
    x = np.random.default_rng(2).normal(size=(4, 3))
    guider = build_guider("rectified-cfg++", scale=3.5, kappa=kappa)
    result = run(model, guider, grid, x, solver=solver)
    np.testing.assert_allclose(result.x.numpy(), numpy_paper(model, grid, x, 2.5, kappa), rtol=1e-12, atol=1e-12)
    assert result.nfe == (3 * 6 if kappa == 0 else 1 + 3 * 5)  # w = 0 at t = 1 where κ > 0: one evaluation


def test_official_variant_matches_numpy_on_random_models():
    model = RandomModel(seed=3)
    grid = make_grid("uniform", 5, model.path, t_max=0.97).numpy()
    x = np.random.default_rng(4).normal(size=(3, 3))
    guider = build_guider("rectified-cfg++", scale=5.5, variant="official", predictor_noise=0.0)
    result = run(model, guider, grid, x)
    np.testing.assert_allclose(result.x.numpy(), numpy_official(model, grid, x, 4.5), rtol=1e-12, atol=1e-12)
    assert result.nfe == 15


def test_official_predictor_noise_is_seeded_and_acts():
    model = RandomModel(seed=3)
    grid = make_grid("uniform", 4, model.path, t_max=0.97)
    x = np.random.default_rng(4).normal(size=(3, 3))
    runs = [run(model, build_guider("rectified-cfg++", variant="official", seed=s), grid, x).x for s in (0, 0, 1)]
    clean = run(model, build_guider("rectified-cfg++", variant="official", predictor_noise=0.0), grid, x).x
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])
    assert 0 < float((runs[0] - clean).abs().max()) < 0.1  # σ_n = 0.005 by default


def test_any_path_steps_with_the_path_velocity():
    """On vp-cosine (an x0 model) Euler gives x_t + Δt·v̂ with v the path's dx/dt = α'·x0̂ + σ'·ε̂ and the weight
    at the rectified-flow time s = σ/(α + σ)."""
    model = RandomModel(path="vp-cosine", prediction="x0", seed=5)
    path = model.path
    t, t_next = 0.6, 0.45
    x = np.random.default_rng(6).normal(size=(2, 3))

    def vel(xi, tt, label):
        c = path.coefficients(torch.tensor(tt, dtype=D64))
        a, s, da, ds = (float(v) for v in (c.alpha, c.sigma, c.d_alpha, c.d_sigma))
        x0 = model.numpy(xi, tt, label)
        return da * x0 + ds * (xi - a * x0) / s

    c = path.coefficients(torch.tensor(t, dtype=D64))
    s_rf = float(c.sigma / (c.alpha + c.sigma))
    dt, tm = t_next - t, t + (t_next - t) / 2
    want = []
    for xi in x:
        v0 = vel(xi, t, 0)
        xp = xi + dt / 2 * v0
        want.append(xi + dt * (v0 + 2.0 * (1 - s_rf) * (vel(xp, tm, 0) - vel(xp, tm, -1))))
    result = run(model, build_guider("rectified-cfg++", scale=3.0), [t, t_next], x)
    np.testing.assert_allclose(result.x.numpy(), np.stack(want), rtol=1e-10, atol=1e-10)


# --- NFE, scales, refusals --------------------------------------------------------------------------------------


def test_nfe_counts_every_evaluation_and_skips_unguided_steps():
    model = ExactGaussians()
    grid = make_grid("uniform", 8, model.path)  # t_0 = 1: w = 0 there for κ = 1
    x = torch.randn(5, 2, dtype=D64, generator=torch.Generator().manual_seed(0))
    assert run(model, build_guider("rectified-cfg++", scale=3.0), grid, x).nfe == 1 + 3 * 7
    assert run(model, build_guider("rectified-cfg++", scale=3.0, kappa=0.0), grid, x).nfe == 3 * 8
    assert run(model, build_guider("rectified-cfg++", scale=1.0), grid, x).nfe == 8
    window = build_guider("rectified-cfg++", schedule="negative-switch", scale=3.0, scale_late=1.0, p_switch=0.5)
    assert run(model, window, grid, x).nfe == 1 + 3 * 3 + 4  # guided steps 1..3 (step 0: w = 0), then γ = 1


def test_per_sample_scales_act_per_sample():
    model = RandomModel(seed=7)
    grid = make_grid("uniform", 4, model.path, t_max=0.9)
    x = np.random.default_rng(8).normal(size=(3, 3))
    both = run(model, build_guider("rectified-cfg++", scale=[1.0, 3.0, 6.0]), grid, x).x
    for i, g in enumerate([1.0, 3.0, 6.0]):
        alone = run(model, build_guider("rectified-cfg++", scale=g), grid, x[i : i + 1]).x
        torch.testing.assert_close(both[i : i + 1], alone, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("solver", "eta", "field"), [
    ("heun", None, "solver"), ("dpm++2m", None, "solver"), ("euler-maruyama", None, "solver"),
    ("euler-ancestral", None, "solver"), ("dpm++2s-ancestral", None, "solver"), ("ddim", 0.5, "eta"),
])  # fmt: skip
def test_other_solvers_are_refused_before_any_evaluation(solver, eta, field):
    model = ExactGaussians()
    grid = make_grid("uniform", 4, model.path, t_max=0.99)
    with pytest.raises(ValueError, match=f"^{field}: ") as err:
        run(model, build_guider("rectified-cfg++"), grid, [X], solver=solver, eta=eta)
    assert "\n" not in str(err.value)
    assert model.calls == 0


@pytest.mark.parametrize(("params", "field"), [
    ({"kappa": -1.0}, "kappa"), ({"variant": "fast"}, "variant"), ({"predictor_noise": -0.1}, "predictor_noise"),
    ({"seed": 1.5}, "seed"), ({"scale": "x"}, "scale"),
])  # fmt: skip
def test_bad_parameters_name_the_field(params, field):
    with pytest.raises(ValueError, match=f"^{field}: "):
        build_guider("rectified-cfg++", **params)


def test_without_the_evaluate_callback_it_refuses_naming_the_guider():
    from guidelab.guiders import Predictions, StepContext

    path = get_path("rf")
    grid = torch.tensor([1.0, 0.5, 0.0], dtype=D64)
    ctx = StepContext(1, 2, 0.5, 1.0, grid, path)
    x = torch.zeros(1, 2, dtype=D64)
    preds = Predictions({"cond": (x, "velocity")}, x, path.coefficients(grid[1]).expand_as(x))
    guider = build_guider("rectified-cfg++")
    assert [p.name for p in guider.passes(ctx)] == ["cond"]
    with pytest.raises(ValueError, match="^guider: 'rectified-cfg\\+\\+' evaluates the model"):
        guider.guide(preds, ctx)


# --- precision, registry, sweeps --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize(("x_scale", "tolerance"), [(1.0, 4), (300.0, 16)], ids=["unit", "large"])
def test_half_precision_follows_float64(dtype, x_scale, tolerance):
    """(2, 16, 64, 64) states in float16/bfloat16, 8 steps: finite, and within a few machine epsilons of the float64
    run from the same rounded start (measured: ≈ 2 eps at unit scale, where CFG gives ≈ 1; ≈ 5–9 eps from a start
    300 times too large, where CFG gives ≈ 7–10: the state's own rounding then dominates). The rule runs in
    float32; only the predictor point is rounded to the network's dtype."""
    model = ExactGaussians()
    grid = make_grid("uniform", 8, model.path, t_max=0.99)
    x = x_scale * torch.randn(2, 16, 64, 64, dtype=D64, generator=torch.Generator().manual_seed(0))
    for params in ({"scale": 5.5}, {"scale": 5.5, "kappa": 0.0}):
        guider = build_guider("rectified-cfg++", **params)
        half = run(model, guider, grid, x.to(dtype), dtype=dtype, divergence_factor=float("inf"))
        ref = run(model, guider, grid, x.to(dtype).double(), divergence_factor=float("inf"))
        assert half.x.dtype == dtype and torch.isfinite(half.x).all()
        error = float((half.x.double() - ref.x).abs().max() / ref.x.abs().max())
        assert error <= tolerance * torch.finfo(dtype).eps, (params, error)


def test_registered_described_and_round_trips():
    import json

    assert "rectified-cfg++" in GUIDERS
    row = {r["name"]: r for r in describe_guiders()}["rectified-cfg++"]
    assert row["source"] == "arXiv 2510.07631" and row["space"] == "velocity"
    assert row["parameters"]["scale"] == 5.5 and row["parameters"]["kappa"] == 1.0
    guider = build_guider("rectified-cfg++", scale=3.0, variant="official", predictor_noise=0.01, seed=4)
    again = build_guider(**json.loads(json.dumps(guider.config())))
    assert again.config() == guider.config()
    path = get_path("rf")
    assert guider.effective_scale(make_grid("uniform", 6, path), path) == 3.0


def test_runs_in_a_sweep(tmp_path):
    from guidelab.experiments.config import load_sweep
    from guidelab.experiments.runner import run_sweep
    from guidelab.experiments.store import ResultStore

    text = """
    name: rcfg
    targets:
      - {target: multimodal-2d, conds: [a]}
    grids: [{kind: uniform, steps: 6}]
    solvers: [euler]
    guiders:
      - {name: rectified-cfg++, params: {scale: 3}}
      - {name: cfg++, params: {scale: 0.6}}
    seeds: [0]
    n: 32
    metrics: [energy_distance]
    """
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(textwrap.dedent(text))
    summary = run_sweep(load_sweep(sweep), tmp_path / "out")
    assert (summary.ran, summary.failed) == (2, 0)
    frame = ResultStore(tmp_path / "out" / "results.sqlite").frame()
    row = frame[frame.label == "rectified-cfg++"].iloc[0]
    assert row["gamma"] == 3.0 and row["nfe"] == 1 + 3 * 5
