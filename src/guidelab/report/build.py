"""``write_report``: read a results folder, draw every figure, write one HTML page.

The folder holds a sweep's output (``results.sqlite``, ``runs/<hash>/samples.npy``), or several sweeps
below it, and/or reproduction outputs (a JSON object with ``claims`` and PNGs beside it), at any depth. Figures
are embedded, so the page stands alone; only the image grids of sweeps on diffusers pipelines
(:mod:`guidelab.report.images`) and on trained image models (:mod:`guidelab.report.models`), each run's
``runs/<hash>/grid.png``, are linked by paths relative to the page, so the page moves with its folder.

Three kinds of run get their own sections: exact-target runs (one section per target and condition), pipeline runs
(one per pipeline) and model runs (one per reference data set); every run is in the overview, the cost and
schedule plots and the run table.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from guidelab.io import write_text_atomic
from guidelab.progress import counted, every
from guidelab.report import figures
from guidelab.report.data import (
    FLOORED,
    Catalog,
    Point,
    Reproduction,
    Unfinished,
    aggregate,
    find_reproductions,
    find_stores,
    gamma_of,
    gamma_sort,
    gamma_text,
    load_runs,
    metric_names,
    params_text,
    unfinished_runs,
)
from guidelab.report.html import PNG_SIGNATURE, Section, figure, note, page
from guidelab.report.images import IMAGES_INTRO, image_sections, is_pipeline_run
from guidelab.report.models import MODELS_INTRO, is_model_run, model_sections
from guidelab.report.tables import (
    best_table,
    claim_items,
    claims_table,
    diverged_table,
    fmt,
    metric_text,
    n_diverged,
    runs_table,
)
from guidelab.report.tune import TUNE_INTRO, find_tunes, tune_sections

__all__ = ["build_report", "write_report"]

_DISTANCES = ("energy_distance", "w2", "mmd2")
_FIDELITIES = ("class_fidelity", "class_accuracy", "in_support")
_MAX_SAMPLE_PANELS = 15
_MAX_CURVES_PER_METHOD = 12

_INTRO = """
<div class="intro"><p>Every number compares a guided sampler with the <em>exact</em> conditional p(x | c) of an
analytic target. A method keeps its colour in every figure; labels on points give the guidance scale γ; with several
seeds, points are means with ±1 std bars.</p><dl>
<dt>Fidelity vs distance to the truth</dt><dd>x: energy distance to exact samples of p(x | c); y: class fidelity, the
mean exact p(c | x). <strong>Up-left is better</strong>; ringed points on the grey line are the Pareto front. CFG
usually buys fidelity with distance as γ grows.</dd>
<dt>Diversity vs fidelity</dt><dd>Vendi score and within-mode variance ratio (or what was measured); the dashed line
is the value of exact samples, and guidance that shrinks variance or drops modes falls below it.</dd>
<dt>Samples</dt><dd>A few runs per method (lowest γ, best distance, highest γ) in colour over exact samples in
grey, each panel on the target's range with a count of the samples beyond it. Runs with diverged samples are listed
above the plots; a distance at or below 0 is at the estimate's noise floor ("at the floor"; hover for the
number).</dd>
<dt>Cost · Schedules</dt><dd>Network evaluations per sample; the γ each configuration applies per step, noise to data
(hollow markers: one pass only).</dd>
<dt>All runs · Reproductions</dt><dd>Every run, failures with their error, sortable by clicking a header (↓/↑: which
way is better); reproduction claims (✓ holds, ✗ not reproduced) with their notes and figures.</dd>
</dl></div>
"""


_REPRO_INTRO = """
<div class="intro"><p>Each reproduction runs a seed paper's claim as a named experiment (<code>guidelab reproduce
NAME</code>). Its claims are checks: <strong>✓ holds</strong>, or <strong>✗ not reproduced</strong> here, with the
reason in the notes below the table; the numbers behind them are in the reproduction's JSON
(<code>results</code>).</p></div>
"""


def write_report(
    dir: str | Path, out: str | Path | None = None, unfinished: Sequence[Unfinished] | None = None
) -> Path:
    """Write the HTML report of the results under ``dir`` to ``out`` (default ``dir/report.html``); return its path.
    ``unfinished``: the sweeps under ``dir`` whose runs are not all stored, where the caller has them already
    (default: :func:`~guidelab.report.data.unfinished_runs` of its stores).

    Raises:
        ValueError: ``dir`` is not a folder, or holds neither a results store nor a reproduction.
    """
    root = Path(dir)
    if not root.is_dir():
        raise ValueError(f"dir: no such folder {str(root)!r}")
    stores = find_stores(root)
    rows = load_runs(stores)
    repros = find_reproductions(root)
    if not rows and not repros and not find_tunes(root):
        raise ValueError(
            f"dir: {str(root)!r} holds no runs (results.sqlite) and no reproduction output (a JSON with 'claims')"
        )
    target = Path(out) if out is not None else root / "report.html"
    if unfinished is None:
        unfinished = unfinished_runs(stores)
    text = build_report(root, rows, repros, report_dir=target.parent, unfinished=unfinished)
    write_text_atomic(target, text)
    return target


def build_report(
    root: Path,
    rows: Sequence[dict[str, Any]],
    repros: Sequence[Reproduction],
    report_dir: Path | None = None,
    unfinished: Sequence[Unfinished] = (),
) -> str:
    """The report page as a string (see :func:`write_report`); ``report_dir`` is the folder the page is written
    to (default ``root``), which the image grids of pipeline and model runs are linked relative to; ``unfinished``
    are the sweeps whose runs are not all stored (a note at the top of the overview)."""
    from guidelab import __version__

    catalog = Catalog(rows)
    metrics = metric_names(rows)
    pipeline_rows = [r for r in rows if _kind(r) == "pipeline"]
    model_rows = [r for r in rows if _kind(r) == "model"]
    pipelines = {name: f"images-{k}" for k, name in enumerate(dict.fromkeys(str(r["target"]) for r in pipeline_rows))}
    models = {name: f"model-{k}" for k, name in enumerate(dict.fromkeys(str(r["target"]) for r in model_rows))}
    sections: list[Section] = []
    tunes = find_tunes(root)
    if rows:
        groups = _groups(rows)
        own = {"pipeline": pipelines, "model": models}
        anchors = [own[key[2]][key[0]] if key[2] in own else _anchor(i) for i, key in enumerate(groups)]
        sections.append(_overview(rows, groups, catalog, anchors, unfinished))
    sections += tune_sections(root, tunes)
    if rows:
        for i, ((target, cond, kind), group) in enumerate(groups.items()):
            if kind == "exact":
                sections.append(_group_section(i, target, cond, group, catalog))
        sections += image_sections(pipeline_rows, catalog, report_dir or root, pipelines)
        sections += model_sections(model_rows, catalog, report_dir or root, models)
        sections.append(_cost_section(rows, catalog))
        sections.append(_schedule_section(rows, catalog))
        sections.append(Section("runs", f"All runs ({len(rows)})", runs_table(rows, catalog, metrics)))
    if repros:
        sections.append(_reproduction_section(root, repros))
    sweeps = sorted({str(r.get("sweep")) for r in rows if r.get("sweep")})
    title = "guidelab report" + (f": {', '.join(sweeps)}" if sweeps else "")
    failed = sum(r["status"] != "ok" for r in rows)
    missing = sum(u.missing for u in unfinished)
    counts = [f"{counted(len(rows), 'run')} ({len(rows) - failed} ok, {failed} failed)"] if rows or not repros else []
    counts += [f"{missing} more not run yet (an unfinished sweep)"] if missing else []
    counts += [counted(len(repros), "reproduction")] if repros else []
    meta = f"{', '.join(counts)}; folder {root}; generated {time.strftime('%Y-%m-%d %H:%M')} by guidelab {__version__}"
    exact = len(pipeline_rows) + len(model_rows) < len(rows) or not (rows or repros or tunes)
    intro = (_INTRO if exact else "") + (IMAGES_INTRO if pipeline_rows else "") + (MODELS_INTRO if model_rows else "")
    intro += (TUNE_INTRO if tunes else "") + (_REPRO_INTRO if repros and not rows else "")
    return page(title, meta, intro, sections, expect_table=bool(rows))


# --- sections ----------------------------------------------------------------------------------------------


def _kind(row: dict[str, Any]) -> str:
    """Which sections show a run: ``pipeline`` (a diffusers pipeline), ``model`` (a trained image model) or
    ``exact`` (an analytic target)."""
    return "pipeline" if is_pipeline_run(row) else ("model" if is_model_run(row) else "exact")


def _groups(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    """Runs by (target, condition, :func:`_kind`), in the order of their first run."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((str(r["target"]), str(r["cond"]), _kind(r)), []).append(r)
    return groups


