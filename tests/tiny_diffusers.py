"""Tiny, randomly initialised diffusers pipelines built offline, as test fixtures for guidelab's diffusers adapters.

Why: the adapters have to be tested against the real pipeline classes (their ``encode_prompt``, their schedulers,
their latent layouts), but the hub is not reachable from the tests and real checkpoints are gigabytes. Every
factory here builds the components from configs only — no ``from_pretrained`` of a hub id, no download — with
widths of 8 to 32, one or two layers, and 8×8 latents, so that a factory plus a save/load round trip stays well
under two seconds on a CPU and a two-step pipeline call well under one.

What: one factory per family, each taking ``seed`` and returning the pipeline on the CPU in float32 and eval mode:

* :func:`make_sd` — ``StableDiffusionPipeline`` (ε or v prediction; DDIM, DPM-Solver++ or Euler, configured like
  Stable Diffusion's own scheduler config).
* :func:`make_sdxl` — ``StableDiffusionXLPipeline`` (two CLIP encoders, ``text_time`` added conditioning).
* :func:`make_sd3` — ``StableDiffusion3Pipeline`` (MMDiT, two CLIP encoders with projection and a T5 encoder,
  flow matching with shift 3).
* :func:`make_flux` — ``FluxPipeline`` (2×2-packed latents, CLIP + T5, dynamic shifting, optional guidance embedding).
* :func:`make_dit` — ``DiTPipeline`` (class-conditional, learned or fixed σ, with an ``id2label`` table).
* :func:`make_class_unet` — a class-conditional ``UNet2DModel`` and its ``DDIMScheduler`` (no diffusers pipeline
  exists for it), with :data:`CLASS_UNET_NULL` as the unconditional class.

:func:`save_and_load` round-trips any of them through ``save_pretrained``/``from_pretrained(local_files_only=True)``.

Weights are deterministic given ``seed``: each component is built right after ``torch.manual_seed`` of its own
seed (``seed`` mixed with the component's index, so that two same-shaped encoders do not get identical weights),
inside ``torch.random.fork_rng`` so the caller's global generator is left untouched.

Tokenizers are built offline too: a byte-level ``CLIPTokenizer`` whose vocabulary is the 256 byte characters,
with and without ``</w>``, plus ``<|startoftext|>``/``<|endoftext|>`` and no merges (so every character is a
token), and a Unigram ``T5Tokenizer`` over the printable ASCII characters with and without the ``▁`` word prefix.
Both are ``transformers`` tokenizer classes that save as ``tokenizer.json`` and load back by the class name
written to ``model_index.json``.

Quirks these fixtures work around (details in each factory's docstring):

* ``DiTPipeline`` hard-codes the null class id 1000 (ImageNet's), so the DiT transformer must have
  ``num_embeds_ada_norm=1000`` whatever the number of labelled classes; and ``id2label`` is not part of the
  pipeline's config, so it is registered into it here to survive ``save_pretrained``.
* ``FluxPipeline`` defaults to ``height = width = 128·vae_scale_factor`` whatever the transformer's size, so
  callers must pass ``height``/``width`` (:data:`FLUX_HW`).
"""

from __future__ import annotations

import functools
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    DiTPipeline,
    DiTTransformer2DModel,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
    UNet2DModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

__all__ = [
    "CLASS_UNET_NULL",
    "CLIP_MAX_LENGTH",
    "DIT_LABELS",
    "DIT_NULL_CLASS",
    "FLUX_HW",
    "T5_MAX_LENGTH",
    "make_class_unet",
    "make_dit",
    "make_flux",
    "make_sd",
    "make_sd3",
    "make_sdxl",
    "save_and_load",
]

CLIP_MAX_LENGTH = 16
"""Token length of the tiny CLIP tokenizers (``model_max_length``) and encoders (``max_position_embeddings``)."""

T5_MAX_LENGTH = 512
"""``model_max_length`` of the tiny T5 tokenizer (T5 has relative positions: any length runs)."""

FLUX_HW = 16
"""The image side to call :func:`make_flux` with: an 8×8 latent (vae_scale_factor 2), packed 2×2 into 4×4 tokens."""

