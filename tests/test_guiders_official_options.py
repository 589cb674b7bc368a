"""The official codes' options, each pinned to the official update rule written out here in numpy from reading the
official code: ADG's constants and per-pixel norm rescale (jinc7461/ADG ``method/ADG_SD3.py``), APG's norm
dimensions, EMA momentum and APG-Mix (diffusers ``guiders/adaptive_projected_guidance{,_mix}.py``), CFG-Zero*'s
inclusive ``zero_steps`` (WeichenFan/CFG-Zero-star ``models/sd/sd3_pipeline.py``) and β-CFG's normalized profile
(gmum/beta-CFG ``latent_diffusion.py``).

Inputs are random and inconsistent (x_t, cond and uncond drawn independently). float64 runs are held to ~1e-10;
float16 runs to the float16 rounding of the result, against the float64 reference of the same rounded inputs."""

import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import beta as beta_dist

from guidelab.guiders import ADG, COND, Predictions, StepContext, build_guider
from guidelab.paths import get_path

D64 = torch.float64
SHAPE = (2, 4, 8, 8)  # (batch, C, H, W): latent-like, so per-pixel options have pixels and channels
HALF_TOL = 2 * 2.0**-10  # float16: one rounding of each output entry (2^-11) plus float32 arithmetic, with room
RTOL64 = 1e-10


# --- helpers ---------------------------------------------------------------------------------------------------


def uniform_grid(steps, t_max=0.9):
    return torch.linspace(t_max, 0.0, steps + 1, dtype=D64)


def context(path, grid, index, stage=0):
    t = float(grid[index])
    return StepContext(index, len(grid) - 1, t, float(path.lam(torch.tensor(t, dtype=D64))), grid, path, stage)


def guide(guider, path, grid, index, x_t, space, **raw):
    """One guider call at step ``index`` with the predictions the guider asks for (as a sampler would)."""
    ctx = context(path, grid, index)
    names = {p.name for p in guider.passes(ctx)}
    coefficients = path.coefficients(torch.tensor(ctx.t, dtype=D64)).expand_as(x_t)
    preds = Predictions({k: (v, space) for k, v in raw.items() if k in names}, x_t, coefficients)
    return guider.guide(preds, ctx)


def randn(gen, shape=SHAPE):
    return torch.randn(*shape, generator=gen, dtype=D64)


def inputs(seed, correlated=0.6):
    """Independent x_t and cond; uncond = cond + noise for sample 1 (a moderate angle), unrelated for sample 0."""
    gen = torch.Generator().manual_seed(seed)
    x_t, c, noise = randn(gen), randn(gen), randn(gen)
    u = noise.clone()
    u[1] = c[1] + correlated * noise[1]
    return x_t, c, u


def rounded(dtype, *tensors):
    """The tensors in ``dtype`` (what a half-precision network gives) and their float64 values."""
    low = [t.to(dtype) for t in tensors]
    return low, [t.to(D64) for t in low]


def assert_pair(out, x0_ref, eps_ref, dtype):
    """The guided pair against the float64 reference: ~1e-10 in float64; the float16 rounding of the result,
    per sample as a relative error of the pair, in float16."""
    assert out.x0_hat.dtype == out.eps_hat.dtype == dtype
    x0, eps = out.x0_hat.to(D64).numpy(), out.eps_hat.to(D64).numpy()
    if dtype == D64:
        for got, ref in ((x0, x0_ref), (eps, eps_ref)):
            np.testing.assert_allclose(got, ref, rtol=RTOL64, atol=RTOL64 * np.abs(ref).max())
        return
    rows = [a.reshape(a.shape[0], -1) for a in (x0 - x0_ref, eps - eps_ref, x0_ref, eps_ref)]
    err = np.sqrt(((rows[0] ** 2).sum(1) + (rows[1] ** 2).sum(1)) / ((rows[2] ** 2).sum(1) + (rows[3] ** 2).sum(1)))
    assert err.max() <= HALF_TOL, f"relative error {err}"


def rf_pair(x_t, v, t):
    """The (x0, ε) pair of a velocity on rf at fixed x_t: x0 = x_t − t·v, ε = x_t + (1 − t)·v."""
    return x_t - t * v, x_t + (1 - t) * v


