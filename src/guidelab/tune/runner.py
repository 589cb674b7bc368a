"""The tune loop: every method's trials into an Optuna study and the results store, then the held-out re-scoring,
``best.yaml`` and ``summary.json``.

Files in the output folder ``OUT``:

- ``study.sqlite``: the Optuna studies (one per method, named by its label), Optuna's own SQLite storage;
- ``results.sqlite``: every run of every trial as a row of the sweeps' store (:class:`ResultStore`): label
  ``tune:<method>`` for the search, ``tuned:<method>`` and ``default:<method>`` for the re-scoring,
  ``baseline:<guider>`` for a baseline constraint's runs; ``config["tune"]`` holds the study, the role, the trial
  number and the seeds of the evaluation the row belongs to; ``runs/<hash>/`` the runs' files;
- ``tune.json``: the validated tune; ``summary.json``: the trials, the best settings, the held-out table, the
  ranking and Optuna's parameter importances (rewritten after every trial, ``"complete": true`` at the end);
- ``best.yaml``: the best setting as a guider file (``--guider-file`` of ``sample``, ``run``, ``generate``), and
  ``best-<method>.yaml`` for every method.

**Resume.** A trial is evaluated (its rows stored as they finish), then added to its study in one transaction
(``Study.add_trial``); its parameters are a function of the seed, its number and the finished trials
(:mod:`guidelab.tune.search`). Killed at any point and run again, a tune recomputes the same next trial, finds the
rows already stored (their hashes hold the study, role and trial number) and goes on: no finished trial is lost,
none is duplicated, and the trial table equals an uninterrupted tune's.

**Common random numbers.** Every trial runs on the same seeds (``seeds``); the best setting, the method's defaults
and, beside another method, tuned plain CFG are then re-scored on ``heldout_seeds``, so a setting that only won by
its seeds shows it.

**Executors.** Trials run one after the other (each suggestion needs the finished history); a trial's runs
(conditions × seeds) run in this process (on worker threads, as a sweep's, where
:func:`~guidelab.experiments.runner.choose_split` finds them worth sharing; bitwise the same rows), or as Ray
tasks on a cluster (``executor="ray"``). The study never
leaves this process: Optuna's SQLite storage is not safe over a network file system, and asking in the driver
keeps every suggestion, hence every trial, equal to a local tune's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from guidelab.experiments.config import GuiderSweep, PipelineRunSpec, RunSpec
from guidelab.experiments.runner import (
    check_options,
    choose_split,
    folder_lock,
    map_runs,
    ray_cluster,
    torch_threads,
)
from guidelab.experiments.store import ResultStore
from guidelab.io import write_json_atomic, write_text_atomic
from guidelab.progress import ProgressBar
from guidelab.tune.config import Method, TunePlan, guider_check, tune_json
from guidelab.tune.objective import (
    Score,
    TrialRecord,
    best_trial,
    mean_metrics,
    pareto_front,
    record_of,
    score_setting,
)
from guidelab.tune.search import coordinate_next, propose

__all__ = [
    "BEST_FILE",
    "RESULTS_FILE",
    "STUDY_FILE",
    "SUMMARY_FILE",
    "TunePipelineRun",
    "TuneRun",
    "guider_file_text",
    "import_optuna",
    "run_tune",
]

RESULTS_FILE, STUDY_FILE, SUMMARY_FILE, BEST_FILE, CONFIG_FILE = (
    "results.sqlite",
    "study.sqlite",
    "summary.json",
    "best.yaml",
    "tune.json",
)


def import_optuna() -> Any:
    """The optuna module; a ValueError naming ``tune`` where it is not installed."""
    try:
        import optuna
    except ImportError:
        raise ValueError("tune: needs optuna (pip install 'guidelab[tune]')") from None
    return optuna


def _keyed(base: str, key: str) -> str:
    import hashlib

    return hashlib.sha256(f"{base}|{key}".encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class TuneRun(RunSpec):
    """A sweep run that belongs to one evaluation of a tune: its hash also holds ``tune_key`` (study, role, trial),
    so two trials of the same setting are two rows."""

    tune_key: str = ""

    @property
    def hash(self) -> str:
        return _keyed(super().hash, self.tune_key)


@dataclasses.dataclass(frozen=True)
class TunePipelineRun(PipelineRunSpec):
    """A pipeline run that belongs to one evaluation of a tune (see :class:`TuneRun`)."""

    tune_key: str = ""

    @property
    def hash(self) -> str:
        return _keyed(super().hash, self.tune_key)


def _worker_died(row: dict[str, Any]) -> bool:
    """A row whose run did not fail by itself: its worker process (or Ray node) died; run it again."""
    return str(row.get("error") or "").startswith("worker died")


def _as_values(params: dict[str, Any]) -> dict[str, Any]:
    """Guider parameters as a sweep's ``params`` that expand to exactly them: list values (a per-sample scale)
    wrapped once, in a nested schedule block too."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, dict):
            out[key] = {k: [v] if isinstance(v, list) else v for k, v in value.items()}
        else:
            out[key] = [value] if isinstance(value, list) else value
    return out


