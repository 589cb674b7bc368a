"""Learning guidance weights ω_φ(c, s, t) by self-consistency (Galashov et al., arXiv 2510.00815; METHODS.md §4).

Each optimisation step draws a batch of data ``(x0, c)``, a time pair ``s < t`` per point
(:func:`~guidelab.learn.losses.sample_time_pairs`), m true particles at s and m proposals at t, runs the
**frozen** denoiser once (conditional and unconditional passes batched, no gradient), takes one guided
stochastic DDIM step t → s per proposal (:func:`~guidelab.learn.losses.guided_ddim_step`, churn η = 1)
and minimises the energy distance to the true particles
(:func:`~guidelab.learn.losses.energy_distance_loss`, β = 1.75, λ = 1), optionally minus a reward
``γ_R·E[R(x0̂(ω), c)]``.

Every random draw comes from one dedicated ``torch.Generator`` (never the global RNG). A checkpoint
(``checkpoint.pt``, written atomically) holds φ, the optimiser, the generator state, the step, the
held-out history and the best weights, so a run resumed from it ends with bit-identical weights to an
uninterrupted run with the same seed. A fixed held-out set (its own generator; the frozen predictions
are computed once) gives the held-out loss for early stopping; the best held-out weights are the result
(``weights.pt``).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import Tensor

from guidelab.io import torch_load_checked, torch_save_atomic, write_json_atomic
from guidelab.learn.losses import energy_distance_loss, guided_ddim_step, sample_time_pairs
from guidelab.learn.weights import CHECKPOINT_FORMAT, GuidanceWeights, log_noise_level, save_weights
from guidelab.models.base import NULL_COND, Denoiser
from guidelab.paths import PATHS, NoisePath, get_path

__all__ = [
    "DataSource",
    "LearnConfig",
    "LearnResult",
    "Reward",
    "build_denoiser",
    "build_reward",
    "learn",
    "target_data",
]

DataSource = Callable[[int, torch.Generator], tuple[Tensor, Tensor]]
"""``data(n, generator) -> (x0 (n, ...), c (n,) int64)``: training data drawn from ``generator`` only."""
Reward = Callable[[Tensor, Tensor], Tensor]
"""``reward(x0_hat (batch, ...), c (batch,)) -> (batch,)``, differentiable in ``x0_hat``."""

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
# Fields that do not change the learned weights: a resumed run may differ in them.
_RUN_ONLY = {"out_dir", "resume", "checkpoint_every", "threads"}
_HOLDOUT_SEED_OFFSET = 0x5EED


class LearnConfig(BaseModel):
    """Everything that defines a learning run; validated on construction, errors name the field.

    The denoiser is ``exact`` (the target's exact posterior mean), ``score-error`` (the exact one with an
    injected score error of size ``score_error``) or ``mlp`` (a network checkpoint written by
    ``guidelab train``, in ``model``). Training data are exact samples of ``target``.
    """

    model_config = ConfigDict(extra="forbid")

    # what to learn on
    target: str | None = Field(None, description="built-in target name; default for mlp: the model's target")
    target_params: dict[str, Any] = Field(default_factory=dict)
    denoiser: Literal["exact", "score-error", "mlp"] = "exact"
    model: str | None = Field(None, description="MLP denoiser checkpoint (denoiser = mlp)")
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
    lam: float = Field(1.0, ge=0, le=1)
    particles: int = Field(4, ge=1, description="m true particles and m proposals per data point")
    eta: float = Field(1.0, ge=0, le=1, description="churn of the guided DDIM step")
    delta: float = Field(0.1, gt=0, lt=1)
    zeta: float = Field(0.0, ge=0, lt=1)
    s_min: float = Field(0.0, ge=0, lt=1)
    reward: Literal["none", "log-posterior"] = "none"
    reward_weight: float = Field(0.0, ge=0, description="γ_R")
    reward_t: float = Field(0.0, ge=0, lt=1, description="time at which log p_t(c | x0̂) is evaluated")
    # optimisation
    steps: int = Field(1000, ge=0)
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
            raise ValueError(f"unknown path {v!r}; accepted: {', '.join(PATHS)}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> LearnConfig:
        if self.s_min + self.delta + self.zeta >= 1:
            raise ValueError(f"s_min + delta + zeta must be < 1, got {self.s_min} + {self.delta} + {self.zeta}")
        if self.denoiser == "mlp" and not self.model:
            raise ValueError("model: required when denoiser = 'mlp' (a checkpoint written by `guidelab train`)")
        if self.lam > 0 and self.particles < 2:
            raise ValueError(f"particles: the repulsive term (lam > 0) needs at least 2, got {self.particles}")
        if self.reward_weight > 0 and self.reward == "none":
            raise ValueError("reward: reward_weight > 0 needs a reward (e.g. 'log-posterior')")
        return self

    def result_fields(self) -> dict[str, Any]:
        """The fields that determine the learned weights (all but run-only ones)."""
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in _RUN_ONLY}


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


# --- building the pieces from a config -------------------------------------------------------------------


def _target(config: LearnConfig, model_config: dict[str, Any] | None) -> Any:
    from guidelab.targets import get_target

    if config.target:
        return get_target(config.target, **config.target_params)
    spec = (model_config or {}).get("target")
    if isinstance(spec, dict | str):
        return get_target(spec)
    raise ValueError("target: the model checkpoint does not record its target; give target")


def build_denoiser(config: LearnConfig) -> tuple[Denoiser, Any, NoisePath]:
    """The frozen denoiser, the target that supplies data, and the noise path of ``config``."""
    if config.denoiser == "mlp":
        from guidelab.train import load_denoiser

        model = load_denoiser(config.model or "")
        meta = model.config()
        sidecar = Path(config.model or "").with_suffix(".json")
        if sidecar.is_file():
            meta = {**json.loads(sidecar.read_text()), **meta}
        target = _target(config, meta)
        return model, target, model.path
    if not config.target:
        raise ValueError(f"target: required when denoiser = {config.denoiser!r}")
    target = _target(config, None)
    path = get_path(config.path, **config.path_params)
    exact = target.denoiser(path)
    if config.denoiser == "exact":
        return exact, target, path
    from guidelab.targets.score_error import ScoreErrorDenoiser

    return ScoreErrorDenoiser(exact, config.score_error, config.score_error_seed), target, path


def target_data(target: Any) -> DataSource:
    """Exact samples ``(x0, c)`` of a target with labels from its class prior (:func:`guidelab.train.sample_data`)."""
    from guidelab.train import sample_data

    return lambda n, generator: sample_data(target, n, generator)


def build_reward(config: LearnConfig, target: Any, path: NoisePath) -> Reward | None:
    """``R(x, c) = log p_t(c | x)`` of the exact target at ``t = reward_t`` (``log-posterior``), else None."""
    if config.reward == "none":
        return None
    t = float(config.reward_t)

    def log_posterior(x0_hat: Tensor, cond: Tensor) -> Tensor:
        x = x0_hat.reshape(x0_hat.shape[0], -1).to(torch.float64)
        log_post = target.class_log_posterior(x, torch.full((x.shape[0],), t, dtype=torch.float64), path)
        labels = cond.clamp(min=0)
        return torch.where(
            cond == NULL_COND, torch.zeros_like(labels, dtype=x.dtype), log_post.gather(1, labels[:, None])[:, 0]
        )

    return log_posterior


# --- one batch ----------------------------------------------------------------------------------------


@dataclass
class _Batch:
    """A batch with the frozen predictions: everything the loss needs except ω."""

    cond: Tensor  # (B,)
    log_lam_s: Tensor  # (B,)
    log_lam_t: Tensor  # (B,)
    coefs: tuple[Tensor, Tensor, Tensor, Tensor]  # α_t, σ_t, α_s, σ_s each (B, 1, 1, ...)
    x_t: Tensor  # (B, m, ...)
    x0_cond: Tensor  # (B, m, ...)
    x0_uncond: Tensor  # (B, m, ...)
    x_true: Tensor  # (B, m, ...)
    noise: Tensor  # (B, m, ...)


def _draw_batch(
    denoiser: Denoiser,
    data: DataSource,
    path: NoisePath,
    n: int,
    generator: torch.Generator,
    config: LearnConfig,
    dtype: torch.dtype,
) -> _Batch:
    """Draw (x0, c), (s, t), true particles, proposals and step noise; run the frozen denoiser once."""
    m = config.particles
    x0, cond = data(n, generator)
    x0 = x0.to(dtype)
    cond = cond.long()
    s, t = sample_time_pairs(n, generator, delta=config.delta, zeta=config.zeta, s_min=config.s_min)
    eps_t = torch.randn((n, m, *x0.shape[1:]), generator=generator, dtype=dtype)
    eps_s = torch.randn((n, m, *x0.shape[1:]), generator=generator, dtype=dtype)
    noise = torch.randn((n, m, *x0.shape[1:]), generator=generator, dtype=dtype)
    ones = [1] * (x0.ndim - 1)
    c_t, c_s = path.coefficients(t), path.coefficients(s)
    alpha_t, sigma_t, alpha_s, sigma_s = (
        v.to(dtype).reshape(n, 1, *ones) for v in (c_t.alpha, c_t.sigma, c_s.alpha, c_s.sigma)
    )
    x0_m = x0[:, None]
    x_t = alpha_t * x0_m + sigma_t * eps_t  # (B, m, ...) proposals x_t ~ N(α_t x0, σ_t²)
    x_true = alpha_s * x0_m + sigma_s * eps_s  # (B, m, ...) true particles x_s ~ N(α_s x0, σ_s²)
    flat = x_t.reshape(n * m, *x0.shape[1:])
    t_flat = t.to(dtype).repeat_interleave(m)
    c_flat = cond.repeat_interleave(m)
    with torch.no_grad():  # the frozen denoiser carries no gradient: cond and uncond in one batched call
        out = denoiser(
            torch.cat([flat, flat]),
            torch.cat([t_flat, t_flat]),
            torch.cat([c_flat, torch.full_like(c_flat, NULL_COND)]),
        )
        out = _to_x0(denoiser, out.to(dtype), torch.cat([flat, flat]), torch.cat([t, t]).repeat_interleave(m), path)
    x0_cond, x0_uncond = (v.reshape(n, m, *x0.shape[1:]) for v in out.chunk(2))
    return _Batch(
        cond=cond,
        log_lam_s=log_noise_level(path, s),
        log_lam_t=log_noise_level(path, t),
        coefs=(alpha_t, sigma_t, alpha_s, sigma_s),
        x_t=x_t,
        x0_cond=x0_cond,
        x0_uncond=x0_uncond,
        x_true=x_true,
        noise=noise,
    )


def _to_x0(denoiser: Denoiser, pred: Tensor, x_t: Tensor, t: Tensor, path: NoisePath) -> Tensor:
    """A prediction in the denoiser's space as x0̂."""
    space = getattr(denoiser, "prediction", "x0")
    if space == "x0":
        return pred
    from guidelab.paths import convert

    c = path.coefficients(t).expand_as(x_t)
    return convert(pred, space, "x0", x_t, c)


