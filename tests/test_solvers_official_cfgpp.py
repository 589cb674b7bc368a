"""CFG++ on every solver it shares with the official code, pinned to the official update rules.

The references below are written here in numpy from reading CFGpp-diffusion/CFGpp (``latent_diffusion.py``):

- ``ddim``: ``BaseDDIMCFGpp.sample`` (``ddim_cfg++``): z0 = (z − √(1−ᾱ)·ε_λ)/√ᾱ, z' = √ᾱ'·z0 + √(1−ᾱ')·ε_u;
- ``euler``: ``EulerCFGppSolver.sample`` (``euler_cfg++``): x' = D_λ + σ'·(x − D_u)/σ;
- ``euler-ancestral``: ``EulerAncestralCFGppSolver.sample`` (``euler_a_cfg++``): x' = D_λ + σ_down·(x − D_u)/σ
  + σ_up·ξ (the official code fixes η = 1; other η use k-diffusion's ``get_ancestral_step``, as ComfyUI);
- ``dpm++2m``: ``DPMpp2mCFGppSolver.sample`` (``dpm++_2m_cfg++``): x' = D_λ − e^{−h}·D_u + e^{−h}·x
  − expm1(−h)·(D_λ − D_u,prev)/(2r), Euler on the first and the last step (ComfyUI's ``sample_dpmpp_2m_cfg_pp``
  is the same rule). The difference is the current *guided* D_λ minus the previous *unconditional* D_u; guidelab
  used D_u − D_u,prev before these tests (0.18 off at λ = 0.3, 0.37 at λ = 0.7, on every path);
- ``dpm++2s-ancestral``: three forms that differ (see ``test_dpmpp_2s_forms_differ``): the official
  ``DPMpp2sAncestralCFGppSolver.sample`` (``dpm++_2s_a_cfg++``), ComfyUI's original
  ``sample_dpmpp_2s_ancestral_cfg_pp`` (steps from ``x + D_λ − D_u``, the one guidelab documents and follows) and
  ComfyUI's later one (as at commit 02159d8: the unconditional 2S step, then ``+ (D_λ − D_u)``).

Variables. The official k-diffusion-style samplers run an ε-model (SD, VP: α = √ᾱ, σ = √(1−ᾱ)) on the VE-cast
state x̃ = x/α at noise level σ_ve = σ/α (guidelab's λ), feeding the network x̃/√(σ_ve² + 1) (``calculate_input``).
The references do the same on every path: x̃ = x/α_t, σ_ve = λ(t) of guidelab's path at the grid times, and the
final x̃ (at t = 0, α = 1) is the sample. The official code's λ ("cfg_guidance") forms D_λ = x̃ − σ·(ε_u + λ(ε_c
− ε_u)) = D_u + λ(D_c − D_u) and D_u = x̃ − σ·ε_u.

The denoiser is synthetic: D_c and D_u are unrelated smooth functions of (x̃/√(σ² + 1), log σ), so no single model
is consistent with CFG++'s pair (x0̂_λ, ε̂_u). Stochastic steps draw their noise from a
:class:`~guidelab.noise.NoiseSource` with guidelab's seed, in guidelab's order (one draw per step that adds noise).

Documented differences tested explicitly: λ = 1 is unguided in guidelab (the conditional pair (x0̂_c, ε̂_c)), not
the official (D_c, ε_u); guidelab's ``euler`` is Euler on the probability-flow ODE in t, which is the official
(VE-cast) Euler on paths affine in t (rf, ve) only; on VP paths the official Euler step is guidelab's ``ddim``.
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
from guidelab.sampling import sample

SEED = 11
N, DIM = 8, 3
STEPS = 6
SIGMA_MIN, SIGMA_MAX = 0.0292, 14.6146  # SD 1.5's σ range (√((1−ᾱ)/ᾱ) of its 1000-step schedule)
PATHS = ("ve", "rf", "vp-cosine", "vp-linear")
KDIFF = ("euler", "euler-ancestral", "dpm++2m", "dpm++2s-ancestral")

_rng = np.random.default_rng(20240611)
A_C, A_U = _rng.normal(size=(DIM, DIM)), _rng.normal(size=(DIM, DIM))
B_C, B_U = _rng.normal(size=DIM), _rng.normal(size=DIM)


# --- the synthetic model, in the official variables ---------------------------------------------------------------


def denoised(x_ve: np.ndarray, sigma: np.ndarray | float, cond: np.ndarray | bool) -> np.ndarray:
    """D(x̃, σ) of the conditional (``cond``) or unconditional model: x̃ is VE-cast (n, DIM), σ = λ (n,) or scalar."""
    sigma = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (x_ve.shape[0],))[:, None]
    z = x_ve / np.sqrt(sigma**2 + 1)  # the network input, as calculate_input
    s = np.log(sigma)
    d_c = np.tanh(z @ A_C + 0.3 * s * B_C) + 0.2
    d_u = 0.8 * np.sin(z @ A_U + 0.3 * s * B_U) - 0.3
    return np.where(np.broadcast_to(np.asarray(cond), (x_ve.shape[0],))[:, None], d_c, d_u)


class Synthetic:
    """guidelab's view of the same model on ``path``: an x0- or ε-predictor of x_t = α·x0 + σ·ε (float64 inside)."""

    def __init__(self, path, prediction: str):
        self.path, self.prediction = path, prediction

    def __call__(self, x, t, cond):
        c = self.path.coefficients(t.double())
        a, s = c.alpha.reshape(-1, 1), c.sigma.reshape(-1, 1)
        x64 = x.double()
        d = torch.from_numpy(denoised((x64 / a).numpy(), (s / a).reshape(-1).numpy(), (cond != NULL_COND).numpy()))
        out = d if self.prediction == "x0" else (x64 - a * d) / s
        return out.to(x.dtype)