DIT_LABELS: dict[int, str] = {
    0: "airplane, aeroplane",
    1: "automobile, car",
    2: "bird",
    3: "cat",
    4: "deer",
    5: "dog",
    6: "frog",
    7: "horse",
    8: "ship",
    9: "truck",
}
"""The ``id2label`` of :func:`make_dit` (CIFAR-10's names; comma-separated synonyms map to the same id)."""

DIT_NULL_CLASS = 1000
"""The unconditional class id ``DiTPipeline`` feeds the transformer (hard-coded in the pipeline)."""

CLASS_UNET_CLASSES = 10
CLASS_UNET_NULL = CLASS_UNET_CLASSES
"""The unconditional class id of :func:`make_class_unet` (the last of its ``num_class_embeds`` = 11 rows)."""

# Stable Diffusion's noise schedule and spacing (as in its scheduler_config.json), for make_sd and make_sdxl.
_SD_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "timestep_spacing": "leading",
}

Prediction = Literal["epsilon", "v_prediction"]
SchedulerName = Literal["ddim", "dpm", "euler"]


# --- determinism ----------------------------------------------------------------------------------------------------


def _seeded(seed: int, index: int, build: Callable[[], Any]) -> Any:
    """``build()`` right after seeding the global generator with (seed, index), in eval mode (float32 on the CPU,
    as constructors build it)."""
    torch.manual_seed(seed * 1009 + index)
    obj = build()
    if isinstance(obj, torch.nn.Module):
        obj.eval()
    return obj


def _fork_rng(factory: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``factory`` inside ``torch.random.fork_rng`` so that building a fixture never moves the caller's RNG."""

    @functools.wraps(factory)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with torch.random.fork_rng(devices=[]):
            return factory(*args, **kwargs)

    return wrapper


# --- tokenizers -----------------------------------------------------------------------------------------------------


def _byte_characters() -> list[str]:
    """GPT-2/CLIP's byte → printable-unicode table (``bytes_to_unicode``), in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


@functools.cache
def _clip_vocab() -> dict[str, int]:
    symbols = _byte_characters()
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}


CLIP_VOCAB_SIZE = 514
CLIP_BOS, CLIP_EOS = 512, 513


def _clip_tokenizer() -> CLIPTokenizer:
    """A byte-level CLIP tokenizer without merges: one token per character, ``</w>`` on a word's last one."""
    return CLIPTokenizer(vocab=dict(_clip_vocab()), merges=[], model_max_length=CLIP_MAX_LENGTH)


@functools.cache
def _t5_vocab() -> tuple[tuple[str, float], ...]:
    pieces = ["<pad>", "</s>", "<unk>", "▁"]
    chars = [c for c in string.printable if not c.isspace()]
    pieces += chars + ["▁" + c for c in chars]
    # Unigram scores: prefer the "▁x" piece over "▁" + "x" (as a trained SentencePiece model would).
    return tuple((p, 0.0 if i < 3 else (-2.0 if p.startswith("▁") else -3.0)) for i, p in enumerate(pieces))


T5_VOCAB_SIZE = 4 + 2 * len([c for c in string.printable if not c.isspace()])


def _t5_tokenizer() -> T5Tokenizer:
    """A Unigram T5 tokenizer over printable ASCII (pad 0, eos 1, unk 2), without the 100 sentinel tokens."""
    return T5Tokenizer(vocab=list(_t5_vocab()), extra_ids=0, model_max_length=T5_MAX_LENGTH)


# --- text encoders --------------------------------------------------------------------------------------------------


def _clip_config(hidden: int = 16, projection: int = 16) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        projection_dim=projection,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=CLIP_MAX_LENGTH,
        hidden_act="quick_gelu",
        bos_token_id=CLIP_BOS,
        eos_token_id=CLIP_EOS,
        pad_token_id=CLIP_EOS,
    )


def _t5_encoder(d_model: int = 32) -> T5EncoderModel:
    config = T5Config(
        vocab_size=T5_VOCAB_SIZE,
        d_model=d_model,
        d_kv=8,
        d_ff=2 * d_model,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
        use_cache=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5EncoderModel(config)


# --- VAEs -----------------------------------------------------------------------------------------------------------


def _vae(latent_channels: int = 4, *, flow: dict[str, float] | None = None) -> AutoencoderKL:
    """Two 8/16-channel levels: vae_scale_factor 2, so an 8×8 latent decodes to a 16×16 image."""
    kwargs: dict[str, Any] = {"scaling_factor": 0.18215}
    if flow is not None:  # SD3/Flux: latents are (z − shift)·scale, and no quant convs
        kwargs = {**flow, "use_quant_conv": False, "use_post_quant_conv": False}
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=16,
        **kwargs,
    )


