"""Low precision (docs/methods.md §0: reductions in at least float32), the guiders' degenerate points (every division
by a data-dependent quantity, at exactly the degenerate point and next to it), and CFG++'s λ range over the
whole grid before any network evaluation.

References are written here: float64 runs of the same half-rounded inputs, closed forms by hand."""

import math

import numpy as np
import pytest
import torch

from guidelab.grids import make_grid
from guidelab.guiders import GUIDERS, Predictions, StepContext, build_guider
from guidelab.guiders.reductions import dot, norm, sq_norm, std
from guidelab.models.guidance_weights import GuidanceWeights, save_weights
from guidelab.paths import get_path
from guidelab.sampling import sample

D64 = torch.float64

# --- helpers ---------------------------------------------------------------------------------------------------


def context(path, t, index=4, steps=10, cond=None):
    """Step ``index`` of ``steps`` at time t on an otherwise uniform grid."""
    grid = torch.cat(
        [torch.linspace(1.0, t, index + 1, dtype=D64), torch.linspace(t, 0.0, steps - index + 1, dtype=D64)[1:]]
    )
    lam = float(path.lam(torch.tensor(t, dtype=D64)))
    return StepContext(index, steps, t, lam, grid, path, cond=cond)


def predictions(path, t, x_t, space, **raw):
    """As the sampler builds them: the path's float64 coefficients at a scalar t, cast to x_t's dtype."""
    coefficients = path.coefficients(torch.tensor(t, dtype=D64)).expand_as(x_t)
    return Predictions({k: (v, space) for k, v in raw.items()}, x_t, coefficients)


def run(guider, path, t, x_t, space, **raw):
    ctx = context(path, t, cond=torch.zeros(x_t.shape[0], dtype=torch.long))
    guider.reset(x_t.shape[0])
    names = {p.name for p in guider.passes(ctx)}
    return guider.guide(predictions(path, t, x_t, space, **{k: v for k, v in raw.items() if k in names}), ctx)


def rf_velocity(out):
    """v = ε̂ − x0̂ on rf."""
    return out.eps_hat - out.x0_hat


class Identity:
    """A stand-in guide network for weak-model guidance (never evaluated here: its prediction is given)."""

    prediction = "x0"

    def __init__(self, path):
        self.path = path

    def __call__(self, x, t, cond):
        return x


# --- A. reductions and half precision -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reductions_of_a_long_half_vector_are_finite_and_accurate(dtype):
    x = torch.full((1, 65536), 1.5, dtype=dtype)  # ||x||² = 147456 > 65504 (float16 max)
    assert sq_norm(x).dtype == D64
    assert float(sq_norm(x)) == 65536 * 2.25
    assert float(dot(x, 2 * x)) == 2 * 65536 * 2.25
    assert float(norm(x)) == 1.5 * 256
    big = torch.full((1, 65536), 300.0, dtype=dtype)  # ||big|| = 76800: the norm itself exceeds float16
    assert float(norm(big)) == pytest.approx(300 * 256, rel=1e-4)  # float32 accumulation of 5.9e9
    alternating = torch.tensor([300.0, -300.0], dtype=dtype).repeat(1, 32768)  # std 300, Σx² = 5.9e9
    assert float(std(alternating)) == pytest.approx(300.0, rel=1e-4)
    image = torch.full((2, 16, 64, 64), 1.5, dtype=dtype)
    torch.testing.assert_close(sq_norm(image), torch.full((2,), 65536 * 2.25, dtype=D64), rtol=0, atol=0)


def _weak(path):
    return {"scale": 2.5, "guide_model": "weak", "guide_cond": "cond", "models": {"weak": Identity(path)}}


