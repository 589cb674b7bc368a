"""Feedback guidance (fbg, arXiv 2506.06085) against the official code (FelixKoulischer/FBG_using_edm2,
generate_images_FBG.py: ``edm_sampler``, ``update_log_posterior``, ``delta_from_t0``, ``Temp_from_t1``,
``get_sigma_square_tilde``), written out in numpy here; its pinned constants; its per-sample state; and on an exact
target, that γ rises for the samples whose class evidence is weak."""

import itertools
import json
import math
import textwrap

import numpy as np
import pytest
import torch

from guidelab.grids import make_grid
from guidelab.guiders import Predictions, StepContext, build_guider
from guidelab.guiders.feedback import fbg_constants
from guidelab.paths import get_path
from guidelab.sampling import sample
from guidelab.targets import ExactDenoiser, get_target

D64 = torch.float64
VE = get_path("ve")  # α = 1, σ = 80·t: the official code's EDM σ is λ
DIM = 5


# --- the official code in numpy -----------------------------------------------------------------------------------


def official_sigmas(num_steps, sigma_min=0.002, sigma_max=80.0, rho=7.0):
    i = np.arange(num_steps)
    t = (sigma_max ** (1 / rho) + i / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return np.concatenate([t, [0.0]])


def official_constants(num_steps, pi, t_0, t_1, max_guidance, constant_guidance=None, rho=7.0):
    """delta_from_t0, Temp_from_t1 (lambda_ref = 3, alpha = 10) and the minimal log posterior of edm_sampler."""
    t_steps = official_sigmas(num_steps, rho=rho)[:-1]
    s2 = np.zeros(num_steps)
    for i, (t_cur, t_next) in enumerate(itertools.pairwise(t_steps)):
        s2[num_steps - i - 1] = (t_cur**2 - t_next**2) * t_next**2 / t_cur**2
    delta = round(1 / ((1 - t_0) * num_steps) * math.log((1 - pi) * 3.0 / (3.0 - 1)), 4)
    lower = math.floor(t_1 * num_steps)
    a = t_1 * num_steps - lower
    temp = round(abs(2 * ((1 - a) * s2[lower] + a * s2[lower + 1]) / 10.0 * delta), 4)
    if constant_guidance is None:
        log_min = math.log((1 - pi) * max_guidance / (max_guidance - 1))
    else:
        g = constant_guidance
        log_min = math.log((1 - pi) * (max_guidance - g + 1) / (max_guidance - g))
    return delta, temp, log_min


def official_sampler(net, gnet, noise, num_steps, guidance_type, sampling_type, temp, offset, pi, log_min,
                     constant_guidance=1.0, t_start=2.9, t_end=0.5):  # fmt: skip
    """edm_sampler's FBG branches (1st_order_Euler, 2nd_order_Heun), float64; returns x and the γ of every step."""
    t_steps = official_sigmas(num_steps)
    x_next = noise * t_steps[0]
    log_posterior = np.zeros(noise.shape[0])
    gammas = []
    for i, (t_cur, t_next) in enumerate(itertools.pairwise(t_steps)):
        guidance_scale = np.exp(log_posterior) / (np.exp(log_posterior) - (1 - pi))
        if guidance_type == "FBG_CFG":
            guidance_scale = guidance_scale + constant_guidance - 1
        if guidance_type == "FBG_LIG" and t_end < t_cur < t_start:
            guidance_scale = guidance_scale + constant_guidance - 1
        gammas.append(guidance_scale)
        x_cur = x_next
        cond_dx, uncond_dx = net(x_cur, t_cur), gnet(x_cur, t_cur)
        guided = uncond_dx + guidance_scale[:, None] * (cond_dx - uncond_dx)
        x_next = x_cur + (t_next - t_cur) * (x_cur - guided) / t_cur
        if sampling_type == "2nd_order_Heun" and i < num_steps - 1:
            c2, u2 = net(x_next, t_next), gnet(x_next, t_next)
            guided_next = u2 + guidance_scale[:, None] * (c2 - u2)
            x_next = x_cur + (t_next - t_cur) * (0.5 * (x_cur - guided) / t_cur + 0.5 * (x_next - guided_next) / t_next)
        log_posterior = official_update(log_posterior, x_cur, x_next, t_cur, t_next, uncond_dx, cond_dx, temp, offset,
                                        log_min)  # fmt: skip
    return x_next, np.stack(gammas)


def official_update(prev, x_cur, x_next, t_cur, t_next, uncond_dx, cond_dx, temp, offset, log_min):
    var = (t_cur**2 - t_next**2) * t_next**2 / t_cur**2
    mu_u = t_next**2 / t_cur**2 * x_cur + (t_cur**2 - t_next**2) / t_cur**2 * uncond_dx
    mu_c = t_next**2 / t_cur**2 * x_cur + (t_cur**2 - t_next**2) / t_cur**2 * cond_dx
    diff = ((x_next - mu_c) ** 2).sum(1) - ((x_next - mu_u) ** 2).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):  # the last step, onto σ = 0 (its L is never used)
        return np.clip(prev - temp / (2 * var) * diff + offset, log_min, 3.0)


