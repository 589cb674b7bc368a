"""guidelab on diffusers pipelines: parity with each pipeline's own call, forward counts, conditions and errors.

Every pipeline is a tiny random one built offline from configs (tests/tiny_diffusers.py). **Parity**: guidelab's
CFG with the solver that matches the scheduler (DDIM ↔ DDIMScheduler, DDIM ↔ EulerDiscreteScheduler, DPM++(2M) ↔
DPMSolverMultistepScheduler, Euler ↔ FlowMatchEulerDiscreteScheduler) on the same initial latents gives the
pipeline's own output to float32 rounding (≤ 1e-5 relative to the largest value), for SD (ε and v), SDXL, SD3,
Flux (true CFG, with and without the distilled-guidance embedding) and DiT (learned σ or not).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from guidelab.guiders import build_guider
from guidelab.models.adapters import ConditionTable, flux_pack, flux_unpack
from guidelab.paths import DiscreteVPPath
from guidelab.pipelines import encode_prompts, generate, pipeline_denoiser, scheduler_grid
from tiny_diffusers import FLUX_HW, make_dit, make_flux, make_sd, make_sd3, make_sdxl

RTOL = 1e-5
PROMPTS = ["a cat", "a dog on a hill"]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _latents(shape, seed=1):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize(("scheduler", "solver"), [("ddim", "ddim"), ("dpm", "dpm++2m"), ("euler", "ddim")])
def test_sd_parity(prediction_type, scheduler, solver):
    pipe = _quiet(make_sd(prediction_type=prediction_type, scheduler=scheduler))
    s = pipe.unet.config.sample_size
    lat = _latents((4, 4, s, s))  # 2 prompts × 2 images
    negative = ["blurry", "ugly"]  # one negative per prompt: the null rows differ by sample
    ref = pipe(
        PROMPTS, negative_prompt=negative, num_images_per_prompt=2, num_inference_steps=6, guidance_scale=4.5,
        latents=lat, output_type="latent",
    ).images  # fmt: skip
    out = generate(
        pipe, PROMPTS, negative_prompt=negative, n=2, guider="cfg", params={"scale": 4.5}, steps=6, latents=lat,
        output_type="latent",
    )  # fmt: skip
    assert out.config["solver"] == solver
    assert _rel(out.images, ref) <= RTOL
    assert out.nfe == 12 and out.calls == 6  # cond + null as one forward per step


@pytest.mark.parametrize("spacing", ["linspace", "trailing"])
def test_sd_parity_euler_spacing(spacing):
    """EulerDiscreteScheduler with linspace or trailing spacing starts from σ_max·ξ (its init_noise_sigma), not
    √(σ_max² + 1)·ξ: generate starts where the pipeline does."""
    from diffusers import EulerDiscreteScheduler

    pipe = _quiet(make_sd(scheduler="euler"))
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing=spacing)
    lat = _latents((2, 4, 8, 8))
    ref = pipe(PROMPTS, num_inference_steps=6, guidance_scale=4.5, latents=lat, output_type="latent").images
    out = generate(pipe, PROMPTS, params={"scale": 4.5}, steps=6, latents=lat, output_type="latent")
    assert _rel(out.images, ref) <= RTOL


@pytest.mark.parametrize("scheduler", ["euler", "ddim"])
def test_sdxl_parity(scheduler):
    pipe = _quiet(make_sdxl(scheduler=scheduler))
    s = pipe.unet.config.sample_size
    lat = _latents((2, 4, s, s))
    ref = pipe(PROMPTS, num_inference_steps=5, guidance_scale=5.0, latents=lat, output_type="latent").images
    out = generate(pipe, PROMPTS, params={"scale": 5.0}, steps=5, latents=lat, output_type="latent")
    assert _rel(out.images, ref) <= RTOL


def test_sdxl_parity_at_a_size_other_than_the_default():
    """SDXL's added time ids hold the image size (original and target size = height, width by default)."""
    pipe = _quiet(make_sdxl())
    lat = _latents((2, 4, 12, 8))
    ref = pipe(
        PROMPTS, num_inference_steps=4, guidance_scale=5.0, height=24, width=16, latents=lat, output_type="latent"
    ).images
    size = {"height": 24, "width": 16}
    out = generate(pipe, PROMPTS, params={"scale": 5.0}, steps=4, latents=lat, output_type="latent", **size)
    assert _rel(out.images, ref) <= RTOL