def pair(x_ve, sigma, lam, guidelab_unguided=False):
    """(D_λ, D_u) at (x̃, σ) as the official ``kdiffusion_x_to_denoised``; ``guidelab_unguided``: both from the
    conditional model (guidelab's λ = 1)."""
    d_c = denoised(x_ve, sigma, True)
    if guidelab_unguided:
        return d_c, d_c
    d_u = denoised(x_ve, sigma, False)
    return d_u + lam * (d_c - d_u), d_u


# --- grids --------------------------------------------------------------------------------------------------------


def karras_sigmas(n: int) -> np.ndarray:
    """The official ``get_sigmas_karras`` (ρ = 7, a ramp of n points that stops one step short of σ_min) + 0."""
    ramp = np.linspace(0, 1, n + 1)[:-1]
    lo, hi = SIGMA_MIN ** (1 / 7), SIGMA_MAX ** (1 / 7)
    return np.append((hi + ramp * (lo - hi)) ** 7, 0.0)


def grid_for(path, kind: str) -> torch.Tensor:
    """guidelab times: the official Karras σ's mapped through λ = σ_ve (``kind='karras'``), or DDIM's uniform grid in
    t from λ = σ_max (``kind='uniform'``)."""
    if kind == "karras":
        return torch.cat([path.t_of_lam(torch.tensor(karras_sigmas(STEPS)[:-1])), torch.zeros(1, dtype=torch.float64)])
    t_max = float(path.t_of_lam(torch.tensor(SIGMA_MAX, dtype=torch.float64)))
    return make_grid("uniform", STEPS, path, t_max=t_max)


def coef(path, t: float) -> tuple[float, float]:
    c = path.coefficients(torch.tensor(t, dtype=torch.float64))
    return float(c.alpha), float(c.sigma)


# --- the official update rules (numpy, float64) -------------------------------------------------------------------


def ancestral(sigma_from, sigma_to, eta):
    """k-diffusion's / the official ``get_ancestral_step``."""
    if not eta:
        return sigma_to, 0.0
    up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    return (sigma_to**2 - up**2) ** 0.5, up


