"""guidelab's guided loop on a diffusers pipeline's components: :func:`generate`.

``generate(pipe, prompt, guider=..., solver=..., steps=...)`` encodes the prompts with the pipeline's own encoders
(or takes embeddings), draws the initial latents from guidelab's seeded noise, samples with any guidelab guider and
solver on any grid (by default the scheduler's own times), decodes with the VAE, and returns the images with the
NFE, the diverged count and the wall time. One code path serves Stable Diffusion 1.x/2.x, SDXL, SD3, Flux and DiT
pipelines; the networks are wrapped by :mod:`guidelab.models.adapters`.

The pipeline's scheduler is read, never stepped: it gives the path (its ``alphas_cumprod``, or flow matching's
σ = t), the grid (``set_timesteps`` on a copy) and the solver that matches it (:data:`MATCHING_SOLVERS`), so that
``generate`` with guidelab's CFG reproduces the pipeline's own call (tests/test_pipelines.py). Latents follow the
pipelines' convention: unit-variance noise, ``x_T = ξ`` (guidelab draws ξ per sample from ``seed``); on the
scheduler's grid times the scheduler's own start (Euler with linspace/trailing spacing: σ_max·ξ in its scaling).

Loading is strictly local (:func:`load_pipeline`): nothing is ever downloaded.
"""

from __future__ import annotations

import copy
import importlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from guidelab.denoiser import Denoiser
from guidelab.grids import GRIDS, check_grid_params, make_grid
from guidelab.guiders.base import Guider
from guidelab.guiders.channels import GuidedChannels
from guidelab.guiders.registry import build_guider
from guidelab.models.adapters import (
    ConditionTable,
    DiTDenoiser,
    FluxDenoiser,
    SD3Denoiser,
    UNetDenoiser,
)
from guidelab.noise import NoiseSource
from guidelab.paths import DiscreteVPPath, NoisePath, RectifiedFlowPath
from guidelab.progress import counted
from guidelab.sampling import DEFAULT_DIVERGENCE_FACTOR, SOLVERS, sample
from guidelab.validation import did_you_mean

__all__ = [
    "FAMILIES",
    "MATCHING_SOLVERS",
    "GenerateResult",
    "PipelineInfo",
    "check_grid_choice",
    "current_grid",
    "family_of",
    "generate",
    "inspect_pipeline",
    "load_pipeline",
    "matching_solver",
    "pipeline_denoiser",
    "pipeline_path",
    "quiet_libraries",
    "save_images",
    "scheduler_grid",
]

FAMILIES = ("sd", "sdxl", "sd3", "flux", "dit")
TEXT_FAMILIES = ("sd", "sdxl", "sd3", "flux")

# The guidelab solver whose update is the scheduler's step (deterministic settings). EulerDiscreteScheduler steps
# Euler in σ on the VE-scaled state x/α, which is DDIM on the VP state.
MATCHING_SOLVERS = {
    "DDIMScheduler": "ddim",
    "DDPMScheduler": "ddim",
    "PNDMScheduler": "ddim",
    "EulerDiscreteScheduler": "ddim",
    "DPMSolverMultistepScheduler": "dpm++2m",
    "EulerAncestralDiscreteScheduler": "euler-ancestral",
    "FlowMatchEulerDiscreteScheduler": "euler",
}


def family_of(pipe: Any) -> str:
    """The family of a pipeline by its denoising network: ``sd``, ``sdxl``, ``sd3``, ``flux`` or ``dit``.

    Raises:
        ValueError: naming ``pipeline`` for a pipeline without a supported network.
    """
    unet = getattr(pipe, "unet", None)
    if unet is not None and type(unet).__name__ == "UNet2DConditionModel":
        return "sdxl" if getattr(pipe, "text_encoder_2", None) is not None or _has_added_text(unet) else "sd"
    net = type(getattr(pipe, "transformer", None)).__name__
    if net == "SD3Transformer2DModel":
        return "sd3"
    if net == "FluxTransformer2DModel":
        return "flux"
    if net in ("DiTTransformer2DModel", "Transformer2DModel") and hasattr(pipe, "transformer"):
        return "dit"
    raise ValueError(
        f"pipeline: {type(pipe).__name__} is not supported (its network is "
        f"{type(unet).__name__ if unet is not None else net}); supported: Stable Diffusion 1.x/2.x, SDXL, SD3, "
        "Flux and DiT pipelines"
    )


def _has_added_text(unet: Any) -> bool:
    return getattr(unet.config, "addition_embed_type", None) == "text_time"


def matching_solver(scheduler: Any) -> str:
    """The guidelab solver that reproduces ``scheduler``'s deterministic step (``ddim`` where none is known)."""
    return MATCHING_SOLVERS.get(type(scheduler).__name__, "ddim")


