"""An unknown name anywhere (a solver, guider, schedule, path, grid, target, class, metric, dtype, dataset, …) is
told as ``field: unknown … 'x'; did you mean 'y'? accepted: …`` where a name is close (difflib's ratio ≥ 0.6, case
aside), else with the accepted list alone: one helper (``guidelab.validation.did_you_mean``) behind every registry.
A misspelt key of a configuration file (a sweep, a target, a learning run) is told the same way, with the keys
accepted at its place in the file."""

from __future__ import annotations

import difflib
import re

import pytest

from guidelab.cli import main
from guidelab.validation import did_you_mean

SOLVERS = ("euler", "heun", "ddim", "euler-maruyama", "dpm++2m", "euler-ancestral", "dpm++2s-ancestral")


def test_the_suggestion_is_the_nearest_names_and_the_list_follows():
    assert did_you_mean("cgf", ["cfg", "apg", "adg"]) == "; did you mean 'cfg'? accepted: cfg, apg, adg"
    assert did_you_mean("Heun", SOLVERS).startswith("; did you mean 'heun'? accepted: euler, heun,")
    assert did_you_mean("rk99", SOLVERS) == f"; accepted: {', '.join(SOLVERS)}"  # nothing close: the list alone
    assert did_you_mean("x", []) == "; accepted: none"
    assert did_you_mean(3, [1, 2, 3.5]) == "; accepted: 1, 2, 3.5"  # names of any type, shown as text
    assert did_you_mean("z", ["a", "b", "a"]) == "; accepted: a, b"  # each name once
    grouped = did_you_mean("fdd", ["fd", "nll"], "nll (exact targets); fd (trained models)")
    assert grouped == "; did you mean 'fd'? accepted: nll (exact targets); fd (trained models)"
    two = did_you_mean("intervall", ["constant", "interval", "tv-interval", "wang"])
    assert two.startswith("; did you mean 'interval' or 'tv-interval'?")
    # the same choice as difflib's over the lower-cased names, at most two
    names = ["energy_distance", "class_fidelity", "mode_weights", "within_mode_variance", "support", "vendi"]
    for typo in ["energy_distanse", "suport", "Vendi", "modeweights", "fidelity"]:
        close = difflib.get_close_matches(typo.lower(), names, n=2, cutoff=0.6)
        expected = f"; did you mean {' or '.join(map(repr, close))}? " if close else "; "
        assert did_you_mean(typo, names) == f"{expected}accepted: {', '.join(names)}"


def _get_path(name, **params):
    from guidelab.paths import get_path

    get_path(name, **params)


def _guider(name, **params):
    from guidelab.guiders import build_guider

    build_guider(name, **params)


def _grid(kind):
    from guidelab.grids import make_grid
    from guidelab.paths import get_path

    make_grid(kind, 8, get_path("rf"))


def _target(name, **params):
    from guidelab.targets import get_target

    get_target(name, **params)


def _cond(name):
    from guidelab.targets import get_target

    get_target("multimodal-2d").class_index(name)


def _solver(name):
    import torch

    from guidelab import sampling
    from guidelab.grids import make_grid
    from guidelab.paths import get_path
    from guidelab.targets import get_target

    path = get_path("rf")
    sampling.sample(
        get_target("multimodal-2d").denoiser(path), None, grid=make_grid("uniform", 2, path), n=2, shape=(2,),
        solver=name, dtype=torch.float32,
    )  # fmt: skip


def _dataset(name):
    from guidelab.data import load_dataset

    load_dataset(name)


def _space(name):
    import torch

    from guidelab.paths import get_path, to_x0_eps

    path = get_path("rf")
    to_x0_eps(torch.zeros(1, 2), name, torch.zeros(1, 2), path.coefficients(torch.tensor([0.5])))


def _sweep_metric(name):
    from guidelab.experiments.config import SweepConfig

    SweepConfig.model_validate(
        {"targets": [{"target": "multimodal-2d"}], "guiders": [{"name": "cfg"}], "metrics": [name]}
    )


def _size(size):
    from guidelab.experiments.reproductions._common import config_for

    config_for("cfg-overshoot", size, {"ci": 1, "paper": 2})


