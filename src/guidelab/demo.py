"""``guidelab demo``: guidance where the model is imperfect, measured against the truth, then the HTML report.

Two sweeps, each resumable like any sweep if interrupted:

- ``targets/``: every guider over a range of scales on two exact targets (``multimodal-2d``,
  ``chidambaram-uniform-2d``), sampled with an imperfect model whose truth is known, the exact denoiser of leaky
  conditionals (``guidelab/experiments/demo.yaml``), measured against the true conditional;
- ``digits/``: guiders on the shipped digits UNet, measured against held-out digits with the shipped classifier
  (``guidelab/experiments/demo-digits.yaml``).

The printed headline answers a practitioner's question: for a fidelity as high as the real data's (within one
point), which method gets closest to the data, and at what NFE. The unguided model does not reach it on the exact
targets; whether it does on digits depends on how good the trained model is, and the table says so.
"""

from __future__ import annotations

import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

from guidelab.experiments.config import load_sweep
from guidelab.experiments.runner import SweepSummary, run_sweep

__all__ = ["DEMO_SWEEPS", "FIDELITY_MARGIN", "run_demo"]

DEMO_SWEEPS = {"targets": "demo.yaml", "digits": "demo-digits.yaml"}
RESULT_WIDTH = 200  # columns of the headline tables when stdout is not a terminal
FIDELITY_MARGIN = 0.01  # a setting "reaches the data's fidelity" within this margin


def run_demo(out: Path, *, workers: int | None = None, progress: bool = True) -> tuple[SweepSummary, Path]:
    """Run the demo sweeps into ``out/targets`` and ``out/digits``, write ``out/report.html`` and print the
    headline tables; return the last sweep's summary and the report's path."""
    from guidelab.report import write_report

    console = result_console()
    start = time.perf_counter()
    total = reused = failed = 0
    summary = None
    for folder, name in DEMO_SWEEPS.items():
        with resources.as_file(resources.files("guidelab.experiments") / name) as sweep_file:
            config = load_sweep(sweep_file)
        summary = run_sweep(config, out / folder, workers=workers, threads=1, progress=progress)
        total, reused, failed = total + summary.total, reused + summary.skipped, failed + summary.failed
    assert summary is not None
    report = write_report(out)
    print_headline(console, out / "targets")
    print_image_headline(console, out / "digits")
    console.print(
        "γ (effective): the scale a run applied, averaged over its steps in rectified-flow time; an interval or a "
        "schedule shows that mean (interval at scale 2 is 1.5 here), CFG++ its λ. The sweep files name the scales "
        "given. Each method's best setting is among the scales its sweep tried.",
        soft_wrap=True,  # a paragraph: the terminal or the reader wraps it, not rich at a fixed width
    )
    console.print(f"{total} runs ({reused} reused, {failed} failed) in {time.perf_counter() - start:.0f} s")
    return summary, report


