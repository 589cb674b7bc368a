"""The tune file: the search space's grids and distributions, the objective's directions, the metric keys the runs
write, and every mistake as one line naming its field, before anything runs."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import yaml

from guidelab.experiments.measures import MEASURE_KEYS, MEASURES, MeasureInput, reference_samples
from guidelab.metrics.images import IMAGE_METRIC_KEYS, IMAGE_METRICS, image_metrics
from guidelab.targets import get_target
from guidelab.tune.config import SearchParam, apply_values, check_tune

BASE = {
    "targets": [{"target": "multimodal-2d", "conds": ["a"]}],
    "grids": [{"kind": "uniform", "steps": 8}],
    "solvers": ["heun"],
    "n": 64,
    "guider": {"name": "cfg"},
    "search": {"scale": {"low": 1, "high": 4, "log": True}},
    "objective": {"metric": "energy_distance"},
}


@pytest.fixture
def one_thread():
    """Small tensors: one torch thread is much faster than two on a busy two-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tune(**changes):
    data = {**BASE, **changes}
    return check_tune({k: v for k, v in data.items() if v is not None})


def error_of(**changes) -> list[str]:
    with pytest.raises(ValueError, match=r"^[\w.\[\]]+: ") as info:
        tune(**changes)
    return str(info.value).splitlines()


# --- what the runs write -----------------------------------------------------------------------------------


def test_every_measure_writes_exactly_the_keys_the_tuner_expects(one_thread):
    target = get_target("multimodal-2d")
    x = target.reference_samples(200, 0, 5)
    inp = MeasureInput(x, target, 0, reference_samples(target, 0, 200), 0.0)
    assert set(MEASURE_KEYS) == set(MEASURES)
    for name, fn in MEASURES.items():
        assert set(fn(inp)) == set(MEASURE_KEYS[name]), name


def test_every_image_metric_writes_exactly_the_keys_the_tuner_expects(one_thread):
    from guidelab.data import load_dataset
    from guidelab.models.zoo import load_classifier, shipped_path

    data = load_dataset("digits", "test")
    images = data.images[data.labels == 3]
    classifier = load_classifier(shipped_path("digits-classifier"))
    assert set(IMAGE_METRIC_KEYS) == set(IMAGE_METRICS)
    for name in IMAGE_METRICS:
        got = image_metrics(images[:20], 3, images[20:], classifier, metrics=[name], count=1)
        assert set(got) == set(IMAGE_METRIC_KEYS[name]), name


# --- the search space --------------------------------------------------------------------------------------


def test_a_log_grid_is_geometric_with_exact_ends():
    p = SearchParam(low=0.02, high=50, log=True)
    grid = p.grid(7)
    assert grid[0] == 0.02 and grid[-1] == 50.0
    ratios = [b / a for a, b in itertools.pairwise(grid)]
    assert max(ratios) - min(ratios) < 1e-9
    assert p.nearest(0.19, 7) == min(grid, key=lambda v: abs(math.log(v / 0.19)))
    assert p.nearest(None, 7) == grid[3]


def test_grids_lie_in_their_optuna_distributions():
    for p in [
        SearchParam(low=0.02, high=50, log=True),
        SearchParam(low=0, high=1, step=0.15),
        SearchParam(low=1, high=9, integer=True),
        SearchParam(low=1, high=64, integer=True, log=True),
        SearchParam(choices=[0, 0.5, "x", None]),
    ]:
        dist = p.distribution()
        for value in p.grid(9):
            assert dist._contains(dist.to_internal_repr(value)), (p, value)
    assert SearchParam(low=0, high=1, step=0.15).grid(5)[-1] == pytest.approx(0.9)
    assert SearchParam(low=1, high=4, integer=True).grid(9) == [1, 2, 3, 4]