def round_trips(guider):
    config = json.loads(json.dumps(guider.config(), allow_nan=False))
    assert build_guider(**config).config() == config


DTYPES = [torch.float64, torch.float16]


# --- ADG: official constants and the per-pixel norm rescale (jinc7461/ADG method/ADG_SD3.py) -------------------


def official_adg(x_t, v_c, v_u, sigma, gamma, angle=3.14 / 3, per_pixel_rescale=False):
    """``ADG_SD3`` (``angle=None``: ``ADG_SD3_wo_clip``; ``per_pixel_rescale``: ``ADG_SD3_w_norm``) on an SD3-style
    velocity model, one sample per call as the official code runs (its (n, 1) factors broadcast against
    (n, C, H, W) only for n = 1). Returns the guided velocity (the official ``noise_pred``) and x0."""
    x0_new, v_new = np.empty_like(x_t), np.empty_like(x_t)
    weight = gamma - 1
    weight = weight * (weight > 0) + 1e-3
    for n in range(x_t.shape[0]):
        text = x_t[n] - sigma * v_c[n]  # latent_hat_text
        uncond = x_t[n] - sigma * v_u[n]  # latent_hat_uncond
        f, b = text.ravel(), uncond.ravel()
        cos = np.sum(f / np.linalg.norm(f) * (b / np.linalg.norm(b)))  # call_cos_tensor
        theta = np.arccos(cos)
        theta_new = weight * theta if angle is None else np.clip(weight * theta, -angle, angle)
        diff = f - b  # compute_perpendicular_component(latent_diff, latent_hat_uncond)
        perp = diff - (np.sum(diff * b) / (np.sum(b * b) + 1e-8)) * b
        sin = np.sin(theta)
        p_new = perp * np.sin(theta_new) / sin * (sin > 1e-3) + perp * weight * (sin <= 1e-3)
        new = (np.cos(theta_new) * f + p_new).reshape(text.shape)
        if per_pixel_rescale:  # torch.linalg.norm(..., dim=1) on (1, C, H, W): over the channels, per pixel
            new = new * np.linalg.norm(text, axis=0, keepdims=True) / np.linalg.norm(new, axis=0, keepdims=True)
        x0_new[n] = new
        v_new[n] = (x_t[n] - new) / sigma  # noise_pred = (latents - latent_new)/sigma
    return v_new, x0_new


