"""The compiled combines (guidelab.guiders.fused_jit) against the rules written out in numpy and against the torch
path they replace: CFG, CFG-Zero*, APG (with its momentum buffer), MAMBO-G, guidance rescale and TCFG, each run with
the kernels on and off (``compiled`` fixture), in float32 and float64, the model predicting x0, ε or velocity on rf
and vp-cosine, with unrelated conditional and unconditional predictions and at the rules' zero vectors; which inputs
take which path; thread-count independence; the fallback without numba; autograd.

The references and helpers of the one-scale rules (CFG-Zero*, APG, MAMBO-G) are in test_guiders_fused.py, whose
tests also run with the kernels on and off."""

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from guidelab.guiders import Predictions, StepContext, build_guider, fused_jit
from guidelab.paths import get_path
from test_guiders_fused import (
    D64,
    EPS,
    PATHS,
    SPACES,
    case,
    check,
    coefficients,
    guide,
    in_space,
    row_dot,
    row_norm,
    rows,
    to_pair,
)

FULL = [torch.float32, torch.float64]


@pytest.fixture
def calls(monkeypatch):
    """Counts the kernel calls by name (the kernels wrapped, so the numbers are the compiled ones)."""
    assert fused_jit.available()
    counts: dict[str, int] = {}
    real = fused_jit.KERNELS._kernels

    def counted(name, fn):
        def call(*args):
            counts[name] = counts.get(name, 0) + 1
            return fn(*args)

        return call

    spied = {
        dtype: SimpleNamespace(**{name: counted(name, fn) for name, fn in vars(kit).items()})
        for dtype, kit in real.items()
    }
    monkeypatch.setattr(fused_jit.KERNELS, "_kernels", spied)
    return counts


GUIDERS = [
    ("cfg", {}),
    ("cfg-zero-star", {"zero_init_steps": 0}),
    ("cfg-zero-star", {"zero_init_steps": 0, "optimized_scale": False}),
    ("apg", {}),
    ("apg", {"norm_threshold": 1.0, "momentum_form": "ema", "eta": 0.4}),
    ("mambo-g", {}),
    ("mambo-g", {"space": "x0", "alpha": 0.7}),
    ("rescale", {}),
    ("rescale", {"space": "eps", "phi": 1.0}),
    ("tangential", {}),
    ("tangential", {"space": "velocity"}),
]
KERNEL_OF = {"cfg": "affine", "cfg-zero-star": "cfg_zero", "apg": "apg", "mambo-g": "mambo"}
KERNEL_OF |= {"rescale": "rescale", "tangential": "tangential"}


def run(name, params, x_t, c, u, space, path_name="rf", t=0.6, gamma=5.0, index=3):
    guider = build_guider(name, scale=gamma, **params)
    guider.reset(x_t.shape[0])
    return guide(guider, get_path(path_name), t, x_t, c, u, space, index=index)


# --- the rules in numpy, on both paths --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FULL)
@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize(("path_name", "t"), PATHS)
@pytest.mark.parametrize("gamma", [5.0, 0.5, 0.0, -1.0])
def test_cfg_matches_the_rule_in_numpy(compiled, dtype, space, path_name, t, gamma):
    path = get_path(path_name)
    (x_t, c, u), (xn, cn, un) = case(dtype, space, path_name, t)
    a, s, da, ds = coefficients(path, t)
    x0, eps = to_pair(un + gamma * (cn - un), space, xn, a, s, da, ds)
    check(guide(build_guider("cfg", scale=gamma), path, t, x_t, c, u, space), x0, eps, dtype)


def rescale_reference(c, u, gamma, phi):
    x = u + gamma * (c - u)
    std_c, std_x = rows(c).std(1), rows(x).std(1)
    factor = phi * (std_c + EPS) / (std_x + EPS) + 1 - phi
    return x * factor.reshape(-1, *([1] * (x.ndim - 1)))


@pytest.mark.parametrize("dtype", FULL)
@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize(("path_name", "t"), PATHS)
@pytest.mark.parametrize("where", ["velocity", "eps", "x0"])
@pytest.mark.parametrize("phi", [0.7, 0.0, 1.0])
def test_rescale_matches_the_rule_in_numpy(compiled, dtype, space, path_name, t, where, phi):
    path = get_path(path_name)
    (x_t, c, u), (xn, cn, un) = case(dtype, space, path_name, t)
    a, s, da, ds = coefficients(path, t)
    cs = in_space(*to_pair(cn, space, xn, a, s, da, ds), where, da, ds)
    us = in_space(*to_pair(un, space, xn, a, s, da, ds), where, da, ds)
    x0, eps = to_pair(rescale_reference(cs, us, 4.0, phi), where, xn, a, s, da, ds)
    guider = build_guider("rescale", scale=4.0, phi=phi, space=where)
    check(guide(guider, path, t, x_t, c, u, space), x0, eps, dtype)