# every registered guider, with parameters that make its nonlinear parts act (thresholds hit, scales > 1, …)
HALF_CASES = [
    ("cfg", {"scale": 3.0}),
    ("cfg", {"scale": [1.0, 3.0]}),
    ("adamag", {"scale": 4.0, "kappa": 1.0}),
    ("adg", {"scale": 3.0}),
    ("adg", {"scale": 3.0, "weight_offset": 1e-3, "theta_max": 3.14 / 3, "norm_rescale": True, "rescale_dims": [1]}),
    ("apg", {"scale": 5.0}),  # r = 15 < ||Δ||: the norm threshold acts
    ("apg", {"scale": 5.0, "eta": 0.5, "norm_threshold": None}),
    ("apg", {"scale": 5.0, "norm_dims": [1], "momentum_form": "ema"}),  # per pixel: r = 15 acts nowhere
    ("apg", {"scale": 5.0, "norm_dims": [1], "norm_threshold": 1.0}),  # per pixel, the threshold acts
    ("beta-cfg", {"scale": 3.0}),
    ("beta-cfg", {"scale": 3.0, "normalize": True}),
    ("cfg++", {"scale": 0.6}),
    ("cfg++", {"scale": [0.3, 1.0]}),
    ("cfg-zero-star", {"scale": 4.0, "zero_init_steps": 0}),
    ("dynamic-thresholding", {"scale": 3.0}),  # latents beyond [−1, 1]: clipping acts
    ("fbg", {"pi": 0.5, "scale": 2.0}),  # γ = 1/π + 1 = 3 at L = 0 (its update: tests/test_guiders_feedback.py)
    ("learned", {}),
    ("mambo-g", {"scale": 6.0}),
    ("rescale", {"scale": 5.0}),
    ("rescale", {"scale": [5.0, 1.0], "space": "eps"}),
    ("tangential", {"scale": 3.0}),
    ("weak-model", {}),
]
# machine epsilon 2^-10 (float16), 2^-7 (bfloat16). Every rule runs in float32 and each output entry is rounded
# once to the dtype (relative error ≤ eps/2); the float32 arithmetic adds ~1e-6. 2·eps leaves room for a few
# more roundings in the dtype (the brief lets the final combination run in it) but not for a reduction in it.
TOLERANCE = {torch.float16: 2 * 2.0**-10, torch.bfloat16: 2 * 2.0**-7}
# (batch, channels, 64, 64) latents: SD-VAE latents unscaled (std ≈ 4) and SD3/Flux-like (std ≈ 1)
SHAPES = [((2, 4, 64, 64), 4.0), ((2, 16, 64, 64), 1.0)]
MODELS = [("rf", 0.7, "velocity"), ("vp-cosine", 0.5, "eps")]


# guiders that need the sampler's extra evaluations (no Predictions-only step): half precision tested in their own file
HALF_ELSEWHERE = {"rectified-cfg++": "tests/test_guiders_rectified_cfg_pp.py"}


def test_the_half_precision_cases_cover_every_registered_guider():
    assert {name for name, _ in HALF_CASES} | set(HALF_ELSEWHERE) == set(GUIDERS)


@pytest.fixture(scope="module")
def learned_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("learned") / "weights.pt"
    save_weights(GuidanceWeights(2, init_omega=1.5), path, {"class_names": ["a", "b"]})
    return str(path)


def latent_case(shape, scale, path, t, space, seed):
    """Predictions of a model in ``space`` (cond, uncond, guide) with latent-scale clean estimates, float64."""
    g = torch.Generator().manual_seed(seed)
    offsets = 0.5 * torch.randn(1, shape[1], 1, 1, generator=g, dtype=D64)  # per-channel means, as in latents
    x0 = scale * (torch.randn(*shape, generator=g, dtype=D64) + offsets)
    c = path.coefficients(torch.tensor(t, dtype=D64))
    x_t = c.alpha * x0 + c.sigma * torch.randn(*shape, generator=g, dtype=D64)
    x0_c = x0 + 0.1 * scale * torch.randn(*shape, generator=g, dtype=D64)
    x0_u = x0_c + 0.3 * scale * torch.randn(*shape, generator=g, dtype=D64)

    def to_space(x0_hat):  # the model's own prediction in ``space`` at fixed x_t, by hand
        eps = (x_t - c.alpha * x0_hat) / c.sigma
        return {"eps": eps, "velocity": c.d_alpha * x0_hat + c.d_sigma * eps}[space]

    return x_t, {"cond": to_space(x0_c), "uncond": to_space(x0_u), "guide0": to_space(x0_u)}


