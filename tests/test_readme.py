"""Every snippet of the README runs as written, so the documentation cannot drift from the API.

- every ```python block runs, in order, in one namespace (the README reads top to bottom);
- every ```yaml block loads: a target definition through ``load_target_file``, a sweep through ``load_sweep``, a
  tune through ``load_tune`` (told apart by their keys; a sweep on a pipeline against a tiny one saved where it
  names its folder);
- every shell command in a ```bash or ``` block that starts with ``guidelab`` (or ``.venv/bin/guidelab``) names
  only options its subcommand has (read from ``--help``); the cheap ones that run as written (no placeholder such
  as ``NAME|FILE``) run, with sizes capped small; the heavy ones (demo, run, train, learn, a paper-size
  reproduction, tune) are only checked against their ``--help``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TEXT = README.read_text()

HEAVY = {"demo", "run", "train", "learn", "tune"}
CAPS = {"--n": 200, "--steps": 16}  # cheap commands run with at most these sizes


def _blocks(*langs: str) -> list[tuple[int, str]]:
    """(line number, body) of every fenced block whose info string is one of ``langs`` ("" = no language)."""
    out = []
    for m in re.finditer(r"^```([\w+-]*)[^\n]*\n(.*?)^```", TEXT, re.S | re.M):
        if m.group(1) in langs:
            out.append((TEXT.count("\n", 0, m.start()) + 1, m.group(2)))
    return out


# --- python -------------------------------------------------------------------------------------------------


@pytest.fixture
def in_a_folder_with_a_pipeline(tmp_path, monkeypatch):
    """The README's pipeline examples read ``my-sd-pipeline`` and ``my-sd3-pipeline``: tiny random pipelines, saved."""
    from tiny_diffusers import make_sd, make_sd3

    make_sd(scheduler="dpm").save_pretrained(tmp_path / "my-sd-pipeline")
    make_sd3().save_pretrained(tmp_path / "my-sd3-pipeline")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_every_python_block_runs_in_order(in_a_folder_with_a_pipeline):
    from guidelab.guiders import GUIDERS

    blocks = _blocks("python")
    assert len(blocks) >= 2, "the README lost its Python examples"
    before = set(GUIDERS)
    namespace: dict = {}
    try:
        for line, body in blocks:
            try:
                exec(compile(body, f"README.md:{line}", "exec"), namespace)
            except Exception as err:  # pragma: no cover - the message is the point
                pytest.fail(f"README.md line {line}: python block fails: {type(err).__name__}: {err}")
    finally:
        for name in set(GUIDERS) - before:
            GUIDERS.pop(name)


def test_python_example_runs_and_guides():
    block = re.search(r"## Python in ten lines\n\n```python\n(.*?)```", TEXT, re.S)
    assert block is not None, "the README lost its Python example"
    namespace: dict = {}
    exec(compile(block.group(1), "README.md", "exec"), namespace)
    out = namespace["out"]
    assert out.x.shape == (4000, 2)
    assert out.nfe == 2 * (2 * 64 - 1)  # Heun, cond + uncond in every evaluation
    assert out.num_diverged == 0
    assert torch.isfinite(out.x).all()
    # the printed mean the README quotes, pushed away from class 0's own mean (−0.875, 0.375) by CFG at γ = 3
    said = re.search(r"about `tensor\(\[([-\d.]+), ([-\d.]+)\]\)`", TEXT)
    assert said is not None, "the README no longer quotes the example's printed mean"
    quoted = torch.tensor([float(said.group(1)), float(said.group(2))])
    assert torch.allclose(out.x.mean(0).double(), quoted.double(), atol=0.01)
    assert float((out.x.mean(0).double() - namespace["target"].mean(0)).norm()) > 0.5


