"""Sweeps under faults: failed runs exit 1 and are retried, kill -9 of the main process leaves no process,
a killed worker costs only its run, a full disk then resume, one sweep per folder, nonsense options."""

import errno
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest
from typer.testing import CliRunner

from guidelab.cli import app
from guidelab.experiments import runner as sweep_runner
from guidelab.experiments.config import load_sweep
from guidelab.experiments.runner import run_sweep
from guidelab.experiments.store import ResultStore

SWEEP = """
name: faults
targets:
  - {target: multimodal-2d, conds: [a, b]}
grids: [{kind: uniform, steps: 6}]
solvers: [euler]
guiders:
  - {name: cfg, params: {scale: [1.0, 3.0]}}
seeds: [0, 1]
n: 64
metrics: [energy_distance]
"""
LONGER = SWEEP.replace("steps: 6", "steps: 24").replace("n: 64", "n: 1024").replace("[0, 1]", "[0, 1, 2]")
cli = CliRunner()


def write(tmp_path, text, name="sweep.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def stored(out):
    """What an uninterrupted run must give: hash → (status, metrics, nfe); floats compare bitwise."""
    return {r["hash"]: (r["status"], r["metrics"], r["nfe"]) for r in ResultStore(out / "results.sqlite").rows()}


def attempts(out):
    return {r["hash"]: r["attempts"] for r in ResultStore(out / "results.sqlite").rows()}


def live_processes(pred):
    """Pids of live (not zombie) processes whose /proc stat fields satisfy ``pred(pid, ppid, session)``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] not in "ZX" and pred(int(entry), int(fields[1]), int(fields[3])):
            found.append(int(entry))
    return found


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read()
    except OSError:
        return b""


def test_failed_runs_exit_one_and_a_rerun_retries_them(tmp_path):
    sweep = write(tmp_path, SWEEP.replace("solvers: [euler]", "solvers: [euler, euler-maruyama]"))
    out = tmp_path / "out"
    result = cli.invoke(app, ["run", str(sweep), "--out", str(out)])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert errors == [f"error: 8 of 16 runs failed; see the error column of {out / 'results.sqlite'}"]
    config = load_sweep(sweep)
    kept = run_sweep(config, out, retry_failed=False)
    assert (kept.ran, kept.failed, kept.failed_total) == (0, 0, 8)
    again = run_sweep(config, out)
    assert (again.ran, again.retried, again.failed, again.failed_total) == (8, 8, 8, 8)
    rows = ResultStore(out / "results.sqlite").rows()
    assert len(rows) == 16
    assert {(r["status"], r["attempts"]) for r in rows} == {("ok", 1), ("error", 2)}


def test_full_disk_then_resume_gives_the_uninterrupted_store(tmp_path, monkeypatch):
    config = load_sweep(write(tmp_path, SWEEP))
    run_sweep(config, tmp_path / "reference")
    expected = stored(tmp_path / "reference")
    rng = random.Random(11)

    # a run's artifact cannot be written: that run is an error, the sweep goes on, the rerun retries it
    real_write = sweep_runner.write_npy_atomic
    calls = {"n": 0, "fail_at": rng.randint(1, len(expected))}

    def full_disk_once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == calls["fail_at"]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(*args, **kwargs)

    monkeypatch.setattr(sweep_runner, "write_npy_atomic", full_disk_once)
    first = run_sweep(config, tmp_path / "artifact")
    assert (first.failed, first.failed_total) == (1, 1)
    errors = [r for r in ResultStore(tmp_path / "artifact" / "results.sqlite").rows() if r["status"] == "error"]
    assert len(errors) == 1 and "No space left on device" in errors[0]["error"]
    resumed = run_sweep(config, tmp_path / "artifact")
    assert (resumed.ran, resumed.retried, resumed.failed_total) == (1, 1, 0)
    assert stored(tmp_path / "artifact") == expected
    assert sorted(attempts(tmp_path / "artifact").values()) == [1] * (len(expected) - 1) + [2]

    # the store itself cannot be written: the sweep stops with the error, nothing half-written, a rerun resumes
    monkeypatch.setattr(sweep_runner, "write_npy_atomic", real_write)
    real_put = ResultStore.put
    puts = {"n": 0, "fail_at": rng.randint(1, len(expected))}

    def full_store_once(self, row):
        puts["n"] += 1
        if puts["n"] == puts["fail_at"]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_put(self, row)

    monkeypatch.setattr(ResultStore, "put", full_store_once)
    with pytest.raises(OSError, match="No space left on device"):
        run_sweep(config, tmp_path / "store")
    assert len(stored(tmp_path / "store")) == puts["fail_at"] - 1
    run_sweep(config, tmp_path / "store")
    assert stored(tmp_path / "store") == expected
    assert set(attempts(tmp_path / "store").values()) == {1}


def test_kill_minus_nine_of_the_main_process_leaves_no_process(tmp_path):
    """Two short runs, then two long ones (seconds each): killed while both workers are in a long run, none of
    them (nor the resource tracker) outlives the main process by more than a moment. (Resuming after kill -9 is
    test_experiments' test_kill_minus_nine_and_resume_gives_the_uninterrupted_store.)"""
    long_runs = SWEEP.replace("conds: [a, b]", "conds: [a]").replace("[1.0, 3.0]", "3.0")
    long_runs = long_runs.replace("grids: [{kind: uniform, steps: 6}]", "grids: [{steps: 6}, {steps: 4000}]")
    sweep = write(tmp_path, long_runs.replace("n: 64", "n: 4096\nsave_samples: false"))
    assert [spec.sample.steps for spec in load_sweep(sweep).runs()] == [6, 6, 4000, 4000]
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "guidelab.cli", "run", str(sweep), "--out", str(out), "--workers", "2"]
    command += ["--executor", "processes"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    session = proc.pid  # the main process leads its own session: every process it starts is in it
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "results.sqlite").exists() and len(stored(out)) >= 2:
            break
        time.sleep(0.02)
    time.sleep(random.Random(3).uniform(0.0, 0.5))  # a random moment within the long runs
    children = live_processes(lambda pid, ppid, sid: sid == session and pid != session)
    assert proc.poll() is None, "the sweep finished before it could be killed"
    assert len([p for p in children if b"spawn_main" in cmdline(p)]) == 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 3
    while live_processes(lambda pid, ppid, sid: sid == session) and time.monotonic() < deadline:
        time.sleep(0.05)
    survivors = live_processes(lambda pid, ppid, sid: sid == session)
    for pid in survivors:  # leave nothing behind, even when the check fails
        os.kill(pid, signal.SIGKILL)
    assert not survivors, [cmdline(p) for p in survivors]  # no worker, no resource tracker


def test_a_killed_worker_costs_only_its_run(tmp_path):
    config = load_sweep(write(tmp_path, LONGER))
    killed = []

    def kill_a_worker(row):
        if killed:
            return
        workers = live_processes(lambda pid, ppid, sid: ppid == os.getpid() and b"spawn_main" in cmdline(pid))
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        killed.append(workers[0])

    summary = run_sweep(config, tmp_path / "out", workers=2, executor="processes", on_row=kill_a_worker)
    rows = ResultStore(tmp_path / "out" / "results.sqlite").rows()
    assert len(rows) == summary.total == 12
    errors = [r for r in rows if r["status"] == "error"]
    assert summary.failed == len(errors) == 1
    assert errors[0]["error"] == f"worker died: killed by signal SIGKILL (pid {killed[0]})"
    # the others ran in two workers (one of them fresh): bitwise what one process gives
    reference = tmp_path / "reference"
    run_sweep(config, reference)
    expected = stored(reference)
    assert all(expected[h] == v for h, v in stored(tmp_path / "out").items() if v[0] == "ok")
    resumed = run_sweep(config, tmp_path / "out", workers=2, executor="processes")
    assert (resumed.ran, resumed.retried, resumed.failed_total) == (1, 1, 0)
    assert stored(tmp_path / "out") == expected


def test_two_runs_on_one_folder_do_not_both_work(tmp_path):
    sweep = write(tmp_path, LONGER)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "guidelab.cli", "run", str(sweep), "--out", str(out)]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p, *p.communicate(timeout=120)) for p in procs]
    assert sorted(p.returncode for p, _, _ in results) == [0, 2], [err for _, _, err in results]
    (winner,) = [p for p, _, _ in results if p.returncode == 0]
    ((_, _, refused),) = [r for r in results if r[0].returncode == 2]
    lines = refused.strip().splitlines()
    assert len(lines) == 1, refused
    assert lines[0].startswith(f"error: out: {out} is in use by another guidelab run (pid {winner.pid}, started ")
    assert len(stored(out)) == 12 and set(attempts(out).values()) == {1}  # the work was done once


