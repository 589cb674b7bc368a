"""One sampling run as plain, validated configuration: target, condition, path, grid, solver, guider.

:class:`SampleConfig` is what the ``guidelab sample`` command, sweeps and reproductions share; every
field is checked before anything runs, and :func:`run_sample` resolves it and samples. The resolved
configuration (``resolved``) is written beside results so a run can be repeated exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from guidelab import __version__
from guidelab.denoiser import NULL_COND, Denoiser
from guidelab.fkc import FKCConfig
from guidelab.grids import GRIDS, check_grid_params, make_grid
from guidelab.guiders import Guider, build_guider
from guidelab.guiders.registry import guider_accepts
from guidelab.paths import PATHS, NoisePath, get_path
from guidelab.sampling import ETA_SOLVERS, SOLVERS, STOCHASTIC_SOLVERS, SampleResult, sample
from guidelab.targets import Target, get_target
from guidelab.validation import DTYPE_NAMES, did_you_mean, error_lines, torch_dtype

__all__ = [
    "TRAINED_KINDS",
    "ModelSpec",
    "SampleConfig",
    "SampleOutcome",
    "build_run_guider",
    "check_memory",
    "class_of",
    "config_error_message",
    "effective_scale",
    "resolve",
    "resolve_trained",
    "run_sample",
]


TRAINED_KINDS = ("checkpoint", "shipped", "python")


class ModelSpec(BaseModel):
    """A denoiser. On an exact target: the exact one, the exact one with a seeded score error of size δ
    (``score-error``; e.g. a weaker guide for autoguidance, see ``ScoreErrorDenoiser``), the exact denoiser of
    leaky conditionals ``(1 − leak)·p(x|c) + leak·p(x)`` (``under-conditioned``, an imperfect model with an exact
    form), or the exact conditional denoiser pulled toward the unconditional one, ``ρ·x0̂_c + (1 − ρ)·x0̂_u``
    (``scaled-conditional``, ``rho``; CFG at γ = 1/ρ undoes it exactly, see ``ScaledConditionalDenoiser``). A
    trained model instead of a target: a guidelab checkpoint file (``checkpoint``, ``path``), a model
    shipped with guidelab (``shipped``, ``name``: see ``guidelab.models.zoo.SHIPPED``), or the user's own code
    (``python``, ``factory: "package.module:function"``, called without arguments, returning a denoiser with
    ``path``, ``prediction`` and ``shape``)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal[
        "exact", "score-error", "under-conditioned", "scaled-conditional", "checkpoint", "shipped", "python"
    ] = "exact"
    delta: float = Field(0.0, ge=0)
    seed: int = Field(0, ge=0)
    frequency_scale: float = Field(1.0, gt=0)
    error_space: Literal["score", "x0"] = "score"
    leak: float = Field(0.5, gt=0, lt=1, description="under-conditioned: the marginal's share of each conditional")
    rho: float = Field(0.5, gt=0, allow_inf_nan=False, description="scaled-conditional: the exact conditional's share")
    path: str | None = Field(None, description="checkpoint: the .safetensors file")
    name: str | None = Field(None, description="shipped: the model's name")
    factory: str | None = Field(None, description="python: 'package.module:function'")

    @model_validator(mode="after")
    def _fields_of_kind(self) -> ModelSpec:
        need = {"checkpoint": "path", "shipped": "name", "python": "factory"}.get(self.kind)
        if need is not None and getattr(self, need) is None:
            raise ValueError(f"{need}: a {self.kind} model needs it")
        for key in ("path", "name", "factory"):
            if key != need and getattr(self, key) is not None:
                raise ValueError(f"{key}: not a field of a {self.kind} model")
        if "rho" in self.model_fields_set and self.kind != "scaled-conditional":
            raise ValueError(f"rho: not a field of a {self.kind} model (only of scaled-conditional)")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Leave ``rho`` out of other kinds' dumps, so their run hashes (and stores written before it) stay."""
        data = handler(self)
        if self.kind != "scaled-conditional":
            data.pop("rho", None)
        return data

    @property
    def trained(self) -> bool:
        """Whether this is a trained model (no exact target)."""
        return self.kind in TRAINED_KINDS

    def build(self, target: Target | None, path: NoisePath) -> Denoiser:
        """The denoiser on ``path`` (a trained model must have been trained on it; ValueError otherwise)."""
        if self.trained:
            model = self.load()
            if model.path != path:
                raise ValueError(
                    f"model: {self.describe()} was trained on path {model.path.config()}, the run samples on "
                    f"{path.config()}; every model of a run shares one path"
                )
            return model
        if target is None:
            raise ValueError(f"model: a {self.kind} model needs an exact target")
        exact = target.denoiser(path)
        if self.kind == "exact":
            return exact
        if self.kind == "under-conditioned":
            from guidelab.targets import UnderConditionedDenoiser

            return UnderConditionedDenoiser(target, path, self.leak)
        if self.kind == "scaled-conditional":
            from guidelab.targets import ScaledConditionalDenoiser

            return ScaledConditionalDenoiser(target, path, self.rho)
        from guidelab.targets import ScoreErrorDenoiser

        return ScoreErrorDenoiser(
            exact, self.delta, seed=self.seed, frequency_scale=self.frequency_scale, error_space=self.error_space
        )

    def describe(self) -> str:
        """The model in a few words, for messages."""
        return {"checkpoint": f"checkpoint {self.path!r}", "shipped": f"shipped model {self.name!r}"}.get(
            self.kind, f"factory {self.factory!r}" if self.kind == "python" else self.kind
        )

    def load(self) -> Denoiser:
        """The trained model (loaded once per process and file version); errors name ``model``."""
        from guidelab.models.trained import load_trained

        if not self.trained:
            raise ValueError(f"model: a {self.kind} model is built on a target, not loaded")
        return load_trained(self.kind, self.path or self.name or self.factory or "")

    def digest(self) -> str:
        """What identifies the model's weights: a checkpoint's (or shipped file's) content hash, or the factory's
        name (its code is the user's)."""
        from guidelab.models.trained import model_digest

        return model_digest(self.kind, self.path or self.name or self.factory or "")