def test_the_own_guider_example_registers_builds_and_samples():
    from guidelab.grids import make_grid
    from guidelab.guiders import GUIDERS, build_guider
    from guidelab.paths import get_path
    from guidelab.sampling import sample
    from guidelab.targets import get_target

    block = re.search(r"### Your own guider\n.*?```python\n(.*?)```", TEXT, re.S)
    assert block is not None, "the README lost its guider example"
    try:
        exec(compile(block.group(1), "README.md", "exec"), {})
        guider = build_guider("halfway-cfg", schedule="tv-cfg", scale=3.0)
        target, path = get_target("multimodal-2d"), get_path("ve")
        grid = make_grid("edm", 12, path)
        for solver in ("heun", "dpm++2m", "euler-ancestral"):
            out = sample(target.denoiser(path), guider, grid=grid, n=64, shape=(2,), cond=0, solver=solver)
            assert torch.isfinite(out.x).all() and out.num_diverged == 0
        assert build_guider(**guider.config()).config() == guider.config()
    finally:
        GUIDERS.pop("halfway-cfg", None)


# --- yaml ---------------------------------------------------------------------------------------------------

YAML_BLOCKS = _blocks("yaml", "yml")


def test_the_readme_has_a_target_and_a_sweep_example():
    kinds = [_yaml_kind(yaml.safe_load(body)) for _, body in YAML_BLOCKS]
    assert "target" in kinds and "sweep" in kinds


def test_the_shipped_sweep_example_is_the_readmes():
    """``examples/sweep.yaml`` is the README's sweep example, byte for byte, and it loads as a sweep."""
    from guidelab.experiments.config import load_sweep

    shipped = (ROOT / "examples" / "sweep.yaml").read_text()
    assert shipped in [body for _, body in YAML_BLOCKS]
    assert load_sweep(ROOT / "examples" / "sweep.yaml").runs()


def _yaml_kind(data: object) -> str:
    if isinstance(data, dict) and "objective" in data and ("search" in data or "compare" in data):
        return "tune"
    if isinstance(data, dict) and "guiders" in data and ({"targets", "pipeline", "reference"} & set(data)):
        return "sweep"
    if isinstance(data, dict) and "classes" in data and "kind" in data:
        return "target"
    raise AssertionError(f"a README yaml block is neither a sweep nor a target definition: {data!r:.200}")


@pytest.mark.parametrize(("line", "body"), YAML_BLOCKS, ids=[f"line{line}" for line, _ in YAML_BLOCKS])
def test_every_yaml_block_loads(line, body, tmp_path, monkeypatch):
    from guidelab.experiments.config import load_sweep
    from guidelab.targets import load_target_file

    data = yaml.safe_load(body)
    kind = _yaml_kind(data)
    if kind == "sweep" and "pipeline" in data:  # a sweep on a pipeline: save a tiny one where the file names it
        from tiny_diffusers import make_dit, make_sd

        folder = Path(data["pipeline"]["folder"])
        assert not folder.is_absolute(), f"README.md line {line}: name the pipeline folder relatively"
        (make_dit() if "class_labels" in data["pipeline"] else make_sd()).save_pretrained(tmp_path / folder)
        monkeypatch.chdir(tmp_path)
    file = tmp_path / f"readme-{line}.yaml"
    file.write_text(body)
    try:
        if kind == "tune":
            from guidelab.tune import load_tune

            plan = load_tune(file)
            assert plan.methods and plan.config.budget.trials >= 1
        elif kind == "target":
            target = load_target_file(file)
            assert target.dim == data["dim"]
            x = target.sample(16, cond=0, generator=torch.Generator().manual_seed(0))
            assert x.shape == (16, data["dim"]) and torch.isfinite(x).all()
        else:
            sweep = load_sweep(file)
            assert len(sweep.runs()) > 0
    except ValueError as err:
        pytest.fail(f"README.md line {line}: {kind} yaml does not load: {err}")


# --- shell commands -----------------------------------------------------------------------------------------


def _commands() -> list[tuple[int, list[str]]]:
    """(line, argv after ``guidelab``) of every guidelab command in the README's bash and plain blocks."""
    out = []
    for line, body in _blocks("bash", "sh", "shell", ""):
        joined = re.sub(r"\\\n\s*", " ", body)
        for text in joined.splitlines():
            text = re.sub(r"\s#.*$", "", text).strip()
            for part in re.split(r"\s+&&\s+|\s+/\s+(?=(?:\.venv/bin/)?guidelab\b)", text):
                tokens = shlex.split(part)
                if tokens and tokens[0] in ("guidelab", ".venv/bin/guidelab"):
                    out.append((line, tokens[1:]))
    return out


