"""Tunes that take longer (marked slow; ``pytest -m slow``): on a local Ray cluster (its trials equal a local
tune's), on the shipped digits model (Fréchet distance under an accuracy constraint) and on a tiny diffusers pipeline
with a user metric, whose best setting then runs through ``guidelab generate --guider-file``."""

from __future__ import annotations

import json

import pytest

from guidelab.cli import main
from guidelab.experiments.store import ResultStore
from guidelab.tune import check_tune
from guidelab.tune.runner import run_tune

pytestmark = pytest.mark.slow

EXACT = {
    "targets": [{"target": "multimodal-2d", "conds": ["a", "b"]}],
    "model": {"kind": "scaled-conditional", "rho": 0.5},
    "grids": [{"kind": "uniform", "steps": 8}],
    "solvers": ["heun"],
    "n": 300,
    "save_samples": False,
    "guider": {"name": "cfg"},
    "search": {"scale": {"low": 1, "high": 4, "log": True}},
    "objective": {"metric": "energy_distance"},
    "budget": {"trials": 5},
    "startup_trials": 3,
    "seeds": [0, 1],
    "heldout_seeds": [1000],
}


def main_code(argv):
    """The command line's exit code, run in this process."""
    try:
        main(argv)
    except SystemExit as stop:
        return stop.code
    return 0


def table(summary):
    return [(t["number"], t["params"], t["values"], t["metrics"]) for s in summary["studies"] for t in s["trials"]]


def test_a_ray_tune_gives_the_trials_of_a_local_one(tmp_path):
    ray = pytest.importorskip("ray")
    plan = check_tune(EXACT)
    local = run_tune(plan, tmp_path / "local")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        remote = run_tune(plan, tmp_path / "ray", executor="ray", address=ray.get_runtime_context().gcs_address)
    finally:
        ray.shutdown()
    assert table(remote) == table(local)
    assert remote["heldout"] == local["heldout"]
    rows = {r["hash"]: r["metrics"] for r in ResultStore(tmp_path / "ray" / "results.sqlite").rows()}
    assert rows == {r["hash"]: r["metrics"] for r in ResultStore(tmp_path / "local" / "results.sqlite").rows()}


def test_a_trained_image_model_tunes_fd_under_an_accuracy_constraint(tmp_path):
    tune = {
        "model": {"kind": "shipped", "name": "digits"},
        "reference": {"dataset": "digits", "conds": [3]},
        "grids": [{"kind": "uniform", "steps": 6}],
        "solvers": ["heun"],
        "n": 40,
        "save_samples": False,
        "guider": {"name": "cfg"},
        "search": {"scale": {"low": 1, "high": 5, "log": True}},
        "objective": {"metric": "fd", "constraints": [{"metric": "accuracy", "min": 0.9}]},
        "budget": {"trials": 4},
        "seeds": [0],
        "heldout_seeds": [1000],
    }
    summary = run_tune(check_tune(tune), tmp_path)
    study = summary["studies"][0]
    best = next(t for t in study["trials"] if t["number"] == study["best"]["number"])
    assert best["feasible"] and best["metrics"]["accuracy"] >= 0.9 and best["metrics"]["fd_floor"] > 0
    assert all(best["values"][0] <= t["values"][0] for t in study["trials"] if t["feasible"])


def test_a_pipeline_tune_with_a_user_metric_and_generate_with_its_best_file(tmp_path, monkeypatch):
    from tiny_diffusers import make_sd

    make_sd().save_pretrained(tmp_path / "sd")
    (tmp_path / "my_metric.py").write_text(
        "import numpy as np\n\ndef brightness(images, condition):\n    return float(np.mean(images))\n"
    )
    monkeypatch.chdir(tmp_path)
    tune = {
        "pipeline": {"folder": "sd", "prompts": ["a fox"], "n": 2, "steps": 3, "metrics": ["my_metric:brightness"]},
        "guider": {"name": "cfg"},
        "search": {"scale": {"low": 1, "high": 8}},
        "objective": {"metric": "brightness", "direction": "maximize"},
        "budget": {"trials": 3},
        "reference_cfg": False,
        "seeds": [0],
        "heldout_seeds": [1],
    }
    summary = run_tune(check_tune(tune), tmp_path / "out")
    study = summary["studies"][0]
    assert len(study["trials"]) == 3 and study["best"] is not None
    assert max(t["values"][0] for t in study["trials"]) == study["best"]["values"][0]
    argv = ["generate", "--pipeline", "sd", "--prompt", "a fox", "--steps", "3", "--n", "2"]
    code = main_code([*argv, "--guider-file", "out/best.yaml", "--out", "gen"])
    assert code in (None, 0)
    config = json.loads((tmp_path / "gen" / "generate.json").read_text())["config"]
    assert config["guider"]["schedule"]["scale"] == study["best"]["params"]["scale"]
    import numpy as np
    from PIL import Image

    images = np.stack([np.asarray(Image.open(tmp_path / "gen" / f"image_{k:03d}.png")) for k in range(2)]) / 255.0
    assert float(images.mean()) == pytest.approx(study["best"]["values"][0], abs=2e-3)  # 8-bit rounding only
