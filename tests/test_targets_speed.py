"""The exact denoisers' fast paths (issue 17) against the implementations they replaced, kept as oracles, and
their compilability.

- Gaussian mixture: the fused evaluation equals the pre-issue-17 code (tests/_oracle_gaussian_mixture.py) to 1e-10
  relative in float64, for several D and K, shared and per-sample times from t → 0 to t = 1, every condition kind;
  float32 gives no NaN at the ends.
- ``torch.compile(fullgraph=True)`` traces the Gaussian- and box-mixture denoisers without a graph break (the
  backend is ``aot_eager``: it checks the graph without needing a C++ toolchain), and the compiled denoiser equals
  the eager one to 1e-10 relative in float64.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import _oracle_box_mixture as box_oracle
import _oracle_gaussian_mixture as gm_oracle
from _target_points import assert_relative, mixture_pair, tail_points
from guidelab.paths import get_path
from guidelab.targets import BoxMixture, GaussianMixture, gaussian_mixture, get_target, mixture_jit
from guidelab.targets.base import path_time

TIMES = [0.0, 1e-6, 0.3, 1 - 1e-6, 1.0]


mixture = mixture_pair


@pytest.mark.parametrize(
    ("dim", "components", "classes", "path_name"), [(1, 3, 2, "rf"), (2, 8, 4, "vp-cosine"), (16, 12, 3, "rf")]
)
def test_gaussian_mixture_equals_the_previous_implementation(dim, components, classes, path_name):
    path = get_path(path_name)
    new, old = mixture(dim, components, classes, seed=dim + components)
    n = 40
    cond = torch.arange(n) % (classes + 1) - 1  # null and every class
    for t in TIMES:
        x = tail_points(new, path, t, n, seed=int(1e6 * t) % 97)
        for c in (cond, None):
            assert_relative(new.posterior_mean(x, t, path, c), old.posterior_mean(x, t, path, c))
            assert_relative(new.log_prob_t(x, t, path, c), old.log_prob_t(x, t, path, c))
        assert_relative(new.component_log_prob_t(x, t, path), old.component_log_prob_t(x, t, path))
        # one time per sample (the sampler's tensor of equal times takes the shared path; distinct ones do not)
        times = torch.full((n,), float(t), dtype=torch.float64)
        assert_relative(new.posterior_mean(x, times, path, cond), old.posterior_mean(x, times, path, cond))
    mixed = torch.tensor(TIMES * 8, dtype=torch.float64)[:n]
    x = tail_points(new, path, 0.5, n, seed=3)
    assert_relative(new.posterior_mean(x, mixed, path, cond), old.posterior_mean(x, mixed, path, cond))


def test_gaussian_mixture_equals_the_previous_implementation_over_many_chunks():
    new, old = mixture(8, 30, 3, seed=5)
    path = get_path("rf")
    for target in (new, old):
        target.max_chunk_bytes = target.cache_chunk_bytes = 30 * 8 * 8 * 3 * 7  # 7 particles a chunk, ragged end
    cond = torch.arange(100) % 4 - 1
    for t in (1e-4, 0.5, 1.0):
        x = tail_points(new, path, t, 100, seed=1)
        assert_relative(new.posterior_mean(x, t, path, cond), old.posterior_mean(x, t, path, cond))
        assert_relative(new.log_prob_t(x, t, path, cond), old.log_prob_t(x, t, path, cond))


def separated_pair(dim: int, components: int, classes: int, seed: int):
    """A mixture whose components sit ~12 standard deviations apart (responsibilities 0 but for one or two near the
    data, spread at large σ), built twice: the library's and the oracle's."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(components, dim, dim)))
    covs = np.einsum("kij,kj,klj->kil", q, rng.uniform(0.1, 1.0, size=(components, dim)), q)
    args = (rng.normal(scale=12.0, size=(components, dim)), covs, rng.uniform(0.2, 1.0, components))
    kwargs = {"component_class": np.arange(components) % classes}
    return GaussianMixture(*args, **kwargs), gm_oracle.GaussianMixture(*args, **kwargs)


