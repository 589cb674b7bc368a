"""A tune killed by SIGKILL in the middle of a trial and run again with the same command ends with the trial
table of an uninterrupted tune with the same sampler seed: the same trials, parameters and values, no trial lost
or repeated, and no run stored twice."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from guidelab.experiments.store import ResultStore
from guidelab.tune import check_tune
from guidelab.tune.runner import run_tune

ROOT = Path(__file__).resolve().parents[1]

TUNE = {
    "name": "resume",
    "targets": [{"target": "multimodal-2d", "conds": ["a"]}],
    "model": {"kind": "scaled-conditional", "rho": 0.5},
    "grids": [{"kind": "uniform", "steps": 16}],
    "solvers": ["heun"],
    "n": 1500,
    "save_samples": False,
    "guider": {"name": "cfg"},
    "search": {"scale": {"low": 1, "high": 4, "log": True}},
    "objective": {"metric": "energy_distance", "constraints": [{"metric": "class_fidelity", "min": 0.9999}]},
    "budget": {"trials": 8},
    "startup_trials": 3,
    "seeds": [0, 1],
    "heldout_seeds": [1000],
}


def trial_table(out: Path) -> list[tuple]:
    study = optuna.load_study(study_name="cfg", storage=f"sqlite:///{out / 'study.sqlite'}")
    return [
        (t.number, t.state.name, t.params, t.values, t.constraints, t.user_attrs["metrics"])
        for t in study.get_trials(deepcopy=False)
    ]


def stored_rows(out: Path) -> dict[str, tuple]:
    rows = ResultStore(out / "results.sqlite").rows()
    by_hash = {r["hash"]: (r["label"], r["seed"], r["config"]["tune"], r["metrics"], r["attempts"]) for r in rows}
    assert len(by_hash) == len(rows)
    return by_hash


def count_rows(store: Path) -> int:
    try:
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=0.05) as db:
            return db.execute("SELECT count(*) FROM runs").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_a_tune_killed_mid_trial_resumes_to_the_uninterrupted_trial_table(tmp_path):
    whole = tmp_path / "whole"
    run_tune(check_tune(TUNE), whole)

    config = tmp_path / "tune.yaml"
    config.write_text(yaml.safe_dump(TUNE))
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    argv = [sys.executable, "-m", "guidelab.cli", "tune", str(config), "--out", str(out), "--no-report"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen = 0
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            seen = count_rows(out / "results.sqlite")
            if seen >= 5 and seen % 2 == 1:  # a trial's first seed is stored, its second is running
                break
            time.sleep(0.005)
        assert proc.poll() is None, f"the tune ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    partial = trial_table(out)
    assert 2 <= len(partial) < TUNE["budget"]["trials"], len(partial)
    assert not (out / "best.yaml").exists()

    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert trial_table(out) == trial_table(whole)
    assert trial_table(out)[: len(partial)] == partial  # the finished trials were kept, not redone
    killed, uninterrupted = stored_rows(out), stored_rows(whole)
    assert killed.keys() == uninterrupted.keys()
    assert {h: r[:4] for h, r in killed.items()} == {h: r[:4] for h, r in uninterrupted.items()}
    assert all(r[4] == 1 for r in killed.values())  # every run ran once: stored runs were reused, not run again
    a, b = (json.loads((d / "summary.json").read_text()) for d in (out, whole))
    assert a["studies"][0]["best"] == b["studies"][0]["best"]
    assert (out / "best.yaml").read_text() == (whole / "best.yaml").read_text()


def test_a_folder_of_another_tune_is_refused(tmp_path):
    small = {**TUNE, "n": 200, "budget": {"trials": 2}, "objective": {"metric": "energy_distance"}}
    run_tune(check_tune(small), tmp_path)
    changed = {**small, "search": {"scale": {"low": 1, "high": 5, "log": True}}}
    with pytest.raises(ValueError, match=r"^out: .* holds a tune of 'cfg' with another configuration"):
        run_tune(check_tune(changed), tmp_path)
    more = run_tune(check_tune({**small, "budget": {"trials": 4}}), tmp_path)  # a larger budget goes on
    assert [t["number"] for t in more["studies"][0]["trials"]] == [0, 1, 2, 3]
