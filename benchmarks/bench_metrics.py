"""Benchmark: a sweep run's default metrics against its sampling (issue 17, item 1; the README's Performance table).

One run of ``multimodal-2d`` (CFG, 32 Heun steps) at n = 20,000 and its exact reference of the same size, as a
sweep runs it (``guidelab.recipe.run_sample``, ``guidelab.experiments.measures``), timed in rounds that call
each of these once (order reversed every other round, so that a drifting load slows them alike):

- ``sampling``: the run itself;
- ``metrics``: every default metric of a sweep together (``SweepConfig.metrics``), the reference's self-term
  cached as from a sweep's second run on;
- ``metrics, first run``: the same with the self-term computed (a sweep's first run per target, condition, n);
- ``metrics, eager``: the same as ``metrics`` with the eager tiles (no compiled loop, as without the ``fast``
  extra's numba); the one-off time to load the compiled loop is printed apart;
- ``roofline GEMM``: a plain float64 GEMM ``x_i·y_j`` over the same pairs, in the same tiles (the cross
  pairs and the within-set pairs i < j, the pairwise-distance roofline the issue names);
- ``old energy distance`` (once, unless ``--no-old``): the previous ``torch.cdist`` implementation.

Prints medians with min–max and the ratios per round (median, min–max); ``torch.set_num_threads`` fixed
(1 by default, as a sweep's runs). Targets: metrics ≤ sampling, or ≤ 2× the roofline. Usage:

    .venv/bin/python benchmarks/bench_metrics.py [--n 20000] [--repeats 5] [--threads 1] [--no-old]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from _timing import interleaved
from guidelab.experiments.config import SweepConfig
from guidelab.experiments.measures import MeasureInput, measure, reference_samples
from guidelab.metrics import pairwise, pairwise_jit
from guidelab.recipe import SampleConfig, run_sample


def roofline(x: torch.Tensor, y: torch.Tensor) -> float:
    """A plain GEMM ``x·yᵀ`` over the pairs the energy distance visits (x × y, then x × x for i < j), in the
    tiles of :mod:`guidelab.metrics.pairwise`, into one reused buffer."""
    cols = min(y.shape[0], pairwise._TILE_COLS)
    rows = max(1, pairwise._TILE_ELEMENTS // cols)
    buf = torch.empty(rows * cols, dtype=torch.float64)
    total = 0.0
    for other, same in ((y, False), (x, True)):
        ot = other.T.contiguous()
        for lo in range(0, x.shape[0], rows):
            xb = x[lo : lo + rows]
            for co in range(lo if same else 0, other.shape[0], cols):
                w = min(cols, other.shape[0] - co)
                out = buf[: xb.shape[0] * w].view(xb.shape[0], w)
                torch.mm(xb, ot[:, co : co + w], out=out)
        total += float(buf[0])
    return total


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):8.3f} ({min(values):.3f}–{max(values):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--target", default="multimodal-2d")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-old", action="store_true", help="skip timing the old cdist energy distance")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cfg = SampleConfig(
        target=args.target, cond="0", guider="cfg", params={"scale": 3.0}, solver="heun", steps=32, n=args.n
    )
    metrics = tuple(SweepConfig.model_fields["metrics"].default_factory())  # type: ignore[misc]
    first = run_sample(cfg)
    x = first.result.x[~first.result.diverged].double()
    ref = reference_samples(first.target, first.cond, args.n)
    inp = MeasureInput(x, first.target, first.cond, ref, 0.0)

    def metrics_uncached() -> object:
        pairwise._self_cache.clear()
        return measure(metrics, inp)

    def metrics_eager() -> object:
        loaded, pairwise_jit.KERNELS._kernels = pairwise_jit.KERNELS._kernels, False  # as without numba
        try:
            return measure(metrics, inp)
        finally:
            pairwise_jit.KERNELS._kernels = loaded

    start = time.perf_counter()
    compiled = pairwise_jit.available()
    compile_s = time.perf_counter() - start

    fns = {
        "sampling": lambda: run_sample(cfg),
        "metrics": lambda: measure(metrics, inp),
        "metrics, first run": metrics_uncached,
        "metrics, eager": metrics_eager,
        "roofline GEMM": lambda: roofline(x, ref),
    }
    times = interleaved(fns, args.repeats)
    old = None
    if not args.no_old:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from distance_reference import energy_distance_old  # the tests' oracle: the previous implementation

        start = time.perf_counter()
        energy_distance_old(x, ref)
        old = time.perf_counter() - start

    print(
        f"{args.target}, n = {args.n}, CFG 3.0, Heun 32 steps; metrics {', '.join(metrics)}; "
        f"{args.threads} thread(s); {platform.processor() or platform.machine()}; medians (min–max) of "
        f"{args.repeats} rounds"
    )
    print(f"compiled loop: {'yes' if compiled else 'no'} ({compile_s:.2f} s to load, once per process)")
    print(f"{'':22s} {'seconds':>26s}")
    for name, values in times.items():
        print(f"{name:22s} {summary(values)}")
    if old is not None:
        print(f"{'old energy distance':22s} {old:8.3f} (once)")
    samp, roof = times["sampling"], times["roofline GEMM"]
    ratios = {}
    for name in ("metrics", "metrics, first run", "metrics, eager"):
        ratios[f"{name} / sampling"] = [a / b for a, b in zip(times[name], samp, strict=True)]
        ratios[f"{name} / roofline"] = [a / b for a, b in zip(times[name], roof, strict=True)]
    if old is not None:
        ratios["old energy distance / metrics"] = [old / a for a in times["metrics"]]
    print("ratios per round:")
    for name, values in ratios.items():
        print(f"  {name:34s} {summary(values)}")
    if args.out is not None:
        result = {"times": times, "old": old, "ratios": ratios, "compiled": compiled, "compile_s": compile_s}
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
