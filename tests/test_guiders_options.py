"""Options the official codes have, each pinned to the official update rule written out here in numpy: Imagen /
diffusers thresholding. ADG's official constants and per-pixel norm, diffusers' APG (dims, momentum), the APG
EMA momentum and APG-Mix, CFG-Zero*'s zero-init count and β-CFG's normalized Beta profile are in
test_guiders_official_options.py."""

import json
import math

import numpy as np
import pytest
import torch

from guidelab.guiders import CFG, COND, Predictions, StepContext, build_guider
from guidelab.paths import get_path

DTYPE = torch.float64


def context(path, t, index=2, steps=8, stage=0):
    grid = torch.cat(
        [torch.linspace(1.0, t, index + 1, dtype=DTYPE), torch.linspace(t, 0.0, steps - index + 1, dtype=DTYPE)[1:]]
    )
    return StepContext(index, steps, t, float(path.lam(torch.tensor(t, dtype=DTYPE))), grid, path, stage)


def predictions(path, t, x_t, space="x0", per_sample_coefficients=False, **raw):
    t_ = torch.full((x_t.shape[0],), t, dtype=DTYPE) if per_sample_coefficients else torch.tensor(t, dtype=DTYPE)
    coefficients = path.coefficients(t_).expand_as(x_t)
    return Predictions({k: (v, space) for k, v in raw.items()}, x_t, coefficients)


def randn(seed, *shape, dtype=DTYPE, scale=1.0):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def round_trips(guider):
    config = json.loads(json.dumps(guider.config(), allow_nan=False))
    assert build_guider(**config).config() == config


# --- thresholding (Imagen, arXiv 2205.11487; diffusers schedulers/scheduling_ddpm.py) ---------------------------


def diffusers_threshold(x, ratio, sample_max_value):
    """diffusers' ``_threshold_sample``: per sample, s = clamp(quantile(|x|, ratio), 1, sample_max_value) over the
    flattened sample, then clamp(x, −s, s)/s (in the sample's float dtype)."""
    flat = x.reshape(x.shape[0], -1)
    s = np.quantile(np.abs(flat), ratio, axis=1, method="linear").astype(x.dtype)
    s = np.clip(s, 1, sample_max_value).astype(x.dtype)[:, None]
    return (np.clip(flat, -s, s) / s).reshape(x.shape)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("ratio", [0.5, 0.9, 0.995, 1.0])
@pytest.mark.parametrize("sample_max_value", [None, 1.7, 1.0])
def test_dynamic_thresholding_is_diffusers_threshold_sample(dtype, ratio, sample_max_value):
    x = randn(1, 6, 3, 4, 5, dtype=dtype, scale=1.5)
    x[0] *= 0.1  # |x| < 1 everywhere: s = 1, untouched
    guider = build_guider("dynamic-thresholding", scale=3.0, percentile=ratio, sample_max_value=sample_max_value)
    cap = np.inf if sample_max_value is None else sample_max_value
    expected = diffusers_threshold(x.numpy(), ratio, cap)
    tol = {"rtol": 1e-12, "atol": 1e-14} if dtype == torch.float64 else {"rtol": 2e-6, "atol": 2e-7}
    out = guider.threshold(x)
    assert out.dtype == dtype
    np.testing.assert_allclose(out.numpy(), expected, **tol)
    np.testing.assert_array_equal(out[0].numpy(), x[0].numpy())
    if sample_max_value == 1.0:  # capped at 1: plain clipping (diffusers' clip_sample)
        np.testing.assert_array_equal(out.numpy(), np.clip(x.numpy(), -1, 1))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_thresholding_of_the_guided_prediction_and_the_static_mode(dtype):
    path = get_path("vp-cosine")
    x_t, c, u = randn(2, 4, 50, dtype=dtype), randn(3, 4, 50, dtype=dtype, scale=1.5), randn(4, 4, 50, dtype=dtype)
    preds = predictions(path, 0.4, x_t, cond=c, uncond=u)
    guided = (u.double() + 3.0 * (c.double() - u.double())).numpy().astype(c.numpy().dtype)
    tol = {"rtol": 1e-12, "atol": 1e-13} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    out = build_guider("dynamic-thresholding", scale=3.0).guide(preds, context(path, 0.4))
    np.testing.assert_allclose(out.x0_hat.numpy(), diffusers_threshold(guided, 0.995, np.inf), **tol)
    static = build_guider("dynamic-thresholding", scale=3.0, mode="static").guide(preds, context(path, 0.4))
    np.testing.assert_allclose(static.x0_hat.numpy(), np.clip(guided, -1, 1), **tol)  # clip_sample, range 1
    box = build_guider("dynamic-thresholding", scale=3.0, mode="static", data_range=[0.0, 2.0])
    np.testing.assert_allclose(box.guide(preds, context(path, 0.4)).x0_hat.numpy(), np.clip(guided, 0, 2), **tol)