def result_console() -> Any:
    """The console of the headline tables: they are the demo's result, so on stdout (progress stays on stderr), at
    :data:`RESULT_WIDTH` columns when stdout is a file or a pipe (rich would squeeze them into 80 there)."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else RESULT_WIDTH)


def _frame(folder: Path) -> Any:
    from guidelab.experiments.store import ResultStore

    store = folder / "results.sqlite"
    if not store.is_file():
        return None
    frame = ResultStore(store).frame()
    return None if frame.empty else frame[frame.status == "ok"]


def _table(console: Any, title: str, columns: tuple[str, ...], rows: list[list[str]], missed: list[str]) -> None:
    from rich.table import Table

    console.print(title, soft_wrap=True)  # one line however wide (a table title wraps at the table's width)
    table = Table()
    for col in columns:  # in a narrow terminal a method's name wraps onto more lines, never cut
        table.add_column(col, justify="left" if col == "method" else "right", overflow="fold")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    if missed:
        console.print("  not reaching it at any scale tried: " + "; ".join(missed), soft_wrap=True)


def _reaching(points: Any, fidelity: str, distance: str, bar: float) -> tuple[Any, list[str]]:
    """Per method, its setting that reaches ``bar`` with the smallest distance (sorted, best first), and the
    methods that never reach it with their best fidelity."""
    ok = points[points[fidelity] >= bar]
    best = ok.loc[ok.groupby("label")[distance].idxmin()].sort_values(distance) if not ok.empty else ok
    missed = [
        f"{label} (best {group[fidelity].max():.3f} at γ {_cell(group.loc[group[fidelity].idxmax(), 'gamma'])})"
        for label, group in points.groupby("label")
        if label not in set(best["label"])
    ]
    return best, missed


def print_headline(console: Any, folder: Path) -> None:
    """Per exact target and class: the data's own class fidelity, and per method the setting within
    :data:`FIDELITY_MARGIN` of it that is closest to the true conditional (energy distance), with its NFE."""
    from guidelab import metrics as m
    from guidelab.experiments.measures import reference_samples
    from guidelab.targets import get_target

    frame = _frame(folder)
    if frame is None or "metric.energy_distance" not in frame or "metric.class_fidelity" not in frame:
        return
    for (target_name, cond), rows in frame.groupby(["target", "cond"]):
        target = get_target(str(target_name))
        index = target.class_index(str(cond))
        data = m.class_fidelity(reference_samples(target, index, 2000).double(), target, index, t=0.0).mean_posterior
        bar = data - FIDELITY_MARGIN
        points = rows.groupby(["label", "gamma"], as_index=False)[
            ["metric.class_fidelity", "metric.energy_distance", "nfe"]
        ].mean()
        best, missed = _reaching(points, "metric.class_fidelity", "metric.energy_distance", bar)
        table_rows = [
            [
                str(r["label"]),
                _cell(r["gamma"]),
                _cell(r["metric.class_fidelity"]),
                "at the floor" if r["metric.energy_distance"] <= 0 else _cell(r["metric.energy_distance"]),
                str(int(r["nfe"])),
            ]
            for _, r in best.iterrows()
        ]
        _table(
            console,
            f"{target_name}, class {cond}: as faithful as the data (class fidelity ≥ {bar:.3f}, the data's own "
            f"{data:.3f} less {FIDELITY_MARGIN}), closest to the true conditional first",
            ("method", "γ (effective)", "class fidelity", "energy distance", "nfe"),
            table_rows,
            missed,
        )


def print_image_headline(console: Any, folder: Path) -> None:
    """For a sweep on a trained image model: the real test images' classifier accuracy (mean over classes), and
    per method the setting within :data:`FIDELITY_MARGIN` of it with the smallest Fréchet distance (mean over
    classes; "at the floor" where it is under the real-vs-real floor), with its NFE."""
    frame = _frame(folder)
    needed = ("metric.accuracy", "metric.fd", "metric.fd_floor", "metric.accuracy_floor")
    if frame is None or any(col not in frame for col in needed):
        return
    for target_name, rows in frame.groupby("target"):
        points = rows.groupby(["label", "gamma"], as_index=False)[["metric.accuracy", "metric.fd", "nfe"]].mean()
        data, floor = float(rows["metric.accuracy_floor"].mean()), float(rows["metric.fd_floor"].mean())
        bar = data - FIDELITY_MARGIN
        best, missed = _reaching(points, "metric.accuracy", "metric.fd", bar)
        table_rows = [
            [
                str(r["label"]),
                _cell(r["gamma"]),
                _cell(r["metric.accuracy"]),
                f"at the floor ({_cell(r['metric.fd'])})" if r["metric.fd"] <= floor else _cell(r["metric.fd"]),
                str(int(r["nfe"])),
            ]
            for _, r in best.iterrows()
        ]
        _table(
            console,
            f"{target_name} (trained model, mean over classes): as faithful as real images (accuracy ≥ {bar:.3f}, "
            f"real images' {data:.3f} less {FIDELITY_MARGIN}), closest to them first (Fréchet distance; "
            f"real-vs-real floor {floor:.3g})",
            ("method", "γ (effective)", "accuracy", "Fréchet distance", "nfe"),
            table_rows,
            missed,
        )


def _cell(value: object) -> str:
    return "-" if value is None or value != value else f"{value:.4g}"