ADG_CASES = [  # (γ, the official variant): 0.5 turns by 1e-3·θ; 1.4 stays under the cap; 3 and 12 hit it
    (0.5, "ADG_SD3"),
    (1.4, "ADG_SD3"),
    (3.0, "ADG_SD3"),
    (12.0, "ADG_SD3"),
    (1.4, "ADG_SD3_wo_clip"),
    (2.0, "ADG_SD3_wo_clip"),
    (1.4, "ADG_SD3_w_norm"),
    (4.0, "ADG_SD3_w_norm"),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp64", "fp16"])
@pytest.mark.parametrize(("gamma", "variant"), ADG_CASES)
def test_adg_official_constants_and_variants_are_the_official_update(gamma, variant, dtype):
    path, grid = get_path("rf"), uniform_grid(10)
    t = float(grid[3])
    (x_t, c, u), (x64, c64, u64) = rounded(dtype, *inputs(seed=1))
    params = dict(ADG.OFFICIAL)
    if variant == "ADG_SD3_wo_clip":
        params["theta_max"] = None
    if variant == "ADG_SD3_w_norm":
        params.update(norm_rescale=True, rescale_dims=[1])
    out = guide(build_guider("adg", scale=gamma, **params), path, grid, 3, x_t, "velocity", cond=c, uncond=u)
    v_ref, x0_ref = official_adg(
        x64.numpy(), c64.numpy(), u64.numpy(), t, gamma,
        angle=None if variant == "ADG_SD3_wo_clip" else 3.14 / 3, per_pixel_rescale=variant == "ADG_SD3_w_norm",
    )  # fmt: skip
    assert_pair(out, x0_ref, x64.numpy() + (1 - t) * v_ref, dtype)
    if dtype == D64:  # the official output itself: the guided velocity ε̂ − x0̂
        np.testing.assert_allclose((out.eps_hat - out.x0_hat).numpy(), v_ref, rtol=RTOL64, atol=1e-9)


def test_adg_official_constants_differ_from_the_paper_and_keep_gamma_one_unguided():
    path, grid = get_path("rf"), uniform_grid(10)
    x_t, c, u = inputs(seed=2)
    official = build_guider("adg", scale=1.4, **ADG.OFFICIAL)
    paper = build_guider("adg", scale=1.4)
    assert paper.params()["weight_offset"] == 0.0 and paper.params()["theta_max"] == math.pi / 3
    a = guide(official, path, grid, 2, x_t, "velocity", cond=c, uncond=u).x0_hat
    b = guide(paper, path, grid, 2, x_t, "velocity", cond=c, uncond=u).x0_hat
    assert not torch.allclose(a, b, rtol=1e-6, atol=0)
    # γ = 1 is unguided with the official constants too: one pass, and with both passes given (per-sample γ)
    one = build_guider("adg", scale=1.0, **ADG.OFFICIAL)
    assert one.passes(context(path, grid, 2)) == (COND,)
    mixed = build_guider("adg", scale=[1.0, 3.0], **ADG.OFFICIAL)
    out = guide(mixed, path, grid, 2, x_t, "velocity", cond=c, uncond=u)
    torch.testing.assert_close(out.x0_hat[0], x_t[0] - float(grid[2]) * c[0], rtol=1e-13, atol=1e-13)
    alone = guide(build_guider("adg", scale=3.0, **ADG.OFFICIAL), path, grid, 2, x_t, "velocity", cond=c, uncond=u)
    torch.testing.assert_close(out.x0_hat[1], alone.x0_hat[1], rtol=1e-13, atol=1e-13)


def test_adg_rescale_over_every_non_batch_dimension_is_the_per_sample_rescale():
    path, grid = get_path("rf"), uniform_grid(10)
    x_t, c, u = inputs(seed=3)
    per_sample = build_guider("adg", scale=3.0, norm_rescale=True)
    for dims in ([1, 2, 3], [-1, -2, -3]):
        over_all = build_guider("adg", scale=3.0, norm_rescale=True, rescale_dims=dims)
        a = guide(over_all, path, grid, 4, x_t, "velocity", cond=c, uncond=u).x0_hat
        b = guide(per_sample, path, grid, 4, x_t, "velocity", cond=c, uncond=u).x0_hat
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    per_pixel = guide(
        build_guider("adg", scale=3.0, norm_rescale=True, rescale_dims=1), path, grid, 4, x_t, "velocity",
        cond=c, uncond=u,
    ).x0_hat  # fmt: skip
    f = x_t - float(grid[4]) * c  # ||x0̂|| = ||F|| at every pixel
    torch.testing.assert_close(per_pixel.norm(dim=1), f.norm(dim=1), rtol=1e-11, atol=0)  # ε = 1e-12 in the ratio


# --- APG: norm dimensions, momentum forms, APG-Mix (diffusers guiders/adaptive_projected_guidance{,_mix}.py) -----


class SumBuffer:
    """diffusers' ``MomentumBuffer``: running = Δ + β·running, from 0 (the APG paper's form)."""

    def __init__(self, momentum):
        self.momentum, self.running = momentum, 0.0

    def update(self, diff):
        self.running = diff + self.momentum * self.running


class EmaBuffer:
    """The EMA form: running = β·running + (1 − β)·Δ, started at the first Δ."""

    def __init__(self, momentum):
        self.momentum, self.running = momentum, None

    def update(self, diff):
        started = self.running is not None
        self.running = self.momentum * self.running + (1 - self.momentum) * diff if started else diff


def l2(x, axes):
    """||x|| over ``axes``, kept (torch's ``norm(p=2, dim=axes, keepdim=True)``; numpy's takes at most two axes)."""
    return np.sqrt(np.sum(x * x, axis=axes, keepdims=True))


def diffusers_normalized_guidance(c, u, scale, buffer, eta, threshold, dims):
    """diffusers' ``normalized_guidance`` with ``use_original_formulation=True`` (the paper's form: from the
    conditional prediction, its scale = γ − 1) and ``norm_dim=dims`` (numpy axes of the (batch, ...) array)."""
    diff = c - u
    if buffer is not None:
        buffer.update(diff)
        diff = buffer.running
    if threshold > 0:
        diff = diff * np.minimum(1.0, threshold / l2(diff, dims))
    v1 = c / np.maximum(l2(c, dims), 1e-12)  # F.normalize
    parallel = np.sum(diff * v1, axis=dims, keepdims=True) * v1
    return c + scale * (diff - parallel + eta * parallel)


def apg_trajectory(guider, dtype, steps=5, seed=4, scale=1.0):
    """The guider over ``steps`` steps on rf with fresh random x0-space predictions at each step; returns the
    outputs and the float64 inputs."""
    path, grid = get_path("rf"), uniform_grid(steps)
    guider.reset(SHAPE[0])
    outs, ins = [], []
    for i in range(steps):
        (x_t, c, u), (x64, c64, u64) = rounded(dtype, *(scale * v for v in inputs(seed + i)))
        outs.append(guide(guider, path, grid, i, x_t, "x0", cond=c, uncond=u))
        ins.append((x64.numpy(), c64.numpy(), u64.numpy(), float(grid[i])))
    return outs, ins


def x0_pair(x_t, x0, t):
    """The (x0, ε) pair of an x0 prediction on rf at fixed x_t: ε = (x_t − (1 − t)·x0)/t."""
    return x0, (x_t - (1 - t) * x0) / t


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp64", "fp16"])
@pytest.mark.parametrize("form", ["sum", "ema"])
@pytest.mark.parametrize("dims", [None, [1], [-1], [2, 3]], ids=["all", "channels", "last", "spatial"])
def test_apg_norm_dims_and_momentum_forms_are_diffusers_normalized_guidance(dims, form, dtype):
    gamma, eta, momentum, threshold = 4.0, 0.3, -0.5, 1.5  # r = 1.5 < ||Δ|| for most pixels, not all
    guider = build_guider(
        "apg", scale=gamma, eta=eta, momentum=momentum, norm_threshold=threshold, norm_dims=dims, momentum_form=form
    )
    outs, ins = apg_trajectory(guider, dtype)
    axes = (1, 2, 3) if dims is None else tuple(dims)
    buffer = SumBuffer(momentum) if form == "sum" else EmaBuffer(momentum)
    for out, (x_t, c, u, t) in zip(outs, ins, strict=True):
        ref = diffusers_normalized_guidance(c, u, gamma - 1, buffer, eta, threshold, axes)
        assert_pair(out, *x0_pair(x_t, ref, t), dtype)


def test_the_numpy_reference_is_diffusers_own_function():
    apg = pytest.importorskip("diffusers.guiders.adaptive_projected_guidance")
    if "norm_dim" not in apg.normalized_guidance.__code__.co_varnames:
        pytest.skip("this diffusers has no adaptive_projected_guidance_norm_dim")
    gen = torch.Generator().manual_seed(5)
    buffer_t, buffer_np = apg.MomentumBuffer(-0.5), SumBuffer(-0.5)
    for _ in range(3):
        c, u = randn(gen), randn(gen)
        ours = diffusers_normalized_guidance(c.numpy(), u.numpy(), 3.0, buffer_np, 0.3, 1.5, (1,))
        theirs = apg.normalized_guidance(c, u, 3.0, buffer_t, 0.3, 1.5, use_original_formulation=True, norm_dim=1)
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-12, atol=1e-12)


