"""Benchmark: a sweep's wall time per worker × thread split (issue 17, item 4; the README's Performance table).

A sweep of 24 runs (``multimodal-2d``, CFG at 6 scales × 4 seeds, 32 Heun steps, n samples, the default
metrics) is run by ``guidelab run`` in a fresh process per split, so every split pays what a user pays:
start-up, worker processes, loading the compiled metric loop once per process. Splits: one single-threaded
worker (the baseline), every ``workers × threads ≤ cores`` (the usable cores) on worker threads (``--executor
local``) and, for more than one worker, on worker processes (``--executor processes``), and the default (no
``--workers``), which reads its choice from the sweep's log. With ``--repeats`` > 1 the splits run in rounds,
the order reversed every other round. Prints a table: median seconds (min–max), speed-up over the baseline,
time relative to the best split. Targets: the default within 10% of the best split, ≥ 1.8× over one
single-threaded worker on 2 cores. Usage (one command, a quiet machine gives the meaningful figures):

    .venv/bin/python benchmarks/bench_sweeps.py [--n 20000] [--repeats 1] [--cores N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SWEEP = """
name: bench-sweeps
targets:
  - {{target: multimodal-2d, conds: [a]}}
grids: [{{kind: uniform, steps: 32}}]
solvers: [heun]
guiders:
  - {{name: cfg, params: {{scale: [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]}}}}
seeds: [0, 1, 2, 3]
n: {n}
"""


def run(sweep: Path, out: Path, workers: int | None, threads: int, executor: str) -> tuple[float, str]:
    """Seconds of one ``guidelab run`` into a fresh ``out``, and the split line of its log."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "guidelab.cli", "run", str(sweep), "--out", str(out), "--threads", str(threads)]
    command += ["--executor", executor]
    if workers is not None:
        command += ["--workers", str(workers)]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    log = (out / "sweep.log").read_text().strip().splitlines()[-1]
    return seconds, log.split(" ", 1)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000, help="samples per run (and reference samples)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--cores", type=int, default=None, help="cores to split (default: the usable cores)")
    args = parser.parse_args()
    cores = args.cores or len(os.sched_getaffinity(0))
    splits: list[tuple[str, int | None, int, str]] = [("1 × 1 (baseline)", 1, 1, "local")]
    for workers in range(1, cores + 1):
        for threads in range(1, cores // workers + 1):
            if (workers, threads) != (1, 1):
                splits.append(
                    (f"{workers} × {threads}" + (" threads" if workers > 1 else ""), workers, threads, "local")
                )
            if workers > 1:
                splits.append((f"{workers} × {threads} processes", workers, threads, "processes"))
    splits.append(("default", None, 1, "local"))

    times: dict[str, list[float]] = {name: [] for name, *_ in splits}
    chosen = ""
    with tempfile.TemporaryDirectory() as tmp:
        sweep = Path(tmp) / "sweep.yaml"
        sweep.write_text(SWEEP.format(n=args.n))
        for r in range(args.repeats):
            for name, workers, threads, executor in splits if r % 2 == 0 else splits[::-1]:
                seconds, split = run(sweep, Path(tmp) / "out", workers, threads, executor)
                times[name].append(seconds)
                if workers is None:
                    chosen = split
                print(f"  round {r + 1}: {name:24s} {seconds:7.1f} s", file=sys.stderr)

    medians = {name: statistics.median(v) for name, v in times.items()}
    base = medians["1 × 1 (baseline)"]
    best = min(v for name, v in medians.items() if name != "default")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"24 runs of multimodal-2d (CFG, Heun 32 steps, n = {args.n}) by `guidelab run`; {cores} usable cores; "
        f"load average {load:.1f}; medians (min–max) over {args.repeats} round(s)"
    )
    print(f"default split: {chosen}")
    print(f"{'workers × threads':24s} {'seconds':>22s} {'× baseline':>11s} {'/ best':>8s}")
    for name, values in times.items():
        spread = f"{medians[name]:7.1f} ({min(values):.1f}–{max(values):.1f})"
        print(f"{name:24s} {spread:>22s} {base / medians[name]:11.2f} {medians[name] / best:8.2f}")


if __name__ == "__main__":
    main()