def _overview(
    rows: Sequence[dict[str, Any]],
    groups: dict[tuple[str, str, str], list[dict[str, Any]]],
    catalog: Catalog,
    anchors: Sequence[str],
    unfinished: Sequence[Unfinished] = (),
) -> Section:
    """The table of targets (and pipelines) and conditions, each linked to its section (``anchors``, in order),
    after a note per sweep whose runs are not all stored."""
    body = [
        note(
            f"Sweep {u.sweep} in {u.folder} is unfinished: {u.missing} of its {counted(u.total, 'run')} "
            f"{'is' if u.missing == 1 else 'are'} not in the store, so"
            " every figure and table below shows the finished runs only. Rerun the same guidelab run command to"
            " finish it (finished runs are kept).",
            bad=True,
        )
        for u in unfinished
    ]
    body += [
        "<table class='best'><thead><tr><th>target</th><th>c</th><th>runs</th><th>ok</th><th>failed</th>"
        "<th>methods</th></tr></thead><tbody>"
    ]
    for i, ((target, cond, _), group) in enumerate(groups.items()):
        ok = sum(r["status"] == "ok" for r in group)
        labels = list(dict.fromkeys(r["label"] for r in group))
        methods = " ".join(
            f'<span class="swatch" style="background:{catalog.colors[lab]}"></span>{escape(lab)}' for lab in labels
        )
        body.append(
            f'<tr><td><a href="#{anchors[i]}">{escape(target)}</a></td><td>{escape(cond)}</td>'
            f"<td class='num'>{len(group)}</td><td class='num'>{ok}</td><td class='num'>{len(group) - ok}</td>"
            f"<td>{methods}</td></tr>"
        )
    body.append("</tbody></table>")
    errors = [r for r in rows if r["status"] != "ok"]
    if errors:
        kinds = list(dict.fromkeys(str(r.get("error") or "unknown error") for r in errors))
        shown = "; ".join(kinds[:3]) + (f"; and {len(kinds) - 3} other messages" if len(kinds) > 3 else "")
        body.append(note(f"{len(errors)} of {counted(len(rows), 'run')} failed (see the run table): {shown}", bad=True))
    diverged = [r for r in rows if r["status"] == "ok" and n_diverged(r)]
    if diverged:
        all_diverged = sum(n_diverged(r) >= int(r.get("n") or 0) > 0 for r in diverged)
        body.append(
            note(
                f"{len(diverged)} of {counted(len(rows), 'run')} {'has' if len(diverged) == 1 else 'have'} diverged"
                " samples, left out of their metrics"
                + (
                    f"; in {all_diverged} every sample diverged (no metrics, no point in the plots)"
                    if all_diverged
                    else ""
                )
                + ". Each target's section lists them.",
                bad=bool(all_diverged),
            )
        )
    if catalog.varying:
        body.append(note(f"Run settings that vary across the sweep and name the lines: {', '.join(catalog.varying)}."))
    return Section("overview", "Overview", "".join(body))