def test_searched_values_go_flat_or_into_the_schedule_block():
    assert apply_values({"eta": 0}, {"scale": 2.0}) == {"eta": 0, "scale": 2.0}
    assert apply_values({"schedule": "interval", "scale": 3, "eta": 0}, {"schedule.lam_lo": 0.5}) == {
        "schedule": {"name": "interval", "scale": 3, "lam_lo": 0.5},  # the flat schedule parameters join the block
        "eta": 0,
    }
    fixed = {"schedule": {"name": "interval", "scale": 3}}
    assert apply_values(fixed, {"schedule.lam_hi": 2.0})["schedule"] == {"name": "interval", "scale": 3, "lam_hi": 2.0}
    assert fixed == {"schedule": {"name": "interval", "scale": 3}}  # not changed in place


# --- the plan ----------------------------------------------------------------------------------------------


def test_a_valid_file_gives_its_methods_measures_and_the_reference_cfg():
    plan = tune(guider={"name": "apg", "params": {"eta": 0}}, objective={"metric": "class_accuracy"})
    assert [m.label for m in plan.methods] == ["apg", "cfg"] and plan.methods[1].reference
    assert plan.config.objective.dirs == ["maximize"]
    assert plan.sweep.metrics == ["class_fidelity"]  # the measure that writes class_accuracy, added
    assert plan.methods[0].setting({"scale": 2.0}) == {"name": "apg", "params": {"eta": 0, "scale": 2.0}}
    assert [m.label for m in tune().methods] == ["cfg"]  # plain CFG is its own reference
    pareto = tune(objective={"metrics": ["energy_distance", "class_fidelity"]}).config
    assert pareto.search_method == "nsga2" and pareto.objective.dirs == ["minimize", "maximize"]


def test_compare_takes_the_files_blocks_and_default_spaces():
    plan = check_tune(
        {**BASE, "compare": [{"name": "apg", "search": {"scale": {"low": 2, "high": 5}}}]}, ["apg", "adg"]
    )
    assert [m.label for m in plan.methods] == ["apg", "adg", "cfg"]
    assert plan.methods[0].search["scale"].high == 5
    assert plan.methods[1].search["scale"].log and plan.methods[1].search["scale"].high == 10


def test_the_interval_bounds_can_overlap():
    plan = tune(
        guider={"name": "cfg", "params": {"schedule": "interval", "scale": 3}},
        search={"lam_lo": {"low": 0.02, "high": 5, "log": True}, "lam_hi": {"low": 0.1, "high": 50, "log": True}},
        search_method="coordinate",
    )
    assert list(plan.primary.search) == ["lam_lo", "lam_hi"]