def test_sd3_parity():
    pipe = _quiet(make_sd3())
    c, s = pipe.transformer.config.in_channels, pipe.transformer.config.sample_size
    lat = _latents((2, c, s, s))
    ref = pipe(PROMPTS, num_inference_steps=5, guidance_scale=5.0, latents=lat, output_type="latent").images
    out = generate(pipe, PROMPTS, params={"scale": 5.0}, steps=5, latents=lat, output_type="latent")
    assert out.config["solver"] == "euler" and out.config["path"] == {"name": "rf"}
    assert _rel(out.images, ref) <= RTOL


@pytest.mark.parametrize("guidance_embeds", [False, True])
def test_flux_parity_true_cfg(guidance_embeds):
    """FluxPipeline's true CFG runs cond and null as two forwards; guidelab batches them: same numbers."""
    pipe = _quiet(make_flux(guidance_embeds=guidance_embeds))
    h = FLUX_HW // pipe.vae_scale_factor
    lat = _latents((2, 4, h, h))
    extra = {"guidance_scale": 2.5} if guidance_embeds else {}
    ref = pipe(
        PROMPTS, negative_prompt=["", ""], true_cfg_scale=4.0, num_inference_steps=5, height=FLUX_HW, width=FLUX_HW,
        latents=flux_pack(lat), output_type="latent", **extra,
    ).images  # fmt: skip
    out = generate(
        pipe, PROMPTS, negative_prompt="", params={"scale": 4.0}, steps=5, height=FLUX_HW, width=FLUX_HW,
        latents=lat, output_type="latent", distilled_guidance=2.5 if guidance_embeds else None,
    )  # fmt: skip
    assert _rel(flux_pack(out.images), ref) <= RTOL


def test_flux_packing_round_trip():
    x = torch.randn(3, 4, 6, 8)
    assert torch.equal(flux_unpack(flux_pack(x), 6, 8), x)
    pipe = make_flux()
    assert torch.equal(flux_pack(x), pipe._pack_latents(x, 3, 4, 6, 8))


@pytest.mark.parametrize("learned_sigma", [True, False])
@pytest.mark.parametrize("scheduler", ["ddim", "dpm"])
def test_dit_parity(learned_sigma, scheduler):
    pipe = _quiet(make_dit(learned_sigma=learned_sigma, scheduler=scheduler))
    c, s = pipe.transformer.config.in_channels, pipe.transformer.config.sample_size
    lat = torch.randn((2, c, s, s), generator=torch.Generator().manual_seed(0))  # what the pipeline draws
    gen = torch.Generator().manual_seed(0)
    ref = pipe(class_labels=[1, 2], guidance_scale=4.0, num_inference_steps=5, generator=gen, output_type="pt").images
    # a random DiT's x0̂ is large at the linear schedule's small α: the divergence monitor must not freeze it
    out = generate(
        pipe, class_labels=[1, 2], params={"scale": 4.0}, steps=5, latents=lat, output_type="pt",
        divergence_factor=math.inf,
    )  # fmt: skip
    assert _rel(out.images, ref) <= RTOL


def test_dit_original_three_channel_guidance():
    """guided_channels=3 is the original DiT code's forward_with_cfg (facebookresearch/DiT, models.py): ε of the
    first 3 channels guided, the 4th conditional; written out here with diffusers' DDIM step as the solver."""
    pipe = _quiet(make_dit(learned_sigma=True, scheduler="ddim"))
    net, sch = pipe.transformer, pipe.scheduler
    c, s = net.config.in_channels, net.config.sample_size
    lat = _latents((2, c, s, s), seed=3)
    labels, scale = torch.tensor([4, 7]), 3.0
    sch.set_timesteps(4)
    x = lat.clone()
    with torch.no_grad():
        for t in sch.timesteps:
            inp = torch.cat([x, x])
            out = net(inp, timestep=t.expand(4), class_labels=torch.cat([labels, torch.full_like(labels, 1000)])).sample
            eps_c, eps_u = out[:2, :c], out[2:, :c]
            eps = eps_c.clone()
            eps[:, :3] = eps_u[:, :3] + scale * (eps_c[:, :3] - eps_u[:, :3])
            x = sch.step(eps, t, x).prev_sample
    got = generate(
        pipe, class_labels=[4, 7], params={"scale": scale}, steps=4, latents=lat, output_type="latent",
        guided_channels=3, divergence_factor=math.inf,
    )  # fmt: skip
    assert _rel(got.images, x) <= RTOL
    full = generate(
        pipe, class_labels=[4, 7], params={"scale": scale}, steps=4, latents=lat, output_type="latent",
        divergence_factor=math.inf,
    )  # fmt: skip
    assert _rel(full.images, x) > 1e-3  # guiding all 4 channels is a different sampler


