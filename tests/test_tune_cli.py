"""``guidelab tune`` and ``--guider-file`` on the command line: every bad input is one ``error: field: message``
line and exit 2, before any output folder is made."""

from __future__ import annotations

import sys

import pytest
import yaml

from guidelab.cli import main

GOOD = {
    "targets": [{"target": "multimodal-2d", "conds": ["a"]}],
    "grids": [{"kind": "uniform", "steps": 4}],
    "n": 16,
    "guider": {"name": "cfg"},
    "search": {"scale": {"low": 1, "high": 4, "log": True}},
    "objective": {"metric": "energy_distance"},
    "budget": {"trials": 2},
}


@pytest.fixture
def files(tmp_path):
    def tune_file(name, **changes):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**GOOD, **changes}))
        return str(path)

    best = tmp_path / "best.yaml"
    best.write_text("name: cfg\nparams: {scale: 2.0}\n")
    return {
        "root": tmp_path,
        "good": tune_file("good"),
        "bad_space": tune_file("bad_space", search={"scale": {"low": 4, "high": 1}}),
        "bad_metric": tune_file("bad_metric", objective={"metric": "fid"}),
        "bad_param": tune_file("bad_param", search={"scael": {"low": 1, "high": 2}}),
        "best": str(best),
        "bad_best": str(_write(tmp_path / "bad_best.yaml", "name: cfg\nparams: {scael: 2}\n")),
        "extra_best": str(_write(tmp_path / "extra_best.yaml", "name: cfg\nparamz: {}\n")),
    }


def _write(path, text):
    path.write_text(text)
    return path


CASES = [
    (["tune", "{bad_space}", "--out", "{root}/o"], "error: search.scale: low must be < high"),
    (["tune", "{bad_metric}", "--out", "{root}/o"], "error: objective.metric: unknown metric 'fid'"),
    (["tune", "{bad_param}", "--out", "{root}/o"], "error: search.scael: the value 1 does not build"),
    (["tune", "{root}/none.yaml", "--out", "{root}/o"], "error: config: no such file"),
    (["tune", "{good}", "--out", "{root}/o", "--compare", "cfg,magic"], "error: compare:"),
    (["tune", "{good}", "--out", "{root}/o", "--compare", "cfg,cfg"], "error: compare: give distinct"),
    (["tune", "{good}", "--out", "{root}/o", "--executor", "dask"], "error: executor: unknown 'dask'"),
    (["tune", "{good}", "--out", "{root}/o", "--address", "x:1"], "error: address: only the ray executor"),
    (["tune", "{good}", "--out", "{root}/o", "--threads", "0"], "error: threads:"),
    (["tune", "{good}"], "error: --out: required"),
    (["tune", "{good}", "--out", "{best}"], "error: out:"),
    (
        ["sample", "--target", "multimodal-2d", "--guider-file", "{best}", "--guider", "apg", "--out", "{root}/x.npy"],
        "error: guider_file: give --guider-file or --guider, not both",
    ),
    (
        ["sample", "--target", "multimodal-2d", "--guider-file", "{best}", "-p", "scale=2", "--out", "{root}/x.npy"],
        "error: guider_file: give --guider-file or --param, not both",
    ),
    (
        ["sample", "--target", "multimodal-2d", "--guider-file", "{root}/no.yaml", "--out", "{root}/x.npy"],
        "error: guider_file: no such file",
    ),
    (
        ["sample", "--target", "multimodal-2d", "--guider-file", "{bad_best}", "--out", "{root}/x.npy"],
        "error: guider_file: guider 'cfg': unknown parameter 'scael'",
    ),
    (
        ["sample", "--target", "multimodal-2d", "--guider-file", "{extra_best}", "--out", "{root}/x.npy"],
        "error: guider_file.paramz: unknown key",
    ),
    (
        ["generate", "--pipeline", "{root}", "--guider-file", "{best}", "--guider", "apg", "--out", "{root}/g"],
        "error: guider_file: give --guider-file or --guider, not both",
    ),
    (["run", "{good}", "--out", "{root}/r", "--guider-file", "{bad_best}"], "error: guider_file:"),
]


@pytest.mark.parametrize(("argv", "line"), CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_input_is_one_line_and_exit_2(argv, line, files, capsys):
    argv = [a.format(**files) for a in argv]
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("error: ")]
    assert info.value.code == 2, err
    assert len(lines) == 1 and lines[0].startswith(line.format(**files)), err
    assert "Traceback" not in err
    for folder in ("o", "g", "r"):
        assert not (files["root"] / folder).exists()  # nothing half-written


def test_a_missing_optuna_is_one_clear_line(files, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` raises ImportError
    with pytest.raises(SystemExit) as info:
        main(["tune", files["good"], "--out", str(files["root"] / "o")])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and err == "error: tune: needs optuna (pip install 'guidelab[tune]')"
    assert not (files["root"] / "o").exists()


def test_tune_help_names_its_options(capsys):
    main(["tune", "--help"])
    text = capsys.readouterr().out
    for option in ("--out", "--compare", "--executor", "--address", "--threads", "--no-report"):
        assert option in text