@pytest.mark.parametrize(
    ("changes", "line"),
    [
        ({"search": {"scale": {"low": 4, "high": 1}}}, "search.scale: low must be < high"),
        ({"search": {"scale": {"low": 0, "high": 1, "log": True}}}, "search.scale: log needs low > 0"),
        ({"search": {"scale": {"low": 1}}}, "search.scale: give low and high"),
        ({"search": {"scale": {"low": 1, "high": 2, "choices": [1]}}}, "search.scale: give choices or a range"),
        ({"search": {"scale": {"choices": [1, 1]}}}, "search.scale.choices: each value once"),
        ({"search": {"scael": {"low": 1, "high": 2}}}, "search.scael:"),
        ({"search": {"scale": {"low": 1, "high": 2, "logg": True}}}, "search.scale.logg:"),
        ({"guider": {"name": "cfg", "params": {"scale": 2}}}, "search.scale: also fixed"),
        ({"guider": {"name": "cfg++"}, "search": {"scale": {"low": 0.1, "high": 2}}}, "search.scale: the value 2"),
        ({"guider": {"name": "magic"}}, "guider: unknown name 'magic'; accepted: "),  # the guider's, not a value's
        ({"guider": {"name": "apgg"}}, "guider: unknown name 'apgg'; did you mean 'apg'?"),
        (
            {"guider": {"name": "cfg", "params": {"scael": 2}}},
            "guider: guider 'cfg': unknown parameter 'scael'; did you mean",
        ),
        ({"search": {}}, "search: give at least one"),
        ({"search": None}, "search: give the guider's search space"),
        ({"objective": {"metric": "fid"}}, "objective.metric: unknown metric 'fid'"),
        ({"objective": {"metric": "fid", "direction": "minimize"}}, "objective.metric: unknown metric 'fid'"),
        ({"objective": {"metric": "weak_mode_weight"}}, "objective.direction: 'weak_mode_weight' has no known"),
        ({"objective": {"metric": "energy_distance", "direction": "down"}}, "objective.direction:"),
        ({"objective": {"metrics": ["energy_distance"]}}, "objective.metrics: a Pareto front takes two"),
        ({"objective": {"metric": "w2", "metrics": ["w2", "nll"]}}, "objective.metric: give one metric"),
        (
            {"objective": {"metric": "w2", "constraints": [{"metric": "class_fidelity"}]}},
            "objective.constraints[0]: give exactly one of min and max",
        ),
        (
            {"objective": {"metric": "w2", "constraints": [{"metric": "acc", "min": 0.9}]}},
            "objective.constraints[0].metric: unknown metric 'acc'",
        ),
        (
            {"objective": {"metric": "w2", "constraints": [{"metric": "class_fidelity", "min": "base"}]}},
            "objective.constraints[0].min:",
        ),
        ({"heldout_seeds": [0]}, "heldout_seeds: [0] are also search seeds"),
        ({"seeds": [1, 1]}, "seeds: each seed ≥ 0 and given once"),
        ({"budget": {"trials": 0}}, "budget.trials:"),
        ({"search_method": "bayes"}, "search_method:"),
        (
            {"search_method": "coordinate", "objective": {"metrics": ["w2", "class_fidelity"]}},
            "search_method: coordinate search takes one objective",
        ),
        ({"grids": [{"kind": "uniform"}, {"kind": "edm"}]}, "grids: a tune scores each setting on one"),
        ({"targets": [{"target": "nope"}]}, "targets[0].target:"),
        ({"bogus": 1}, "bogus: unknown key; accepted: baseline, budget,"),
        ({"serach": {"scale": {"low": 1, "high": 2}}, "search": None}, "serach: unknown key; did you mean 'search'?"),
        ({"held_out_seeds": [5]}, "held_out_seeds: unknown key; did you mean 'heldout_seeds'?"),
        ({"guider": None, "search": None}, "guider: give the guider to tune"),
    ],
)
def test_each_mistake_is_one_line_naming_its_field(changes, line):
    lines = error_of(**changes)
    assert len(lines) == 1, lines
    assert lines[0].startswith(line), lines


def test_a_method_without_a_default_space_is_named():
    with pytest.raises(ValueError, match=r"^compare: 'learned' has no scale"):
        check_tune(BASE, ["cfg", "learned"])


def test_a_trained_models_metrics_are_the_image_ones():
    data = {k: v for k, v in BASE.items() if k != "targets"}
    plan = check_tune(
        {
            **data,
            "model": {"kind": "shipped", "name": "digits"},
            "reference": {"dataset": "digits", "conds": [3]},
            "objective": {"metric": "fd", "constraints": [{"metric": "accuracy", "min": 0.9}]},
        }
    )
    assert plan.kind == "trained" and plan.sweep.metrics == ["fd", "accuracy"]
    with pytest.raises(ValueError, match=r"^objective.metric: unknown metric 'energy_distance' of a trained model"):
        check_tune({**data, "model": {"kind": "shipped", "name": "digits"}, "reference": {"dataset": "digits"}})


def test_the_readme_example_is_a_tune_file(tmp_path):
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"## Tuning guidance\n.*?```yaml\n(.*?)```", text, re.S)
    assert block is not None
    plan = check_tune(yaml.safe_load(block.group(1)))
    assert plan.sweep.model.kind == "scaled-conditional" and plan.sweep.model.rho == 0.5
    assert torch.isfinite(torch.tensor(plan.config.budget.trials))