# --- schedulers -----------------------------------------------------------------------------------------------------


def _sd_scheduler(name: SchedulerName, prediction_type: Prediction):
    if name == "ddim":
        return DDIMScheduler(**_SD_SCHEDULE, prediction_type=prediction_type, clip_sample=False, set_alpha_to_one=False)
    if name == "dpm":
        return DPMSolverMultistepScheduler(
            **_SD_SCHEDULE, prediction_type=prediction_type, algorithm_type="dpmsolver++", solver_order=2
        )
    if name == "euler":
        return EulerDiscreteScheduler(**_SD_SCHEDULE, prediction_type=prediction_type)
    raise ValueError(f"scheduler must be 'ddim', 'dpm' or 'euler', not {name!r}")


# --- factories ------------------------------------------------------------------------------------------------------


@_fork_rng
def make_sd(
    prediction_type: Prediction = "epsilon", scheduler: SchedulerName = "ddim", seed: int = 0
) -> StableDiffusionPipeline:
    """A tiny Stable Diffusion 1.x/2.x: 8×8×4 latents (16×16 images), CLIP width 16, UNet widths (8, 16).

    ``prediction_type`` is the scheduler's (the UNet itself is agnostic); the scheduler has SD's schedule
    (scaled-linear β from 0.00085 to 0.012, 1000 steps, steps_offset 1, "leading" spacing).
    """
    scheduler_ = _sd_scheduler(scheduler, prediction_type)
    unet = _seeded(
        seed,
        0,
        lambda: UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(8, 16),
            layers_per_block=1,
            cross_attention_dim=16,
            attention_head_dim=2,
            norm_num_groups=4,
        ),
    )
    vae = _seeded(seed, 1, lambda: _vae(4))
    text_encoder = _seeded(seed, 2, lambda: CLIPTextModel(_clip_config(16)))
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=_clip_tokenizer(),
        unet=unet,
        scheduler=scheduler_,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


@_fork_rng
def make_sdxl(scheduler: Literal["euler", "ddim"] = "euler", seed: int = 0) -> StableDiffusionXLPipeline:
    """A tiny SDXL: 8×8×4 latents (16×16 images), two CLIP encoders of width 16 (the second with a 16-d projection).

    The UNet's cross-attention width is 16 + 16 (the two encoders' hidden states are concatenated) and its
    ``text_time`` added conditioning takes the pooled projection (16) plus six 4-d Fourier time ids:
    ``projection_class_embeddings_input_dim`` = 16 + 6·4 = 40. The scheduler is SDXL's (Euler, SD schedule,
    ε prediction) or DDIM on the same schedule. No watermarker (registered in the config, so a reload keeps it off).
    """
    if scheduler == "euler":
        scheduler_ = EulerDiscreteScheduler(**_SD_SCHEDULE, prediction_type="epsilon")
    elif scheduler == "ddim":
        scheduler_ = _sd_scheduler("ddim", "epsilon")
    else:
        raise ValueError(f"scheduler must be 'euler' or 'ddim', not {scheduler!r}")
    time_dim, pooled = 4, 16
    unet = _seeded(
        seed,
        0,
        lambda: UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(8, 16),
            layers_per_block=1,
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            transformer_layers_per_block=(1, 1),
            cross_attention_dim=32,
            addition_embed_type="text_time",
            addition_time_embed_dim=time_dim,
            projection_class_embeddings_input_dim=pooled + 6 * time_dim,
            norm_num_groups=4,
        ),
    )
    vae = _seeded(seed, 1, lambda: _vae(4))
    text_encoder = _seeded(seed, 2, lambda: CLIPTextModel(_clip_config(16)))
    text_encoder_2 = _seeded(seed, 3, lambda: CLIPTextModelWithProjection(_clip_config(16, pooled)))
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=_clip_tokenizer(),
        tokenizer_2=_clip_tokenizer(),
        unet=unet,
        scheduler=scheduler_,
        add_watermarker=False,
    )
    pipe.register_to_config(add_watermarker=False)
    return pipe