class Draws:
    """guidelab's step noise: the same NoiseSource stream, one (N, DIM) draw per noisy step, in float64."""

    def __init__(self, seed: int):
        self.source = NoiseSource(seed)

    def __call__(self) -> np.ndarray:
        return self.source(torch.empty(N, DIM, dtype=torch.float64)).numpy()


def official_ddim(path, grid, x, lam, unguided=False):
    """``BaseDDIMCFGpp.sample`` on (α, σ) = (√ᾱ, √(1−ᾱ)): z0t from the guided ε, renoise with ε_u. The sample is
    the last z0t (the last step lands on α = 1, σ = 0)."""
    for i in range(len(grid) - 1):
        a, s = coef(path, grid[i])
        a_next, s_next = coef(path, grid[i + 1])
        d_lam, d_u = pair(x / a, s / a, lam, unguided)
        eps_u, eps_lam = (x - a * d_u) / s, (x - a * d_lam) / s
        z0t = (x - s * eps_lam) / a
        x = a_next * z0t + s_next * eps_u
    return x


def official_kdiff(solver, sigmas, x, lam, *, eta=1.0, draws=None, unguided=False, form="official"):
    """The official (VE-cast) samplers on x̃ from noise levels ``sigmas`` (…, 0); ``form`` picks the 2S variant."""
    old_d_u = None
    for i in range(len(sigmas) - 1):
        sig, sig_next = sigmas[i], sigmas[i + 1]
        d_lam, d_u = pair(x, sig, lam, unguided)
        if solver == "euler":  # EulerCFGppSolver
            x = d_lam + (x - d_u) / sig * sig_next
        elif solver == "euler-ancestral":  # EulerAncestralCFGppSolver
            down, up = ancestral(sig, sig_next, eta)
            x = d_lam + (x - d_u) / sig * down
            if sig_next > 0 and up > 0:
                x = x + draws() * up
        elif solver == "dpm++2m":  # DPMpp2mCFGppSolver
            h = math.log(sig) - (math.log(sig_next) if sig_next > 0 else -math.inf)
            if old_d_u is None or sig_next == 0:
                x = d_lam + (x - d_u) / sig * sig_next
            else:
                r = (math.log(sigmas[i - 1]) - math.log(sig)) / h
                x = d_lam - math.exp(-h) * d_u - math.expm1(-h) * (d_lam - old_d_u) / (2 * r) + math.exp(-h) * x
            old_d_u = d_u
        elif solver == "dpm++2s-ancestral":
            down, up = ancestral(sig, sig_next, eta)
            if down == 0:
                x = d_lam + (x - d_u) / sig * down
            else:
                h = math.log(sig) - math.log(down)  # t_next − t with t = −log σ
                sig_mid = math.exp(-(-math.log(sig) + h / 2))
                if form == "official":  # DPMpp2sAncestralCFGppSolver
                    x2 = (sig_mid / sig) * x - math.expm1(-h / 2) * d_u
                    d_lam2, d_u2 = pair(x2, sig_mid, lam, unguided)
                    x = d_lam2 - math.exp(-h) * d_u2 + (down / sig) * x
                elif form == "comfy-original":  # ComfyUI's first sample_dpmpp_2s_ancestral_cfg_pp
                    shifted = x + (d_lam - d_u)
                    x2 = (sig_mid / sig) * shifted - math.expm1(-h / 2) * d_lam
                    d_lam2, _ = pair(x2, sig_mid, lam, unguided)
                    x = (down / sig) * shifted - math.expm1(-h) * d_lam2
                else:  # ComfyUI's later one (02159d8): the unconditional 2S step, then the first D_λ − D_u
                    x2 = (sig_mid / sig) * x - math.expm1(-h / 2) * d_u
                    _, d_u2 = pair(x2, sig_mid, lam, unguided)
                    x = (down / sig) * x - math.expm1(-h) * d_u2 + (d_lam - d_u)
            if sig_next > 0 and up > 0:
                x = x + draws() * up
        else:
            raise AssertionError(solver)
    return x


