"""One sampling run as plain, validated configuration: target, condition, path, grid, solver, guider.

:class:`SampleConfig` is what the ``guidelab sample`` command, sweeps and reproductions share; every
field is checked before anything runs, and :func:`run_sample` resolves it and samples. The resolved
configuration (``resolved``) is written beside results so a run can be repeated exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from guidelab import __version__
from guidelab.denoiser import NULL_COND, Denoiser
from guidelab.grids import GRIDS, check_grid_params, make_grid
from guidelab.guiders import Guider, build_guider
from guidelab.guiders.registry import guider_accepts
from guidelab.paths import PATHS, NoisePath, get_path
from guidelab.sampling import SOLVERS, SampleResult, sample
from guidelab.targets import Target, get_target
from guidelab.validation import DTYPES, error_lines

__all__ = [
    "ModelSpec",
    "SampleConfig",
    "SampleOutcome",
    "build_run_guider",
    "check_memory",
    "config_error_message",
    "effective_scale",
    "resolve",
    "run_sample",
]


class ModelSpec(BaseModel):
    """A denoiser for the target: the exact one, or the exact one with a seeded score error of size δ
    (an imperfect model, e.g. a weaker guide for autoguidance; see ``ScoreErrorDenoiser``)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["exact", "score-error"] = "exact"
    delta: float = Field(0.0, ge=0)
    seed: int = Field(0, ge=0)
    frequency_scale: float = Field(1.0, gt=0)
    error_space: Literal["score", "x0"] = "score"

    def build(self, target: Target, path: NoisePath) -> Denoiser:
        exact = target.denoiser(path)
        if self.kind == "exact":
            return exact
        from guidelab.targets import ScoreErrorDenoiser

        return ScoreErrorDenoiser(
            exact, self.delta, seed=self.seed, frequency_scale=self.frequency_scale, error_space=self.error_space
        )


class SampleConfig(BaseModel):
    """A fully specified sampling run (all fields validated on construction)."""

    model_config = ConfigDict(extra="forbid")

    target: str = Field(description="built-in target name or a YAML/JSON target file")
    cond: str = Field("0", description="class name or index; 'null' for the unconditional model")
    path: str = "rf"
    path_params: dict[str, float] = Field(default_factory=dict)
    grid: str = "uniform"
    steps: int = Field(50, ge=1)
    t_min: float | None = Field(None, gt=0, le=1)
    t_max: float = Field(1.0, gt=0, le=1)
    grid_params: dict[str, float] = Field(default_factory=dict)
    solver: str = "euler"
    eta: float | None = Field(None, ge=0, le=1)
    guider: str = "cfg"
    params: dict[str, Any] = Field(default_factory=dict)
    model: ModelSpec = Field(default_factory=ModelSpec, description="the main denoiser")
    models: dict[str, ModelSpec] = Field(default_factory=dict, description="named guide models (weak-model)")
    n: int = Field(1000, ge=1)
    seed: int = Field(0, ge=0)
    dtype: str = "float32"
    divergence_bound: float | None = Field(None, gt=0, description="fixed bound on |x| (default: relative)")
    divergence_factor: float = Field(100.0, gt=0, description="relative bound: factor·(α_t·data_scale + σ_t)")
    record_every: int | None = Field(None, ge=1)

    @field_validator("path", "grid", "solver", "dtype")
    @classmethod
    def _known_name(cls, v: str, info: ValidationInfo) -> str:
        accepted = {"path": PATHS, "grid": GRIDS, "solver": SOLVERS, "dtype": DTYPES}[info.field_name]
        if v not in accepted:
            raise ValueError(f"unknown {info.field_name} {v!r}; accepted: {', '.join(accepted)}")
        return v

    @model_validator(mode="after")
    def _grid_params(self) -> SampleConfig:
        check_grid_params(self.grid, self.grid_params)
        return self


def config_error_message(err: ValidationError) -> str:
    """Pydantic errors as one line each: ``field: message (got value)``."""
    return "\n".join(error_lines(err))


