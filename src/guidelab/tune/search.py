"""The next setting to try, as a function of the sampler seed, the trial's number and the finished trials only.

That makes a tune resumable without drift: Optuna's samplers draw from a random state that advances with every
call, so a study resumed with a freshly seeded sampler would suggest other points than one that never stopped.
Here every suggestion is made by a sampler seeded with ``SeedSequence([seed, number])``, in a throw-away in-memory
study that holds copies of the finished trials; the real study (SQLite, ``OUT/study.sqlite``) receives only
finished trials, each in one transaction (``Study.add_trial``). A tune killed at any moment and run again asks
the same question with the same history and gets the same answer, so its trial table is the one an uninterrupted
tune writes; and a Ray cluster only runs the trials' samples, so it gives the same trials too.

Methods:

- ``tpe``: ``optuna.samplers.TPESampler`` (Bergstra et al. 2011; multivariate where several parameters are searched,
  Falkner et al. 2018), after ``startup_trials`` random ones. With constraints it is Optuna's constrained TPE
  (Watanabe & Hutter 2023, arXiv 2211.14411): infeasible trials rank below every feasible one.
- ``nsga2``: ``optuna.samplers.NSGAIISampler`` (Deb et al. 2002), for a Pareto front of two objectives,
  constrained by Deb's constrained domination where there are constraints.
- ``random``: ``optuna.samplers.RandomSampler``.
- ``coordinate``: :func:`coordinate_next`, a deterministic coordinate search on a grid, as Kynkäänniemi et al.
  (arXiv 2404.07724, §4) tuned the guidance interval's bounds: one parameter at a time over its grid values with the
  others fixed, moving to the best, until a full pass changes nothing.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from guidelab.tune.config import SearchParam
from guidelab.tune.objective import TrialRecord, order_key
from guidelab.validation import did_you_mean

__all__ = ["Proposal", "coordinate_next", "make_sampler", "propose", "trial_seed"]


@dataclass
class Proposal:
    """The parameters of the next trial, and the sampler's bookkeeping to keep with it (NSGA-II's generation)."""

    params: dict[str, Any]
    system_attrs: dict[str, Any]


def trial_seed(seed: int, number: int) -> int:
    """The seed of trial ``number``'s sampler: a function of the tune's seed and the number only."""
    return int(np.random.SeedSequence([int(seed), int(number)]).generate_state(1)[0])


def make_sampler(method: str, seed: int, *, startup_trials: int = 10, population_size: int = 10, dims: int = 1) -> Any:
    """The Optuna sampler of ``method`` (``tpe``, ``nsga2``, ``random``) seeded with ``seed``."""
    import optuna

    if method == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials, multivariate=dims > 1)
    if method == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=population_size)
    if method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(
        f"search_method: unknown {method!r}{did_you_mean(method, ('tpe', 'nsga2', 'random', 'coordinate'))}"
    )


def propose(
    method: str,
    space: dict[str, SearchParam],
    trials: Sequence[Any],
    number: int,
    *,
    seed: int,
    directions: Sequence[str],
    startup_trials: int = 10,
    population_size: int = 10,
) -> Proposal:
    """The parameters of trial ``number`` by an Optuna sampler: a fresh in-memory study holding copies of the
    finished ``trials`` (Optuna ``FrozenTrial``s, in order) asks once, its sampler seeded by
    :func:`trial_seed` (module docstring)."""
    import optuna

    distributions = {key: p.distribution() for key, p in space.items()}
    sampler = make_sampler(
        method,
        trial_seed(seed, number),
        startup_trials=startup_trials,
        population_size=population_size,
        dims=len(space),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        scratch = optuna.create_study(directions=list(directions), sampler=sampler)
        scratch.add_trials(trials)
        trial = scratch.ask(distributions)
    asked = scratch.get_trials(deepcopy=False)[-1]
    return Proposal(dict(trial.params), dict(asked.system_attrs))


def _key(params: dict[str, Any], names: Sequence[str]) -> str:
    return json.dumps([params.get(k) for k in names])


def coordinate_next(
    space: dict[str, SearchParam],
    points: int,
    start: dict[str, Any],
    trials: Sequence[TrialRecord],
    directions: Sequence[str],
    valid: Callable[[dict[str, Any]], bool] = lambda params: True,
) -> dict[str, Any] | None:
    """The next point of a coordinate search, or None when it has converged.

    The search starts at ``start`` (grid values, :meth:`SearchParam.nearest`) and sweeps one parameter at a time, in
    the order of ``space``, over its grid (:meth:`SearchParam.grid` with ``points`` values) with the others fixed,
    then moves to the best point of that line if it is strictly better (:func:`~guidelab.tune.objective.order_key`:
    feasible by value, then infeasible by violation, failed last); passes repeat until one changes nothing. It is
    replayed from ``trials`` (the points already scored): the first point it needs that no trial has scored is the
    next one. Points for which ``valid`` is False (a setting that does not build, e.g. λ_hi ≤ λ_lo) are skipped.
    Strict improvement makes every pass but the last move to a better point, so it ends.
    """
    names = list(space)
    grids = {k: p.grid(points) for k, p in space.items()}
    scores = {_key(t.params, names): order_key(t, directions) for t in trials}
    current = {k: start[k] for k in names}
    if not valid(current):
        current = next((p for p in _product(grids, names) if valid(p)), None)  # type: ignore[assignment]
        if current is None:
            return None
    if _key(current, names) not in scores:
        return current
    while True:
        moved = False
        for name in names:
            line = [p for p in ({**current, name: v} for v in grids[name]) if valid(p)]
            missing = next((p for p in line if _key(p, names) not in scores), None)
            if missing is not None:
                return missing
            best = current
            for p in line:
                if scores[_key(p, names)] < scores[_key(best, names)]:
                    best = p
            if best != current:
                current, moved = best, True
        if not moved:
            return None


def _product(grids: dict[str, list[Any]], names: list[str], limit: int = 10_000) -> Any:
    """Grid points in lexicographic order (at most ``limit``)."""
    import itertools

    for count, combo in enumerate(itertools.product(*(grids[k] for k in names))):
        if count >= limit:
            return
        yield dict(zip(names, combo, strict=True))