def _anchor(i: int) -> str:
    return f"group-{i}"


def _first_metric(points: Sequence[Point], names: Sequence[str]) -> str | None:
    for name in names:
        if any(math.isfinite(p.mean(name)) for p in points):
            return name
    return None


def _group_section(i: int, target: str, cond: str, group: list[dict[str, Any]], catalog: Catalog) -> Section:
    title = f"{target} · c = {cond}"
    key = f"{target}|{cond}"
    ok = [r for r in group if r["status"] == "ok"]
    parts = [f"<p class='muted'>{counted(len(group), 'run')}, {len(ok)} ok.</p>"]
    if not ok:
        first = next((r.get("error") for r in group if r.get("error")), "unknown error")
        parts.append(
            note(
                f"{every(len(group), 'run').capitalize()} of {title} failed; nothing to plot. First error: {first}",
                bad=True,
            )
        )
        return Section(_anchor(i), title, "".join(parts))
    points = aggregate(ok, catalog)
    x_metric = _first_metric(points, _DISTANCES)
    y_metric = _first_metric(points, _FIDELITIES)
    parts.append(diverged_table(ok, catalog))
    parts.append(f"<h3>Fidelity vs distance to the truth{'' if x_metric and y_metric else ' (not drawn)'}</h3>")
    if x_metric and y_metric:
        png = figures.pareto_figure(points, f"{title}: {y_metric} vs {x_metric}", x_metric, y_metric)
        parts.append(
            figure(
                png,
                f"{y_metric} against {x_metric} per method and guidance scale, {title}",
                "Up-left is better. Labels give γ; ringed points joined by the grey line are the Pareto front."
                + (
                    " Distances at or below 0 (the unbiased estimate's noise floor) sit on the dotted floor line."
                    if x_metric in FLOORED and any(p.mean(x_metric) <= 0 for p in points)
                    else ""
                ),
                "pareto",
                key,
            )
        )
        absent = [p for p in points if not (math.isfinite(p.mean(x_metric)) and math.isfinite(p.mean(y_metric)))]
        if absent:
            names = ", ".join(_point_name(p) for p in absent)
            why = (
                "every sample diverged, or the metric is undefined for these samples, e.g. class fidelity where "
                "every sample left the support"
            )
            parts.append(note(f"Not in the plot (no {x_metric} or {y_metric}: {why}): {names}."))
    else:
        missing = [name for name, m in (("a distance", x_metric), ("a fidelity", y_metric)) if m is None]
        parts.append(
            note(
                f"No fidelity/distance plot: the runs have no finite {' or '.join(missing)} metric "
                f"(distances: {', '.join(_DISTANCES)}; fidelities: {', '.join(_FIDELITIES)})."
            )
        )
    if x_metric:
        parts.append(best_table(points, x_metric, [m for m in (y_metric, "vendi", "within_mode_variance_ratio") if m]))
    diversity = [m for m in figures.DIVERSITY if any(math.isfinite(p.mean(m)) for p in points)][:2]
    against = y_metric or x_metric
    parts.append("<h3>Diversity vs fidelity</h3>")
    if diversity and against:
        png = figures.diversity_figure(points, f"{title}: diversity vs {against}", diversity, against)
        parts.append(
            figure(
                png,
                f"{', '.join(diversity)} against {against}, {title}",
                "Dashed: the value of exact samples of p(x | c). Below it: guidance shrinks variance or drops modes.",
                "diversity",
                key,
            )
        )
    else:
        parts.append(
            note(
                f"No diversity plot: the runs measured none of {', '.join(figures.DIVERSITY)} (add the 'vendi' "
                "or 'within_mode_variance' metrics to the sweep)."
            )
        )
    parts.append("<h3>Samples</h3>")
    parts.append(_samples(target, cond, title, key, points))
    return Section(_anchor(i), title, "".join(parts))


