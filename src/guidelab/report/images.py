"""The report's sections for sweeps on diffusers pipelines: per pipeline, the image measures against γ and a table
of image grids (rows: guider settings; columns: prompts or class labels; cells: the run's ``grid.png``).

The grids are not embedded: each cell links the run's ``runs/<hash>/grid.png`` by a path relative to the report
file, so the page and its sweep folder can be moved together (and a sweep of large images keeps a small page).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

from guidelab.progress import counted, every
from guidelab.report import figures
from guidelab.report.data import (
    Catalog,
    Line,
    aggregate,
    gamma_sort,
    gamma_text,
    metric_names,
    params_text,
)
from guidelab.report.html import Section, figure, note
from guidelab.report.tables import fmt, metric_text

__all__ = ["IMAGES_INTRO", "grid_file", "image_sections", "is_pipeline_run", "relative_url"]

_MAX_METRIC_PANELS = 4

IMAGES_INTRO = """
<div class="intro"><p>Runs on a diffusers pipeline have no exact reference: they are compared by measures of their
decoded images and by the images themselves.</p><dl>
<dt>Image measures vs γ</dt><dd>Each measure's mean over prompts (or classes) and seeds, per method, against the
guidance scale γ; bars: ±1 std. <em>saturation</em>: fraction of 8-bit channel values at 0 or 255;
<em>latent_rms</em>: RMS of the final latent; <em>pixel_diversity</em>: mean pairwise RMS pixel distance between
the images of one run.</dd>
<dt>Image grids</dt><dd>Rows: guider settings (method and γ); columns: prompts or class labels; each cell is one
run's images side by side (the lowest seed), with its measures.</dd>
</dl></div>
"""


def is_pipeline_run(row: dict[str, Any]) -> bool:
    """Whether a stored row is a run on a diffusers pipeline (its settings name the pipeline's folder)."""
    config = row.get("config")
    return isinstance(config, dict) and "pipeline" in config


def grid_file(row: dict[str, Any]) -> Path:
    """The run's image grid, ``<sweep folder>/runs/<hash>/grid.png``."""
    return Path(row["root"]) / "runs" / str(row["hash"]) / "grid.png"


def _setting_gamma(row: dict[str, Any]) -> Any:
    """γ of a run: the stored effective scale, or (a run that failed before resolving) the scale it was given."""
    gamma = row.get("gamma")
    return gamma if gamma is not None else row["params"].get("scale")


def relative_url(file: Path, report_dir: Path) -> str:
    """``file`` as a URL relative to the folder of the report (forward slashes, escaped)."""
    rel = os.path.relpath(os.path.abspath(file), os.path.abspath(report_dir))
    return quote(Path(rel).as_posix())


def image_sections(
    rows: Sequence[dict[str, Any]], catalog: Catalog, report_dir: Path, anchors: dict[str, str]
) -> list[Section]:
    """One section per pipeline (the ``target`` of its rows) with its measures against γ and its image grids.

    Args:
        rows: the pipeline runs (:func:`is_pipeline_run`), ok or failed.
        catalog: the report's lines (colours, names).
        report_dir: the folder the report is written to; image paths are relative to it.
        anchors: pipeline name → section anchor.
    """
    by_pipeline: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_pipeline.setdefault(str(r["target"]), []).append(r)
    return [_pipeline_section(anchors[name], name, group, catalog, report_dir) for name, group in by_pipeline.items()]


def _pipeline_section(
    anchor: str, name: str, rows: list[dict[str, Any]], catalog: Catalog, report_dir: Path
) -> Section:
    ok = [r for r in rows if r["status"] == "ok"]
    first = (ok or rows)[0]["config"]
    facts = [
        f"{counted(len(rows), 'run')}, {len(ok)} ok",
        f"pipeline {first.get('pipeline_class') or ''} in {first['pipeline']}",
    ]
    if first.get("n"):
        facts.append(f"{counted(first['n'], 'image')} per run")
    parts = [f"<p class='muted'>{escape('; '.join(facts))}.</p>"]
    if not ok:
        error = next((r.get("error") for r in rows if r.get("error")), "unknown error")
        parts.append(
            note(
                f"{every(len(rows), 'run').capitalize()} on {name} failed; nothing to show. First error: {error}",
                bad=True,
            )
        )
        return Section(anchor, f"Images: {name}", "".join(parts))
    metrics = [m for m in metric_names(ok) if m != "n_excluded"]
    points = [p for p in aggregate(ok, catalog) if p.gamma is not None]
    shown = [m for m in metrics if any(math.isfinite(p.mean(m)) for p in points)][:_MAX_METRIC_PANELS]
    hidden = [m for m in metrics if m not in shown]
    parts.append("<h3>Image measures vs γ</h3>")
    if shown and points:
        png = figures.metric_gamma_figure(points, f"{name}: image measures vs γ", shown)
        parts.append(
            figure(
                png,
                f"{', '.join(shown)} against the guidance scale per method, {name}",
                "Means over prompts (or classes) and seeds; bars: ±1 std."
                + (f" Not drawn (see the run table): {', '.join(hidden)}." if hidden else ""),
                "image-metrics",
                name,
            )
        )
    else:
        parts.append(note("No plot: no finite image measure at a guidance scale (see the run table)."))
    parts.append("<h3>Image grids</h3>")
    parts.append(_grid_table(name, rows, catalog, report_dir))
    return Section(anchor, f"Images: {name}", "".join(parts))


def _grid_table(name: str, rows: list[dict[str, Any]], catalog: Catalog, report_dir: Path) -> str:
    conds = list(dict.fromkeys(str(r["cond"]) for r in rows))
    settings: dict[tuple[str, str], tuple[Line, Any, dict[str, Any]]] = {}
    cells: dict[tuple[tuple[str, str], str], list[dict[str, Any]]] = {}
    for r in rows:
        line = catalog.line(r)
        key = (line.key, repr(_setting_gamma(r)))
        settings.setdefault(key, (line, _setting_gamma(r), r["params"]))
        cells.setdefault((key, str(r["cond"])), []).append(r)
    order = {line.key: i for i, line in enumerate(catalog.lines)}
    keys = sorted(settings, key=lambda k: (order[k[0]], gamma_sort(settings[k][1])))
    head = "".join(f'<th scope="col">{escape(c)}</th>' for c in conds)
    body = []
    for key in keys:
        line, gamma, params = settings[key]
        others = params_text(params, skip=("scale",))
        label = (
            f'<span class="swatch" style="background:{line.color}"></span>{escape(line.name)}'
            + (f"<br>γ = {escape(gamma_text(gamma))}" if gamma_text(gamma) else "")
            + (f'<br><span class="muted">{escape(others)}</span>' if others and others not in line.name else "")
        )
        tds = [f'<th scope="row">{label}</th>']
        for cond in conds:
            tds.append(f"<td>{_cell(name, line, gamma, cond, cells.get((key, cond), []), report_dir)}</td>")
        body.append(f"<tr>{''.join(tds)}</tr>")
    return (
        '<div class="scroll"><table class="images">'
        f'<thead><tr><th scope="col">guider setting</th>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _cell(name: str, line: Line, gamma: Any, cond: str, runs: list[dict[str, Any]], report_dir: Path) -> str:
    if not runs:
        return '<span class="muted">not run</span>'
    runs = sorted(runs, key=lambda r: (r.get("seed") is None, r.get("seed") or 0))
    ok = [r for r in runs if r["status"] == "ok"]
    if not ok:
        return f'<span class="err">failed: {escape(str(runs[0].get("error") or "unknown error"))}</span>'
    run = next((r for r in ok if grid_file(r).is_file()), None)
    if run is None:
        return '<span class="muted">images missing (runs/&lt;hash&gt;/grid.png)</span>'
    facts = [f"seed {run.get('seed')}" + (f" (of {len(runs)})" if len(runs) > 1 else "")]
    facts += [f"{m} {metric_text(m, v)}" for m, v in run["metrics"].items() if m != "n_excluded"]
    diverged = bool(run.get("diverged"))
    if diverged:
        facts.append(f"{run['diverged']} of {run.get('n')} diverged: frozen latents, not samples")
    if run.get("nfe") is not None:
        facts.append(f"NFE {fmt(run['nfe'])}")
    failed = len(runs) - len(ok)
    if failed:
        facts.append(f"{failed} failed")
    alt = f"{name}: {line.name}" + (f", γ={gamma_text(gamma)}" if gamma_text(gamma) else "") + f", {cond}"
    mark = ' class="diverged"' if diverged else ""
    src = relative_url(grid_file(run), report_dir)
    return (
        f'<figure{mark}><a href="{src}"><img src="{src}" '
        f'alt="{escape(alt)}" data-figure="image-grid" data-key="{escape(str(run["hash"]))}" loading="eager"></a>'
        f"<figcaption>{escape(' · '.join(facts))}</figcaption></figure>"
    )
