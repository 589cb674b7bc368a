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

A sweep on a diffusers pipeline saved on disk replaces ``targets`` (and the path, grids, solvers, ``n`` and
``metrics`` of exact targets) by one ``pipeline`` block (:class:`PipelineSweep`)::

    name: cfg-vs-apg-on-sd
    pipeline:
      folder: models/sd-tiny              # save_pretrained output; never downloaded
      prompts: [a red bicycle, a bowl of fruit]
      n: 4                                # images per prompt, per run
      steps: 20                           # a list is an axis: [10, 20]
      metrics: [saturation, latent_rms, pixel_diversity, my_metrics:sharpness]
    guiders:
      - {name: cfg, params: {scale: [1, 3, 7.5]}}
      - {name: apg, params: {scale: [3, 7.5]}}
    seeds: [0]

Each run is one prompt (or DiT class label) × one guider setting × seed × solver × steps; its images go to
``OUT/runs/<hash>/`` (``grid.png`` and one PNG per image), its row to the same store.
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

from guidelab.experiments.model_runs import ReferenceSpec
from guidelab.grids import check_grid_params
from guidelab.recipe import TRAINED_KINDS, ModelSpec, SampleConfig
from guidelab.validation import did_you_mean, error_lines, under, yaml_problem

__all__ = [
    "GridSpec",
    "GuiderSweep",
    "PipelineRun",
    "PipelineRunSpec",
    "PipelineSweep",
    "RunSpec",
    "SweepConfig",
    "TargetSweep",
    "check_sweep",
    "load_sweep",
    "read_yaml_mapping",
    "run_hash",
]


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


IMAGE_METRICS_DEFAULT = ("saturation", "latent_rms", "pixel_diversity")


class PipelineSweep(BaseModel):
    """The ``pipeline`` block of a sweep on a diffusers pipeline saved on disk (``save_pretrained``).

    ``prompts`` (text-to-image pipelines) or ``class_labels`` (DiT: ids, or names of its ``id2label``) are the
    conditions, one run each; ``steps`` and ``solver`` may be lists (sweep axes). ``negative_prompt`` is one string
    for every prompt or a list of one per prompt (not an axis). ``solver`` None is the one that matches the
    scheduler; ``grid`` ``scheduler`` is its own times (else a guidelab grid kind with ``grid_params``).
    ``metrics`` are built-in image measures or ``"module.path:function"``
    (:mod:`guidelab.experiments.image_measures`). ``device``, ``max_batch`` change how a run is computed, not what,
    and are not part of a run's identity. The folder, conditions, solvers, grid and metrics are checked against
    the saved pipeline by :func:`load_sweep`.
    """

    model_config = ConfigDict(extra="forbid")

    folder: str = Field(description="a pipeline saved with save_pretrained (relative to the current folder)")
    prompts: list[str] | None = Field(None, min_length=1)
    negative_prompt: str | list[str] | None = None
    class_labels: list[int | str] | None = Field(None, min_length=1)
    n: int = Field(4, ge=1, description="images per condition per run")
    steps: int | list[int] = 20
    solver: str | list[str] | None = None
    grid: str = "scheduler"
    grid_params: dict[str, float] = Field(default_factory=dict)
    height: int | None = Field(None, ge=8)
    width: int | None = Field(None, ge=8)
    dtype: str = "float32"
    device: str = "cpu"
    max_batch: int | None = Field(None, ge=1)
    metrics: list[str] = Field(default_factory=lambda: list(IMAGE_METRICS_DEFAULT))

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: int | list[int]) -> int | list[int]:
        values = v if isinstance(v, list) else [v]
        if not values or any(s < 1 for s in values):
            raise ValueError(f"steps: every value must be ≥ 1 (a list is an axis), got {v}")
        return v

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, v: str) -> str:
        if v not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"unknown dtype {v!r}{did_you_mean(v, ('float32', 'float16', 'bfloat16'))}")
        return v

    def axis(self, name: str) -> list[Any]:
        """The values of ``steps`` or ``solver`` as a list (one value is a one-item axis)."""
        value = getattr(self, name)
        return value if isinstance(value, list) else [value]

    def conditions(self) -> list[tuple[str | None, str | None, int | None, str]]:
        """``(prompt, negative prompt, class id, condition text)`` of each condition, in order; class names are
        read from the saved pipeline's ``id2label``.

        Raises:
            ValueError: naming ``pipeline.prompts``/``class_labels``/``negative_prompt`` where they do not fit.
        """
        if self.prompts is not None and self.class_labels is not None:
            raise ValueError("pipeline.class_labels: give prompts (text-to-image) or class_labels (DiT), not both")
        if self.prompts is not None:
            negatives = self.negative_prompt
            if isinstance(negatives, list) and len(negatives) != len(self.prompts):
                raise ValueError(
                    f"pipeline.negative_prompt: give one for every prompt or a list of {len(self.prompts)} "
                    f"(one per prompt), got {len(negatives)}"
                )
            per = negatives if isinstance(negatives, list) else [negatives] * len(self.prompts)
            return [(p, neg, None, p) for p, neg in zip(self.prompts, per, strict=True)]
        if self.class_labels is None:
            raise ValueError("pipeline.prompts: give prompts (text-to-image) or class_labels (DiT)")
        if self.negative_prompt is not None:
            raise ValueError("pipeline.negative_prompt: a class-conditional pipeline (DiT) takes no prompts")
        out: list[tuple[str | None, str | None, int | None, str]] = []
        names = None
        for label in self.class_labels:
            if isinstance(label, str) and not label.strip().isdigit():
                if names is None:
                    from guidelab.pipelines import inspect_pipeline

                    names = inspect_pipeline(self.folder).class_ids
                if label.strip() not in names:
                    known = ", ".join(list(names)[:8]) + (", …" if len(names) > 8 else "")
                    raise ValueError(
                        f"pipeline.class_labels: unknown class name {label!r}"
                        + (f"; the pipeline names: {known}" if names else "; the pipeline names no classes (id2label)")
                    )
                out.append((None, None, names[label.strip()], label.strip()))
            else:
                out.append((None, None, int(label), str(int(label))))
        return out