def _point_name(p: Point) -> str:
    return p.line.name + (f" γ={gamma_text(p.gamma)}" if gamma_text(p.gamma) else "")


def _selected(points: Sequence[Point]) -> list[Point]:
    """Per line: the lowest γ, the best energy distance and the highest γ (at most three, in γ order)."""
    lines: dict[str, list[Point]] = {}
    for p in points:
        lines.setdefault(p.line.key, []).append(p)
    chosen: list[list[Point]] = []
    for pts in lines.values():
        pts = sorted(pts, key=lambda p: gamma_sort(p.gamma))
        finite = [p for p in pts if math.isfinite(p.mean("energy_distance"))]
        pick = [pts[0], pts[-1]]
        if finite:
            pick.append(min(finite, key=lambda p: p.mean("energy_distance")))
        chosen.append(sorted({id(p): p for p in pick}.values(), key=lambda p: gamma_sort(p.gamma)))
    if sum(len(c) for c in chosen) > _MAX_SAMPLE_PANELS:  # too many: the best run per line only
        chosen = [[min(c, key=lambda p: _nan_last(p.mean("energy_distance")))] for c in chosen]
    return [p for c in chosen for p in c][:_MAX_SAMPLE_PANELS]


def _nan_last(value: float) -> float:
    return value if math.isfinite(value) else math.inf


