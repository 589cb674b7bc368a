"""Equivalence with diffusers' guiders where they agree with the paper: the same tensors give the same numbers.

diffusers is a test dependency (the ``diffusers`` extra, installed in the dev environment); this module imports it
directly so that a missing install fails loudly instead of skipping. APG is not compared: diffusers combines from
the unconditional prediction in the model's raw space, the paper from the conditional one in x0 (docs/methods.md §6).
"""

import pytest
import torch
from diffusers.guiders import (
    ClassifierFreeGuidance,
    ClassifierFreeZeroStarGuidance,
    MagnitudeAwareGuidance,
    TangentialClassifierFreeGuidance,
)

from guidelab.guiders import Predictions, StepContext, build_guider
from guidelab.paths import convert, get_path


def case(space, dtype, seed=0, t=0.55, path_name="vp-cosine", shape=(4, 3, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    path = get_path(path_name)
    x_t = torch.randn(shape, generator=g).to(dtype)
    cond = torch.randn(shape, generator=g).to(dtype)
    uncond = (0.8 * cond + 0.6 * torch.randn(shape, generator=g)).to(dtype)
    coefficients = path.coefficients(torch.tensor(t, dtype=torch.float64)).expand_as(x_t)
    preds = Predictions({"cond": (cond, space), "uncond": (uncond, space)}, x_t, coefficients)
    grid = torch.tensor([1.0, 0.8, t, 0.3, 0.0], dtype=torch.float64)
    ctx = StepContext(2, 4, t, float(path.lam(grid[2])), grid, path)
    return preds, ctx, cond, uncond


def in_space(step, space, preds):
    return convert(step.x0_hat, "x0", space, preds.x_t, preds.coefficients)


@pytest.mark.parametrize("space", ["eps", "velocity", "x0"])
@pytest.mark.parametrize("gamma", [1.0, 2.5, 7.5])
def test_cfg_matches_diffusers(space, gamma):
    preds, ctx, cond, uncond = case(space, torch.float64)
    reference = ClassifierFreeGuidance(guidance_scale=gamma).forward(cond, uncond).pred
    ours = build_guider("cfg", scale=gamma).guide(preds, ctx)
    torch.testing.assert_close(in_space(ours, space, preds), reference, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("space", ["eps", "velocity"])
@pytest.mark.parametrize(("gamma", "phi"), [(5.0, 0.7), (7.5, 1.0), (3.0, 0.3)])
def test_guidance_rescale_matches_diffusers(space, gamma, phi):
    preds, ctx, cond, uncond = case(space, torch.float64, seed=1)
    reference = ClassifierFreeGuidance(guidance_scale=gamma, guidance_rescale=phi).forward(cond, uncond).pred
    ours = build_guider("rescale", scale=gamma, phi=phi, space=space).guide(preds, ctx)
    torch.testing.assert_close(in_space(ours, space, preds), reference, rtol=1e-10, atol=1e-10)


def test_cfg_zero_star_matches_diffusers():
    preds, ctx, cond, uncond = case("velocity", torch.float32, seed=2, path_name="rf")
    reference = ClassifierFreeZeroStarGuidance(guidance_scale=4.0, zero_init_steps=1)
    reference.set_state(step=2, num_inference_steps=4, timestep=torch.tensor(550))
    ours = build_guider("cfg-zero-star", scale=4.0, zero_init_steps=1).guide(preds, ctx)
    torch.testing.assert_close(
        in_space(ours, "velocity", preds), reference.forward(cond, uncond).pred, rtol=1e-4, atol=1e-4
    )


def test_mambo_g_matches_diffusers():
    # (batch, 3, 64): diffusers' torch.norm over dims [1, 2, 3] raises on torch 2.13 for image-shaped tensors
    preds, ctx, cond, uncond = case("velocity", torch.float64, seed=3, path_name="rf", shape=(4, 3, 64))
    reference = MagnitudeAwareGuidance(guidance_scale=10.0, alpha=8.0).forward(cond, uncond).pred
    ours = build_guider("mambo-g", scale=10.0, alpha=8.0).guide(preds, ctx)
    torch.testing.assert_close(in_space(ours, "velocity", preds), reference, rtol=1e-10, atol=1e-10)


def test_tangential_cfg_matches_diffusers():
    preds, ctx, cond, uncond = case("eps", torch.float32, seed=4)
    reference = TangentialClassifierFreeGuidance(guidance_scale=5.0).forward(cond, uncond).pred
    ours = build_guider("tangential", scale=5.0).guide(preds, ctx)
    torch.testing.assert_close(in_space(ours, "eps", preds), reference, rtol=1e-4, atol=1e-4)