CASES = [
    (lambda: _get_path("rff"), "path: unknown name 'rff'; did you mean 'rf'?"),
    (lambda: _get_path("VE"), "path: unknown name 'VE'; did you mean 've'?"),
    (lambda: _guider("cgf"), "guider: unknown name 'cgf'; did you mean 'cfg'?"),
    (lambda: _guider("cfg", scael=2.0), "guider 'cfg': unknown parameter 'scael'; did you mean 'scale'"),
    (lambda: _guider("cfg", schedule={"name": "intervall"}), "schedule: unknown name 'intervall'; did you mean"),
    (lambda: _grid("unifrom"), "grid: unknown kind 'unifrom'; did you mean 'uniform'?"),
    (lambda: _target("multimodal2d"), "target: no built-in target or file named 'multimodal2d'; did you mean"),
    (lambda: _cond("aa"), "cond: unknown class 'aa'; did you mean 'a'?"),
    (lambda: _solver("Heun"), "solver: unknown name 'Heun'; did you mean 'heun'?"),
    (lambda: _dataset("digit"), "data: unknown dataset 'digit'; did you mean 'digits'?"),
    (lambda: _space("velocty"), "space: unknown prediction space 'velocty'; did you mean 'velocity'?"),
    (lambda: _sweep_metric("energy_distanse"), "did you mean 'energy_distance'?"),
    (lambda: _sweep_metric("fdd"), "did you mean 'fd'?"),
    (lambda: _get_path("vp-linear", beta_mn=0.1), "path 'vp-linear': unknown parameter 'beta_mn'; did you mean"),
    (lambda: _target("gmm-highdim", dimm=8), "target 'gmm-highdim': unknown parameter 'dimm'; did you mean 'dim'?"),
    (lambda: _size("papr"), "size: unknown size 'papr' for reproduction 'cfg-overshoot'; did you mean 'paper'?"),
]


@pytest.mark.parametrize(("call", "message"), CASES, ids=[m.split(";")[0] for _, m in CASES])
def test_every_registry_suggests_the_nearest_name(call, message):
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        call()
    assert "accepted: " in str(err.value)


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["--solver", "Heun"], "error: solver: unknown solver 'Heun'; did you mean 'heun'? accepted: euler, heun,"),
        (["--guider", "cgf"], "error: guider: unknown name 'cgf'; did you mean 'cfg'? accepted: "),
        (["--grid", "unifrom"], "error: grid: unknown grid 'unifrom'; did you mean 'uniform'? accepted: "),
        (["--path", "rff"], "error: path: unknown path 'rff'; did you mean 'rf'? accepted: "),
    ],
)
def test_the_command_prints_the_suggestion_on_one_line(argv, line, tmp_path, capsys):
    with pytest.raises(SystemExit) as code:
        main(
            ["sample", "--target", "multimodal-2d", "--n", "4", "--steps", "2", "--out", str(tmp_path / "x.npy"), *argv]
        )
    assert code.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(line), err


SWEEP = {"targets": [{"target": "multimodal-2d"}], "guiders": [{"name": "cfg"}]}


@pytest.mark.parametrize(
    ("change", "line"),
    [
        ({"seed": [1]}, "seed: unknown key; did you mean 'seeds'? accepted: name, pipeline, targets, paths,"),
        ({"targets": [{"target": "multimodal-2d", "cond": ["a"]}]}, "targets[0].cond: unknown key; did you mean"),
        ({"guiders": [{"name": "cfg", "param": {"scale": 2}}]}, "guiders[0].param: unknown key; did you mean 'params'"),
        (
            {"grids": [{"kind": "uniform", "step": 3}]},
            "grids[0].step: unknown key; did you mean 'steps'? accepted: kind,",
        ),
        (
            {"models": {"weak": {"kind": "score-error", "delt": 0.3}}},
            "models.weak.delt: unknown key; did you mean 'delta'? accepted: kind, delta,",
        ),
        ({"xyzzy": 1}, "xyzzy: unknown key; accepted: name, pipeline, targets,"),  # nothing close: the list alone
        (
            {"models": {"weak": {"kind": "score_error"}}},
            "models.weak.kind: unknown value 'score_error'; did you mean 'score-error'? accepted: exact, score-error,",
        ),
    ],
)
def test_a_misspelt_sweep_key_is_told_with_the_keys_of_its_place(change, line):
    from pydantic import ValidationError

    from guidelab.experiments.config import SweepConfig
    from guidelab.validation import error_lines

    with pytest.raises(ValidationError) as err:
        SweepConfig.model_validate({**SWEEP, **change})
    assert any(got.startswith(line) for got in error_lines(err.value)), error_lines(err.value)


def test_misspelt_keys_of_a_target_file_and_a_learning_config_are_told_too():
    from pydantic import ValidationError

    from guidelab.learn import LearnConfig
    from guidelab.targets.registry import spec_from_dict
    from guidelab.validation import error_lines

    with pytest.raises(
        ValueError, match=r"^target spec: clases: unknown key; did you mean 'classes'\? accepted: kind,"
    ):
        spec_from_dict({"kind": "gaussian-mixture", "dim": 2, "clases": []})  # first, before "classes: missing"
    with pytest.raises(ValidationError) as err:
        LearnConfig.model_validate({"target": "multimodal-2d", "step": 3})
    assert error_lines(err.value) == [f"step: unknown key{did_you_mean('step', LearnConfig.model_fields)}"]