def _samples(target_name: str, cond: str, title: str, key: str, points: Sequence[Point]) -> str:
    rows: dict[str, list[figures.SampleImage]] = {}
    names: list[str] = []
    missing = 0
    for p in _selected(points):
        runs = sorted(p.rows, key=lambda r: (r.get("seed") is None, r.get("seed") or 0))
        file = next((Path(r["root"]) / "runs" / r["hash"] / "samples.npy" for r in runs if _has_samples(r)), None)
        try:
            x = np.load(file, allow_pickle=False) if file is not None else None
        except (OSError, ValueError):
            x = None
        if x is None or x.size == 0:
            missing += 1
            continue
        x = x.reshape(x.shape[0], -1)
        bad = int((~np.isfinite(x).all(axis=1)).sum())
        ed = p.mean("energy_distance")
        run = next(r for r in runs if _has_samples(r))
        diverged = n_diverged(run)
        label = p.line.name + (f", γ={gamma_text(p.gamma)}" if gamma_text(p.gamma) else "")
        facts = [f"ED {metric_text('energy_distance', ed)}"] if math.isfinite(ed) else []
        facts += [f"{diverged} of {x.shape[0]} diverged"] if diverged else []
        facts += [f"{bad} non-finite"] if bad else []
        label += "\n" + "; ".join(facts) if facts else ""
        rows.setdefault(p.line.key, []).append(figures.SampleImage(label, p.line.color, x))
        names.append(_point_name(p))
    if not rows:
        return note("No sample plot: no saved samples (runs/<hash>/samples.npy) for these runs.")
    exact, data_range, why = _target_facts(target_name, cond)
    flat = [s for r in rows.values() for s in r]
    dims = 1 if flat[0].x.shape[1] == 1 else 2
    if data_range is not None:
        view = figures.sample_view(data_range, [], dims)
        shown = f"the target's data range ({fmt(data_range[0])}, {fmt(data_range[1])}) ± {figures.VIEW_MARGIN:.0%}"
    else:
        view = figures.sample_view(None, [exact] if exact is not None else [s.x for s in flat], dims)
        shown = "the 0.5-99.5% quantiles of the " + ("exact samples" if exact is not None else "runs' samples")
    png = figures.samples_figure(exact, list(rows.values()), title, view)
    out = figure(
        png,
        f"samples of selected runs over exact samples, {title}",
        f"Each panel shows {shown} and counts the samples outside it (drawn as × on the border they cross). "
        f"At most {figures.MAX_POINTS} points per panel; seed: the lowest of each configuration.",
        "samples",
        key,
    )
    counts = [(name, figures.outside_count(s.x, view), s.x.shape[0]) for name, s in zip(names, flat, strict=True)]
    beyond = [f"{name}: {k} of {n}" for name, k, n in counts if k]
    if beyond:
        out += f'<p class="muted outside">Samples outside the shown range: {escape("; ".join(beyond))}.</p>'
    if why:
        out += note(f"Exact samples not drawn: {why}")
    if missing:
        out += note(f"{missing} selected configurations have no saved samples.")
    return out