@pytest.mark.parametrize("chunk", [None, 7])
def test_gaussian_mixture_sparse_back_projection_equals_the_previous_implementation(chunk, monkeypatch):
    """Where responsibilities are mostly exactly 0 the back-projection runs over the nonzero ones only
    (``_SparseBackProjection``); dense chunks (large σ) keep the GEMM. Both, mixed within one call, in chunks of 7 with
    the kept pairs flushed many times over, equal the pre-issue-17 code to 1e-10 relative (float64)."""
    outcomes, flushes, inside_add = [], [], []
    sparse = gaussian_mixture._SparseBackProjection
    add, flush = sparse.add, sparse.flush

    def spy_add(self, *args):
        inside_add.append(True)
        outcomes.append(add(self, *args))
        inside_add.pop()
        return outcomes[-1]

    def spy_flush(self):
        flushes.append(bool(inside_add))  # True: flushed by the row budget before the call's end
        flush(self)

    monkeypatch.setattr(sparse, "add", spy_add)
    monkeypatch.setattr(sparse, "flush", spy_flush)
    new, old = separated_pair(6, 12, 3, seed=4)
    if chunk:
        for target in (new, old):
            target.max_chunk_bytes = target.cache_chunk_bytes = 12 * 6 * 8 * chunk
    path = get_path("rf")
    n = 60
    cond = torch.arange(n) % 4 - 1
    for t in TIMES:
        x = tail_points(new, path, t, n, seed=int(1e6 * t) % 89)
        for c in (cond, 2):
            mean, log_prob = new.posterior_mean_and_log_prob(x, t, path, c)
            assert_relative(mean, old.posterior_mean(x, t, path, c))
            assert_relative(log_prob, old.log_prob_t(x, t, path, c))
    times = torch.linspace(0.0, 1.0, n, dtype=torch.float64)  # per-sample times: sparse and dense rows in one call
    x = tail_points(new, path, 0.5, n, seed=2)
    assert_relative(new.posterior_mean(x, times, path, cond), old.posterior_mean(x, times, path, cond))
    assert True in outcomes and False in outcomes  # both paths ran
    if chunk:
        assert True in flushes
    for t in (0.05, 0.9):  # float32 (the oracle's float64 rounded) and the ends of the batch sizes
        x = tail_points(new, path, t, n, seed=5)
        got = new.posterior_mean(x.float(), t, path, cond)
        torch.testing.assert_close(got, old.posterior_mean(x, t, path, cond).float(), rtol=2e-5, atol=2e-5)
        assert_relative(new.posterior_mean(x[:1], t, path, cond[:1]), old.posterior_mean(x[:1], t, path, cond[:1]))
        assert new.posterior_mean(x[:0], t, path, cond[:0]).shape == (0, 6)


