"""The compiled (numba) per-particle loops of the exact Gaussian- and box-mixture denoisers
(guidelab.targets.mixture_jit) against the torch paths and the pre-issue-17 oracles.

- float64: 1e-10 relative to the torch path and the oracles for D = 1, 2, 3 (and 4), shared and per-sample times
  from t → 0 to t = 1 on the rf and vp paths, conditional, unconditional and mixed labels with the null class,
  per-component log-densities; box far tails against 50-digit mpmath; the erfcx table against mpmath.
- float32: computed in float64 and rounded once, so within float32 rounding of the float64 values.
- σ = 0 with a singular covariance is the same ValueError; NaN and infinite inputs give NaN where the torch path does.
- The same bits on 1 and 2 torch threads and for any split into chunks; without numba (or with
  ``GUIDELAB_COMPILE=0``) the torch path's numbers; autograd through x_t takes the torch path.
- ``ExactDenoiser(compile="auto")`` does not try torch.compile where the kernels run; a forked child starts its own
  threads for them.
"""

from __future__ import annotations

import math
import os
import signal
import sys
from time import monotonic, sleep

import numpy as np
import pytest
import torch

import _oracle_box_mixture as box_oracle
from _target_points import assert_relative, mixture_pair, tail_points, truncated_normal_mp
from guidelab import jit
from guidelab.paths import get_path
from guidelab.targets import BoxMixture, GaussianMixture, mixture_jit

TIMES = [0.0, 1e-6, 0.3, 1 - 1e-6, 1.0]
BOX_TIMES = [1e-9, 1e-3, 0.3, 0.9, 1 - 1e-9, 1.0]


gaussian = mixture_pair


def boxes(dim: int, components: int, seed: int) -> tuple[BoxMixture, box_oracle.BoxMixture]:
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(components, dim, generator=g, dtype=torch.float64) * 2
    high = low + 0.2 + torch.rand(components, dim, generator=g, dtype=torch.float64)
    kwargs = {"component_class": torch.arange(components) % 2, "weights": torch.rand(components, generator=g) + 0.2}
    return BoxMixture(low, high, **kwargs), box_oracle.BoxMixture(low, high, **kwargs)


def torch_path(target, fn):
    """``fn()`` with the compiled loop turned off for ``target`` (its torch path)."""
    saved = target.jit_max_work
    target.jit_max_work = 0
    try:
        return fn()
    finally:
        target.jit_max_work = saved


def all_quantities(target, x, t, path, cond) -> list[torch.Tensor]:
    mean, log_prob = target.posterior_mean_and_log_prob(x, t, path, cond)
    return [mean, log_prob, target.log_prob_t(x, t, path, cond), target.component_log_prob_t(x, t, path)]


def agrees_with_torch_and_oracle(new, old, x, t, path, cond):
    """Every quantity of ``new`` (its compiled loop) at ``x`` equals its torch path's and the kept oracle ``old``'s
    to 1e-10 relative (``assert_relative``)."""
    got = all_quantities(new, x, t, path, cond)
    for a, b in zip(got, torch_path(new, lambda: all_quantities(new, x, t, path, cond)), strict=True):
        assert_relative(a, b)
    for a, b in zip(got, all_quantities(old, x, t, path, cond), strict=True):
        assert_relative(a, b)


def test_the_kernels_load_here():
    """numba is a dev dependency: the kernels must load (and pass their probe) in the test environment."""
    assert mixture_jit.available()


@pytest.mark.parametrize(
    ("dim", "components", "classes", "path_name"),
    [(1, 3, 2, "rf"), (2, 8, 4, "vp-cosine"), (3, 5, 2, "rf"), (4, 16, 3, "vp-cosine")],
)
def test_gaussian_kernels_equal_the_torch_path_and_the_oracle(dim, components, classes, path_name):
    path = get_path(path_name)
    new, old = gaussian(dim, components, classes, seed=dim + components)
    n = 40
    mixed = torch.arange(n) % (classes + 1) - 1  # null and every class
    x = tail_points(new, path, 0.5, n, seed=0)
    assert new.uses_compiled_kernels(x)
    for t in TIMES:
        x = tail_points(new, path, t, n, seed=int(1e6 * t) % 97)
        per_sample = torch.full((n,), float(t), dtype=torch.float64) + torch.linspace(0, 1e-3, n, dtype=torch.float64)
        for time in (t, per_sample.clamp(max=1.0)):
            for cond in (mixed, None, classes - 1, -1):
                got = all_quantities(new, x, time, path, cond)
                want = torch_path(new, lambda x=x, time=time, cond=cond: all_quantities(new, x, time, path, cond))
                for a, b in zip(got, want, strict=True):
                    assert_relative(a, b)
                for a, b in zip(got, all_quantities(old, x, time, path, cond), strict=True):
                    assert_relative(a, b)


