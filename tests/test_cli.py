"""The command-line contract: files written, sidecar content, one-line errors with exit code 2."""

import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from guidelab.cli import app

runner = CliRunner()


def test_sample_writes_samples_and_sidecar(tmp_path):
    out = tmp_path / "s.npy"
    args = [
        "sample",
        "--target",
        "chidambaram-gauss-1d",
        "--cond",
        "pos",
        "--path",
        "vp-cosine",
        "--grid",
        "edm",
        "--steps",
        "12",
        "--solver",
        "heun",
        "--guider",
        "cfg",
        "--param",
        "scale=2.5",
        "--n",
        "64",
        "--seed",
        "3",
        "--out",
        str(out),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    x = np.load(out)
    assert x.shape == (64, 1)
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["nfe"] == 2 * (2 * 12 - 1)  # Heun: 23 evaluations, cond + uncond each
    assert sidecar["diverged"] == 0
    assert sidecar["wall_time_s"] > 0
    config = sidecar["config"]
    assert config["guider_config"]["schedule"] == {"name": "constant", "scale": 2.5}  # one nested block
    assert config["gamma"] == 2.5  # the effective scale, a named field
    assert config["cond_index"] == 0
    assert len(config["grid_times"]) == 13
    again = runner.invoke(app, [*args[:-1], str(tmp_path / "t.npy")])
    assert again.exit_code == 0
    np.testing.assert_array_equal(np.load(tmp_path / "t.npy"), x)  # same seed, same numbers


CFG_PP_OUT_OF_RANGE = ["--grid", "edm", "-p", "schedule=tv-cfg", "-p", "scale=0.8"]  # λ = 1.14 at the first step


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--target", "nope"], "target"),
        (["--target", "multimodal-2d", "--cond", "zebra"], "cond"),
        (["--target", "multimodal-2d", "--steps", "-2"], "steps"),
        (["--target", "multimodal-2d", "--n", "0"], "n"),
        (["--target", "multimodal-2d", "--path", "warp"], "path"),
        (["--target", "multimodal-2d", "--grid", "log"], "grid"),
        (["--target", "multimodal-2d", "--solver", "rk4"], "solver"),
        (["--target", "multimodal-2d", "--guider", "magic"], "guider"),
        (["--target", "multimodal-2d", "--param", "scael=2"], "guider 'cfg'"),
        (["--target", "multimodal-2d", "--param", "scale"], "--param"),
        (["--target", "multimodal-2d", "--t-max", "1.5"], "t_max"),
        (["--target", "multimodal-2d", "--solver", "heun", "--eta", "0.5"], "eta"),
        # CFG++'s λ leaves [0, 1] at the first step of the EDM grid: caught before sampling
        (["--target", "multimodal-2d", "--guider", "cfg++", *CFG_PP_OUT_OF_RANGE], "scale"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, args, field):
    result = subprocess.run(
        [sys.executable, "-m", "guidelab.cli", "sample", *args, "--out", str(tmp_path / "x.npy")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and field in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x.npy").exists()


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["sample", "--target", "multimodal-2d", "--steps", "abc"], "error: --steps: Input should be a valid integer"),
        (["sample", "--stesp", "3"], "error: --stesp: no such option; did you mean --steps"),
        (["methods", "--bogus"], "error: --bogus: no such option (see `guidelab methods --help`)"),
        (["sample", "--target", "multimodal-2d"], "error: --out: required (see `guidelab sample --help`)"),
        (["sample", "--target"], "error: --target: needs a value"),
        (["nosuchcommand"], "error: nosuchcommand: no such command (see `guidelab --help`)"),
        (["sample", "--target", "multimodal-2d", "--solver", "rk4", "--out", "x.npy"], "error: solver: unknown solver"),
    ],
)
def test_usage_mistakes_name_the_option_in_one_line(args, line, tmp_path, monkeypatch):
    """click's usage errors read as the library's own: ``error: option: message`` (plus where to look), one line,
    exit 2; a message that quotes the bad value does not repeat it."""
    monkeypatch.chdir(tmp_path)
    result = subprocess.run([sys.executable, "-m", "guidelab.cli", *args], capture_output=True, text=True)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(line), result.stderr
    assert result.stderr.count("rk4") <= 1


def test_bad_target_file_names_the_field(tmp_path):
    bad = tmp_path / "t.yaml"
    bad.write_text(
        "kind: gaussian-mixture\ndim: 2\nclasses:\n  - name: a\n    components:\n"
        "      - {weight: 1, mean: [0, 0], cov: [[1, 2], [2, 1]]}\n"
    )
    result = runner.invoke(app, ["sample", "--target", str(bad), "--out", str(tmp_path / "x.npy")])
    assert result.exit_code == 2
    assert "cov" in result.output
    assert "positive definite" in result.output


def test_targets_lists_builtins():
    result = runner.invoke(app, ["targets"])
    assert result.exit_code == 0
    for name in (
        "chidambaram-uniform-1d",
        "chidambaram-uniform-2d",
        "chidambaram-gauss-1d",
        "multimodal-2d",
        "gmm-highdim",
    ):
        assert name in result.output


def test_methods_lists_every_registered_guider_with_its_source():
    from guidelab.guiders import GUIDERS

    result = runner.invoke(app, ["methods", "--json"])
    assert result.exit_code == 0
    rows = json.loads(result.output)
    assert {r["name"] for r in rows} == set(GUIDERS)
    assert all(r["source"] and r["space"] for r in rows)


