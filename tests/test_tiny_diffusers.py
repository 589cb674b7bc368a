"""Pins the tiny offline diffusers fixtures of ``tiny_diffusers.py`` themselves.

Why: the diffusers adapters' tests trust these fixtures to be real pipelines of each family that run end to end
offline, reproduce themselves exactly (same seed → same weights; same generator → same output, before and after
a save/load round trip), and follow each family's conventions (latent shapes, Flux's packing, SD3's σ·1000
timesteps, DiT's null class). If a diffusers or transformers upgrade breaks any of that, it should fail here,
not as a puzzling adapter failure.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DiTPipeline,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FluxPipeline,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DModel,
)

import tiny_diffusers as td

PROMPT = "a photo of a cat"

# name: (factory taking seed, keyword arguments of the pipeline call, shape of its two-step output)
Family = tuple[Callable[[int], Any], dict[str, Any], tuple[int, ...]]
FAMILIES: dict[str, Family] = {
    "sd-eps-ddim": (lambda s: td.make_sd("epsilon", "ddim", seed=s), {"prompt": PROMPT}, (1, 4, 8, 8)),
    "sd-v-dpm": (lambda s: td.make_sd("v_prediction", "dpm", seed=s), {"prompt": PROMPT}, (1, 4, 8, 8)),
    "sd-eps-euler": (lambda s: td.make_sd("epsilon", "euler", seed=s), {"prompt": PROMPT}, (1, 4, 8, 8)),
    "sdxl-euler": (lambda s: td.make_sdxl(seed=s), {"prompt": PROMPT}, (1, 4, 8, 8)),
    "sdxl-ddim": (lambda s: td.make_sdxl("ddim", seed=s), {"prompt": PROMPT}, (1, 4, 8, 8)),
    "sd3": (lambda s: td.make_sd3(seed=s), {"prompt": PROMPT}, (1, 4, 8, 8)),
    # Flux's "latent" output is the packed sequence: (B, (8/2)·(8/2) tokens, 4 channels · 2·2).
    "flux": (
        lambda s: td.make_flux(seed=s),
        {"prompt": PROMPT, "height": td.FLUX_HW, "width": td.FLUX_HW},
        (1, 16, 16),
    ),
    "flux-guidance": (
        lambda s: td.make_flux(guidance_embeds=True, seed=s),
        {"prompt": PROMPT, "height": td.FLUX_HW, "width": td.FLUX_HW, "guidance_scale": 3.5},
        (1, 16, 16),
    ),
    # DiTPipeline has no "latent" output (it always decodes): "pt" images, one per class label.
    "dit-learned-ddim": (lambda s: td.make_dit(seed=s), {"class_labels": [3, 5]}, (2, 3, 16, 16)),
    "dit-fixed-dpm": (lambda s: td.make_dit(False, "dpm", seed=s), {"class_labels": [0]}, (1, 3, 16, 16)),
}


def run(pipe: Any, name: str, **overrides: Any) -> Any:
    """Two steps of ``name``'s pipeline from ``torch.Generator().manual_seed(0)``; latents (DiT: a "pt" image)."""
    _, kwargs, _ = FAMILIES[name]
    output_type = "pt" if name.startswith("dit") else "latent"
    pipe.set_progress_bar_config(disable=True)
    call = {"num_inference_steps": 2, "output_type": output_type, **kwargs, **overrides}
    return pipe(**call, generator=torch.Generator().manual_seed(0)).images


def modules(pipe: Any) -> dict[str, torch.nn.Module]:
    return {k: m for k, m in pipe.components.items() if isinstance(m, torch.nn.Module)}


@pytest.mark.parametrize("name", FAMILIES)
def test_two_steps_give_finite_output_of_the_expected_shape(name):
    factory, _, shape = FAMILIES[name]
    pipe = factory(0)
    out = run(pipe, name)
    assert isinstance(out, torch.Tensor)
    assert tuple(out.shape) == shape
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert out.abs().max() > 0