@pytest.mark.parametrize(("dim", "components"), [(1, 2), (2, 5)])
def test_box_mixture_equals_the_previous_implementation(dim, components):
    """Every regime: the series at α → 0 (t → 1), the closed form inside and outside the boxes (entries of both in
    one batch, and batches of one kind only), σ = 0 at t = 0 on and off the support; log-densities, posterior
    means, the gradient of the log-density and the Jacobian of the posterior mean."""
    g = torch.Generator().manual_seed(dim)
    low = torch.randn(components, dim, generator=g, dtype=torch.float64) * 2
    high = low + 0.2 + torch.rand(components, dim, generator=g, dtype=torch.float64)
    kwargs = {"component_class": torch.arange(components) % 2}
    new, old = BoxMixture(low, high, **kwargs), box_oracle.BoxMixture(low, high, **kwargs)
    path = get_path("rf")
    n = 48
    cond = torch.arange(n) % 3 - 1
    far = torch.full((4, dim), 40.0, dtype=torch.float64)  # every entry outside every box
    for t in [0.0, 1e-9, 1e-3, 0.3, 0.9, 1 - 1e-9, 1.0]:
        a, s = (float(v) for v in (1 - t, t))
        x = a * new.sample(n, None, g, dtype=torch.float64) + s * torch.randn(n, dim, generator=g, dtype=torch.float64)
        for pts, c in ((x, cond), (x, None), (far, None)):
            assert_relative(new.posterior_mean(pts, t, path, c), old.posterior_mean(pts, t, path, c))
            assert_relative(new.log_prob_t(pts, t, path, c), old.log_prob_t(pts, t, path, c))
        if 0 < t < 1:
            xg, xo = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
            (grad_new,) = torch.autograd.grad(new.log_prob_t(xg, t, path, cond).sum(), xg)
            (grad_old,) = torch.autograd.grad(old.log_prob_t(xo, t, path, cond).sum(), xo)
            assert_relative(grad_new, grad_old)
        if 1e-6 < t < 1:
            # The posterior mean's Jacobian (closed-form derivatives now, autograd through the formulas before): both
            # lose digits to the cancellation in (1 − ∂E[z]/∂m)/α, measured within 1e-8 of each other and of mpmath
            # (at σ = 1e-9 far outside a box both keep only the bound 0 ≤ ∂E[z]/∂m ≤ 1).
            assert_relative(jacobian(new, x, t, path, cond), jacobian(old, x, t, path, cond), rtol=1e-7)
    times = torch.linspace(0.0, 1.0, n, dtype=torch.float64)  # all regimes in one batch
    assert_relative(new.posterior_mean(x, times, path, cond), old.posterior_mean(x, times, path, cond))
    new.cache_chunk_entries = 7 * components * dim  # the fused pass (one shared time) in chunks of 7, ragged end
    for t in (1e-3, 0.3, 0.9):
        x = (1 - t) * new.sample(n, None, g, dtype=torch.float64) + t * torch.randn(
            n, dim, generator=g, dtype=torch.float64
        )
        for c in (cond, None):
            assert_relative(new.posterior_mean(x, t, path, c), old.posterior_mean(x, t, path, c))
            assert_relative(new.log_prob_t(x, t, path, c), old.log_prob_t(x, t, path, c))
        assert_relative(new.component_log_prob_t(x, t, path), old.component_log_prob_t(x, t, path))


def jacobian(target, x: torch.Tensor, t: float, path, cond) -> torch.Tensor:
    """∂E[x0 | x_t]_d/∂x_t (batch, D, D) by autograd (rows are independent samples)."""
    xg = x.clone().requires_grad_(True)
    mean = target.posterior_mean(xg, t, path, cond)
    rows = [torch.autograd.grad(mean[:, d].sum(), xg, retain_graph=True)[0] for d in range(x.shape[1])]
    return torch.stack(rows, dim=1)


def test_gaussian_mixture_float32_has_no_nan_at_the_ends():
    new, _ = mixture(64, 10, 4, seed=2)
    path = get_path("rf")
    cond = torch.arange(64) % 5 - 1
    for t in TIMES:
        x = tail_points(new, path, t, 64, seed=4).float()
        mean, log_p = new.posterior_mean_and_log_prob(x, t, path, cond)
        assert mean.dtype == torch.float32 and torch.isfinite(mean).all() and torch.isfinite(log_p).all(), t


def _compiled(fn):
    """``fn`` under torch.compile (every torch the package allows has it) on aot_eager: graph breaks are errors,
    and no C++ compiler is needed."""
    torch._dynamo.reset()
    return torch.compile(fn, backend="aot_eager", fullgraph=True, dynamic=False)


def test_gaussian_mixture_compiles_without_graph_breaks_and_matches_eager():
    target, _ = mixture(2, 8, 4, seed=0)
    path = get_path("rf")
    n = 64
    x = tail_points(target, path, 0.3, n, seed=0)
    cond = torch.arange(n) % 5 - 1
    compiled = _compiled(lambda x, t, c: target.posterior_mean(x, t, path, c))
    for t in (torch.full((n,), 0.3, dtype=torch.float64), torch.linspace(0.0, 1.0, n, dtype=torch.float64)):
        assert_relative(compiled(x, t, cond), target.posterior_mean(x, t, path, cond))


def test_box_mixture_compiles_without_graph_breaks_and_matches_eager():
    target = get_target("chidambaram-uniform-1d")
    path = get_path("rf")
    n = 64
    x = torch.linspace(-3, 3, n, dtype=torch.float64)[:, None]
    t = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    compiled = _compiled(lambda x, t: target.posterior_mean(x, t, path, None))
    assert_relative(compiled(x, t), target.posterior_mean(x, t, path, None))