def effective_scale(guider: Guider, grid: torch.Tensor, path: NoisePath, cond: int) -> float | None:
    """The run's effective guidance scale (:meth:`Guider.effective_scale`), rounded to 12 significant digits so
    that a constant γ is stored as itself; ``None`` for a guider without a scale."""
    value = guider.effective_scale(grid, path, None if cond == NULL_COND else cond)
    return None if value is None else float(f"{value:.12g}")


@dataclass
class SampleOutcome:
    """A finished run: the samples, the objects it was built from, and the resolved configuration."""

    result: SampleResult
    target: Target
    path: NoisePath
    guider: Guider
    grid: torch.Tensor
    cond: int
    resolved: dict[str, Any]


def build_run_guider(
    name: str, params: dict[str, Any], models: dict[str, ModelSpec], target: Target, path: NoisePath
) -> Guider:
    """The guider of a run: ``build_guider(name, **params)`` with the guide models it names built on ``path``
    (every model of a run shares the main model's path; the sampler checks it). Errors name the parameter."""
    params = dict(params)
    if models and guider_accepts(name, "models"):
        params["models"] = {key: spec.build(target, path) for key, spec in models.items()}
    return build_guider(name, **params)


def resolve(config: SampleConfig) -> tuple[Target, int, NoisePath, torch.Tensor, Guider, Denoiser]:
    """The one place where a configuration becomes objects: target, class index, path, grid, guider (with its
    guide models on the run's path) and the main denoiser. Sampling, sweep validation and the sweep runner all
    go through it; errors name the field."""
    target = get_target(config.target)
    cond = target.class_index(config.cond)
    path = get_path(config.path, **config.path_params)
    grid = make_grid(config.grid, config.steps, path, t_min=config.t_min, t_max=config.t_max, **config.grid_params)
    guider = build_run_guider(config.guider, config.params, config.models, target, path)
    return target, cond, path, grid, guider, config.model.build(target, path)


WORKING_COPIES = 16  # tensors of the batch's size alive at once in a guided step (state, noise, passes, pair)


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``), or None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_memory(n: int, dim: int, dtype: torch.dtype, *, recorded: bool = False) -> None:
    """A ValueError naming ``n`` when a run of n samples of dimension ``dim`` would need more memory than is
    available (about :data:`WORKING_COPIES` copies of the batch, and the trajectory when recorded), saying how
    much it would need."""
    available = available_memory()
    if available is None:
        return
    need = n * dim * torch.finfo(dtype).bits // 8 * WORKING_COPIES
    if need > available:
        more = " (plus the recorded trajectory)" if recorded else ""
        raise ValueError(
            f"n: {n} samples of dimension {dim} need about {need / 2**30:.1f} GiB{more}; about "
            f"{available / 2**30:.1f} GiB is available"
        )


def run_sample(config: SampleConfig, *, progress: bool = False) -> SampleOutcome:
    """Sample the target's exact denoiser under the configured guider."""
    target, cond, path, grid, guider, denoiser = resolve(config)
    check_memory(config.n, target.dim, DTYPES[config.dtype], recorded=config.record_every is not None)
    result = sample(
        denoiser,
        guider,
        grid=grid,
        n=config.n,
        shape=(target.dim,),
        cond=cond,
        solver=config.solver,
        seed=config.seed,
        eta=config.eta,
        dtype=DTYPES[config.dtype],
        record_every=config.record_every,
        divergence_bound=config.divergence_bound,
        divergence_factor=config.divergence_factor,
        progress=progress,
    )
    resolved = {
        **config.model_dump(),
        "target_config": target.config(),
        "cond_index": cond,
        "cond_name": "null" if cond == NULL_COND else target.class_names[cond],
        "path_config": path.config(),
        "guider_config": guider.config(),
        "gamma": effective_scale(guider, result.grid if result.grid is not None else grid, path, cond),
        "grid_times": result.grid.tolist() if result.grid is not None else grid.tolist(),
        "data_scale": float(getattr(denoiser, "data_scale", 1.0)),
        "notes": list(result.notes),
        "guidelab_version": __version__,
        "torch_version": torch.__version__,
    }
    return SampleOutcome(result, target, path, guider, grid, cond, resolved)
