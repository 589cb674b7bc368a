"""Small tunes end to end: a constrained objective never chooses an infeasible trial, NSGA-II's front is mutually
non-dominated, the coordinate search tunes an interval, a comparison ranks its methods, the best setting file
reproduces the tuned metric through ``guidelab sample``, and the report shows the history and the held-out table."""

from __future__ import annotations

import itertools
import json
import re

import numpy as np
import pytest
import torch

from guidelab.cli import main
from guidelab.experiments.measures import MEASURES, MeasureInput, measure_of_key, reference_samples
from guidelab.experiments.store import ResultStore
from guidelab.guiders.registry import load_guider_file
from guidelab.report import write_report
from guidelab.targets import get_target
from guidelab.tune import check_tune
from guidelab.tune.objective import dominates
from guidelab.tune.runner import _file_part, run_tune

SMALL = {
    "targets": [{"target": "multimodal-2d", "conds": ["a"]}],
    "model": {"kind": "scaled-conditional", "rho": 0.5},
    "grids": [{"kind": "uniform", "steps": 8}],
    "solvers": ["heun"],
    "n": 400,
    "save_samples": False,
    "guider": {"name": "cfg"},
    "search": {"scale": {"low": 1, "high": 6, "log": True}},
    "seeds": [0],
    "heldout_seeds": [1000],
    "startup_trials": 4,
}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def trials_of(summary, label="cfg"):
    return next(s for s in summary["studies"] if s["label"] == label)["trials"]


def test_a_constrained_objective_never_chooses_an_infeasible_trial(tmp_path):
    """Minimise the distance to the truth with class fidelity ≥ the CFG γ = 3 baseline's: the unconstrained optimum
    (γ = 2 on this model) breaks the constraint, so the choice must be the best feasible trial instead."""
    tune = {
        **SMALL,
        "objective": {"metric": "energy_distance", "constraints": [{"metric": "class_fidelity", "min": "baseline"}]},
        "budget": {"trials": 10},
    }
    summary = run_tune(check_tune(tune), tmp_path)
    baseline = summary["baseline"]
    assert baseline["guider"] == {"name": "cfg", "params": {"scale": 3.0}}
    trials = trials_of(summary)
    best = summary["studies"][0]["best"]
    chosen = next(t for t in trials if t["number"] == best["number"])
    assert chosen["feasible"] and chosen["metrics"]["class_fidelity"] >= baseline["metrics"]["class_fidelity"]
    feasible = [t for t in trials if t["feasible"]]
    assert chosen["values"][0] == min(t["values"][0] for t in feasible)
    assert any(not t["feasible"] and t["values"] and t["values"][0] < chosen["values"][0] for t in trials)
    rows = ResultStore(tmp_path / "results.sqlite").rows()
    assert {r["label"] for r in rows} == {"baseline:cfg", "tune:cfg", "tuned:cfg", "default:cfg"}
    assert sum(r["label"] == "tune:cfg" for r in rows) == 10  # one row per trial (one condition, one seed)
    tune_rows = [r for r in rows if r["label"] == "tune:cfg"]
    assert sorted(r["config"]["tune"]["trial"] for r in tune_rows) == list(range(10))
    assert all(r["config"]["tune"]["seeds"] == [0] for r in tune_rows)


def test_nsga2_gives_a_mutually_non_dominated_front(tmp_path):
    tune = {
        **SMALL,
        "objective": {"metrics": ["energy_distance", "class_fidelity"]},
        "budget": {"trials": 10},
        "population_size": 4,
        "reference_cfg": False,
    }
    summary = run_tune(check_tune(tune), tmp_path)
    assert summary["search_method"] == "nsga2"
    study = summary["studies"][0]
    trials = {t["number"]: t for t in study["trials"]}
    front = [trials[n] for n in study["front"]]
    directions = ["minimize", "maximize"]
    assert len(front) >= 2
    for a, b in itertools.permutations(front, 2):  # brute force, both ways
        assert not dominates(a["values"], b["values"], directions)
    rest = [t for t in trials.values() if t["feasible"] and t["number"] not in study["front"]]
    assert rest, "on this model γ < 2 is dominated by γ = 2: some trials must be off the front"
    for t in rest:
        assert any(dominates(f["values"], t["values"], directions) or f["values"] == t["values"] for f in front)
    assert study["best"]["number"] in study["front"]
    html = write_report(tmp_path).read_text()
    assert 'data-figure="tune-pareto"' in html


