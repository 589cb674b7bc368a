"""The pieces learning runs on, built from a :class:`~guidelab.learn.config.LearnConfig` (the frozen denoiser,
the data, the reward), and one batch: data, time pairs, true particles and proposals with their frozen
predictions, and the loss on it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from guidelab.denoiser import NULL_COND, Denoiser
from guidelab.learn.config import DataSource, LearnConfig, Reward
from guidelab.learn.losses import energy_distance_loss, guided_ddim_step, sample_time_pairs
from guidelab.models.guidance_weights import GuidanceWeights, log_noise_level
from guidelab.paths import NoisePath, get_path

__all__ = [
    "Batch",
    "batch_loss",
    "build_denoiser",
    "build_reward",
    "draw_batch",
    "image_data",
    "target_data",
    "to_x0",
]


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
    if config.denoiser == "image":
        return _image_denoiser(config.model or "")
    if not config.target:
        raise ValueError(f"target: required when denoiser = {config.denoiser!r}")
    target = _target(config, None)
    path = get_path(config.path, **config.path_params)
    exact = target.denoiser(path)
    if config.denoiser == "exact":
        return exact, target, path
    from guidelab.targets.score_error import ScoreErrorDenoiser

    return ScoreErrorDenoiser(exact, config.score_error, config.score_error_seed), target, path


def _image_denoiser(model: str) -> tuple[Denoiser, Any, NoisePath]:
    """A shipped image model (by name) or an image checkpoint, the train split of its dataset, and its path."""
    from guidelab.data import load_dataset
    from guidelab.models.trained import load_trained
    from guidelab.models.zoo import SHIPPED_DENOISERS

    denoiser = load_trained("shipped" if model in SHIPPED_DENOISERS else "checkpoint", model)
    config = getattr(denoiser, "checkpoint_config", None) or {}
    if not config.get("data"):
        raise ValueError(f"model: {model!r} does not record the dataset it was trained on (its config's data)")
    data = load_dataset(str(config["data"]), "train")
    positive = (config.get("train") or {}).get("one_vs_rest")
    if positive is not None:  # a one-vs-rest model: its classes are (K, not-K), so are the data's labels
        data = data.one_vs_rest(int(positive))
    return denoiser, data, denoiser.path


def image_data(data: Any) -> DataSource:
    """Images ``(x0 (n, C, H, W), c (n,))`` of an :class:`~guidelab.data.ImageData` split, drawn uniformly with
    replacement from ``generator`` only."""
    images, labels = data.images, data.labels

    def draw(n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        idx = torch.randint(len(labels), (n,), generator=generator)
        return images[idx], labels[idx]

    return draw


def target_data(target: Any) -> DataSource:
    """Exact samples ``(x0, c)`` of a target with labels from its class prior (:func:`guidelab.train.sample_data`);
    for an image dataset split, :func:`image_data`."""
    from guidelab.data import ImageData
    from guidelab.train import sample_data

    if isinstance(target, ImageData):
        return image_data(target)
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
class Batch:
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


def draw_batch(
    denoiser: Denoiser,
    data: DataSource,
    path: NoisePath,
    n: int,
    generator: torch.Generator,
    config: LearnConfig,
    dtype: torch.dtype,
) -> Batch:
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
        out = to_x0(denoiser, out.to(dtype), torch.cat([flat, flat]), torch.cat([t, t]).repeat_interleave(m), path)
    x0_cond, x0_uncond = (v.reshape(n, m, *x0.shape[1:]) for v in out.chunk(2))
    return Batch(
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


def to_x0(denoiser: Denoiser, pred: Tensor, x_t: Tensor, t: Tensor, path: NoisePath) -> Tensor:
    """A prediction in the denoiser's space as x0̂."""
    space = getattr(denoiser, "prediction", "x0")
    if space == "x0":
        return pred
    from guidelab.paths import convert

    c = path.coefficients(t).expand_as(x_t)
    return convert(pred, space, "x0", x_t, c)


def batch_loss(
    weights: GuidanceWeights, batch: Batch, config: LearnConfig, reward: Reward | None
) -> tuple[Tensor, Tensor]:
    """(total loss, energy-distance part) of a batch at the current φ."""
    omega = weights(batch.cond, batch.log_lam_s, batch.log_lam_t)  # (B,)
    omega = omega.to(batch.x_t.dtype).reshape(-1, *([1] * (batch.x_t.ndim - 1)))
    alpha_t, sigma_t, alpha_s, sigma_s = batch.coefs
    x_s, x0_hat = guided_ddim_step(
        batch.x_t, batch.x0_cond, batch.x0_uncond, omega, alpha_t, sigma_t, alpha_s, sigma_s, batch.noise, config.eta
    )
    ed = energy_distance_loss(x_s, batch.x_true, beta=config.beta, repulsion=config.repulsion).mean()
    if reward is None or config.reward_weight == 0:
        return ed, ed
    n, m = x0_hat.shape[:2]
    r = reward(x0_hat.reshape(n * m, *x0_hat.shape[2:]), batch.cond.repeat_interleave(m))
    return ed - config.reward_weight * r.to(ed.dtype).mean(), ed