def test_apg_norm_dims_over_every_non_batch_dimension_is_the_default():
    for dims in ([1, 2, 3], [3, 1, 2], [-3, -2, -1]):
        a, _ = apg_trajectory(build_guider("apg", scale=4.0, eta=0.3, norm_threshold=8.0, norm_dims=dims), D64)
        b, _ = apg_trajectory(build_guider("apg", scale=4.0, eta=0.3, norm_threshold=8.0), D64)
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(x.x0_hat, y.x0_hat, rtol=1e-12, atol=1e-12)


def test_apg_ema_starts_each_sample_at_its_first_guided_step():
    """Per-sample scales: sample 0 is unguided for the first steps (γ = 1, no update), sample 1 guided throughout;
    each sample's trajectory is the one it has alone."""
    params = {"schedule": "step-up", "scale": [3.0, 3.0], "scale_low": [1.0, 2.0], "p_switch": 0.5}
    outs, ins = apg_trajectory(build_guider("apg", momentum=-0.5, momentum_form="ema", **params), D64)
    buffers = [EmaBuffer(-0.5), EmaBuffer(-0.5)]
    for i, (out, (_, c, u, _)) in enumerate(zip(outs, ins, strict=True)):
        for n in range(2):
            gamma = 3.0 if i / 4 >= 0.5 else [1.0, 2.0][n]
            c_n, u_n = c[n : n + 1], u[n : n + 1]
            if gamma == 1.0:
                ref = c_n
            else:
                ref = diffusers_normalized_guidance(c_n, u_n, gamma - 1, buffers[n], 0.0, 15.0, (1, 2, 3))
            np.testing.assert_allclose(out.x0_hat[n : n + 1].numpy(), ref, rtol=RTOL64, atol=RTOL64)