def test_a_coordinate_search_tunes_the_interval_bounds(tmp_path):
    tune = {
        **SMALL,
        "n": 300,
        "guider": {"name": "cfg", "params": {"schedule": "interval", "scale": 3}},
        "search": {"lam_lo": {"low": 0.05, "high": 5, "log": True}, "lam_hi": {"low": 0.2, "high": 20, "log": True}},
        "search_method": "coordinate",
        "coordinate_points": 5,
        "objective": {"metric": "energy_distance"},
        "budget": {"trials": 40},
        "reference_cfg": False,
    }
    plan = check_tune(tune)
    summary = run_tune(plan, tmp_path)
    study = summary["studies"][0]
    assert study["stopped"] == "converged" and len(study["trials"]) < 25
    grids = {k: p.grid(5) for k, p in plan.primary.search.items()}
    seen = [tuple(t["params"].values()) for t in study["trials"]]
    assert len(set(seen)) == len(seen)  # no point twice
    assert all(t["params"][k] in grids[k] for t in study["trials"] for k in grids)
    assert all(t["params"]["lam_hi"] > t["params"]["lam_lo"] for t in study["trials"])
    best = study["best"]
    assert best["values"][0] == min(t["values"][0] for t in study["trials"] if t["values"])
    assert best["guider"]["params"] == {"schedule": "interval", "scale": 3, **best["params"]}
    assert study["importances"]["energy_distance"].keys() == {"lam_lo", "lam_hi"}