class _Evaluator:
    """Scores guider settings: builds one setting's runs from the tune's sweep, reuses the rows already stored,
    runs the others and stores them."""

    def __init__(self, plan: TunePlan, out: Path, store: ResultStore, executor: str, address: str | None, threads: int):
        self.plan, self.out, self.store = plan, out, store
        self.executor, self.address, self.threads = executor, address, threads
        self._pipeline: tuple[Any, Any] | None = None

    def specs(self, setting: dict[str, Any], seeds: list[int], label: str, key: str) -> list[Any]:
        guider = GuiderSweep(name=setting["name"], params=_as_values(setting["params"]), label=label)
        sweep = self.plan.sweep.model_copy(update={"guiders": [guider], "seeds": list(seeds)})
        out = []
        for spec in sweep.runs():
            cls = TunePipelineRun if isinstance(spec, PipelineRunSpec) else TuneRun
            fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}
            out.append(cls(**fields, tune_key=key))
        return out

    def evaluate(
        self, setting: dict[str, Any], seeds: list[int], label: str, *, study: str, role: str, trial: int | None
    ) -> list[dict[str, Any]]:
        """The rows of ``setting`` on ``seeds`` (every condition × seed), stored ones reused (a run whose worker died
        is run again)."""
        tag = {"study": study, "role": role, "trial": trial, "seeds": list(seeds)}
        specs = self.specs(setting, seeds, label, json.dumps([study, role, trial]))
        have = self.store.rows_by_hash([s.hash for s in specs])
        todo = [
            s for s in specs if s.hash not in have or str(have[s.hash].get("error") or "").startswith("worker died")
        ]
        rows = self._run(todo)
        try:
            for row in rows:
                row["config"] = {**row.get("config", {}), "tune": tag}
                self.store.put(row)
                have[row["hash"]] = row
        finally:
            close = getattr(rows, "close", None)
            if close is not None:
                close()
        return [have[s.hash] for s in specs]

    def _run(self, specs: list[Any]) -> Iterator[dict[str, Any]]:
        if not specs:
            return iter(())
        if self.plan.kind != "pipeline":
            # a trial's runs on worker threads where they are worth sharing (the rows are bitwise the same)
            workers = choose_split(specs, threads=self.threads).workers if self.executor == "local" else 1
            return map_runs(
                specs, self.out, executor=self.executor, address=self.address, workers=workers, threads=self.threads
            )
        return self._pipeline_rows(specs)

    def _pipeline_rows(self, specs: list[Any]) -> Iterator[dict[str, Any]]:
        from guidelab.experiments.image_measures import resolve_image_metrics
        from guidelab.experiments.runner import execute_pipeline_run
        from guidelab.pipelines import load_pipeline

        block = self.plan.sweep.pipeline
        assert block is not None
        if self._pipeline is None:  # loaded once, when the first run needs it
            metrics = resolve_image_metrics(block.metrics)
            self._pipeline = (load_pipeline(specs[0].run.pipeline, device=block.device, dtype=block.dtype), metrics)
        pipe, metrics = self._pipeline
        settings = {"max_batch": block.max_batch} if block.max_batch is not None else {}
        for spec in specs:
            yield execute_pipeline_run(
                spec, pipe, str(self.out), metrics, threads=self.threads, device_settings=settings
            )


def guider_file_text(setting: dict[str, Any], comment: list[str]) -> str:
    """A guider file (``{name, params, label}``) with ``comment`` lines above it."""
    import yaml

    head = "".join(f"# {line}\n" for line in comment)
    return head + yaml.safe_dump(setting, sort_keys=False, allow_unicode=True)


