"""Exact pairwise-distance sums (guidelab.metrics.pairwise) and the energy distance built on them, against the
previous implementation kept as an oracle (tests/distance_reference.py: torch.cdist over row chunks) and a
brute force by explicit float64 differences summed exactly (near-duplicates, where the old GEMM-form cdist
itself loses digits)."""

import os
import sys
import time

import numpy as np
import pytest
import torch

from distance_reference import brute_distance_sum, brute_energy_exact, energy_distance_old
from guidelab.experiments.measures import MeasureInput, measure
from guidelab.metrics import energy_distance
from guidelab.metrics import pairwise as pw
from guidelab.targets import get_target


def randn(gen, n, d, shift=0.0, scale=1.0):
    return shift + scale * torch.randn(n, d, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize(
    ("d", "n", "m"),
    [(1, 3000, 2000), (2, 1100, 1030), (3, 500, 501), (8, 300, 350), (9, 300, 260), (64, 300, 250)],
)
def test_energy_distance_equals_old_implementation(d, n, m):
    """1-D by sorting, D ≤ 8 by differences, D > 8 by the GEMM form: the old cdist values to 1e-10 relative,
    on unequal sizes (2-D: partial tiles of the 2¹⁸-pair tiles of 1024 columns)."""
    gen = torch.Generator().manual_seed(100 + d)
    x, y = randn(gen, n, d, shift=0.3, scale=1.5), randn(gen, m, d)
    new, old = energy_distance(x, y), energy_distance_old(x, y)
    assert new == pytest.approx(old, rel=1e-10)
    assert pw.pairwise_distance_sum(x, y) == pytest.approx(float(torch.cdist(x, y).sum()), rel=1e-12)


@pytest.mark.parametrize("d", [1, 2, 64])
def test_near_and_exact_duplicates_against_explicit_differences(d):
    """Sets made of a few points repeated exactly and perturbed by 1e-9, far (1e3) from the origin: the GEMM
    form's ‖a‖² + ‖b‖² − 2a·b would lose the small distances; the exact sums keep them (brute force by
    differences, summed with fsum)."""
    gen = torch.Generator().manual_seed(7 + d)
    base = randn(gen, 6, d, shift=1e3)
    x = base[torch.randint(0, 6, (150,), generator=gen)] + 1e-9 * randn(gen, 150, d) * (torch.rand(150, 1) < 0.5)
    y = base[torch.randint(0, 6, (130,), generator=gen)]  # exact duplicates of x's centres
    xs, ys = x.numpy(), y.numpy()
    assert pw.pairwise_distance_sum(x, y) == pytest.approx(brute_distance_sum(xs, ys), rel=1e-12)
    assert pw.pairwise_distance_sum(x) == pytest.approx(brute_distance_sum(xs), rel=1e-12)
    assert pw.pairwise_distance_sum(y) == pytest.approx(brute_distance_sum(ys), rel=1e-12)
    assert energy_distance(x, y) == pytest.approx(brute_energy_exact(xs, ys), rel=1e-10, abs=1e-12)


def test_identical_points_give_zero():
    x = torch.full((50, 3), 2.5, dtype=torch.float64)
    assert pw.pairwise_distance_sum(x) == 0.0
    assert pw.pairwise_distance_sum(x, x[:20]) == 0.0


@pytest.mark.parametrize("d", [2, 12])
def test_tile_size_does_not_change_the_sum(monkeypatch, d):
    """Tiny tiles (7 columns × 5 rows) cut the sets and the diagonal block everywhere: same sums (brute force)."""
    gen = torch.Generator().manual_seed(11)
    x, y = randn(gen, 53, d), randn(gen, 41, d, shift=0.5)
    monkeypatch.setattr(pw, "_TILE_COLS", 7)
    monkeypatch.setattr(pw, "_TILE_ELEMENTS", 35)
    assert pw.pairwise_distance_sum(x, y) == pytest.approx(brute_distance_sum(x.numpy(), y.numpy()), rel=1e-13)
    assert pw.pairwise_distance_sum(x) == pytest.approx(brute_distance_sum(x.numpy()), rel=1e-13)


def test_float32_rsqrt_with_newton_step_equals_float64_sqrt(monkeypatch):
    """The Newton-refined float32 rsqrt against the plain float64 sqrt path (the fallback), to 1e-13."""
    gen = torch.Generator().manual_seed(12)
    x, y = randn(gen, 400, 2), randn(gen, 300, 2, shift=0.2)
    fast = pw.pairwise_distance_sum(x, y), pw.pairwise_distance_sum(x)
    monkeypatch.setattr(pw, "_rsqrt_ok", False)
    slow = pw.pairwise_distance_sum(x, y), pw.pairwise_distance_sum(x)
    assert fast == pytest.approx(slow, rel=1e-13)


@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_scale_beyond_float32_range(scale):
    """Distances of 1e±30 (d² outside float32's range): the sums scale exactly with the points."""
    gen = torch.Generator().manual_seed(13)
    x, y = randn(gen, 200, 2), randn(gen, 150, 2)
    assert pw.pairwise_distance_sum(scale * x, scale * y) == pytest.approx(
        scale * pw.pairwise_distance_sum(x, y), rel=1e-14
    )
    assert energy_distance(scale * x, scale * y) == pytest.approx(scale * energy_distance(x, y), rel=1e-12)


def test_cached_self_term_gives_identical_energy_distance(monkeypatch):
    """The cached reference self-term is the uncached one bit for bit, computed once per set of points."""
    gen = torch.Generator().manual_seed(14)
    x, y = randn(gen, 300, 2), randn(gen, 250, 2)
    calls = []
    real = pw.self_distance_mean
    monkeypatch.setattr(pw, "self_distance_mean", lambda p, **kw: calls.append(1) or real(p, **kw))
    monkeypatch.setattr(pw, "_self_cache", type(pw._self_cache)())
    first = pw.cached_self_distance_mean(y)
    second = pw.cached_self_distance_mean(y.clone())
    assert first == second == real(y)
    assert len(calls) == 1
    assert energy_distance(x, y, y_self=first) == energy_distance(x, y)
    pw.cached_self_distance_mean(y + 1e-12)  # other bytes: computed again
    assert len(calls) == 2


def test_sweep_measure_equals_old_energy_distance():
    """The sweep's energy-distance measure (cached self-term) equals the old implementation on a target."""
    target = get_target("multimodal-2d")
    ref = target.reference_samples(900, 0, 5)
    x = target.reference_samples(700, 0, 6) * 1.1
    out = measure(["energy_distance"], MeasureInput(x.double(), target, 0, ref.double(), 0.0))
    assert out["energy_distance"] == pytest.approx(energy_distance_old(x, ref), rel=1e-10)
    again = measure(["energy_distance"], MeasureInput(x.double(), target, 0, ref.double(), 0.0))
    assert again == out


def test_bad_shapes_name_the_field():
    with pytest.raises(ValueError, match="x, y"):
        pw.pairwise_distance_sum(torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="y: need at least 2"):
        pw.self_distance_mean(torch.zeros(1, 2))


def test_one_d_ties_and_unsorted_input():
    """1-D with many ties (integers), in scrambled order: the gap formula against the brute force."""
    gen = np.random.default_rng(3)
    x = torch.from_numpy(gen.integers(-5, 6, 400).astype(np.float64))[:, None]
    y = torch.from_numpy(gen.integers(-3, 9, 333).astype(np.float64))[:, None]
    assert pw.pairwise_distance_sum(x, y) == brute_distance_sum(x.numpy(), y.numpy())
    assert pw.pairwise_distance_sum(x) == brute_distance_sum(x.numpy())


@pytest.mark.parametrize("d", [2, 3, 5, 8])
def test_compiled_loop_against_brute_force(d):
    """The compiled row loop (numba, a dev dependency, so it must load here) for the cross and the within-set
    sums, unequal n, partial chunks: the exact brute force to 1e-13, the same value for 1 and 3 threads."""
    from guidelab.metrics import pairwise_jit

    assert pairwise_jit.available()
    gen = torch.Generator().manual_seed(15 + d)
    x, y = randn(gen, 1100, d, shift=0.4, scale=3.0), randn(gen, 1030, d)
    before = torch.get_num_threads()
    try:
        sums = []
        for threads in (1, 3):
            torch.set_num_threads(threads)
            sums.append((pw.pairwise_distance_sum(x, y, compiled=True), pw.pairwise_distance_sum(x, compiled=True)))
    finally:
        torch.set_num_threads(before)
    assert sums[0] == sums[1]
    assert sums[0][0] == pytest.approx(brute_distance_sum(x.numpy(), y.numpy()), rel=1e-13)
    assert sums[0][1] == pytest.approx(brute_distance_sum(x.numpy()), rel=1e-13)


def test_compiled_loop_on_duplicates_far_from_the_origin():
    """Exact duplicates (distance exactly 0) and 1e-9 perturbations 1e3 from the origin, in the compiled loop."""
    gen = torch.Generator().manual_seed(18)
    base = 1e3 + randn(gen, 7, 3)
    x = base.repeat(40, 1) + 1e-9 * randn(gen, 280, 3)
    y = base.repeat(30, 1)
    assert pw.pairwise_distance_sum(y, compiled=True) == pytest.approx(brute_distance_sum(y.numpy()), rel=1e-12)
    assert pw.pairwise_distance_sum(x, y, compiled=True) == pytest.approx(
        brute_distance_sum(x.numpy(), y.numpy()), rel=1e-12
    )
    assert pw.pairwise_distance_sum(base.repeat(5, 1)[:1].repeat(9, 1), compiled=True) == 0.0


def test_auto_uses_the_compiled_loop_only_from_compile_min_pairs(monkeypatch):
    gen = torch.Generator().manual_seed(19)
    x, y = randn(gen, 300, 2), randn(gen, 200, 2)
    calls = []
    real = pw._compiled_sum
    monkeypatch.setattr(pw, "_compiled_sum", lambda *a: calls.append(1) or real(*a))
    pw.pairwise_distance_sum(x, y, compiled="auto")  # 6e4 pairs < COMPILE_MIN_PAIRS: eager tiles
    assert calls == []
    monkeypatch.setattr(pw, "COMPILE_MIN_PAIRS", 1000)
    pw.pairwise_distance_sum(x, y, compiled="auto")
    pw.pairwise_distance_sum(x[:, :1], y[:, :1], compiled="auto")  # 1-D: sorting, never the loop
    pw.pairwise_distance_sum(torch.cat([x] * 5, 1), torch.cat([y] * 5, 1), compiled=True)  # D = 10: GEMM form
    assert calls == [1]
    with pytest.raises(ValueError, match="compiled"):
        pw.pairwise_distance_sum(x, y, compiled="yes")


def test_compiled_loop_equals_old_energy_distance():
    gen = torch.Generator().manual_seed(16)
    for d in (2, 5):
        x, y = randn(gen, 2100, d, shift=0.2), randn(gen, 1900, d)
        assert energy_distance(x, y, compiled=True) == pytest.approx(energy_distance_old(x, y), rel=1e-10)


@pytest.mark.parametrize("why", ["GUIDELAB_COMPILE=0", "numba missing"])
def test_without_the_compiled_loop_the_eager_tiles(monkeypatch, why):
    """Turned off, or numba not installed: ``compiled=True`` gives the eager tiles' value, never an error."""
    from guidelab.metrics import pairwise_jit

    monkeypatch.setattr(pairwise_jit.KERNELS, "_kernels", None)  # as in a fresh process
    if why == "numba missing":
        monkeypatch.setitem(sys.modules, "numba", None)  # ``import numba`` raises ImportError
    else:
        monkeypatch.setenv("GUIDELAB_COMPILE", "0")
    gen = torch.Generator().manual_seed(17)
    x, y = randn(gen, 300, 2), randn(gen, 200, 2)
    assert pw.pairwise_distance_sum(x, y, compiled=True) == pw.pairwise_distance_sum(x, y)
    assert not pairwise_jit.available()
    with pytest.raises(RuntimeError, match="numba"):
        pairwise_jit.row_sums(x.numpy(), y.numpy(), False)
    pairwise_jit.KERNELS.reset()  # the next test loads them again


def test_the_self_term_cache_is_keyed_by_the_thread_count():
    """The GEMM path's sums depend on the thread count in the last bits: a value cached at one count is not
    served at another, so a cached value always equals a fresh call at the current count."""
    from guidelab.metrics.pairwise import cached_self_distance_mean, self_distance_mean

    y = torch.randn(600, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            assert cached_self_distance_mean(y) == self_distance_mean(y)
    finally:
        torch.set_num_threads(before)


def test_a_bad_compiled_value_is_refused_in_one_dimension_too():
    from guidelab.metrics.pairwise import pairwise_distance_sum

    with pytest.raises(ValueError, match="^compiled:"):
        pairwise_distance_sum(torch.randn(5, 1), compiled="bogus")


def test_the_self_term_cache_on_threads_measures_a_set_once_and_different_sets_at_once(monkeypatch):
    """A sweep's worker threads: four threads asking for one reference set measure it once and all get its value;
    two threads asking for two different sets measure them at the same time (a barrier only two concurrent
    measurements pass), not one after the other."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    gen = torch.Generator().manual_seed(21)
    sets = [randn(gen, 300, 2), randn(gen, 300, 2, shift=1.0)]
    real = pw.self_distance_mean
    calls = []
    barrier = threading.Barrier(2, timeout=30)

    def measured(y, *, compiled=False):
        calls.append(y)
        if len(sets) == 2:  # the first phase: both measurements must be under way together
            barrier.wait()
        return real(y, compiled=compiled)

    monkeypatch.setattr(pw, "self_distance_mean", measured)
    pw._self_cache.clear()
    with ThreadPoolExecutor(2) as pool:
        values = list(pool.map(pw.cached_self_distance_mean, sets))
    assert len(calls) == 2 and values == [real(s) for s in sets]
    sets.append(randn(gen, 300, 2, shift=-1.0))  # from here the barrier is not used
    one = sets[2]
    with ThreadPoolExecutor(4) as pool:
        values = list(pool.map(lambda _: pw.cached_self_distance_mean(one), range(4)))
    assert len(calls) == 3 and values == [real(one)] * 4


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_fork_while_kernels_load_does_not_deadlock_the_child():
    """A process forked while another thread holds a kernel set's lock (loading it) gets a fresh lock: the child's
    first ``available()`` returns instead of waiting forever on a lock no thread of the child will release."""
    from guidelab import jit

    kernels = jit.Kernels(lambda: "built", lambda built: True, "test")
    kernels._lock.acquire()  # as a warm-up thread mid-load
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os._exit(0 if kernels.available() else 1)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child deadlocked on the kernel set's lock")
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        kernels._lock.release()