class ForwardCounter:
    """Counts the network's forwards and their batch sizes (a forward pre-hook)."""

    def __init__(self, module):
        self.batches: list[int] = []
        self.handle = module.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        self.batches.append(int(x.shape[0]))


def test_interval_guidance_skips_the_null_forward_outside_the_interval():
    pipe = _quiet(make_sd(scheduler="ddim"))
    path = DiscreteVPPath.from_scheduler(pipe.scheduler)
    steps, lam_lo, lam_hi = 10, 0.3, 2.0
    grid = scheduler_grid(pipe.scheduler, steps, path)
    lam = path.lam(grid[:-1])
    inside = [(lam_lo < float(v) <= lam_hi) for v in lam]
    assert 0 < sum(inside) < steps  # the interval cuts the run
    counter = ForwardCounter(pipe.unet)
    params = {"schedule": "interval", "scale": 3.0, "lam_lo": lam_lo, "lam_hi": lam_hi}
    out = generate(pipe, PROMPTS, n=3, params=params, steps=steps, output_type="latent")
    assert counter.batches == [12 if k else 6 for k in inside]  # 6 samples; cond + null batched inside
    assert out.nfe == steps + sum(inside)


def test_unit_scale_makes_one_forward_per_step_and_max_batch_splits():
    pipe = _quiet(make_sd(scheduler="dpm"))
    counter = ForwardCounter(pipe.unet)
    out = generate(pipe, PROMPTS, params={"scale": 1.0}, steps=4, output_type="latent")
    assert counter.batches == [2] * 4 and out.nfe == 4
    counter.batches.clear()
    whole = generate(pipe, PROMPTS, n=3, steps=3, output_type="latent")
    assert counter.batches == [12] * 3
    counter.batches.clear()
    split = generate(pipe, PROMPTS, n=3, steps=3, output_type="latent", max_batch=5)
    assert counter.batches == [5, 5, 2] * 3
    assert _rel(split.latents, whole.latents) <= RTOL  # other batch shapes round differently


def test_seeded_noise_does_not_depend_on_n_and_reproduces():
    pipe = _quiet(make_sd(scheduler="ddim"))
    one = generate(pipe, "a cat", n=1, seed=7, steps=3, output_type="latent")
    three = generate(pipe, "a cat", n=3, seed=7, steps=3, output_type="latent")
    again = generate(pipe, "a cat", n=3, seed=7, steps=3, output_type="latent")
    assert _rel(three.latents[:1], one.latents) <= RTOL  # batch size changes only the rounding
    assert torch.equal(three.latents, again.latents)
    assert not torch.allclose(three.latents[0], three.latents[1])


def test_decoded_images_match_the_pipeline():
    pipe = _quiet(make_sd(scheduler="ddim"))
    s = pipe.unet.config.sample_size
    lat = _latents((2, 4, s, s))
    ref = pipe(PROMPTS, num_inference_steps=4, guidance_scale=3.0, latents=lat, output_type="np").images
    out = generate(pipe, PROMPTS, params={"scale": 3.0}, steps=4, latents=lat, output_type="np")
    np.testing.assert_allclose(out.images, ref, atol=1e-5)
    pil = generate(pipe, PROMPTS, params={"scale": 3.0}, steps=4, latents=lat, output_type="pil")
    assert len(pil.images) == 2 and pil.images[0].size == (ref.shape[2], ref.shape[1])


def test_every_guider_and_solver_runs_on_a_pipeline():
    """The same API as on exact targets: any registered guider (default settings) and any solver."""
    from guidelab.guiders.registry import GUIDERS
    from guidelab.sampling import SOLVERS

    pipe = _quiet(make_sd(scheduler="ddim"))
    for name in GUIDERS:
        if name in ("learned", "weak-model"):
            continue  # need a checkpoint / a guide model: covered below and in their own tests
        params = {"scale": 2.0} if name == "beta-cfg" else None
        out = generate(pipe, "a cat", guider=name, params=params, steps=3, output_type="latent")
        assert torch.isfinite(out.latents).all(), name
    for solver in SOLVERS:
        out = generate(pipe, "a cat", solver=solver, steps=3, output_type="latent")
        assert torch.isfinite(out.latents).all(), solver


