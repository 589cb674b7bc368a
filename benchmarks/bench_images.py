"""Benchmark: the image lab (targets: "sampling a shipped image model" and "training the shipped digits model",
../shared/PERFORMANCE.md).

1. **Sampling throughput per method.** Each guider samples ``--n`` images of one class from a shipped UNet
   (``--model digits`` or ``mnist``)
   (``--steps`` Heun steps). Reported: images per second, and the guidance overhead: (sampling wall time − the
   time of the network's forwards inside it) / the forwards' time, i.e. what the combine and the solver cost on
   top of the network, per forward. The forwards are timed by a wrapper around the network in the same run
   (synchronised on a GPU). Target: the combine ≤ 2% of a network forward.
2. **Training the shipped digits model.** ``--train-steps`` steps of the exact recipe of
   ``models/weights/README.md`` (UNet, rf, x0, batch 128) on ``--threads`` threads; reported: seconds per step and
   the projected time of the recipe's 4,000 steps (the shipped model ran them all).

Usage:

    .venv/bin/python benchmarks/bench_images.py [--model digits|mnist] [--threads 2] [--n 256] [--steps 16]
        [--train-steps 100] [--no-train] [--methods cfg,apg,adg,...] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from guidelab.guiders import build_guider
from guidelab.models.trained import load_trained
from guidelab.sampling import sample

METHODS = {
    "cfg": {"scale": 2.0},
    "interval": {"schedule": "interval", "scale": 2.0, "lam_lo": 0.19, "lam_hi": 1.61},
    "apg": {"scale": 2.0},
    "adg": {"scale": 2.0},
    "cfg-zero-star": {"scale": 2.0},
    "rescale": {"scale": 2.0},
    "dynamic-thresholding": {"scale": 2.0},
    "cfg++": {"scale": 0.5},
}


class TimedNetwork:
    """The model with its forward timed (seconds summed in ``seconds``, calls in ``calls``)."""

    def __init__(self, model: object):
        self.model, self.seconds, self.calls = model, 0.0, 0
        self.path, self.prediction, self.shape = model.path, model.prediction, model.shape  # type: ignore[attr-defined]
        self.data_range = model.data_range  # type: ignore[attr-defined]

    def __call__(self, x_t, t, cond):
        start = time.perf_counter()
        out = self.model(x_t, t, cond)
        if out.is_cuda:
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out


def bench_sampling(methods: list[str], n: int, steps: int, repeats: int, name: str) -> dict[str, dict[str, float]]:
    from guidelab.grids import make_grid

    model = load_trained("shipped", name)
    grid = make_grid("uniform", steps, model.path)
    out = {}
    for name in methods:
        params = dict(METHODS[name])
        guider_name = "cfg" if name == "interval" else name
        rates, overheads = [], []
        for r in range(repeats + 1):
            net = TimedNetwork(model)
            start = time.perf_counter()
            with torch.no_grad():
                sample(
                    net,
                    build_guider(guider_name, **params),
                    grid=grid,
                    n=n,
                    shape=model.shape,
                    cond=3,
                    solver="heun",
                    seed=r,
                )
            wall = time.perf_counter() - start
            if r == 0:
                continue  # warm-up
            rates.append(n / wall)
            overheads.append((wall - net.seconds) / net.seconds)
        out[name] = {
            "images_per_s": statistics.median(rates),
            "overhead_per_forward": statistics.median(overheads),
            "forwards": net.calls,
        }
        print(
            f"{name:22s} {out[name]['images_per_s']:8.1f} images/s   overhead "
            f"{100 * out[name]['overhead_per_forward']:5.1f}% of the network's time ({net.calls} forwards)",
            flush=True,
        )
    return out


def bench_training(train_steps: int, threads: int) -> dict[str, float]:
    from guidelab.train_images import train_image_denoiser

    times: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        train_image_denoiser(
            {"data": "digits", "arch": "unet", "steps": train_steps, "eval_every": 10**6},
            Path(tmp) / "m.safetensors",
            threads=threads,
            callback=lambda step, loss: times.append(time.perf_counter()),
        )
    per_step = (times[-1] - times[9]) / (len(times) - 10)  # after 10 warm-up steps
    result = {"seconds_per_step": per_step, "projected_4000_steps_s": 4000 * per_step}
    print(
        f"training (UNet on digits, batch 128, {threads} threads): {per_step * 1000:.1f} ms/step, "
        f"4000 steps ≈ {4000 * per_step / 60:.1f} min",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=100)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--model", default="digits", choices=["digits", "mnist"], help="the shipped model sampled")
    parser.add_argument("--no-train", action="store_true", help="skip the training measurement")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"--methods: unknown {unknown}; accepted: {', '.join(METHODS)}")
    results = {
        "sampling": bench_sampling(methods, args.n, args.steps, args.repeats, args.model),
        "training": None if args.no_train else bench_training(args.train_steps, args.threads),
        "threads": args.threads,
    }
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