# --- a model no real network would give ---------------------------------------------------------------------------

_RNG = np.random.default_rng(0)
_W = _RNG.normal(size=(2, DIM, DIM)) / math.sqrt(DIM)
_B = _RNG.normal(size=(2, DIM))


def fake_x0(x, sigma, which):
    """x0̂ of pass ``which`` (0 cond, 1 uncond): inconsistent nonlinear maps of (x, σ)."""
    return 2.0 * np.tanh(x @ _W[which] / (1 + sigma) + _B[which] * np.log1p(sigma)) + 0.1 * x / (1 + sigma**2)


class FakeDenoiser:
    prediction = "x0"
    path = VE

    def __call__(self, x, t, cond):
        sigma = 80.0 * t.double().numpy()[:, None]
        xs = x.double().numpy()
        out = np.where((cond.numpy() < 0)[:, None], fake_x0(xs, sigma, 1), fake_x0(xs, sigma, 0))
        return torch.from_numpy(out).to(x.dtype)


def run_fake(guider, solver, n=6, steps=12, seed=3, dtype=D64):
    grid = make_grid("edm", steps, VE)
    return sample(FakeDenoiser(), guider, grid=grid, n=n, shape=(DIM,), cond=0, solver=solver, seed=seed, dtype=dtype,
                  divergence_factor=math.inf)  # fmt: skip  # the official sampler freezes nothing


# --- pins and constants -------------------------------------------------------------------------------------------


def test_the_reported_optimum_on_32_edm_steps_gives_the_pinned_constants():
    grid = make_grid("edm", 32, VE)
    consts = build_guider("fbg").constants(grid, VE)
    assert consts["delta"] == -0.4576
    assert consts["tau"] == 0.0515
    assert consts["log_posterior_min"] == pytest.approx(-6.802395, abs=5e-7)
    delta, temp, log_min = official_constants(32, 0.999, 0.556, 0.429, 10.0)
    assert (delta, temp) == (consts["delta"], consts["tau"])
    assert log_min == pytest.approx(consts["log_posterior_min"], rel=1e-15)


@pytest.mark.parametrize(("steps", "pi", "t0", "t1", "gmax"), [(12, 0.95, 0.5, 0.4, 10.0), (64, 0.99, 0.3, 0.7, 4.0)])
def test_constants_follow_the_official_derivation(steps, pi, t0, t1, gmax):
    ours = fbg_constants(make_grid("edm", steps, VE), VE, pi=pi, t0=t0, t1=t1, gamma_max=gmax)
    delta, temp, log_min = official_constants(steps, pi, t0, t1, gmax)
    assert (ours["delta"], ours["tau"]) == (delta, temp)
    assert ours["log_posterior_min"] == pytest.approx(log_min, rel=1e-15)
    hybrid = fbg_constants(make_grid("edm", steps, VE), VE, pi=pi, t0=t0, t1=t1, gamma_max=gmax, cfg_scale=2.5)
    assert hybrid["log_posterior_min"] == pytest.approx(official_constants(steps, pi, t0, t1, gmax, 2.5)[2], rel=1e-15)