_NOT_WITH_PIPELINE = {
    "fkc": "FKC runs in guidelab's own sampler (exact targets, trained models), not in a pipeline's loop",
    "targets": "a pipeline sweep samples the pipeline's model; give targets or a pipeline block, not both",
    "paths": "a pipeline sweep takes its path from the pipeline's scheduler",
    "grids": "a pipeline sweep sets its grid in pipeline.grid and pipeline.steps",
    "solvers": "a pipeline sweep sets its solver in pipeline.solver",
    "n": "a pipeline sweep sets the images per run in pipeline.n",
    "metrics": "a pipeline sweep sets its metrics in pipeline.metrics",
    "reference_n": "a pipeline has no exact reference samples",
    "model": "a pipeline sweep's model is the pipeline's",
    "models": "guide models are not supported on pipelines",
    "save_samples": "a pipeline sweep always saves its images",
    "dtype": "a pipeline sweep sets its dtype in pipeline.dtype",
    "reference": "a pipeline sweep has no reference data",
}

_NOT_WITH_TRAINED = {
    "targets": "a trained model samples its own data; name its real data in reference, not targets",
    "paths": "a trained model brings its own path",
    "reference_n": "the reference is the held-out data named in reference",
    "pipeline": "give a pipeline block or a trained model, not both",
}


