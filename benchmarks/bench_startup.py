"""Start-up of the command line, as ratios in one run (issue 11 §3; PERFORMANCE targets in ../shared).

Times whole processes, alternating A and B so that a drifting machine affects both alike:

- ``guidelab methods`` (imports the guider catalogue, hence torch) against ``python -c "import torch"``: the
  ratio and guidelab's own share in seconds (target: under 0.2 s);
- ``guidelab --help`` against ``python -c "pass"``: answering help must not import torch.

Usage: ``.venv/bin/python benchmarks/bench_startup.py [--repeats 7]``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def wall(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def paired(a: list[str], b: list[str], repeats: int) -> tuple[list[float], list[float]]:
    wall(a), wall(b)  # warm the file cache
    ta, tb = [], []
    for _ in range(repeats):
        ta.append(wall(a))
        tb.append(wall(b))
    return ta, tb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    repeats = parser.parse_args().repeats
    py = sys.executable
    cases = [
        ("guidelab methods vs import torch", [py, "-m", "guidelab.cli", "methods"], [py, "-c", "import torch"]),
        ("guidelab --help vs bare python", [py, "-m", "guidelab.cli", "--help"], [py, "-c", "pass"]),
    ]
    for label, a, b in cases:
        ta, tb = paired(a, b, repeats)
        ratios = [x / y for x, y in zip(ta, tb, strict=True)]
        own = statistics.median(x - y for x, y in zip(ta, tb, strict=True))
        print(
            f"{label}: median {statistics.median(ta):.3f} s vs {statistics.median(tb):.3f} s, "
            f"ratio {statistics.median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f}), "
            f"guidelab's own share {own:.3f} s"
        )
    torch_in_help = subprocess.run(
        [py, "-c", "import sys, runpy; sys.argv=['guidelab','--help']\n"
         "try:\n    runpy.run_module('guidelab.cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
         "print('torch' in sys.modules, file=sys.stderr)"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    print(f"--help imports torch: {torch_in_help.stderr.strip().splitlines()[-1]}")


if __name__ == "__main__":
    main()
