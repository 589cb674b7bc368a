"""guidelab guiders inside a classic diffusers pipeline's own call (``guided``): the same numbers as
``guidelab generate`` with the matching solver, null passes skipped where the guider needs none, refusals.

The schedule used for parity goes to γ = 1 in the middle of the run and back (a gap), so the pipeline's doubled
batch meets steps where guidelab runs only the conditional half; batches of 1 and 3 prompts (diffusers' cut-off
callbacks assume batch 1; guidelab must not).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from conftest import GaussianDenoiser
from guidelab.guiders import build_guider
from guidelab.guiders.cfg import CFG
from guidelab.guiders.context import StepContext
from guidelab.guiders.schedules import Schedule
from guidelab.models.adapters import flux_pack
from guidelab.paths import get_path
from guidelab.pipeline_guidance import guided
from guidelab.pipelines import generate
from tiny_diffusers import FLUX_HW, make_dit, make_flux, make_sd, make_sd3, make_sdxl

RTOL = 1e-5
PROMPTS = ["a cat", "a dog on a hill", "a lighthouse"]
STEPS = 8
GAP = (3, 4)  # steps with γ = 1


class Gap(Schedule):
    """γ = scale except at the steps in ``GAP``, where γ = 1 (the unconditional pass is skipped there)."""

    name = "test-gap"

    def __init__(self, scale: float = 4.0):
        self.scale = scale

    def __call__(self, ctx: StepContext) -> float:
        return 1.0 if ctx.index in GAP else self.scale

    def config(self) -> dict[str, Any]:
        return {"scale": self.scale}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


FAMILIES = [
    ("sd-ddim", make_sd, {"scheduler": "ddim"}),
    ("sd-euler", make_sd, {"scheduler": "euler"}),
    ("sd-dpm-v", make_sd, {"scheduler": "dpm", "prediction_type": "v_prediction"}),
    ("sdxl", make_sdxl, {}),
    ("sd3", make_sd3, {}),
]


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize(("name", "make", "kwargs"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_classic_pipeline_call_equals_generate(name, make, kwargs, batch):
    pipe = _quiet(make(**kwargs))
    net = getattr(pipe, "unet", None) or pipe.transformer
    c, s = net.config.in_channels, net.config.sample_size
    lat = torch.randn((batch, c, s, s), generator=torch.Generator().manual_seed(2))
    prompts = PROMPTS[:batch]
    with guided(pipe, CFG(Gap(4.0))) as core:
        ref = pipe(prompts, num_inference_steps=STEPS, guidance_scale=7.0, latents=lat, output_type="latent").images
    out = generate(pipe, prompts, guider=CFG(Gap(4.0)), steps=STEPS, latents=lat, output_type="latent")
    assert _rel(ref, out.images) <= RTOL
    assert core.calls == STEPS and core.uncond_passes == STEPS - len(GAP)
    assert out.nfe == 2 * STEPS - len(GAP)


@pytest.mark.parametrize("batch", [1, 3])
def test_flux_sequential_passes(batch):
    """FluxPipeline runs cond then negative as two forwards; a γ = 1 step skips the second forward."""
    pipe = _quiet(make_flux())
    h = FLUX_HW // pipe.vae_scale_factor
    lat = torch.randn((batch, 4, h, h), generator=torch.Generator().manual_seed(2))
    prompts = PROMPTS[:batch]
    with guided(pipe, CFG(Gap(4.0))) as core:
        ref = pipe(
            prompts, negative_prompt=[""] * batch, true_cfg_scale=2.0, num_inference_steps=STEPS, height=FLUX_HW,
            width=FLUX_HW, latents=flux_pack(lat), output_type="latent",
        ).images  # fmt: skip
    out = generate(
        pipe, prompts, negative_prompt="", guider=CFG(Gap(4.0)), steps=STEPS, height=FLUX_HW, width=FLUX_HW,
        latents=lat, output_type="latent",
    )  # fmt: skip
    assert _rel(ref, flux_pack(out.images)) <= RTOL
    assert core.calls == 2 * STEPS - len(GAP) and core.uncond_passes == STEPS - len(GAP)


def test_interval_guidance_counts_forwards_and_the_pipeline_is_restored():
    pipe = _quiet(make_sd(scheduler="ddim"))
    batches: list[int] = []
    # the network's first layer sees each real forward (the pipeline's call of the UNet always has the doubled batch)
    hook = pipe.unet.conv_in.register_forward_pre_hook(lambda m, args: batches.append(int(args[0].shape[0])))
    params = {"schedule": "interval", "scale": 3.0, "lam_lo": 0.3, "lam_hi": 3.0}
    with guided(pipe, "cfg", **params):
        pipe("a cat", num_inference_steps=10, guidance_scale=2.0, output_type="latent")
    hook.remove()
    out = generate(pipe, "a cat", params=params, steps=10, output_type="latent")
    inside = [b == 2 for b in batches]
    assert 0 < sum(inside) < 10 and out.nfe == 10 + sum(inside)
    assert set(batches) == {1, 2}
    assert "forward" not in vars(pipe.unet) and "set_timesteps" not in vars(pipe.scheduler)  # restored


def test_every_consistent_guider_runs_inside_the_call():
    from guidelab.guiders.registry import GUIDERS

    pipe = _quiet(make_sd(scheduler="ddim"))
    for name in GUIDERS:
        if name in ("learned", "weak-model", "cfg++", "rectified-cfg++"):
            continue  # checkpoint; another model; inconsistent pair; extra evaluations (last two refused below)
        params = {"scale": 2.0} if name == "beta-cfg" else {}
        with guided(pipe, name, **params):
            lat = pipe("a cat", num_inference_steps=3, guidance_scale=2.0, output_type="latent").images
        assert torch.isfinite(lat).all(), name


def test_refusals_name_the_field():
    pipe = _quiet(make_sd(scheduler="ddim"))
    calls = []
    hook = pipe.text_encoder.register_forward_pre_hook(lambda *a: calls.append(1))
    with (
        pytest.raises(ValueError, match="^guider: 'cfg\\+\\+' gives a guided pair .*guidelab generate"),
        guided(pipe, "cfg++", scale=0.6),
    ):
        pipe("a cat", num_inference_steps=3, guidance_scale=2.0, output_type="latent")
    with (
        pytest.raises(ValueError, match="^guider: 'rectified-cfg\\+\\+' evaluates the model at a predictor point"),
        guided(pipe, "rectified-cfg++"),
    ):
        pipe("a cat", num_inference_steps=3, guidance_scale=2.0, output_type="latent")
    hook.remove()
    assert not calls  # refused on entering the block, before the pipeline encodes anything
    weak = build_guider("weak-model", guide_model="w", models={"w": GaussianDenoiser(get_path("rf"))})
    with pytest.raises(ValueError, match="^guider: 'weak-model' asks for the pass"), guided(pipe, weak):
        pass  # another network's pass: refused on entering
    with (
        pytest.raises(ValueError, match="^guidance_scale: the pipeline ran without its null pass"),
        guided(pipe, "cfg", scale=3.0),
    ):
        pipe("a cat", num_inference_steps=3, guidance_scale=1.0, output_type="latent")
    assert "forward" not in vars(pipe.unet)  # restored after an error too
    with pytest.raises(ValueError, match="^pipeline: DiTPipeline"), guided(make_dit(), "cfg"):
        pass
    flux = _quiet(make_flux())
    with (
        pytest.raises(ValueError, match="^true_cfg_scale: FluxPipeline ran without its negative pass"),
        guided(flux, "cfg", scale=3.0),
    ):
        flux("a cat", num_inference_steps=3, height=FLUX_HW, width=FLUX_HW, output_type="latent")


def test_a_call_without_cfg_on_an_even_batch_is_refused():
    """Two prompts without CFG make a batch of 2: that must not be split into a null half and a conditional half."""
    pipe = _quiet(make_sd(scheduler="ddim"))
    with (
        pytest.raises(ValueError, match="^guidance_scale: the pipeline ran without its null pass"),
        guided(pipe, "cfg", scale=3.0),
    ):
        pipe(PROMPTS[:2], num_inference_steps=3, guidance_scale=1.0, output_type="latent")


def test_a_forward_set_on_the_instance_is_restored():
    """Hooks such as accelerate's (CPU offload) set ``forward`` on the instance; leaving the block keeps them."""
    pipe = _quiet(make_sd(scheduler="ddim"))
    original = pipe.unet.forward
    seen: list[int] = []

    def hooked(*args: Any, **kwargs: Any) -> Any:
        seen.append(1)
        return original(*args, **kwargs)

    pipe.unet.forward = hooked
    with guided(pipe, "cfg", scale=3.0):
        pipe("a cat", num_inference_steps=2, guidance_scale=2.0, output_type="latent")
    assert vars(pipe.unet)["forward"] is hooked and len(seen) == 2
    with guided(pipe, "cfg", scale=3.0), guided(pipe, "cfg", scale=2.0):
        pass
    assert vars(pipe.unet)["forward"] is hooked and "set_timesteps" not in vars(pipe.scheduler)


def test_flux_after_an_error_between_its_passes_the_next_call_starts_clean():
    pipe = _quiet(make_flux())
    h = FLUX_HW // pipe.vae_scale_factor
    lat = torch.randn((1, 4, h, h), generator=torch.Generator().manual_seed(2))
    kwargs = {
        "negative_prompt": "", "true_cfg_scale": 2.0, "num_inference_steps": 3, "height": FLUX_HW, "width": FLUX_HW,
        "latents": flux_pack(lat), "output_type": "latent",
    }  # fmt: skip
    with guided(pipe, "cfg", scale=3.0):
        clean = pipe("a cat", **kwargs).images
    calls = []

    def fail_second(module: Any, args: Any) -> None:
        calls.append(1)
        if len(calls) == 2:  # the negative pass of the first step
            raise RuntimeError("out of memory")

    with guided(pipe, "cfg", scale=3.0):
        handle = pipe.transformer.register_forward_pre_hook(fail_second)
        with pytest.raises(RuntimeError, match="out of memory"):
            pipe("a cat", **kwargs)
        again = pipe("a cat", **kwargs).images
        handle.remove()
    assert _rel(again, clean) <= RTOL