def test_the_official_command_line_defaults_cap_gamma_at_two():
    """π = 0.5, γ_max = 2: L_min = 0 = L_0, so γ starts at its cap 2; only class evidence (L > 0) lowers it."""
    guider = build_guider("fbg", pi=0.5, t0=0.5, t1=0.35, gamma_max=2.0)
    result = run_fake(guider, "euler", steps=16)
    assert guider.constants(result.grid, VE)["log_posterior_min"] == 0.0
    gammas = torch.stack(guider.history)
    assert gammas[0].eq(2.0).all()
    assert gammas.max() <= 2.0
    assert gammas.min() < 1.9  # the fake model's evidence does lower it


# --- the official sampler, step for step ----------------------------------------------------------------------------

CASES = [
    ("FBG_pure", {}, {}),
    ("FBG_pure", {"pi": 0.9, "tau": 0.8, "delta": -0.05}, {}),  # a strong feedback: L moves per sample
    ("FBG_CFG", {"pi": 0.95, "tau": 0.5, "delta": -0.1, "scale": 2.0}, {"constant_guidance": 2.0}),
    (
        "FBG_LIG",
        {"pi": 0.95, "tau": 0.5, "delta": -0.1, "schedule": "interval", "scale": 2.6, "lam_lo": 0.5, "lam_hi": 2.9},
        {"constant_guidance": 2.6, "t_start": 2.9, "t_end": 0.5},
    ),
]