def test_gaussian_kernels_in_float32_round_the_float64_values():
    new, _ = gaussian(2, 8, 4, seed=3)
    path = get_path("rf")
    cond = torch.arange(64) % 5 - 1
    for t in (0.0, 1e-4, 0.5, 1.0):
        x = tail_points(new, path, t, 64, seed=1)
        for time in (t, torch.linspace(0.0, 1.0, 64, dtype=torch.float64)):
            got = new.posterior_mean(x.float(), time, path, cond)
            assert got.dtype == torch.float32 and bool(torch.isfinite(got).all())
            wide = new.posterior_mean(x, time, path, cond)
            assert torch.equal(got, new.posterior_mean(x.float().double(), time, path, cond).float())  # rounded once
            eager = torch_path(new, lambda x=x, time=time: new.posterior_mean(x.float(), time, path, cond))
            err = (got.double() - wide).abs().max() / wide.abs().max().clamp_min(1)
            err_eager = (eager.double() - wide).abs().max() / wide.abs().max().clamp_min(1)
            assert err <= 1e-6 and err <= err_eager + 1e-7


@pytest.mark.parametrize(("dim", "components", "path_name"), [(1, 2, "rf"), (2, 8, "vp-cosine"), (3, 4, "rf")])
def test_box_kernels_equal_the_torch_path_and_the_oracle(dim, components, path_name):
    """Every regime: the Hermite series (α → 0), the closed form inside and outside the boxes, far outside every box
    (x = 40), one time per sample across [1e-3, 1]; float32 inputs take the same float64 loop."""
    path = get_path(path_name)
    new, old = boxes(dim, components, seed=dim)
    n = 48
    mixed = torch.arange(n) % 3 - 1
    far = torch.full((4, dim), 40.0, dtype=torch.float64)
    far[1] *= -1
    for t in BOX_TIMES:
        x = tail_points(new, path, t, n, seed=int(1e3 * t) % 89)
        assert new.uses_compiled_kernels(x)
        for pts, cond in ((x, mixed), (x, None), (x, 0), (far, None), (far, 1)):
            agrees_with_torch_and_oracle(new, old, pts, t, path, cond)
        got32 = new.posterior_mean(x.float(), t, path, mixed)
        assert torch.equal(got32, new.posterior_mean(x.float().double(), t, path, mixed).float())
    times = torch.linspace(1e-3, 1.0, n, dtype=torch.float64)
    x = tail_points(new, path, 0.5, n, seed=5)
    for cond in (mixed, None):
        got = all_quantities(new, x, times, path, cond)
        for a, b in zip(got, all_quantities(old, x, times, path, cond), strict=True):
            assert_relative(a, b)


def test_box_kernels_at_t_zero_take_the_torch_path():
    """σ = 0 (the data itself): the uniform density and x/α, by the torch path, with or without the kernels."""
    new, old = boxes(2, 5, seed=2)
    path = get_path("rf")
    x = tail_points(new, path, 0.0, 30, seed=1)
    for time in (0.0, torch.linspace(0.0, 0.5, 30, dtype=torch.float64)):
        for a, b in zip(
            all_quantities(new, x, time, path, None), all_quantities(old, x, time, path, None), strict=True
        ):
            assert_relative(a, b)


