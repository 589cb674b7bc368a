"""Learning guidance weights ω_φ(c, s, t) by self-consistency (Galashov et al., arXiv 2510.00815; docs/methods.md §4).

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

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from guidelab.denoiser import Denoiser
from guidelab.io import write_json_atomic
from guidelab.learn.checkpoint import record_evaluation, restore_checkpoint, save_checkpoint
from guidelab.learn.config import HOLDOUT_SEED_OFFSET, DataSource, LearnConfig, LearnResult, Reward
from guidelab.learn.data import batch_loss, build_denoiser, build_reward, draw_batch, target_data
from guidelab.models.guidance_weights import GuidanceWeights, save_weights
from guidelab.progress import ProgressBar
from guidelab.validation import torch_dtype

__all__ = ["learn"]


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
        denoiser: any :class:`~guidelab.denoiser.Denoiser` to learn on instead of the one the config
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
    dtype = torch_dtype(config.dtype)
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
        state = restore_checkpoint(out_dir / "checkpoint.pt", config, weights, optimizer, generator)
        resumed_from = state["step"]
    if out_dir is not None:
        write_json_atomic(out_dir / "config.json", config.model_dump(mode="json"))

    holdout_gen = torch.Generator().manual_seed(config.seed + HOLDOUT_SEED_OFFSET)
    holdout = draw_batch(denoiser, data, path, config.holdout, holdout_gen, config, dtype)

    def evaluate() -> float:
        with torch.no_grad():
            return float(batch_loss(weights, holdout, config, reward)[0])

    def checkpoint_now() -> None:
        if out_dir is not None:
            save_checkpoint(out_dir / "checkpoint.pt", config, weights, optimizer, generator, state, meta)

    running, count = 0.0, 0
    with ProgressBar(progress, config.steps, "learning ω") as bar:
        bar.advance(steps=min(state["step"], config.steps))
        while state["step"] < config.steps and not state["stopped_early"]:
            batch = draw_batch(denoiser, data, path, config.batch_size, generator, config, dtype)
            loss, _ = batch_loss(weights, batch, config, reward)
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
                info["holdout"] = record_evaluation(state, weights, evaluate(), running / count, config)
                running, count = 0.0, 0
            if step % config.checkpoint_every == 0 or step == config.steps or state["stopped_early"]:
                checkpoint_now()
            bar.advance(
                status=f"loss {info['loss']:.4f}  held-out {state['history'][-1]['holdout']:.4f}"
                if state["history"]
                else f"loss {info['loss']:.4f}"
            )
            if callback is not None:
                callback(step, info)
    if not state["history"]:  # zero steps: still report the held-out loss of the initial weights
        record_evaluation(state, weights, evaluate(), float("nan"), config)
        checkpoint_now()
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