def tangential_reference(c, u, gamma):
    """TCFG by an SVD per sample (numpy): u' = (u·v₁)·v₁, x̂ = u' + γ·(c − u')."""
    out = np.empty_like(c)
    for i in range(c.shape[0]):
        m = np.stack([c[i].reshape(-1), u[i].reshape(-1)])
        v1 = np.linalg.svd(m, full_matrices=False)[2][0]
        u_par = (m[1] @ v1) * v1
        out[i] = (u_par + gamma * (m[0] - u_par)).reshape(c.shape[1:])
    return out


@pytest.mark.parametrize("dtype", FULL)
@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize(("path_name", "t"), PATHS)
@pytest.mark.parametrize("where", ["eps", "velocity", "x0"])
def test_tangential_matches_the_rule_in_numpy(compiled, dtype, space, path_name, t, where):
    path = get_path(path_name)
    (x_t, c, u), (xn, cn, un) = case(dtype, space, path_name, t)
    a, s, da, ds = coefficients(path, t)
    cs = in_space(*to_pair(cn, space, xn, a, s, da, ds), where, da, ds)
    us = in_space(*to_pair(un, space, xn, a, s, da, ds), where, da, ds)
    x0, eps = to_pair(tangential_reference(cs, us, 3.0), where, xn, a, s, da, ds)
    guider = build_guider("tangential", scale=3.0, space=where)
    check(guide(guider, path, t, x_t, c, u, space), x0, eps, dtype)


@pytest.mark.parametrize("dtype", FULL)
@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize(("path_name", "t"), PATHS)
@pytest.mark.parametrize("form", ["sum", "ema"])
@pytest.mark.parametrize("threshold", [2.0, None])
def test_apg_momentum_over_several_steps(compiled, dtype, space, path_name, t, form, threshold):
    """Five steps of one trajectory, each with a corrector evaluation (stage 1: reads the buffer, does not write
    it), against numpy; the sum form is the paper's, the EMA Δ̄ = β·Δ̄_prev + (1 − β)·Δ from the first Δ."""
    path = get_path(path_name)
    a, s, da, ds = coefficients(path, t)
    gamma, eta, beta = 4.0, 0.2, -0.5
    guider = build_guider("apg", scale=gamma, eta=eta, momentum=beta, norm_threshold=threshold, momentum_form=form)
    guider.reset(3)
    prev = None
    grid = torch.linspace(1.0, 0.0, 11, dtype=D64)
    for step in range(5):
        for stage in (0, 1):
            (x_t, c, u), (xn, cn, un) = case(dtype, space, path_name, t, seed=10 * step + stage)
            c0 = to_pair(cn, space, xn, a, s, da, ds)[0]
            u0 = to_pair(un, space, xn, a, s, da, ds)[0]
            delta = c0 - u0
            if prev is None:
                average = delta
            else:
                average = delta + beta * prev if form == "sum" else beta * prev + (1 - beta) * delta
            d = average
            if threshold is not None:
                d = d * np.minimum(1.0, threshold / (row_norm(d) + EPS))
            parallel = row_dot(d, c0) / (row_dot(c0, c0) + EPS) * c0
            x0_hat = c0 + (gamma - 1) * (d - parallel + eta * parallel)
            ctx = StepContext(step, 10, t, float(path.lam(torch.tensor(t, dtype=D64))), grid, path, stage=stage)
            coefs = path.coefficients(torch.tensor(t, dtype=D64)).expand_as(x_t)
            out = guider.guide(Predictions({"cond": (c, space), "uncond": (u, space)}, x_t, coefs), ctx)
            check(out, x0_hat, (xn - a * x0_hat) / s, dtype)
            if stage == 0:
                prev = average


# --- zero vectors ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FULL)
def test_cfg_zero_star_at_zero_unconditional_velocity(compiled, dtype):
    """v_u = 0 exactly (a velocity model): s* = 0, v̂ = γ·v_c."""
    path = get_path("rf")
    (x_t, c, u), (xn, cn, _) = case(dtype, "velocity", "rf", 0.6)
    u = torch.zeros_like(u)
    a, s, da, ds = coefficients(path, 0.6)
    x0, eps = to_pair(5.0 * cn, "velocity", xn, a, s, da, ds)
    check(run("cfg-zero-star", {"zero_init_steps": 0}, x_t, c, u, "velocity"), x0, eps, dtype)