@pytest.mark.parametrize("name", FAMILIES)
def test_components_are_float32_on_the_cpu_in_eval_mode(name):
    pipe = FAMILIES[name][0](0)
    for key, module in modules(pipe).items():
        assert not module.training, key
        for p in module.parameters():
            assert p.dtype == torch.float32, key
            assert p.device.type == "cpu", key


@pytest.mark.parametrize("name", FAMILIES)
def test_save_and_load_reproduces_the_pipeline(name, tmp_path):
    factory, _, _ = FAMILIES[name]
    pipe = factory(0)
    loaded = td.save_and_load(pipe, tmp_path)
    assert type(loaded) is type(pipe)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == type(pipe).__name__
    for key, module in modules(pipe).items():
        assert type(loaded.components[key]) is type(module), key
        assert not loaded.components[key].training, key
        theirs = loaded.components[key].state_dict()
        assert all(torch.equal(v, theirs[k]) for k, v in module.state_dict().items()), key
    public = [{k: v for k, v in s.config.items() if not k.startswith("_")} for s in (pipe.scheduler, loaded.scheduler)]
    assert public[0] == public[1]
    assert torch.equal(run(loaded, name), run(pipe, name))


@pytest.mark.parametrize("name", FAMILIES)
def test_the_same_seed_builds_the_same_pipeline(name):
    factory, _, _ = FAMILIES[name]
    a, b, c = factory(0), factory(0), factory(1)
    for key, module in modules(a).items():
        mine, theirs, other = module.state_dict(), modules(b)[key].state_dict(), modules(c)[key].state_dict()
        assert all(torch.equal(v, theirs[k]) for k, v in mine.items()), key
        assert not all(torch.equal(v, other[k]) for k, v in mine.items()), key
    assert torch.equal(run(a, name), run(b, name))
    assert not torch.equal(run(a, name), run(c, name))


def test_same_shaped_components_get_different_weights():
    pipe = td.make_sd3()
    one, two = pipe.text_encoder.state_dict(), pipe.text_encoder_2.state_dict()
    assert one.keys() == two.keys()
    assert not torch.equal(
        one["text_model.embeddings.token_embedding.weight"], two["text_model.embeddings.token_embedding.weight"]
    )


def test_factories_leave_the_global_generator_alone():
    state = torch.get_rng_state()
    td.make_sd()
    td.make_class_unet()
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("output_type", ["pt", "np"])
def test_sd_decodes_to_an_image(output_type):
    out = run(td.make_sd(), "sd-eps-ddim", output_type=output_type)
    shape = (1, 3, 16, 16) if output_type == "pt" else (1, 16, 16, 3)
    assert tuple(out.shape) == shape
    out = torch.as_tensor(np.asarray(out))
    assert torch.isfinite(out).all()
    assert 0 <= out.min() <= out.max() <= 1


@pytest.mark.parametrize("name", ["sdxl-euler", "sd3", "flux"])
def test_the_other_families_decode_to_an_image(name):
    out = run(FAMILIES[name][0](0), name, output_type="pt")
    assert tuple(out.shape) == (1, 3, 16, 16)
    assert torch.isfinite(out).all()


def test_the_pipeline_classes_and_schedulers():
    assert isinstance(td.make_sd(), StableDiffusionPipeline)
    assert isinstance(td.make_sdxl(), StableDiffusionXLPipeline)
    assert isinstance(td.make_sd3(), StableDiffusion3Pipeline)
    assert isinstance(td.make_flux(), FluxPipeline)
    assert isinstance(td.make_dit(), DiTPipeline)
    kinds = {"ddim": DDIMScheduler, "dpm": DPMSolverMultistepScheduler, "euler": EulerDiscreteScheduler}
    for name, kind in kinds.items():
        scheduler = td.make_sd("v_prediction", name).scheduler
        assert type(scheduler) is kind
        assert scheduler.config.prediction_type == "v_prediction"
        assert scheduler.config.beta_schedule == "scaled_linear"
        assert (scheduler.config.beta_start, scheduler.config.beta_end) == (0.00085, 0.012)
        assert scheduler.config.steps_offset == 1
        assert scheduler.config.timestep_spacing == "leading"
    with pytest.raises(ValueError, match="scheduler"):
        td.make_sd(scheduler="pndm")