@pytest.mark.parametrize(
    ("options", "field"),
    [
        (["--threads", "0"], "threads"),
        (["--workers", "0"], "workers"),
        (["--address", "127.0.0.1:6379"], "address"),
        (["--executor", "ray", "--workers", "2"], "workers"),
        (["--executor", "dask"], "executor"),
    ],
)
def test_nonsense_options_are_one_line_exit_2(tmp_path, options, field):
    result = cli.invoke(app, ["run", str(write(tmp_path, SWEEP)), "--out", str(tmp_path / "o"), *options])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {field}: "), result.stderr
    assert not (tmp_path / "o").exists()


def test_a_store_written_before_attempts_gains_the_column(tmp_path):
    out = tmp_path / "out"
    run_sweep(load_sweep(write(tmp_path, SWEEP)), out)
    before = stored(out)
    with sqlite3.connect(out / "results.sqlite") as db:
        db.execute("ALTER TABLE runs DROP COLUMN attempts")
    assert stored(out) == before
    assert set(attempts(out).values()) == {1}
    assert "attempts" in ResultStore(out / "results.sqlite").frame().columns


def test_ctrl_c_on_worker_threads_exits_130_at_once_and_the_rerun_completes(tmp_path):
    """Ctrl-C while two worker threads are inside runs: the process ends with 130 within seconds (no abort of an
    interpreter finalising torch under a running thread), the store holds whole rows only, each with its run.json,
    and the same command again finishes the sweep with the rows of an uninterrupted one."""
    text = LONGER.replace("n: 1024", "n: 8192\nsave_samples: false").replace("steps: 24", "steps: 80")
    sweep = write(tmp_path, text)
    out = tmp_path / "interrupted"
    command = [sys.executable, "-m", "guidelab.cli", "run", str(sweep), "--out", str(out), "--workers", "2"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "results.sqlite").exists() and len(stored(out)) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the sweep finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    start = time.monotonic()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert time.monotonic() - start < 10
    assert "terminate called" not in err
    rows = stored(out)
    count = f"{len(rows)} run" + ("" if len(rows) == 1 else "s")
    assert f"interrupted: {count} stored in {out}; rerun the same command to resume" in err
    assert 2 <= len(rows) < 12
    assert all((out / "runs" / h / "run.json").is_file() for h in rows)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    reference = tmp_path / "reference"
    run_sweep(load_sweep(sweep), reference, workers=1)
    assert stored(out) == stored(reference)