def test_weak_model_guidance_with_a_second_pipeline_network():
    """Autoguidance on a pipeline: the guide model is another UNet with the same conditions (a 'weaker' copy)."""
    pipe = _quiet(make_sd(scheduler="ddim"))
    weak_pipe = make_sd(scheduler="ddim", seed=1)
    conditions = encode_prompts(pipe, ["a cat"], None, "cpu")
    weak = pipeline_denoiser(weak_pipe, encode_prompts(weak_pipe, ["a cat"], None, "cpu"))
    guider = build_guider("weak-model", scale=2.0, guide_model="weak", guide_cond="cond", models={"weak": weak})
    counter = ForwardCounter(weak_pipe.unet)
    out = generate(pipe, conditions=conditions, guider=guider, steps=3, output_type="latent")
    assert counter.batches == [1, 1, 1] and torch.isfinite(out.latents).all()


def test_condition_table_rows_and_null_labels():
    cond = {"e": torch.arange(3.0).reshape(3, 1)}
    table = ConditionTable(cond, {"e": torch.tensor([[10.0], [11.0], [12.0]])})
    labels = torch.tensor([0, 2, 1])
    nulls = table.null_cond(labels)
    assert nulls.tolist() == [-2, -4, -3]
    assert table.gather(torch.cat([labels, nulls]))["e"].reshape(-1).tolist() == [0, 2, 1, 10, 12, 11]
    single = ConditionTable(cond, {"e": torch.tensor([[9.0]])})
    assert single.null_cond(labels).tolist() == [-1, -1, -1]
    with pytest.raises(ValueError, match="^cond: label 3"):
        table.gather(torch.tensor([3]))
    with pytest.raises(ValueError, match="^null: "):
        ConditionTable(cond, {"e": torch.zeros(2, 1)})
    with pytest.raises(ValueError, match="^null: e has shape"):
        ConditionTable(cond, {"e": torch.zeros(1, 2)})


@pytest.mark.parametrize(
    ("make", "kwargs", "field"),
    [
        (make_dit, {"prompt": "a cat"}, "prompt"),
        (make_dit, {}, "class_labels"),
        (make_dit, {"class_labels": [1000]}, "class_labels"),
        (make_sd, {"prompt": "a cat", "class_labels": [1]}, "class_labels"),
        (make_sd, {}, "prompt"),
        (make_sd, {"prompt": "a cat", "guider": "no-such"}, "guider"),
        (make_sd, {"prompt": "a cat", "solver": "rk45"}, "solver"),
        (make_sd, {"prompt": "a cat", "grid": "cosine"}, "grid"),
        (make_sd, {"prompt": "a cat", "output_type": "jpeg"}, "output_type"),
        (make_sd, {"prompt": "a cat", "height": 15}, "height"),
        (make_sd, {"prompt": "a cat", "n": 0}, "n"),
        (make_sd, {"prompt": "a cat", "steps": 0}, "steps"),
        (make_sd, {"prompt": ["a", "b"], "negative_prompt": ["x", "y", "z"]}, "negative_prompt"),
        (make_sd, {"prompt": "a cat", "latents": torch.zeros(1, 4, 3, 3)}, "latents"),
        (make_sd, {"prompt": "a cat", "max_batch": 0}, "max_batch"),
        (make_flux, {"prompt": "a cat", "distilled_guidance": 3.5, "height": FLUX_HW, "width": FLUX_HW}, "distilled"),
    ],
)
def test_bad_input_names_the_field(make, kwargs, field):
    pipe = _quiet(make())
    with pytest.raises(ValueError, match=f"^{field}"):
        generate(pipe, **{"output_type": "latent", **kwargs})


@pytest.mark.parametrize(
    ("scheduler", "steps"),
    [
        ("dpm-karras", 50),  # Karras σ rounded to integer timesteps repeat near σ_min
        ("euler-linspace", 6),  # fractional timesteps: read through σ, whose top rounds a hair past t = 1
        ("euler-karras", 10),
    ],
)
def test_scheduler_grid_of_sigma_schedules(scheduler, steps):
    from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler

    schedule = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
    if scheduler == "dpm-karras":
        sch = DPMSolverMultistepScheduler(**schedule, algorithm_type="dpmsolver++", use_karras_sigmas=True)
    elif scheduler == "euler-linspace":
        sch = EulerDiscreteScheduler(**schedule, timestep_spacing="linspace")
    else:
        sch = EulerDiscreteScheduler(**schedule, use_karras_sigmas=True)
    path = DiscreteVPPath.from_scheduler(sch)
    grid = scheduler_grid(sch, steps, path)
    sch.set_timesteps(steps)
    c = path.coefficients(grid)
    sigmas = sch.sigmas.to(torch.float64)
    assert float(grid[0]) == 1.0 and float(grid[-1]) == 0.0
    torch.testing.assert_close(c.sigma / c.alpha, sigmas, rtol=1e-6, atol=0)
    if scheduler != "dpm-karras":  # Euler passes its fractional timesteps to the network: the same ones
        torch.testing.assert_close(path.timestep(grid[:-1]), sch.timesteps.to(torch.float64), rtol=0, atol=1e-3)


