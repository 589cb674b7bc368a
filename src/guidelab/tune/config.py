"""The tune file: what one trial samples (a sweep's run settings), the guider and its search space, the objective,
the budget and the seeds; validated before anything runs.

Example (the known-optimum case: CFG on a model under-conditioned by ρ = 0.5 is best at γ = 1/ρ = 2)::

    name: tune-cfg
    targets: [{target: multimodal-2d, conds: [a]}]      # or model + reference (a trained model), or pipeline
    model: {kind: scaled-conditional, rho: 0.5}
    grids: [{kind: uniform, steps: 16}]
    solvers: [heun]
    n: 2000
    guider: {name: cfg}                                  # fixed parameters in params: {...}
    search:
      scale: {low: 1, high: 4, log: true}                # a range (log: sampled uniformly in log), or
      # eta: {choices: [0, 0.5, 1]}                      # choices; schedule parameters too: lam_lo, schedule.lam_hi
    objective:
      metric: energy_distance                            # direction: the metric's better one, or give it
      # constraints: [{metric: class_fidelity, min: baseline}]   # ≥ the baseline guider's value on the search seeds
    budget: {trials: 30}
    seeds: [0, 1]                                        # every trial uses these (common random numbers)
    heldout_seeds: [1000, 1001]                          # the chosen settings are re-scored on these

The keys of a sweep file (``targets``, ``model``, ``models``, ``reference``, ``pipeline``, ``paths``, ``grids``,
``solvers``, ``eta``, ``n``, ``dtype``, ``metrics``, ``reference_n``, ``save_samples``) say what a trial samples and
measures, exactly as in a sweep (:mod:`guidelab.experiments.config`), with one path, grid and solver; a trial is
the sweep's runs (every condition × every seed) for one guider setting, and its score each metric's mean over them.
The measures the objective needs are added to ``metrics``.

**Objective.** ``metric`` (+ ``direction``) is one value to minimise or maximise; ``metrics`` (two) +
``directions`` a Pareto front. ``constraints`` (``{metric, min}`` or ``{metric, max}``, a number or ``baseline``:
the ``baseline`` guider's value on the search seeds, default CFG at γ = 3) make a setting feasible only where each
holds; the best setting is the best feasible one.

**Search** (``search_method``): ``tpe`` (Optuna's tree-structured Parzen estimator, constrained where there are
constraints; the default for one objective), ``nsga2`` (the default for two), ``random``, or ``coordinate``: a
deterministic coordinate search on a grid of ``coordinate_points`` values per parameter (log-spaced for log ranges),
one parameter after the other until a full pass changes nothing, the way Kynkäänniemi et al. (arXiv 2404.07724)
tuned the interval bounds λ_lo and λ_hi.

**Compare** (``compare``: a list of ``{name, params, search, label}``, or ``guidelab tune --compare cfg,apg``):
every method is tuned with the same budget, objective and seeds, then ranked on the held-out seeds. A method named
on the command line without a block in the file gets :func:`default_search`. Unless ``reference_cfg: false``, plain
CFG is tuned too (when no method is plain CFG), as the reference of the held-out table.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from guidelab.experiments.config import SweepConfig, check_sweep, read_yaml_mapping
from guidelab.validation import did_you_mean, error_lines, nearest, under

__all__ = [
    "DIRECTIONS",
    "SWEEP_KEYS",
    "Budget",
    "Constraint",
    "GuiderSetting",
    "Method",
    "MethodSpec",
    "Objective",
    "SearchParam",
    "TuneConfig",
    "TunePlan",
    "apply_values",
    "check_tune",
    "default_search",
    "guider_check",
    "load_tune",
    "tune_json",
]

# the keys of a tune file that a sweep file has too: what one trial samples and measures
SWEEP_KEYS = (
    "targets",
    "pipeline",
    "model",
    "models",
    "reference",
    "paths",
    "grids",
    "solvers",
    "eta",
    "n",
    "dtype",
    "metrics",
    "reference_n",
    "save_samples",
)

# which way a metric is better, where it has one (give ``direction`` for any other)
DIRECTIONS: dict[str, str] = {
    **dict.fromkeys(
        (
            "energy_distance",
            "mmd2",
            "w2",
            "mode_weight_tv",
            "nll",
            "out_of_support",
            "support_distance_mean",
            "diverged_fraction",
            "n_excluded",
            "fd",
            "out_of_range",
            "saturation",
        ),
        "minimize",
    ),
    **dict.fromkeys(
        (
            "class_fidelity",
            "class_accuracy",
            "mode_coverage",
            "in_support",
            "prdc.precision",
            "prdc.recall",
            "prdc.density",
            "prdc.coverage",
            "vendi",
            "accuracy",
            "confidence",
            "precision",
            "recall",
            "density",
            "coverage",
            "pixel_diversity",
        ),
        "maximize",
    ),
}

Direction = Literal["minimize", "maximize"]
Choice = bool | int | float | str | None


class SearchParam(BaseModel):
    """One searched parameter: a range ``{low, high, log, step, integer}`` or ``{choices: [...]}``."""

    model_config = ConfigDict(extra="forbid")

    low: float | None = Field(None, allow_inf_nan=False)
    high: float | None = Field(None, allow_inf_nan=False)
    log: bool = False
    step: float | None = Field(None, gt=0, allow_inf_nan=False)
    integer: bool = False
    choices: list[Choice] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _range_or_choices(self) -> SearchParam:
        ranged = {k for k in ("low", "high", "step") if getattr(self, k) is not None} | {
            k for k in ("log", "integer") if getattr(self, k)
        }
        if self.choices is not None:
            if ranged:
                raise ValueError(f"give choices or a range (low, high), not both (got {', '.join(sorted(ranged))})")
            if len({json.dumps(c) for c in self.choices}) != len(self.choices):
                raise ValueError(f"choices: each value once, got {self.choices}")
            return self
        if self.low is None or self.high is None:
            raise ValueError("give low and high (a range) or choices")
        if not self.low < self.high:
            raise ValueError(f"low must be < high, got low={self.low:g}, high={self.high:g}")
        if self.log and self.low <= 0:
            raise ValueError(f"log needs low > 0, got low={self.low:g}")
        if self.log and self.step is not None:
            raise ValueError("step: not with log (a log range is continuous)")
        if self.integer and not (float(self.low).is_integer() and float(self.high).is_integer()):
            raise ValueError(f"integer: low and high must be integers, got {self.low:g}, {self.high:g}")
        return self

    def distribution(self) -> Any:
        """The Optuna distribution of this parameter."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.choices is not None:
            return CategoricalDistribution(self.choices)
        assert self.low is not None and self.high is not None
        if self.integer:
            step = 1 if self.step is None else max(1, round(self.step))
            high = int(self.low) + (int(self.high) - int(self.low)) // step * step
            return IntDistribution(int(self.low), high, log=self.log, step=step)
        return FloatDistribution(self.low, self._lattice_high(), log=self.log, step=self.step)

    def _lattice_high(self) -> float:
        """``high``, or with a step the last point of the lattice ``low + k·step`` not above it."""
        assert self.low is not None and self.high is not None
        if self.step is None:
            return float(self.high)
        return round(float(self.low) + math.floor((self.high - self.low) / self.step + 1e-9) * self.step, 12)

    def grid(self, points: int) -> list[Choice]:
        """``points`` values spanning the range (geometric for a log range, on the step lattice where there is a
        step, distinct integers for an integer range), or the choices; endpoints exactly ``low`` and ``high``."""
        if self.choices is not None:
            return list(self.choices)
        assert self.low is not None and self.high is not None
        lo, hi = float(self.low), self._lattice_high()  # with a step, Optuna's lattice: low + k·step up to high
        fractions = [k / (points - 1) for k in range(points)]
        if self.log:
            values = [math.exp(math.log(lo) + f * (math.log(hi) - math.log(lo))) for f in fractions]
        else:
            values = [lo + f * (hi - lo) for f in fractions]
        values[0], values[-1] = lo, hi
        if self.step is not None:
            values = [min(hi, round(lo + round((v - lo) / self.step) * self.step, 12)) for v in values]
        if self.integer:
            return list(dict.fromkeys(round(v) for v in values))
        return list(dict.fromkeys(min(hi, max(lo, v)) for v in values))

    def nearest(self, value: Any, points: int) -> Choice:
        """The grid value (:meth:`grid`) nearest to ``value`` (in log for a log range); the middle one where
        ``value`` is not a number of the range, or not among the choices."""
        grid = self.grid(points)
        if self.choices is not None:
            return value if value in grid else grid[0]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return grid[len(grid) // 2]
        if self.log and value <= 0:
            return grid[0]

        def gap(v: Any) -> float:
            return abs(math.log(v) - math.log(value)) if self.log else abs(v - value)

        return min(grid, key=gap)

    def describe(self) -> str:
        if self.choices is not None:
            return f"one of {self.choices}"
        kind = "integer" if self.integer else "log-uniform" if self.log else "uniform"
        step = f", step {self.step:g}" if self.step is not None else ""
        return f"{kind} in [{self.low:g}, {self.high:g}]{step}"


class GuiderSetting(BaseModel):
    """A guider by name with fixed parameters (the flat form of ``--param`` or a nested ``schedule`` block)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    label: str | None = None


class MethodSpec(GuiderSetting):
    """A method to tune in ``compare``: a guider, its fixed parameters and its search space."""

    search: dict[str, SearchParam] | None = Field(None, description="the search space (default: default_search(name))")


class Constraint(BaseModel):
    """``metric ≥ min`` or ``metric ≤ max`` (a number, or ``baseline``: the baseline guider's value on the search
    seeds). Its Optuna value is ``min − metric`` (or ``metric − max``): feasible where ≤ 0."""

    model_config = ConfigDict(extra="forbid")

    metric: str
    min: float | str | None = None
    max: float | str | None = None

    @field_validator("min", "max", mode="before")
    @classmethod
    def _number_or_baseline(cls, v: Any) -> Any:
        if v is None or v == "baseline":
            return v
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ValueError(f"expected a number or baseline, got {v!r}")
        return float(v)

    @model_validator(mode="after")
    def _one_bound(self) -> Constraint:
        if (self.min is None) == (self.max is None):
            raise ValueError("give exactly one of min and max (a number, or baseline)")
        return self

    @property
    def bound(self) -> float | str:
        return self.min if self.min is not None else self.max  # type: ignore[return-value]

    @property
    def uses_baseline(self) -> bool:
        return self.bound == "baseline"

    def value(self, metric: float, baseline: dict[str, float] | None = None) -> float:
        """The constraint's value for a setting whose mean metric is ``metric``: ≤ 0 where it holds."""
        bound = self.bound
        if bound == "baseline":
            if baseline is None or self.metric not in baseline:
                raise ValueError(f"constraints: {self.metric} ≥ baseline needs the baseline's value")
            bound = baseline[self.metric]
        return float(bound) - metric if self.min is not None else metric - float(bound)

    def describe(self, baseline: dict[str, float] | None = None) -> str:
        sign = "≥" if self.min is not None else "≤"
        bound = self.bound
        if bound == "baseline":
            known = f" = {baseline[self.metric]:.4g}" if baseline and self.metric in baseline else ""
            return f"{self.metric} {sign} baseline{known}"
        return f"{self.metric} {sign} {float(bound):g}"


class Objective(BaseModel):
    """One metric (``metric``, ``direction``) or two for a Pareto front (``metrics``, ``directions``), with optional
    ``constraints``. A direction left out is the metric's better one (:data:`DIRECTIONS`)."""

    model_config = ConfigDict(extra="forbid")

    metric: str | None = None
    direction: Direction | None = None
    metrics: list[str] | None = None
    directions: list[Direction] | None = None
    constraints: list[Constraint] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_or_two(self) -> Objective:
        if (self.metric is None) == (self.metrics is None):
            raise ValueError("metric: give one metric (metric) or two for a Pareto front (metrics), not both")
        if self.metric is not None:
            if self.directions is not None:
                raise ValueError("directions: for metrics (a Pareto front); one metric takes direction")
            if self.direction is None:
                self.direction = _direction(self.metric)  # type: ignore[assignment]
            return self
        assert self.metrics is not None
        if self.direction is not None:
            raise ValueError("direction: for one metric; a Pareto front takes directions (one per metric)")
        if len(self.metrics) != 2 or len(set(self.metrics)) != 2:
            raise ValueError(f"metrics: a Pareto front takes two different metrics, got {self.metrics}")
        if self.directions is None:
            known = [_direction(m) for m in self.metrics]
            self.directions = None if None in known else known  # type: ignore[assignment]
        elif len(self.directions) != 2:
            raise ValueError(f"directions: one per metric (2), got {len(self.directions)}")
        return self

    @property
    def names(self) -> list[str]:
        """The objective metrics, in order."""
        return [self.metric] if self.metric is not None else list(self.metrics or [])

    @property
    def dirs(self) -> list[str]:
        """Their directions, in order."""
        return [self.direction] if self.metric is not None else list(self.directions or [])  # type: ignore[list-item]

    @property
    def pareto(self) -> bool:
        return self.metrics is not None

    def describe(self, baseline: dict[str, float] | None = None) -> str:
        text = " and ".join(f"{d} {m}" for m, d in zip(self.names, self.dirs, strict=True))
        if self.pareto:
            text = f"Pareto front: {text}"
        if self.constraints:
            text += " subject to " + ", ".join(c.describe(baseline) for c in self.constraints)
        return text


def _direction(metric: str) -> str | None:
    """The better direction of ``metric`` where it has a known one (check_tune asks for it otherwise)."""
    return DIRECTIONS.get(metric.removesuffix("_floor"))


def _directions_given(objective: Objective) -> list[str]:
    """A line naming the objective's direction field where a metric has no known better direction."""
    if objective.metric is not None and objective.direction is None:
        return [
            f"objective.direction: {objective.metric!r} has no known better direction; give direction: minimize or "
            "maximize"
        ]
    if objective.metrics is not None and objective.directions is None:
        unknown = [m for m in objective.metrics if _direction(m) is None]
        return [f"objective.directions: {unknown[0]!r} has no known better direction; give directions, one per metric"]
    return []


class Budget(BaseModel):
    """Trials per method (``trials``) and, optionally, seconds per method in one command (``timeout_s``)."""

    model_config = ConfigDict(extra="forbid")

    trials: int = Field(30, ge=1, le=100_000)
    timeout_s: float | None = Field(None, gt=0)


class TuneConfig(BaseModel):
    """The tune file's own keys (the sweep keys, :data:`SWEEP_KEYS`, are validated as a sweep)."""

    model_config = ConfigDict(extra="forbid")

    name: str = "tune"
    guider: GuiderSetting | None = Field(None, description="the guider to tune, with fixed parameters")
    search: dict[str, SearchParam] | None = Field(None, description="the guider's search space")
    compare: list[MethodSpec] | None = Field(None, min_length=1, description="several methods, tuned alike")
    objective: Objective
    search_method: Literal["tpe", "nsga2", "random", "coordinate"] | None = None
    budget: Budget = Field(default_factory=Budget)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    heldout_seeds: list[int] = Field(default_factory=lambda: [1000], min_length=1)
    sampler_seed: int = Field(0, ge=0)
    baseline: GuiderSetting = Field(
        default_factory=lambda: GuiderSetting(name="cfg", params={"scale": 3.0}),
        description="the guider a 'baseline' constraint compares with",
    )
    reference_cfg: bool = Field(True, description="also tune plain CFG, the reference of the held-out table")
    coordinate_points: int = Field(9, ge=2, le=200, description="grid values per parameter (coordinate search)")
    startup_trials: int = Field(10, ge=1, description="random trials before TPE models the history")
    population_size: int = Field(10, ge=2, description="NSGA-II's population")

    @field_validator("seeds", "heldout_seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if any(s < 0 for s in v) or len(set(v)) != len(v):
            raise ValueError(f"each seed ≥ 0 and given once, got {v}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TuneConfig:
        shared = sorted(set(self.seeds) & set(self.heldout_seeds))
        if shared:
            raise ValueError(f"heldout_seeds: {shared} are also search seeds; held-out seeds must be unseen")
        if self.guider is None and self.compare is None:
            raise ValueError("guider: give the guider to tune (with search), or compare: a list of methods")
        if self.guider is not None and self.search is None:
            raise ValueError("search: give the guider's search space, e.g. {scale: {low: 1, high: 10, log: true}}")
        if self.search is not None and self.guider is None:
            raise ValueError("guider: search names parameters of a guider; give it")
        if self.search is not None and not self.search:
            raise ValueError("search: give at least one parameter")
        method = self.search_method or ("nsga2" if self.objective.pareto else "tpe")
        if method == "coordinate" and self.objective.pareto:
            raise ValueError("search_method: coordinate search takes one objective; use nsga2 for a Pareto front")
        self.search_method = method  # type: ignore[assignment]
        return self

    @property
    def uses_baseline(self) -> bool:
        return any(c.uses_baseline for c in self.objective.constraints)


# --- methods -------------------------------------------------------------------------------------------------


def default_search(name: str) -> dict[str, SearchParam]:
    """The search space of a method named without one (``--compare``): its scale, log-uniform in [1, 10]
    (CFG++'s λ: uniform in [0.05, 1])."""
    from guidelab.guiders.registry import guider_accepts

    if name == "cfg++":
        return {"scale": SearchParam(low=0.05, high=1.0)}
    if not guider_accepts(name, "schedule"):
        raise ValueError(f"compare: {name!r} has no scale to search by default; give its block with search")
    return {"scale": SearchParam(low=1.0, high=10.0, log=True)}


@dataclass(frozen=True)
class Method:
    """A method of the tune: its label (the study's name), guider, fixed parameters and search space; ``where``
    is the file field its errors name; ``reference``: plain CFG added as the held-out table's reference."""

    label: str
    name: str
    params: dict[str, Any]
    search: dict[str, SearchParam]
    where: str
    reference: bool = False

    def setting(self, values: dict[str, Any] | None = None) -> dict[str, Any]:
        """The guider ``{name, params}`` with ``values`` of the searched parameters (:func:`apply_values`);
        without values, the method's defaults (its fixed parameters only)."""
        return {"name": self.name, "params": apply_values(self.params, values or {})}

    def spec(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "name": self.name,
            "params": self.params,
            "search": {k: p.model_dump(exclude_defaults=True) for k, p in self.search.items()},
        }


def apply_values(params: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """``params`` with searched ``values`` set: a key ``schedule.K`` goes into the nested schedule block, any other
    key sits flat beside the guider's own. Where the block is made from a flat form (``schedule: interval`` with
    ``scale: 3`` beside it), the schedule's flat parameters move into it."""
    out = json.loads(json.dumps(params))  # a deep copy of plain data
    for key, value in values.items():
        if key.startswith("schedule."):
            schedule = out.get("schedule")
            if isinstance(schedule, dict):
                block = dict(schedule)
            else:
                block = {"name": schedule or "constant"}
                for name in _schedule_keys(block["name"]) & set(out):
                    block[name] = out.pop(name)
            block[key.removeprefix("schedule.")] = value
            out["schedule"] = block
        else:
            out[key] = value
    return out


def _schedule_keys(name: str) -> set[str]:
    """The parameters of schedule ``name`` (none for an unknown name: building the guider reports it)."""
    import inspect

    from guidelab.guiders.schedules import SCHEDULES

    cls = SCHEDULES.get(name)
    return set() if cls is None else set(inspect.signature(cls).parameters)


@dataclass
class TunePlan:
    """A validated tune: its configuration, the sweep that says what a trial samples (its guiders and seeds are
    set per trial), the methods, and the kind of model (``exact``, ``trained`` or ``pipeline``)."""

    config: TuneConfig
    sweep: SweepConfig
    methods: list[Method]
    kind: str
    sweep_data: dict[str, Any] = field(default_factory=dict)

    @property
    def primary(self) -> Method:
        """The method whose best setting is ``best.yaml`` (the first; in a comparison, the winner is)."""
        return self.methods[0]

    def fingerprint(self, method: Method) -> str:
        """What a method's trials depend on (not the budget): a study made by another fingerprint is refused."""
        cfg = self.config
        blob = {
            "sweep": self.sweep_data,
            "method": method.spec(),
            "objective": cfg.objective.model_dump(),
            "seeds": cfg.seeds,
            "search_method": cfg.search_method,
            "sampler_seed": cfg.sampler_seed,
            "coordinate_points": cfg.coordinate_points,
            "startup_trials": cfg.startup_trials,
            "population_size": cfg.population_size,
            "baseline": cfg.baseline.model_dump() if cfg.uses_baseline else None,
        }
        return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --- loading -------------------------------------------------------------------------------------------------


def load_tune(path: str | Path, compare: list[str] | None = None) -> TunePlan:
    """Read and validate a tune file (:func:`check_tune`); ``compare``: method names from the command line."""
    return check_tune(read_yaml_mapping(path, "tune file"), compare)


def check_tune(data: dict[str, Any], compare: list[str] | None = None) -> TunePlan:
    """Validate a tune given as a mapping; every mistake is one ``field: message`` line of the ValueError.

    Beyond the schema: the sweep part is checked as a sweep (targets, model, pipeline, grids, guide models: all
    built), the objective's metrics against what the runs measure, and every searched parameter by building the
    guider at its bounds and choices, so a bad space fails here, before anything runs.
    """
    own = set(TuneConfig.model_fields)
    unknown = [k for k in data if k not in own and k not in SWEEP_KEYS]
    listed = f"{', '.join(sorted(own))} (the tune) and {', '.join(SWEEP_KEYS)} (its runs, as in a sweep)"
    errors = [f"{k}: unknown key{did_you_mean(k, [*sorted(own), *SWEEP_KEYS], listed)}" for k in unknown]
    meant = {name for k in unknown for name in nearest(k, [*own, *SWEEP_KEYS])}  # a misspelt key's field: not
    config = None  # also reported missing
    try:
        config = TuneConfig.model_validate({k: v for k, v in data.items() if k in own})
    except ValidationError as err:
        lines = [_nested(line) for line in error_lines(err)]
        errors += [line for line in lines if line.split(":", 1)[0].split(".")[0].split("[")[0] not in meant]
    if errors or config is None:
        raise ValueError("\n".join(dict.fromkeys(errors)))
    sweep_data = {k: v for k, v in data.items() if k in SWEEP_KEYS}
    kind = _kind(sweep_data)
    metrics = _metrics(config, sweep_data, kind)
    if metrics is not None:
        sweep_data["metrics"] = metrics
    errors += _directions_given(config.objective)
    sweep = check_sweep({**sweep_data, "name": config.name, "guiders": [{"name": "cfg"}], "seeds": config.seeds})
    errors += _one_setting(sweep, kind)
    methods, method_errors = _methods(config, compare)
    errors += method_errors
    if errors:
        raise ValueError("\n".join(dict.fromkeys(errors)))
    plan = TunePlan(config, sweep, methods, kind, sweep_data)
    errors += _check_spaces(plan)
    if config.uses_baseline:
        try:
            _builder(plan)(config.baseline.name, config.baseline.params)
        except ValueError as err:
            errors.append(f"baseline: {err}")
    if errors:
        raise ValueError("\n".join(dict.fromkeys(errors)))
    return plan


_FIELD_IN_MESSAGE = re.compile(r"^([\w.\[\]]+): ([a-z_]+(?:\[\d+\])?): ")


def _nested(line: str) -> str:
    """``objective: metric: …`` (a check of a block that names the block's field) as ``objective.metric: …``."""
    return _FIELD_IN_MESSAGE.sub(lambda m: f"{m.group(1)}.{m.group(2)}: ", line, count=1)


def _kind(sweep_data: dict[str, Any]) -> str:
    from guidelab.recipe import TRAINED_KINDS

    if "pipeline" in sweep_data:
        return "pipeline"
    model = sweep_data.get("model")
    return "trained" if isinstance(model, dict) and model.get("kind") in TRAINED_KINDS else "exact"


def _metrics(config: TuneConfig, sweep_data: dict[str, Any], kind: str) -> Any:
    """The sweep's metrics with the measures the objective and constraints need added; a ValueError naming the
    objective's field for a metric no run measures."""
    wanted = [("objective.metric", config.objective.metric)] if config.objective.metric else []
    wanted += [(f"objective.metrics[{i}]", m) for i, m in enumerate(config.objective.metrics or [])]
    wanted += [(f"objective.constraints[{i}].metric", c.metric) for i, c in enumerate(config.objective.constraints)]
    if kind == "pipeline":
        return _pipeline_metrics(wanted, sweep_data)
    if kind == "trained":
        from guidelab.metrics.images import IMAGE_METRIC_KEYS

        table = IMAGE_METRIC_KEYS
        floors = True
    else:
        from guidelab.experiments.measures import MEASURE_KEYS

        table = MEASURE_KEYS
        floors = False
    given = sweep_data.get("metrics")
    metrics = list(given) if isinstance(given, list) else []
    errors = []
    for where, key in wanted:
        base = key.removesuffix("_floor") if floors else key
        measure = next((name for name, keys in table.items() if base in keys), None)
        if key == "n_excluded" or (key == "diverged_fraction" and kind == "trained"):
            continue  # every run stores them
        if measure is None:
            accepted = sorted({k for keys in table.values() for k in keys} | {"n_excluded"})
            of = "a trained model's runs" if kind == "trained" else "an exact target's runs"
            errors.append(f"{where}: unknown metric {key!r} of {of}{did_you_mean(key, accepted)}")
        elif measure not in metrics:
            metrics.append(measure)
    if errors:
        raise ValueError("\n".join(errors))
    return metrics


def _pipeline_metrics(wanted: list[tuple[str, str]], sweep_data: dict[str, Any]) -> Any:
    """A pipeline run stores each built-in measure under its name and a user metric ``module:fn`` under ``fn``
    (or ``fn.key`` for a dict); an objective metric must be one of those."""
    from guidelab.experiments.image_measures import IMAGE_MEASURES

    block = sweep_data.get("pipeline")
    specs = block.get("metrics") if isinstance(block, dict) else None
    specs = list(specs) if isinstance(specs, list) else list(IMAGE_MEASURES)
    names = {str(s).partition(":")[2].rsplit(".", 1)[-1] if ":" in str(s) else str(s) for s in specs}
    errors = []
    for where, key in wanted:
        if key in IMAGE_MEASURES and key not in specs:
            specs.append(key)
        elif key != "n_excluded" and key not in names and key.split(".", 1)[0] not in names:
            errors.append(
                f"{where}: unknown metric {key!r}; a pipeline run measures {', '.join(sorted(names))} "
                "(pipeline.metrics: built-in names or 'module:function')"
            )
    if errors:
        raise ValueError("\n".join(errors))
    if isinstance(block, dict):
        block = {**block, "metrics": specs}
        sweep_data["pipeline"] = block
    return sweep_data.get("metrics")


def _one_setting(sweep: SweepConfig, kind: str) -> list[str]:
    """A trial scores one setting on one path, grid and solver (its best setting is for those)."""
    errors = []
    for key in ("paths", "grids", "solvers"):
        if kind != "pipeline" and len(getattr(sweep, key)) != 1:
            errors.append(f"{key}: a tune scores each setting on one; give one (got {len(getattr(sweep, key))})")
    if sweep.pipeline is not None:
        for key in ("steps", "solver"):
            if len(sweep.pipeline.axis(key)) != 1:
                errors.append(f"pipeline.{key}: a tune scores each setting with one; give one value, not a list")
    return errors


def _methods(config: TuneConfig, compare: list[str] | None) -> tuple[list[Method], list[str]]:
    """The methods to tune, in order (the reference CFG last); errors name their field."""
    errors: list[str] = []
    blocks: list[tuple[str, MethodSpec]] = []
    if config.guider is not None:
        blocks.append(("guider", MethodSpec(**config.guider.model_dump(), search=config.search)))
    blocks += [(f"compare[{i}]", m) for i, m in enumerate(config.compare or [])]
    if compare is not None:
        chosen = []
        for name in compare:
            found = next(((w, m) for w, m in blocks if name in (m.label, m.name)), None)
            if found is None:
                try:
                    found = ("--compare", MethodSpec(name=name, search=default_search(name)))
                except ValueError as err:
                    errors.append(under("compare", err))
                    continue
            chosen.append(found)
        blocks = chosen
    methods = []
    for where, spec in blocks:
        search = spec.search
        if search is None:
            try:
                search = default_search(spec.name)
            except ValueError as err:
                errors.append(f"{where}.search: {str(err).removeprefix('compare: ')}")
                continue
        methods.append(Method(spec.label or spec.name, spec.name, dict(spec.params), dict(search), where))
    labels = [m.label for m in methods]
    for label in {lab for lab in labels if labels.count(lab) > 1}:
        errors.append(f"compare: two methods are labelled {label!r}; give each a distinct label")
    if config.reference_cfg and methods and not any(_plain_cfg(m) for m in methods):
        label = "cfg" if "cfg" not in labels else "cfg-reference"  # beside a method labelled cfg (cfg + interval)
        search = {"scale": SearchParam(low=1.0, high=10.0, log=True)}
        methods.append(Method(label, "cfg", {}, search, "reference_cfg", reference=True))
    return methods, errors


def _plain_cfg(method: Method) -> bool:
    schedule = method.params.get("schedule")
    plain = schedule in (None, "constant") or (isinstance(schedule, dict) and schedule.get("name") == "constant")
    return method.name == "cfg" and plain and not any(k.startswith("schedule.") for k in method.search)


def _builder(plan: TunePlan) -> Any:
    """A function ``(name, params)`` that builds the guider as a run would (guide models on the run's path)."""
    from guidelab.guiders import build_guider
    from guidelab.paths import get_path
    from guidelab.recipe import build_run_guider
    from guidelab.targets import get_target

    sweep = plan.sweep
    if plan.kind == "pipeline":
        return lambda name, params: build_guider(name, **params)
    if plan.kind == "trained":
        path = sweep.model.load().path
        return lambda name, params: build_run_guider(name, params, sweep.models, None, path)
    target, path = get_target(sweep.targets[0].target), get_path(sweep.paths[0])
    return lambda name, params: build_run_guider(name, params, sweep.models, target, path)


def guider_check(plan: TunePlan) -> Any:
    """A function ``(method, values) -> error message or None``: whether that setting builds."""
    build = _builder(plan)

    def check(method: Method, values: dict[str, Any]) -> str | None:
        setting = method.setting(values)
        try:
            build(setting["name"], setting["params"])
        except (ValueError, TypeError) as err:
            return str(err)
        return None

    return check


def _check_spaces(plan: TunePlan) -> list[str]:
    """Every value at the bounds (and every choice) of every searched parameter must build with some values of
    the others (all at their low ends, all at their high ends); the first that never builds is named."""
    check = guider_check(plan)
    errors = []
    for method in plan.methods:
        where = "search" if method.where == "guider" else f"{method.where}.search"
        nested = method.params.get("schedule") if isinstance(method.params.get("schedule"), dict) else {}
        twice = [k for k in method.search if k in method.params or k.removeprefix("schedule.") in (nested or {})]
        errors += [f"{where}.{k}: also fixed in the guider's params; give it in one place" for k in twice]
        if twice:
            continue
        low = {k: p.grid(2)[0] for k, p in method.search.items()}
        high = {k: p.grid(2)[-1] for k, p in method.search.items()}
        fixed = [check(method, end) for end in (low, high)]
        said = (fixed[0] or "").split("; did you mean")[0].split("; accepted")[0]  # what fails, not what is offered
        if all(fixed) and fixed[0] == fixed[1] and not any(repr(k.split(".")[-1]) in said for k in method.search):
            # the guider or its fixed parameters fail whatever the searched values: told as theirs, not a value's
            errors.append(fixed[0] if fixed[0].startswith(f"{method.where}: ") else f"{method.where}: {fixed[0]}")
            continue
        for key, param in method.search.items():
            for value in param.grid(2):
                messages = [check(method, {**end, key: value}) for end in (low, high)]
                if all(messages):
                    shown = repr(value) if param.choices is not None else f"{value:g}"
                    errors.append(f"{where}.{key}: the value {shown} does not build: {messages[0]}")
                    break
    return errors


def tune_json(plan: TunePlan) -> dict[str, Any]:
    """The validated tune as plain data (written to ``OUT/tune.json``)."""
    return {
        **plan.config.model_dump(),
        "sweep": plan.sweep_data,
        "methods": [m.spec() | {"reference": m.reference} for m in plan.methods],
        "kind": plan.kind,
    }