class SampleConfig(BaseModel):
    """A fully specified sampling run (all fields validated on construction)."""

    model_config = ConfigDict(extra="forbid")

    target: str | None = Field(
        None, description="built-in target name or a YAML/JSON target file; None with a trained model"
    )
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
    fkc: dict[str, Any] | None = Field(
        None,
        description="Feynman–Kac correctors (guidelab.fkc.FKCConfig: increment, ess_threshold, clamp); {} for the "
        "defaults; needs the cfg guider with a constant scale and a stochastic solver",
    )

    @field_validator("fkc")
    @classmethod
    def _fkc(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is None:
            return None
        return FKCConfig.from_config(v).config()  # type: ignore[union-attr]

    @field_validator("path", "grid", "solver", "dtype")
    @classmethod
    def _known_name(cls, v: str, info: ValidationInfo) -> str:
        accepted = {"path": PATHS, "grid": GRIDS, "solver": SOLVERS, "dtype": DTYPE_NAMES}[info.field_name]
        if v not in accepted:
            raise ValueError(f"unknown {info.field_name} {v!r}{did_you_mean(v, accepted)}")
        return v

    @model_validator(mode="after")
    def _fkc_needs_noise(self) -> SampleConfig:
        if self.fkc is None:
            return self
        no_churn = self.solver in ETA_SOLVERS and (self.eta == 0 or (self.eta is None and self.solver == "ddim"))
        if self.solver not in STOCHASTIC_SOLVERS or no_churn:
            raise ValueError(
                f"solver: FKC resampling with the deterministic solver {self.solver!r} (eta {self.eta}) collapses the "
                "particles; use euler-maruyama, ddim with eta > 0, euler-ancestral or dpm++2s-ancestral"
            )
        return self

    @model_validator(mode="after")
    def _grid_params(self) -> SampleConfig:
        check_grid_params(self.grid, self.grid_params)
        return self

    @model_validator(mode="after")
    def _target_or_trained(self) -> SampleConfig:
        if self.model.trained and self.target is not None:
            raise ValueError(f"target: a {self.model.kind} model samples its own data; give no target")
        if not self.model.trained and self.target is None:
            raise ValueError("target: give a target (or a trained model: kind checkpoint, shipped or python)")
        if self.model.trained and self.path_params:
            raise ValueError("path_params: a trained model brings its own path")
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
    target: Target | None  # None for a trained model
    path: NoisePath
    guider: Guider
    grid: torch.Tensor
    cond: int
    resolved: dict[str, Any]


def build_run_guider(
    name: str, params: dict[str, Any], models: dict[str, ModelSpec], target: Target | None, path: NoisePath
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
    go through it; errors name the field. (A trained model's run: :func:`resolve_trained`.)"""
    if config.model.trained:
        raise ValueError("model: a trained model has no target; resolve it with resolve_trained")
    target = get_target(config.target)
    cond = target.class_index(config.cond)
    path = get_path(config.path, **config.path_params)
    grid = make_grid(config.grid, config.steps, path, t_min=config.t_min, t_max=config.t_max, **config.grid_params)
    guider = build_run_guider(config.guider, config.params, config.models, target, path)
    return target, cond, path, grid, guider, config.model.build(target, path)


def class_of(names: tuple[str, ...], cond: str) -> int:
    """A class given by name or index among ``names`` (``'null'``: −1); ValueError names ``cond``."""
    text = cond.strip()
    if text == "null":
        return NULL_COND
    if text in names:
        return names.index(text)
    try:
        index = int(text)
    except ValueError:
        raise ValueError(f"cond: unknown class {text!r}{did_you_mean(text, names)}, null") from None
    if not -1 <= index < len(names):
        raise ValueError(
            f"cond: class index must lie in [-1, {len(names) - 1}], got {index}; the classes: "
            f"{', '.join(f'{i} = {n!r}' for i, n in enumerate(names))} (names are matched before indices)"
        )
    return index


def resolve_trained(config: SampleConfig) -> tuple[Denoiser, int, NoisePath, torch.Tensor, Guider]:
    """A trained model's run as objects: the model, the class index, its path, the grid on it and the guider
    (guide models must share the path). ``path`` in the config must be the model's own or left unset."""
    from guidelab.models.trained import class_names

    model = config.model.load()
    path = model.path
    if "path" in config.model_fields_set and config.path != path.config()["name"]:
        raise ValueError(f"path: the model was trained on {path.config()['name']!r}; leave path out or give that")
    cond = class_of(class_names(model), config.cond)
    grid = make_grid(config.grid, config.steps, path, t_min=config.t_min, t_max=config.t_max, **config.grid_params)
    guider = build_run_guider(config.guider, config.params, config.models, None, path)
    return model, cond, path, grid, guider


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
    """Sample the configured denoiser (a target's exact one, or a trained model) under the configured guider."""
    if config.model.trained:
        return _run_trained(config, progress)
    target, cond, path, grid, guider, denoiser = resolve(config)
    check_memory(config.n, target.dim, torch_dtype(config.dtype), recorded=config.record_every is not None)
    result = _sample(config, denoiser, guider, grid, (target.dim,), cond, progress)
    resolved = {
        **config.model_dump(),
        "target_config": target.config(),
        "cond_index": cond,
        "cond_name": "null" if cond == NULL_COND else target.class_names[cond],
        **_resolved_common(config, result, path, guider, grid, cond, denoiser),
    }
    return SampleOutcome(result, target, path, guider, grid, cond, resolved)


def _sample(
    config: SampleConfig,
    denoiser: Denoiser,
    guider: Guider,
    grid: torch.Tensor,
    shape: tuple[int, ...],
    cond: int,
    progress: bool,
) -> SampleResult:
    return sample(
        denoiser,
        guider,
        grid=grid,
        n=config.n,
        shape=shape,
        cond=cond,
        solver=config.solver,
        seed=config.seed,
        eta=config.eta,
        dtype=torch_dtype(config.dtype),
        record_every=config.record_every,
        divergence_bound=config.divergence_bound,
        divergence_factor=config.divergence_factor,
        progress=progress,
        fkc=FKCConfig.from_config(config.fkc),
    )


def _resolved_common(
    config: SampleConfig,
    result: SampleResult,
    path: NoisePath,
    guider: Guider,
    grid: torch.Tensor,
    cond: int,
    denoiser: Denoiser,
) -> dict[str, Any]:
    times = result.grid if result.grid is not None else grid
    return {
        "path_config": path.config(),
        "guider_config": guider.config(),
        "gamma": effective_scale(guider, times, path, cond),
        "grid_times": times.tolist(),
        "data_scale": float(getattr(denoiser, "data_scale", 1.0)),
        "notes": list(result.notes),
        **_fkc_record(result),
        "guidelab_version": __version__,
        "torch_version": torch.__version__,
    }


def fkc_metrics(result: SampleResult) -> dict[str, float]:
    """A run's FKC summary for the results store: the lowest ESS over weighted steps and class groups (fraction of
    the group) and the number of resamplings; empty without FKC. The ESS per step is in the sidecar."""
    if result.ess is None:
        return {}
    return {"fkc_min_ess": float(result.ess.min()), "fkc_resamplings": float(result.resamplings or 0)}


def _fkc_record(result: SampleResult) -> dict[str, Any]:
    """FKC's record of a run: the ESS per weighted step and class group (fractions of the group), resamplings."""
    if result.ess is None:
        return {}
    return {"fkc_ess": result.ess.tolist(), "fkc_resamplings": result.resamplings}


def _run_trained(config: SampleConfig, progress: bool) -> SampleOutcome:
    from guidelab.models.trained import class_names, sample_shape

    model, cond, path, grid, guider = resolve_trained(config)
    shape = sample_shape(model)
    check_memory(config.n, math.prod(shape), torch_dtype(config.dtype), recorded=config.record_every is not None)
    with torch.no_grad():
        result = _sample(config, model, guider, grid, shape, cond, progress)
    resolved = {
        **config.model_dump(),
        "model_digest": config.model.digest(),
        "model_config": getattr(model, "checkpoint_config", None),
        "cond_index": cond,
        "cond_name": "null" if cond == NULL_COND else class_names(model)[cond],
        **_resolved_common(config, result, path, guider, grid, cond, model),
    }
    return SampleOutcome(result, None, path, guider, grid, cond, resolved)
