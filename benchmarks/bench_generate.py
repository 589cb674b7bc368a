"""Benchmark: guidelab's ``generate`` against a diffusers pipeline's own call, and the time interval guidance saves
(the README's Performance table, "Real models").

1. **Equal NFE.** ``generate(pipe, prompt, params={"scale": s}, steps=N, latents=ξ, output_type="latent")`` against
   ``pipe(prompt, guidance_scale=s, num_inference_steps=N, latents=ξ, output_type="latent")``: the same network,
   scheduler grid, CFG scale and initial latents, both encoding the prompt, decoding excluded on both sides. Four
   models: the tiny SD (DDIM) and tiny SD3 pipelines of ``tests/tiny_diffusers.py``, where the network is so small
   that guidelab's per-step bookkeeping shows most, and larger networks built from config in which the network
   dominates, as it does in real use: a ``UNet2DConditionModel`` with widths (64, 128, 256) on 32×32×4 latents,
   and an ``SD3Transformer2DModel`` of width 256 (4 heads of 64) with 4 layers on 32×32×4 latents (256 image
   tokens). Reported: ratio = generate / pipeline wall time, and guidelab's extra time per step. Target ≤ 1.05×.
2. **Interval guidance** on the larger SD model: ``generate`` with ``{"schedule": "interval", "scale": 3.0,
   "lam_lo": …, "lam_hi": …}``, the λ window chosen around the middle half of the scheduler's steps, against
   constant CFG at the same scale. Reported: (fraction of wall time saved) / (fraction of network evaluations
   saved); target within [0.95, 1.05]. A step outside the window runs the conditional pass alone, a forward at
   half the batch, so the proportionality is in network evaluations. In the same rounds the network's forward is
   timed at the full and at the half batch (through guidelab's adapter): ``2·(1 − t_half/t_full)`` is the ratio the
   network alone allows (a forward at half the batch costs more than half of one on a CPU, and on a GPU at a
   small batch nearly all of it), and ``steps outside·(t_full − t_half)/t_cfg_run`` over the NFE saved is what it
   predicts for these runs, whose other costs (encoding, bookkeeping) save nothing; the measured ratio against
   that prediction is what guidelab adds or loses.

Network forwards are counted by a hook in a separate, untimed run (equal NFE is checked, not assumed) and the final
latents are compared. Every measurement alternates the runs in rounds (order reversed every other round) after a
warm-up (item 1: at least ``--repeats`` rounds and at least ``--min-seconds`` per side, so the tiny models get
dozens); medians with min–max over the rounds, ratios per round. ``torch.set_num_threads`` is fixed, to 1 by
default: on a 2-core machine shared with another process, two threads per process oversubscribe the cores and a
forward can take ten times as long from one round to the next, while one thread stays steady (pass ``--threads 2``
on an idle machine). Usage:

    .venv/bin/python benchmarks/bench_generate.py [--device cpu|cuda] [--threads 1] [--repeats 7] [--steps 20]
        [--min-seconds 10] [--models tiny,large] [--quick] [--out results.json]
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from _timing import interleaved
from guidelab.io import write_json_atomic
from guidelab.pipelines import generate, pipeline_path, scheduler_grid

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tiny pipelines: tests/tiny_diffusers.py

PROMPT = "a photo of a cat"
SCALE = 5.0  # CFG scale of item 1
INTERVAL_SCALE = 3.0  # item 2
PARITY_TARGET = 1.05
INTERVAL_TARGET = (0.95, 1.05)


# --- models ---------------------------------------------------------------------------------------------------------


def _seeded(build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build().eval()


def large_sd() -> Any:
    """The tiny SD pipeline (its CLIP, tokenizer, VAE and DDIM scheduler) with a UNet of widths (64, 128, 256),
    one layer per block and cross-attention at the two finer levels, on 32×32×4 latents."""
    from diffusers import UNet2DConditionModel

    from tiny_diffusers import make_sd

    pipe = make_sd(scheduler="ddim")
    unet = _seeded(
        lambda: UNet2DConditionModel(
            sample_size=32,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(64, 128, 256),
            layers_per_block=1,
            cross_attention_dim=pipe.text_encoder.config.hidden_size,
            attention_head_dim=8,
            norm_num_groups=32,
        )
    )
    return type(pipe)(**{**pipe.components, "unet": unet})


def large_sd3() -> Any:
    """The tiny SD3 pipeline (its three text encoders, VAE and flow-matching scheduler) with an MMDiT of width 256
    (4 heads of 64), 4 layers, 2×2 patches, on 32×32×4 latents."""
    from diffusers import SD3Transformer2DModel

    from tiny_diffusers import make_sd3

    pipe = make_sd3()
    small = pipe.transformer.config
    transformer = _seeded(
        lambda: SD3Transformer2DModel(
            sample_size=32,
            patch_size=2,
            in_channels=4,
            out_channels=4,
            num_layers=4,
            attention_head_dim=64,
            num_attention_heads=4,
            joint_attention_dim=small.joint_attention_dim,
            caption_projection_dim=256,
            pooled_projection_dim=small.pooled_projection_dim,
            pos_embed_max_size=32,
        )
    )
    return type(pipe)(**{**pipe.components, "transformer": transformer})


def tiny_sd() -> Any:
    from tiny_diffusers import make_sd

    return make_sd(scheduler="ddim")


def tiny_sd3() -> Any:
    from tiny_diffusers import make_sd3

    return make_sd3()


LARGE_SD = "large sd (ddim), unet 64-128-256, 32x32"
MODELS: dict[str, Callable[[], Any]] = {
    "tiny sd (ddim)": tiny_sd,
    "tiny sd3": tiny_sd3,
    LARGE_SD: large_sd,
    "large sd3, mmdit 4x256, 32x32": large_sd3,
}


def network(pipe: Any) -> torch.nn.Module:
    return pipe.unet if getattr(pipe, "unet", None) is not None else pipe.transformer


def latents_for(pipe: Any, batch: int, device: str) -> torch.Tensor:
    config = network(pipe).config
    shape = (batch, config.in_channels, config.sample_size, config.sample_size)
    return torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(device)


# --- helpers --------------------------------------------------------------------------------------------------------


def synced(fn: Callable[[], Any], device: str) -> Callable[[], Any]:
    """``fn`` followed by a device synchronisation (so a timing covers the work, not its launch)."""
    if not device.startswith("cuda"):
        return fn

    def run() -> Any:
        out = fn()
        torch.cuda.synchronize()
        return out

    return run


class ForwardCounter:
    """Batch size of every forward of ``net`` while active (a pre-hook; used only in untimed runs)."""

    def __init__(self, net: torch.nn.Module):
        self.batches: list[int] = []
        self.handle = net.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        x = args[0] if args else kwargs.get("hidden_states", kwargs.get("sample"))
        self.batches.append(int(x.shape[0]))

    def close(self) -> None:
        self.handle.remove()


def counted(net: torch.nn.Module, fn: Callable[[], Any]) -> tuple[Any, list[int]]:
    counter = ForwardCounter(net)
    try:
        out = fn()
    finally:
        counter.close()
    return out, counter.batches


def stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def ms(s: dict[str, float]) -> str:
    return f"{1e3 * s['median']:8.1f} [{1e3 * s['min']:.1f}–{1e3 * s['max']:.1f}]"


def ratio_str(s: dict[str, float]) -> str:
    return f"{s['median']:.3f} [{s['min']:.3f}–{s['max']:.3f}]"


# --- 1. generate against the pipeline at equal NFE ------------------------------------------------------------------


def bench_parity(label: str, pipe: Any, steps: int, repeats: int, device: str, min_seconds: float) -> dict[str, Any]:
    net = network(pipe)
    latents = latents_for(pipe, 1, device)

    def pipeline() -> Any:
        return pipe(PROMPT, num_inference_steps=steps, guidance_scale=SCALE, latents=latents, output_type="latent")

    def guidelab() -> Any:
        params = {"scale": SCALE}
        return generate(pipe, PROMPT, params=params, steps=steps, latents=latents, output_type="latent")

    ref, ref_batches = counted(net, pipeline)
    out, out_batches = counted(net, guidelab)
    nfe_pipe, nfe_ours = sum(ref_batches), sum(out_batches)
    if nfe_pipe != nfe_ours or out.nfe != nfe_ours:
        raise RuntimeError(f"{label}: unequal NFE: pipeline {nfe_pipe}, generate {nfe_ours} (reported {out.nfe})")
    rel = float((out.images - ref.images).abs().max() / ref.images.abs().max())

    fns = {"pipeline": synced(pipeline, device), "generate": synced(guidelab, device)}
    start = time.perf_counter()
    fns["pipeline"]()  # also sizes the rounds: a fast model gets more of them (at least `repeats`)
    rounds = max(repeats, math.ceil(min_seconds / max(time.perf_counter() - start, 1e-9)))
    times = interleaved(fns, rounds)
    ratios = [g / p for g, p in zip(times["generate"], times["pipeline"], strict=True)]
    extra = [(g - p) / steps for g, p in zip(times["generate"], times["pipeline"], strict=True)]
    row = {
        "model": label,
        "steps": steps,
        "rounds": rounds,
        "nfe": nfe_ours,
        "forwards": len(out_batches),
        "max_rel_diff": rel,
        "pipeline_s": stats(times["pipeline"]),
        "generate_s": stats(times["generate"]),
        "ratio": stats(ratios),
        "ratio_of_medians": statistics.median(times["generate"]) / statistics.median(times["pipeline"]),
        "extra_per_step_s": stats(extra),
        "target": PARITY_TARGET,
    }
    row["meets_target"] = row["ratio"]["median"] <= PARITY_TARGET
    return row


# --- 2. interval guidance: time saved against network evaluations saved ---------------------------------------------


def middle_window(pipe: Any, steps: int) -> tuple[float, float, int]:
    """(λ_lo, λ_hi, steps inside) of a window around the middle half of the scheduler's steps: geometric means of
    neighbouring grid λ, so that no grid point lies near a bound."""
    path = pipeline_path(pipe)
    grid = scheduler_grid(pipe.scheduler, steps, path)
    lams = sorted(float(v) for v in path.lam(grid[:-1]))  # ascending: step i's decision reads λ at its grid point
    inside = steps // 2
    first = (steps - inside) // 2  # the lowest λ inside
    last = first + inside - 1
    lam_lo = math.sqrt(lams[first - 1] * lams[first]) if first > 0 else 0.5 * lams[0]
    lam_hi = math.sqrt(lams[last] * lams[last + 1]) if last + 1 < steps else math.inf
    return lam_lo, lam_hi, inside


FORWARDS_PER_CALL = 4  # network forwards per timed call in item 2 (a call of about one fifth of a run)


def network_forwards(pipe: Any, batch: int, device: str) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """Two calls of :data:`FORWARDS_PER_CALL` network forwards each, through guidelab's adapter as ``generate``
    makes them: at 2·batch (cond + null, a CFG step) and at batch (cond only, a step outside the window)."""
    from guidelab.pipelines import encode_prompts, pipeline_denoiser

    conditions = encode_prompts(pipe, [PROMPT] * batch, None, device)
    denoiser = pipeline_denoiser(pipe, conditions)
    x = latents_for(pipe, 2 * batch, device)
    t = torch.full((2 * batch,), 0.5, device=device)
    labels = torch.cat([torch.arange(batch), torch.full((batch,), -1)]).to(device)

    def full() -> None:
        with torch.no_grad():
            for _ in range(FORWARDS_PER_CALL):
                denoiser(x, t, labels)

    def half() -> None:
        with torch.no_grad():
            for _ in range(FORWARDS_PER_CALL):
                denoiser(x[:batch], t[:batch], labels[:batch])

    return synced(full, device), synced(half, device)


def bench_interval(pipe: Any, steps: int, repeats: int, device: str) -> dict[str, Any]:
    lam_lo, lam_hi, inside = middle_window(pipe, steps)
    latents = latents_for(pipe, 1, device)
    interval = {"schedule": "interval", "scale": INTERVAL_SCALE, "lam_lo": lam_lo, "lam_hi": lam_hi}
    constant = {"scale": INTERVAL_SCALE}

    def run(params: dict[str, Any]) -> Callable[[], Any]:
        return synced(
            lambda: generate(pipe, PROMPT, params=params, steps=steps, latents=latents, output_type="latent"), device
        )

    nfe_int = generate(pipe, PROMPT, params=interval, steps=steps, latents=latents, output_type="latent").nfe
    nfe_cfg = generate(pipe, PROMPT, params=constant, steps=steps, latents=latents, output_type="latent").nfe
    if nfe_int != steps + inside or nfe_cfg != 2 * steps:
        raise RuntimeError(f"interval: NFE {nfe_int} (expected {steps + inside}), CFG {nfe_cfg} (expected {2 * steps})")
    nfe_saved = 1 - nfe_int / nfe_cfg

    full, half = network_forwards(pipe, 1, device)
    times = interleaved({"cfg": run(constant), "interval": run(interval), "full": full, "half": half}, repeats)
    f2 = [v / FORWARDS_PER_CALL for v in times["full"]]
    f1 = [v / FORWARDS_PER_CALL for v in times["half"]]
    rounds = list(zip(times["cfg"], times["interval"], f2, f1, strict=True))
    saved = [1 - i / c for c, i, _, _ in rounds]
    proportionality = [s / nfe_saved for s in saved]
    # What the network alone allows: a step outside saves f2 − f1 of its f2, i.e. 2·(1 − f1/f2) in NFE units; and
    # what it predicts for these runs, where the rest of a run (encoding, bookkeeping) saves nothing.
    allowed = [2 * (1 - b / a) for _, _, a, b in rounds]
    predicted = [(steps - inside) * (a - b) / c / nfe_saved for c, _, a, b in rounds]
    row = {
        "model": "large sd (ddim)",
        "steps": steps,
        "lam_lo": lam_lo,
        "lam_hi": lam_hi,
        "steps_guided": inside,
        "nfe_interval": nfe_int,
        "nfe_cfg": nfe_cfg,
        "nfe_saved_fraction": nfe_saved,
        "cfg_s": stats(times["cfg"]),
        "interval_s": stats(times["interval"]),
        "time_saved_fraction": stats(saved),
        "proportionality": stats(proportionality),
        "forward_full_batch_s": stats(f2),
        "forward_half_batch_s": stats(f1),
        "network_allowed_proportionality": stats(allowed),
        "network_predicted_proportionality": stats(predicted),
        "target": list(INTERVAL_TARGET),
    }
    row["meets_target"] = INTERVAL_TARGET[0] <= row["proportionality"]["median"] <= INTERVAL_TARGET[1]
    return row


def print_interval(r: dict[str, Any], steps: int) -> None:
    print(
        f"\n2. interval guidance on the large SD model, λ ∈ ({r['lam_lo']:.3g}, {r['lam_hi']:.3g}]: "
        f"{r['steps_guided']} of {steps} steps guided; target (time saved)/(NFE saved) in {list(INTERVAL_TARGET)}"
    )
    print(f"  constant CFG  {ms(r['cfg_s'])} ms, NFE {r['nfe_cfg']}")
    print(f"  interval      {ms(r['interval_s'])} ms, NFE {r['nfe_interval']}")
    saved = r["time_saved_fraction"]
    print(
        f"  time saved {saved['median']:.3f} [{saved['min']:.3f}–{saved['max']:.3f}] / NFE saved "
        f"{r['nfe_saved_fraction']:.3f} = {ratio_str(r['proportionality'])}"
    )
    print(
        f"  network alone: forward at batch 2 {ms(r['forward_full_batch_s'])} ms, at batch 1 "
        f"{ms(r['forward_half_batch_s'])} ms: allows {ratio_str(r['network_allowed_proportionality'])}, "
        f"predicts {ratio_str(r['network_predicted_proportionality'])} for these runs"
    )


# --- main -----------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (CPU; see the docstring)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds after a warm-up (at least 5)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument(
        "--min-seconds", type=float, default=10.0, help="item 1: at least this long per side and model (more rounds)"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: 4 steps, 2 rounds")
    parser.add_argument("--out", default=None, help="write the results as JSON to this path (atomically)")
    parser.add_argument(
        "--models", default="", help="only the models whose names contain one of these (comma-separated)"
    )
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    steps, repeats = (4, 2) if args.quick else (args.steps, args.repeats)
    if not args.quick and repeats < 5:
        parser.error("--repeats: at least 5 (or --quick)")
    torch.set_num_threads(args.threads)
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    import diffusers

    print(
        f"torch {torch.__version__}, diffusers {diffusers.__version__}, device {args.device}, "
        f"threads {torch.get_num_threads()}, {steps} steps, {repeats} rounds after a warm-up"
    )
    started = time.perf_counter()
    parity, interval = [], None
    print(f"\n1. generate / pipeline at equal NFE (CFG {SCALE}, output_type='latent'); target ≤ {PARITY_TARGET}")
    print(f"  {'model':42s} {'NFE':>4s} {'pipeline ms [min–max]':>24s} {'generate ms [min–max]':>24s}", end="")
    print(f" {'ratio [min–max]':>22s} {'extra ms/step':>13s} {'rel diff':>9s} {'rounds':>6s}")
    pipes = {}
    wanted = [w.strip() for w in args.models.split(",") if w.strip()]
    for label, make in MODELS.items():
        if wanted and not any(w in label for w in wanted):
            continue
        pipe = make().to(args.device)
        pipe.set_progress_bar_config(disable=True)
        pipes[label] = pipe
        row = bench_parity(label, pipe, steps, repeats, args.device, 0.0 if args.quick else args.min_seconds)
        parity.append(row)
        extra = 1e3 * row["extra_per_step_s"]["median"]
        print(
            f"  {label:42s} {row['nfe']:4d} {ms(row['pipeline_s']):>24s} {ms(row['generate_s']):>24s}"
            f" {ratio_str(row['ratio']):>22s} {extra:13.3f} {row['max_rel_diff']:9.1e} {row['rounds']:6d}"
        )

    if LARGE_SD in pipes:
        interval = bench_interval(pipes[LARGE_SD], steps, repeats, args.device)
        print_interval(interval, steps)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if args.out:
        write_json_atomic(
            args.out,
            {
                "torch": torch.__version__,
                "diffusers": diffusers.__version__,
                "device": args.device,
                "threads": torch.get_num_threads(),
                "steps": steps,
                "repeats": repeats,
                "quick": args.quick,
                "parity": parity,
                "interval": interval,
            },
        )
        print(f"results: {args.out}")


if __name__ == "__main__":
    main()