def diffusers_apg_mix(ins, cfg_scale, apg_scale, momentum, eta, threshold, start_step):
    """diffusers' ``AdaptiveProjectedMixGuidance.forward`` with ``use_original_formulation=True``: CFG while
    step ≤ start_step (the momentum buffer updated), then ``normalized_guidance`` (scales in the c + w·Δ form)."""
    buffer, out = SumBuffer(momentum), []
    for step, (_, c, u, _) in enumerate(ins):
        if step > start_step:  # _is_apg_enabled
            out.append(diffusers_normalized_guidance(c, u, apg_scale - 1, buffer, eta, threshold, (1, 2, 3)))
        else:
            buffer.update(c - u)  # update_momentum_buffer
            out.append(c + (cfg_scale - 1) * (c - u))
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp64", "fp16"])
@pytest.mark.parametrize("cfg_scale", [None, 2.5])
@pytest.mark.parametrize("cfg_steps", [1, 3])
def test_apg_mix_is_diffusers_adaptive_projected_mix_guidance(cfg_steps, cfg_scale, dtype):
    gamma = 6.0
    guider = build_guider(
        "apg", scale=gamma, eta=0.0, momentum=-0.5, norm_threshold=10.0, cfg_steps=cfg_steps, cfg_scale=cfg_scale
    )
    outs, ins = apg_trajectory(guider, dtype, steps=6, scale=2.0)  # ||Δ|| ≈ 45 > r = 10: the threshold acts
    refs = diffusers_apg_mix(ins, gamma if cfg_scale is None else cfg_scale, gamma, -0.5, 0.0, 10.0, cfg_steps - 1)
    for out, ref, (x_t, _, _, t) in zip(outs, refs, ins, strict=True):
        assert_pair(out, *x0_pair(x_t, ref, t), dtype)


def test_apg_mix_defaults_and_passes():
    path, grid = get_path("rf"), uniform_grid(8)
    plain = build_guider("apg", scale=5.0)
    assert plain.params()["cfg_steps"] == 0 and plain.params()["momentum_form"] == "sum"
    mix = build_guider("apg", scale=5.0, cfg_steps=2, cfg_scale=1.0)  # unguided first steps: one pass
    assert [len(mix.passes(context(path, grid, i))) for i in range(4)] == [1, 1, 2, 2]
    # an unguided CFG step does not touch the momentum: the trajectory is APG's from step 2 on
    outs, ins = apg_trajectory(mix, D64, steps=5)
    np.testing.assert_allclose(outs[0].x0_hat.numpy(), ins[0][1], rtol=0, atol=0)
    buffer = SumBuffer(-0.5)
    for out, (_, c, u, _) in list(zip(outs, ins, strict=True))[2:]:
        expected = diffusers_normalized_guidance(c, u, 4.0, buffer, 0.0, 15.0, (1, 2, 3))
        np.testing.assert_allclose(out.x0_hat.numpy(), expected, rtol=RTOL64, atol=RTOL64)


