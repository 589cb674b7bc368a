"""Sweeps and ``guidelab sample`` on a trained image model: a tiny MLP denoiser and classifier trained here.

Stored metrics are recomputed from the stored samples (scipy's sqrtm for the Fréchet distance, numpy for the
accuracy), new weights must give new runs with new images, and every bad sweep file is one line naming the field.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from guidelab.cli import main
from guidelab.data import load_dataset
from guidelab.experiments.config import load_sweep
from guidelab.experiments.runner import run_sweep
from guidelab.experiments.store import ResultStore
from guidelab.metrics.images import image_floor
from guidelab.models.zoo import load_classifier, load_image_denoiser, save_image_model
from guidelab.train_images import train_classifier, train_image_denoiser
from image_reference import floor_fd, matched_fd


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    denoiser, classifier = root / "mlp.safetensors", root / "clf.safetensors"
    train_image_denoiser(
        {"data": "digits", "arch": "mlp", "hidden": 32, "depth": 1, "embed_dim": 8, "batch_size": 32, "steps": 30}
        | {"warmup": 5, "eval_every": 30, "checkpoint_every": 30},
        denoiser,
        threads=1,
    )
    train_classifier(
        {"data": "digits", "steps": 100, "batch_size": 64, "channels": [16, 16, 16], "feature_dim": 8}
        | {"lr": 5e-3, "warmup": 10, "ema_decay": 0.9, "eval_every": 50},
        classifier,
        threads=1,
    )
    return {"denoiser": denoiser, "classifier": classifier}


@pytest.fixture
def checkpoint(trained, tmp_path):
    """A copy of the trained denoiser that a test may overwrite."""
    path = tmp_path / "model.safetensors"
    shutil.copy(trained["denoiser"], path)
    return path


def _sweep(model: dict, trained: dict, **changes) -> dict:
    data = {
        "name": "tiny",
        "model": model,
        "reference": {"dataset": "digits", "conds": [3], "classifier": str(trained["classifier"])},
        "grids": [{"kind": "uniform", "steps": 4}],
        "guiders": [{"name": "cfg", "params": {"scale": [1, 3]}}],
        "n": 16,
    }
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None}


def _write(tmp_path, data: dict, name: str = "sweep.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def _samples(out, row) -> np.ndarray:
    return np.load(out / "runs" / row["hash"] / "samples.npy")


def test_a_sweep_on_a_checkpoint_runs_measures_resumes_and_follows_new_weights(trained, checkpoint, tmp_path):
    file = _write(tmp_path, _sweep({"kind": "checkpoint", "path": str(checkpoint)}, trained))
    out = tmp_path / "out"
    summary = run_sweep(load_sweep(file), out)
    assert (summary.total, summary.ran, summary.failed) == (2, 2, 0)
    rows = ResultStore(out / "results.sqlite").rows()
    assert [r["status"] for r in rows] == ["ok", "ok"], [r["error"] for r in rows]
    assert sorted(r["gamma"] for r in rows) == [1.0, 3.0]

    clf = load_classifier(trained["classifier"])
    test = load_dataset("digits", "test")
    reference = test.images[test.labels == 3]
    with torch.no_grad():
        ref_feats = clf.features(reference).double().numpy()
    floor = image_floor(reference, 3, clf)
    for row in rows:
        m = row["metrics"]
        assert {"fd", "fd_floor", "accuracy", "accuracy_floor", "precision", "vendi", "out_of_range"} <= set(m)
        assert (out / "runs" / row["hash"] / "grid.png").is_file()
        x = torch.from_numpy(_samples(out, row))
        assert x.shape == (16, 1, 8, 8) and row["cond"] == "3" and row["target"] == "digits"
        with torch.no_grad():
            feats, logits = clf.features(x).double().numpy(), clf(x).numpy()
        assert m["fd"] == pytest.approx(matched_fd(feats, ref_feats), rel=1e-5)
        assert m["accuracy"] == np.mean(np.argmax(logits, axis=1) == 3)
        assert m["fd_floor"] == floor["fd"] and m["accuracy_floor"] == floor["accuracy"]
        assert m["fd_floor"] == pytest.approx(floor_fd(ref_feats), rel=1e-5)
    first = {r["hash"]: _samples(out, r) for r in rows}
    assert not np.array_equal(*first.values())  # γ = 1 and γ = 3 differ

    again = run_sweep(load_sweep(file), out)
    assert (again.skipped, again.ran) == (2, 0)
    assert len(ResultStore(out / "results.sqlite").rows()) == 2

    model = load_image_denoiser(checkpoint)
    with torch.no_grad():
        model.net.out.bias.add_(0.05)
    save_image_model(model, checkpoint, model.checkpoint_config)
    digest = "checkpoint:" + hashlib.sha256(checkpoint.read_bytes()).hexdigest()[:16]
    third = run_sweep(load_sweep(file), out)
    assert (third.skipped, third.ran, third.failed) == (0, 2, 0)
    rows = ResultStore(out / "results.sqlite").rows()
    new = [r for r in rows if r["hash"] not in first]
    assert len(rows) == 4 and len(new) == 2
    for row in new:
        resolved = json.loads((out / "runs" / row["hash"] / "run.json").read_text())["resolved"]
        assert resolved["model_digest"] == digest
        old = next(h for h in first if next(r for r in rows if r["hash"] == h)["gamma"] == row["gamma"])
        assert not np.array_equal(_samples(out, row), first[old])  # the new weights were used, not a cached model


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"reference": None}, "reference"),
        ({"reference": {"dataset": "mnist"}}, "reference"),
        ({"reference": {"dataset": "digits", "conds": ["12"], "classifier": "CLF"}}, "reference.conds"),
        ({"metrics": ["energy_distance"]}, "metrics"),
        ({"targets": [{"target": "multimodal-2d", "conds": ["a"]}]}, "targets"),
    ],
    ids=["no-reference", "mnist-against-digits", "unknown-cond", "exact-metric", "with-targets"],
)
def test_bad_sweep_files_are_one_line_naming_the_field(change, field, trained, checkpoint, tmp_path):
    change = json.loads(json.dumps(change).replace('"CLF"', json.dumps(str(trained["classifier"]))))
    data = _sweep({"kind": "checkpoint", "path": str(checkpoint)}, trained)
    data.update(change)
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(ValueError, match=rf"^{field}: ") as err:
        load_sweep(_write(tmp_path, data))
    assert "\n" not in str(err.value), str(err.value)


def test_a_relabelled_model_is_refused_against_its_dataset_reference(trained, tmp_path):
    """The shipped 0-vs-rest model's label 1 means "not 0", not the digit 1: measuring it against the digits test
    split by label would be silently wrong, so the sweep file is refused naming reference.dataset."""
    data = _sweep({"kind": "shipped", "name": "digits-0-vs-rest"}, trained)
    data["reference"] = {"dataset": "digits"}
    with pytest.raises(ValueError, match=r"^reference.dataset: the model's classes \(0, not-0\)") as err:
        load_sweep(_write(tmp_path, data))
    assert "\n" not in str(err.value)


@pytest.fixture
def modules(monkeypatch, tmp_path):
    """Import user modules from tmp_path (the current folder), and forget them afterwards."""
    monkeypatch.chdir(tmp_path)
    names: list[str] = []
    yield names
    for name in names:
        sys.modules.pop(name, None)


def test_a_python_factory_gives_the_same_runs_as_its_checkpoint(trained, checkpoint, tmp_path, modules):
    modules.append("tiny_factory_ok")
    (tmp_path / "tiny_factory_ok.py").write_text(
        "from guidelab.models.zoo import load_image_denoiser\n\n\n"
        f"def build():\n    return load_image_denoiser({str(checkpoint)!r})\n"
    )
    one_scale = {"guiders": [{"name": "cfg", "params": {"scale": 3}}]}
    outs = {}
    for kind, model in (
        ("python", {"kind": "python", "factory": "tiny_factory_ok:build"}),
        ("checkpoint", {"kind": "checkpoint", "path": str(checkpoint)}),
    ):
        file = _write(tmp_path, _sweep(model, trained, **one_scale), f"{kind}.yaml")
        summary = run_sweep(load_sweep(file), tmp_path / kind)
        assert (summary.ran, summary.failed) == (1, 0)
        (row,) = ResultStore(tmp_path / kind / "results.sqlite").rows()
        assert row["status"] == "ok", row["error"]
        outs[kind] = (_samples(tmp_path / kind, row), row["metrics"])
    np.testing.assert_array_equal(outs["python"][0], outs["checkpoint"][0])
    assert outs["python"][1] == outs["checkpoint"][1]


def test_a_factory_returning_something_else_is_refused_naming_model_factory(trained, tmp_path, modules):
    modules.append("tiny_factory_bad")
    (tmp_path / "tiny_factory_bad.py").write_text("def build():\n    return object()\n")
    file = _write(tmp_path, _sweep({"kind": "python", "factory": "tiny_factory_bad:build"}, trained))
    with pytest.raises(ValueError, match=r"^model\.factory: ") as err:
        load_sweep(file)
    assert "\n" not in str(err.value)


def test_cli_sample_on_a_checkpoint_writes_samples_sidecar_and_sheet(checkpoint, tmp_path):
    out = tmp_path / "x.npy"
    main(["sample", "--model", str(checkpoint), "--cond", "3", "--n", "8", "--steps", "4", "--out", str(out)])
    x = np.load(out)
    assert x.shape == (8, 1, 8, 8) and np.isfinite(x).all()
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["config"]["cond_index"] == 3 and sidecar["config"]["path_config"] == {"name": "rf"}
    assert sidecar["nfe"] == 2 * 4  # cfg: a conditional and an unconditional pass per Euler step
    # the sheet: one row of 8 tiles with 1-pixel gutters, each pixel drawn 64 // 8 = 8 times
    sheet = np.asarray(Image.open(out.with_suffix(".png")))
    assert sheet.shape == (8 * 10, 8 * 73)
    small = sheet[::8, ::8]
    for i in range(8):
        tile = small[1:9, 1 + 9 * i : 9 + 9 * i]
        np.testing.assert_array_equal(tile, np.round((np.clip(x[i, 0], -1, 1) + 1) * 127.5).astype(np.uint8))


@pytest.mark.parametrize(
    ("extra", "field"),
    [(["--model", "CKPT", "--path", "vp-cosine"], "path"), (["--model", "nope"], "model")],
    ids=["path-of-another-model", "unknown-model"],
)
def test_cli_sample_errors_name_the_field(extra, field, checkpoint, tmp_path, capsys):
    out = tmp_path / "y.npy"
    argv = ["sample", *[str(checkpoint) if a == "CKPT" else a for a in extra], "--n", "8", "--steps", "4"]
    with pytest.raises(SystemExit) as info:
        main([*argv, "--out", str(out)])
    err = capsys.readouterr().err
    assert info.value.code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {field}: "), err
    assert not out.exists()


def test_new_weights_behind_the_same_factory_are_new_runs_and_separate_lines(trained, checkpoint, tmp_path, modules):
    from guidelab.models import trained as trained_models
    from guidelab.report.data import Catalog, load_runs

    modules.append("tiny_factory_moves")
    (tmp_path / "tiny_factory_moves.py").write_text(
        "from guidelab.models.zoo import load_image_denoiser\n\n\n"
        f"def build():\n    return load_image_denoiser({str(checkpoint)!r})\n"
    )
    file = _write(tmp_path, _sweep({"kind": "python", "factory": "tiny_factory_moves:build"}, trained))
    out = tmp_path / "out"
    run_sweep(load_sweep(file), out)
    # other weights behind the same function (a new process would see them; this one forgets its cache)
    blob = load_image_denoiser(checkpoint)
    with torch.no_grad():
        for p in blob.parameters():
            p.add_(0.01)
    save_image_model(blob, checkpoint, {"data": "digits"})
    trained_models._from_factory.cache_clear()
    trained_models._factory_digest.cache_clear()
    again = run_sweep(load_sweep(file), out)
    assert (again.skipped, again.ran) == (0, 2)  # not mistaken for the old runs
    rows = ResultStore(out / "results.sqlite").rows()
    digests = {r["config"]["model_digest"] for r in rows}
    assert (
        len(rows) == 4 and len(digests) == 2 and all(d.startswith("python:tiny_factory_moves:build:") for d in digests)
    )
    loaded = load_runs([out / "results.sqlite"])
    lines = {Catalog(loaded).line(r).name for r in loaded}
    assert len(lines) == 2 and all("model_digest=" in name for name in lines)  # two models, never averaged


def test_the_beyond_cfg_guiders_run_on_a_trained_model_with_their_nfe_and_report(trained, checkpoint, tmp_path):
    """FBG and Rectified-CFG++ (issue 'beyond CFG') on a trained image model, in a sweep and its report: every run
    measured, NFE as each method counts it (FBG: both passes every step; Rectified-CFG++: 3 evaluations per guided
    step, 1 on the last, unguided Euler step onto t = 0), FBG's effective γ its run's mean per-sample γ."""
    from guidelab.report import write_report

    guiders = [
        {"name": "fbg", "params": {"pi": 0.99}},
        {"name": "rectified-cfg++", "params": {"scale": [1.5, 3.0]}},
    ]
    file = _write(tmp_path, _sweep({"kind": "checkpoint", "path": str(checkpoint)}, trained, guiders=guiders,
                                   solvers=["euler"]))  # fmt: skip
    out = tmp_path / "out"
    summary = run_sweep(load_sweep(file), out)
    assert (summary.total, summary.ran, summary.failed) == (3, 3, 0)
    rows = ResultStore(out / "results.sqlite").rows()
    assert all(r["status"] == "ok" and np.isfinite(r["metrics"]["fd"]) for r in rows), [r["error"] for r in rows]
    by_guider = {(r["guider"], r["gamma"]): r for r in rows}
    fbg = next(r for (g, _), r in by_guider.items() if g == "fbg")
    assert fbg["nfe"] == 2 * 4 and 1 / 0.99 < fbg["gamma"] < 10
    rect = [r for (g, _), r in by_guider.items() if g == "rectified-cfg++"]
    assert sorted(r["gamma"] for r in rect) == [1.5, 3.0]
    assert {r["nfe"] for r in rect} == {3 * 3 + 1}
    a, b = (_samples(out, r) for r in rect)
    assert not np.array_equal(a, b)
    html = write_report(out).read_text()
    assert "fbg" in html and "rectified-cfg++" in html