def test_a_data_range_is_the_centred_rule():
    """On [low, high] the rule is Imagen's on the centred, scaled sample, mapped back: c + h·T((x − c)/h)."""
    x = randn(5, 5, 40, scale=2.0) + 0.5
    guider = build_guider("dynamic-thresholding", percentile=0.9, data_range=(0.0, 1.0))
    expected = 0.5 + 0.5 * diffusers_threshold((2 * x - 1).numpy(), 0.9, np.inf)
    np.testing.assert_allclose(guider.threshold(x).numpy(), expected, rtol=1e-12, atol=1e-14)
    assert float(guider.threshold(x).min()) >= 0.0 and float(guider.threshold(x).max()) <= 1.0
    capped = build_guider("dynamic-thresholding", percentile=0.9, data_range=(-3.0, 5.0), sample_max_value=1.2)
    expected = 1.0 + 4.0 * diffusers_threshold(((x - 1) / 4).numpy(), 0.9, 1.2)
    np.testing.assert_allclose(capped.threshold(x).numpy(), expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("per_sample_coefficients", [False, True])
@pytest.mark.parametrize(("path_name", "t", "space"), [("vp-cosine", 0.4, "x0"), ("rf", 0.7, "velocity")])
def test_renoising_with_the_clipped_or_the_unclipped_prediction(per_sample_coefficients, path_name, t, space):
    path = get_path(path_name)
    x_t, c, u = randn(6, 4, 30), randn(7, 4, 30, scale=1.5), randn(8, 4, 30)
    preds = predictions(path, t, x_t, space, per_sample_coefficients, cond=c, uncond=u)
    ctx = context(path, t)
    c_t = path.coefficients(torch.tensor(t, dtype=DTYPE))
    a, s = float(c_t.alpha), float(c_t.sigma)
    imagen = build_guider("dynamic-thresholding", scale=4.0).guide(preds, ctx)
    torch.testing.assert_close(imagen.eps_hat, (x_t - a * imagen.x0_hat) / s)  # Imagen: a consistent pair
    diffusers_default = build_guider("dynamic-thresholding", scale=4.0, use_clipped_model_output=False)
    out = diffusers_default.guide(preds, ctx)
    torch.testing.assert_close(out.x0_hat, imagen.x0_hat)
    torch.testing.assert_close(out.eps_hat, CFG(4.0).guide(preds, ctx).eps_hat)  # only x0̂ is clipped
    assert not torch.allclose(out.eps_hat, imagen.eps_hat)


def test_renoising_at_pure_noise_and_at_the_data():
    rf = get_path("rf")  # t = 1: α = 0, every ε is x_t/σ = x_t
    x_t, c, u = randn(9, 3, 20), randn(10, 3, 20, scale=2.0), randn(11, 3, 20)
    out = build_guider("dynamic-thresholding", scale=4.0).guide(
        predictions(rf, 1.0, x_t, "velocity", cond=c, uncond=u), context(rf, 1.0, index=0)
    )
    torch.testing.assert_close(out.eps_hat, x_t, rtol=0, atol=0)
    ve = get_path("ve")  # t = 0: σ = 0, ε is not a function of x0̂: CFG's ε̂ is kept
    for per_sample in (False, True):
        preds = predictions(ve, 0.0, x_t, "eps", per_sample, cond=c, uncond=u)
        out = build_guider("dynamic-thresholding", scale=4.0).guide(preds, context(ve, 0.4))
        torch.testing.assert_close(out.eps_hat, u + 4.0 * (c - u))
        assert torch.isfinite(out.x0_hat).all()


def test_thresholding_at_unit_scale_on_request():
    path = get_path("vp-cosine")
    x_t, c, u = randn(12, 3, 40), randn(13, 3, 40, scale=2.0), randn(14, 3, 40)
    ctx = context(path, 0.3)
    only_cond = predictions(path, 0.3, x_t, cond=c)
    plain = build_guider("dynamic-thresholding", scale=1.0)
    assert plain.passes(ctx) == (COND,)
    torch.testing.assert_close(plain.guide(only_cond, ctx).x0_hat, c, rtol=0, atol=0)
    always = build_guider("dynamic-thresholding", scale=1.0, threshold_unguided=True)
    assert always.passes(ctx) == (COND,)  # still one evaluation
    out = always.guide(only_cond, ctx)
    np.testing.assert_allclose(out.x0_hat.numpy(), diffusers_threshold(c.numpy(), 0.995, np.inf), rtol=1e-12)
    a, s = math.cos(0.15 * math.pi), math.sin(0.15 * math.pi)
    torch.testing.assert_close(out.eps_hat, (x_t - a * out.x0_hat) / s)
    # per-sample scales: the γ = 1 sample gets the thresholded conditional prediction, the others guidance
    mixed = build_guider("dynamic-thresholding", scale=[1.0, 3.0, 1.0], threshold_unguided=True)
    both = predictions(path, 0.3, x_t, cond=c, uncond=u)
    out_mixed = mixed.guide(both, ctx)
    torch.testing.assert_close(out_mixed.x0_hat[[0, 2]], out.x0_hat[[0, 2]])
    guided = build_guider("dynamic-thresholding", scale=3.0).guide(both, ctx)
    torch.testing.assert_close(out_mixed.x0_hat[1], guided.x0_hat[1])
    torch.testing.assert_close(out_mixed.eps_hat[1], guided.eps_hat[1])


def test_thresholding_options_validate_and_round_trip():
    for params, field in [
        ({"mode": "soft"}, "mode"),
        ({"sample_max_value": 0.5}, "sample_max_value"),
        ({"data_range": (1.0, -1.0)}, "data_range"),
        ({"data_range": "0,1"}, "data_range"),
        ({"data_range": [0.0, float("inf")]}, "data_range"),
        ({"use_clipped_model_output": "yes"}, "use_clipped_model_output"),
        ({"threshold_unguided": 1}, "threshold_unguided"),
    ]:
        with pytest.raises(ValueError, match=field):
            build_guider("dynamic-thresholding", **params)
    params = {"mode": "static", "sample_max_value": 2.0, "data_range": (0.0, 1.0), "use_clipped_model_output": False}
    round_trips(build_guider("dynamic-thresholding", scale=2.0, threshold_unguided=True, **params))
