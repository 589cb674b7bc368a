"""Train the small conditional :class:`~guidelab.models.mlp.MLPDenoiser` on exact samples of a target.

Denoising score matching in x0 space with EDM's loss weight (Karras et al. 2022, arXiv 2206.00364,
Eq. 8 and Table 1): with ``x_t = α·x0 + σ·ε``, ``t ~ U[t_min, 1]`` and classifier-free dropout
(the label replaced by the null class with probability ``p_uncond``; Ho & Salimans 2022,
arXiv 2207.12598), minimise

    E ‖F_θ(c_in·x_t, c_noise, c) − (x0 − c_skip·x_t)/c_out‖²,

which is ``‖x0̂ − x0‖²/c_out²``. Every draw (data, labels, times, noise, dropout) comes from one seeded
``torch.Generator``, so the same seed gives the same weights; a network trained for few steps is the
deliberately under-trained denoiser of Learn to Guide (arXiv 2510.00815).

Checkpoints are a ``torch.save`` of ``{"config", "state_dict"}`` written atomically (temporary file then
``os.replace``) with the config also written as JSON beside it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from guidelab.io import torch_load_checked, torch_save_atomic, write_json_atomic
from guidelab.models.mlp import MLPDenoiser
from guidelab.paths import NoisePath, get_path
from guidelab.progress import ProgressBar

__all__ = [
    "TrainResult",
    "load_denoiser",
    "sample_data",
    "save_denoiser",
    "train_denoiser",
]

_FORMAT = "guidelab-mlp-denoiser/1"


def sample_data(target: Any, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``(x0, c)``: n exact samples (n, D) float64 of a target with labels (n,) int64 drawn from its prior.

    Labels are drawn first, then each class is sampled in one call, then the rows are put back in label
    order, so the result depends only on the generator state.
    """
    labels = torch.multinomial(target.class_prior.double(), n, replacement=True, generator=generator)
    x0 = torch.empty(n, target.dim, dtype=torch.float64)
    for c in range(target.num_classes):
        rows = (labels == c).nonzero().reshape(-1)
        if rows.numel():
            x0[rows] = target.sample(int(rows.numel()), c, generator=generator).to(torch.float64).cpu()
    return x0, labels


@dataclass
class TrainResult:
    """What :func:`train_denoiser` returns: the network, its per-step losses and the wall time."""

    model: MLPDenoiser
    losses: list[float] = field(default_factory=list)
    wall_time: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)


def train_denoiser(
    target: Any,
    path: str | NoisePath = "rf",
    *,
    steps: int = 2000,
    batch_size: int = 256,
    lr: float = 2e-3,
    hidden: int = 128,
    depth: int = 3,
    embed_dim: int = 32,
    sigma_data: float | None = None,
    p_uncond: float = 0.1,
    t_min: float = 1e-3,
    seed: int = 0,
    out: str | Path | None = None,
    progress: bool = False,
    callback: Callable[[int, float], None] | None = None,
    threads: int | None = 1,
) -> TrainResult:
    """Fit an :class:`MLPDenoiser` to ``target`` for ``steps`` Adam steps (few steps = under-trained).

    Args:
        target: an analytic :class:`~guidelab.targets.base.Target` (its ``sample`` gives the data).
        path: the noise path to train on.
        steps: optimisation steps (≥ 0; 0 returns the initial network, the Gaussian-fit denoiser).
        batch_size: samples per step.
        lr: Adam learning rate (cosine-decayed to 0 over ``steps``).
        hidden, depth, embed_dim: network size (see :class:`MLPDenoiser`).
        sigma_data: σ_d of the preconditioning; default: the data's overall standard deviation, estimated
            from 4096 samples drawn with the seed.
        p_uncond: probability of replacing a label by the null class (CFG dropout).
        t_min: smallest training time (t ~ U[t_min, 1]).
        seed: seeds the one generator behind every draw and the initial weights.
        out: if given, the checkpoint file (``.pt``) written at the end (JSON config beside it).
        progress: show a rich progress bar with the loss.
        callback: called as ``callback(step, loss)`` after each step.
        threads: torch threads while training (restored after); one is fastest for networks this small
            (intra-op threading only adds synchronisation, badly so on shared cores). None: leave as is.
    """
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads: must be an integer ≥ 1 or None, got {threads!r}")
    threads_before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _train(
            target,
            path,
            steps,
            batch_size,
            lr,
            hidden,
            depth,
            embed_dim,
            sigma_data,
            p_uncond,
            t_min,
            seed,
            out,
            progress,
            callback,
        )
    finally:
        torch.set_num_threads(threads_before)