class SweepConfig(BaseModel):
    """A sweep: the cartesian product of its lists, on exact ``targets`` or on a diffusers ``pipeline``."""

    model_config = ConfigDict(extra="forbid")

    name: str = "sweep"
    pipeline: PipelineSweep | None = Field(None, description="a diffusers pipeline saved on disk, instead of targets")
    targets: list[TargetSweep] = Field(default_factory=list)
    paths: list[str] = Field(default_factory=lambda: ["rf"], min_length=1)
    grids: list[GridSpec] = Field(default_factory=lambda: [GridSpec()], min_length=1)
    solvers: list[str] = Field(default_factory=lambda: ["euler"], min_length=1)
    eta: float | None = Field(None, ge=0, le=1, description="churn of the solvers that have one (ddim, ancestral)")
    fkc: dict[str, Any] | None = Field(
        None, description="Feynman–Kac correctors for every run (guidelab.fkc.FKCConfig fields; {} for the defaults)"
    )
    guiders: list[GuiderSweep] = Field(min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    n: int = Field(1000, ge=2)
    dtype: str = "float32"
    metrics: list[str] = Field(default_factory=lambda: ["energy_distance", "class_fidelity"])
    reference_n: int | None = Field(None, ge=2, description="exact samples per condition for the distances")
    model: ModelSpec = Field(default_factory=ModelSpec, description="the main denoiser of every run")
    models: dict[str, ModelSpec] = Field(default_factory=dict, description="named guide models (weak-model)")
    reference: ReferenceSpec | None = Field(None, description="a trained model's real data, instead of targets")
    save_samples: bool = True

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, v: list[str]) -> list[str]:
        from guidelab.experiments.measures import MEASURES
        from guidelab.metrics.images import IMAGE_METRICS

        for name in v:
            if name not in MEASURES and name not in IMAGE_METRICS:
                listed = f"{', '.join(MEASURES)} (exact targets); {', '.join(IMAGE_METRICS)} (trained models)"
                raise ValueError(f"unknown metric {name!r}{did_you_mean(name, [*MEASURES, *IMAGE_METRICS], listed)}")
        return v

    @model_validator(mode="after")
    def _metrics(self) -> SweepConfig:
        from guidelab.experiments.measures import MEASURES
        from guidelab.metrics.images import IMAGE_METRICS

        if self.model.trained and "metrics" not in self.model_fields_set:
            self.metrics = list(IMAGE_METRICS)
        accepted = IMAGE_METRICS if self.model.trained else MEASURES
        for name in self.metrics:
            if name not in accepted:
                of = "a trained model's images" if self.model.trained else "an exact target"
                raise ValueError(f"metrics: unknown metric {name!r} of {of}{did_you_mean(name, accepted)}")
        return self

    @model_validator(mode="after")
    def _one_kind(self) -> SweepConfig:
        if self.model.trained:
            wrong = [
                f"{key}: {why}"
                for key, why in _NOT_WITH_TRAINED.items()
                if key in self.model_fields_set and getattr(self, key)
            ]
            if self.reference is None:
                wrong.append("reference: a sweep on a trained model needs one: {dataset: digits} or {samples: x.npz}")
            if wrong:
                raise ValueError("\n".join(wrong))
            return self
        if self.reference is not None:
            raise ValueError(
                "reference: only a sweep on a trained model has one (model kind checkpoint, shipped, python)"
            )
        if self.pipeline is None:
            if not self.targets:
                raise ValueError("targets: give at least one target, or a pipeline block (a sweep on a pipeline)")
            return self
        unused = [f"{key}: {why}" for key, why in _NOT_WITH_PIPELINE.items() if key in self.model_fields_set]
        if unused:
            raise ValueError("\n".join(unused))
        return self

    def runs(self) -> list[RunSpec] | list[PipelineRunSpec]:
        """All runs, in a stable order (:class:`PipelineRunSpec` for a sweep on a pipeline)."""
        if self.pipeline is not None:
            return self._pipeline_runs()
        if self.model.trained:
            return self._trained_runs()
        out = []
        for tgt, path, grid, solver, guider, seed in itertools.product(
            self.targets, self.paths, self.grids, self.solvers, self.guiders, self.seeds
        ):
            for cond in tgt.conds:
                for params in guider.expand():
                    sample = self._sample(grid, solver, guider, params, seed, target=tgt.target, cond=cond, path=path)
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

    def _sample(
        self, grid: GridSpec, solver: str, guider: GuiderSweep, params: dict[str, Any], seed: int, **where: Any
    ) -> SampleConfig:
        """One run's sampling settings: the sweep's grid, solver, guider setting and seed, sampling ``where``
        (target, condition and path; or, for a trained model, the condition)."""
        from guidelab.sampling import ETA_SOLVERS

        return SampleConfig(
            **where,
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
            fkc=self.fkc,
        )

    def _trained_runs(self) -> list[RunSpec]:
        from guidelab.models.trained import class_names

        assert self.reference is not None
        conds = self.reference.conds or list(class_names(self.model.load()))
        digest = self.model.digest()
        out = []
        for grid, solver, guider, seed in itertools.product(self.grids, self.solvers, self.guiders, self.seeds):
            for cond in conds:
                for params in guider.expand():
                    sample = self._sample(grid, solver, guider, params, seed, cond=cond)
                    out.append(
                        RunSpec(
                            sample,
                            tuple(self.metrics),
                            guider.label or guider.name,
                            None,
                            self.save_samples,
                            self.name,
                            self.reference,
                            digest,
                        )
                    )
        return out

    def _pipeline_runs(self) -> list[PipelineRunSpec]:
        from guidelab.pipelines import inspect_pipeline
        from guidelab.sampling import ETA_SOLVERS

        p = self.pipeline
        assert p is not None
        folder = str(Path(p.folder).expanduser().resolve())
        conditions = p.conditions()
        matching = inspect_pipeline(folder).solver  # the scheduler's own solver, where none is named
        solvers = [s or matching for s in p.axis("solver")]
        out = []
        for steps, solver, guider, seed in itertools.product(p.axis("steps"), solvers, self.guiders, self.seeds):
            for prompt, negative, label, text in conditions:
                for params in guider.expand():
                    run = PipelineRun(
                        pipeline=folder,
                        prompt=prompt,
                        negative_prompt=negative,
                        class_label=label,
                        cond=text,
                        guider=guider.name,
                        params=params,
                        solver=solver,
                        steps=steps,
                        grid=p.grid,
                        grid_params=p.grid_params,
                        eta=self.eta if solver in ETA_SOLVERS else None,
                        n=p.n,
                        seed=seed,
                        height=p.height,
                        width=p.width,
                        dtype=p.dtype,
                    )
                    out.append(PipelineRunSpec(run, tuple(p.metrics), guider.label or guider.name, self.name))
        return out