def _loss(weights: GuidanceWeights, batch: _Batch, config: LearnConfig, reward: Reward | None) -> tuple[Tensor, Tensor]:
    """(total loss, energy-distance part) of a batch at the current φ."""
    omega = weights(batch.cond, batch.log_lam_s, batch.log_lam_t)  # (B,)
    omega = omega.to(batch.x_t.dtype).reshape(-1, *([1] * (batch.x_t.ndim - 1)))
    alpha_t, sigma_t, alpha_s, sigma_s = batch.coefs
    x_s, x0_hat = guided_ddim_step(
        batch.x_t, batch.x0_cond, batch.x0_uncond, omega, alpha_t, sigma_t, alpha_s, sigma_s, batch.noise, config.eta
    )
    ed = energy_distance_loss(x_s, batch.x_true, beta=config.beta, lam=config.lam).mean()
    if reward is None or config.reward_weight == 0:
        return ed, ed
    n, m = x0_hat.shape[:2]
    r = reward(x0_hat.reshape(n * m, *x0_hat.shape[2:]), batch.cond.repeat_interleave(m))
    return ed - config.reward_weight * r.to(ed.dtype).mean(), ed


# --- the loop -------------------------------------------------------------------------------------------


def learn(
    config: LearnConfig,
    progress: bool = False,
    *,
    denoiser: Denoiser | None = None,
    data: DataSource | None = None,
    reward: Reward | None = None,
    num_classes: int | None = None,
    class_names: list[str] | None = None,
    callback: Callable[[int, dict[str, Any]], None] | None = None,
) -> LearnResult:
    """Learn ω_φ(c, s, t) for a frozen conditional denoiser by self-consistency (arXiv 2510.00815, §4).

    Args:
        config: the run (see :class:`LearnConfig`).
        progress: show a rich progress bar with the training and held-out loss.
        denoiser: any :class:`~guidelab.models.base.Denoiser` to learn on instead of the one the config
            names; then ``data`` (and ``num_classes`` for the conditional variant) must be given too.
        data: the data source ``(n, generator) -> (x0, c)``; default: exact samples of the config's target.
        reward: ``R(x0̂, c) -> (batch,)``; default: the config's reward (``log-posterior`` of the target).
        num_classes, class_names: class count (and names, stored with the weights) for a custom denoiser.
        callback: called as ``callback(step, info)`` after every step (info: ``loss``, and ``holdout`` at
            evaluations); an exception raised there interrupts the run like a kill would.

    Returns:
        :class:`LearnResult`; with ``out_dir`` also ``weights.pt``, ``checkpoint.pt``, ``history.json``,
        ``config.json`` there. With ``resume`` and a checkpoint in ``out_dir``, training continues from it.
    """
    threads_before = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        return _learn(config, progress, denoiser, data, reward, num_classes, class_names, callback)
    finally:
        torch.set_num_threads(threads_before)


