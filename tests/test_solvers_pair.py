"""Solvers written on the guided pair (docs/methods.md §0).

Oracles: the state-based updates guidelab used before the pair rule (each solver read the state x and, for
DPM++(2M), kept the guided x0̂ as history) are written out below. For a consistent pair (x = α·x0̂ + σ·ε̂) the
pair rule must give the same numbers to rounding, on every path and solver. For inconsistent pairs the
identities of §0 must hold: Euler = DDIM (η = 0) on paths affine in t, and the ancestral step at η = 1 is
DDIM's churn-1 step. DPM-Solver++(2S) at η = 0 is checked against k-diffusion's update, written in VE-cast
coordinates (x/α, λ).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from guidelab.denoiser import NULL_COND
from guidelab.grids import make_grid
from guidelab.guiders import build_guider
from guidelab.noise import NoiseSource
from guidelab.paths import get_path
from guidelab.sampling import SOLVERS, GuidedModel, sample
from guidelab.targets import get_target

PATHS = ("rf", "vp-cosine", "vp-linear", "ve", "ou")
GUIDERS = {
    "cfg": {"scale": 3.0},
    "adamag": {"scale": 3.0},
    "apg": {"scale": 4.0, "eta": 0.0},
    "cfg-zero-star": {"scale": 3.0},
}


def _grid(path_name: str, steps: int = 12):
    path = get_path(path_name)
    t_max = 0.999 if path_name == "vp-linear" else 1.0
    return path, make_grid("geometric" if path_name in ("ve", "ou") else "uniform", steps, path, t_max=t_max)


# --- oracles: the state-based solvers (consistent pairs only) -------------------------------------------


def _coef(path, t):
    c = path.coefficients(torch.tensor(t, dtype=torch.float64))
    return float(c.alpha), float(c.sigma), float(c.d_alpha), float(c.d_sigma)


def oracle(solver, model, x, noise):
    path = model.path
    x0_prev, h_prev = None, None
    for i in range(model.steps):
        t, s = model.t(i), model.t(i + 1)
        out = model(x, i)
        a, sg, da, ds = _coef(path, t)
        a_s, s_s, _, _ = _coef(path, s)
        v = da * out.x0_hat + ds * out.eps_hat
        if solver == "euler":
            x = x + (s - t) * v
        elif solver == "heun":
            x_next = x + (s - t) * v
            if s > 0:
                o2 = model(x_next, i, t=s, stage=1)
                _, _, da2, ds2 = _coef(path, s)
                x_next = x + (s - t) * 0.5 * (v + da2 * o2.x0_hat + ds2 * o2.eps_hat)
            x = x_next
        elif solver == "ddim":
            x = a_s * out.x0_hat + (s_s * out.eps_hat if s > 0 else 0)
        elif solver == "euler-maruyama":
            f = da / a
            g2 = 2 * sg * ds - 2 * f * sg**2
            x = x + (s - t) * (f * x + g2 * out.eps_hat / sg)
            if s > 0:
                x = x + math.sqrt(g2 * (t - s)) * noise(x)
        elif solver == "dpm++2m":
            if s == 0:
                x = a_s * out.x0_hat
            else:
                e = a * s_s / (a_s * sg)
                h = math.log(a_s / s_s) - (math.log(a / sg) if a > 0 else -math.inf)
                d = out.x0_hat
                if x0_prev is not None and math.isfinite(h_prev):
                    d = (1 + h / (2 * h_prev)) * out.x0_hat - h / (2 * h_prev) * x0_prev
                x = s_s * out.eps_hat + a_s * (e * out.x0_hat + (1 - e) * d)
                h_prev = h
            x0_prev = out.x0_hat
    return x


# the reverse SDE is singular at α = 0 (t = 1 on rf and vp-cosine): Euler–Maruyama runs on the other paths
CASES = [
    (p, s)
    for p in PATHS
    for s in ("euler", "heun", "ddim", "euler-maruyama", "dpm++2m")
    if not (s == "euler-maruyama" and p in ("rf", "vp-cosine"))
]


@pytest.mark.parametrize(("path_name", "solver"), CASES)
@pytest.mark.parametrize("guider_name", list(GUIDERS))
def test_consistent_pairs_give_the_state_based_updates(path_name, solver, guider_name):
    target = get_target("multimodal-2d")
    path, grid = _grid(path_name)
    den = target.denoiser(path)
    x_init = float(path.coefficients(grid[0]).sigma) * torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    x_init = x_init.double()
    guider = build_guider(guider_name, **GUIDERS[guider_name])
    got = sample(den, guider, grid=grid, x_init=x_init, cond=0, solver=solver, seed=4, dtype=torch.float64)
    guider.reset(64)
    model = GuidedModel(den, guider, torch.zeros(64, dtype=torch.long), grid)
    want = oracle(solver, model, x_init.clone(), NoiseSource(4))
    assert torch.allclose(got.x, want, rtol=0, atol=1e-12 * max(1.0, float(want.abs().max())))


# --- inconsistent pairs ---------------------------------------------------------------------------------


class Inconsistent:
    """An x0-denoiser whose conditional and unconditional predictions are unrelated smooth functions, so that
    CFG++'s and thresholding's pairs are not consistent with the state."""

    prediction = "x0"

    def __init__(self, path):
        self.path = path
        g = torch.Generator().manual_seed(0)
        self.w_c, self.w_u = torch.randn(3, 3, generator=g, dtype=torch.float64), torch.randn(3, 3, generator=g)

    def __call__(self, x, t, cond):
        lam = self.path.coefficients(t.double()).lam.clamp(max=1e3).reshape(-1, 1).to(x)
        z = x / torch.sqrt(1 + lam**2)
        c = torch.tanh(z @ self.w_c.to(x)) + 0.5
        u = 0.8 * torch.sin(z @ self.w_u.to(x)) - 0.3
        return torch.where((cond == NULL_COND).reshape(-1, 1), u, c)


INCONSISTENT = {
    "cfg++": {"scale": 0.6},
    "dynamic-thresholding": {"scale": 6.0, "percentile": 0.6, "data_range": (-1.0, 1.0)},
    "cfg": {"scale": 3.0},
}


@pytest.mark.parametrize("path_name", ["rf", "ve"])
@pytest.mark.parametrize("guider_name", list(INCONSISTENT))
def test_euler_equals_ddim_on_affine_paths_for_every_pair(path_name, guider_name):
    path = get_path(path_name)
    grid = make_grid("uniform", 10, path, t_max=0.97)
    den = Inconsistent(path)
    runs = [
        sample(
            den,
            build_guider(guider_name, **INCONSISTENT[guider_name]),
            grid=grid,
            n=16,
            shape=(3,),
            cond=0,
            solver=solver,
            seed=2,
            dtype=torch.float64,
        ).x
        for solver in ("euler", "ddim")
    ]
    assert torch.allclose(runs[0], runs[1], rtol=1e-12, atol=1e-12)


def test_cfgpp_euler_on_ve_is_the_official_step_not_the_unconditional_model():
    """The issue's example: one Euler step from σ = 40 to 20 at x = 0, D_c = 1, D_u = 0, λ = 0.5 gives
    D_λ + σ_next·(x − D_u)/σ = 0.5."""

    class Constant:
        prediction = "x0"
        path = get_path("ve", sigma_max=80.0)

        def __call__(self, x, t, cond):
            return torch.where((cond == NULL_COND).reshape(-1, 1), 0.0, 1.0).to(x)

    grid = torch.tensor([0.5, 0.25, 0.0], dtype=torch.float64)  # σ = 40, 20, 0
    for solver in ("euler", "ddim", "dpm++2m", "heun"):
        out = sample(
            Constant(), build_guider("cfg++", scale=0.5), grid=grid, x_init=torch.zeros(1, 1), cond=0, solver=solver
        )
        # the first step gives 0.5 + 20·(0 − 0)/40 = 0.5; the last (onto σ = 0) lands on D_λ = 0.5
        assert float(out.x) == pytest.approx(0.5, abs=1e-6), solver


@pytest.mark.parametrize("path_name", ["vp-cosine", "rf", "ve"])
def test_ancestral_at_full_churn_is_ddim_with_churn_one_and_at_zero_is_ddim(path_name):
    path = get_path(path_name)
    grid = make_grid("uniform", 8, path, t_max=0.95)
    den = Inconsistent(path)
    guider = build_guider("cfg++", scale=0.7)
    kw = dict(grid=grid, n=32, shape=(3,), cond=0, seed=9, dtype=torch.float64)
    for eta in (1.0, 0.0):
        a = sample(den, guider, solver="euler-ancestral", eta=eta, **kw).x
        b = sample(den, guider, solver="ddim", eta=eta, **kw).x
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


def test_dpmpp_2s_at_zero_churn_is_k_diffusions_update():
    """k-diffusion's DPM-Solver++(2S) in VE-cast coordinates x̃ = x/α, λ (t = −log λ):
    x̃₂ = (λ_m/λ)x̃ − expm1(−h/2)·D, x̃' = (λ_next/λ)x̃ − expm1(−h)·D(x̃₂, λ_m), λ_m = √(λ·λ_next)."""
    path = get_path("vp-cosine")
    grid = make_grid("edm", 6, path, t_max=0.97)
    target = get_target("multimodal-2d")
    den = target.denoiser(path)
    x_init = torch.randn(16, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    got = sample(den, None, grid=grid, x_init=x_init, cond=1, solver="dpm++2s-ancestral", eta=0.0, dtype=torch.float64)

    def lam(t):
        a, s, _, _ = _coef(path, t)
        return s / a

    def denoise(x_tilde, lam_):
        t = float(path.t_of_lam(torch.tensor(lam_, dtype=torch.float64)))
        a = _coef(path, t)[0]
        return den(torch.as_tensor(a * x_tilde), torch.full((x_tilde.shape[0],), t), torch.ones(16, dtype=torch.long))

    x = x_init.numpy() / _coef(path, float(grid[0]))[0]
    for i in range(len(grid) - 1):
        lt, ln = lam(float(grid[i])), lam(float(grid[i + 1]))
        d = denoise(x, lt).numpy()
        if ln == 0:
            x = d
            continue
        h = math.log(lt) - math.log(ln)
        lm = math.exp(-(-math.log(lt) + h / 2))
        x2 = (lm / lt) * x - np.expm1(-h / 2) * d
        x = (ln / lt) * x - np.expm1(-h) * denoise(x2, lm).numpy()
    # the VE-cast state x/α is ~20× the state at t = 0.97 (α ≈ 0.047): rounding there reaches ~1e-9
    assert np.allclose(got.x.numpy(), x, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("solver", list(SOLVERS))
def test_every_solver_runs_every_inconsistent_guider_finite(solver):
    path = get_path("vp-linear")
    grid = make_grid("uniform", 6, path, t_max=0.99)
    den = Inconsistent(path)
    for name, params in INCONSISTENT.items():
        out = sample(den, build_guider(name, **params), grid=grid, n=8, shape=(3,), cond=0, solver=solver, seed=1)
        assert torch.isfinite(out.x).all() and out.num_diverged == 0, (solver, name)
