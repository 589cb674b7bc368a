"""Feedback guidance (fbg, arXiv 2506.06085) against the official code (FelixKoulischer/FBG_using_edm2,
generate_images_FBG.py: ``edm_sampler``, ``update_log_posterior``, ``delta_from_t0``, ``Temp_from_t1``,
``get_sigma_square_tilde``), written out in numpy here; its pinned constants; its per-sample state; and on an exact
target, that γ rises for the samples whose class evidence is weak."""

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
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:], strict=True)):
        s2[num_steps - i - 1] = (t_cur**2 - t_next**2) * t_next**2 / t_cur**2
    delta = round(1 / ((1 - t_0) * num_steps) * math.log((1 - pi) * 3.0 / (3.0 - 1)), 4)
    lower = int(math.floor(t_1 * num_steps))
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
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:], strict=True)):
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
    ("FBG_LIG", {"pi": 0.95, "tau": 0.5, "delta": -0.1, "schedule": "interval", "scale": 2.6, "lam_lo": 0.5,
                 "lam_hi": 2.9}, {"constant_guidance": 2.6, "t_start": 2.9, "t_end": 0.5}),  # fmt: skip
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
