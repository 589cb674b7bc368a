"""Properties of every guider on random inputs (hypothesis): finite in, finite out; permuting the batch permutes
the outputs (no mixing across samples); a sample's result does not depend on the batch it is in."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guidelab.guiders import Predictions, StepContext, build_guider
from guidelab.paths import get_path

DTYPE = torch.float64

CASES = [
    ("cfg", {"scale": 3.0}),
    ("adamag", {"scale": 4.0}),
    ("adamag", {"scale": 4.0, "beta": 1.0, "kappa": 0.0}),
    ("adg", {"scale": 3.0}),
    ("adg", {"scale": 3.0, "theta_max": None, "norm_rescale": True}),
    ("apg", {"scale": 5.0}),
    ("apg", {"scale": 5.0, "eta": 0.5, "momentum": 0.0, "norm_threshold": None}),
    ("beta-cfg", {"scale": 2.0}),
    ("cfg++", {"scale": 0.6}),
    ("cfg-zero-star", {"scale": 4.0, "zero_init_steps": 0}),
    ("dynamic-thresholding", {"scale": 3.0}),
    ("mambo-g", {"scale": 6.0}),
    ("mambo-g", {"scale": 6.0, "space": "x0"}),
    ("rescale", {"scale": 5.0}),
    ("rescale", {"scale": 5.0, "space": "eps"}),
    ("tangential", {"scale": 3.0}),
    ("tangential", {"scale": 3.0, "space": "velocity"}),
    ("weak-model", {"scale": 2.0}),
    ("cfg", {"schedule": "tv-cfg", "scale": 4.0}),
    ("apg", {"schedule": "interval", "scale": 3.0, "lam_lo": 0.0, "lam_hi": None}),
]

values = st.floats(-5, 5, allow_nan=False, allow_infinity=False, allow_subnormal=False, width=64)


@st.composite
def step_inputs(draw):
    batch = draw(st.integers(1, 5))
    dim = draw(st.integers(1, 6))
    flat = st.lists(values, min_size=batch * dim, max_size=batch * dim)

    def tensor():
        return torch.tensor(draw(flat), dtype=DTYPE).reshape(batch, dim)

    x_t, cond = tensor(), tensor()
    # often make u a simple function of c: equal, parallel, antiparallel or zero are the hard cases
    kind = draw(st.sampled_from(["free", "equal", "parallel", "antiparallel", "zero"]))
    uncond = {
        "free": tensor,
        "equal": lambda: cond.clone(),
        "parallel": lambda: 2 * cond,
        "antiparallel": lambda: -0.5 * cond,
        "zero": lambda: torch.zeros_like(cond),
    }[kind]()
    path = get_path(draw(st.sampled_from(["rf", "vp-cosine", "ve"])))
    t = draw(st.floats(0.05, 0.95))
    space = draw(st.sampled_from(["x0", "eps", "velocity"]))
    return x_t, cond, uncond, path, t, space


def run(guider, x_t, cond, uncond, path, t, space):
    steps = 6
    grid = torch.cat([torch.linspace(1.0, t, 3, dtype=DTYPE), torch.linspace(t, 0.0, steps - 1, dtype=DTYPE)[1:]])
    ctx = StepContext(2, steps, float(grid[2]), float(path.lam(grid[2])), grid, path)
    coefficients = path.coefficients(grid[2]).expand_as(x_t)
    raw = {"cond": (cond, space), "uncond": (uncond, space), "guide0": (uncond, space)}
    guider.reset(x_t.shape[0])
    names = {p.name for p in guider.passes(ctx)}
    out = guider.guide(Predictions({k: v for k, v in raw.items() if k in names}, x_t, coefficients), ctx)
    return out.x0_hat, out.eps_hat


@pytest.mark.parametrize(("name", "params"), CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=step_inputs(), seed=st.integers(0, 2**16))
def test_finite_equivariant_and_batch_independent(name, params, data, seed):
    x_t, cond, uncond, path, t, space = data
    guider = build_guider(name, **params)
    x0, eps = run(guider, x_t, cond, uncond, path, t, space)
    assert torch.isfinite(x0).all()
    assert torch.isfinite(eps).all()
    perm = torch.randperm(x_t.shape[0], generator=torch.Generator().manual_seed(seed))
    x0_p, eps_p = run(guider, x_t[perm], cond[perm], uncond[perm], path, t, space)
    torch.testing.assert_close(x0_p, x0[perm], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(eps_p, eps[perm], rtol=1e-9, atol=1e-9)
    for i in range(x_t.shape[0]):
        x0_i, eps_i = run(guider, x_t[i : i + 1], cond[i : i + 1], uncond[i : i + 1], path, t, space)
        torch.testing.assert_close(x0_i, x0[i : i + 1], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(eps_i, eps[i : i + 1], rtol=1e-9, atol=1e-9)


PER_SAMPLE = [
    "cfg",
    "adamag",
    "adg",
    "apg",
    "cfg-zero-star",
    "dynamic-thresholding",
    "mambo-g",
    "rescale",
    "tangential",
]


@pytest.mark.parametrize("name", PER_SAMPLE)
@settings(max_examples=15, deadline=None)
@given(data=step_inputs(), scales=st.lists(st.sampled_from([0.5, 1.0, 2.0, 4.5]), min_size=5, max_size=5))
def test_per_sample_scales_act_per_sample(name, data, scales):
    x_t, cond, uncond, path, t, space = data
    n = x_t.shape[0]
    extra = {"zero_init_steps": 0} if name == "cfg-zero-star" else {}
    x0, eps = run(build_guider(name, scale=scales[:n], **extra), x_t, cond, uncond, path, t, space)
    for i in range(n):
        alone = build_guider(name, scale=scales[i], **extra)
        x0_i, eps_i = run(alone, x_t[i : i + 1], cond[i : i + 1], uncond[i : i + 1], path, t, space)
        torch.testing.assert_close(x0_i, x0[i : i + 1], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(eps_i, eps[i : i + 1], rtol=1e-9, atol=1e-9)
