"""The static HTML report of a results folder: fidelity/distance Pareto plots, diversity, cost, schedules,
samples, every run in a sortable table, and reproduction claims and figures.

>>> from guidelab.report import write_report
>>> write_report("sweep-out")  # doctest: +SKIP
PosixPath('sweep-out/report.html')
"""

from __future__ import annotations

from pathlib import Path

from guidelab.report.build import build_report, write_report

__all__ = ["build_report", "report_command", "write_report"]


def report_command(dir: str | Path, out: str | Path | None = None) -> Path:
    """What ``guidelab report DIR [--out FILE]`` does: write the report and print its path."""
    path = write_report(dir, out)
    print(path)
    return path