def test_a_comparison_ranks_the_methods_and_the_report_shows_history_and_held_out(tmp_path, capsys):
    import yaml

    config = tmp_path / "tune.yaml"
    config.write_text(yaml.safe_dump({**SMALL, "objective": {"metric": "energy_distance"}, "budget": {"trials": 6}}))
    out = tmp_path / "out"
    main_ok(["tune", str(config), "--compare", "cfg,apg", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "ranking on the held-out seeds:" in printed and re.search(r"1\. (cfg|apg)", printed)
    summary = json.loads((out / "summary.json").read_text())
    assert [s["label"] for s in summary["studies"]] == ["cfg", "apg"]
    assert all(len(s["trials"]) == 6 for s in summary["studies"])
    ranking = summary["ranking"]
    assert [r["rank"] for r in ranking] == [1, 2] and ranking[0]["heldout"] <= ranking[1]["heldout"]
    best = load_guider_file(out / "best.yaml")
    assert best["name"] == ranking[0]["guider"]["name"] and best["params"] == ranking[0]["guider"]["params"]
    assert (out / "best-cfg.yaml").is_file() and (out / "best-apg.yaml").is_file()
    html = (out / "report.html").read_text()
    assert html.count('data-figure="tune-history"') == 1 and 'data-figure="tune-importance"' in html
    table = re.search(r"<table class='best heldout'>(.*?)</table>", html, re.S)
    assert table is not None
    for text in ("cfg tuned", "cfg defaults", "apg tuned", "apg defaults", "search seeds", "held-out"):
        assert text in table.group(1)
    assert "<table class='best ranking'>" in html and "tune-trials" in html


def test_the_best_setting_file_reproduces_the_tuned_metric_through_sample(tmp_path, capsys):
    tune = {
        **{k: v for k, v in SMALL.items() if k != "model"},  # guidelab sample runs a target's exact denoiser
        "n": 300,
        "seeds": [0, 1],
        "search": {"scale": {"low": 1.2, "high": 4}},
        "objective": {"metric": "w2"},
        "budget": {"trials": 3},
    }
    summary = run_tune(check_tune(tune), tmp_path / "tune")
    best = summary["studies"][0]["best"]
    target = get_target("multimodal-2d")
    values = []
    for seed in tune["seeds"]:
        out = tmp_path / f"seed{seed}.npy"
        argv = ["sample", "--target", "multimodal-2d", "--cond", "a", "--steps", "8", "--solver", "heun"]
        main_ok(
            [
                *argv,
                "--guider-file",
                str(tmp_path / "tune" / "best.yaml"),
                "--n",
                "300",
                "--seed",
                str(seed),
                "--out",
                str(out),
            ]
        )
        x = torch.from_numpy(np.load(out)).double()
        inp = MeasureInput(x, target, 0, reference_samples(target, 0, 300), 0.0)
        values.append(MEASURES[measure_of_key("w2")](inp)["w2"])
    assert sum(values) / len(values) == pytest.approx(best["values"][0], rel=0, abs=1e-12)
    sidecar = json.loads((tmp_path / "seed0.json").read_text())
    assert sidecar["config"]["guider"] == "cfg" and sidecar["config"]["params"] == best["params"]


def main_ok(argv):
    """Run the command line in this process; it must succeed (exit code 0)."""
    try:
        main(argv)
        code = 0
    except SystemExit as stop:
        code = stop.code
    assert code in (None, 0), argv


def test_run_adds_a_guider_files_setting_to_the_sweep(tmp_path):
    best = tmp_path / "best.yaml"
    best.write_text("# tuned\nname: apg\nparams: {scale: 2.5, eta: 0.0}\nlabel: tuned-apg\n")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        "targets: [{target: multimodal-2d, conds: [a]}]\nguiders: [{name: cfg}]\nn: 16\ngrids: [{steps: 4}]\n"
    )
    main_ok(["run", str(sweep), "--out", str(tmp_path / "out"), "--guider-file", str(best)])
    rows = ResultStore(tmp_path / "out" / "results.sqlite").rows()
    tuned = [r for r in rows if r["label"] == "tuned-apg"]
    assert len(rows) == 2 and len(tuned) == 1
    assert tuned[0]["guider_config"]["eta"] == 0.0 and tuned[0]["gamma"] == 2.5


def test_the_beyond_cfg_guiders_tune_and_rank_beside_cfg(tmp_path):
    """FBG and Rectified-CFG++ in a comparison tune (issue 'beyond CFG'): each tunes its scale over the same budget and
    seeds, every trial is measured, and the best files load back as the best trials' guiders."""
    import yaml

    tune = {**SMALL, "solvers": ["euler"], "objective": {"metric": "energy_distance"}, "budget": {"trials": 3}}
    config = tmp_path / "tune.yaml"
    config.write_text(yaml.safe_dump(tune))
    out = tmp_path / "out"
    main_ok(["tune", str(config), "--compare", "cfg,fbg,rectified-cfg++", "--out", str(out)])
    summary = json.loads((out / "summary.json").read_text())
    assert [s["label"] for s in summary["studies"]] == ["cfg", "fbg", "rectified-cfg++"]
    for study in summary["studies"]:
        assert len(study["trials"]) == 3 and all(np.isfinite(t["values"][0]) for t in study["trials"])
        best = load_guider_file(out / f"best-{_file_part(study['label'])}.yaml")
        chosen = min(study["trials"], key=lambda t: t["values"][0])
        assert best["name"] == study["label"] and best["params"]["scale"] == chosen["params"]["scale"]
    assert {r["guider"]["name"] for r in summary["ranking"]} == {"cfg", "fbg", "rectified-cfg++"}


def test_a_trials_runs_on_worker_threads_give_the_same_tune(tmp_path, monkeypatch):
    """A trial's runs (two conditions × two seeds) on two worker threads: every trial, value and stored metric
    bitwise as in one thread, so the suggestions (which read the history) are the same too."""
    from guidelab.experiments import runner

    tune = {
        **SMALL,
        "targets": [{"target": "multimodal-2d", "conds": ["a", "b"]}],
        "seeds": [0, 1],
        "objective": {"metric": "energy_distance"},
        "budget": {"trials": 5},
    }
    one = run_tune(check_tune(tune), tmp_path / "one")
    monkeypatch.setattr(runner, "_usable_cores", lambda: 2)
    monkeypatch.setattr(runner, "_THREADS_MIN_S", 0.0)
    used = []

    class Recording(runner._ThreadRuns):
        def __init__(self, runs, out, workers, threads):
            used.append(workers)
            super().__init__(runs, out, workers, threads)

    monkeypatch.setattr(runner, "_ThreadRuns", Recording)
    two = run_tune(check_tune(tune), tmp_path / "two")
    assert used and set(used) == {2}
    assert [(t["number"], t["values"], t["params"]) for t in trials_of(one)] == [
        (t["number"], t["values"], t["params"]) for t in trials_of(two)
    ]

    def metrics(out):
        return {r["hash"]: r["metrics"] for r in ResultStore(out / "results.sqlite").rows()}

    assert metrics(tmp_path / "one") == metrics(tmp_path / "two")