def test_schedule_prints_interval_steps_with_one_pass_outside(tmp_path):
    result = runner.invoke(
        app,
        [
            "schedule",
            "--guider",
            "cfg",
            "--param",
            "schedule=interval",
            "--param",
            "scale=2",
            "--param",
            "lam_lo=0.19",
            "--param",
            "lam_hi=1.61",
            "--path",
            "rf",
            "--steps",
            "8",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert len(rows) == 8
    for row in rows:
        inside = 0.19 < row["lam"] <= 1.61
        assert row["passes"] == ("cond+uncond" if inside else "cond")
        assert row["gamma"] == (2.0 if inside else 1.0)


def test_train_then_learn_then_print_the_learned_schedule(tmp_path):
    model = tmp_path / "mlp.pt"
    assert (
        runner.invoke(app, ["train", "--target", "multimodal-2d", "--out", str(model), "--steps", "20"]).exit_code == 0
    )
    learned = runner.invoke(
        app,
        [
            "learn",
            "--denoiser",
            "mlp",
            "--model",
            str(model),
            "--out",
            str(tmp_path / "w"),
            "--steps",
            "20",
            "--set",
            "eval_every=10",
        ],
    )
    assert learned.exit_code == 0, learned.output
    assert (tmp_path / "w" / "weights.pt").exists()
    table = runner.invoke(
        app,
        [
            "schedule",
            "--guider",
            "learned",
            "--param",
            f"checkpoint={tmp_path / 'w'}",
            "--steps",
            "5",
            "--plot",
            str(tmp_path / "omega.png"),
        ],
    )
    assert table.exit_code == 0, table.output
    header = table.output.splitlines()[0].split(",")
    assert "omega[a]" in header and "omega[b]" in header
    assert (tmp_path / "omega.png").stat().st_size > 1000


@pytest.mark.parametrize(
    ("argv", "shown"), [(["--help"], "Usage"), (["run", "--help"], "Usage"), (["reproduce", "list"], "arXiv")]
)
def test_help_answers_without_importing_torch(argv, shown):
    """The light paths answer at once (importing torch takes ~1 s): help, and the list of reproductions."""
    code = (
        f"import sys, runpy\nsys.argv = ['guidelab', *{argv!r}]\n"
        "try:\n    runpy.run_module('guidelab.cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        f"assert 'torch' not in sys.modules, 'guidelab {' '.join(argv)} imported torch'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert shown in result.stdout


def test_learn_help_lists_every_learn_config_field_and_reproduce_list_describes_each():
    from guidelab.cli import _LEARN_FIELDS
    from guidelab.experiments.reproductions import REPRODUCTIONS
    from guidelab.learn import LearnConfig

    assert [f.strip() for f in _LEARN_FIELDS.split(",")] == list(LearnConfig.model_fields)
    result = runner.invoke(app, ["reproduce", "list"])
    assert result.exit_code == 0
    lines = result.output.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(REPRODUCTIONS)
    assert all("arXiv" in line and len(line.split()) > 4 for line in lines)


def test_run_says_on_stderr_when_runs_have_diverged_samples(tmp_path):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(
        "targets: [{target: multimodal-2d, conds: [a]}]\ngrids: [{kind: uniform, steps: 4}]\n"
        "guiders: [{name: cfg, params: {scale: [1.0, 1.0e9]}}]\nn: 16\nmetrics: [energy_distance]\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "guidelab.cli", "run", str(sweep), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert lines == [lines[0]] and lines[0].startswith("warning: 1 of the 2 runs has diverged samples")


@pytest.mark.parametrize("code", [0, 2])
def test_the_console_script_freezes_the_heap_before_exit(monkeypatch, code):
    """``guidelab`` (the console script) ends like :func:`main`, with its exit code, after ``gc.freeze()``, so the
    interpreter's last collection skips torch's import; ``main`` itself, which tests call, freezes nothing."""
    import gc

    import guidelab.cli as cli

    calls = []
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    monkeypatch.setattr(cli, "main", lambda: calls.append("main") or sys.exit(code))
    with pytest.raises(SystemExit) as exit_info:
        cli.script()
    assert exit_info.value.code == code
    assert calls == ["main", "freeze"]


def test_a_closed_pipe_ends_the_output_quietly():
    """``guidelab methods | head -1``: the reader goes away; the command ends with 0 and says nothing, as cat does
    (a closed pipe is not bad input)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "guidelab.cli", "methods"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.readline()
    proc.stdout.close()  # the reader leaves after one line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, err
    assert err == ""


def test_learn_takes_the_config_files_values_unless_an_option_is_given(tmp_path, monkeypatch):
    """Precedence: --set, then the options given on the command line, then the file, then LearnConfig's defaults
    (an option left out no longer overwrites the file's value with its own default)."""
    import guidelab.learn

    seen = []

    def capture(config, progress=False):
        seen.append(config)
        raise SystemExit(0)

    monkeypatch.setattr(guidelab.learn, "learn", capture)
    file = tmp_path / "learn.yaml"
    file.write_text("target: multimodal-2d\npath: ou\nsteps: 1\nseed: 3\ndenoiser: score-error\nresume: false\n")
    base = ["learn", "--out", str(tmp_path / "o"), "--config", str(file)]
    for argv in (base, [*base, "--steps", "5", "--path", "vp-cosine"], [*base, "--steps", "5", "--set", "steps=7"]):
        runner.invoke(app, argv)
    runner.invoke(app, ["learn", "--out", str(tmp_path / "o"), "--target", "multimodal-2d"])
    got = [(c.path, c.steps, c.seed, c.denoiser, c.resume) for c in seen]
    assert got == [
        ("ou", 1, 3, "score-error", False),
        ("vp-cosine", 5, 3, "score-error", False),
        ("ou", 7, 3, "score-error", False),
        ("rf", 1000, 0, "exact", True),  # no file: LearnConfig's defaults, which the help states
    ]