def pair_error(out, ref):
    """Per-sample relative error of the pair (x0̂, ε̂) against the float64 reference: (batch,)."""

    def rows(a):
        return a.to(D64).reshape(a.shape[0], -1)

    num = (rows(out.x0_hat) - rows(ref.x0_hat)).square().sum(1)
    num = num + (rows(out.eps_hat) - rows(ref.eps_hat)).square().sum(1)
    den = rows(ref.x0_hat).square().sum(1) + rows(ref.eps_hat).square().sum(1)
    return (num / den).sqrt()


@pytest.mark.parametrize(("path_name", "t", "space"), MODELS, ids=[m[0] for m in MODELS])
@pytest.mark.parametrize(("shape", "scale"), SHAPES, ids=["4ch", "16ch"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize(("name", "params"), HALF_CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(HALF_CASES)])
def test_half_precision_matches_float64(name, params, dtype, shape, scale, path_name, t, space, learned_checkpoint):
    path = get_path(path_name)
    x_t, raw = latent_case(shape, scale, path, t, space, seed=3)
    x_t = x_t.to(dtype)  # what a half-precision network gives: the reference runs on the same rounded values
    raw = {k: v.to(dtype) for k, v in raw.items()}

    def build():
        if name == "learned":
            return build_guider("learned", checkpoint=learned_checkpoint)
        return build_guider(name, **(_weak(path) if name == "weak-model" else params))

    out = run(build(), path, t, x_t, space, **raw)
    ref = run(build(), path, t, x_t.to(D64), space, **{k: v.to(D64) for k, v in raw.items()})
    assert out.x0_hat.dtype == out.eps_hat.dtype == dtype
    assert torch.isfinite(out.x0_hat).all()
    assert torch.isfinite(out.eps_hat).all()
    assert torch.isfinite(ref.x0_hat).all()
    error = pair_error(out, ref)
    assert float(error.max()) <= TOLERANCE[dtype], f"{name}: relative error {error.tolist()}"


@pytest.mark.parametrize("name", ["cfg-zero-star", "tangential", "apg", "adamag"])
def test_reported_float16_cases_are_finite_and_accurate(name):
    """(2, 16, 64, 64) float16 predictions: CFG-Zero* and TCFG gave NaN, APG was 7% and AdaMaG 4% off."""
    path = get_path("rf")
    g = torch.Generator().manual_seed(0)
    x_t, c, u = (torch.randn(2, 16, 64, 64, generator=g, dtype=D64) for _ in range(3))
    u = c + 0.5 * u
    params = {"cfg-zero-star": {"zero_init_steps": 0}, "apg": {"norm_threshold": None}}.get(name, {})
    half = run(
        build_guider(name, scale=4.0, **params), path, 0.6, x_t.half(), "velocity", cond=c.half(), uncond=u.half()
    )
    ref = run(build_guider(name, scale=4.0, **params), path, 0.6, x_t.half().double(), "velocity",
              cond=c.half().double(), uncond=u.half().double())  # fmt: skip
    assert torch.isfinite(half.x0_hat).all()
    assert torch.isfinite(half.eps_hat).all()
    assert float(pair_error(half, ref).max()) <= TOLERANCE[torch.float16]


def test_float32_predictions_stay_float32_without_copies():
    path = get_path("rf")
    g = torch.Generator().manual_seed(1)
    x_t, c, u = (torch.randn(2, 3, 8, 8, generator=g) for _ in range(3))
    for name in ("cfg", "rescale", "apg", "tangential", "cfg++"):
        out = run(build_guider(name, scale=0.5 if name == "cfg++" else 3.0), path, 0.5, x_t, "x0", cond=c, uncond=u)
        assert out.x0_hat.dtype == out.eps_hat.dtype == torch.float32
    # a neutral pass returns the model's own x0 prediction as it is
    out = run(build_guider("cfg", scale=1.0), path, 0.5, x_t, "x0", cond=c)
    assert out.x0_hat.data_ptr() == c.data_ptr()


# --- B. degenerate points ------------------------------------------------------------------------------------

FLOATS = [torch.float32, torch.float64]


def x0_case(dtype, cond, uncond, t=0.5, path_name="rf"):
    """x0-space predictions (batch, D) on ``path_name`` at t, x_t fixed at a random value."""
    path = get_path(path_name)
    cond, uncond = torch.as_tensor(cond, dtype=dtype), torch.as_tensor(uncond, dtype=dtype)
    x_t = torch.randn(cond.shape, generator=torch.Generator().manual_seed(7), dtype=D64).to(dtype)
    return path, t, x_t, {"cond": cond, "uncond": uncond}


def close(actual, expected, dtype, rtol=None, atol=None):
    default = {torch.float32: 1e-5, torch.float64: 1e-12}[dtype]
    np.testing.assert_allclose(
        actual.double().numpy(), np.asarray(expected, dtype=np.float64), rtol=rtol or default, atol=atol or default
    )


def random_row(dtype, dim=6, seed=11):
    return torch.randn(1, dim, generator=torch.Generator().manual_seed(seed), dtype=D64).to(dtype)


@pytest.mark.parametrize("dtype", FLOATS)
def test_rescale_leaves_a_zero_variance_guided_prediction_unchanged(dtype):
    # the report: c = [[1, 3]], u = [[1, 5]], γ = 2 → x = [[1, 1]]; the old rule returned 7e11·x
    path, t, x_t, raw = x0_case(dtype, [[1.0, 3.0]], [[1.0, 5.0]])
    out = run(build_guider("rescale", scale=2.0, phi=0.7, space="x0"), path, t, x_t, "x0", **raw)
    close(out.x0_hat, [[1.0, 1.0]], dtype)
    # constant only up to rounding: u chosen so that x = u + 3(c − u) = 0.1 in exact arithmetic
    c = 0.1 + torch.rand(1, 4099, generator=torch.Generator().manual_seed(2), dtype=D64)
    u = (0.1 - 3.0 * c) / (1 - 3.0)
    path, t, x_t, raw = x0_case(dtype, c.to(dtype), u.to(dtype))
    out = run(build_guider("rescale", scale=3.0, phi=0.7, space="x0"), path, t, x_t, "x0", **raw)
    close(out.x0_hat, np.full((1, 4099), 0.1), dtype, rtol=1e-4 if dtype == torch.float32 else 1e-10)


@pytest.mark.parametrize("dtype", FLOATS)
def test_rescale_next_to_zero_variance_and_at_a_constant_conditional(dtype):
    # next to it the written rule holds (it has no limit at std(x) = 0, so no continuity to check)
    delta = 1e-3
    path, t, x_t, raw = x0_case(dtype, [[1.0, 3.0, 2.0]], [[1.0, 5.0 - delta, 3.0]])
    out = run(build_guider("rescale", scale=2.0, phi=0.7, space="x0"), path, t, x_t, "x0", **raw)
    c, u = np.array([1.0, 3.0, 2.0]), np.array([1.0, 5.0 - delta, 3.0])
    x = u + 2.0 * (c - u)  # [1, 1 + δ, 1]
    expected = 0.7 * x * (c.std() + 1e-12) / (x.std() + 1e-12) + 0.3 * x  # the documented ε in the ratio
    close(out.x0_hat, expected[None], dtype, rtol=1e-4 if dtype == torch.float32 else 1e-9)
    # std(c) = 0 is regular: x ← (1 − φ)·x, and continuous next to it
    for eps in (0.0, 1e-7):
        path, t, x_t, raw = x0_case(dtype, [[2.0, 2.0 + eps]], [[1.0, 5.0]])
        out = run(build_guider("rescale", scale=2.0, phi=0.7, space="x0"), path, t, x_t, "x0", **raw)
        close(out.x0_hat, [[0.3 * 3.0, 0.3 * -1.0]], dtype, atol=1e-5)


@pytest.mark.parametrize("dtype", FLOATS)
def test_cfg_zero_star_with_zero_unconditional_velocity(dtype):
    path = get_path("rf")
    v_c = random_row(dtype)
    x_t = random_row(dtype, seed=12)
    guider = build_guider("cfg-zero-star", scale=4.0, zero_init_steps=0)
    for size in (0.0, 1e-10):  # s* = 0 at u = 0 (official code's ε); s*·u ~ size² / ε next to it
        v_u = size * random_row(dtype, seed=13)
        out = run(guider, path, 0.5, x_t, "velocity", cond=v_c, uncond=v_u)
        close(rf_velocity(out), 4.0 * v_c, dtype, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", FLOATS)
def test_apg_with_zero_difference_and_with_zero_conditional(dtype):
    path = get_path("rf")
    c = random_row(dtype)
    x_t = random_row(dtype, seed=12)
    d = random_row(dtype, seed=13)
    guider = build_guider("apg", scale=5.0, momentum=0.0, norm_threshold=1.0)
    for size in (0.0, 1e-9):  # Δ = 0: no change, continuously
        out = run(guider, path, 0.5, x_t, "x0", cond=c, uncond=c + size * d)
        close(out.x0_hat, c, dtype, atol=1e-7)
    # x0̂_c = 0: Δ∥ = 0, x0̂ = (γ − 1)·Δ·min(1, r/||Δ||) with Δ = −u
    u = 3.0 * d
    out = run(guider, path, 0.5, x_t, "x0", cond=torch.zeros_like(c), uncond=u)
    delta = -u.double()
    close(out.x0_hat, 4.0 * delta * min(1.0, 1.0 / float(delta.norm())), dtype)


@pytest.mark.parametrize("dtype", FLOATS)
def test_adg_at_parallel_antiparallel_zero_and_next_to_them(dtype):
    path = get_path("rf")
    f = random_row(dtype)
    x_t = random_row(dtype, seed=12)
    d = random_row(dtype, seed=13)
    guider = build_guider("adg", scale=3.0)
    # F ∥ B: θ = 0, x0̂ = F; antiparallel: no turning plane, x0̂ = F (documented fallback)
    for uncond in (2.0 * f, -0.5 * f):
        close(run(guider, path, 0.5, x_t, "x0", cond=f, uncond=uncond).x0_hat, f, dtype)
    # next to parallel: θ ≈ 1e-7, |x0̂ − F| ≤ a·|F| = 2θ|F|
    out = run(guider, path, 0.5, x_t, "x0", cond=f, uncond=2.0 * f + 1e-7 * d).x0_hat
    assert float((out.double() - f.double()).norm()) <= 1e-6 * float(f.double().norm())
    # B = 0: cos θ = 0 (ε in the denominator), θ = π/2, q = F: x0̂ = (cos a + sin a)·F, a = min(2·π/2, π/3)
    a = min(2.0 * math.pi / 2, math.pi / 3)
    for size in (0.0, 1e-20):  # continuous once |F|·|B| ≪ ε
        out = run(guider, path, 0.5, x_t, "x0", cond=f, uncond=size * d).x0_hat
        close(out, (math.cos(a) + math.sin(a)) * f.double(), dtype, rtol=1e-6, atol=1e-6)
    # F = 0: x0̂ = 0, and |x0̂| ≤ √2·|F| next to it
    close(run(guider, path, 0.5, x_t, "x0", cond=torch.zeros_like(f), uncond=d).x0_hat, torch.zeros(1, 6), dtype)
    out = run(guider, path, 0.5, x_t, "x0", cond=1e-9 * f, uncond=d).x0_hat
    assert float(out.double().norm()) <= math.sqrt(2) * 1e-9 * float(f.double().norm()) * (1 + 1e-5)


@pytest.mark.parametrize("dtype", FLOATS)
def test_mambo_g_with_zero_unconditional(dtype):
    path = get_path("rf")
    c = random_row(dtype)
    x_t = random_row(dtype, seed=12)
    d = random_row(dtype, seed=13)
    guider = build_guider("mambo-g", scale=6.0)
    for size in (0.0, 1e-9):  # r = ||c||/||u|| → ∞: γ' → 1, x̂ = c
        out = run(guider, path, 0.5, x_t, "velocity", cond=c, uncond=size * d)
        close(rf_velocity(out), c, dtype, atol=1e-6)
    zero = torch.zeros_like(c)
    close(rf_velocity(run(guider, path, 0.5, x_t, "velocity", cond=zero, uncond=zero)), zero, dtype, atol=1e-6)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("power", [0.5, 1.0, 4.0])
def test_beta_cfg_with_zero_difference(dtype, power):
    path = get_path("vp-cosine")
    e = random_row(dtype)
    x_t = random_row(dtype, seed=12)
    d = random_row(dtype, seed=13)
    guider = build_guider("beta-cfg", scale=3.0, norm_power=power)
    out = run(guider, path, 0.5, x_t, "eps", cond=e, uncond=e)  # Δ/||Δ||^g taken as 0: ε̂ = ε̂_u
    assert torch.isfinite(out.x0_hat).all()
    close(out.eps_hat, e, dtype)
    if power < 1:  # the limit is continuous only for g < 1: |Δ|^(1−g) → 0
        out = run(guider, path, 0.5, x_t, "eps", cond=e + 1e-14 * d, uncond=e)
        close(out.eps_hat, e, dtype, atol=1e-6)


@pytest.mark.parametrize("dtype", FLOATS)
def test_tangential_at_zero_and_equal_singular_values(dtype):
    path = get_path("rf")
    c = random_row(dtype)
    x_t = random_row(dtype, seed=12)
    u = random_row(dtype, seed=13)
    guider = build_guider("tangential", scale=3.0, space="x0")
    zero = torch.zeros_like(c)
    for size in (0.0, 1e-9):  # u → 0: v₁ → ĉ, u' → 0, x̂ = γ·c
        close(run(guider, path, 0.5, x_t, "x0", cond=c, uncond=size * u).x0_hat, 3.0 * c.double(), dtype, atol=1e-6)
    for size in (0.0, 1e-9):  # c → 0: v₁ → û, u' → u, x̂ = (1 − γ)·u
        out = run(guider, path, 0.5, x_t, "x0", cond=size * c, uncond=u).x0_hat
        close(out, -2.0 * u.double(), dtype, atol=1e-6)
    close(run(guider, path, 0.5, x_t, "x0", cond=zero, uncond=zero).x0_hat, zero, dtype)
    # c ⊥ u with equal norms: v₁ is arbitrary, u' taken as 0 (documented), x̂ = γ·c
    c2, u2 = torch.tensor([[3.0, 0.0, 4.0]], dtype=dtype), torch.tensor([[0.0, 5.0, 0.0]], dtype=dtype)
    close(run(guider, path, 0.5, x_t[:, :3], "x0", cond=c2, uncond=u2).x0_hat, 3.0 * c2.double(), dtype)


@pytest.mark.parametrize("dtype", FLOATS)
def test_adamag_with_zero_conditional_noise(dtype):
    """n = ε̂_c = 0: no score direction, g∥ = 0, v̂ = v_u + ω_t·(v_c − v_u), and continuously next to it."""
    path, t = get_path("rf"), 0.5
    x_t = random_row(dtype, seed=12)
    e_u = random_row(dtype, seed=13)
    d = random_row(dtype, seed=14)
    gamma, kappa = 4.0, 1.0
    omega = max(1.0, gamma * t**kappa)
    guider = build_guider("adamag", scale=gamma, kappa=kappa)
    for size in (0.0, 1e-10):
        e_c = size * d
        out = run(guider, path, t, x_t, "eps", cond=e_c, uncond=e_u)
        # rf by hand: x0 = (x_t − t·ε)/(1 − t), v = ε − x0
        v_c = e_c.double() - (x_t.double() - t * e_c.double()) / (1 - t)
        v_u = e_u.double() - (x_t.double() - t * e_u.double()) / (1 - t)
        close(rf_velocity(out), v_u + omega * (v_c - v_u), dtype, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", FLOATS)
def test_dynamic_thresholding_divides_by_at_least_one(dtype):
    path, t, x_t, raw = x0_case(dtype, torch.zeros(2, 5), torch.zeros(2, 5))
    out = run(build_guider("dynamic-thresholding", scale=3.0), path, t, x_t, "x0", **raw)
    close(out.x0_hat, np.zeros((2, 5)), dtype)  # s = max(quantile(0), 1) = 1


# --- C. CFG++'s λ range -----------------------------------------------------------------------------------------


class CountingGaussian:
    """x0 | c ~ N(1, 0.25) (every label), exact posterior mean; counts its calls."""

    prediction = "x0"

    def __init__(self, path):
        self.path, self.calls = path, 0

    def __call__(self, x, t, cond):
        self.calls += 1
        c = self.path.coefficients(t.double()).expand_as(x)
        return 1.0 + c.alpha * 0.25 / (c.alpha**2 * 0.25 + c.sigma**2) * (x - c.alpha)


@pytest.mark.parametrize("scale", [1.5, -0.1, [0.5, 1.2], [-0.2, 0.5]])
def test_cfg_pp_rejects_scalar_and_per_sample_lambda_outside_the_unit_interval(scale):
    with pytest.raises(ValueError, match="scale"):
        build_guider("cfg++", scale=scale)


@pytest.mark.parametrize(
    "params",
    [
        {"schedule": "tv-cfg", "scale": 0.8},  # on the EDM grid: λ = 1.14 at the first step
        {"schedule": "step-up", "scale": 0.9, "scale_low": 1.2},  # valid at the first step, 0.9 from p = 0.25 on
        {"schedule": "step-down", "scale": 0.9, "scale_low": -0.3},  # valid first, λ < 0 later
        {"schedule": "wang", "scale": [0.4, 0.9], "convention": "ho"},  # per sample: 0.9·2p > 1 late
    ],
    ids=["tv-cfg", "step-up", "step-down", "wang-per-sample"],
)
def test_cfg_pp_schedules_are_checked_over_the_grid_before_any_evaluation(params):
    path = get_path("rf")
    grid = make_grid("edm", 10, path)
    guider = build_guider("cfg++", **params)
    den = CountingGaussian(path)
    with pytest.raises(ValueError, match="scale"):
        sample(den, guider, grid=grid, n=2, shape=(3,), cond=0)
    assert den.calls == 0
    with pytest.raises(ValueError, match="scale"):
        build_guider("cfg++", **params).prepare(grid, path)


def test_cfg_pp_accepts_a_schedule_within_the_unit_interval():
    path = get_path("rf")
    grid = make_grid("edm", 10, path)
    guider = build_guider("cfg++", schedule="step-up", scale=0.9, scale_low=0.3)
    guider.prepare(grid, path)
    den = CountingGaussian(path)
    result = sample(den, guider, grid=grid, n=2, shape=(3,), cond=0)
    assert torch.isfinite(result.x).all()
    assert den.calls == 10


def test_cfg_pp_checks_a_per_sample_lambda_when_guiding():
    path = get_path("rf")
    guider = build_guider("cfg++", schedule="wang", scale=[0.4, 0.9], convention="ho")
    x = random_row(D64)
    preds = predictions(path, 0.1, x.repeat(2, 1), "x0", cond=x.repeat(2, 1), uncond=2 * x.repeat(2, 1))
    with pytest.raises(ValueError, match="scale"):
        guider.guide(preds, context(path, 0.1, index=9))  # γ = 0.9·2·1 = 1.8 for the second sample


def test_every_guider_has_a_no_op_prepare():
    path = get_path("rf")
    grid = make_grid("uniform", 4, path)
    for name in sorted(set(GUIDERS) - {"learned", "weak-model"}):
        assert build_guider(name, scale=0.5).prepare(grid, path) is None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("path_name", ["rf", "vp-cosine"])
def test_sampling_in_half_precision_follows_float64_on_every_solver(dtype, path_name):
    """A whole 8-step run in float16/bfloat16 stays within 8 machine epsilons (relative to the sample scale) of the
    float64 run from the same noise: a few roundings per step, no overflow, no lost guidance."""
    from conftest import GaussianDenoiser
    from guidelab.sampling import SOLVERS

    path = get_path(path_name)
    grid = make_grid("uniform", 8, path, t_max=0.99)
    eps = torch.finfo(dtype).eps
    cases = [
        ("cfg", {"scale": 3.0}),
        ("apg", {"scale": 3.0}),
        ("cfg++", {"scale": 0.5}),
        ("dynamic-thresholding", {"scale": 3.0, "data_range": (-3.0, 3.0)}),
        ("adamag", {"scale": 3.0}),
    ]
    for solver in SOLVERS:
        for name, params in cases:
            kw = dict(grid=grid, n=64, shape=(2,), cond=0, solver=solver, seed=5)
            half = sample(GaussianDenoiser(path), build_guider(name, **params), dtype=dtype, **kw)
            ref = sample(GaussianDenoiser(path), build_guider(name, **params), dtype=D64, **kw)
            assert half.x.dtype == dtype and torch.isfinite(half.x).all(), (solver, name)
            error = float((half.x.double() - ref.x).abs().max() / ref.x.abs().max())
            assert error <= 8 * eps, (solver, name, error)