@pytest.mark.parametrize(("kind", "params", "official"), CASES, ids=[c[0] + str(i) for i, c in enumerate(CASES)])
@pytest.mark.parametrize(("solver", "sampling_type"), [("euler", "1st_order_Euler"), ("heun", "2nd_order_Heun")])
def test_whole_runs_match_the_official_sampler(kind, params, official, solver, sampling_type):
    steps, n = 12, 6
    guider = build_guider("fbg", **params)
    result = run_fake(guider, solver, n=n, steps=steps)
    consts = guider.constants(result.grid, VE)
    ref_delta, ref_tau, _ = official_constants(steps, guider.pi, guider.t0, guider.t1, guider.gamma_max)
    assert consts["delta"] == params.get("delta", ref_delta)
    assert consts["tau"] == params.get("tau", ref_tau)
    _, _, log_min = official_constants(steps, guider.pi, 0.5, 0.4, guider.gamma_max, official.get("constant_guidance"))
    x_ref, gammas = official_sampler(
        lambda x, s: fake_x0(x, s, 0), lambda x, s: fake_x0(x, s, 1), first_noise(n, steps), steps, kind,
        sampling_type, consts["tau"], consts["delta"], guider.pi, log_min, **official,
    )  # fmt: skip
    ours = torch.stack(guider.history).numpy()  # γ_FBG; the hybrid adds γ_s − 1
    if kind == "FBG_CFG":
        ours = ours + 1.0
    if kind == "FBG_LIG":
        lam = official_sigmas(steps)[:-1]
        ours = ours + np.where((lam > 0.5) & (lam < 2.9), 1.6, 0.0)[:, None]
    np.testing.assert_allclose(ours, gammas, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(result.x.numpy(), x_ref, rtol=1e-9, atol=1e-9)
    assert result.nfe == 2 * (steps if solver == "euler" else 2 * steps - 1)


_STARTS: dict = {}


def first_noise(n, steps):
    """ξ of guidelab's start x = 80·ξ for seed 3 (read off the first step's state)."""
    key = (n, steps)
    if key not in _STARTS:
        seen = []
        sample(FakeDenoiser(), None, grid=make_grid("edm", steps, VE), n=n, shape=(DIM,), cond=0, seed=3, dtype=D64,
               callback=lambda s: seen.append(s["x"].clone()))  # fmt: skip
        _STARTS[key] = seen[0].numpy() / 80.0
    return _STARTS[key]


# --- the stochastic sampler: the update on the states guidelab's DDIM (η = 1) reached ---------------------------------


def test_ddim_eta_one_updates_as_the_official_stochastic_sampler():
    """ddim η = 1 is the official stochastic kernel; L after each step is the official update on the states reached."""
    steps, n = 12, 6
    guider = build_guider("fbg", pi=0.9, tau=0.8, delta=-0.05)
    grid = make_grid("edm", steps, VE)
    seen = []
    record = lambda s: seen.append((s["x"].numpy(), s["x_next"].numpy()))  # noqa: E731
    sample(FakeDenoiser(), guider, grid=grid, n=n, shape=(DIM,), cond=0, solver="ddim", eta=1.0, seed=4, dtype=D64,
           divergence_factor=math.inf, callback=record)  # fmt: skip
    consts = guider.constants(grid, VE)
    sig = official_sigmas(steps)
    log_posterior = np.zeros(n)
    for i, (x_cur, x_next) in enumerate(seen[:-1]):
        expected = np.exp(log_posterior) / (np.exp(log_posterior) - (1 - guider.pi))
        np.testing.assert_allclose(guider.history[i].numpy(), expected, rtol=1e-12)
        log_posterior = official_update(log_posterior, x_cur, x_next, sig[i], sig[i + 1], fake_x0(x_cur, sig[i], 1),
                                        fake_x0(x_cur, sig[i], 0), consts["tau"], consts["delta"],
                                        consts["log_posterior_min"])  # fmt: skip
    assert max(np.ptp(g.numpy()) for g in guider.history) > 0.01  # per-sample feedback, not a common drift


# --- per-sample state ---------------------------------------------------------------------------------------------


def test_state_is_per_sample_reset_per_run_and_not_touched_by_intermediate_stages():
    guider = build_guider("fbg", pi=0.9, tau=0.8, delta=-0.05)
    both = run_fake(guider, "heun", n=4)
    first = torch.stack(guider.history)
    assert len(guider.history) == 12  # one γ per step: Heun's corrector (stage 1) adds none
    again = run_fake(guider, "heun", n=4)  # the sampler resets L
    torch.testing.assert_close(torch.stack(guider.history), first, rtol=0, atol=0)
    torch.testing.assert_close(again.x, both.x, rtol=0, atol=0)
    for k in range(4):  # a sample's γ does not depend on the others in its batch
        alone = build_guider("fbg", pi=0.9, tau=0.8, delta=-0.05)
        x_k = sample(FakeDenoiser(), alone, grid=make_grid("edm", 12, VE), x_init=first_start(k), solver="heun",
                     cond=0, dtype=D64, divergence_factor=math.inf).x  # fmt: skip
        torch.testing.assert_close(torch.stack(alone.history)[:, 0], first[:, k], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(x_k[0], both.x[k], rtol=1e-12, atol=1e-12)


def first_start(k):
    seen = []
    sample(FakeDenoiser(), None, grid=make_grid("edm", 12, VE), n=4, shape=(DIM,), cond=0, seed=3, dtype=D64,
           callback=lambda s: seen.append(s["x"]))  # fmt: skip
    return seen[0][k : k + 1]


def test_steps_out_of_order_and_a_wrong_batch_are_refused():
    guider = build_guider("fbg")
    grid = make_grid("edm", 8, VE)
    x = torch.randn(3, DIM, dtype=D64)
    guider.reset(3)
    guider.guide(_preds(x), _ctx(grid, 0))
    with pytest.raises(ValueError, match="^fbg: step 2 after step 0"):
        guider.guide(_preds(x), _ctx(grid, 2))
    with pytest.raises(ValueError, match="^fbg: reset for 3"):
        guider.guide(_preds(x[:2]), _ctx(grid, 1))


def _ctx(grid, i, stage=0):
    return StepContext(i, grid.numel() - 1, float(grid[i]), float(VE.lam(grid[i])), grid, VE, stage)


def _preds(x, t=0.5, c=None, u=None):
    c = torch.tanh(x) if c is None else c
    u = 0.5 * torch.sin(x) if u is None else u
    return Predictions({"cond": (c, "x0"), "uncond": (u, "x0")}, x, VE.coefficients(torch.tensor(t, dtype=D64)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_the_update_in_half_precision_follows_float64(dtype):
    """(2, 4, 32, 32) half-precision states and predictions: L after one update is within float16 rounding of the
    float64 update of the same rounded values (the reduction runs in at least float32)."""
    g = torch.Generator().manual_seed(0)
    grid = make_grid("edm", 8, VE)
    shape = (2, 4, 32, 32)
    x0, x1, c0, u0, c1, u1 = (torch.randn(shape, generator=g, dtype=D64) for _ in range(6))
    x0, x1 = x0 * float(VE.lam(grid[3])), x1 * float(VE.lam(grid[4]))
    out = {}
    for dt in (dtype, D64):
        r = {k: v.to(dtype).to(dt) for k, v in dict(x0=x0, x1=x1, c0=c0, u0=u0, c1=c1, u1=u1).items()}
        guider = build_guider("fbg", pi=0.9, tau=0.8, delta=-0.05)
        guider.reset(2)
        guider.prepare(grid, VE)
        guider.guide(_preds(r["x0"], float(grid[3]), r["c0"], r["u0"]), _ctx(grid, 3))  # L starts at 0 here
        step = guider.guide(_preds(r["x1"], float(grid[4]), r["c1"], r["u1"]), _ctx(grid, 4))
        assert step.x0_hat.dtype == dt
        out[dt] = guider.log_posterior
    torch.testing.assert_close(out[dtype], out[D64], rtol=1e-3, atol=1e-3)


# --- passes and network evaluations -------------------------------------------------------------------------------


def test_both_passes_always_run_and_pi_one_is_the_schedule_alone():
    path = get_path("rf")
    grid = make_grid("uniform", 8, path)
    target = get_target("multimodal-2d")
    den = ExactDenoiser(target, path)
    kw = dict(grid=grid, n=16, shape=(2,), cond=0, seed=0)
    assert sample(den, build_guider("fbg"), **kw).nfe == 16
    off = sample(den, build_guider("fbg", pi=1.0), **kw)
    assert off.nfe == 8
    torch.testing.assert_close(off.x, sample(den, None, **kw).x, rtol=0, atol=0)
    interval = dict(schedule="interval", scale=2.0, lam_lo=0.19, lam_hi=1.61)
    hybrid_off = sample(den, build_guider("fbg", pi=1.0, **interval), **kw)
    cfg = sample(den, build_guider("cfg", **interval), **kw)
    assert hybrid_off.nfe == cfg.nfe < 16
    torch.testing.assert_close(hybrid_off.x, cfg.x, rtol=1e-12, atol=1e-12)


def test_bad_parameters_name_the_field():
    for params, field in [({"pi": 0.0}, "pi"), ({"pi": 1.5}, "pi"), ({"t0": 1.0}, "t0"), ({"gamma_max": 1.0},
                          "gamma_max"), ({"tau": -1.0}, "tau"), ({"delta": "x"}, "delta")]:  # fmt: skip
        with pytest.raises(ValueError, match=f"^{field}: "):
            build_guider("fbg", **params)
    grid = make_grid("edm", 8, VE)
    with pytest.raises(ValueError, match="^t1: "):
        build_guider("fbg", t1=0.9).prepare(grid, VE)
    with pytest.raises(ValueError, match="^gamma_max: "):
        build_guider("fbg", scale=3.0, gamma_max=2.5).prepare(grid, VE)


def test_config_round_trips_and_effective_scale_is_the_runs_mean_gamma():
    guider = build_guider("fbg", schedule="interval", scale=2.6, lam_lo=0.48, lam_hi=6.84, t1=0.492)
    config = json.loads(json.dumps(guider.config()))
    assert build_guider(**config).config() == config
    path = get_path("rf")
    grid = make_grid("edm", 16, path)
    before = guider.effective_scale(grid, path)
    assert before == pytest.approx(guider.schedule.mean_scale(grid, path) - 1 + 1 / 0.999)
    result = sample(ExactDenoiser(get_target("multimodal-2d"), path), guider, grid=grid, n=32, shape=(2,), cond=0)
    s = path.rf_time(result.grid)
    gammas = torch.stack(guider.history).mean(dim=1)
    expected = float((gammas * (s[:-1] - s[1:])).sum() / (s[0] - s[-1])) + guider.schedule.mean_scale(grid, path) - 1
    assert guider.effective_scale(result.grid, path) == pytest.approx(expected, rel=1e-12)
    assert guider.effective_scale(result.grid, path) > before


def test_fbg_runs_in_a_sweep_and_reports_its_mean_gamma(tmp_path):
    from guidelab.experiments.config import load_sweep
    from guidelab.experiments.runner import run_sweep
    from guidelab.experiments.store import ResultStore

    text = """
    name: fbg
    targets: [{target: multimodal-2d, conds: [a]}]
    grids: [{kind: edm, steps: 8}]
    solvers: [euler]
    guiders:
      - {name: fbg, params: {pi: 0.99}}
      - {name: fbg, label: fbg-cfg, params: {pi: 0.99, scale: 2.0}}
    seeds: [0]
    n: 64
    metrics: [class_fidelity]
    """
    (tmp_path / "sweep.yaml").write_text(textwrap.dedent(text))
    summary = run_sweep(load_sweep(tmp_path / "sweep.yaml"), tmp_path / "out")
    assert (summary.ran, summary.failed) == (2, 0)
    rows = {r["label"]: r for r in ResultStore(tmp_path / "out" / "results.sqlite").rows()}
    assert {r["nfe"] for r in rows.values()} == {16}
    assert 1 / 0.99 < rows["fbg"]["gamma"] < 10
    assert rows["fbg-cfg"]["gamma"] > rows["fbg"]["gamma"]


# --- on an exact target: γ rises for the samples whose class evidence is weak ----------------------------------------


def _exact_run(**params):
    target = get_target("multimodal-2d")
    grid = make_grid("edm", 32, VE)
    guider = build_guider("fbg", **params)
    states = []
    sample(ExactDenoiser(target, VE), guider, grid=grid, n=256, shape=(2,), cond=0, solver="ddim", eta=1.0, seed=1,
           dtype=D64, callback=lambda s: states.append(s["x"]))  # fmt: skip
    log_post = torch.stack([  # log p(a | x_k), exact, along every trajectory: (N, n)
        target.class_log_posterior(x, torch.full((x.shape[0],), float(grid[k]), dtype=D64), VE)[:, 0]
        for k, x in enumerate(states)
    ])  # fmt: skip
    return guider, torch.stack(guider.history), log_post


def _spearman(a, b):
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def test_untempered_feedback_is_the_exact_class_log_posterior_gained():
    """τ = 1, δ = 0: −D/(2σ̃²) is log p(a | x_next) − log p(a | x_cur) for exact Gaussian kernels, so L tracks the
    exact class evidence gained along each trajectory while the kernels are accurate (λ ≥ 16 on 32 EDM steps), and
    γ is largest exactly where the evidence is weakest."""
    guider, gammas, log_post = _exact_run(pi=0.5, tau=1.0, delta=0.0, gamma_max=100.0)
    L = torch.log(gammas * (1 - guider.pi) / (gammas - 1))
    for k in range(1, 9):
        torch.testing.assert_close(L[k], log_post[k] - log_post[0], rtol=0, atol=0.02)
    for k in (6, 8, 10, 12, 14):
        assert _spearman(gammas[k], log_post[k]) < -0.9, k
    k = 16  # λ ≈ 2.2: every sample with p(a | x) < 1/2 is guided harder than every one with p(a | x) > 0.9
    weak, strong = log_post[k] < math.log(0.5), log_post[k] > math.log(0.9)
    assert weak.sum() >= 5 and strong.sum() >= 20
    assert gammas[k][weak].min() > gammas[k][strong].max()


def test_at_the_reported_optimum_gamma_orders_samples_by_their_class_evidence():
    """The defaults temper the evidence (τ ≈ 0.05) and drift every sample towards γ_max (δ < 0), which all reach by
    step 16; while the class is decided (λ from 17 to 4) γ is still ordered by the exact posterior, per sample."""
    _, gammas, log_post = _exact_run()
    for k in (8, 10, 12, 14):
        assert _spearman(gammas[k], log_post[k]) < -0.95, k
    assert torch.allclose(gammas[20:], torch.tensor(10.0, dtype=D64))
