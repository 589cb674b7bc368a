"""Benchmark: learned guidance weights (Learn to Guide, arXiv 2510.00815; the README's Performance table).

Reports, from one process:

- wall time of ``guidelab learn`` with the default configuration (1000 steps, batch 128, m = 4 particles)
  on the 2D target ``multimodal-2d``, for the exact denoiser and for the small MLP denoiser, at the given
  torch thread counts (default 1, LearnConfig's default; target: under 2 minutes on 2 CPU cores), and the
  time per optimisation step;
- the per-step inference overhead of the ω network: the learned guider's work per sampling step, amortized
  over a 32-step run (ω for every class and step in one network call at the first step, then a lookup
  of the batch's labels per step; and the combine), relative to one step's denoiser call (cond + uncond
  batched), for the exact mixture denoiser and for a 4-layer 256-wide MLP denoiser at batch 256
  (the reference forward of the README's Performance table).

Medians with min–max over repeats after a warm-up; ``torch.set_num_threads`` fixed per measurement; the
process is pinned to at most 2 CPU cores. Usage:

    .venv/bin/python benchmarks/bench_learn.py [--repeats 3] [--threads 1,2] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch

from _timing import timed
from guidelab.grids import make_grid
from guidelab.guiders.base import COND, UNCOND
from guidelab.guiders.learned import LearnedGuider
from guidelab.learn import GuidanceWeights, LearnConfig, learn
from guidelab.models.mlp import MLPDenoiser
from guidelab.paths import get_path
from guidelab.sampling import GuidedModel
from guidelab.targets import get_target
from guidelab.train import train_denoiser


def fmt(t: tuple[float, float, float], unit: float = 1.0, suffix: str = "s") -> str:
    return f"{t[0] * unit:.3g} {suffix} [{t[1] * unit:.3g}–{t[2] * unit:.3g}]"


def bench_training(repeats: int, steps: int, thread_counts: list[int]) -> dict:
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        train_denoiser(get_target("multimodal-2d"), "rf", steps=30, seed=0, out=Path(tmp) / "mlp.pt")
        for denoiser in ("exact", "mlp"):
            for threads in thread_counts:
                extra = {"model": str(Path(tmp) / "mlp.pt")} if denoiser == "mlp" else {"target": "multimodal-2d"}
                config = LearnConfig(denoiser=denoiser, steps=steps, threads=threads, **extra)
                t = timed(lambda config=config: learn(config), repeats, warmup=0)
                key = f"{denoiser}/threads={threads}"
                out[key] = {"wall_s": t, "per_step_ms": tuple(v / steps * 1e3 for v in t)}
                print(f"learn {key:<18} {steps} steps: {fmt(t)}  ({fmt(out[key]['per_step_ms'], 1, 'ms')}/step)")
    return out


def bench_overhead(repeats: int, batch: int) -> dict:
    torch.set_num_threads(1)
    path = get_path("rf")
    grid = make_grid("uniform", 32, path)
    target = get_target("multimodal-2d")
    torch.manual_seed(0)
    denoisers = {
        "exact mixture (D=2, K=3)": target.denoiser(path),
        "MLP 4x256 (D=2)": MLPDenoiser(2, 2, path, hidden=256, depth=4).eval(),
    }
    weights = GuidanceWeights(2)  # default size: 2 hidden layers of 64
    guider = LearnedGuider.from_weights(weights)
    labels = torch.arange(batch) % 2
    x = torch.randn(batch, 2)
    out: dict = {}
    for name, denoiser in denoisers.items():
        model = GuidedModel(denoiser, guider, labels, grid)
        contexts = [model.context(k) for k in range(model.steps)]
        ctx = contexts[10]

        def denoise(model=model, ctx=ctx) -> object:
            with torch.no_grad():
                return model.predict((COND, UNCOND), x, ctx.t)

        preds = denoise()

        def omega_run(contexts=contexts) -> object:
            guider.reset(batch)  # a fresh sampling run: the ω table is built once, then looked up per step
            return [guider.omega(c) for c in contexts]

        def guided_run(preds=preds, contexts=contexts) -> object:
            guider.reset(batch)
            return [guider.guide(preds, c) for c in contexts]

        steps = len(contexts)
        t_den = timed(denoise, repeats * 20, warmup=5)
        t_omega = tuple(v / steps for v in timed(omega_run, repeats * 5, warmup=2))
        t_guide = tuple(v / steps for v in timed(guided_run, repeats * 5, warmup=2))
        out[name] = {
            "denoiser_call_s": t_den,
            "omega_per_step_s": t_omega,
            "omega_plus_combine_per_step_s": t_guide,
            "ratio_omega": t_omega[0] / t_den[0],
            "ratio_omega_plus_combine": t_guide[0] / t_den[0],
        }
        print(
            f"{name:<26} denoiser (cond+uncond, batch {batch}): {fmt(t_den, 1e3, 'ms')}; per step over a "
            f"{steps}-step run: ω {fmt(t_omega, 1e3, 'ms')} = {t_omega[0] / t_den[0]:.1%}, ω + combine "
            f"{fmt(t_guide, 1e3, 'ms')} = {t_guide[0] / t_den[0]:.1%} of the denoiser call"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1000, help="learning steps (default: LearnConfig's)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument(
        "--threads",
        default="1",
        help="comma-separated torch thread counts for learning (e.g. 1,2); on shared "
        "cores 2 threads can be an order of magnitude slower than 1 for networks this small",
    )
    parser.add_argument("--quick", action="store_true", help="1 repeat, 200 learning steps")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.steps = 1, 200
    if hasattr(os, "sched_setaffinity"):
        cores = sorted(os.sched_getaffinity(0))[:2]
        os.sched_setaffinity(0, cores)
        print(f"pinned to CPU cores {cores}")
    thread_counts = [int(v) for v in args.threads.split(",")]
    result = {
        "training": bench_training(args.repeats, args.steps, thread_counts),
        "overhead": bench_overhead(args.repeats, args.batch),
    }
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