def _learn(
    config: LearnConfig,
    progress: bool,
    denoiser: Denoiser | None,
    data: DataSource | None,
    reward: Reward | None,
    num_classes: int | None,
    class_names: list[str] | None,
    callback: Callable[[int, dict[str, Any]], None] | None,
) -> LearnResult:
    start = time.perf_counter()
    dtype = _DTYPES[config.dtype]
    if denoiser is None:
        denoiser, target, path = build_denoiser(config)
        data = data or target_data(target)
        reward = reward if reward is not None else build_reward(config, target, path)
        num_classes = target.num_classes if num_classes is None else num_classes
        class_names = class_names or list(target.class_names)
    else:
        if data is None:
            raise ValueError("data: a custom denoiser needs a data source (n, generator) -> (x0, c)")
        path = denoiser.path
        if config.conditional and not num_classes:
            raise ValueError("num_classes: the conditional ω needs the number of classes of a custom denoiser")
        if config.reward != "none" and reward is None:
            raise ValueError("reward: give a reward callable with a custom denoiser")
    num_classes = int(num_classes or 0)
    class_names = class_names or [str(c) for c in range(num_classes)]

    torch_state = torch.random.get_rng_state()
    try:  # initial φ from the seed, without touching the caller's global RNG
        torch.manual_seed(config.seed)
        weights = GuidanceWeights(
            num_classes if config.conditional else 0,
            hidden=config.hidden,
            depth=config.depth,
            frequencies=config.frequencies,
            class_dim=config.class_dim,
            output=config.output,
            init_omega=config.init_omega,
        ).to(dtype)
    finally:
        torch.random.set_rng_state(torch_state)
    optimizer = torch.optim.Adam(weights.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    meta = {
        "path": path.config(),
        "class_names": class_names,
        "num_classes": num_classes,
        "learn": config.result_fields(),
        "source": "arXiv 2510.00815",
    }

    out_dir = Path(config.out_dir) if config.out_dir else None
    state: dict[str, Any] = {
        "step": 0,
        "best_holdout": float("inf"),
        "best_step": 0,
        "best_weights": None,
        "bad_evals": 0,
        "history": [],
        "stopped_early": False,
    }
    resumed_from = None
    if out_dir is not None and config.resume and (out_dir / "checkpoint.pt").is_file():
        state = _restore(out_dir / "checkpoint.pt", config, weights, optimizer, generator)
        resumed_from = state["step"]
    if out_dir is not None:
        write_json_atomic(out_dir / "config.json", config.model_dump(mode="json"))

    holdout_gen = torch.Generator().manual_seed(config.seed + _HOLDOUT_SEED_OFFSET)
    holdout = _draw_batch(denoiser, data, path, config.holdout, holdout_gen, config, dtype)

    def evaluate() -> float:
        with torch.no_grad():
            return float(_loss(weights, holdout, config, reward)[0])

    def save_checkpoint() -> None:
        if out_dir is not None:
            _save(out_dir / "checkpoint.pt", config, weights, optimizer, generator, state, meta)

    from guidelab.train import StatusBar

    running, count = 0.0, 0
    with StatusBar(progress, config.steps, "learning ω") as bar:
        bar.advance(steps=min(state["step"], config.steps))
        while state["step"] < config.steps and not state["stopped_early"]:
            batch = _draw_batch(denoiser, data, path, config.batch_size, generator, config, dtype)
            loss, _ = _loss(weights, batch, config, reward)
            if not torch.isfinite(loss):
                raise ValueError(
                    f"loss: non-finite at step {state['step'] + 1}; the frozen denoiser or the reward returned "
                    "non-finite values (near t = 1 a path with α = 0 can make x0̂ infinite: try zeta > 0)"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(weights.parameters(), config.grad_clip)
            optimizer.step()
            state["step"] += 1
            step = state["step"]
            running, count = running + float(loss.detach()), count + 1
            info: dict[str, Any] = {"loss": float(loss.detach())}
            if step % config.eval_every == 0 or step == config.steps:
                info["holdout"] = _record(state, weights, evaluate(), running / count, config)
                running, count = 0.0, 0
            if step % config.checkpoint_every == 0 or step == config.steps or state["stopped_early"]:
                save_checkpoint()
            bar.advance(
                f"loss {info['loss']:.4f}  held-out {state['history'][-1]['holdout']:.4f}"
                if state["history"]
                else f"loss {info['loss']:.4f}"
            )
            if callback is not None:
                callback(step, info)
    if not state["history"]:  # zero steps: still report the held-out loss of the initial weights
        _record(state, weights, evaluate(), float("nan"), config)
        save_checkpoint()
    if state["best_weights"] is not None:
        weights.load_state_dict(state["best_weights"])
    weights.eval()
    weights.requires_grad_(False)
    meta = {
        **meta,
        "best_step": state["best_step"],
        "best_holdout": state["best_holdout"],
        "steps_done": state["step"],
        "stopped_early": state["stopped_early"],
    }
    weights_path = None
    if out_dir is not None:
        weights_path = out_dir / "weights.pt"
        save_weights(weights, weights_path, meta)
        write_json_atomic(
            out_dir / "history.json",
            {
                "history": state["history"],
                **{k: meta[k] for k in ("best_step", "best_holdout", "steps_done", "stopped_early")},
            },
        )
    return LearnResult(
        weights=weights,
        history=state["history"],
        best_step=state["best_step"],
        best_holdout=state["best_holdout"],
        steps_done=state["step"],
        stopped_early=state["stopped_early"],
        resumed_from=resumed_from,
        wall_time=time.perf_counter() - start,
        weights_path=weights_path,
        meta=meta,
    )


def _record(
    state: dict[str, Any], weights: GuidanceWeights, holdout: float, train_loss: float, config: LearnConfig
) -> float:
    """Append an evaluation to the history; keep the best weights; decide early stopping."""
    state["history"].append({"step": state["step"], "train_loss": train_loss, "holdout": holdout})
    if holdout < state["best_holdout"] - config.min_delta or state["best_weights"] is None:
        state["best_holdout"], state["best_step"] = holdout, state["step"]
        state["best_weights"] = copy.deepcopy(weights.state_dict())
        state["bad_evals"] = 0
    else:
        state["bad_evals"] += 1
        if config.patience and state["bad_evals"] >= config.patience:
            state["stopped_early"] = True
    return holdout


def _save(
    file: Path,
    config: LearnConfig,
    weights: GuidanceWeights,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    state: dict[str, Any],
    meta: dict[str, Any],
) -> None:
    torch_save_atomic(
        {
            "format": CHECKPOINT_FORMAT,
            "config": config.model_dump(mode="json"),
            "result_fields": config.result_fields(),
            "weights_config": weights.config(),
            "weights": weights.state_dict(),
            "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(),
            "meta": meta,
            **state,
        },
        file,
    )


def _restore(
    file: Path,
    config: LearnConfig,
    weights: GuidanceWeights,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> dict[str, Any]:
    """Load a checkpoint into φ, the optimiser and the generator; return the loop state."""
    blob = torch_load_checked(file)
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint: {str(file)!r} is not a guidelab learning checkpoint")
    stored, current = blob["result_fields"], config.result_fields()
    differing = sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))
    if differing:
        key = differing[0]
        raise ValueError(
            f"{key}: the checkpoint in {str(file.parent)!r} was written with {key}={stored.get(key)!r}, not "
            f"{current.get(key)!r}; use another out_dir or resume=False"
        )
    weights.load_state_dict(blob["weights"])
    optimizer.load_state_dict(blob["optimizer"])
    generator.set_state(blob["generator"])
    return {
        k: blob[k]
        for k in ("step", "best_holdout", "best_step", "best_weights", "bad_evals", "history", "stopped_early")
    }