def test_box_kernels_against_high_precision():
    """One interval per target, the regimes of test_targets_box's mpmath test (far tails, tiny σ, tiny α, near the
    series switch) plus points far outside at tiny σ, through the compiled loop, against 50-digit mpmath."""
    reference = truncated_normal_mp

    rng = np.random.default_rng(0)
    path = get_path("rf")  # α = 1 − t, σ = t
    checked = 0
    for s in (0.9, 0.1, 1e-4, 0.98, 0.995, 1 - 1e-5, 0.7, 1e-7):
        a = 1 - s
        lo = rng.normal() * 2
        hi = lo + rng.uniform(0.2, 2)
        target = BoxMixture([[lo]], [[hi]])
        xs = a * rng.normal(size=40) * 2 + s * rng.normal(size=40) * 3
        xs = np.concatenate([xs, a * np.array([lo - 3, hi + 3, lo - 50, hi + 50]), [a * (lo + hi) / 2]])
        x = torch.tensor(xs, dtype=torch.float64)[:, None]
        assert target.uses_compiled_kernels(x)
        mean, log_p = target.posterior_mean_and_log_prob(x, s, path, None)
        ref = np.array([reference(v, a, s, lo, hi) for v in xs])
        np.testing.assert_allclose(log_p.numpy(), ref[:, 0], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(mean[:, 0].numpy(), ref[:, 1], rtol=1e-11, atol=1e-11)
        checked += len(xs)
    assert checked == 8 * 45


def test_erfcx_table_against_mpmath():
    import mpmath as mp

    from guidelab.targets import _mixture_kernels as kernels

    mp.mp.dps = 40
    table = mixture_jit.erfcx_table()
    rng = np.random.default_rng(1)
    ys = np.concatenate(
        [[0.0, 1e-300, 0.25, 25.999, 26.0, 30.0, 1e3, 1e8], rng.uniform(0, 3, 300), rng.uniform(0, 40, 300)]
    )
    worst = 0.0
    for y in ys:
        ref = mp.exp(mp.mpf(y) ** 2) * mp.erfc(mp.mpf(y))
        worst = max(worst, abs(float((mp.mpf(kernels.erfcx(float(y), table)) - ref) / ref)))
    assert worst < 4e-15, worst
    assert math.isnan(kernels.erfcx(float("nan"), table))


def test_singular_covariance_at_sigma_zero_is_refused_as_by_the_torch_path():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 2, 1))
    target = GaussianMixture(rng.normal(size=(3, 2)), np.einsum("kir,kjr->kij", a, a), allow_singular=True)
    path = get_path("rf")
    x = torch.randn(10, 2, dtype=torch.float64)
    assert target.uses_compiled_kernels(x)
    for time in (0.0, torch.linspace(0.0, 0.5, 10, dtype=torch.float64)):
        with pytest.raises(ValueError, match="t: σ = 0"):
            target.posterior_mean(x, time, path, None)
        with pytest.raises(ValueError, match="t: σ = 0"):
            torch_path(target, lambda time=time: target.posterior_mean(x, time, path, None))
    got = target.posterior_mean(x, 0.3, path, None)  # σ > 0: the projection onto each component's line
    assert_relative(got, torch_path(target, lambda: target.posterior_mean(x, 0.3, path, None)))


def rows(v: torch.Tensor) -> torch.Tensor:
    """Which rows are finite."""
    return v.isfinite().all(-1) if v.ndim > 1 else v.isfinite()


@pytest.mark.parametrize("kind", ["gaussian", "box"])
def test_nan_and_infinite_inputs_give_nan_where_the_torch_path_does(kind):
    target = gaussian(2, 8, 4, seed=1)[0] if kind == "gaussian" else boxes(2, 6, seed=1)[0]
    path = get_path("rf")
    x = torch.randn(6, 2, dtype=torch.float64)
    x[1, 0], x[2, 1], x[3, 0] = float("nan"), float("inf"), -float("inf")
    cond = torch.tensor([-1, 0, 1, -1, 0, 1])
    for time in (0.3, torch.linspace(0.2, 0.8, 6, dtype=torch.float64)):
        got = all_quantities(target, x, time, path, cond)
        want = torch_path(target, lambda time=time: all_quantities(target, x, time, path, cond))
        for a, b in zip(got, want, strict=True):
            assert torch.equal(rows(a), rows(b))
            assert torch.equal(rows(a), torch.tensor([True, False, False, False, True, True]))
            assert_relative(a[rows(b)], b[rows(b)])