def reference(solver, path, grid, x_init, lam, *, eta=1.0, unguided=False, form="comfy-original"):
    """The official rule for ``solver`` on guidelab's ``path`` and ``grid`` from ``x_init`` (float64 numpy)."""
    times = [float(t) for t in grid]
    if solver == "ddim":
        return official_ddim(path, times, x_init, lam, unguided)
    sigmas = [s / a if s > 0 else 0.0 for a, s in (coef(path, t) for t in times)]
    x_ve = x_init / coef(path, times[0])[0]
    return official_kdiff(solver, sigmas, x_ve, lam, eta=eta, draws=Draws(SEED), unguided=unguided, form=form)


def x_start(path, grid, dtype=torch.float64) -> torch.Tensor:
    """The official start √(σ² + 1)·ξ on x̃, as x = α·x̃, rounded to ``dtype``."""
    a, s = coef(path, float(grid[0]))
    xi = torch.randn(N, DIM, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    return (a * math.sqrt((s / a) ** 2 + 1) * xi).to(dtype)


def run(solver, path, grid, x_init, lam, prediction="x0", eta=None):
    den = Synthetic(path, prediction)
    guider = build_guider("cfg++", scale=lam)
    out = sample(den, guider, grid=grid, x_init=x_init, cond=0, solver=solver, seed=SEED, eta=eta, dtype=x_init.dtype)
    assert out.num_diverged == 0
    return out.x.double().numpy()


def cases():
    for solver in ("ddim", *KDIFF):
        for path_name in PATHS:
            if solver == "euler" and path_name.startswith("vp"):
                continue  # guidelab's Euler is in t: the official (VE-cast) Euler only on affine paths (see below)
            for eta in (0.0, 1.0) if solver in ("euler-ancestral", "dpm++2s-ancestral") else (None,):
                yield solver, path_name, eta


def grid_kind(solver):
    return "uniform" if solver == "ddim" else "karras"


# --- float64: the official rule to rounding -----------------------------------------------------------------------


@pytest.mark.parametrize("prediction", ["x0", "eps"])
@pytest.mark.parametrize("lam", [0.0, 0.3, 0.7])
@pytest.mark.parametrize(("solver", "path_name", "eta"), list(cases()))
def test_cfgpp_is_the_official_rule_in_float64(solver, path_name, eta, lam, prediction):
    path = get_path(path_name)
    grid = grid_for(path, grid_kind(solver))
    x_init = x_start(path, grid)
    got = run(solver, path, grid, x_init, lam, prediction, eta)
    want = reference(solver, path, grid, x_init.numpy(), lam, eta=1.0 if eta is None else eta)
    err = np.abs(got - want).max()
    assert err < 1e-9 * max(1.0, np.abs(want).max()), err


def test_grids_are_the_official_sigmas():
    """The Karras grid maps back to the official σ's through each path's λ (the references read λ(t))."""
    for path_name in PATHS:
        path = get_path(path_name)
        grid = grid_for(path, "karras")
        lam = [coef(path, float(t)) for t in grid[:-1]]
        assert np.allclose([s / a for a, s in lam], karras_sigmas(STEPS)[:-1], rtol=1e-12, atol=0)


# --- float32 / float16 / bfloat16: the float64 rule to the dtype's rounding ---------------------------------------


@pytest.mark.parametrize("prediction", ["x0", "eps"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("solver", "path_name", "eta"), list(cases()))
def test_cfgpp_low_precision_runs_stay_within_rounding_of_the_official_rule(solver, path_name, eta, dtype, prediction):
    """The state, the guided pair and the time the model sees are in ``dtype`` (the model itself computes in float64
    and rounds its output); the reference starts from the same rounded x and runs in float64. Measured: ≤ 4 ulp of the
    O(1) result in every case (float32 ≤ 5e-7, float16 ≤ 3.4e-3, bfloat16 ≤ 2.4e-2), so 10 ulp is the bound."""
    path = get_path(path_name)
    grid = grid_for(path, grid_kind(solver))
    x_init = x_start(path, grid, dtype)
    got = run(solver, path, grid, x_init, 0.7, prediction, eta)
    want = reference(solver, path, grid, x_init.double().numpy(), 0.7, eta=1.0 if eta is None else eta)
    err = np.abs(got - want).max()
    assert err < 10 * torch.finfo(dtype).eps * max(1.0, np.abs(want).max()), err


# --- documented differences ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("solver", "path_name", "eta"), list(cases()))
def test_lam_one_is_the_conditional_pair_not_the_official_cond_eps_u(solver, path_name, eta):
    """λ = 1 is unguided in guidelab, as for every guider: the conditional pair (x0̂_c, ε̂_c) from one evaluation,
    i.e. the official rule run on the conditional model alone; the official code at cfg_guidance = 1 still renoises
    with ε_u."""
    path = get_path(path_name)
    grid = grid_for(path, grid_kind(solver))
    x_init = x_start(path, grid)
    got = run(solver, path, grid, x_init, 1.0, "x0", eta)
    kw = dict(eta=1.0 if eta is None else eta)
    unguided = reference(solver, path, grid, x_init.numpy(), 1.0, unguided=True, **kw)
    official = reference(solver, path, grid, x_init.numpy(), 1.0, **kw)
    assert np.abs(got - unguided).max() < 1e-9
    assert np.abs(got - official).max() > 0.05


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("path_name", PATHS)
def test_dpmpp_2s_forms_differ(path_name, eta):
    """Three DPM++(2S) ancestral CFG++ steps exist; guidelab follows ComfyUI's original (checked to rounding above).
    Per step, with r = σ_down/σ and the midpoint σ_m = √(σ·σ_down):

    - ComfyUI original (guidelab): x_m = D_λ + (σ_m/σ)(x − D_u), x' = D_λ,m + r·(x + D_λ − D_u − D_λ,m);
    - the official ``dpm++_2s_a_cfg++``: x_m = D_u + (σ_m/σ)(x − D_u), x' = D_λ,m + r·(x − D_u,m) (no D_λ of the
      first point);
    - ComfyUI later (02159d8): the same midpoint, x' = D_u,m + r·(x − D_u,m) + (D_λ − D_u).

    All three are the unconditional 2S at λ = 0; at λ = 0.7 they differ by O(λ·(D_c − D_u))."""
    path = get_path(path_name)
    grid = grid_for(path, "karras")
    x_init = x_start(path, grid)
    for lam, differ in ((0.0, False), (0.7, True)):
        got = run("dpm++2s-ancestral", path, grid, x_init, lam, "x0", eta)
        for form in ("official", "comfy-later"):
            other = reference("dpm++2s-ancestral", path, grid, x_init.numpy(), lam, eta=eta, form=form)
            err = np.abs(got - other).max()
            assert (err > 0.05) if differ else (err < 1e-9), (form, lam, err)


@pytest.mark.parametrize("path_name", ["vp-cosine", "vp-linear"])
def test_official_euler_on_vp_paths_is_guidelabs_ddim_not_its_euler(path_name):
    """The official Euler step works on the VE-cast state, where it is DDIM; guidelab's ``euler`` integrates the
    probability-flow ODE in t, which is the same step only on paths affine in t (rf, ve; tested above)."""
    path = get_path(path_name)
    grid = grid_for(path, "karras")
    x_init = x_start(path, grid)
    official = reference("euler", path, grid, x_init.numpy(), 0.7)
    assert np.abs(run("ddim", path, grid, x_init, 0.7) - official).max() < 1e-9
    assert np.abs(run("euler", path, grid, x_init, 0.7) - official).max() > 0.02  # measured 0.09