def test_grid_kinds_on_a_discrete_path_stay_on_the_training_timesteps():
    pipe = _quiet(make_sd(scheduler="ddim"))
    for kind in ("uniform", "geometric", "edm"):
        out = generate(pipe, "a cat", grid=kind, steps=4, output_type="latent")
        times = out.config["times"]
        assert times[-1] == 0.0 and min(times[:-1]) >= 1e-3 - 1e-12 and max(times) <= 1.0, kind


def test_cli_generate_writes_images_grid_and_sidecar(tmp_path, capsys):
    import json

    from PIL import Image

    from guidelab.cli import main

    folder = tmp_path / "sd"
    make_sd(scheduler="dpm").save_pretrained(folder)
    out = tmp_path / "out"
    argv = ["generate", "--pipeline", str(folder), "--out", str(out), "--prompt", "a cat", "--prompt", "a dog"]
    main([*argv, "--negative-prompt", "blurry", "--n", "2", "--steps", "3", "-p", "scale=4", "--seed", "5"])
    captured = capsys.readouterr()
    assert "wrote 4 images" in captured.out
    sidecar = json.loads((out / "generate.json").read_text())
    assert sidecar["nfe"] == 6 and sidecar["diverged"] == 0
    assert sidecar["config"]["guider"]["schedule"]["scale"] == 4.0
    assert sidecar["config"]["solver"] == "dpm++2m" and sidecar["config"]["seed"] == 5
    assert sidecar["config"]["prompt"] == ["a cat", "a dog"] and sidecar["config"]["negative_prompt"] == ["blurry"]
    images = [Image.open(out / f"image_{i:03d}.png") for i in range(4)]
    grid = Image.open(out / "grid.png")
    w, h = images[0].size
    assert grid.size == (2 * w, 2 * h)  # n columns, one row per prompt
    # the same command through the library gives the same pixels
    pipe = _quiet(make_sd(scheduler="dpm"))
    lib = generate(
        pipe, ["a cat", "a dog"], negative_prompt="blurry", n=2, steps=3, params={"scale": 4}, seed=5, output_type="np"
    )
    pixels = np.stack([np.asarray(im, dtype=np.float64) / 255 for im in images])
    assert np.abs(pixels - lib.images).max() <= 1 / 255 + 1e-9


def test_dit_class_labels_by_name_id_or_digit_string():
    pipe = _quiet(make_dit())
    out = generate(
        pipe, class_labels=["cat", 5, "7"], steps=2, output_type="latent", divergence_factor=math.inf
    )  # fmt: skip
    assert out.config["class_labels"] == [pipe.labels["cat"], 5, 7]
    with pytest.raises(ValueError, match="^class_labels: unknown label 'zebra'; known names include"):
        generate(pipe, class_labels=["zebra"], steps=2)


def test_cli_generate_names_the_diverged_images(tmp_path, capsys):
    """A random DiT's latents grow past the divergence bound at 8 steps: the command says which images froze, the
    sidecar lists them, and --divergence-factor inf keeps them all."""
    import json

    from guidelab.cli import main

    folder = tmp_path / "dit"
    make_dit().save_pretrained(folder)
    argv = ["generate", "--pipeline", str(folder), "--class", "cat", "--class", "3", "--steps", "8", "--guider", "none"]
    main([*argv, "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err
    sidecar = json.loads((tmp_path / "a" / "generate.json").read_text())
    assert sidecar["diverged"] == len(sidecar["diverged_indices"]) > 0
    assert f"warning: images {sidecar['diverged_indices']} diverged" in err
    assert sidecar["images"][0] == "image_000.png"  # relative to the sidecar
    main([*argv, "--out", str(tmp_path / "b"), "--divergence-factor", "inf"])
    assert "diverged" not in capsys.readouterr().err
    assert json.loads((tmp_path / "b" / "generate.json").read_text())["diverged"] == 0
