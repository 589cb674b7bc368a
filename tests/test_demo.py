"""The demo: its sweeps load, its headline picks per method the closest setting that is as faithful as the data, and
with the demo's imperfect model the unguided sampler does not win the first table."""

from __future__ import annotations

import itertools
from importlib import resources

import numpy as np
import pandas as pd
import pytest
import yaml
from rich.console import Console

from guidelab import demo
from guidelab.experiments.config import load_sweep
from guidelab.experiments.runner import run_sweep


@pytest.mark.parametrize("name", demo.DEMO_SWEEPS.values())
def test_the_demo_sweeps_load(name):
    with resources.as_file(resources.files("guidelab.experiments") / name) as file:
        config = load_sweep(file)
    assert config.runs()


def test_reaching_picks_each_methods_closest_setting_above_the_bar():
    rng = np.random.default_rng(0)
    points = pd.DataFrame(
        [
            {"label": label, "gamma": gamma, "fid": rng.uniform(0.5, 1), "dist": rng.uniform(0, 1)}
            for label, gamma in itertools.product("abcdef", (1.0, 2.0, 3.0, 4.0))
        ]
    )
    best, missed = demo._reaching(points, "fid", "dist", 0.8)
    expected = {}
    for label, group in points.groupby("label"):  # brute force
        above = [(r.dist, r.gamma) for r in group.itertuples() if r.fid >= 0.8]
        if above:
            expected[label] = min(above)
    assert {r.label: (r.dist, r.gamma) for r in best.itertuples()} == expected
    assert list(best["dist"]) == sorted(best["dist"])  # closest first
    assert {m.split(" ")[0] for m in missed} == set("abcdef") - set(expected)


def test_with_the_imperfect_model_no_guidance_does_not_win_the_first_table(tmp_path):
    with resources.as_file(resources.files("guidelab.experiments") / demo.DEMO_SWEEPS["targets"]) as file:
        data = yaml.safe_load(file.read_text())
    data.update(n=400, targets=[{"target": "multimodal-2d", "conds": ["a"]}], grids=[{"kind": "uniform", "steps": 16}])
    data["guiders"] = [g for g in data["guiders"] if g["name"] in ("cfg", "apg") and "label" not in g]
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
    run_sweep(load_sweep(tmp_path / "s.yaml"), tmp_path / "targets")
    console = Console(record=True, width=200)
    demo.print_headline(console, tmp_path / "targets")
    text = console.export_text()
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in text.splitlines() if line.startswith("│")]
    assert rows, text
    assert ["cfg", "1"] not in [row[:2] for row in rows]  # unguided, the leaky model misses the class
    assert "as faithful as the data" in text
    assert "cfg" in {row[0] for row in rows}  # but guided CFG gets there


def test_the_headline_tables_go_whole_to_stdout(monkeypatch):
    """Piped or redirected, the tables are printed to stdout at full width (a long method name on one line); in a
    narrow terminal the name wraps but is never cut."""
    import io

    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    console = demo.result_console()
    assert console.file is out and console.width == demo.RESULT_WIDTH
    name = "cfg + interval-guidance (t in [0.2, 0.8]) + tv-cfg schedule, scale 3"
    row = [[name, "3", "0.0123", "0.981"]]
    title = "the best setting of every method that reaches the data's fidelity (class fidelity ≥ 0.990), by distance"
    missed = [f"method-{i} (best 0.751 at γ 6)" for i in range(12)]
    demo._table(console, title, ("method", "γ", "distance", "fidelity"), row, missed)
    text = out.getvalue()
    assert name in text and title + "\n" in text  # the title on one line, not wrapped at the table's width
    assert "; ".join(missed) in text  # nor the line of methods that miss it, at any width
    narrow = Console(record=True, width=60)
    demo._table(narrow, "title", ("method", "γ", "distance", "fidelity"), row, [])
    text = narrow.export_text()
    assert "…" not in text and all(word in text for word in name.split()) and "0.981" in text
