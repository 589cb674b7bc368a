"""Train a class-conditional image denoiser, or the metrics' classifier, on a shipped dataset; resumable.

**Denoiser.** Denoising score matching on ``x_t = α·x0 + σ·ε`` with ``t ~ U[t_min, 1]``, in the model's
prediction space with unit-variance targets (:mod:`guidelab.models.image`): the loss is the mean squared error
of ``F_θ`` against ``(x0 − c_skip·x_t)/c_out`` (x0; EDM's weighting, Karras et al. 2022, arXiv 2206.00364),
``ε`` (eps) or ``v/s_v`` (velocity). Labels are replaced by the null class with probability ``p_uncond``
(classifier-free dropout, Ho & Salimans 2022, arXiv 2207.12598), so one network gives both passes.

**Classifier.** Cross-entropy on the training split; its test accuracy is measured at the end and stored in the
checkpoint's config.

**Both.** Adam with a linear warm-up; an exponential moving average of the weights (torch's ``AveragedModel``
with ``get_ema_multi_avg_fn``) is what is evaluated and saved. Every ``eval_every`` steps the EMA network's loss on
the validation split (fixed times and noise drawn once from the seed) decides: a better loss rewrites ``out``
(the EMA weights, safetensors, atomically); ``patience`` evaluations without improvement stop training early.
Every ``checkpoint_every`` steps (and at each evaluation) the whole training state (weights, EMA, optimizer
moments, the data generator's state, the evaluation record) is written atomically to ``<out stem>.state
.safetensors``; run the same command again after a crash or ``kill -9`` and training resumes from it, and ends
with bit-identical weights to an uninterrupted run (same torch thread count). Every random draw (batches, times,
noise, dropout) comes from one seeded generator.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from guidelab.data import DATASETS, ImageData, load_dataset
from guidelab.io import load_safetensors_checked, save_safetensors_atomic
from guidelab.models.classifier import ImageClassifier
from guidelab.models.image import ARCHS, PREDICTIONS, ImageDenoiser
from guidelab.models.zoo import save_image_model
from guidelab.paths import PATHS
from guidelab.progress import ProgressBar
from guidelab.validation import did_you_mean

__all__ = [
    "ClassifierTrainConfig",
    "DenoiserTrainConfig",
    "ImageTrainResult",
    "ema_note",
    "state_path",
    "train_classifier",
    "train_image_denoiser",
]

_STATE_FORMAT = "guidelab-train-state/1"
_HOLDOUT_SEED = 7_777_777


class _Common(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str = "digits"
    steps: int = Field(4000, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(2e-3, gt=0)
    warmup: int = Field(200, ge=0)
    ema_decay: float = Field(0.999, ge=0, lt=1)
    eval_every: int = Field(250, ge=1)
    patience: int = Field(8, ge=1, description="evaluations without improvement before stopping")
    checkpoint_every: int = Field(100, ge=1)
    seed: int = Field(0, ge=0)

    @field_validator("data")
    @classmethod
    def _data(cls, v: str) -> str:
        if v not in DATASETS:
            raise ValueError(f"unknown dataset {v!r}{did_you_mean(v, DATASETS)}")
        return v


class DenoiserTrainConfig(_Common):
    """Everything that determines a trained denoiser (validated; errors name the field)."""

    arch: str = "unet"
    path: str = "rf"
    prediction: str = "x0"
    p_uncond: float = Field(0.1, ge=0, lt=1)
    t_min: float = Field(1e-3, gt=0, lt=1)
    channels: list[int] = Field(default_factory=lambda: [32, 64])
    hidden: int = Field(256, ge=1)
    depth: int = Field(3, ge=1)
    embed_dim: int = Field(64, ge=2)
    sigma_data: float | None = Field(None, gt=0, description="default: the training images' standard deviation")
    one_vs_rest: int | None = Field(
        None, ge=0, description="a binary condition: label 0 for this class, 1 for every other (None: all classes)"
    )

    @field_validator("arch", "path", "prediction")
    @classmethod
    def _names(cls, v: str, info: Any) -> str:
        accepted = {"arch": ARCHS, "path": PATHS, "prediction": PREDICTIONS}[info.field_name]
        if v not in accepted:
            raise ValueError(f"unknown {info.field_name} {v!r}{did_you_mean(v, accepted)}")
        if info.field_name == "path" and v == "discrete-vp":
            raise ValueError("discrete-vp is a pipeline scheduler's path; train on rf, vp-cosine, vp-linear, ve or ou")
        return v


class ClassifierTrainConfig(_Common):
    """Everything that determines a trained classifier."""

    kind: Literal["classifier"] = "classifier"
    steps: int = Field(3000, ge=1)
    ema_decay: float = Field(0.99, ge=0, lt=1)
    channels: list[int] = Field(default_factory=lambda: [32, 64, 64])
    feature_dim: int = Field(64, ge=2)


@dataclass
class ImageTrainResult:
    """What training returns: the EMA network (the saved one: the best on held-out loss), the record."""

    model: nn.Module
    out: Path
    steps_run: int
    best_step: int
    best_holdout: float
    stopped_early: bool
    resumed_from: int
    wall_time: float
    history: list[tuple[int, float]] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    test_accuracy: float | None = None


def ema_note(config: _Common) -> str | None:
    """A warning where the run is too short for its EMA: the saved weights average about the last 1/(1 − decay)
    steps, starting from the initial weights, so with fewer than twice that many steps the start still weighs
    ``decay^steps`` (more than 13%) in what is saved."""
    horizon = 1 / (1 - config.ema_decay) if config.ema_decay < 1 else float("inf")
    if config.steps >= 2 * horizon:
        return None
    share = config.ema_decay**config.steps
    return (
        f"ema_decay: {config.steps} steps with ema_decay {config.ema_decay} leave the initial weights a share of "
        f"{share:.0%} in the saved EMA weights (it averages ~{horizon:.0f} steps); train at least {2 * horizon:.0f} "
        f"steps or lower --ema-decay (e.g. {1 - 2 / config.steps:.3g})"
    )


def state_path(out: str | Path) -> Path:
    """The training-state file beside the checkpoint ``out``: ``<stem>.state.safetensors``."""
    out = Path(out)
    return out.with_name(out.stem + ".state.safetensors")


class _Task:
    """What differs between the denoiser and the classifier: the network, the loss, the held-out set."""

    def __init__(self, config: _Common, train: ImageData, val: ImageData):
        self.config, self.train, self.val = config, train, val

    def build(self) -> nn.Module:
        raise NotImplementedError

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, g: torch.Generator) -> Tensor:
        raise NotImplementedError

    def holdout(self, model: nn.Module) -> float:
        raise NotImplementedError


class _DenoiserTask(_Task):
    config: DenoiserTrainConfig

    def __init__(self, config: DenoiserTrainConfig, train: ImageData, val: ImageData):
        super().__init__(config, train, val)
        self.sigma_data = config.sigma_data or float(train.images.std())
        g = torch.Generator().manual_seed(_HOLDOUT_SEED + config.seed)
        reps = max(1, 1024 // len(val))  # at least ~1k noisy images, so the held-out loss is not noise
        self.val_x = val.images.repeat(reps, 1, 1, 1)
        self.val_y = val.labels.repeat(reps)
        self.val_t, self.val_eps = self._draw(self.val_x.shape[0], g)

    def _draw(self, n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        c = self.config
        t = c.t_min + (1 - c.t_min) * torch.rand(n, generator=g, dtype=torch.float64)
        return t, torch.randn((n, *self.train.shape), generator=g)

    def build(self) -> nn.Module:
        c = self.config
        return ImageDenoiser(
            self.train.shape,
            self.train.num_classes,
            c.path,
            arch=c.arch,
            prediction=c.prediction,
            channels=c.channels,
            hidden=c.hidden,
            depth=c.depth,
            embed_dim=c.embed_dim,
            sigma_data=self.sigma_data,
        )

    def _mse(self, model: ImageDenoiser, x0: Tensor, y: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        c = model.path.coefficients(t)
        shape = (-1, 1, 1, 1)
        x_t = c.alpha.float().reshape(shape) * x0 + c.sigma.float().reshape(shape) * eps
        skip, out, c_in, c_noise = model.output_scaling(t, x_t)
        if model.prediction == "x0":
            target = x0
        elif model.prediction == "eps":
            target = eps
        else:
            target = c.d_alpha.float().reshape(shape) * x0 + c.d_sigma.float().reshape(shape) * eps
        goal = (target - skip.reshape(shape) * x_t) / out.reshape(shape)
        return (model.raw(c_in.reshape(shape) * x_t, c_noise, y) - goal).pow(2).flatten(1).mean(1)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, g: torch.Generator) -> Tensor:
        drop = torch.rand(y.shape[0], generator=g) < self.config.p_uncond
        y = torch.where(drop, torch.full_like(y, -1), y)
        t, eps = self._draw(x.shape[0], g)
        return self._mse(model, x, y, t, eps).mean()  # type: ignore[arg-type]

    @torch.no_grad()
    def holdout(self, model: nn.Module) -> float:
        total = 0.0
        for lo in range(0, self.val_x.shape[0], 512):
            sl = slice(lo, lo + 512)
            total += float(self._mse(model, self.val_x[sl], self.val_y[sl], self.val_t[sl], self.val_eps[sl]).sum())  # type: ignore[arg-type]
        return total / self.val_x.shape[0]


class _ClassifierTask(_Task):
    config: ClassifierTrainConfig

    def build(self) -> nn.Module:
        c = self.config
        return ImageClassifier(self.train.shape, self.train.num_classes, channels=c.channels, feature_dim=c.feature_dim)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, g: torch.Generator) -> Tensor:
        return nn.functional.cross_entropy(model(x), y)

    @torch.no_grad()
    def holdout(self, model: nn.Module) -> float:
        return float(nn.functional.cross_entropy(model(self.val.images), self.val.labels))


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], list[dict[str, Any]]]:
    state = optimizer.state_dict()
    tensors = {f"optim.{i}.{k}": v for i, s in state["state"].items() for k, v in s.items()}
    return tensors, state["param_groups"]


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor], groups: list[dict]) -> None:
    state: dict[int, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, i, name = key.split(".", 2)
            state.setdefault(int(i), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _fit(
    task: _Task,
    kind: str,
    out: str | Path,
    progress: bool,
    threads: int | None,
    callback: Callable[[int, float], None] | None,
    warn: Callable[[str], None] | None = None,
) -> ImageTrainResult:
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"out: must end in .safetensors, got {str(out)!r}")
    threads_before = torch.get_num_threads()
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads: must be an integer ≥ 1 or None, got {threads!r}")
        torch.set_num_threads(threads)
    try:
        return _loop(task, kind, out, progress, callback, warn)
    finally:
        torch.set_num_threads(threads_before)


def _loop(
    task: _Task,
    kind: str,
    out: Path,
    progress: bool,
    callback: Callable[[int, float], None] | None,
    warn: Callable[[str], None] | None,
) -> ImageTrainResult:
    config = task.config
    recipe = {"kind": kind, **config.model_dump()}
    if recipe.get("one_vs_rest", 0) is None:  # the all-class recipe reads as before the option existed
        del recipe["one_vs_rest"]
    rng_before = torch.random.get_rng_state()
    try:  # the initial weights come from the seed without touching the caller's global RNG
        torch.manual_seed(config.seed)
        model = task.build()
    finally:
        torch.random.set_rng_state(rng_before)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    record: dict[str, Any] = {"step": 0, "best": float("inf"), "best_step": 0, "bad": 0, "history": [], "done": False}

    state_file = state_path(out)
    if state_file.exists():
        tensors, saved = load_safetensors_checked(state_file, _STATE_FORMAT, "out")
        _check_same_recipe(saved["recipe"], recipe, state_file)
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
        _restore_optimizer(optimizer, tensors, saved["param_groups"])
        generator.set_state(tensors["rng"])
        record = saved["record"]
    resumed_from = record["step"]
    note = ema_note(config)
    if note is not None:  # after the state file is accepted: a refused run says one thing only
        (warn or (lambda m: warnings.warn(m, UserWarning, stacklevel=4)))(note)

    saved = [resumed_from]  # the step of the last state written

    def save_state() -> None:
        saved[0] = record["step"]
        optim_tensors, groups = _flatten_optimizer(optimizer)
        tensors = {
            **{f"model.{k}": v for k, v in model.state_dict().items()},
            **{f"ema.{k}": v for k, v in ema.state_dict().items()},
            **optim_tensors,
            "rng": generator.get_state(),
        }
        save_safetensors_atomic(
            tensors, state_file, _STATE_FORMAT, {"recipe": recipe, "record": record, "param_groups": groups}
        )

    def save_best() -> None:
        extra = {
            "data": config.data,
            **({"class_names": list(task.train.class_names)} if "one_vs_rest" in recipe else {}),
            "train": recipe,
            "best_step": record["best_step"],
            "holdout_loss": record["best"],
        }
        save_image_model(ema.module, out, extra)  # type: ignore[arg-type]

    n_train = len(task.train)
    losses: list[float] = []
    start = time.perf_counter()
    model.train()
    with ProgressBar(progress, config.steps, f"training {kind} on {config.data}") as bar:
        if resumed_from:
            bar.advance(resumed_from, status=f"resumed at step {resumed_from}")
        try:
            while not record["done"] and record["step"] < config.steps:
                step = record["step"]
                for group in optimizer.param_groups:
                    group["lr"] = config.lr * min(1.0, (step + 1) / max(config.warmup, 1))
                rows = torch.randint(n_train, (config.batch_size,), generator=generator)
                loss = task.loss(model, task.train.images[rows], task.train.labels[rows], generator)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                ema.update_parameters(model)
                record["step"] = step + 1
                losses.append(float(loss.detach()))
                if callback is not None:
                    callback(step, losses[-1])
                evaluate = record["step"] % config.eval_every == 0 or record["step"] == config.steps
                status = f"loss {losses[-1]:.4f}"
                if evaluate:
                    ema.module.eval()
                    held = task.holdout(ema.module)
                    record["history"].append([record["step"], held])
                    if held < record["best"]:
                        record.update(best=held, best_step=record["step"], bad=0)
                        save_best()
                    else:
                        record["bad"] += 1
                        record["done"] = record["bad"] >= config.patience
                    status += f" · held-out {held:.4f} (best {record['best']:.4f} at {record['best_step']})"
                if evaluate or record["step"] % config.checkpoint_every == 0:
                    save_state()
                bar.advance(status=status)
        except KeyboardInterrupt:
            where = (
                f"resumes from step {saved[0]}, the last state saved in {state_file}"
                if state_file.exists()
                else f"starts over (no state is saved before step {config.checkpoint_every})"
            )
            raise KeyboardInterrupt(f"interrupted at step {record['step']}; the same command {where}") from None
    result_model = _reload(out, kind)
    return ImageTrainResult(
        model=result_model,
        out=out,
        steps_run=record["step"],
        best_step=record["best_step"],
        best_holdout=record["best"],
        stopped_early=bool(record["done"]),
        resumed_from=resumed_from,
        wall_time=time.perf_counter() - start,
        history=[(int(s), float(v)) for s, v in record["history"]],
        losses=losses,
    )


def _reload(out: Path, kind: str) -> nn.Module:
    from guidelab.models.zoo import load_classifier, load_image_denoiser

    return load_classifier(out) if kind == "classifier" else load_image_denoiser(out)


def _check_same_recipe(saved: dict[str, Any], recipe: dict[str, Any], state_file: Path) -> None:
    """A state file of another training run is refused, naming the first setting that differs (``steps``
    may grow: training goes on)."""
    for key in sorted(set(saved) | set(recipe)):
        if key == "steps":
            continue
        if saved.get(key) != recipe.get(key):
            raise ValueError(
                f"out: {str(state_file)!r} holds the training state of a run with {key} "
                f"{json.dumps(saved.get(key))}, not {json.dumps(recipe.get(key))}; rerun with the same settings to "
                f"resume it, give another --out, or delete that file to start afresh"
            )


def train_image_denoiser(
    config: DenoiserTrainConfig | dict[str, Any],
    out: str | Path,
    *,
    progress: bool = False,
    threads: int | None = None,
    callback: Callable[[int, float], None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> ImageTrainResult:
    """Train (or resume) a class-conditional :class:`~guidelab.models.image.ImageDenoiser` on ``config.data``;
    the best EMA weights go to ``out`` (``.safetensors``). See the module docstring. ``warn`` receives a one-line
    warning when the run is too short for its EMA (:func:`ema_note`; default: ``warnings.warn``).

    Raises:
        ValueError: a bad setting (``field: message``), or a state file beside ``out`` of another run.
    """
    config = DenoiserTrainConfig.model_validate(config) if isinstance(config, dict) else config
    if config.arch == "unet":
        shape = load_dataset(config.data, "val").shape
        factor = 2 ** (len(config.channels) - 1)
        if shape[1] % factor or shape[2] % factor:
            raise ValueError(
                f"channels: {len(config.channels)} UNet levels halve {shape[1]}×{shape[2]} images "
                f"{len(config.channels) - 1} times; use at most {_max_levels(shape)} levels"
            )
    train, val = load_dataset(config.data, "train"), load_dataset(config.data, "val")
    if config.one_vs_rest is not None:
        if config.one_vs_rest >= train.num_classes:
            raise ValueError(
                f"one_vs_rest: {config.data} has classes 0 to {train.num_classes - 1}, got {config.one_vs_rest}"
            )
        train, val = train.one_vs_rest(config.one_vs_rest), val.one_vs_rest(config.one_vs_rest)
    task = _DenoiserTask(config, train, val)
    return _fit(task, "denoiser", out, progress, threads, callback, warn)


def _max_levels(shape: tuple[int, ...]) -> int:
    levels = 1
    while shape[1] % 2**levels == 0 and shape[2] % 2**levels == 0:
        levels += 1
    return levels


def train_classifier(
    config: ClassifierTrainConfig | dict[str, Any],
    out: str | Path,
    *,
    progress: bool = False,
    threads: int | None = None,
    callback: Callable[[int, float], None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> ImageTrainResult:
    """Train (or resume) the metrics' :class:`~guidelab.models.classifier.ImageClassifier` on ``config.data``;
    its accuracy on the test split is measured at the end and written into the checkpoint's config. ``warn`` as for
    :func:`train_image_denoiser`."""
    config = ClassifierTrainConfig.model_validate(config) if isinstance(config, dict) else config
    task = _ClassifierTask(config, load_dataset(config.data, "train"), load_dataset(config.data, "val"))
    result = _fit(task, "classifier", out, progress, threads, callback, warn)
    test = load_dataset(config.data, "test")
    with torch.no_grad():
        accuracy = float((result.model(test.images).argmax(1) == test.labels).double().mean())
    tensors, saved = load_safetensors_checked(out, "guidelab-image-classifier/1", "out")
    save_safetensors_atomic(tensors, out, "guidelab-image-classifier/1", {**saved, "test_accuracy": accuracy})
    result.model.checkpoint_config = {**saved, "test_accuracy": accuracy}
    result.test_accuracy = accuracy
    return result