def _train(
    target: Any,
    path: str | NoisePath,
    steps: int,
    batch_size: int,
    lr: float,
    hidden: int,
    depth: int,
    embed_dim: int,
    sigma_data: float | None,
    p_uncond: float,
    t_min: float,
    seed: int,
    out: str | Path | None,
    progress: bool,
    callback: Callable[[int, float], None] | None,
) -> TrainResult:
    for name, value, low in (("steps", steps, 0), ("batch_size", batch_size, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name}: must be an integer ≥ {low}, got {value!r}")
    if not lr > 0:
        raise ValueError(f"lr: must be > 0, got {lr}")
    if not 0 <= p_uncond < 1:
        raise ValueError(f"p_uncond: must lie in [0, 1), got {p_uncond}")
    if not 0 < t_min < 1:
        raise ValueError(f"t_min: must lie in (0, 1), got {t_min}")
    noise_path = get_path(path)
    generator = torch.Generator().manual_seed(int(seed))
    if sigma_data is None:
        x_ref, _ = sample_data(target, 4096, generator)
        sigma_data = float(x_ref.std())
    torch_state = torch.random.get_rng_state()
    try:  # the initial weights come from the seed without touching the caller's global RNG
        torch.manual_seed(int(seed))
        model = MLPDenoiser(
            target.dim,
            target.num_classes,
            noise_path,
            hidden=hidden,
            depth=depth,
            embed_dim=embed_dim,
            sigma_data=sigma_data,
        )
    finally:
        torch.random.set_rng_state(torch_state)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda k: 0.5 * (1 + math.cos(math.pi * k / max(steps, 1)))
    )
    config = {
        **model.config(),
        "target": target.config() if hasattr(target, "config") else str(target),
        "train": {
            "steps": steps,
            "batch_size": batch_size,
            "lr": lr,
            "p_uncond": p_uncond,
            "t_min": t_min,
            "seed": seed,
        },
    }
    losses: list[float] = []
    start = time.perf_counter()
    bar = ProgressBar(progress, steps, "training denoiser")
    with bar:
        for step in range(steps):
            x0, labels = sample_data(target, batch_size, generator)
            x0 = x0.float()
            drop = torch.rand(batch_size, generator=generator) < p_uncond
            labels = torch.where(drop, torch.full_like(labels, -1), labels)
            t = t_min + (1 - t_min) * torch.rand(batch_size, generator=generator, dtype=torch.float64)
            eps = torch.randn(x0.shape, generator=generator)
            c = noise_path.coefficients(t)
            x_t = c.alpha.float()[:, None] * x0 + c.sigma.float()[:, None] * eps
            c_skip, c_out, c_in, c_noise = model.preconditioning(t, x_t)
            target_f = (x0 - c_skip * x_t) / c_out
            loss = (model.raw(c_in * x_t, c_noise, labels) - target_f).pow(2).sum(-1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            bar.advance(status=f"loss {losses[-1]:.4f}")
            if callback is not None:
                callback(step, losses[-1])
    model.eval()
    model.requires_grad_(False)
    result = TrainResult(model, losses, time.perf_counter() - start, config)
    if out is not None:
        save_denoiser(model, out, extra=config)
    return result


def save_denoiser(model: MLPDenoiser, path: str | Path, extra: dict[str, Any] | None = None) -> None:
    """Write ``{"format", "config", "state_dict"}`` to ``path`` atomically, and the config as JSON beside it."""
    path = Path(path)
    config = {**(extra or {}), **model.config()}
    torch_save_atomic({"format": _FORMAT, "config": config, "state_dict": model.state_dict()}, path)
    write_json_atomic(path.with_suffix(".json"), config)


def load_denoiser(path: str | Path) -> MLPDenoiser:
    """Load a denoiser written by :func:`save_denoiser` (weights only, no pickled code), in eval mode."""
    blob = torch_load_checked(path)
    if not isinstance(blob, dict) or blob.get("format") != _FORMAT:
        raise ValueError(f"checkpoint: {str(path)!r} is not a guidelab MLP denoiser checkpoint")
    model = MLPDenoiser.from_config(blob["config"])
    model.load_state_dict(blob["state_dict"])
    model.eval()
    model.requires_grad_(False)
    return model