@_fork_rng
def make_sd3(seed: int = 0) -> StableDiffusion3Pipeline:
    """A tiny SD3: MMDiT on 8×8×4 latents with 2×2 patches (16 image tokens), width 16 (2 heads of 8), 2 layers.

    Text: two ``CLIPTextModelWithProjection`` of width 16 (concatenated to 32 = the T5 width; the pooled
    projections, 16 + 16, are ``pooled_projection_dim``) and a T5 encoder of width 32 = ``joint_attention_dim``.
    Scheduler: ``FlowMatchEulerDiscreteScheduler(shift=3.0)``; the transformer gets ``timestep`` = σ·1000.
    VAE: no quant convs, SD3's ``shift_factor`` 0.0609 and ``scaling_factor`` 1.5035.
    """
    transformer = _seeded(
        seed,
        0,
        lambda: SD3Transformer2DModel(
            sample_size=8,
            patch_size=2,
            in_channels=4,
            out_channels=4,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=2,
            joint_attention_dim=32,
            caption_projection_dim=16,
            pooled_projection_dim=32,
            pos_embed_max_size=16,
        ),
    )
    vae = _seeded(seed, 1, lambda: _vae(4, flow={"shift_factor": 0.0609, "scaling_factor": 1.5035}))
    text_encoder = _seeded(seed, 2, lambda: CLIPTextModelWithProjection(_clip_config(16, 16)))
    text_encoder_2 = _seeded(seed, 3, lambda: CLIPTextModelWithProjection(_clip_config(16, 16)))
    text_encoder_3 = _seeded(seed, 4, lambda: _t5_encoder(32))
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=_clip_tokenizer(),
        text_encoder_2=text_encoder_2,
        tokenizer_2=_clip_tokenizer(),
        text_encoder_3=text_encoder_3,
        tokenizer_3=_t5_tokenizer(),
    )


@_fork_rng
def make_flux(guidance_embeds: bool = False, seed: int = 0) -> FluxPipeline:
    """A tiny Flux: 4 latent channels packed 2×2 into 16-channel tokens, width 32 (2 heads of 16), 1 + 1 blocks.

    ``axes_dims_rope`` (4, 6, 6) sums to the head width 16. Text: a ``CLIPTextModel`` of width 16 (its pooled
    output is ``pooled_projection_dim``) and a T5 encoder of width 32 = ``joint_attention_dim``. Scheduler: flow
    matching with Flux's dynamic shifting (μ interpolated between 0.5 at 256 and 1.15 at 4096 image tokens).
    ``guidance_embeds=True`` is the guidance-distilled variant (``guidance_scale`` goes into the transformer).
    Pass ``height = width = FLUX_HW`` (or a multiple of 4): the pipeline's default is 128·2 = 256 pixels.
    """
    transformer = _seeded(
        seed,
        0,
        lambda: FluxTransformer2DModel(
            patch_size=1,
            in_channels=16,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            pooled_projection_dim=16,
            guidance_embeds=guidance_embeds,
            axes_dims_rope=(4, 6, 6),
        ),
    )
    vae = _seeded(seed, 1, lambda: _vae(4, flow={"shift_factor": 0.1159, "scaling_factor": 0.3611}))
    text_encoder = _seeded(seed, 2, lambda: CLIPTextModel(_clip_config(16)))
    text_encoder_2 = _seeded(seed, 3, lambda: _t5_encoder(32))
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=_clip_tokenizer(),
        text_encoder_2=text_encoder_2,
        tokenizer_2=_t5_tokenizer(),
        transformer=transformer,
    )


