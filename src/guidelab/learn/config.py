"""Configuration and result of learning guidance weights (arXiv 2510.00815): :class:`LearnConfig` (every
field validated, one line per mistake) and :class:`LearnResult`."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import Tensor

from guidelab.models.guidance_weights import GuidanceWeights
from guidelab.paths import PATHS
from guidelab.validation import did_you_mean

__all__ = [
    "HOLDOUT_SEED_OFFSET",
    "RUN_ONLY",
    "DataSource",
    "LearnConfig",
    "LearnResult",
    "Reward",
]


DataSource = Callable[[int, torch.Generator], tuple[Tensor, Tensor]]
"""``data(n, generator) -> (x0 (n, ...), c (n,) int64)``: training data drawn from ``generator`` only."""
Reward = Callable[[Tensor, Tensor], Tensor]
"""``reward(x0_hat (batch, ...), c (batch,)) -> (batch,)``, differentiable in ``x0_hat``."""

# Fields that do not change the learned weights: a resumed run may differ in them.
RUN_ONLY = {"out_dir", "resume", "checkpoint_every", "threads"}
HOLDOUT_SEED_OFFSET = 0x5EED


class LearnConfig(BaseModel):
    """Everything that defines a learning run; validated on construction, errors name the field.

    The denoiser is ``exact`` (the target's exact posterior mean), ``score-error`` (the exact one with an
    injected score error of size ``score_error``) or ``mlp`` (a network checkpoint written by
    ``guidelab train``, in ``model``) or ``image`` (an image denoiser: a shipped name such as ``digits`` or a checkpoint
    written by ``guidelab train --data``, in ``model``). Training data are exact samples of ``target``, or for
    ``image`` the train split of the dataset the model was trained on.
    """

    model_config = ConfigDict(extra="forbid")

    # what to learn on
    target: str | None = Field(None, description="built-in target name; default for mlp: the model's target")
    target_params: dict[str, Any] = Field(default_factory=dict)
    denoiser: Literal["exact", "score-error", "mlp", "image"] = "exact"
    model: str | None = Field(
        None, description="MLP denoiser checkpoint (denoiser = mlp); shipped image model or checkpoint (image)"
    )
    score_error: float = Field(0.5, ge=0, description="size δ of the injected score error (denoiser = score-error)")
    score_error_seed: int = Field(0, ge=0)
    path: str = Field("rf", description="noise path (exact and score-error; an mlp keeps the path it was trained on)")
    path_params: dict[str, float] = Field(default_factory=dict)
    dtype: Literal["float32", "float64"] = "float32"
    # the ω network
    conditional: bool = Field(True, description="class embedding (False: the conditioning-agnostic ω(s, t))")
    hidden: int = Field(64, ge=1)
    depth: int = Field(2, ge=1)
    frequencies: int = Field(4, ge=0)
    class_dim: int = Field(16, ge=1)
    output: Literal["softplus", "relu"] = "softplus"
    init_omega: float = Field(0.5, gt=0)
    # the loss
    beta: float = Field(1.75, gt=0, le=2)
    repulsion: float = Field(1.0, ge=0, le=1, description="weight λ of the repulsive term of the energy distance")
    particles: int = Field(4, ge=1, description="m true particles and m proposals per data point")
    eta: float = Field(1.0, ge=0, le=1, description="churn of the guided DDIM step")
    delta: float = Field(0.1, gt=0, lt=1)
    zeta: float = Field(0.0, ge=0, lt=1)
    s_min: float = Field(0.0, ge=0, lt=1)
    reward: Literal["none", "log-posterior"] = "none"
    reward_weight: float = Field(0.0, ge=0, description="γ_R")
    reward_t: float = Field(0.0, ge=0, lt=1, description="time at which log p_t(c | x0̂) is evaluated")
    # optimisation
    steps: int = Field(1000, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(3e-3, gt=0)
    grad_clip: float | None = Field(1.0, gt=0)
    seed: int = Field(0, ge=0)
    eval_every: int = Field(50, ge=1)
    holdout: int = Field(1024, ge=1, description="held-out data points")
    patience: int = Field(10, ge=0, description="evaluations without improvement before stopping; 0: never")
    min_delta: float = Field(0.0, ge=0)
    # run
    out_dir: str | None = None
    checkpoint_every: int = Field(100, ge=1)
    resume: bool = True
    threads: int | None = Field(
        1,
        ge=1,
        description="torch threads while learning (one is fastest for small ω and "
        "denoiser networks); None: leave as is",
    )

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if v not in PATHS:
            raise ValueError(f"unknown path {v!r}{did_you_mean(v, PATHS)}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        """``lam`` (the repulsion weight's name before 0.2; ``lam`` now means only σ/α) still works, with a
        deprecation warning, for one release."""
        if isinstance(data, dict) and "lam" in data:
            if "repulsion" in data:
                raise ValueError("lam: the old name of repulsion; give only repulsion")
            warnings.warn("lam: renamed to repulsion (lam means σ/α); lam will be removed", DeprecationWarning, 3)
            data = {("repulsion" if k == "lam" else k): v for k, v in data.items()}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> LearnConfig:
        if self.s_min + self.delta + self.zeta >= 1:
            raise ValueError(f"s_min + delta + zeta must be < 1, got {self.s_min} + {self.delta} + {self.zeta}")
        if self.denoiser == "mlp" and not self.model:
            raise ValueError("model: required when denoiser = 'mlp' (a checkpoint written by `guidelab train`)")
        if self.denoiser == "image":
            if not self.model:
                raise ValueError(
                    "model: required when denoiser = 'image' (a shipped name such as digits, or a checkpoint)"
                )
            if self.reward != "none":
                raise ValueError("reward: log-posterior needs an exact target; denoiser = 'image' has none")
            if self.dtype != "float32":
                raise ValueError(f"dtype: an image denoiser runs in float32, got {self.dtype!r}")
        if self.repulsion > 0 and self.particles < 2:
            raise ValueError(f"particles: the repulsive term (repulsion > 0) needs at least 2, got {self.particles}")
        if self.reward_weight > 0 and self.reward == "none":
            raise ValueError("reward: reward_weight > 0 needs a reward (e.g. 'log-posterior')")
        return self

    def result_fields(self) -> dict[str, Any]:
        """The fields that determine the learned weights (all but run-only ones)."""
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in RUN_ONLY}


@dataclass
class LearnResult:
    """What :func:`learn` returns.

    Attributes:
        weights: the learned ω network (best held-out weights), eval mode.
        history: one dict per evaluation (``step``, ``train_loss`` (mean since the last one), ``holdout``).
        best_step: step of the best held-out loss; best_holdout: that loss.
        steps_done: optimisation steps taken in total (over resumes).
        stopped_early: true when the held-out loss stopped improving for ``patience`` evaluations.
        resumed_from: the step the run resumed from (None for a fresh run).
        wall_time: seconds spent in this call.
        weights_path: ``out_dir/weights.pt`` when an output folder was given.
        meta: what is stored with the weights (path, class names, config).
    """

    weights: GuidanceWeights
    history: list[dict[str, float]] = field(default_factory=list)
    best_step: int = 0
    best_holdout: float = float("inf")
    steps_done: int = 0
    stopped_early: bool = False
    resumed_from: int | None = None
    wall_time: float = 0.0
    weights_path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)
