"""Sweep configuration: a YAML file that declares targets × conditions × paths × grids × solvers × guiders
(with parameter grids) × seeds, and the metrics to compute. Validated before anything runs.

Example::

    name: cfg-vs-adamag
    targets:
      - {target: multimodal-2d, conds: [a]}
    paths: [rf]
    grids: [{kind: uniform, steps: 64}]
    solvers: [heun]
    guiders:
      - {name: cfg, params: {scale: [1, 2, 4, 8]}}          # a list sweeps over its items
      - {name: adamag, params: {scale: [2, 4], beta: 0.1}}
    seeds: [0, 1]
    n: 2000
    metrics: [energy_distance, class_fidelity, mode_weights]

A list value in ``params`` is a sweep axis; to pass a list itself (a per-sample scale) wrap it once more:
``scale: [[1, 2, 3]]``. The schedule may be a nested block, ``schedule: {name: tv-cfg, scale: [3, 6]}``, whose
lists are axes too; the flat form (``schedule: tv-cfg`` beside ``scale``) is the same sweep.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from guidelab.grids import check_grid_params
from guidelab.recipe import ModelSpec, SampleConfig
from guidelab.validation import error_lines

__all__ = ["GridSpec", "GuiderSweep", "RunSpec", "SweepConfig", "TargetSweep", "load_sweep", "run_hash"]


class TargetSweep(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str
    conds: list[str] = Field(default_factory=lambda: ["0"], min_length=1)

    @field_validator("conds", mode="before")
    @classmethod
    def _conds(cls, v: Any) -> Any:
        return [str(c) for c in v] if isinstance(v, list) else v


class GridSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str = "uniform"
    steps: int = Field(50, ge=1)
    t_min: float | None = Field(None, gt=0, le=1)
    t_max: float = Field(1.0, gt=0, le=1)
    params: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _params_used(self) -> GridSpec:
        check_grid_params(self.kind, self.params)
        return self


class GuiderSweep(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    label: str | None = None

    def expand(self) -> list[dict[str, Any]]:
        """Every combination of the list-valued parameters, those inside a nested ``schedule`` block included."""
        return _expand(self.params, nested=True)


def _expand(params: dict[str, Any], nested: bool) -> list[dict[str, Any]]:
    """The cartesian product of ``params``' list values (a list is an axis; wrap a list once to pass it as a
    value); with ``nested``, a dict value (a schedule block) is expanded the same way, one level deep."""
    keys = list(params)
    axes = [
        _expand(v, nested=False) if nested and isinstance(v, dict) else v if isinstance(v, list) else [v]
        for v in params.values()
    ]
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*axes)]


class SweepConfig(BaseModel):
    """A sweep: the cartesian product of its lists."""

    model_config = ConfigDict(extra="forbid")

    name: str = "sweep"
    targets: list[TargetSweep] = Field(min_length=1)
    paths: list[str] = Field(default_factory=lambda: ["rf"], min_length=1)
    grids: list[GridSpec] = Field(default_factory=lambda: [GridSpec()], min_length=1)
    solvers: list[str] = Field(default_factory=lambda: ["euler"], min_length=1)
    eta: float | None = Field(None, ge=0, le=1, description="churn of the solvers that have one (ddim, ancestral)")
    guiders: list[GuiderSweep] = Field(min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    n: int = Field(1000, ge=2)
    dtype: str = "float32"
    metrics: list[str] = Field(default_factory=lambda: ["energy_distance", "class_fidelity"])
    reference_n: int | None = Field(None, ge=2, description="exact samples per condition for the distances")
    model: ModelSpec = Field(default_factory=ModelSpec, description="the main denoiser of every run")
    models: dict[str, ModelSpec] = Field(default_factory=dict, description="named guide models (weak-model)")
    save_samples: bool = True

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, v: list[str]) -> list[str]:
        from guidelab.experiments.measures import MEASURES

        for name in v:
            if name not in MEASURES:
                raise ValueError(f"unknown metric {name!r}; accepted: {', '.join(MEASURES)}")
        return v

    def runs(self) -> list[RunSpec]:
        """All runs, in a stable order."""
        from guidelab.sampling import ETA_SOLVERS

        out = []
        for tgt, path, grid, solver, guider, seed in itertools.product(
            self.targets, self.paths, self.grids, self.solvers, self.guiders, self.seeds
        ):
            for cond in tgt.conds:
                for params in guider.expand():
                    sample = SampleConfig(
                        target=tgt.target,
                        cond=cond,
                        path=path,
                        grid=grid.kind,
                        steps=grid.steps,
                        t_min=grid.t_min,
                        t_max=grid.t_max,
                        grid_params=grid.params,
                        solver=solver,
                        eta=self.eta if solver in ETA_SOLVERS else None,
                        guider=guider.name,
                        params=params,
                        n=self.n,
                        seed=seed,
                        dtype=self.dtype,
                        model=self.model,
                        models=self.models,
                    )
                    out.append(
                        RunSpec(
                            sample,
                            tuple(self.metrics),
                            guider.label or guider.name,
                            self.reference_n,
                            self.save_samples,
                            self.name,
                        )
                    )
        return out


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: what to sample, what to measure."""

    sample: SampleConfig
    metrics: tuple[str, ...]
    label: str
    reference_n: int | None = None
    save_samples: bool = True
    sweep: str = "sweep"

    @property
    def hash(self) -> str:
        return run_hash(self.sample, self.metrics, self.reference_n)


