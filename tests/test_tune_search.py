"""The tuner's choices, on synthetic objectives with known answers: the coordinate search, the best feasible trial,
the Pareto front, and suggestions that depend only on (seed, trial number, finished trials)."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from guidelab.tune.config import Constraint, Objective, SearchParam
from guidelab.tune.objective import (
    TrialRecord,
    best_trial,
    compromise,
    dominates,
    pareto_front,
    score_setting,
)
from guidelab.tune.search import coordinate_next, propose

# --- coordinate search ---------------------------------------------------------------------------------------

SPACE = {"lam_lo": SearchParam(low=0.02, high=5, log=True), "lam_hi": SearchParam(low=0.1, high=50, log=True)}


def bowl(p: dict) -> float:
    """A coupled bowl in log λ with its minimum at (0.3, 2.0)."""
    a, b = math.log(p["lam_lo"] / 0.3), math.log(p["lam_hi"] / 2.0)
    return a * a + b * b + 0.5 * a * b


def run_coordinate(space, points, start, f, valid=lambda p: True, constraint=None, limit=500):
    trials: list[TrialRecord] = []
    while len(trials) < limit:
        p = coordinate_next(space, points, start, trials, ["minimize"], valid)
        if p is None:
            return trials, True
        assert all(json_key(t.params) != json_key(p) for t in trials), "a point was proposed twice"
        cons = [] if constraint is None else [constraint(p)]
        trials.append(TrialRecord(len(trials), "COMPLETE", p, [f(p)], cons))
    return trials, False


def json_key(p):
    return tuple(sorted(p.items()))


@pytest.mark.parametrize("points", [9, 13])
def test_coordinate_search_converges_to_the_grid_optimum_of_a_coupled_bowl(points):
    grids = {k: p.grid(points) for k, p in SPACE.items()}
    everything = [dict(zip(SPACE, v, strict=True)) for v in itertools.product(*grids.values())]
    valid = lambda p: p["lam_hi"] > p["lam_lo"]  # noqa: E731
    best_on_grid = min((p for p in everything if valid(p)), key=bowl)
    start = {k: SPACE[k].nearest(v, points) for k, v in {"lam_lo": 0.02, "lam_hi": 50}.items()}  # a far corner
    trials, converged = run_coordinate(SPACE, points, start, bowl, valid)
    assert converged
    best = min(trials, key=lambda t: t.values[0])
    assert best.params == best_on_grid
    assert all(valid(t.params) for t in trials)  # invalid points (λ_hi ≤ λ_lo) are never proposed
    assert len(trials) < 0.6 * len(everything)  # far fewer than the whole grid


def test_coordinate_search_replays_from_any_prefix_of_its_history():
    start = {"lam_lo": SPACE["lam_lo"].nearest(0.19, 9), "lam_hi": SPACE["lam_hi"].nearest(1.61, 9)}
    trials, _ = run_coordinate(SPACE, 9, start, bowl)
    for k in range(len(trials)):  # a resumed search asks the same next point as one that never stopped
        assert coordinate_next(SPACE, 9, start, trials[:k], ["minimize"]) == trials[k].params
    assert coordinate_next(SPACE, 9, start, trials, ["minimize"]) is None


def test_coordinate_search_prefers_feasible_points():
    f = lambda p: -p["x"]  # noqa: E731  better as x grows
    space = {"x": SearchParam(low=0, high=1)}
    trials, _ = run_coordinate(space, 11, {"x": 0.0}, f, constraint=lambda p: p["x"] - 0.6)  # x ≤ 0.6
    chosen = best_trial(trials, Objective(metric="w2", constraints=[Constraint(metric="w2", max=0.6)]))
    assert chosen is not None and chosen.params == {"x": 0.6}


# --- the best trial and the front --------------------------------------------------------------------------


def records(rng: random.Random, n: int, objectives: int, constrained: bool) -> list[TrialRecord]:
    out = []
    for k in range(n):
        state = "FAIL" if rng.random() < 0.1 else "COMPLETE"
        values = None if state == "FAIL" else [rng.uniform(-1, 1) for _ in range(objectives)]
        # the lower the value, the likelier infeasible: the unconstrained best breaks the constraint
        cons = [-values[0] - 0.3 + rng.uniform(-0.3, 0.3)] if constrained and values is not None else []
        out.append(TrialRecord(k, state, {"x": k}, values, cons))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_the_best_of_a_constrained_objective_is_feasible_and_best_among_the_feasible(seed):
    trials = records(random.Random(seed), 40, 1, True)
    for direction in ("minimize", "maximize"):
        objective = Objective(metric="w2", direction=direction, constraints=[Constraint(metric="w2", max=0.0)])
        best = best_trial(trials, objective)
        feasible = [t for t in trials if t.state == "COMPLETE" and t.constraints[0] <= 0]
        assert best is not None and best in feasible
        pick = min if direction == "minimize" else max
        assert best.values[0] == pick(t.values[0] for t in feasible)
        if direction == "minimize":
            better = [t for t in trials if t.values and t not in feasible and t.values[0] < best.values[0]]
            assert better, "the test needs an infeasible trial better than the best feasible one"
    assert best_trial([t for t in trials if t not in feasible], objective) is None


@pytest.mark.parametrize("seed", range(5))
def test_the_pareto_front_is_mutually_non_dominated_and_dominates_the_rest(seed):
    directions = ["minimize", "maximize"]
    trials = records(random.Random(seed), 60, 2, seed % 2 == 1)
    front = pareto_front(trials, directions)
    assert len(front) >= 2
    for a, b in itertools.permutations(front, 2):
        assert not dominates(a.values, b.values, directions)
    for t in trials:
        if t.feasible and t not in front:
            assert any(dominates(f.values, t.values, directions) or f.values == t.values for f in front)
    assert all(t.feasible for t in front)
    knee = compromise(front, directions)
    assert knee in front


def test_dominance():
    assert dominates([0, 1], [1, 0], ["minimize", "maximize"])
    assert not dominates([0, 1], [0, 1], ["minimize", "maximize"])
    assert not dominates([0, 0], [1, -1], ["minimize", "minimize"])


def test_a_failed_run_or_a_non_finite_metric_fails_the_setting():
    objective = Objective(metric="w2", constraints=[Constraint(metric="class_fidelity", min="baseline")])
    ok = {"status": "ok", "metrics": {"w2": 0.2, "class_fidelity": 0.9}}
    score = score_setting(
        objective, [ok, {**ok, "metrics": {"w2": 0.4, "class_fidelity": 0.7}}], {"class_fidelity": 0.85}
    )
    assert score.values == [pytest.approx(0.3)] and score.constraints == [pytest.approx(0.05)] and not score.feasible
    assert score_setting(objective, [ok, {"status": "error", "error": "boom"}], {"class_fidelity": 0}).error == "boom"
    nan = {"status": "ok", "metrics": {"w2": math.nan, "class_fidelity": 0.9}}
    assert score_setting(objective, [ok, nan], {"class_fidelity": 0}).values is None


# --- suggestions ---------------------------------------------------------------------------------------------


def frozen_history(n: int, seed: int = 0):
    import optuna

    space = {"scale": SearchParam(low=1, high=4, log=True), "eta": SearchParam(choices=[0.0, 0.5])}
    dists = {k: p.distribution() for k, p in space.items()}
    trials = []
    for k in range(n):
        params = propose("tpe", space, trials, k, seed=seed, directions=["minimize"], startup_trials=4).params
        value = (math.log(params["scale"]) - math.log(2)) ** 2 + params["eta"]
        trials.append(optuna.trial.create_trial(params=params, distributions=dists, value=value))
    return space, trials


@pytest.mark.parametrize("method", ["tpe", "random", "nsga2"])
def test_a_suggestion_depends_only_on_the_seed_the_number_and_the_history(method):
    space, history = frozen_history(8)
    directions = ["minimize"]
    a = propose(method, space, history, 8, seed=3, directions=directions, startup_trials=4, population_size=4)
    b = propose(method, space, list(history), 8, seed=3, directions=directions, startup_trials=4, population_size=4)
    assert a.params == b.params and a.system_attrs == b.system_attrs
    others = [
        propose(method, space, history, 8, seed=s, directions=directions, startup_trials=4).params for s in (4, 5)
    ]
    assert any(o != a.params for o in others)


def test_tpe_homes_in_on_a_known_optimum():
    _, trials = frozen_history(30)
    best = min(trials, key=lambda t: t.value)
    assert best.params["eta"] == 0.0 and abs(best.params["scale"] / 2 - 1) < 0.05