@pytest.mark.parametrize("dtype", FULL)
@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize("name", ["apg", "mambo-g", "tangential", "rescale", "cfg-zero-star"])
def test_equal_predictions_give_the_conditional_pair(compiled, dtype, space, name):
    """c = u (Δ = 0 for APG and MAMBO-G): every rule returns the conditional model's own pair, to rounding."""
    path = get_path("vp-cosine")
    (x_t, c, _), (xn, cn, _) = case(dtype, space, "vp-cosine", 0.4)
    a, s, da, ds = coefficients(path, 0.4)
    x0, eps = to_pair(cn, space, xn, a, s, da, ds)
    params = {"zero_init_steps": 0} if name == "cfg-zero-star" else {}
    check(run(name, params, x_t, c, c.clone(), space, "vp-cosine", 0.4), x0, eps, dtype)


@pytest.mark.parametrize("dtype", FULL)
def test_zero_predictions(compiled, dtype):
    """u = 0: MAMBO-G gives c (r = ||c||/ε, γ' = 1), TCFG gives γ·c (u' = 0); c = 0: APG gives −(γ − 1)·u
    rescaled by its threshold (Δ∥ = 0), TCFG gives (1 − γ)·u (u' = u); a constant guided prediction is left unchanged by
    rescale."""
    path = get_path("rf")
    (x_t, c, u), (xn, cn, un) = case(dtype, "x0", "rf", 0.6)
    a, s, _, _ = coefficients(path, 0.6)
    zero = torch.zeros_like(c)

    def pair_of(x0):
        return x0, (xn - a * x0) / s

    check(run("mambo-g", {"space": "x0"}, x_t, c, zero, "x0"), *pair_of(cn), dtype)
    check(run("tangential", {"space": "x0"}, x_t, c, zero, "x0"), *pair_of(5.0 * cn), dtype)
    check(run("tangential", {"space": "x0"}, x_t, zero, u, "x0"), *pair_of(-4.0 * un), dtype)
    d = -un * np.minimum(1.0, 15.0 / (row_norm(un) + EPS))
    check(run("apg", {}, x_t, zero, u, "x0"), *pair_of(4.0 * d), dtype)
    flat_c = torch.full_like(c, 0.25)
    flat_u = torch.full_like(c, -0.5)
    x = -0.5 + 5.0 * 0.75
    check(run("rescale", {"space": "x0"}, x_t, flat_c, flat_u, "x0"), *pair_of(np.full_like(cn, x)), dtype)


# --- the two paths agree to rounding ----------------------------------------------------------------------------------


def two_paths(monkeypatch, name, params, dtype, space, path_name, t, shape=(4, 3, 5)):
    (x_t, c, u), _ = case(dtype, space, path_name, t, shape=shape, seed=7)
    fast = run(name, params, x_t, c, u, space, path_name, t)
    with monkeypatch.context() as m:
        m.setattr(fused_jit.KERNELS, "_kernels", False)
        slow = run(name, params, x_t, c, u, space, path_name, t)
    return fast, slow


# float64: both paths compute in float64 and differ only in the order of the sums and in which intermediate is
# rounded (D·eps with D = 15 and γ = 5's cancellation ≈ 10⁻¹⁴); float32: the torch path rounds its intermediate
# tensors (the guided prediction before the pair, the reductions in float32) where the kernels round each product
# and reduce in float64: a few float32 ulps amplified by γ = 5's cancellation and the pair conversion (≲ 10⁻⁵).
AGREE = {torch.float64: 1e-13, torch.float32: 1e-5}


@pytest.mark.parametrize("dtype", FULL)
@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize(("path_name", "t"), PATHS)
@pytest.mark.parametrize(("name", "params"), GUIDERS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(GUIDERS)])
def test_the_compiled_and_torch_paths_agree_to_rounding(monkeypatch, calls, name, params, dtype, space, path_name, t):
    fast, slow = two_paths(monkeypatch, name, params, dtype, space, path_name, t)
    kernel = "affine" if params.get("optimized_scale") is False else KERNEL_OF[name]
    assert calls == {kernel: 1}
    assert fast.x0_hat.dtype == fast.eps_hat.dtype == dtype and fast.x0_hat.shape == slow.x0_hat.shape
    for got, want in ((fast.x0_hat, slow.x0_hat), (fast.eps_hat, slow.eps_hat)):
        err = (rows(got.double() - want.double()).norm(dim=1) / rows(want.double()).norm(dim=1)).max()
        assert err <= AGREE[dtype], float(err)


def test_a_samples_result_does_not_depend_on_the_others():
    """Each row of a batch equals the same sample guided alone, bitwise (the kernels work per row)."""
    (x_t, c, u), _ = case(torch.float32, "velocity", "rf", 0.6, shape=(5, 16), seed=3)
    for name, params in GUIDERS:
        whole = run(name, params, x_t, c, u, "velocity")
        for i in (0, 3):
            alone = run(name, params, x_t[i : i + 1], c[i : i + 1], u[i : i + 1], "velocity")
            assert torch.equal(whole.x0_hat[i : i + 1], alone.x0_hat), name
            assert torch.equal(whole.eps_hat[i : i + 1], alone.eps_hat), name