COMMANDS = _commands()


def _is_placeholder(token: str) -> bool:
    return bool(re.search(r"[A-Z]{2,}|\||\.\.\.", token) or re.fullmatch(r"[A-Z]", token))


def _split_optional(tokens: list[str]) -> tuple[list[str], list[list[str]]]:
    """The tokens outside ``[...]`` groups, and each group's tokens."""
    required, groups, current = [], [], None
    for tok in tokens:
        if tok.startswith("[") and current is None:
            current = []
            tok = tok[1:]
        target = required if current is None else current
        closing = current is not None and tok.endswith("]")
        tok = tok[:-1] if closing else tok
        if tok:
            target.append(tok)
        if closing:
            groups.append(current)
            current = None
    return required, groups


def _cli(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "TERM": "dumb", "NO_COLOR": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "guidelab.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


_HELP: dict[str, set[str]] = {}


def _options(sub: str, cwd: Path) -> set[str]:
    if sub not in _HELP:
        res = _cli([sub, "--help"], cwd)
        assert res.returncode == 0, f"guidelab {sub} --help failed: {res.stderr}"
        _HELP[sub] = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*|-[a-zA-Z])\b", res.stdout))
    return _HELP[sub]


def _capped(args: list[str]) -> list[str]:
    out = list(args)
    for i, tok in enumerate(out[:-1]):
        if tok in CAPS and out[i + 1].isdigit():
            out[i + 1] = str(min(int(out[i + 1]), CAPS[tok]))
    return out


def test_the_readme_has_runnable_commands():
    runnable = [args for _, args in COMMANDS if _runnable(args)]
    assert any(a[0] == "sample" for a in runnable), "the README should show one runnable `guidelab sample`"
    assert {"demo", "sample", "methods", "schedule", "run", "report", "reproduce"} <= {a[0] for _, a in COMMANDS}


def _runnable(args: list[str]) -> bool:
    required, _ = _split_optional(args)
    if not required or required[0] in HEAVY or (required[0] == "reproduce" and "paper" in required):
        return False
    return not any(_is_placeholder(t) for t in required)


@pytest.mark.parametrize(
    ("line", "args"),
    COMMANDS,
    ids=[f"line{line}-{a[0] if a else 'none'}-{k}" for k, (line, a) in enumerate(COMMANDS)],
)
def test_every_guidelab_command_has_its_options_and_the_cheap_ones_run(line, args, tmp_path):
    assert args, f"README.md line {line}: a bare `guidelab`"
    sub = args[0]
    required, groups = _split_optional(args)
    known = _options(sub, tmp_path)
    named = {t.split("=", 1)[0] for t in required + [g for group in groups for g in group] if t.startswith("-")}
    missing = named - known
    assert not missing, f"README.md line {line}: `guidelab {sub}` has no option {sorted(missing)}"
    if not _runnable(args):
        return
    variants = [required] + [required + g for g in groups if not any(_is_placeholder(t) for t in g)]
    if sub == "generate":  # the README's pipeline folder: a tiny random Stable Diffusion pipeline
        from tiny_diffusers import make_sd

        make_sd(scheduler="dpm").save_pretrained(tmp_path / "my-sd-pipeline")
    for argv in variants:
        argv = _capped(argv)
        res = _cli(argv, tmp_path)
        assert res.returncode == 0, f"README.md line {line}: `guidelab {shlex.join(argv)}` failed:\n{res.stderr}"
        if sub == "sample":
            out = Path(tmp_path, argv[argv.index("--out") + 1])
            sidecar = json.loads(out.with_suffix(".json").read_text())
            assert out.exists() and sidecar["diverged"] == 0
        if sub == "generate":
            out = Path(tmp_path, argv[argv.index("--out") + 1])
            assert (out / "grid.png").exists() and json.loads((out / "generate.json").read_text())["nfe"] > 0