@pytest.mark.parametrize("kind", ["gaussian", "box"])
def test_same_bits_on_every_thread_count_and_split(monkeypatch, kind):
    target = gaussian(2, 8, 4, seed=2)[0] if kind == "gaussian" else boxes(2, 8, seed=2)[0]
    path = get_path("rf")
    n = 2 * mixture_jit.MIN_CHUNK + 777
    x = tail_points(target, path, 0.4, n, seed=3)
    cond = torch.arange(n) % 5 - 1 if kind == "gaussian" else torch.arange(n) % 3 - 1
    times = torch.linspace(0.1, 0.9, n, dtype=torch.float64)
    threads = torch.get_num_threads()

    def values():
        return [*all_quantities(target, x, 0.4, path, cond), target.posterior_mean(x, times, path, cond)]

    try:
        torch.set_num_threads(1)
        one = values()
        torch.set_num_threads(2)
        two = values()
        monkeypatch.setattr(mixture_jit, "MIN_CHUNK", 1)  # as many chunks as threads, ragged ends
        torch.set_num_threads(3)
        three = values()
    finally:
        torch.set_num_threads(threads)
    for a, b, c in zip(one, two, three, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)


@pytest.mark.parametrize("why", ["GUIDELAB_COMPILE=0", "numba missing"])
def test_without_the_kernels_the_torch_path(monkeypatch, why):
    """Turned off, or numba not installed: the same calls give the torch path's numbers, never an error."""
    new, _ = gaussian(2, 8, 4, seed=4)
    box, _ = boxes(2, 4, seed=4)
    path = get_path("rf")
    x = tail_points(new, path, 0.3, 50, seed=1)
    xb = tail_points(box, path, 0.3, 50, seed=1)
    cond = torch.arange(50) % 3 - 1
    want = torch_path(new, lambda: all_quantities(new, x, 0.3, path, cond))
    want_box = torch_path(box, lambda: all_quantities(box, xb, 0.3, path, cond))
    monkeypatch.setattr(mixture_jit.KERNELS, "_kernels", None)  # as in a fresh process
    if why == "numba missing":
        monkeypatch.setitem(sys.modules, "numba", None)  # ``import numba`` raises ImportError
    else:
        monkeypatch.setenv("GUIDELAB_COMPILE", "0")
        assert not jit.enabled()
    assert not new.uses_compiled_kernels(x) and not box.uses_compiled_kernels(xb)
    for a, b in zip(all_quantities(new, x, 0.3, path, cond), want, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(all_quantities(box, xb, 0.3, path, cond), want_box, strict=True):
        assert torch.equal(a, b)
    with pytest.raises(RuntimeError, match="numba"):
        mixture_jit.KERNELS.get()


@pytest.mark.parametrize("kind", ["gaussian", "box"])
def test_autograd_takes_the_torch_path_and_gradients_flow(kind):
    """x_t requiring a gradient: the torch path (autograd through it); Tweedie's formula links its gradient to the
    compiled posterior mean."""
    target = gaussian(2, 8, 4, seed=5)[0] if kind == "gaussian" else boxes(2, 6, seed=5)[0]
    path = get_path("rf")
    t = 0.4
    x = tail_points(target, path, t, 32, seed=2)
    cond = torch.arange(32) % 3 - 1
    xg = x.clone().requires_grad_(True)
    assert not target.uses_compiled_kernels(xg)
    with torch.no_grad():
        assert target.uses_compiled_kernels(xg)
    (grad,) = torch.autograd.grad(target.log_prob_t(xg, t, path, cond).sum(), xg)
    assert bool(torch.isfinite(grad).all())
    a, s = 1 - t, t
    tweedie = (x + s * s * grad) / a
    assert_relative(target.posterior_mean(x, t, path, cond), tweedie, rtol=1e-8)


def test_exact_denoiser_auto_does_not_compile_where_the_kernels_run(monkeypatch):
    import guidelab.targets.base as base

    calls: list = []

    def recording(fn, **kwargs):
        calls.append(kwargs)
        return fn

    monkeypatch.setattr(torch, "compile", recording)
    monkeypatch.setattr(base, "COMPILE_MIN_EVALUATIONS", 0)
    monkeypatch.setattr(base, "COMPILE_MIN_THREADS", 1)
    target, _ = gaussian(2, 8, 4, seed=6)
    path = get_path("rf")
    x = tail_points(target, path, 0.5, 32, seed=2)
    t = torch.full((32,), 0.5, dtype=torch.float64)
    den = target.denoiser(path)
    for _ in range(3):
        den(x, t, None)
    assert calls == [] and den.evaluated == 96
    forced = target.denoiser(path, compile=True)  # True: torch.compile of the torch path, as documented
    forced(x, t, None)
    assert len(calls) == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_starts_its_own_threads():
    """The loops' thread pool does not survive a fork (its threads would not exist in the child): a child forked
    after a two-thread call evaluates on new threads, with the same bits."""
    target, _ = gaussian(2, 8, 4, seed=7)
    path = get_path("rf")
    x = tail_points(target, path, 0.3, 2 * mixture_jit.MIN_CHUNK + 5, seed=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        want = target.posterior_mean(x, 0.3, path, None)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            same = torch.equal(target.posterior_mean(x, 0.3, path, None), want)
            os._exit(0 if same else 3)
    finally:
        torch.set_num_threads(threads)
    deadline = monotonic() + 120
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child did not finish")
        sleep(0.05)
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.parametrize("kind", ["gaussian", "box"])
def test_times_requiring_a_gradient_take_the_torch_path(kind):
    """Per-sample times that require a gradient: the torch path (the compiled loop reads them as numpy arrays, which
    raised); the box's d log p_t/dt there agrees with central differences of the compiled log-density (the Gaussian
    mixture's torch path writes its outputs in place, so it has no gradient in t with or without the kernels)."""
    target = gaussian(2, 8, 4, seed=5)[0] if kind == "gaussian" else boxes(2, 4, seed=1)[0]
    path = get_path("rf")
    x = tail_points(target, path, 0.4, 6, seed=3)
    cond = torch.tensor([0, 1, -1, 0, 1, -1])
    t = torch.linspace(0.2, 0.8, 6, dtype=torch.float64).requires_grad_()
    assert not target.uses_compiled_kernels(x, t) and target.uses_compiled_kernels(x, t.detach())
    if kind == "gaussian":
        return
    (grad,) = torch.autograd.grad(target.log_prob_t(x, t, path, cond).sum(), t)
    h = 1e-6
    with torch.no_grad():
        fd = (target.log_prob_t(x, t + h, path, cond) - target.log_prob_t(x, t - h, path, cond)) / (2 * h)
    assert_relative(grad, fd, rtol=1e-5)


def test_box_pruning_keeps_the_component_that_dominates_in_many_dimensions():
    """D = 10, one particle far outside box A in every dimension and outside box B in one: each dimension's factor
    lifts A's entry-wise total far above its true log-weight, so pruning against that total (not the log-weight)
    dropped B, the component that carries the weight: the compiled loop must equal the torch path there."""
    dim, t = 10, 1e-3
    a, s = 1 - t, t
    x0 = 1000 * s * math.sqrt(2)
    low = torch.tensor([[-1.0] * dim, [0.0] + [-4.0] * (dim - 1)], dtype=torch.float64)
    high = torch.tensor([[0.0] * dim, [1.0] + [6.0] * (dim - 1)], dtype=torch.float64)
    # B's near end in dimension 0 at 3162.2849 σ√2: B's entry-wise bound lies 60 below A's (pruned against A's total,
    # in the window −66..−50 where it was wrongly dropped) while its true log-weight lies 6 above A's
    low[1, 0] = (x0 - 3162.2848567 * s * math.sqrt(2)) / a - 1
    high[1, 0] = low[1, 0] + 1
    target, path = BoxMixture(low, high), get_path("rf")
    x, cond = torch.full((1, dim), x0, dtype=torch.float64), torch.tensor([-1])
    assert target.uses_compiled_kernels(x)
    compiled = all_quantities(target, x, t, path, cond)
    for new, old in zip(compiled, torch_path(target, lambda: all_quantities(target, x, t, path, cond)), strict=True):
        assert_relative(new, old)


def test_box_kernel_inside_a_thousand_dimensions_does_not_overflow():
    """Inside a box every entry's factor is about 2, so their product overflows past D ≈ 1024 (it gave log p = +inf
    and a NaN mean): the loop sums the logs there, as it does in the far tails."""
    dim = 1030
    low = torch.stack([torch.full((dim,), -1.0), torch.full((dim,), -0.5)]).double()
    target, path = BoxMixture(low, low + 2.0), get_path("rf")
    x, cond = torch.zeros(2, dim, dtype=torch.float64), torch.tensor([-1, 0])
    assert target.uses_compiled_kernels(x)
    mean, log_prob = target.posterior_mean_and_log_prob(x, 0.01, path, cond)
    ref_mean, ref_lp = torch_path(target, lambda: target.posterior_mean_and_log_prob(x, 0.01, path, cond))
    assert_relative(log_prob, ref_lp)
    assert float((mean - ref_mean).abs().max()) < 1e-12  # 0 against the torch path's 5e-297


def test_box_loop_special_functions_against_mpmath():
    """The box loop's vectorised erfcx (one polynomial in t = (y − 4)/(y + 4), no table, no tail series), exp and
    e^d − 1 (one reduction for both) and log of a normal number, against 40-digit mpmath over their whole ranges."""
    import mpmath as mp

    from guidelab.targets import _mixture_kernels as kernels

    mixture_jit.KERNELS.get()
    mp.mp.dps = 40
    rng = np.random.default_rng(3)
    ys = np.concatenate(
        [
            [0.0, 1e-300, 6.5, 25.999, 26.0, 1e3, 1e8, 1e50, 1e100],
            rng.uniform(0, 8, 300),
            10 ** rng.uniform(-3, 100, 200),
        ]
    )
    worst = 0.0
    for y in ys:
        ref = mp.exp(mp.mpf(y) ** 2) * mp.erfc(mp.mpf(y))
        worst = max(worst, abs(float((mp.mpf(kernels.erfcx_fast(float(y))) - ref) / ref)))
    assert worst < 1e-15, worst
    worst_exp = worst_expm1 = 0.0
    for d in np.concatenate(
        [[0.0, -1e-300, -1e-12, -0.3465, -0.3466, -1.0, -50.0, -699.9], -(10 ** rng.uniform(-9, 2.8, 300))]
    ):
        e, em = kernels.exp_pair(float(d))
        worst_exp = max(worst_exp, abs(float((mp.mpf(e) - mp.exp(d)) / mp.exp(d))))
        if d != 0:
            worst_expm1 = max(worst_expm1, abs(float((mp.mpf(em) - mp.expm1(d)) / mp.expm1(d))))
    assert worst_exp < 1e-15 and worst_expm1 < 1e-15, (worst_exp, worst_expm1)
    assert kernels.exp_pair(-700.5) == (0.0, -1.0) and kernels.exp_pair(-math.inf) == (0.0, -1.0)
    worst = 0.0
    for v in np.concatenate(
        [[1.0, 1 - 2**-53, 1 + 2**-52, 2**-1022, 1e-290, 1e290, math.sqrt(2)], 10 ** rng.uniform(-300, 300, 300)]
    ):
        ref = mp.log(mp.mpf(v))
        err = abs(mp.mpf(kernels.log_normal(float(v))) - ref)
        worst = max(worst, float(err / max(abs(ref), mp.mpf(1e-300))) if ref != 0 else float(err))
    assert worst < 1e-15, worst
    assert math.isnan(kernels.log_normal(math.nan))


def test_box_loop_on_edges_deep_inside_and_far_out():
    """Particles exactly on a box's ends, deep inside a wide box (e^{−n²} flushed to 0), just outside, far out (n
    beyond 26, where the old loop switched to its tail series; beyond 1e100, left to the scalar pass) and at times
    where some entries take the Hermite series: 1-D against 50-digit mpmath (the mean where x/α is below 3000:
    beyond, x/α − (σ/α)·E[z] cancels to fewer digits than checked, in any path), 2-D (one box wide, one narrow)
    against the torch path and the pre-issue-17 oracle."""
    path = get_path("rf")
    for s in (0.3, 1e-3, 0.985, 1e-101):  # σ = t on rf; 0.985: the series; 1e-101: every distance past 1e100
        a = 1 - s
        lo, hi = -0.5, 1.25
        target = BoxMixture([[lo]], [[hi]])
        out = s * np.array([0.0, 1e-12, -1e-12, 1e-3, 0.3, 3.0, 30.0, 60.0, 4e3, 1e8 / s])
        inside = s * np.array([1e-12, 1e-3, 0.3])
        if s < 1e-50:  # x's own rounding is many σ: only distances far above it are meaningful
            out, inside = np.array([1e-3, 0.3, 3.0]), np.array([1e-3, 0.3])
        xs = np.concatenate([a * lo - out, a * hi + out, a * lo + inside, a * hi - inside])
        xs = np.concatenate([xs, a * (lo + hi) / 2 + np.array([0.0, 1e-9])])
        x = torch.tensor(xs, dtype=torch.float64)[:, None]
        mean, log_p = target.posterior_mean_and_log_prob(x, s, path, None)
        ref = np.array([truncated_normal_mp(v, a, s, lo, hi) for v in xs])
        np.testing.assert_allclose(log_p.numpy(), ref[:, 0], rtol=1e-12, atol=1e-12)
        near = (np.abs(xs / a) < 3e3) & np.isfinite(ref[:, 1])
        np.testing.assert_allclose(mean[near, 0].numpy(), ref[near, 1], rtol=1e-11, atol=1e-11)
        if s < 1e-50:  # σ√2 below 1e-100 of every distance (mpmath's mean overflows): the nearest point of the box
            np.testing.assert_allclose(mean[:, 0].numpy(), np.clip(xs / a, lo, hi), rtol=1e-15)
    low = torch.tensor([[-40.0, -0.5], [-1.0, 0.2], [2.0, -3.0]], dtype=torch.float64)
    high = torch.tensor([[40.0, 0.0], [-0.96, 0.25], [2.5, 3.0]], dtype=torch.float64)
    new, old = BoxMixture(low, high), box_oracle.BoxMixture(low, high)
    for t in (1e-4, 0.3, 0.985):
        a, s = 1 - t, t
        corners = torch.cartesian_prod(torch.cat([low[:, 0], high[:, 0]]), torch.cat([low[:, 1], high[:, 1]])) * a
        rest = torch.tensor([[0.0, -0.25], [39.0, 0.1], [-1e3, 2.0], [5.0, 1e3], [1e3, 0.1]], dtype=torch.float64)
        x = torch.cat([corners, a * rest, tail_points(new, path, t, 40, seed=2)]).double()
        cond = torch.arange(x.shape[0]) % 2 - 1
        assert new.uses_compiled_kernels(x)
        agrees_with_torch_and_oracle(new, old, x, t, path, cond)


def test_box_loop_gives_a_particle_the_same_bits_alone_and_in_a_batch():
    """Each particle's outputs do not depend on the others in its block (which components its block evaluates, where
    it falls in a vectorised loop or its scalar remainder): every particle alone equals the batch, for one time and
    for one per particle, in every regime (tails, series, mixed labels)."""
    target, _ = boxes(2, 8, seed=3)
    path = get_path("rf")
    n = 300
    x = tail_points(target, path, 0.5, n, seed=4)
    cond = torch.arange(n) % 3 - 1
    times = torch.linspace(1e-3, 0.999, n, dtype=torch.float64)
    for time in (0.5, 0.99, times):
        mean, log_prob = target.posterior_mean_and_log_prob(x, time, path, cond)
        components = target.component_log_prob_t(x, time, path)
        for i in range(0, n, 7):
            t_i = time if isinstance(time, float) else time[i : i + 1]
            mean_i, log_prob_i = target.posterior_mean_and_log_prob(x[i : i + 1], t_i, path, cond[i : i + 1])
            assert torch.equal(mean_i, mean[i : i + 1]) and torch.equal(log_prob_i, log_prob[i : i + 1])
            assert torch.equal(target.component_log_prob_t(x[i : i + 1], t_i, path), components[i : i + 1])


def test_box_loop_with_many_classes():
    """More than 7 classes: the loop gathers each particle's log-weight row (with fewer, it selects among the rows);
    both against the torch path and the oracle, with every label and the null class."""
    g = torch.Generator().manual_seed(7)
    low = torch.randn(12, 2, generator=g, dtype=torch.float64) * 2
    high = low + 0.3 + torch.rand(12, 2, generator=g, dtype=torch.float64)
    path = get_path("rf")
    for classes in (3, 10):
        kwargs = {"component_class": torch.arange(12) % classes, "weights": torch.rand(12, generator=g) + 0.2}
        new, old = BoxMixture(low, high, **kwargs), box_oracle.BoxMixture(low, high, **kwargs)
        x = tail_points(new, path, 0.4, 90, seed=5)
        cond = torch.arange(90) % (classes + 1) - 1
        got = all_quantities(new, x, 0.4, path, cond)
        eager = torch_path(new, lambda t=new, x=x, c=cond: all_quantities(t, x, 0.4, path, c))
        for a, b in zip(got, eager, strict=True):
            assert_relative(a, b)
        for a, b in zip(got, all_quantities(old, x, 0.4, path, cond), strict=True):
            assert_relative(a, b)