def run_hash(sample: SampleConfig, metrics: tuple[str, ...], reference_n: int | None) -> str:
    """A stable 16-hex-digit hash of everything that determines a run's numbers."""
    blob = json.dumps(
        {"sample": sample.model_dump(), "metrics": sorted(metrics), "reference_n": reference_n},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_sweep(path: str | Path) -> SweepConfig:
    """Read and validate a sweep file; every mistake is reported as one ``field: message`` line.

    Beyond the schema, every run's target, condition, path parameters, grid and guider are built once so
    that an unknown guider, a bad parameter or a missing target file fails here, before anything runs.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"config: no such file {str(path)!r}")
    if path.is_dir():
        raise ValueError(f"config: {str(path)!r} is a folder; give the sweep file (YAML)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"config: {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    except UnicodeDecodeError:
        raise ValueError(f"config: {path} is not a text file (not UTF-8); a sweep file is YAML") from None
    if not isinstance(data, dict):
        raise ValueError(f"config: {path} must hold a mapping at the top level")
    errors: list[str] = []
    config = None
    try:
        config = SweepConfig.model_validate(data)
    except ValidationError as err:
        errors += error_lines(err)
    errors += _check_buildable(data)
    if errors:
        raise ValueError("\n".join(dict.fromkeys(errors)))
    assert config is not None
    return config


def _check_buildable(data: dict[str, Any]) -> list[str]:
    """Build every target, condition, grid, solver and guider the raw config names; one line per mistake."""
    from guidelab.grids import make_grid
    from guidelab.guiders import build_guider
    from guidelab.guiders.registry import guider_accepts
    from guidelab.paths import get_path
    from guidelab.recipe import build_run_guider
    from guidelab.sampling import SOLVERS
    from guidelab.targets import get_target

    defaults: dict[str, Any] = {"paths": ["rf"], "grids": [{}], "solvers": ["euler"]}

    def items(key: str) -> list[tuple[int, Any]]:
        value = data.get(key, defaults.get(key))
        return list(enumerate(value)) if isinstance(value, list) else []

    errors: list[str] = []
    first_target = None
    for i, tgt in items("targets"):
        if not isinstance(tgt, dict) or not isinstance(tgt.get("target"), str):
            continue
        try:
            target = get_target(tgt["target"])
            first_target = first_target or target
        except ValueError as err:
            errors.append(f"targets[{i}].target: {err}")
            continue
        for cond in tgt.get("conds", ["0"]) if isinstance(tgt.get("conds", ["0"]), list) else []:
            try:
                target.class_index(str(cond))
            except ValueError as err:
                errors.append(f"targets[{i}].conds: {err}")
    paths = []
    for i, name in items("paths"):
        try:
            path = get_path(str(name))
        except ValueError as err:
            errors.append(f"paths[{i}]: {err}")
            continue
        paths.append(path)
        for j, grid in items("grids"):
            try:
                spec = GridSpec.model_validate(grid)
                make_grid(spec.kind, spec.steps, path, t_min=spec.t_min, t_max=spec.t_max, **spec.params)
            except ValidationError:
                pass  # reported by the schema
            except (ValueError, TypeError) as err:
                errors.append(f"grids[{j}]: {err}")
    for i, solver in items("solvers"):
        if solver not in SOLVERS:
            errors.append(f"solvers[{i}]: unknown solver {solver!r}; accepted: {', '.join(SOLVERS)}")
    specs: dict[str, ModelSpec] = {}
    models_ok = True
    if "models" in data:
        try:
            specs = {k: ModelSpec.model_validate(v) for k, v in dict(data["models"]).items()}
        except (ValidationError, TypeError, ValueError):
            models_ok = False  # reported by the schema; guiders that name models are not checked against it
    for i, guider in items("guiders"):
        try:
            sweep = GuiderSweep.model_validate(guider)
        except ValidationError:
            continue  # reported by the schema
        if not models_ok and guider_accepts(sweep.name, "models"):
            continue
        message = None
        for params, path in itertools.product(sweep.expand(), paths or [None]):
            try:
                if first_target is None or path is None:
                    build_guider(sweep.name, **params)  # no target or path to build guide models on
                else:
                    build_run_guider(sweep.name, params, specs, first_target, path)
            except ValueError as err:
                message = f"guiders[{i}]: {err}"
                break
        if message:
            errors.append(message)
    return errors