class PipelineRun(BaseModel):
    """One run on a pipeline: what :func:`~guidelab.pipelines.generate` is called with, for one condition.

    ``pipeline`` is the folder's absolute path; ``cond`` the condition as the report shows it (the prompt, or the
    class label as given); ``solver`` is resolved (the scheduler's match where the sweep names none); ``eta`` is
    None where the solver has no churn.
    """

    model_config = ConfigDict(extra="forbid")

    pipeline: str
    prompt: str | None = None
    negative_prompt: str | None = None
    class_label: int | None = None
    cond: str
    guider: str
    params: dict[str, Any] = Field(default_factory=dict)
    solver: str
    steps: int = Field(20, ge=1)
    grid: str = "scheduler"
    grid_params: dict[str, float] = Field(default_factory=dict)
    eta: float | None = Field(None, ge=0, le=1)
    n: int = Field(4, ge=1)
    seed: int = Field(0, ge=0)
    height: int | None = None
    width: int | None = None
    dtype: str = "float32"


@dataclass(frozen=True)
class PipelineRunSpec:
    """One run of a sweep on a pipeline: what to generate, what to measure (metric specs as written)."""

    run: PipelineRun
    metrics: tuple[str, ...]
    label: str
    sweep: str = "sweep"

    @property
    def hash(self) -> str:
        """A stable 16-hex-digit hash of everything that determines the run's images and numbers."""
        blob = json.dumps(
            {"pipeline_run": self.run.model_dump(), "metrics": sorted(self.metrics)}, sort_keys=True, default=str
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: what to sample, what to measure."""

    sample: SampleConfig
    metrics: tuple[str, ...]
    label: str
    reference_n: int | None = None
    save_samples: bool = True
    sweep: str = "sweep"
    reference: ReferenceSpec | None = None  # a trained model's real data
    model_digest: str | None = None  # a trained model's weights, so new weights are new runs

    @property
    def hash(self) -> str:
        if self.reference is None:
            return run_hash(self.sample, self.metrics, self.reference_n)
        extra = {"reference": self.reference.model_dump(), "model_digest": self.model_digest}
        return run_hash(self.sample, self.metrics, self.reference_n, extra)


def run_hash(
    sample: SampleConfig, metrics: tuple[str, ...], reference_n: int | None, extra: dict[str, Any] | None = None
) -> str:
    """A stable 16-hex-digit hash of everything that determines a run's numbers."""
    dump = sample.model_dump()
    if dump.get("fkc") is None:
        dump.pop("fkc", None)  # runs without FKC keep the hashes they had before the field existed
    blob = json.dumps(
        {"sample": dump, "metrics": sorted(metrics), "reference_n": reference_n, **(extra or {})},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_yaml_mapping(path: str | Path, what: str = "sweep file") -> dict[str, Any]:
    """The mapping a YAML file holds; a ValueError naming ``config`` where it is missing, a folder, not text, not
    YAML or not a mapping."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"config: no such file {str(path)!r}")
    if path.is_dir():
        raise ValueError(f"config: {str(path)!r} is a folder; give the {what} (YAML)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"config: {path} is not valid YAML: {yaml_problem(err)}") from None
    except UnicodeDecodeError:
        raise ValueError(f"config: {path} is not a text file (not UTF-8); a {what} is YAML") from None
    if not isinstance(data, dict):
        raise ValueError(f"config: {path} must hold a mapping at the top level")
    return data


def load_sweep(path: str | Path, extra_guiders: list[dict[str, Any]] | None = None) -> SweepConfig:
    """Read and validate a sweep file; every mistake is reported as one ``field: message`` line.

    Beyond the schema, every run's target, condition, path parameters, grid and guider are built once so
    that an unknown guider, a bad parameter or a missing target file fails here, before anything runs. A
    pipeline sweep is checked against the saved pipeline's files (its networks are not loaded) and its metric
    functions are imported. ``extra_guiders`` (``{name, params, label}`` blocks, e.g. guider files) are added
    after the file's own guiders.
    """
    data = read_yaml_mapping(path)
    if extra_guiders:
        own = data.get("guiders")
        data = {**data, "guiders": (own if isinstance(own, list) else []) + list(extra_guiders)}
    return check_sweep(data)


def check_sweep(data: dict[str, Any]) -> SweepConfig:
    """Validate a sweep given as a mapping (what :func:`load_sweep` reads), building what it names; a ValueError
    of one ``field: message`` line per mistake."""
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


def _check_pipeline(data: dict[str, Any]) -> list[str]:
    """Check a pipeline sweep against its saved pipeline, without loading a network: the folder, the kind of
    conditions it takes (and a DiT's class ids), solvers, grid, metrics (imported) and guiders; one line per
    mistake."""
    from guidelab.experiments.image_measures import resolve_image_metrics
    from guidelab.guiders import build_guider
    from guidelab.pipelines import check_grid_choice, inspect_pipeline
    from guidelab.sampling import SOLVERS

    errors: list[str] = []
    block = data.get("pipeline")
    if not isinstance(block, dict):
        return errors  # reported by the schema
    try:
        spec: PipelineSweep | None = PipelineSweep.model_validate(block)
    except ValidationError:
        spec = None  # reported by the schema; what does not need it is still checked
    info = None
    if isinstance(block.get("folder"), str):
        try:
            info = inspect_pipeline(block["folder"])
        except ValueError as err:
            errors.append(f"pipeline.folder: {str(err).removeprefix('pipeline: ')}")
    if info is not None and spec is not None:
        where = f"{block['folder']!r} holds a {info.class_name}"
        if info.conditioning == "class" and spec.prompts is not None:
            errors.append(f"pipeline.prompts: {where}, which is class-conditional; give class_labels, not prompts")
        elif info.conditioning == "text" and spec.class_labels is not None:
            errors.append(f"pipeline.class_labels: {where}, which is text-to-image; give prompts, not class_labels")
        elif spec.prompts is None and spec.class_labels is None:
            field = "class_labels" if info.conditioning == "class" else "prompts"
            errors.append(f"pipeline.{field}: {where}; give the {field.replace('_', ' ')} to sample")
        else:
            try:
                conditions = spec.conditions()
            except ValueError as err:
                errors.append(str(err))
            else:
                limit = info.num_classes
                bad = [c for _, _, c, _ in conditions if c is not None and (c < 0 or (limit and c >= limit))]
                if bad:
                    errors.append(f"pipeline.class_labels: {bad} outside 0 … {(limit or 1) - 1} (the model's classes)")
    if spec is not None:
        errors += _check_device(spec.device, spec.dtype)
        for solver in spec.axis("solver"):
            if solver is not None and solver not in SOLVERS:
                errors.append(f"pipeline.solver: unknown solver {solver!r}{did_you_mean(solver, SOLVERS)}")
        try:
            check_grid_choice(spec.grid, spec.grid_params)
        except ValueError as err:
            errors.append(f"pipeline.{err}")
        try:
            resolve_image_metrics(spec.metrics)
        except ValueError as err:
            errors += [f"pipeline.{line}" for line in str(err).splitlines()]
    for i, guider in enumerate(data.get("guiders") or [] if isinstance(data.get("guiders"), list) else []):
        try:
            sweep = GuiderSweep.model_validate(guider)
        except ValidationError:
            continue  # reported by the schema
        for params in sweep.expand():
            try:
                build_guider(sweep.name, **params)
            except ValueError as err:
                errors.append(under(f"guiders[{i}]", err))
                break
    return errors


def _check_device(device: str, dtype: str) -> list[str]:
    """The pipeline's device exists here and can hold ``dtype``; one line per mistake."""
    import torch

    try:
        where = torch.device(device)
    except (RuntimeError, ValueError) as err:
        return [f"pipeline.device: unknown device {device!r} ({str(err).splitlines()[0]})"]
    if where.type == "cuda" and not torch.cuda.is_available():
        return [f"pipeline.device: {device!r} but torch sees no CUDA device here"]
    if where.type == "mps" and not torch.backends.mps.is_available():
        return [f"pipeline.device: {device!r} but torch sees no MPS device here"]
    if where.type == "cpu" and dtype != "float32":
        return [f"pipeline.dtype: {dtype} needs a GPU (pipeline.device: cuda); on the CPU use float32"]
    return []


def _check_buildable(data: dict[str, Any]) -> list[str]:
    """Build every target, condition, grid, solver and guider the raw config names; one line per mistake."""
    if "pipeline" in data:
        return _check_pipeline(data)
    if isinstance(data.get("model"), dict) and data["model"].get("kind") in TRAINED_KINDS:
        return _check_trained(data)
    from guidelab.grids import make_grid
    from guidelab.guiders import build_guider
    from guidelab.guiders.registry import GUIDERS, guider_accepts
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
            errors.append(under(f"targets[{i}].target", err))
            continue
        for cond in tgt.get("conds", ["0"]) if isinstance(tgt.get("conds", ["0"]), list) else []:
            try:
                target.class_index(str(cond))
            except ValueError as err:
                errors.append(under(f"targets[{i}].conds", err))
    paths = []
    for i, name in items("paths"):
        try:
            path = get_path(str(name))
        except ValueError as err:
            errors.append(under(f"paths[{i}]", err))
            continue
        paths.append(path)
        for j, grid in items("grids"):
            try:
                spec = GridSpec.model_validate(grid)
                make_grid(spec.kind, spec.steps, path, t_min=spec.t_min, t_max=spec.t_max, **spec.params)
            except ValidationError:
                pass  # reported by the schema
            except (ValueError, TypeError) as err:
                errors.append(under(f"grids[{j}]", err))
    for i, solver in items("solvers"):
        if solver not in SOLVERS:
            errors.append(f"solvers[{i}]: unknown solver {solver!r}{did_you_mean(solver, SOLVERS)}")
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
        unbuildable = not models_ok or (specs and first_target is None)  # no target: reported already
        if unbuildable and sweep.name in GUIDERS and guider_accepts(sweep.name, "models"):
            continue  # its guide models cannot be built here, so they are not checked
        message = None
        for params, path in itertools.product(sweep.expand(), paths or [None]):
            try:
                if first_target is None or path is None:
                    build_guider(sweep.name, **params)  # no target or path to build guide models on
                else:
                    build_run_guider(sweep.name, params, specs, first_target, path)
            except ValueError as err:
                message = under(f"guiders[{i}]", err)
                break
        if message:
            errors.append(message)
    return errors


def _check_trained(data: dict[str, Any]) -> list[str]:
    """Load a sweep's trained model and check its reference, classes, grids, solvers and guiders against it."""
    from guidelab.experiments.model_runs import check_reference
    from guidelab.grids import make_grid
    from guidelab.models.trained import class_names, sample_shape
    from guidelab.recipe import build_run_guider, class_of
    from guidelab.sampling import SOLVERS

    try:
        spec = ModelSpec.model_validate(data["model"])
        model = spec.load()
    except ValidationError:
        return []  # reported by the schema
    except (ValueError, FileNotFoundError) as err:
        return [str(err) if str(err).startswith("model") else f"model: {err}"]
    errors: list[str] = []
    try:
        reference = ReferenceSpec.model_validate(data.get("reference") or {})
        check_reference(reference, sample_shape(model))
        if reference.dataset is not None:
            from guidelab.data import load_dataset

            theirs, ours = load_dataset(reference.dataset, "val").class_names, class_names(model)
            if tuple(ours) != tuple(theirs):  # e.g. a --one-vs-rest model: its label 1 is not the digit 1
                raise ValueError(
                    f"reference.dataset: the model's classes ({', '.join(ours)}) are not those of "
                    f"{reference.dataset} ({', '.join(theirs)}); measure it against reference.samples, a .npz "
                    "labelled with the model's own classes"
                )
        for cond in reference.conds or []:
            try:
                class_of(class_names(model), cond)
            except ValueError as err:
                errors.append(under("reference.conds", err))
    except ValidationError:
        pass  # reported by the schema
    except (ValueError, FileNotFoundError) as err:
        errors.append(str(err) if str(err).startswith("reference") else f"reference: {err}")
    for j, grid in enumerate(data.get("grids") or [{}]):
        try:
            g = GridSpec.model_validate(grid)
            make_grid(g.kind, g.steps, model.path, t_min=g.t_min, t_max=g.t_max, **g.params)
        except ValidationError:
            pass
        except (ValueError, TypeError) as err:
            errors.append(under(f"grids[{j}]", err))
    for i, solver in enumerate(data.get("solvers") or []):
        if solver not in SOLVERS:
            errors.append(f"solvers[{i}]: unknown solver {solver!r}{did_you_mean(solver, SOLVERS)}")
    try:
        specs = {k: ModelSpec.model_validate(v) for k, v in dict(data.get("models") or {}).items()}
    except (ValidationError, TypeError, ValueError):
        return errors
    for i, guider in enumerate(data.get("guiders") or []):
        try:
            sweep = GuiderSweep.model_validate(guider)
        except ValidationError:
            continue
        for params in sweep.expand():
            try:
                build_run_guider(sweep.name, params, specs, None, model.path)
            except ValueError as err:
                errors.append(under(f"guiders[{i}]", err))
                break
    return errors