def test_exact_denoiser_compile_option_falls_back_to_eager(monkeypatch):
    """``denoiser(path, compile=True)`` equals the eager denoiser; where compilation fails it warns and runs eagerly."""
    target, _ = mixture(2, 8, 4, seed=1)
    path = get_path("rf")
    x = tail_points(target, path, 0.5, 32, seed=2)
    t = torch.full((32,), 0.5, dtype=torch.float64)
    cond = torch.arange(32) % 5 - 1
    eager = target.denoiser(path)(x, t, cond)

    def failing_compile(fn, **kwargs):
        def run(*args):
            raise torch._dynamo.exc.TorchDynamoException("no C++ compiler")

        return run

    monkeypatch.setattr(torch, "compile", failing_compile)
    den = target.denoiser(path, compile=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = den(x, t, cond)
    assert any("torch.compile failed" in str(w.message) for w in caught)
    assert not den.compile
    assert_relative(out, eager)


def _recording_compile(calls: list):
    """A stand-in for torch.compile that records its calls and returns the function itself (no compiler needed)."""

    def fake(fn, **kwargs):
        calls.append(kwargs)
        return fn

    return fake


def _failing_compile(calls: list):
    def fake(fn, **kwargs):
        calls.append(kwargs)

        def run(*args):
            raise RuntimeError("no C++ compiler")

        return run

    return fake


def test_exact_denoiser_auto_compiles_only_a_long_run_of_a_small_target(monkeypatch):
    """``compile="auto"`` (the default): eager until the denoiser has evaluated COMPILE_MIN_EVALUATIONS particles,
    then compiled (same values); never for a batch above COMPILE_MAX_BATCH or a target with compile_max_work 0."""
    monkeypatch.setattr(mixture_jit.KERNELS, "_kernels", False)  # the "auto" rule where numba is missing
    import guidelab.targets.base as base

    calls: list = []
    monkeypatch.setattr(torch, "compile", _recording_compile(calls))
    monkeypatch.setattr(base, "COMPILE_MIN_EVALUATIONS", 100)
    monkeypatch.setattr(base, "COMPILE_MAX_BATCH", 64)
    monkeypatch.setattr(base, "COMPILE_MIN_THREADS", 1)  # whatever this machine's thread count
    target, _ = mixture(2, 8, 4, seed=1)
    path = get_path("rf")
    x = tail_points(target, path, 0.5, 32, seed=2)
    t = torch.full((32,), 0.5, dtype=torch.float64)
    cond = torch.arange(32) % 5 - 1
    eager = target.denoiser(path, compile=False)(x, t, cond)
    den = target.denoiser(path)
    assert den.compile == "auto"
    for _ in range(4):  # 4·32 = 128 particles: the first four calls are eager (0, 32, 64, 96 < 100 before each)
        assert_relative(den(x, t, cond), eager)
    assert calls == [] and den.evaluated == 128
    assert_relative(den(x, t, cond), eager)  # 128 ≥ 100: compiled from here
    assert calls == [{"fullgraph": True, "dynamic": False}] and den.evaluated == 128
    big = tail_points(target, path, 0.5, 65, seed=3)
    den(big, 0.5, None)  # above COMPILE_MAX_BATCH: eager
    assert den.evaluated == 128 + 65 and len(calls) == 1
    box = get_target("chidambaram-uniform-1d")
    assert box.compile_max_work == 0
    den_box = box.denoiser(path)
    xb = torch.linspace(-3, 3, 32, dtype=torch.float64)[:, None]
    for _ in range(8):
        den_box(xb, t, None)
    assert len(calls) == 1 and den_box.evaluated == 256


def test_exact_denoiser_traces_inside_an_outer_compile_without_recompiling():
    """A sampler compiled around the default ("auto") denoiser: its eager counter stays out of the graph, so repeated
    calls of one shape reuse one graph (a guard on the counter would recompile each call, then fail at the limit)."""
    target, _ = mixture(2, 8, 4, seed=1)
    path = get_path("rf")
    x = tail_points(target, path, 0.5, 32, seed=2)
    t = torch.full((32,), 0.5, dtype=torch.float64)
    den = target.denoiser(path)
    torch._dynamo.reset()
    from torch._dynamo.testing import CompileCounter

    counts = CompileCounter()
    outer = torch.compile(lambda x, t: den(x, t, None), backend=counts, fullgraph=True, dynamic=False)
    for _ in range(10):
        assert_relative(outer(x, t), target.posterior_mean(x, t, path, None))
    assert counts.frame_count == 1 and den.evaluated == 0


def test_exact_denoiser_auto_falls_back_silently_and_env_turns_compiling_off(monkeypatch, caplog):
    monkeypatch.setattr(mixture_jit.KERNELS, "_kernels", False)  # the "auto" rule where numba is missing
    import logging

    import guidelab.targets.base as base

    calls: list = []
    monkeypatch.setattr(torch, "compile", _failing_compile(calls))
    monkeypatch.setattr(base, "COMPILE_MIN_EVALUATIONS", 0)
    monkeypatch.setattr(base, "COMPILE_MIN_THREADS", 1)
    target, _ = mixture(2, 8, 4, seed=1)
    path = get_path("rf")
    x = tail_points(target, path, 0.5, 32, seed=2)
    t = torch.full((32,), 0.5, dtype=torch.float64)
    eager = target.denoiser(path, compile=False)(x, t, None)
    den = target.denoiser(path)
    with warnings.catch_warnings(), caplog.at_level(logging.DEBUG, logger="guidelab.targets.base"):
        warnings.simplefilter("error")  # no warning in "auto"
        assert_relative(den(x, t, None), eager)
        assert_relative(den(x, t, None), eager)
    assert den.compile is False and len(calls) == 1  # tried once
    assert sum("torch.compile failed" in r.getMessage() for r in caplog.records) == 1
    monkeypatch.setenv("GUIDELAB_COMPILE", "0")
    for mode in (True, "auto"):
        den = target.denoiser(path, compile=mode)
        assert_relative(den(x, t, None), eager)
    assert len(calls) == 1
    with pytest.raises(ValueError, match="compile"):
        target.denoiser(path, compile="yes")


def test_exact_denoiser_auto_never_compiles_on_one_torch_thread(monkeypatch):
    """On one torch thread (a sweep's default) compiled code measured no faster: "auto" stays eager however long."""
    monkeypatch.setattr(mixture_jit.KERNELS, "_kernels", False)  # the "auto" rule where numba is missing
    import guidelab.targets.base as base

    calls: list = []
    monkeypatch.setattr(torch, "compile", _recording_compile(calls))
    monkeypatch.setattr(base, "COMPILE_MIN_EVALUATIONS", 0)
    target, _ = mixture(2, 8, 4, seed=1)
    path = get_path("rf")
    x = tail_points(target, path, 0.5, 32, seed=2)
    t = torch.full((32,), 0.5, dtype=torch.float64)
    den = target.denoiser(path)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        den(x, t, None)
        assert calls == [] and den.evaluated == 32
        torch.set_num_threads(2)
        den(x, t, None)
        assert len(calls) == 1
    finally:
        torch.set_num_threads(before)


def test_another_threads_compile_does_not_change_this_threads_branches(monkeypatch):
    """torch.compiler.is_compiling reads one process-wide flag, True during any compile in any thread; the
    denoisers branch on Dynamo tracing only (is_dynamo_compiling), so a sweep's worker thread keeps its eager
    branches, counters and numbers while another worker compiles."""
    import guidelab.targets.base as base

    monkeypatch.setattr(torch.compiler, "_is_compiling_flag", True)  # as while another thread compiles
    assert torch.compiler.is_compiling()
    assert not base.compiling()
    target, _ = mixture(2, 8, 4, seed=1)
    path = get_path("rf")
    x = tail_points(target, path, 0.5, 32, seed=2)
    t = torch.full((32,), 0.5, dtype=torch.float64)
    den = target.denoiser(path, compile="auto")
    den(x, t, None)
    assert den.evaluated == 32


def _old_path_time(path, t, batch):
    """The pre-fast-path evaluation (oracle): t in float64, its first element's (α, σ) where all are equal, else
    per sample."""
    t = (t if isinstance(t, torch.Tensor) else torch.tensor(t, dtype=torch.float64)).to(torch.float64).reshape(-1)
    if t.numel() == 1 or bool((t == t[0]).all()):
        c = path.coefficients(t[:1])
        return True, float(c.alpha[0]), float(c.sigma[0])
    c = path.coefficients(t)
    return False, c.alpha, c.sigma


@pytest.mark.parametrize("path_name", ["rf", "vp-cosine", "vp-linear", "ve", "ou"])
def test_path_time_one_time_fast_path_equals_the_previous_evaluation(path_name):
    """One time (a float, a 0-d or one-element tensor, a batch of equal times in float16/32/64 or bfloat16) is read
    once and evaluated by the cached scalar evaluation: the same bits as before; unequal or NaN times stay per
    sample; a t of the wrong size raises naming t."""
    path = get_path(path_name)
    batch = 6
    x = torch.zeros(batch, 2)
    times = [0.0, 1e-6, 0.3, 0.7, 1.0]
    cases = []
    for v in times:
        cases += [v, torch.tensor(v), torch.tensor([v]), torch.full((batch,), v, dtype=torch.float64)]
        cases += [torch.full((batch,), v, dtype=dtype) for dtype in (torch.float32, torch.float16, torch.bfloat16)]
    cases += [torch.linspace(0.1, 0.9, batch), torch.tensor([0.3] * (batch - 1) + [float("nan")])]
    cases += [torch.tensor([float("nan")] * batch), torch.tensor(1)]
    for t in cases:
        shared, alpha, sigma = _old_path_time(path, t, batch)
        for full in (True, False):
            got = path_time(path, t, x, dtype=torch.float64, full=full)
            assert got.shared == shared, (path_name, t)
            if shared:
                np.testing.assert_array_equal([got.alpha0, got.sigma0], [alpha, sigma])
                assert got.alpha.shape == got.sigma.shape == (batch,)
                np.testing.assert_array_equal(got.alpha.numpy(), np.full(batch, alpha))
                np.testing.assert_array_equal(got.sigma.numpy(), np.full(batch, sigma))
            else:
                np.testing.assert_array_equal(got.alpha.numpy(), alpha.numpy())
                np.testing.assert_array_equal(got.sigma.numpy(), sigma.numpy())
    assert path_time(path, torch.full((batch,), 0.3), x).alpha.dtype == torch.float32  # x_t's dtype by default
    for bad in (torch.full((batch + 1,), 0.3), torch.zeros(2, 4), torch.zeros(0)):
        with pytest.raises(ValueError, match="^t: expected a scalar or 6 times"):
            path_time(path, bad, x)
    empty = path_time(path, torch.zeros(0), torch.zeros(0, 2))
    assert empty.shared and empty.alpha.shape == (0,)
    # times given as a numpy array or a list, as before the fast path
    for t in (np.full(batch, 0.3), [0.3] * batch, np.linspace(0.1, 0.9, batch), np.float32(0.3)):
        shared, alpha, sigma = _old_path_time(path, torch.as_tensor(np.asarray(t), dtype=torch.float64), batch)
        got = path_time(path, t, x, dtype=torch.float64)
        assert got.shared == shared
        np.testing.assert_array_equal(got.alpha.numpy(), np.broadcast_to(np.asarray(alpha), (batch,)))


def test_path_time_sign_of_zero_and_nan_times_do_not_depend_on_the_cache():
    """t = −0.0 and t = +0.0 are one key of the scalar cache: each still gets its own sign of σ whichever came
    first; NaN times give NaN and leave the cache as it was."""
    from guidelab.paths import path_scalars

    path = get_path("rf")
    x = torch.zeros(3, 2)
    for first, second in ((0.0, -0.0), (-0.0, 0.0)):
        path_scalars.cache_clear()
        path_scalars(path, first)
        got = path_time(path, second, x)
        assert np.copysign(1.0, got.sigma0) == np.copysign(1.0, second)
    path_scalars.cache_clear()
    for t in (float("nan"), torch.tensor(float("nan")), torch.tensor([float("nan")])) * 3:
        nan = path_time(path, t, x)
        assert nan.shared and np.isnan(nan.alpha0) and np.isnan(nan.sigma0)
    assert path_scalars.cache_info().currsize == 0