def test_bitwise_the_same_at_one_and_two_threads():
    threads = torch.get_num_threads()
    (x_t, c, u), _ = case(torch.float32, "velocity", "rf", 0.6, shape=(512, 256), seed=5)
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append([run(name, params, x_t, c, u, "velocity") for name, params in GUIDERS])
    finally:
        torch.set_num_threads(threads)
    for one, two in zip(*results, strict=True):
        assert torch.equal(one.x0_hat, two.x0_hat) and torch.equal(one.eps_hat, two.eps_hat)


# --- which inputs take which path ---------------------------------------------------------------------------------


def test_inputs_the_kernels_do_not_take_keep_the_torch_path(calls):
    (x_t, c, u), _ = case(torch.float32, "velocity", "rf", 0.6, shape=(4, 6), seed=1)
    run("cfg", {}, x_t, c, u, "velocity")
    assert calls == {"affine": 1}
    calls.clear()
    (h_x, h_c, h_u), _ = case(torch.float16, "velocity", "rf", 0.6, shape=(4, 6), seed=1)
    for name, params in GUIDERS:
        run(name, params, h_x, h_c, h_u, "velocity")  # half precision: torch, in float32
        run(name, params, x_t, c.t().contiguous().t(), u, "velocity")  # not contiguous
        guider = build_guider(name, scale=torch.full((4,), 3.0, dtype=D64), **params)
        guider.reset(4)
        guide(guider, get_path("rf"), 0.6, x_t, c, u, "velocity")  # a per-sample scale
    assert calls == {}
    out = run("rescale", {"space": "eps"}, x_t, c, u, "velocity", t=1.0)  # ε at α = 0: the pure-noise rule
    assert calls == {} and torch.isfinite(out.x0_hat).all()
    for name, params in GUIDERS:  # a half-precision x_t: the pair comes back in its dtype, as from the torch path
        assert run(name, params, h_x, c, u, "velocity").x0_hat.dtype == torch.float16
    assert calls == {}


def test_a_recorded_input_takes_the_torch_path_and_gradients_flow(calls):
    (x_t, c, u), _ = case(torch.float64, "velocity", "rf", 0.6, shape=(3, 5), seed=2)
    for name, params in GUIDERS:
        c_grad = c.clone().requires_grad_()
        out = run(name, params, x_t, c_grad, u, "velocity")
        assert out.x0_hat.grad_fn is not None
        (out.x0_hat.sum() + out.eps_hat.square().sum()).backward()
        assert c_grad.grad is not None and torch.isfinite(c_grad.grad).all() and c_grad.grad.abs().sum() > 0
        with torch.no_grad():  # no autograd recording: the kernels, the same numbers to rounding
            fast = run(name, params, x_t, c_grad, u, "velocity")
        np.testing.assert_allclose(fast.x0_hat.numpy(), out.x0_hat.detach().numpy(), rtol=1e-12, atol=1e-12)
    assert sum(calls.values()) == len(GUIDERS)  # only the no_grad calls


@pytest.mark.parametrize("why", ["GUIDELAB_COMPILE=0", "numba missing"])
def test_without_numba_the_torch_numbers(monkeypatch, why):
    """Turned off or numba not installed (a fresh Kernels): every guider gives the torch path's numbers, bitwise."""
    (x_t, c, u), _ = case(torch.float32, "eps", "vp-cosine", 0.4, shape=(4, 7), seed=9)
    with monkeypatch.context() as m:
        m.setattr(fused_jit.KERNELS, "_kernels", False)
        expected = [run(name, params, x_t, c, u, "eps", "vp-cosine", 0.4) for name, params in GUIDERS]
    monkeypatch.setattr(fused_jit.KERNELS, "_kernels", None)  # as in a fresh process
    if why == "numba missing":
        monkeypatch.setitem(sys.modules, "numba", None)  # ``import numba`` raises ImportError
        for name in [k for k in sys.modules if k.startswith("guidelab.guiders._fused_kernels")]:
            monkeypatch.delitem(sys.modules, name)
    else:
        monkeypatch.setenv("GUIDELAB_COMPILE", "0")
    got = [run(name, params, x_t, c, u, "eps", "vp-cosine", 0.4) for name, params in GUIDERS]
    assert not fused_jit.available()
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a.x0_hat, b.x0_hat) and torch.equal(a.eps_hat, b.eps_hat)
    fused_jit.KERNELS.reset()  # the next test loads them again


def test_importing_guidelab_does_not_import_numba():
    code = (
        "import sys, guidelab, guidelab.cli, guidelab.guiders, guidelab.sampling\n"
        "from guidelab.guiders import fused_jit\n"
        "assert 'numba' not in sys.modules, 'numba imported at import time'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