@_fork_rng
def make_dit(learned_sigma: bool = True, scheduler: Literal["ddim", "dpm"] = "ddim", seed: int = 0) -> DiTPipeline:
    """A tiny DiT: 8×8×4 latents with 2×2 patches, width 16 (2 heads of 8), 2 layers, adaLN-Zero; 16×16 images.

    ``learned_sigma`` doubles the output channels (ε and the variance interpolation, as DiT-XL/2); the pipeline
    keeps only the first half for the scheduler. The class table has ``num_embeds_ada_norm`` = 1000 rows plus
    the null row because ``DiTPipeline`` hard-codes the null id :data:`DIT_NULL_CLASS` = 1000; only the ids in
    :data:`DIT_LABELS` have names (``pipe.get_label_ids(["cat"])``). Scheduler: DDIM (or DPM-Solver++) on DiT's
    linear β schedule (1e-4 to 0.02).
    """
    schedule = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear"}
    if scheduler == "ddim":
        scheduler_ = DDIMScheduler(**schedule, clip_sample=False)
    elif scheduler == "dpm":
        scheduler_ = DPMSolverMultistepScheduler(**schedule, algorithm_type="dpmsolver++", solver_order=2)
    else:
        raise ValueError(f"scheduler must be 'ddim' or 'dpm', not {scheduler!r}")
    transformer = _seeded(
        seed,
        0,
        lambda: DiTTransformer2DModel(
            num_attention_heads=2,
            attention_head_dim=8,
            in_channels=4,
            out_channels=8 if learned_sigma else 4,
            num_layers=2,
            sample_size=8,
            patch_size=2,
            activation_fn="gelu-approximate",
            num_embeds_ada_norm=DIT_NULL_CLASS,
            norm_type="ada_norm_zero",
            norm_elementwise_affine=False,
        ),
    )
    vae = _seeded(seed, 1, lambda: _vae(4))
    id2label = dict(DIT_LABELS)
    pipe = DiTPipeline(transformer=transformer, vae=vae, scheduler=scheduler_, id2label=id2label)
    # DiTPipeline keeps id2label only as pipe.labels; in the config it reaches model_index.json and comes back.
    pipe.register_to_config(id2label=id2label)
    return pipe


@_fork_rng
def make_class_unet(prediction_type: Prediction = "epsilon", seed: int = 0) -> tuple[UNet2DModel, DDIMScheduler]:
    """A tiny class-conditional pixel-space ``UNet2DModel`` (8×8×3, widths (8, 16)) and a ``DDIMScheduler``.

    ``num_class_embeds`` = 11: classes 0–9 and the null class :data:`CLASS_UNET_NULL` = 10. Call it as
    ``unet(x, t, class_labels=labels).sample``. The scheduler has DDPM's linear β (1e-4 to 0.02) and SD's spacing
    conventions (steps_offset 1, "leading"), with ``prediction_type`` as given.
    """
    unet = _seeded(
        seed,
        0,
        lambda: UNet2DModel(
            sample_size=8,
            in_channels=3,
            out_channels=3,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(8, 16),
            layers_per_block=1,
            attention_head_dim=4,
            norm_num_groups=4,
            num_class_embeds=CLASS_UNET_CLASSES + 1,
        ),
    )
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        prediction_type=prediction_type,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="leading",
    )
    return unet, scheduler


# --- save / load ----------------------------------------------------------------------------------------------------


def save_and_load(pipe: Any, folder: str | Path) -> Any:
    """``pipe.save_pretrained(folder)`` then load it back from there with ``local_files_only=True``.

    A pipeline comes back as ``type(pipe).from_pretrained(folder)``, in eval mode (float32 on the CPU as saved); a
    ``(unet, scheduler)`` pair from :func:`make_class_unet` is saved into ``unet/`` and ``scheduler/`` and comes back
    as a pair.
    """
    folder = Path(folder)
    if isinstance(pipe, tuple):
        unet, scheduler = pipe
        unet.save_pretrained(folder / "unet")
        scheduler.save_pretrained(folder / "scheduler")
        unet2 = type(unet).from_pretrained(folder / "unet", local_files_only=True)
        scheduler2 = type(scheduler).from_pretrained(folder / "scheduler", local_files_only=True)
        return _own_memory(unet2).eval(), scheduler2
    if not isinstance(pipe, DiffusionPipeline):
        raise TypeError(f"expected a DiffusionPipeline or a (unet, scheduler) pair, got {type(pipe).__name__}")
    pipe.save_pretrained(folder)
    loaded = type(pipe).from_pretrained(folder, local_files_only=True)
    for component in loaded.components.values():
        if isinstance(component, torch.nn.Module):
            _own_memory(component).eval()
    return loaded


def _own_memory(module: torch.nn.Module) -> torch.nn.Module:
    """Copy every parameter and buffer into freshly allocated tensors.

    Weights read from safetensors can sit at addresses that are not 64-byte aligned, and the CPU matmul kernels
    then take another vectorisation path: the tiny Flux transformer's output moved by ~2e-7 after a round trip with
    bit-identical weights. Fresh (aligned) copies make a reloaded pipeline reproduce the original bit for bit.
    """
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            tensor.data = tensor.data.clone()
    return module