def test_a_key_whose_place_cannot_be_followed_keeps_pydantics_message():
    from pydantic import BaseModel, ConfigDict, ValidationError

    from guidelab.validation import error_lines

    class Outside(BaseModel):  # not a guidelab model: its fields are not looked up
        model_config = ConfigDict(extra="forbid")
        steps: int = 1

    with pytest.raises(ValidationError) as err:
        Outside.model_validate({"step": 2})
    assert error_lines(err.value) == ["step: Extra inputs are not permitted (got 2)"]


def test_the_command_tells_a_misspelt_sweep_key_on_one_line(tmp_path, capsys):
    sweep = tmp_path / "s.yaml"
    sweep.write_text("targets: [{target: multimodal-2d}]\nguiders: [{name: cfg}]\nseed: [1]\n")
    with pytest.raises(SystemExit) as code:
        main(["run", str(sweep), "--out", str(tmp_path / "o")])
    assert code.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: seed: unknown key; did you mean 'seeds'?"), err


@pytest.mark.parametrize(
    ("change", "lines"),
    [
        ({"targets": [{"taget": "multimodal-2d"}]}, ["targets[0].taget: unknown key; did you mean 'target'?"]),
        ({"guiders": [{"nmae": "cfg"}]}, ["guiders[0].nmae: unknown key; did you mean 'name'?"]),
        ({"guider": [{"name": "cfg"}], "guiders": None}, ["guider: unknown key; did you mean 'guiders'?"]),
    ],
)
def test_a_misspelt_required_key_is_one_line_not_also_missing(change, lines):
    """The required key a misspelt one stands for is not reported missing as well: one mistake, one line."""
    from pydantic import ValidationError

    from guidelab.experiments.config import SweepConfig
    from guidelab.validation import error_lines

    data = {k: v for k, v in {**SWEEP, **change}.items() if v is not None}
    with pytest.raises(ValidationError) as err:
        SweepConfig.model_validate(data)
    got = error_lines(err.value)
    assert len(got) == len(lines) and all(g.startswith(w) for g, w in zip(got, lines, strict=True)), got


def test_a_nested_message_is_told_at_its_place_without_its_own_field_again():
    from guidelab.validation import under

    assert under("targets[0].target", "target: no built-in target") == "targets[0].target: no built-in target"
    assert under("targets[0].conds", "cond: unknown class 'z'") == "targets[0].conds: unknown class 'z'"
    assert under("guiders[2]", ValueError("guider: unknown name 'x'")) == "guiders[2]: unknown name 'x'"
    assert under("paths[0]", "path: unknown name 'rff'") == "paths[0]: unknown name 'rff'"
    # another field's message keeps its field; a message with no field is kept whole
    assert under("grids[0]", "grid_params: the edm grid") == "grids[0]: grid_params: the edm grid"
    assert under("guiders[1]", "schedule 'interval': unknown") == "guiders[1]: schedule 'interval': unknown"


def test_one_mistake_in_the_shipped_sweep_example_is_one_line():
    """A misspelt target in examples/sweep.yaml, whose guide model needs that target, is one line: the guide model
    that cannot be built without it is not reported as missing from `models`."""
    from pathlib import Path

    import yaml

    from guidelab.experiments.config import check_sweep

    data = yaml.safe_load((Path(__file__).parents[1] / "examples" / "sweep.yaml").read_text())
    data["targets"][0]["target"] = "multimodal2d"
    with pytest.raises(ValueError) as err:  # noqa: PT011 - the message is checked line by line below
        check_sweep(data)
    lines = str(err.value).splitlines()
    assert len(lines) == 1 and lines[0].startswith("targets[0].target: no built-in target or file named"), lines
    assert "did you mean 'multimodal-2d'?" in lines[0]


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("targets: [{target: multimodal-2d}\nguiders: [{name: cfg}]\n", "(line 2, column 1)"),
        ("targets:\n  - target: multimodal-2d\n guiders: [{name: cfg}]\n", "(line 3, column 2)"),
    ],
)
def test_a_yaml_syntax_error_says_where(text, where, tmp_path, capsys):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(text)
    with pytest.raises(SystemExit) as code:
        main(["run", str(sweep), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code.value.code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: config: {sweep} is not valid YAML: ") and err[0].endswith(where), err