# --- CFG-Zero*: official zero_steps is an inclusive index (WeichenFan/CFG-Zero-star models/sd/sd3_pipeline.py) ---


def official_cfg_zero_star(v_c, v_u, gamma, i, zero_steps, use_zero_init=True):
    """The official pipelines' guidance step ``i`` (``optimized_scale`` with its 1e-8, then the zero init)."""
    flat_c, flat_u = v_c.reshape(v_c.shape[0], -1), v_u.reshape(v_u.shape[0], -1)
    alpha = np.sum(flat_c * flat_u, axis=1, keepdims=True) / (np.sum(flat_u**2, axis=1, keepdims=True) + 1e-8)
    alpha = alpha.reshape(-1, *([1] * (v_c.ndim - 1)))
    if i <= zero_steps and use_zero_init:
        return v_c * 0.0
    return v_u * alpha + gamma * (v_c - v_u * alpha)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp64", "fp16"])
@pytest.mark.parametrize(("zero_steps", "use_zero_init"), [(0, True), (1, True), (2, True), (0, False)])
def test_cfg_zero_star_zero_init_steps_is_official_zero_steps_plus_one(zero_steps, use_zero_init, dtype):
    path, grid, steps, gamma = get_path("rf"), uniform_grid(6), 6, 4.0
    guider = build_guider("cfg-zero-star", scale=gamma, zero_init_steps=zero_steps + 1 if use_zero_init else 0)
    zeroed = []
    for i in range(steps):
        (x_t, c, u), (x64, c64, u64) = rounded(dtype, *inputs(seed=10 + i))
        out = guide(guider, path, grid, i, x_t, "velocity", cond=c, uncond=u)
        ref = official_cfg_zero_star(c64.numpy(), u64.numpy(), gamma, i, zero_steps, use_zero_init)
        assert_pair(out, *rf_pair(x64.numpy(), ref, float(grid[i])), dtype)
        zeroed.append(guider.passes(context(path, grid, i)) == ())
    k = zero_steps + 1 if use_zero_init else 0
    assert zeroed == [i < k for i in range(steps)]  # a zeroed step makes no network evaluation


# --- β-CFG: the official normalize option (gmum/beta-CFG latent_diffusion.py, get_from_beta) ---------------------


def official_get_from_beta(t, a, b, normalize=False):
    if normalize:
        assert a > 1.0 and b > 1.0
        t_max = (a - 1.0) / (a + b - 2.0)
        return beta_dist.pdf(t, a, b) / beta_dist.pdf(t_max, a, b)
    return beta_dist.pdf(t, a, b)


def official_beta_cfg(eps_c, eps_u, omega, step, total_steps, a, b, g, normalize):
    """``BetaDDIMGeo.sample``'s guidance (its ``self.gamma`` is g; ``cfg_guidance`` is ω)."""
    diff = eps_c - eps_u
    diff_norm = np.linalg.norm(diff.reshape(diff.shape[0], -1), axis=1).reshape(-1, 1, 1, 1)
    cfg_part = diff / diff_norm**g * official_get_from_beta(step / total_steps, a, b, normalize)
    return eps_u + omega * cfg_part


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp64", "fp16"])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize(("a", "b", "g"), [(2.0, 3.0, 1.0), (3.5, 1.5, 0.0), (2.0, 2.0, 0.5)])
def test_beta_cfg_normalize_is_the_official_get_from_beta(a, b, g, normalize, dtype):
    path, steps, omega = get_path("vp-cosine"), 8, 5.0
    grid = uniform_grid(steps, t_max=0.95)
    guider = build_guider("beta-cfg", scale=omega, beta_a=a, beta_b=b, norm_power=g, normalize=normalize)
    for i in range(1, steps):  # step 0 has weight 0 (p = 0, a > 1): no guidance at all
        (x_t, c, u), (x64, c64, u64) = rounded(dtype, *inputs(seed=20 + i))
        out = guide(guider, path, grid, i, x_t, "eps", cond=c, uncond=u)
        eps = official_beta_cfg(c64.numpy(), u64.numpy(), omega, i, steps - 1, a, b, g, normalize)
        coef = path.coefficients(torch.tensor(float(grid[i]), dtype=D64))
        alpha, sigma = float(coef.alpha), float(coef.sigma)
        assert_pair(out, (x64.numpy() - sigma * eps) / alpha, eps, dtype)