def pipeline_path(pipe: Any) -> NoisePath:
    """The guidelab path of a pipeline: its scheduler's discrete VP path, or ``rf`` for flow matching."""
    if family_of(pipe) in ("sd3", "flux"):
        return RectifiedFlowPath()
    return DiscreteVPPath.from_scheduler(pipe.scheduler)


def scheduler_grid(scheduler: Any, steps: int, path: NoisePath, *, image_seq_len: int | None = None) -> Tensor:
    """The scheduler's own N + 1 times as a guidelab grid on ``path`` (the scheduler is copied, not changed).

    - Discrete schedulers: evaluation times ``(k + 1)/N`` at its timesteps k; the last point is where its last
      step lands: σ = 0 (t = 0), or DDIM's ``final_alpha_cumprod`` (ᾱ_0 where ``set_alpha_to_one`` is false:
      t = 1/N). Schedulers with fractional timesteps (Euler's ``linspace`` spacing) are read through their σ.
    - Flow matching: its shifted σ, which is guidelab's t on ``rf``, as FluxPipeline and SD3's pipeline set them
      (Flux: σ from 1 to 1/N with the resolution-dependent shift μ of ``image_seq_len``).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: must be an integer ≥ 1, got {steps!r}")
    sch = copy.deepcopy(scheduler)
    if isinstance(path, RectifiedFlowPath):
        config = sch.config
        if config.get("use_dynamic_shifting", False):
            if image_seq_len is None:
                raise ValueError("image_seq_len: a dynamically shifted flow scheduler needs the latent's length")
            mu = _flux_shift(image_seq_len, config)
            sigmas = [1.0 - i * (1.0 - 1.0 / steps) / max(steps - 1, 1) for i in range(steps)]
            type(sch).set_timesteps(sch, steps, sigmas=sigmas, mu=mu)  # the class method: not a wrapper on the instance
        else:
            type(sch).set_timesteps(sch, steps)
    else:
        type(sch).set_timesteps(sch, steps)
    grid = current_grid(sch, path)
    if grid.numel() != steps + 1:
        raise ValueError(f"grid: {type(scheduler).__name__} gave {counted(grid.numel() - 1, 'step')} for {steps}")
    return grid


def current_grid(scheduler: Any, path: NoisePath) -> Tensor:
    """The grid of the times ``scheduler`` is set to now (after the pipeline's ``set_timesteps``), on ``path``:
    the N evaluation times and the point the last step lands on (see :func:`scheduler_grid`)."""
    if isinstance(path, RectifiedFlowPath):
        grid = torch.as_tensor(scheduler.sigmas, dtype=torch.float32).to(torch.float64).reshape(-1).cpu()
    elif isinstance(path, DiscreteVPPath):
        timesteps = torch.as_tensor(scheduler.timesteps).to(torch.float64).reshape(-1).cpu()
        sigmas = getattr(scheduler, "sigmas", None)
        sigmas = None if sigmas is None else torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1).cpu()
        integer = bool((timesteps == timesteps.round()).all())
        if integer and (sigmas is None or bool((timesteps[1:] < timesteps[:-1]).all())):
            times = path.time_of_timestep(timesteps)
        else:  # fractional timesteps, or integer ones rounded from σ that repeat (DPM-Solver's Karras σ at 50 steps)
            assert sigmas is not None
            times = path.t_of_lam(sigmas[: timesteps.numel()])
            # the scheduler's float32 σ at its last training timestep rounds a hair past the path's end (t = 1)
            times = torch.where((times > 1) & (times <= 1 + 1e-6), torch.ones_like(times), times)
        if sigmas is not None:
            last = path.t_of_lam(sigmas[-1:])
        else:
            final = float(getattr(scheduler, "final_alpha_cumprod", torch.tensor(1.0)))
            lam = 0.0 if final >= 1 else ((1 - final) / final) ** 0.5
            last = path.t_of_lam(torch.tensor([lam], dtype=torch.float64))
        grid = torch.cat([times, last.to(torch.float64)])
    else:
        raise ValueError(f"path: no scheduler grid for path {path.name!r}")
    if grid.numel() < 2 or not bool((grid[1:] < grid[:-1]).all()):
        raise ValueError(f"grid: {type(scheduler).__name__}'s times are not a strictly decreasing grid")
    grid.noise_path = path  # type: ignore[attr-defined]
    return grid


def _flux_shift(image_seq_len: int, config: Any) -> float:
    """Flux's resolution-dependent shift μ (diffusers ``calculate_shift``): linear in the latent's token count."""
    base_len, max_len = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    base_shift, max_shift = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
    m = (max_shift - base_shift) / (max_len - base_len)
    return image_seq_len * m + base_shift - m * base_len


@dataclass
class GenerateResult:
    """What :func:`generate` returns.

    Attributes:
        images: decoded images (a list of PIL images, an array (n, H, W, 3) in [0, 1], or a tensor (n, 3, H, W)),
            or the latents for ``output_type="latent"``.
        latents: the final latents (n, C, h, w).
        nfe: network evaluations per sample (a batched cond + null forward counts 2).
        calls: forward calls of the network (before ``max_batch`` chunking).
        diverged: how many samples the divergence monitor froze.
        wall_time: seconds of sampling (encoding and decoding excluded).
        config: the run's full configuration (JSON-serialisable).
        notes: what guidelab decided on the user's behalf, one line each.
        diverged_indices: the indices (into the prompt-major batch) of the diverged samples, ascending.
    """

    images: Any
    latents: Tensor
    nfe: int
    calls: int
    diverged: int
    wall_time: float
    config: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    diverged_indices: list[int] = field(default_factory=list)


def _as_list(value: str | list[str] | None, name: str) -> list[str] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else list(value)
    if not items or not all(isinstance(p, str) for p in items):
        raise ValueError(f"{name}: expected a string or a non-empty list of strings")
    return items


def encode_prompts(
    pipe: Any,
    prompts: list[str],
    negative: list[str] | None,
    device: torch.device | str,
    *,
    size: tuple[int, int] | None = None,
) -> ConditionTable:
    """The conditioning of ``prompts`` (P rows) and their negatives (``negative``: one for all or one per prompt;
    None: the empty prompt) by the pipeline's own encoders. ``size``: the image's (height, width) in pixels, which
    SDXL's added time ids hold (default: the model's size)."""
    family = family_of(pipe)
    if negative is not None and len(negative) not in (1, len(prompts)):
        raise ValueError(f"negative_prompt: give one or {len(prompts)} (one per prompt), got {len(negative)}")
    # None keeps the pipeline's own null condition (SDXL: zeros where force_zeros_for_empty_prompt, else "").
    neg_full = None if negative is None else negative * len(prompts) if len(negative) == 1 else negative
    with torch.no_grad():
        if family == "sd":
            pos, nul = pipe.encode_prompt(prompts, device, 1, True, neg_full)
            cond, null = {"encoder_hidden_states": pos}, {"encoder_hidden_states": nul}
        elif family == "sdxl":
            pos, nul, pooled, null_pooled = pipe.encode_prompt(
                prompts, device=device, num_images_per_prompt=1, do_classifier_free_guidance=True,
                negative_prompt=neg_full,
            )  # fmt: skip
            time_ids = _sdxl_time_ids(pipe, pos.dtype, size).to(device).expand(len(prompts), -1)
            cond = {"encoder_hidden_states": pos, "text_embeds": pooled, "time_ids": time_ids}
            null = {"encoder_hidden_states": nul, "text_embeds": null_pooled, "time_ids": time_ids}
        elif family == "sd3":
            pos, nul, pooled, null_pooled = pipe.encode_prompt(
                prompts, None, None, device=device, num_images_per_prompt=1, do_classifier_free_guidance=True,
                negative_prompt=neg_full,
            )  # fmt: skip
            cond = {"encoder_hidden_states": pos, "pooled_projections": pooled}
            null = {"encoder_hidden_states": nul, "pooled_projections": null_pooled}
        elif family == "flux":
            pos, pooled, _ = pipe.encode_prompt(prompts, None, device=device, num_images_per_prompt=1)
            empty = neg_full if neg_full is not None else [""] * len(prompts)  # FluxPipeline's true CFG needs one
            nul, null_pooled, _ = pipe.encode_prompt(empty, None, device=device, num_images_per_prompt=1)
            cond = {"encoder_hidden_states": pos, "pooled_projections": pooled}
            null = {"encoder_hidden_states": nul, "pooled_projections": null_pooled}
        else:
            raise ValueError("prompt: a class-conditional pipeline (DiT) takes class labels, not prompts")
    if negative is None or len(negative) == 1:  # one null condition for every prompt: keep one row
        null = {k: v[:1] for k, v in null.items()}
    return ConditionTable(cond, null)


def _sdxl_time_ids(pipe: Any, dtype: torch.dtype, size: tuple[int, int] | None = None) -> Tensor:
    """SDXL's added time ids (original size, crop corner, target size) for an image of ``size`` = (height, width)
    (default: the model's), as the pipeline builds them by default: both sizes (height, width), corner (0, 0)."""
    if size is None:
        side = pipe.default_sample_size * pipe.vae_scale_factor
        size = (side, side)
    size = (int(size[0]), int(size[1]))
    proj = pipe.text_encoder_2.config.projection_dim if pipe.text_encoder_2 is not None else None
    return pipe._get_add_time_ids(size, (0, 0), size, dtype=dtype, text_encoder_projection_dim=proj)


def pipeline_denoiser(
    pipe: Any,
    conditions: ConditionTable | None = None,
    *,
    max_batch: int | None = None,
    distilled_guidance: float | None = None,
) -> Denoiser:
    """The pipeline's network as a guidelab denoiser on its path (``conditions``: encoded prompts for text
    pipelines, None for DiT)."""
    family = family_of(pipe)
    if family in TEXT_FAMILIES and conditions is None:
        raise ValueError("conditions: a text-to-image pipeline needs encoded prompts (encode_prompts)")
    if family in ("sd", "sdxl"):
        return UNetDenoiser(
            pipe.unet,
            DiscreteVPPath.from_scheduler(pipe.scheduler),
            prediction_type=pipe.scheduler.config.get("prediction_type", "epsilon"),
            conditions=conditions,
            max_batch=max_batch,
        )
    if family == "dit":
        return DiTDenoiser(
            pipe.transformer,
            DiscreteVPPath.from_scheduler(pipe.scheduler),
            prediction_type=pipe.scheduler.config.get("prediction_type", "epsilon"),
            max_batch=max_batch,
        )
    assert conditions is not None
    if family == "sd3":
        n_train = int(pipe.scheduler.config.get("num_train_timesteps", 1000))
        return SD3Denoiser(pipe.transformer, conditions, num_train_timesteps=n_train, max_batch=max_batch)
    if distilled_guidance is None and getattr(pipe.transformer.config, "guidance_embeds", False):
        distilled_guidance = 3.5  # FluxPipeline's default guidance_scale
    return FluxDenoiser(pipe.transformer, conditions, distilled_guidance=distilled_guidance, max_batch=max_batch)


def latent_shape(pipe: Any, height: int | None, width: int | None) -> tuple[int, int, int]:
    """(C, h, w) of the latents for an image of ``height`` × ``width`` pixels (default: the model's size)."""
    family = family_of(pipe)
    if family == "dit":
        size = int(pipe.transformer.config.sample_size)
        if height is not None or width is not None:
            raise ValueError("height, width: a DiT model has one resolution; leave them unset")
        return int(pipe.transformer.config.in_channels), size, size
    scale = int(pipe.vae_scale_factor)
    if family in ("sd", "sdxl"):
        default = int(pipe.unet.config.sample_size) * scale
        channels = int(pipe.unet.config.in_channels)
    elif family == "sd3":
        default = int(pipe.default_sample_size) * scale
        channels = int(pipe.transformer.config.in_channels)
    else:
        default = int(pipe.default_sample_size) * scale
        channels = int(pipe.transformer.config.in_channels) // 4
    height, width = height or default, width or default
    multiple = scale * (2 if family in ("flux", "sd3") else 1)
    for name, value in (("height", height), ("width", width)):
        if value % multiple:
            raise ValueError(f"{name}: must be a multiple of {multiple} for this pipeline, got {value}")
    return channels, height // scale, width // scale


def decode(pipe: Any, latents: Tensor, output_type: str) -> Any:
    """Decode latents with the pipeline's VAE into ``output_type`` (``pil``, ``np``, ``pt`` or ``latent``)."""
    if output_type == "latent":
        return latents
    vae = pipe.vae
    z = latents.to(device=vae.device, dtype=vae.dtype) / vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None)
    if shift is not None and family_of(pipe) in ("sd3", "flux"):
        z = z + shift
    with torch.no_grad():
        image = vae.decode(z, return_dict=False)[0]
    processor = getattr(pipe, "image_processor", None)
    if processor is not None:
        return processor.postprocess(image, output_type=output_type)
    image = (image / 2 + 0.5).clamp(0, 1)  # DiT's pipeline
    if output_type == "pt":
        return image
    array = image.cpu().permute(0, 2, 3, 1).float().numpy()
    return array if output_type == "np" else pipe.numpy_to_pil(array)


OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def generate(
    pipe: Any,
    prompt: str | list[str] | None = None,
    *,
    negative_prompt: str | list[str] | None = None,
    class_labels: int | str | list[int | str] | None = None,
    conditions: ConditionTable | None = None,
    guider: Guider | str | None = "cfg",
    params: dict[str, Any] | None = None,
    solver: str | None = None,
    steps: int = 30,
    grid: str | Tensor = "scheduler",
    grid_params: dict[str, Any] | None = None,
    n: int = 1,
    seed: int = 0,
    height: int | None = None,
    width: int | None = None,
    latents: Tensor | None = None,
    eta: float | None = None,
    output_type: str = "pil",
    max_batch: int | None = None,
    distilled_guidance: float | None = None,
    guided_channels: int | None = None,
    divergence_factor: float = DEFAULT_DIVERGENCE_FACTOR,
    progress: bool = False,
) -> GenerateResult:
    """Generate with a guidelab guider and solver on a diffusers pipeline's components.

    Args:
        pipe: a diffusers pipeline (Stable Diffusion 1.x/2.x, SDXL, SD3, Flux or DiT) on its device and dtype.
        prompt: one prompt or a list (text pipelines); ``n`` images each, prompt-major.
        negative_prompt: the null pass's prompt: one for all, or one per prompt (default: the empty prompt).
        class_labels: class ids or label names (DiT's ``pipe.labels``, e.g. ImageNet's); ``n`` images each.
        conditions: encoded prompts (:func:`encode_prompts`, or your own :class:`ConditionTable`) instead of
            ``prompt``; samples take rows 0 … P − 1, ``n`` each (SDXL at another size than the model's: encode with
            ``size=(height, width)``, which its time ids hold).
        guider: a :class:`~guidelab.guiders.base.Guider`, a registry name (with ``params``), or None for the
            conditional model alone.
        solver: a guidelab solver; default the one that matches the pipeline's scheduler (:func:`matching_solver`).
        steps: N.
        grid: ``"scheduler"`` (its own times, :func:`scheduler_grid`), a guidelab grid kind (``uniform``,
            ``shifted``, ``geometric``, ``edm``, with ``grid_params``), or explicit times (N + 1,).
        n: images per prompt or class.
        seed: noise seed; sample k's noise depends only on (seed, k).
        height, width: image size in pixels (default the model's).
        latents: initial latents (batch, C, h, w) instead of seeded noise (on the scheduler's grid, scaled as the
            pipeline scales them: Euler with linspace/trailing spacing starts from σ_max·ξ, not √(σ_max² + 1)·ξ).
        eta: churn of the stochastic solvers.
        output_type: ``pil``, ``np``, ``pt`` or ``latent``.
        max_batch: largest batch of one network forward (default: all samples, cond and null passes together).
        distilled_guidance: Flux-dev's guidance embedding value (default 3.5 where the model embeds one).
        guided_channels: guide only the first that many latent channels (the original DiT code guides 3 of 4).
        divergence_factor: a sample whose latent leaves ``factor·(α_t + σ_t)`` is frozen and counted as diverged
            (:class:`~guidelab.sampling.Monitor`); ``math.inf`` turns the monitor off.
        progress: show a progress bar.

    Raises:
        ValueError: one line naming the field: a prompt for DiT, class labels for a text pipeline, an unknown
            guider, solver, grid or output type, a bad size.
    """
    start = time.perf_counter()
    family = family_of(pipe)
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type: unknown {output_type!r}{did_you_mean(output_type, OUTPUT_TYPES)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: images per prompt must be an integer ≥ 1, got {n!r}")
    device = pipe.device
    prompts = _as_list(prompt, "prompt")
    notes: list[str] = []
    if family == "dit":
        if prompts is not None or conditions is not None:
            raise ValueError("prompt: a class-conditional pipeline (DiT) takes --class labels, not prompts")
        if class_labels is None:
            raise ValueError("class_labels: a DiT pipeline needs class labels")
        labels_list = _class_ids(pipe, [class_labels] if isinstance(class_labels, int | str) else list(class_labels))
        rows = len(labels_list)
    else:
        if class_labels is not None:
            raise ValueError("class_labels: a text-to-image pipeline takes prompts, not class labels")
        if conditions is None:
            if prompts is None:
                raise ValueError("prompt: give a prompt (or encoded conditions)")
            shape = latent_shape(pipe, height, width)
            size = (shape[1] * int(pipe.vae_scale_factor), shape[2] * int(pipe.vae_scale_factor))
            conditions = encode_prompts(pipe, prompts, _as_list(negative_prompt, "negative_prompt"), device, size=size)
        elif prompts is not None:
            raise ValueError("conditions: give prompts or encoded conditions, not both")
        rows = conditions.num_conditions
        labels_list = list(range(rows))
    denoiser = pipeline_denoiser(pipe, conditions, max_batch=max_batch, distilled_guidance=distilled_guidance)
    if family == "dit":
        bad = [
            c for c in labels_list if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < denoiser.num_classes
        ]
        if bad:
            raise ValueError(f"class_labels: {bad} outside 0 … {denoiser.num_classes - 1}")
    cond = torch.tensor([c for c in labels_list for _ in range(n)], dtype=torch.long, device=device)
    total = cond.numel()

    shape = latent_shape(pipe, height, width)
    path = denoiser.path
    times = _grid(pipe, grid, steps, path, shape, grid_params)
    solver = solver or matching_solver(pipe.scheduler)
    if solver not in SOLVERS:
        raise ValueError(f"solver: unknown name {solver!r}{did_you_mean(solver, SOLVERS)}")
    guide = _guider(guider, params)
    if guided_channels is not None:
        guide = GuidedChannels(guide, guided_channels)
    dtype = denoiser.dtype if denoiser.dtype in (torch.float32, torch.float64) else torch.float32
    # the pipeline's own start on its scheduler's grid (Euler with linspace/trailing spacing: σ_max·ξ), else 1
    own_start = isinstance(grid, str) and grid == "scheduler" and isinstance(path, DiscreteVPPath)
    start_scale = _start_scale(pipe.scheduler, steps) if own_start else 1.0
    if latents is None:
        a, s = path.coefficients(times[:1].clone()).alpha, path.coefficients(times[:1].clone()).sigma
        scale = float(torch.sqrt(a**2 + s**2))  # unit-variance data: x_T = ξ on VP and at t = 1 on rf
        noise = NoiseSource(seed, device)
        x_init = scale * start_scale * noise(torch.empty((total, *shape), dtype=dtype, device=device))
    else:
        if tuple(latents.shape) != (total, *shape):
            raise ValueError(f"latents: expected shape {(total, *shape)}, got {tuple(latents.shape)}")
        x_init = latents.to(device=device, dtype=dtype)
        if start_scale != 1.0:
            x_init = x_init * start_scale
    result = sample(
        denoiser, guide, grid=times, cond=cond, solver=solver, seed=seed, eta=eta, x_init=x_init, dtype=dtype,
        device=device, divergence_factor=divergence_factor, progress=progress,
    )  # fmt: skip
    notes += result.notes
    images = decode(pipe, result.x, output_type)
    config = {
        "pipeline": type(pipe).__name__,
        "family": family,
        "prompt": prompts,
        "negative_prompt": _as_list(negative_prompt, "negative_prompt"),
        "class_labels": labels_list if family == "dit" else None,
        "guider": guide.config() if guide is not None else None,
        "solver": solver,
        "steps": steps,
        "grid": grid if isinstance(grid, str) else "explicit",
        "grid_params": grid_params or {},
        "times": [float(t) for t in result.grid] if result.grid is not None else [float(t) for t in times],
        "path": path.config(),
        "n": n,
        "seed": seed,
        "latent_shape": list(shape),
        "eta": eta,
        "dtype": str(denoiser.dtype).removeprefix("torch."),
        "device": str(device),
        "max_batch": max_batch,
        "distilled_guidance": getattr(denoiser, "distilled_guidance", None),
        "guided_channels": guided_channels,
        "divergence_factor": divergence_factor,
    }
    return GenerateResult(
        images=images,
        latents=result.x,
        nfe=result.nfe,
        calls=result.calls,
        diverged=result.num_diverged,
        wall_time=time.perf_counter() - start,
        config=config,
        notes=notes,
        diverged_indices=result.diverged_indices,
    )


def _start_scale(scheduler: Any, steps: int) -> float:
    """The VP state a discrete scheduler's pipeline starts from, per unit of noise: the latents times its
    ``init_noise_sigma`` as the network sees them (``scale_model_input`` at the first step). 1 for DDIM, DPM-Solver
    and Euler's ``leading`` spacing; σ_max/√(σ_max² + 1) for Euler's ``linspace`` and ``trailing``."""
    sch = copy.deepcopy(scheduler)
    type(sch).set_timesteps(sch, steps)  # the class method: not a wrapper set on the instance
    one = torch.ones(1) * float(sch.init_noise_sigma)
    scale = float(sch.scale_model_input(one, sch.timesteps[0]))
    return 1.0 if abs(scale - 1.0) <= 1e-6 else scale


def _class_ids(pipe: Any, labels: list[Any]) -> list[int]:
    """Class ids from ids, digit strings or the pipeline's label names (``id2label``)."""
    known = getattr(pipe, "labels", None) or {}
    out = []
    for label in labels:
        if isinstance(label, str) and label.strip().lstrip("-").isdigit():
            label = int(label)
        if isinstance(label, str):
            if label not in known:
                names = ", ".join(sorted(known)[:8]) or "none (the pipeline has no id2label)"
                raise ValueError(f"class_labels: unknown label {label!r}; known names include {names}")
            label = int(known[label])
        out.append(label)
    return out


def _guider(guider: Guider | str | None, params: dict[str, Any] | None) -> Guider | None:
    if guider is None:
        if params:
            raise ValueError("params: given without a guider")
        return None
    if isinstance(guider, str):
        return build_guider(guider, **(params or {}))
    if params:
        raise ValueError("params: give them with a guider name, not with a built guider")
    return guider


def check_grid_choice(grid: str, params: dict | None) -> None:
    """A ValueError naming ``grid`` or ``grid_params`` where a grid named for :func:`generate` is unknown (the
    suggestion lists ``scheduler``), or given parameters it does not read: checkable before a pipeline is loaded."""
    if grid not in ("scheduler", *GRIDS):
        raise ValueError(f"grid: unknown grid {grid!r}{did_you_mean(grid, ('scheduler', *GRIDS))}")
    if grid == "scheduler" and params:
        raise ValueError("grid_params: the scheduler's grid takes none")
    check_grid_params(grid, params or {})


def _grid(
    pipe: Any, grid: str | Tensor, steps: int, path: NoisePath, shape: tuple[int, int, int], params: dict | None
) -> Tensor:
    if isinstance(grid, Tensor):
        if params:
            raise ValueError("grid_params: given with explicit grid times")
        times = grid.to(torch.float64)
        times.noise_path = path  # type: ignore[attr-defined]
        return times
    check_grid_choice(grid, params)
    if grid == "scheduler":
        seq = (shape[1] // 2) * (shape[2] // 2)  # Flux's packed token count
        return scheduler_grid(pipe.scheduler, steps, path, image_seq_len=seq)
    params = dict(params or {})
    if isinstance(path, DiscreteVPPath) and "t_min" not in params:
        params["t_min"] = 1.0 / path.num_train_timesteps  # the first training timestep: the last evaluation
    return make_grid(grid, steps, path, **params)


def _read_index(folder: str | Path) -> tuple[Path, dict[str, Any]]:
    """The folder and its ``model_index.json``, with every listed component present (errors name ``pipeline``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(
            f"pipeline: no folder {str(folder)!r}; guidelab never downloads: save a pipeline first with "
            "DiffusionPipeline.from_pretrained(...).save_pretrained(folder)"
        )
    index = folder / "model_index.json"
    if not index.is_file():
        raise ValueError(f"pipeline: {str(folder)!r} is not a saved diffusers pipeline (no model_index.json)")
    try:
        listed = json.loads(index.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"pipeline: {index} is unreadable: {err}") from None
    if not isinstance(listed, dict):
        raise ValueError(f"pipeline: {index} does not hold a mapping")
    for name, spec in listed.items():
        if name.startswith("_") or not isinstance(spec, list) or spec[0] is None:
            continue
        if not (folder / name).is_dir():
            raise ValueError(f"pipeline: {str(folder)!r} lacks the component {name!r} listed in model_index.json")
    return folder, listed


@dataclass(frozen=True)
class PipelineInfo:
    """What a saved pipeline is, read from its files without loading a network (:func:`inspect_pipeline`).

    Attributes:
        folder: the pipeline's folder.
        class_name: the pipeline class (``model_index.json``'s ``_class_name``).
        family: ``sd``, ``sdxl``, ``sd3``, ``flux`` or ``dit`` (as :func:`family_of` tells a loaded pipeline).
        scheduler: the scheduler's class name ("" where none is listed).
        num_classes: the number of classes of a DiT (its null class is this id); None for text pipelines.
        class_ids: a DiT's class names (each synonym of ``id2label``) → id, as ``DiTPipeline.labels``.
    """

    folder: Path
    class_name: str
    family: str
    scheduler: str
    num_classes: int | None = None
    class_ids: dict[str, int] = field(default_factory=dict)

    @property
    def conditioning(self) -> str:
        """``text`` (prompts) or ``class`` (class labels)."""
        return "class" if self.family == "dit" else "text"

    @property
    def solver(self) -> str:
        """The guidelab solver that matches the scheduler (:data:`MATCHING_SOLVERS`, ``ddim`` where none is known)."""
        return MATCHING_SOLVERS.get(self.scheduler, "ddim")


def _listed_class(listed: dict[str, Any], name: str) -> str | None:
    spec = listed.get(name)
    return spec[1] if isinstance(spec, list) and len(spec) == 2 and spec[0] is not None else None


def _component_config(folder: Path, name: str) -> dict[str, Any]:
    try:
        data = json.loads((folder / name / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def inspect_pipeline(folder: str | Path) -> PipelineInfo:
    """Read a pipeline saved with ``save_pretrained`` (``model_index.json`` and its components' configs) without
    loading it: its family, scheduler and, for DiT, its classes. Cheap enough to validate a sweep file with.

    Raises:
        ValueError: one line naming ``pipeline``: no such folder, no ``model_index.json``, a listed component
            missing, or a network guidelab does not drive (supported: SD 1.x/2.x, SDXL, SD3, Flux, DiT).
    """
    folder, listed = _read_index(folder)
    class_name = str(listed.get("_class_name", "?"))
    unet, transformer = _listed_class(listed, "unet"), _listed_class(listed, "transformer")
    if unet == "UNet2DConditionModel":
        added = _component_config(folder, "unet").get("addition_embed_type") == "text_time"
        family = "sdxl" if _listed_class(listed, "text_encoder_2") is not None or added else "sd"
    elif transformer == "SD3Transformer2DModel":
        family = "sd3"
    elif transformer == "FluxTransformer2DModel":
        family = "flux"
    elif transformer in ("DiTTransformer2DModel", "Transformer2DModel") and "text_encoder" not in listed:
        family = "dit"
    else:
        raise ValueError(
            f"pipeline: {str(folder)!r} holds a {class_name} (network {unet or transformer}), which guidelab does "
            "not drive; supported: Stable Diffusion 1.x/2.x, SDXL, SD3, Flux and DiT pipelines"
        )
    num_classes, class_ids = None, {}
    if family == "dit":
        value = _component_config(folder, "transformer").get("num_embeds_ada_norm")
        num_classes = int(value) if isinstance(value, int) else None
        id2label = listed.get("id2label")
        if isinstance(id2label, dict):
            for key, names in id2label.items():
                for name in str(names).split(","):
                    if name.strip() and str(key).isdigit():
                        class_ids[name.strip()] = int(key)
    return PipelineInfo(folder, class_name, family, _listed_class(listed, "scheduler") or "", num_classes, class_ids)


def quiet_libraries() -> None:
    """Keep diffusers' and transformers' info and warning logs (loading bars, optional-dependency notes) off the
    command line's output; guidelab shows its own progress and errors."""
    import diffusers

    diffusers.utils.logging.set_verbosity_error()
    try:
        import transformers

        transformers.logging.set_verbosity_error()
    except ImportError:  # pragma: no cover - transformers comes with the diffusers extra
        pass


def load_pipeline(folder: str | Path, *, device: str | None = None, dtype: str | None = None) -> Any:
    """A diffusers pipeline saved with ``save_pretrained`` in ``folder``, loaded strictly locally.

    Raises:
        ValueError: one line naming ``pipeline``: no such folder, not a saved pipeline (no ``model_index.json``),
            a component listed there but missing, or a load failure; naming ``dtype`` or ``device`` for bad values.
    """
    folder, _ = _read_index(folder)
    torch_dtype = None
    if dtype is not None:
        torch_dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}.get(dtype)
        if torch_dtype is None:
            raise ValueError(f"dtype: unknown {dtype!r}{did_you_mean(dtype, ('float32', 'float16', 'bfloat16'))}")
    import diffusers  # the [diffusers] extra

    # recent diffusers name the argument ``dtype`` and warn on ``torch_dtype``; older ones know only ``torch_dtype``
    try:
        renamed = hasattr(
            importlib.import_module("diffusers.utils.deprecation_utils"), "_TORCH_DTYPE_DEPRECATION_MESSAGE"
        )
    except ImportError:
        renamed = False
    key = "dtype" if renamed else "torch_dtype"
    kwargs = {} if torch_dtype in (None, torch.float32) else {key: torch_dtype}  # saved weights load as float32
    bars = diffusers.utils.logging.is_progress_bar_enabled()
    diffusers.utils.logging.disable_progress_bar()  # the loading bars; guidelab shows its own progress
    try:
        pipe = diffusers.DiffusionPipeline.from_pretrained(str(folder), local_files_only=True, **kwargs)
    except Exception as err:  # diffusers raises many types; the user needs one line
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"pipeline: cannot load {str(folder)!r}: {message}") from None
    finally:
        if bars:
            diffusers.utils.logging.enable_progress_bar()
    if device is not None:
        try:
            pipe = pipe.to(device)
        except (RuntimeError, AssertionError) as err:
            raise ValueError(f"device: cannot use {device!r}: {str(err).splitlines()[0]}") from None
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    return pipe


def save_images(images: list[Any], folder: str | Path, *, columns: int) -> list[Path]:
    """Write each PIL image as ``image_000.png``, … and all of them as ``grid.png`` (``columns`` per row), each
    atomically. Returns the paths, the grid last."""
    from PIL import Image

    from guidelab.io import write_atomic

    folder = Path(folder)
    if not images:
        raise ValueError("images: nothing to save")
    paths = []
    for i, image in enumerate(images):
        target = folder / f"image_{i:03d}.png"
        write_atomic(target, lambda f, im=image: im.save(f, format="PNG"))
        paths.append(target)
    w, h = images[0].size
    cols = max(1, min(columns, len(images)))
    rows = -(-len(images) // cols)
    sheet = Image.new("RGB", (cols * w, rows * h), "white")
    for i, image in enumerate(images):
        sheet.paste(image, ((i % cols) * w, (i // cols) * h))
    grid_path = folder / "grid.png"
    write_atomic(grid_path, lambda f: sheet.save(f, format="PNG"))
    return [*paths, grid_path]