def test_the_prompt_reaches_every_text_encoder():
    pipe = td.make_sd3()
    cat = pipe.encode_prompt(PROMPT, PROMPT, PROMPT, do_classifier_free_guidance=False)
    dog = pipe.encode_prompt("a dog", "a dog", "a dog", do_classifier_free_guidance=False)
    embeds, pooled = cat[0], cat[2]
    n = td.CLIP_MAX_LENGTH
    assert embeds.shape == (1, n + 256, 32)  # CLIP tokens (padded to the T5 width), then T5's 256
    assert not torch.equal(embeds[:, :n, :16], dog[0][:, :n, :16])  # CLIP-L slot
    assert not torch.equal(embeds[:, :n, 16:], dog[0][:, :n, 16:])  # CLIP-G slot
    assert not torch.equal(embeds[:, n:], dog[0][:, n:])  # T5
    assert not torch.equal(pooled, dog[2])


def test_long_prompts_are_truncated_not_fatal():
    long = "a very long prompt that the tiny tokenizers must truncate, " * 4
    assert torch.isfinite(run(td.make_sd(), "sd-eps-ddim", prompt=long)).all()
    assert torch.isfinite(run(td.make_flux(), "flux", prompt=long, max_sequence_length=8)).all()


def test_flux_takes_packed_latents():
    """``latents=`` for Flux is the packed (B, (h/2)·(w/2), 4·C) sequence of an h×w latent, h = height/vae_scale."""
    pipe = td.make_flux()
    grid = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    packed = pipe._pack_latents(grid, 1, 4, 8, 8)
    assert packed.shape == (1, 16, 16)
    from_latents = run(pipe, "flux", latents=packed)
    assert torch.equal(from_latents, run(pipe, "flux"))  # the pipeline draws the same grid, then packs it
    unpacked = pipe._unpack_latents(from_latents, td.FLUX_HW, td.FLUX_HW, pipe.vae_scale_factor)
    assert unpacked.shape == (1, 4, 8, 8)


def test_sd3_timesteps_are_sigmas_times_1000():
    pipe = td.make_sd3()
    pipe.scheduler.set_timesteps(4)
    sigmas = pipe.scheduler.sigmas
    assert torch.allclose(pipe.scheduler.timesteps, sigmas[:-1] * 1000)
    assert sigmas[0] == 1 and sigmas[-1] == 0


def test_dit_labels_and_null_class(tmp_path):
    pipe = td.make_dit()
    assert pipe.get_label_ids(["cat", "car", "aeroplane"]) == [3, 1, 0]
    table = pipe.transformer.transformer_blocks[0].norm1.emb.class_embedder.embedding_table
    assert table.num_embeddings == td.DIT_NULL_CLASS + 1  # the pipeline's hard-coded null id has a row
    loaded = td.save_and_load(pipe, tmp_path)
    assert loaded.get_label_ids(["truck", "automobile"]) == [9, 1]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_class_unet_denoises_and_round_trips(prediction_type, tmp_path):
    unet, scheduler = td.make_class_unet(prediction_type)
    assert isinstance(unet, UNet2DModel)
    assert scheduler.config.prediction_type == prediction_type
    assert not unet.training

    def sample(unet, scheduler):
        x = torch.randn((2, 3, 8, 8), generator=torch.Generator().manual_seed(0))
        labels = torch.tensor([3, td.CLASS_UNET_NULL])
        scheduler.set_timesteps(2)
        with torch.no_grad():
            for t in scheduler.timesteps:
                x = scheduler.step(unet(x, t, class_labels=labels).sample, t, x).prev_sample
        return x

    out = sample(unet, scheduler)
    assert out.shape == (2, 3, 8, 8)
    assert torch.isfinite(out).all()
    unet2, scheduler2 = td.save_and_load((unet, scheduler), tmp_path)
    assert type(scheduler2) is DDIMScheduler
    assert torch.equal(sample(unet2, scheduler2), out)
    again, _ = td.make_class_unet(prediction_type)
    assert torch.equal(sample(again, scheduler), out)
    other, _ = td.make_class_unet(prediction_type, seed=1)
    assert not torch.equal(sample(other, scheduler), out)