def _defaults_of(method: Method) -> dict[str, Any]:
    """The default value of every searched parameter: the guider's (or its schedule's) documented default."""
    from guidelab.guiders.registry import guider_parameters

    schedule = method.params.get("schedule")
    name = schedule.get("name") if isinstance(schedule, dict) else schedule
    try:
        defaults = guider_parameters(method.name, name if isinstance(name, str) else None)
    except (ValueError, KeyError):
        defaults = {}
    nested = schedule if isinstance(schedule, dict) else {}
    return {
        k: nested.get(k.removeprefix("schedule."), defaults.get(k.removeprefix("schedule."))) for k in method.search
    }


class _Tuner:
    def __init__(
        self,
        plan: TunePlan,
        out: Path,
        evaluator: _Evaluator,
        optuna: Any,
        progress: bool,
        on_trial: Callable[[str, TrialRecord], None] | None,
    ):
        self.plan, self.out, self.evaluator, self.optuna = plan, out, evaluator, optuna
        self.progress, self.on_trial = progress, on_trial
        self.storage = optuna.storages.RDBStorage(f"sqlite:///{(out / STUDY_FILE).resolve()}")
        self.baseline: dict[str, Any] | None = None
        self.studies: dict[str, Any] = {}
        self.stopped: dict[str, str] = {}
        self.check = guider_check(plan)

    # --- studies --------------------------------------------------------------------------------------------

    def open_studies(self) -> None:
        """Open (or create) every method's study; refuse one made by another configuration."""
        directions = self.plan.config.objective.dirs
        for method in self.plan.methods:
            study = self.optuna.create_study(
                storage=self.storage, study_name=method.label, directions=directions, load_if_exists=True
            )
            fingerprint = self.plan.fingerprint(method)
            stored = study.user_attrs.get("fingerprint")
            if stored is None:
                study.set_user_attr("fingerprint", fingerprint)
                study.set_user_attr("method", method.spec())
            elif stored != fingerprint:
                raise ValueError(
                    f"out: {self.out} holds a tune of {method.label!r} with another configuration (the search space, "
                    "objective, seeds, sampler or runs differ); give another --out, or the tune file it was made with"
                )
            self.studies[method.label] = study

    def records(self, label: str) -> list[TrialRecord]:
        return [record_of(t) for t in self.studies[label].get_trials(deepcopy=False)]

    # --- baseline -------------------------------------------------------------------------------------------

    def run_baseline(self) -> None:
        cfg = self.plan.config
        if not cfg.uses_baseline:
            return
        setting = {"name": cfg.baseline.name, "params": cfg.baseline.params}
        label = f"baseline:{cfg.baseline.label or cfg.baseline.name}"
        rows = self.evaluator.evaluate(setting, cfg.seeds, label, study="baseline", role="baseline", trial=None)
        metrics = mean_metrics(rows)
        failed = [r for r in rows if r.get("status") != "ok"]
        needed = [c.metric for c in cfg.objective.constraints if c.uses_baseline]
        bad = [m for m in needed if not math.isfinite(metrics.get(m, math.nan))]
        if failed or bad:
            why = failed[0].get("error") if failed else f"{bad[0]} is not finite"
            raise ValueError(f"baseline: the baseline guider's runs on the search seeds failed ({why})")
        self.baseline = {"guider": setting, "label": label, "metrics": metrics}

    # --- search ---------------------------------------------------------------------------------------------

    def search(self, method: Method) -> None:
        cfg = self.plan.config
        objective = cfg.objective
        study = self.studies[method.label]
        distributions = {k: p.distribution() for k, p in method.search.items()}
        defaults = _defaults_of(method)
        start = {k: p.nearest(defaults.get(k), cfg.coordinate_points) for k, p in method.search.items()}
        done = len(study.get_trials(deepcopy=False))
        remaining = max(0, cfg.budget.trials - done)
        began = time.perf_counter()
        times: list[float] = []
        self.stopped[method.label] = "budget"
        with ProgressBar(self.progress, remaining, f"tune {method.label}", transient=False) as bar:
            while True:
                frozen = study.get_trials(deepcopy=False)
                number = len(frozen)
                if number >= cfg.budget.trials:
                    break
                if cfg.budget.timeout_s is not None and time.perf_counter() - began > cfg.budget.timeout_s:
                    self.stopped[method.label] = "timeout"
                    break
                if cfg.search_method == "coordinate":
                    records = [record_of(t) for t in frozen]
                    params = coordinate_next(
                        method.search,
                        cfg.coordinate_points,
                        start,
                        records,
                        objective.dirs,
                        lambda p: self.check(method, p) is None,
                    )
                    if params is None:
                        self.stopped[method.label] = "converged"
                        break
                    system_attrs: dict[str, Any] = {}
                else:
                    proposal = propose(
                        cfg.search_method or "tpe",
                        method.search,
                        frozen,
                        number,
                        seed=cfg.sampler_seed,
                        directions=objective.dirs,
                        startup_trials=cfg.startup_trials,
                        population_size=cfg.population_size,
                    )
                    params, system_attrs = proposal.params, proposal.system_attrs
                t0 = time.perf_counter()
                score = self._score(method, params, number)
                seconds = time.perf_counter() - t0
                times.append(seconds)
                trial = self.optuna.trial.create_trial(
                    state=self.optuna.trial.TrialState.COMPLETE if score.values else self.optuna.trial.TrialState.FAIL,
                    values=score.values,
                    params=params,
                    distributions=distributions,
                    user_attrs={"metrics": score.metrics, "error": score.error, "seconds": seconds},
                    system_attrs=system_attrs,
                    constraints={str(i): c for i, c in enumerate(score.constraints)} or None,
                )
                study.add_trial(trial)  # one transaction: the trial is in the study whole, or not at all
                record = record_of(study.get_trials(deepcopy=False)[-1])
                if self.on_trial is not None:
                    self.on_trial(method.label, record)
                self.write_summary(complete=False)
                left = (cfg.budget.trials - number - 1) * sum(times) / len(times)
                bar.advance(status=f"{self._best_text(method.label)} · ~{left:.0f} s left")

    def _score(self, method: Method, params: dict[str, Any], number: int) -> Score:
        cfg = self.plan.config
        error = self.check(method, params)
        if error is not None:  # a point that does not build (e.g. λ_hi ≤ λ_lo): a failed trial, nothing to run
            return Score({}, None, error=error)
        rows = self.evaluator.evaluate(
            method.setting(params), cfg.seeds, f"tune:{method.label}", study=method.label, role="search", trial=number
        )
        return score_setting(cfg.objective, rows, self._baseline_metrics())

    def _baseline_metrics(self) -> dict[str, float] | None:
        return None if self.baseline is None else self.baseline["metrics"]

    def _best_text(self, label: str) -> str:
        objective = self.plan.config.objective
        records = self.records(label)
        if objective.pareto:
            return f"front of {len(pareto_front(records, objective.dirs))}"
        best = best_trial(records, objective)
        return "no feasible trial yet" if best is None else f"best {objective.names[0]} {best.values[0]:.4g}"  # type: ignore[index]

    # --- held-out -------------------------------------------------------------------------------------------

    def rescore(self) -> list[dict[str, Any]]:
        """Every method's best setting and defaults on the held-out seeds (the defaults on the search seeds too)."""
        cfg = self.plan.config
        entries = []
        for method in self.plan.methods:
            best = best_trial(self.records(method.label), cfg.objective)
            if best is not None:
                setting = method.setting(best.params)
                rows = self.evaluator.evaluate(
                    setting,
                    cfg.heldout_seeds,
                    f"tuned:{method.label}",
                    study=method.label,
                    role="heldout",
                    trial=best.number,
                )
                search = Score(best.metrics, best.values, best.constraints, best.error)
                entries.append(self._entry(method, "tuned", setting, best.number, search, self._scored(rows)))
            if self.check(method, {}) is None:
                setting = method.setting()
                label = f"default:{method.label}"
                on_search = self.evaluator.evaluate(
                    setting, cfg.seeds, label, study=method.label, role="default", trial=None
                )
                on_heldout = self.evaluator.evaluate(
                    setting, cfg.heldout_seeds, label, study=method.label, role="default-heldout", trial=None
                )
                entries.append(
                    self._entry(method, "default", setting, None, self._scored(on_search), self._scored(on_heldout))
                )
        return entries

    def _scored(self, rows: list[dict[str, Any]]) -> Score:
        return score_setting(self.plan.config.objective, rows, self._baseline_metrics())

    def _entry(
        self, method: Method, which: str, setting: dict[str, Any], trial: int | None, search: Score, heldout: Score
    ) -> dict[str, Any]:
        def part(s: Score) -> dict[str, Any]:
            return {
                "values": s.values,
                "constraints": s.constraints,
                "feasible": s.feasible,
                "metrics": s.metrics,
                "error": s.error,
            }

        return {
            "study": method.label,
            "method": method.name,
            "reference": method.reference,
            "setting": which,
            "trial": trial,
            "guider": setting,
            "search": part(search),
            "heldout": part(heldout),
        }

    # --- results --------------------------------------------------------------------------------------------

    def ranking(self, heldout: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The methods' tuned settings by their held-out objective (feasible first); one objective only."""
        objective = self.plan.config.objective
        if objective.pareto:
            return []
        sign = 1.0 if objective.dirs[0] == "minimize" else -1.0
        tuned = [e for e in heldout if e["setting"] == "tuned"]

        def key(e: dict[str, Any]) -> tuple[int, float]:
            held = e["heldout"]
            if held["values"] is None:
                return (2, math.inf)
            return (0 if held["feasible"] else 1, sign * held["values"][0])

        ordered = sorted(tuned, key=key)
        return [
            {
                "rank": i + 1,
                "study": e["study"],
                "heldout": e["heldout"]["values"][0] if e["heldout"]["values"] else None,
                "search": e["search"]["values"][0] if e["search"]["values"] else None,
                "heldout_feasible": e["heldout"]["feasible"],
                "guider": e["guider"],
            }
            for i, e in enumerate(ordered)
        ]

    def importances(self, label: str) -> tuple[dict[str, dict[str, float]], str | None]:
        """Optuna's fANOVA parameter importances per objective metric (seeded), or why there are none."""
        study = self.studies[label]
        complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
        if len(complete) < 2:
            return {}, "needs at least two complete trials"
        varying = [
            k
            for k in self.plan.methods[self._index(label)].search
            if len({repr(t.params.get(k)) for t in complete}) > 1
        ]
        if not varying:
            return {}, "no searched parameter varied"
        from optuna.importance import FanovaImportanceEvaluator, get_param_importances

        out = {}
        try:
            for i, metric in enumerate(self.plan.config.objective.names):
                values = get_param_importances(
                    study,
                    evaluator=FanovaImportanceEvaluator(seed=0),
                    params=varying,
                    target=lambda t, i=i: t.values[i],
                )
                out[metric] = {k: float(v) for k, v in values.items()}
        except (RuntimeError, ValueError) as err:
            return {}, f"Optuna could not compute them ({err})"
        return out, None

    def _index(self, label: str) -> int:
        return next(i for i, m in enumerate(self.plan.methods) if m.label == label)

    def write_summary(
        self,
        *,
        complete: bool,
        heldout: list[dict[str, Any]] | None = None,
        ranking: list[dict[str, Any]] | None = None,
        importances: dict[str, tuple[dict[str, dict[str, float]], str | None]] | None = None,
        best_study: str | None = None,
    ) -> dict[str, Any]:
        cfg = self.plan.config
        objective = cfg.objective
        studies = []
        for method in self.plan.methods:
            if method.label not in self.studies:
                continue
            records = self.records(method.label)
            best = best_trial(records, objective)
            front = pareto_front(records, objective.dirs) if objective.pareto else []
            imp, why = (importances or {}).get(method.label, ({}, None))
            studies.append(
                {
                    "label": method.label,
                    "method": method.name,
                    "params": method.params,
                    "search": {k: p.describe() for k, p in method.search.items()},
                    "reference": method.reference,
                    "defaults": method.setting(),
                    "trials": [dataclasses.asdict(r) | {"feasible": r.feasible} for r in records],
                    "best": None
                    if best is None
                    else {
                        "number": best.number,
                        "params": best.params,
                        "values": best.values,
                        "constraints": best.constraints,
                        "guider": method.setting(best.params),
                    },
                    "front": [t.number for t in front],
                    "stopped": self.stopped.get(method.label),
                    "importances": imp,
                    "importances_note": why,
                }
            )
        summary = {
            "kind": "guidelab-tune",
            "version": 1,
            "name": cfg.name,
            "complete": complete,
            "objective": {
                "metrics": objective.names,
                "directions": objective.dirs,
                "constraints": [c.describe(self._baseline_metrics()) for c in objective.constraints],
                "constraint_metrics": list(dict.fromkeys(c.metric for c in objective.constraints)),
                "pareto": objective.pareto,
                "text": objective.describe(self._baseline_metrics()),
            },
            "search_method": cfg.search_method,
            "budget": cfg.budget.model_dump(),
            "seeds": cfg.seeds,
            "heldout_seeds": cfg.heldout_seeds,
            "sampler_seed": cfg.sampler_seed,
            "baseline": self.baseline,
            "studies": studies,
            "heldout": heldout or [],
            "ranking": ranking or [],
            "best_study": best_study,
            "best_file": BEST_FILE if best_study else None,
        }
        write_json_atomic(self.out / SUMMARY_FILE, summary)
        return summary

    def write_best_files(self, heldout: list[dict[str, Any]], ranking: list[dict[str, Any]]) -> str | None:
        """``best-<label>.yaml`` per method with a best trial, and ``best.yaml``: the first method's (in a comparison
        of several without a single guider, the top-ranked one's). Returns the label behind ``best.yaml``."""
        cfg = self.plan.config
        by_label = {e["study"]: e for e in heldout if e["setting"] == "tuned"}
        for label, entry in by_label.items():
            write_text_atomic(self.out / f"best-{_file_part(label)}.yaml", self._guider_file(entry))
        primary = self.plan.primary.label
        if cfg.guider is None and ranking:
            primary = ranking[0]["study"]
        if primary not in by_label:
            return None
        write_text_atomic(self.out / BEST_FILE, self._guider_file(by_label[primary]))
        return primary

    def _guider_file(self, entry: dict[str, Any]) -> str:
        cfg = self.plan.config

        def values(part: dict[str, Any]) -> str:
            if part["values"] is None:
                return f"failed ({part['error']})"
            text = ", ".join(f"{m} {v:.6g}" for m, v in zip(cfg.objective.names, part["values"], strict=True))
            return text + ("" if part["feasible"] else " (constraints not met)")

        comment = [
            f"guidelab tune {cfg.name!r}: the best setting of {entry['study']} (trial {entry['trial']})",
            f"objective: {cfg.objective.describe(self._baseline_metrics())}",
            f"search seeds {cfg.seeds}: {values(entry['search'])}",
            f"held-out seeds {cfg.heldout_seeds}: {values(entry['heldout'])}",
        ]
        setting = {**entry["guider"], "label": f"tuned-{entry['study']}"}
        return guider_file_text(setting, comment)


def _file_part(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in label)


TUNE_EXECUTORS = ("local", "ray")  # a trial's runs in this process, or as Ray tasks


def run_tune(
    plan: TunePlan,
    out: str | Path,
    *,
    executor: str = "local",
    address: str | None = None,
    threads: int = 1,
    progress: bool = False,
    on_trial: Callable[[str, TrialRecord], None] | None = None,
) -> dict[str, Any]:
    """Tune every method of ``plan`` into ``out`` (created), resuming what is there; return the summary
    (``OUT/summary.json``).

    Args:
        executor: ``local`` (this process) or ``ray`` (each trial's runs as Ray tasks; ``address`` of an existing
            cluster, None for a local one).
        threads: torch threads of every run (the same count gives bitwise the same numbers in every mode).
        progress: show a bar per method (trials, the best value so far, the time left).
        on_trial: called with (method label, trial) after every trial this call runs.

    Raises:
        ValueError: a bad option, optuna missing, another process working in ``out``, a study in ``out`` made by
            another configuration, or a baseline that cannot be scored (each naming its field).
    """
    optuna = import_optuna()
    check_options(
        executor=executor, address=address, threads=threads, pipeline=plan.kind == "pipeline", executors=TUNE_EXECUTORS
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cluster = ray_cluster(address) if executor == "ray" else contextlib.nullcontext()
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with folder_lock(out), torch_threads(), cluster:
            store = ResultStore(out / RESULTS_FILE)
            evaluator = _Evaluator(plan, out, store, executor, address, threads)
            tuner = _Tuner(plan, out, evaluator, optuna, progress, on_trial)
            tuner.open_studies()
            write_json_atomic(out / CONFIG_FILE, tune_json(plan))
            tuner.run_baseline()
            for method in plan.methods:
                tuner.search(method)
            heldout = tuner.rescore()
            ranking = tuner.ranking(heldout)
            importances = {m.label: tuner.importances(m.label) for m in plan.methods}
            best_study = tuner.write_best_files(heldout, ranking)
            return tuner.write_summary(
                complete=True, heldout=heldout, ranking=ranking, importances=importances, best_study=best_study
            )
    finally:
        optuna.logging.set_verbosity(verbosity)
