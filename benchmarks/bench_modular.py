"""Benchmark: guidelab's guider inside a diffusers modular pipeline against diffusers' own ClassifierFreeGuidance.

The same SD3 modular pipeline (``StableDiffusion3AutoBlocks``, tiny text encoders and VAE built offline from
tests/tiny_diffusers.py) is called with the same prompts, latents and steps, once with diffusers'
``ClassifierFreeGuidance`` as its ``guider`` component and once with ``GuidelabGuidance`` running guidelab's ``cfg``
(and, for scale, ``apg`` and an interval ``cfg``); what is compared is the whole call's wall time (``output=
"latents"``, no decoding), so the ratio is the guidelab guider's per-step overhead as a share of the pipeline.
Two transformer sizes: the tests' tiny one (overhead-bound: the worst case) and a larger one built from config
(bench_generate's: 4 layers, 4 heads of 64, 32×32 latents), where the network dominates as it does on real models.

Target (issue 13): ≤ 1.05× of the pipeline's wall time with diffusers' CFG. The interval row is expected below 1
(it skips null forwards). Medians with min–max over repeats after a warm-up, ``torch.set_num_threads`` fixed.

Usage::

    PYTHONPATH=src:tests .venv/bin/python benchmarks/bench_modular.py [--threads 2] [--repeats 7] [--steps 10]
        [--quick] [--out results.json]
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from diffusers.guiders import ClassifierFreeGuidance
from diffusers.modular_pipelines import StableDiffusion3AutoBlocks
from diffusers.utils import logging

from _timing import timed
from bench_generate import large_sd3
from guidelab.io import write_json_atomic
from guidelab.modular import GuidelabGuidance
from tiny_diffusers import make_sd3

PROMPTS = ["a watercolor fox", "a lighthouse at dusk"]


def modular(size: str):
    pipe = large_sd3() if size == "larger" else make_sd3()  # the larger one is bench_generate's
    mp = StableDiffusion3AutoBlocks().init_pipeline()
    mp.update_components(**{k: v for k, v in pipe.components.items() if v is not None})
    quiet(mp.blocks)
    net = pipe.transformer.config
    latents = torch.randn(
        (len(PROMPTS), net.in_channels, net.sample_size, net.sample_size), generator=torch.Generator().manual_seed(0)
    )
    return mp, latents


def quiet(block) -> None:
    """Switch off the progress bar of every (nested) block: the denoising loop sits two levels down."""
    if hasattr(block, "set_progress_bar_config"):
        block.set_progress_bar_config(disable=True)
    for sub in getattr(block, "sub_blocks", {}).values():
        quiet(sub)


def guiders(mp) -> list[tuple[str, object]]:
    """diffusers' CFG first (the baseline), then guidelab's guiders in the same pipeline."""
    return [
        ("diffusers CFG", ClassifierFreeGuidance(guidance_scale=5.0)),
        ("guidelab cfg", GuidelabGuidance.from_pipeline(mp, "cfg", scale=5.0)),
        ("guidelab apg", GuidelabGuidance.from_pipeline(mp, "apg", scale=5.0)),
        (
            "guidelab interval cfg",
            GuidelabGuidance.from_pipeline(mp, "cfg", schedule="interval", scale=5.0, lam_lo=0.3, lam_hi=3.0),
        ),
    ]


def call(mp, latents: torch.Tensor, steps: int) -> None:
    with torch.no_grad():
        mp(prompt=PROMPTS, negative_prompt="", num_inference_steps=steps, latents=latents, output="latents")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="3 repeats, tiny model only")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.set_verbosity_error()
    repeats = 3 if args.quick else args.repeats
    sizes = ["tiny"] if args.quick else ["tiny", "larger"]
    results = []
    print(f"{'model':<8} {'guider':<22} {'median s':>10} {'min–max s':>17} {'ratio':>7}")
    for size in sizes:
        mp, latents = modular(size)
        base = None
        for label, guider in guiders(mp):
            mp.update_components(guider=guider)
            median, lo, hi = timed(functools.partial(call, mp, latents, args.steps), repeats, warmup=1)
            base = median if base is None else base
            ratio = median / base
            results.append(
                {"model": size, "guider": label, "median_s": median, "min_s": lo, "max_s": hi, "ratio": ratio}
            )
            print(f"{size:<8} {label:<22} {median:>10.4f} {lo:>8.4f}–{hi:<8.4f} {ratio:>7.3f}")
    if args.out is not None:
        write_json_atomic(args.out, {"threads": args.threads, "steps": args.steps, "results": results})


if __name__ == "__main__":
    main()