def _has_samples(row: dict[str, Any]) -> bool:
    return (Path(row["root"]) / "runs" / row["hash"] / "samples.npy").is_file()


def _target_facts(target_name: str, cond: str) -> tuple[np.ndarray | None, tuple[float, float] | None, str]:
    """Exact samples of p(x | c) and the target's data range, or Nones and why not."""
    from guidelab.experiments.measures import reference_samples
    from guidelab.targets import get_target

    try:
        target = get_target(target_name)
        exact = reference_samples(target, target.class_index(cond), figures.MAX_POINTS).numpy()
        return exact, tuple(float(v) for v in target.data_range), ""  # type: ignore[return-value]
    except Exception as err:  # a target file that moved: plot the runs alone
        return None, None, f"{type(err).__name__}: {err}"


def _by_sweep(rows: Sequence[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Rows per sweep, in the order of their first row: the cost and schedule plots draw one figure per sweep, so
    two sweeps (the demo's exact targets at 32 steps and its image model at 12) never share a line."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(str(r.get("sweep") or "sweep"), []).append(r)
    return list(groups.items())


def _cost_section(rows: Sequence[dict[str, Any]], catalog: Catalog) -> Section:
    groups = _by_sweep(rows)
    parts = []
    for sweep, group in groups:
        points = [p for p in aggregate(group, catalog) if any(r.get("nfe") is not None for r in p.rows)]
        if not points:
            continue
        of = f" of sweep {sweep}" if len(groups) > 1 else ""
        parts.append(
            figure(
                figures.nfe_figure(points, catalog.lines),
                f"network evaluations per sample for each method and guidance scale{of}",
                f"All targets and conditions{of} together; labels give γ.",
                "nfe",
                sweep if len(groups) > 1 else "all",
            )
        )
    if not parts:
        return Section("cost", "Cost", note("No NFE recorded: no run finished."))
    return Section("cost", "Cost", "".join(parts))


def _schedule_section(rows: Sequence[dict[str, Any]], catalog: Catalog) -> Section:
    groups = _by_sweep(rows)
    parts: list[str] = []
    for sweep, group in groups:
        if len(groups) > 1:
            parts.append(f"<h3>{escape(sweep)}</h3>")
        parts += _schedule_parts(group, catalog, sweep if len(groups) > 1 else "all")
    return Section("schedules", "Guidance schedules", "".join(parts))


def _schedule_parts(rows: Sequence[dict[str, Any]], catalog: Catalog, key: str) -> list[str]:
    from guidelab.grids import make_grid
    from guidelab.guiders import build_guider
    from guidelab.guiders.describe import schedule_table
    from guidelab.paths import get_path

    curves: list[figures.ScheduleCurve] = []
    problems: dict[str, str] = {}
    seen: set[str] = set()
    per_label: dict[str, int] = {}
    dropped = 0
    keys = ("path", "path_params", "grid", "steps", "t_min", "t_max", "grid_params")
    for r in sorted(rows, key=lambda r: (catalog.labels.index(r["label"]), gamma_sort(gamma_of(r)))):
        cfg = r["config"]
        ident = repr([r["label"], _stable(r["guider_config"]), *(_stable(cfg.get(k, r.get(k))) for k in keys)])
        if ident in seen:
            continue
        seen.add(ident)
        if per_label.get(r["label"], 0) >= _MAX_CURVES_PER_METHOD:
            dropped += 1
            continue
        table = r.get("schedule") or []  # the per-step plan the runner stored from the guider it ran
        if not table and is_pipeline_run(r):  # a pipeline run that failed: its grid is the scheduler's, unknown
            seen.discard(ident)
            continue
        if not table:  # a store from before the plan was stored: rebuild it from the stored configuration
            try:
                path = get_path(cfg.get("path", r["path"]), **(cfg.get("path_params") or {}))
                grid = make_grid(
                    cfg.get("grid", r["grid"]),
                    int(cfg.get("steps", r["steps"])),
                    path,
                    t_min=cfg.get("t_min"),
                    t_max=cfg.get("t_max", 1.0),
                    **(cfg.get("grid_params") or {}),
                )
                table = schedule_table(build_guider(**r["guider_config"]), path, grid)
            except Exception as err:  # an unbuildable configuration is a note, never a failed report
                problems.setdefault(r["label"], f"{type(err).__name__}: {err}")
                continue
        if not table or all(row["gamma"] == "n/a" for row in table):
            problems.setdefault(r["label"], "the guider has no guidance-scale schedule")
            continue
        name = f"γ={gamma_text(gamma_of(r)) or 'default'}"
        others = params_text(r["params"], skip=("scale",))
        name += f"; {others}" if others else ""
        if catalog.varying:
            name += f"; {catalog.settings_text(r)}"
        curves.append(figures.ScheduleCurve(catalog.line(r), name, table, 0.0))  # every grid ends at t = 0
        per_label[r["label"]] = per_label.get(r["label"], 0) + 1
    parts = []
    if curves:
        parts.append(
            figure(
                figures.schedule_figure(curves),
                "guidance scale per step for each distinct guider configuration",
                "γ is piecewise constant over each step; per-sample scales show their mean.",
                "schedule",
                key,
            )
        )
    else:
        parts.append(note("No schedule plot: no guider configuration could be tabulated."))
    for label, why in problems.items():
        parts.append(note(f"{label}: schedule not drawn ({why})."))
    if dropped:
        parts.append(note(f"{dropped} further configurations not drawn (at most {_MAX_CURVES_PER_METHOD} per method)."))
    return parts


def _stable(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _reproduction_section(root: Path, repros: Sequence[Reproduction]) -> Section:
    parts = []
    for k, rep in enumerate(repros):
        data = rep.data
        facts = [f"{'folder' if rep.path.is_dir() else 'file'} {os.path.relpath(rep.path, root)}"]
        for field in ("source", "size", "target", "path"):
            if isinstance(data.get(field), str | int | float):
                facts.append(f"{field} {data[field]}")
        if isinstance(data.get("wall_time_s"), int | float):
            facts.append(f"{fmt(float(data['wall_time_s']))} s")
        claims = data["claims"]
        checks = [ok for _, ok, _ in claim_items(claims) if ok is not None]
        summary = (
            f"{sum(checks)} of {counted(len(checks), 'check')} hold"
            if checks
            else ("no pass/fail checks" if claims else "")
        )
        parts.append(
            f'<h3 id="repro-{k}">{escape(rep.title)}</h3><p class="muted">{escape("; ".join(facts))}. '
            f"{escape(summary)}{'.' if summary else ''}</p>"
        )
        if claims:
            parts.append(claims_table(claims))
        notes = [str(n) for n in data.get("notes") or [] if str(n).strip()]
        if notes:
            items = "".join(f"<li>{escape(n)}</li>" for n in notes)
            parts.append(f'<p class="muted">Notes (what did not reproduce, and why):</p><ul class="notes">{items}</ul>')
        for png_path in rep.figures:
            try:
                png = png_path.read_bytes()
            except OSError as err:
                parts.append(note(f"{png_path.name}: cannot read ({err})"))
                continue
            if not png.startswith(PNG_SIGNATURE):
                parts.append(note(f"{png_path.name}: not a PNG file; skipped"))
                continue
            parts.append(figure(png, f"{rep.title}: {png_path.stem}", png_path.name, "reproduction", rep.title))
    return Section("reproductions", f"Reproductions ({len(repros)})", "".join(parts))