def test_beta_cfg_normalized_profile_peaks_at_one_and_covers_the_edge_shapes():
    path = get_path("vp-cosine")
    grid = uniform_grid(101, t_max=0.95)
    for a, b, peak_at in [(3.0, 3.0, 0.5), (2.0, 5.0, 0.2), (1.0, 3.0, 0.0), (3.0, 1.0, 1.0), (1.0, 1.0, None)]:
        guider = build_guider("beta-cfg", scale=1.0, beta_a=a, beta_b=b, normalize=True)
        weights = np.array([guider.weight(context(path, grid, i)) for i in range(101)])
        assert weights.max() == pytest.approx(1.0, rel=1e-12)
        if peak_at is not None:
            assert weights.argmax() == round(peak_at * 100)
        else:
            np.testing.assert_array_equal(weights, 1.0)
    assert build_guider("beta-cfg", scale=1.0).params()["normalize"] is False  # the official default


# --- validation and serialisation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params", "field"),
    [
        ("adg", {"weight_offset": -1e-3}, "weight_offset"),
        ("adg", {"weight_offset": "1e-3"}, "weight_offset"),
        ("adg", {"rescale_dims": 0}, "rescale_dims"),
        ("adg", {"rescale_dims": [1, 1]}, "rescale_dims"),
        ("adg", {"rescale_dims": []}, "rescale_dims"),
        ("adg", {"rescale_dims": "channels"}, "rescale_dims"),
        ("adg", {"rescale_dims": [1.0]}, "rescale_dims"),
        ("apg", {"norm_dims": [0, 1]}, "norm_dims"),
        ("apg", {"norm_dims": True}, "norm_dims"),
        ("apg", {"momentum_form": "average"}, "momentum_form"),
        ("apg", {"cfg_steps": -1}, "cfg_steps"),
        ("apg", {"cfg_steps": 2.5}, "cfg_steps"),
        ("apg", {"cfg_scale": float("nan")}, "cfg_scale"),
        ("beta-cfg", {"normalize": "yes", "scale": 2.0}, "normalize"),
    ],
)
def test_bad_option_values_name_the_field(name, params, field):
    with pytest.raises(ValueError, match=field):
        build_guider(name, **params)


@pytest.mark.parametrize(
    ("name", "params", "field"),
    [
        ("adg", {"norm_rescale": True, "rescale_dims": [4]}, "rescale_dims"),
        ("adg", {"norm_rescale": True, "rescale_dims": [-4]}, "rescale_dims"),
        ("adg", {"norm_rescale": True, "rescale_dims": [1, -3]}, "rescale_dims"),
        ("apg", {"norm_dims": [2, 5]}, "norm_dims"),
    ],
)
def test_dims_that_do_not_fit_the_predictions_name_the_field(name, params, field):
    path, grid = get_path("rf"), uniform_grid(4)
    x_t, c, u = inputs(seed=30)
    with pytest.raises(ValueError, match=field):
        guide(build_guider(name, scale=3.0, **params), path, grid, 1, x_t, "x0", cond=c, uncond=u)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("adg", {**ADG.OFFICIAL, "norm_rescale": True, "rescale_dims": [1]}),
        ("adg", {"weight_offset": 1e-3, "theta_max": None, "rescale_dims": 2}),
        ("apg", {"norm_dims": [2, 3], "momentum_form": "ema", "cfg_steps": 6, "cfg_scale": 3.5}),
        ("apg", {"norm_dims": -1}),
        ("beta-cfg", {"normalize": True}),
    ],
)
def test_options_round_trip_through_json(name, params):
    round_trips(build_guider(name, scale=3.0, **params))
