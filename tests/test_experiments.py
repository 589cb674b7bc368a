"""Sweeps: validation before running, one row per configuration, errors recorded, kill -9 and resume."""

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from guidelab.experiments import runner
from guidelab.experiments.config import load_sweep
from guidelab.experiments.runner import run_sweep
from guidelab.experiments.store import ResultStore

SWEEP = """
name: tiny
targets:
  - {target: multimodal-2d, conds: [a, b]}
  - {target: chidambaram-uniform-1d, conds: [pos]}
grids: [{kind: uniform, steps: 6}]
solvers: [euler]
guiders:
  - {name: cfg, params: {scale: [1.0, 3.0]}}
  - {name: cfg, label: cfg-interval, params: {schedule: interval, scale: 3.0, lam_lo: 0.2, lam_hi: 2.0}}
seeds: [0, 1]
n: 64
metrics: [energy_distance, class_fidelity]
"""


def write(tmp_path, text, name="sweep.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def metrics_by_hash(out):
    return {r["hash"]: (r["status"], r["metrics"], r["nfe"]) for r in ResultStore(out / "results.sqlite").rows()}


def test_sweep_runs_each_configuration_once_and_resumes(tmp_path):
    config = load_sweep(write(tmp_path, SWEEP))
    runs = config.runs()
    assert len(runs) == 3 * 2 * 3  # (2 + 1 conditions) × 2 seeds × (2 scales + 1 interval)
    first = run_sweep(config, tmp_path / "out")
    assert (first.total, first.ran, first.failed) == (18, 18, 0)
    rows = ResultStore(tmp_path / "out" / "results.sqlite").rows()
    assert len(rows) == 18
    assert len({r["hash"] for r in rows}) == 18
    again = run_sweep(config, tmp_path / "out")
    assert (again.skipped, again.ran) == (18, 0)
    frame = ResultStore(tmp_path / "out" / "results.sqlite").frame()
    assert {"metric.energy_distance", "metric.class_fidelity", "param.schedule.scale", "gamma", "nfe"} <= set(
        frame.columns
    )
    # γ = 1 needs the conditional pass only: half the NFE of guided runs
    cfg = frame[frame.label == "cfg"]
    assert set(cfg[cfg["gamma"] == 1.0].nfe) == {6}
    assert set(cfg[cfg["param.schedule.scale"] == 3.0].nfe) == {12}
    assert all((tmp_path / "out" / "runs" / h / "samples.npy").exists() for h in frame.hash)


def test_failing_run_is_recorded_and_the_sweep_goes_on(tmp_path):
    text = SWEEP.replace("n: 64", "n: 64\nsave_samples: false").replace(
        "solvers: [euler]", "solvers: [euler, euler-maruyama]"
    )  # EM is singular at t = 1 on rf: an error
    summary = run_sweep(load_sweep(write(tmp_path, text)), tmp_path / "out")
    rows = ResultStore(tmp_path / "out" / "results.sqlite").rows()
    assert summary.failed == 18
    assert summary.ran == 36
    errors = [r for r in rows if r["status"] == "error"]
    assert len(errors) == 18
    assert all("t_max" in r["error"] for r in errors)
    assert all(r["solver"] == "euler-maruyama" for r in errors)


@pytest.mark.parametrize(
    ("patch", "expect"),
    [
        ("{name: cfg, params: {scale: [1.0, 3.0]}}", None),
        ("{name: magic, params: {}}", "guiders[0]: unknown name 'magic'"),
        ("{name: cfg, params: {scale: fast}}", "guiders[0]: scale: expected a number"),
        ("{name: cfg, params: {scale: 2, beta: 0.1}}", "guiders[0]: guider 'cfg': unknown parameter 'beta'"),
    ],
)
def test_guider_mistakes_are_one_line_each(tmp_path, patch, expect):
    text = SWEEP.replace("{name: cfg, params: {scale: [1.0, 3.0]}}", patch)
    if expect is None:
        load_sweep(write(tmp_path, text))
        return
    with pytest.raises(ValueError, match=expect.replace("[", r"\[").replace("]", r"\]")):
        load_sweep(write(tmp_path, text))


def test_config_with_every_kind_of_mistake_lists_each(tmp_path):
    text = """
    targets:
      - {target: missing-file.yaml}
    grids: [{kind: uniform, steps: 0}]
    solvers: [rk4]
    guiders:
      - {name: magic}
    n: -5
    metrics: [happiness]
    """
    result = subprocess.run(
        [sys.executable, "-m", "guidelab.cli", "run", str(write(tmp_path, text)), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    for field in ("grids[0].steps", "n", "metrics"):
        assert any(line.startswith(f"error: {field}") for line in lines), result.stderr
    assert not (tmp_path / "o").exists()


def test_target_and_solver_mistakes_are_named(tmp_path):
    text = SWEEP.replace("target: chidambaram-uniform-1d", "target: missing-file.yaml").replace(
        "solvers: [euler]", "solvers: [rk4]"
    )
    with pytest.raises(ValueError, match="targets") as err:
        load_sweep(write(tmp_path, text))
    message = str(err.value)
    assert "targets[1].target" in message
    assert "solvers[0]" in message


def test_kill_minus_nine_and_resume_gives_the_uninterrupted_store(tmp_path):
    sweep = write(tmp_path, SWEEP.replace("n: 64", "n: 256").replace("steps: 6", "steps: 24"))
    reference = tmp_path / "reference"
    run_sweep(load_sweep(sweep), reference, threads=1)
    expected = metrics_by_hash(reference)
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "guidelab.cli", "run", str(sweep), "--out", str(out), "--threads", "1"]
    rng = random.Random(0)
    kills = 0
    for _attempt in range(3):  # kill at a random moment after a random number of finished runs
        done = len(metrics_by_hash(out)) if (out / "results.sqlite").exists() else 0
        if done >= len(expected) - 1:
            break
        threshold = rng.randint(done + 1, len(expected) - 1)
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        while proc.poll() is None:
            if (out / "results.sqlite").exists() and len(metrics_by_hash(out)) >= threshold:
                time.sleep(rng.uniform(0.0, 0.2))
                os.killpg(proc.pid, signal.SIGKILL)
                kills += 1
                break
            time.sleep(0.02)
        proc.wait()
    assert kills >= 1
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    assert metrics_by_hash(out) == expected


@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_default_split_gives_the_same_rows_as_one_worker(tmp_path, monkeypatch, kind):
    """Bitwise: every run has the same torch thread count (1 by default) in this process, on worker threads and
    in worker processes. The default split, on a machine seen as 2 cores where any work is worth sharing, takes
    2 workers (reused across the 18 runs) and says so in the sweep's log."""
    config = load_sweep(write(tmp_path, SWEEP))
    run_sweep(config, tmp_path / "one", workers=1)
    monkeypatch.setattr(runner, "_usable_cores", lambda: 2)
    monkeypatch.setattr(runner, "_SPAWN_S", 0.0)
    monkeypatch.setattr(runner, "_THREADS_MIN_S", 0.0)
    monkeypatch.setattr(runner, "_available_memory", lambda: 1 << 40)
    executor = "processes" if kind == "processes" else "local"
    summary = run_sweep(config, tmp_path / "auto", workers=None, executor=executor)
    assert f"on 2 worker {kind} × 1 torch thread(s) per run" in summary.split
    assert summary.split in (tmp_path / "auto" / "sweep.log").read_text()
    assert "in this process" in (tmp_path / "one" / "sweep.log").read_text()
    assert metrics_by_hash(tmp_path / "one") == metrics_by_hash(tmp_path / "auto")


def test_worker_threads_run_at_the_same_time(tmp_path, monkeypatch):
    """Two worker threads hold two runs at once (a barrier that only two concurrent runs can pass), and the rows
    are those of one worker."""
    config = load_sweep(write(tmp_path, SWEEP))
    run_sweep(config, tmp_path / "one", workers=1)
    barrier = threading.Barrier(2, timeout=60)
    real = runner.execute_run
    seen = []

    def meet(spec, out, threads=None):
        if len(seen) < 2:  # the first two runs wait for each other
            seen.append(threading.current_thread().name)
            barrier.wait()
        return real(spec, out, threads)

    monkeypatch.setattr(runner, "execute_run", meet)
    summary = run_sweep(config, tmp_path / "two", workers=2)
    assert "on 2 worker threads" in summary.split
    assert len(set(seen)) == 2 and all(name.startswith("guidelab-run-") for name in seen)
    assert metrics_by_hash(tmp_path / "one") == metrics_by_hash(tmp_path / "two")


@pytest.mark.parametrize(
    ("n", "cores", "memory", "workers"),
    [
        (20_000, 2, None, 2),  # long runs: one worker per core
        (20_000, 32, None, 18),  # at most one worker per run
        (20_000, 16, 3 << 30, 3),  # worker processes: one per GB of available memory (threads: one per 512 MB)
        (20_000, 1, None, 1),  # one core: this process
        (64, 2, None, 1),  # a fraction of a second of work in all: nothing to share
    ],
)
def test_choose_split(tmp_path, n, cores, memory, workers):
    config = load_sweep(write(tmp_path, SWEEP.replace("n: 64", f"n: {n}")))
    runs = config.runs()
    assert len(runs) == 18
    memory = memory or 1 << 40  # the host's own memory must not decide the cases that are not about memory
    split = runner.choose_split(runs, threads=1, cores=cores, memory=memory, kind="processes")
    assert (split.workers, split.threads) == (workers, 1)
    assert runner.choose_split(runs, threads=2, cores=cores, memory=memory, kind="processes").workers == max(
        1, min(workers, cores // 2)
    )
    threaded = runner.choose_split(runs, threads=1, cores=cores, memory=memory)
    assert threaded.kind == "threads"
    per_memory = memory // (1 << 29)
    assert threaded.workers == (min(cores, 18, per_memory) if n > 64 else 1)


def test_ray_executor_gives_the_same_rows_as_local(tmp_path):
    import ray

    config = load_sweep(write(tmp_path, SWEEP))
    run_sweep(config, tmp_path / "local", threads=1)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        run_sweep(config, tmp_path / "ray", executor="ray", address=ray.get_runtime_context().gcs_address, threads=1)
    finally:
        ray.shutdown()
    assert metrics_by_hash(tmp_path / "ray") == metrics_by_hash(tmp_path / "local")


def test_the_split_counts_vendi_and_the_kernel_measures(tmp_path):
    """Vendi's eigendecompositions dominate a run at n = 2000 (about 0.7 s per set of 2000 on one thread, against
    0.1 s for the energy distance): a sweep that lists it is long enough for workers, the same without it is not."""
    text = SWEEP.replace("n: 64", "n: 2000")
    plain = load_sweep(write(tmp_path, text, "plain.yaml")).runs()
    heavy = load_sweep(write(tmp_path, text.replace("class_fidelity]", "class_fidelity, vendi]"), "v.yaml")).runs()
    cost = [runner.estimated_run_seconds(r) for r in (plain[0], heavy[0])]
    assert cost[1] - cost[0] > 1.0 and cost[0] < 0.5
    assert runner.choose_split(heavy, threads=1, cores=2, memory=1 << 40, kind="processes").workers == 2
    assert runner.choose_split(plain, threads=1, cores=2, memory=1 << 40, kind="processes").workers == 1
    # worker threads cost nothing to start: 18 runs of ~0.1 s are worth sharing, a sweep of 64 points is not
    assert runner.choose_split(plain, threads=1, cores=2).workers == 2
    tiny = load_sweep(write(tmp_path, SWEEP, "tiny.yaml")).runs()
    assert runner.choose_split(tiny, threads=1, cores=2).workers == 1


def test_the_run_estimate_follows_the_compiled_loops(tmp_path, monkeypatch):
    """The per-run estimate the sweep's log states is the documented sum of its terms, with the compiled loops'
    constants where numba can run and the torch path's where it cannot (GUIDELAB_COMPILE=0 or no numba)."""
    text = SWEEP.replace("n: 64", "n: 20000")
    spec = load_sweep(write(tmp_path, text, "big.yaml")).runs()[0]
    n, steps = spec.sample.n, spec.sample.steps
    pairs = n * n + n * n  # n·m + (n² + m²)/2 with m = n
    kernels = runner._KERNEL_PAIR_S * (2 * n) ** 2 * sum(k in spec.metrics for k in runner._PAIRWISE_MEASURES)
    vendi = runner._EIGEN_S * 2 * n**3 if "vendi" in spec.metrics else 0.0
    compiled_loops = runner._compiled_loops
    cases = ((True, runner._SAMPLE_JIT_S, runner._PAIR_JIT_S), (False, runner._SAMPLE_S, runner._PAIR_S))
    for jit, per_sample, per_pair in cases:
        monkeypatch.setattr(runner, "_compiled_loops", lambda jit=jit: jit)
        expected = runner._RUN_S + (runner._STEP_S + per_sample * n * 4) * steps + per_pair * pairs + kernels + vendi
        assert runner.estimated_run_seconds(spec) == pytest.approx(expected, rel=1e-12)
    monkeypatch.setenv("GUIDELAB_COMPILE", "0")  # the real check: the environment turns the compiled constants off
    assert not compiled_loops()


def test_the_split_estimates_a_trained_models_runs_and_names_oversubscription(tmp_path, monkeypatch):
    """A trained model's run costs a network's evaluations (the digits demo: ~1 s a run, not ~0); explicit
    --workers × --threads beyond the cores is said in the log."""
    from guidelab.experiments import config as config_module

    demo = config_module.load_sweep(Path(runner.__file__).parent / "demo-digits.yaml")
    spec = demo.runs()[0]
    assert spec.reference is not None
    assert 0.3 < runner.estimated_run_seconds(spec) < 5
    monkeypatch.setattr(runner, "_usable_cores", lambda: 2)
    summary = run_sweep(load_sweep(write(tmp_path, SWEEP)), tmp_path / "over", workers=2, threads=2)
    assert "4 torch threads on 2 usable cores: the runs share cores" in summary.split


def test_the_log_says_where_the_ray_executor_runs(monkeypatch):
    """``ray.init(address=None)`` uses RAY_ADDRESS, else this machine's running instance, else starts one on this
    machine only: the sweep's log says which, so a user who forgot --address sees that a remote cluster is not used."""
    from guidelab.experiments.runner import ray_where

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert "this machine's Ray instance" in ray_where(None) and "--address" in ray_where(None)
    assert ray_where("auto") == "on the Ray cluster running on this machine (--address auto)"
    assert ray_where("10.0.0.1:6379") == "on the Ray cluster at 10.0.0.1:6379"
    monkeypatch.setenv("RAY_ADDRESS", "head:6379")
    assert ray_where(None) == "on the Ray cluster at head:6379 (RAY_ADDRESS)"
    assert ray_where("other:1") == "on the Ray cluster at other:1"
