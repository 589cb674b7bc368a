"""A trial's score and the choice of the best: from the rows of one guider setting to its objective values and
constraint values, the best feasible trial, and the Pareto front of two objectives.

A setting is run once per condition and seed; each metric's value is the **mean over those rows** (every trial of
a tune uses the same seeds, so differences between trials are the settings' own: common random numbers). A row
that failed, or an objective or constraint metric that is not finite (every sample diverged, a metric undefined),
fails the trial: it is kept in the study as ``FAIL`` and never chosen.

Constraint values follow Optuna's convention (``optuna.trial.Trial.set_constraint``): ``c = min − m`` for
``m ≥ min`` and ``c = m − max`` for ``m ≤ max``; a trial is feasible where every ``c ≤ 0``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from guidelab.tune.config import Objective

__all__ = [
    "Score",
    "TrialRecord",
    "best_trial",
    "compromise",
    "dominates",
    "mean_metrics",
    "order_key",
    "pareto_front",
    "record_of",
    "score_setting",
]


@dataclass
class Score:
    """One setting's evaluation: mean ``metrics`` over its rows, the objective ``values`` (None: failed), the
    ``constraints`` (≤ 0: holds) and the ``error`` that failed it."""

    metrics: dict[str, float]
    values: list[float] | None
    constraints: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def feasible(self) -> bool:
        return self.values is not None and all(c <= 0 for c in self.constraints)


@dataclass
class TrialRecord:
    """A finished trial as the tuner and the report read it (from Optuna's ``FrozenTrial``)."""

    number: int
    state: str  # "COMPLETE" or "FAIL"
    params: dict[str, Any]
    values: list[float] | None
    constraints: list[float] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    seconds: float | None = None

    @property
    def complete(self) -> bool:
        return self.state == "COMPLETE" and self.values is not None

    @property
    def feasible(self) -> bool:
        return self.complete and all(c <= 0 for c in self.constraints)

    @property
    def violation(self) -> float:
        """The total amount by which the constraints are broken (0 where feasible)."""
        return sum(max(c, 0.0) for c in self.constraints)


def mean_metrics(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Each metric's mean over ``rows`` (NaN where a row lacks it or has a non-number)."""
    keys = dict.fromkeys(k for row in rows for k in (row.get("metrics") or {}))
    out = {}
    for key in keys:
        values = [_number((row.get("metrics") or {}).get(key)) for row in rows]
        out[key] = math.fsum(values) / len(values) if values else math.nan
    return out


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)


def score_setting(
    objective: Objective, rows: Sequence[dict[str, Any]], baseline: dict[str, float] | None = None
) -> Score:
    """The :class:`Score` of one setting's rows (every condition × seed): failed where a row failed or an
    objective or constraint metric is not finite."""
    metrics = mean_metrics(rows)
    failed = [r for r in rows if r.get("status") != "ok"]
    if failed:
        return Score(metrics, None, error=str(failed[0].get("error") or "a run failed"))
    if not rows:
        return Score(metrics, None, error="no runs")
    needed = objective.names + [c.metric for c in objective.constraints]
    bad = [m for m in needed if not math.isfinite(metrics.get(m, math.nan))]
    if bad:
        return Score(metrics, None, error=f"{bad[0]} is not finite (every sample diverged, or it is undefined)")
    values = [metrics[m] for m in objective.names]
    constraints = [c.value(metrics[c.metric], baseline) for c in objective.constraints]
    return Score(metrics, values, constraints)


def order_key(trial: TrialRecord, directions: Sequence[str]) -> tuple[int, float, float]:
    """A sort key, smaller is better, for one objective: feasible trials by value, then infeasible ones by their
    violation, then failed ones."""
    if not trial.complete:
        return (2, math.inf, math.inf)
    if not trial.feasible:
        return (1, trial.violation, 0.0)
    assert trial.values is not None
    value = trial.values[0]
    return (0, 0.0, value if directions[0] == "minimize" else -value)


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str]) -> bool:
    """Whether objective values ``a`` Pareto-dominate ``b``: no worse in every objective, better in one."""
    signed = [(x, y) if d == "minimize" else (-x, -y) for x, y, d in zip(a, b, directions, strict=True)]
    return all(x <= y for x, y in signed) and any(x < y for x, y in signed)


def pareto_front(trials: Sequence[TrialRecord], directions: Sequence[str]) -> list[TrialRecord]:
    """The feasible complete trials no other feasible complete trial dominates (brute force), in trial order; of
    trials with equal values only the first."""
    pool = [t for t in trials if t.feasible]
    front = []
    for t in pool:
        assert t.values is not None
        if any(dominates(o.values, t.values, directions) for o in pool if o is not t):  # type: ignore[arg-type]
            continue
        if any(f.values == t.values for f in front):
            continue
        front.append(t)
    return front


def compromise(front: Sequence[TrialRecord], directions: Sequence[str]) -> TrialRecord | None:
    """The front's point nearest the ideal one after scaling each objective to [0, 1] over the front (0 at its
    best value): the usual single pick from a Pareto front (a knee where the front has one). Ties: the earlier."""
    if not front:
        return None
    columns = list(zip(*[t.values for t in front], strict=True))  # type: ignore[misc]
    spans = [(min(c), max(c)) for c in columns]

    def distance(t: TrialRecord) -> float:
        assert t.values is not None
        total = 0.0
        for v, (lo, hi), d in zip(t.values, spans, directions, strict=True):
            if hi > lo:
                gap = (v - lo) / (hi - lo) if d == "minimize" else (hi - v) / (hi - lo)
                total += gap * gap
        return math.sqrt(total)

    return min(front, key=lambda t: (distance(t), t.number))


def best_trial(trials: Sequence[TrialRecord], objective: Objective) -> TrialRecord | None:
    """The chosen trial: for one objective the best feasible one (ties: the earlier), for two the front's
    :func:`compromise`; None where no trial is feasible."""
    if objective.pareto:
        return compromise(pareto_front(trials, objective.dirs), objective.dirs)
    feasible = [t for t in trials if t.feasible]
    if not feasible:
        return None
    return min(feasible, key=lambda t: (order_key(t, objective.dirs), t.number))


def record_of(trial: Any) -> TrialRecord:
    """A :class:`TrialRecord` of an Optuna ``FrozenTrial`` (its user attributes ``metrics``, ``error``,
    ``seconds`` as the tuner stores them)."""
    constraints = dict(getattr(trial, "constraints", {}) or {})
    ordered = [float(constraints[k]) for k in sorted(constraints, key=lambda k: (len(str(k)), str(k)))]
    attrs = trial.user_attrs or {}
    values = list(trial.values) if trial.values is not None else None
    return TrialRecord(
        number=trial.number,
        state=trial.state.name,
        params=dict(trial.params),
        values=[float(v) for v in values] if values is not None else None,
        constraints=ordered,
        metrics={k: float(v) for k, v in (attrs.get("metrics") or {}).items()},
        error=attrs.get("error"),
        seconds=attrs.get("seconds"),
    )
