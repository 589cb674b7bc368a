"""The discrete VP path of diffusers' schedulers: the same ᾱ table bit for bit, the scheduler's timesteps at
t = (k + 1)/N, a consistent inverse and derivatives (checked by finite differences against the coefficients)."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

from guidelab.paths import DiscreteVPPath, get_path

SCHEDULES = [
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},  # Stable Diffusion
    {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},  # DDPM
    {"beta_schedule": "squaredcos_cap_v2"},  # improved DDPM
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "rescale_betas_zero_snr": True},
    {"beta_schedule": "linear", "beta_start": 0.001, "beta_end": 0.03, "num_train_timesteps": 250},
]


@pytest.mark.parametrize("kwargs", SCHEDULES)
@pytest.mark.parametrize(
    "scheduler", [DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler]
)
def test_alphas_cumprod_equal_diffusers_bitwise(kwargs, scheduler):
    sch = scheduler(**kwargs)
    path = DiscreteVPPath.from_scheduler(sch)
    table = sch.alphas_cumprod.to(torch.float64)
    assert torch.equal(path.alphas_cumprod[:-1], table[:-1])
    if kwargs.get("rescale_betas_zero_snr"):
        # the path's ᾱ_{N−1} is 0; Euler and DPM-Solver store 2⁻²⁴ there instead (their σ would be ∞)
        assert float(path.alphas_cumprod[-1]) == 0.0
        assert float(table[-1]) in (0.0, 2.0**-24)
    else:
        assert path.alphas_cumprod[-1] == table[-1]
    k = torch.arange(path.num_train_timesteps)
    c = path.coefficients(path.time_of_timestep(k))
    torch.testing.assert_close(c.alpha**2, path.alphas_cumprod, rtol=0, atol=1e-15)
    torch.testing.assert_close(c.alpha**2 + c.sigma**2, torch.ones_like(c.alpha), rtol=0, atol=1e-15)
    assert torch.equal(path.timestep(path.time_of_timestep(k)), k.double())


@pytest.mark.parametrize("kwargs", SCHEDULES)
def test_inverse_and_derivatives(kwargs):
    path = DiscreteVPPath(**kwargs)
    t = torch.rand(2000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.998 + 0.0005
    lam = path.lam(t)
    torch.testing.assert_close(path.t_of_lam(lam), t, rtol=0, atol=1e-10)
    # central differences away from the knots t = (k + 1)/N, where the derivative jumps
    n = path.num_train_timesteps
    frac = (t * n) % 1
    t = t[(frac > 0.01) & (frac < 0.99)]
    h = 1e-4 / n
    hi, lo, c = path.coefficients(t + h), path.coefficients(t - h), path.coefficients(t)
    torch.testing.assert_close((hi.alpha - lo.alpha) / (2 * h), c.d_alpha, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close((hi.sigma - lo.sigma) / (2 * h), c.d_sigma, rtol=1e-5, atol=1e-6)


def test_ends_and_config_round_trip():
    path = DiscreteVPPath()
    assert float(path.lam(torch.tensor(0.0))) == 0.0
    assert float(path.coefficients(torch.tensor(0.0)).alpha) == 1.0
    zsnr = DiscreteVPPath(rescale_betas_zero_snr=True)
    assert float(zsnr.coefficients(torch.tensor(1.0)).alpha) == 0.0
    assert float(zsnr.t_of_lam(torch.tensor(float("inf")))) == 1.0
    rebuilt = get_path(**path.config())
    assert torch.equal(rebuilt.alphas_cumprod, path.alphas_cumprod)
    betas = [0.001 * (i + 1) for i in range(50)]
    trained = DiscreteVPPath(trained_betas=betas)
    assert trained.num_train_timesteps == 50
    assert torch.equal(get_path(**trained.config()).alphas_cumprod, trained.alphas_cumprod)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"beta_schedule": "cosine"}, "beta_schedule"),
        ({"num_train_timesteps": 1}, "num_train_timesteps"),
        ({"beta_start": 0.02, "beta_end": 0.01}, "beta_start"),
        ({"trained_betas": [0.5, 1.5]}, "trained_betas"),
    ],
)
def test_bad_parameters_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}"):
        DiscreteVPPath(**kwargs)


def test_flow_scheduler_is_refused():
    from diffusers import FlowMatchEulerDiscreteScheduler

    with pytest.raises(ValueError, match="^scheduler: .*rf path"):
        DiscreteVPPath.from_scheduler(FlowMatchEulerDiscreteScheduler())
