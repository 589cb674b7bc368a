"""The report's sections for sweeps on a trained image model (a class-conditional denoiser on digits or MNIST):
per reference data set, the Pareto front of Fréchet distance against classifier accuracy across methods and
scales, the metrics per method and γ beside their real-vs-real floors, and per class a table of image grids
(rows: methods; columns: γ; cells: the run's ``grid.png``).

Such a run is stored like an exact-target run (``target``: the reference's name, ``cond``: the class), with the
real images it is measured against in its settings (``config["reference"]``), the model in ``config["model"]``
and, beside each metric ``m``, its floor ``m_floor``: the same metric of one half of the real images against the
other (:func:`guidelab.metrics.images.image_floor`). A value at or under its floor is indistinguishable from real
data at that sample size.

Numbers per method and γ are means over classes of the per-class means over seeds, so every class weighs the same
even where a run failed. As in :mod:`guidelab.report.images`, the grids are linked by paths relative to the
report file, never embedded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

from guidelab.progress import counted, every
from guidelab.report import figures
from guidelab.report.data import (
    BETTER,
    MODEL_METRICS,
    Catalog,
    Line,
    Point,
    aggregate,
    finite,
    gamma_sort,
    gamma_text,
    params_text,
    pareto_front,
)
from guidelab.report.html import Section, figure, note
from guidelab.report.images import grid_file, relative_url
from guidelab.report.tables import diverged_table, fmt

__all__ = [
    "MODELS_INTRO",
    "MODEL_METRICS",
    "ClassMeanPoint",
    "class_grid_table",
    "fd_text",
    "front_points",
    "is_model_run",
    "metrics_table",
    "model_sections",
]

_MAX_ERROR_CHARS = 120

MODELS_INTRO = """
<div class="intro"><p>Runs on a trained image model (a class-conditional denoiser) have no exact p(x | c): a
classifier trained on the data measures their images against held-out real images of each class. Numbers per method
and γ are means over classes (and seeds).</p><dl>
<dt>Accuracy</dt><dd>The metric classifier's accuracy on the samples: the share it assigns to the class they were
generated for (fidelity; <em>confidence</em> is its mean probability of that class).</dd>
<dt>FD</dt><dd>Fréchet distance, in the classifier's feature space, between the samples and held-out real images
of the class; lower is closer to the data. Precision, recall, density, coverage and the Vendi score use the same
features.</dd>
<dt>Floors</dt><dd>Each metric measured on two halves of the real images, one against the other (the "real data
(floor)" row, the dashed line). A value at or under its floor is indistinguishable from real data at this sample
size.</dd>
<dt>FD vs accuracy</dt><dd>One point per method and γ; <strong>down-right is better</strong>; ringed points on the
grey line are the Pareto front (no other point has both a higher accuracy and a lower FD), listed below it.</dd>
<dt>Image grids</dt><dd>Per class: rows are methods, columns the scales γ; each cell is one run's images (the
lowest seed) with its accuracy and FD; "—": not run.</dd>
</dl></div>
"""


def is_model_run(row: dict[str, Any]) -> bool:
    """Whether a stored row is a run on a trained image model (its settings name the reference images)."""
    config = row.get("config")
    return isinstance(config, dict) and "reference" in config


def _class_mean(rows: Sequence[dict[str, Any]], metric: str) -> float:
    """The mean over classes (``cond``) of each class's mean over its runs, finite values only; NaN if none."""
    by_class: dict[str, list[float]] = {}
    for r in rows:
        value = r.get(metric) if metric in ("nfe", "wall_time_s") else r["metrics"].get(metric)
        if finite(value):
            by_class.setdefault(str(r["cond"]), []).append(float(value))
    means = [sum(v) / len(v) for v in by_class.values()]
    return sum(means) / len(means) if means else math.nan


class ClassMeanPoint(Point):
    """One method line at one γ over every class of a reference: :meth:`mean` weighs each class the same (the mean
    of its runs over seeds), and :meth:`std` is 0, so figures draw no error bars (a spread over classes is not a
    seed's noise)."""

    def mean(self, metric: str) -> float:
        return _class_mean(self.rows, metric)

    def std(self, metric: str) -> float:
        return 0.0

    @property
    def classes(self) -> int:
        return len({str(r["cond"]) for r in self.rows})


def model_sections(
    rows: Sequence[dict[str, Any]], catalog: Catalog, report_dir: Path, anchors: dict[str, str]
) -> list[Section]:
    """One section per reference (the ``target`` of its rows): FD against accuracy with its Pareto front, the
    metrics per method and γ with the floors, and per class the image grids.

    Args:
        rows: the model runs (:func:`is_model_run`), ok or failed.
        catalog: the report's lines (colours, names).
        report_dir: the folder the report is written to; image paths are relative to it.
        anchors: reference name → section anchor.
    """
    by_reference: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_reference.setdefault(str(r["target"]), []).append(r)
    return [_model_section(anchors[name], name, group, catalog, report_dir) for name, group in by_reference.items()]


def _model_section(anchor: str, name: str, rows: list[dict[str, Any]], catalog: Catalog, report_dir: Path) -> Section:
    ok = [r for r in rows if r["status"] == "ok"]
    conds = list(dict.fromkeys(str(r["cond"]) for r in rows))
    config = (ok or rows)[0]["config"]
    models = list(dict.fromkeys(_model_text(r["config"].get("model")) for r in rows))
    title = f"{' and '.join(models)} on {name}"
    facts = [f"{counted(len(rows), 'run')}, {len(ok)} ok", f"classes {', '.join(conds)}"]
    reference = _set_fields(config.get("reference") or {})
    source = (reference.get("dataset") and f"the {reference['dataset']} test split") or reference.get("samples")
    if source:
        facts.append(f"reference: {source}")
    if reference.get("classifier"):
        facts.append(f"classifier {reference['classifier']}")
    if config.get("n"):
        facts.append(f"{counted(config['n'], 'image')} per run")
    parts = [f"<p class='muted'>{escape('; '.join(facts))}.</p>"]
    if not ok:
        error = next((r.get("error") for r in rows if r.get("error")), "unknown error")
        parts.append(
            note(
                f"{every(len(rows), 'run').capitalize()} on {name} failed; nothing to show. First error: {error}",
                bad=True,
            )
        )
        return Section(anchor, title, "".join(parts))
    points = [ClassMeanPoint(p.line, p.gamma, p.rows) for p in aggregate(ok, catalog)]
    floors = {m: _class_mean(ok, f"{m}_floor") for m in MODEL_METRICS}
    parts.append(diverged_table(ok, catalog))
    parts.append(_front_part(name, points, floors, len(conds)))
    parts.append("<h3>Metrics per method and γ</h3>")
    parts.append(metrics_table(points, floors, len(conds)))
    parts.append("<h3>Image grids per class</h3>")
    for cond in conds:
        in_class = [r for r in rows if str(r["cond"]) == cond]
        parts.append(f"<h4>class {escape(cond)}</h4>")
        parts.append(class_grid_table(name, cond, in_class, catalog, report_dir))
    return Section(anchor, title, "".join(parts))


_MODEL_FIELDS = {"checkpoint": "path", "shipped": "name", "python": "factory"}


def _model_text(spec: Any) -> str:
    """A trained model in a few words: ``shipped model digits``, ``checkpoint m.safetensors``, ``factory pkg:fn``."""
    if not isinstance(spec, dict) or spec.get("kind") not in _MODEL_FIELDS:
        return "model"
    kind = spec["kind"]
    value = str(spec.get(_MODEL_FIELDS[kind]))
    return {"shipped": f"shipped model {value}", "checkpoint": f"checkpoint {Path(value).name}"}.get(
        kind, f"factory {value}"
    )


def _set_fields(spec: Any) -> Any:
    """A model or reference spec without its unset fields (a trained model: its kind and what names it)."""
    if not isinstance(spec, dict):
        return spec
    if spec.get("kind") in _MODEL_FIELDS:
        return {k: spec[k] for k in ("kind", _MODEL_FIELDS[spec["kind"]]) if spec.get(k) is not None}
    return {k: v for k, v in spec.items() if v is not None}


def front_points(points: Sequence[Point]) -> list[Point]:
    """The points no other point beats in both accuracy (higher) and FD (lower), lowest FD first (accuracies
    within 1e-4 count as equal, :func:`~guidelab.report.data.pareto_front`); points without both are left out."""
    drawn = [p for p in points if math.isfinite(p.mean("fd")) and math.isfinite(p.mean("accuracy"))]
    return [drawn[i] for i in pareto_front([(p.mean("fd"), p.mean("accuracy")) for p in drawn])]


def _front_part(name: str, points: Sequence[ClassMeanPoint], floors: dict[str, float], n_classes: int) -> str:
    front = front_points(points)
    parts = [f"<h3>FD vs accuracy{'' if front else ' (not drawn)'}</h3>"]
    if not front:
        parts.append(note("No FD/accuracy plot: no method and γ has both a finite FD and a finite accuracy."))
        return "".join(parts)
    fd_floor, acc_floor = floors["fd"], floors["accuracy"]
    png = figures.fd_accuracy_figure(
        points,
        front,
        f"{name}: FD vs accuracy",
        fd_floor if math.isfinite(fd_floor) else None,
        acc_floor if math.isfinite(acc_floor) else None,
    )
    parts.append(
        figure(
            png,
            f"Fréchet distance against classifier accuracy per method and guidance scale, {name}",
            "Down-right is better. Means over classes and seeds; labels give γ; ringed points joined by the grey "
            "line are the Pareto front. Dashed: FD of real images against real images (the floor); dotted: the "
            "classifier's accuracy on real images.",
            "model-pareto",
            name,
        )
    )
    absent = [p for p in points if not (math.isfinite(p.mean("fd")) and math.isfinite(p.mean("accuracy")))]
    if absent:
        names = ", ".join(_point_name(p) for p in absent)
        parts.append(note(f"Not in the plot (no finite FD or accuracy): {names}."))
    body = []
    for p in front:
        body.append(
            f'<tr data-label="{escape(p.line.label)}" data-gamma="{escape(gamma_text(p.gamma))}">'
            f"{_method_cell(p.line)}<td>{escape(gamma_text(p.gamma) or '—')}</td>"
            f"{_value_cell('accuracy', p.mean('accuracy'))}{_value_cell('fd', p.mean('fd'), p.mean('fd_floor'))}"
            f"{_value_cell('nfe', p.mean('nfe'))}{_classes_cell(p, n_classes)}</tr>"
        )
    parts.append(
        '<table class="best front"><caption>The Pareto front: no other method and γ has both a higher accuracy '
        "and a lower FD (lowest FD first; accuracy falls down the table)</caption><thead><tr><th>method</th>"
        "<th>γ</th><th>accuracy ↑</th><th>FD ↓</th><th>NFE</th><th>classes</th></tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
    )
    return "".join(parts)


def _point_name(p: Point) -> str:
    return p.line.name + (f" γ={gamma_text(p.gamma)}" if gamma_text(p.gamma) else "")


def _method_cell(line: Line) -> str:
    return (
        f'<td data-v="{escape(line.name)}"><span class="swatch" style="background:{line.color}"></span>'
        f"{escape(line.name)}</td>"
    )


def _classes_cell(p: ClassMeanPoint, n_classes: int) -> str:
    text = str(p.classes) if p.classes == n_classes else f"{p.classes} of {n_classes}"
    return f'<td class="num" data-v="{p.classes}">{escape(text)}</td>'


def fd_text(fd: float, floor: float) -> str:
    """An FD as short text: ``at the floor (x)`` when it is at or under its real-vs-real ``floor``."""
    if finite(fd) and finite(floor) and fd <= floor:
        return f"at the floor ({fmt(fd)})"
    return fmt(fd)


def _value_cell(metric: str, value: float, floor: float = math.nan) -> str:
    """A numeric, sortable cell ("—" when not finite); an FD at or under ``floor`` is marked (class ``floor``, the
    floor in its title)."""
    if not finite(value):  # a class mean: no class has a finite value
        return '<td class="num" data-v="">—</td>'
    sort = repr(float(value))
    text = fd_text(value, floor) if metric == "fd" else fmt(value)
    if metric == "fd" and text.startswith("at the floor"):
        tip = f"FD {fmt(value)} ≤ its real-vs-real floor {fmt(floor)}: indistinguishable from real data"
        return f'<td class="num floor" data-v="{sort}" title="{escape(tip)}">{escape(text)}</td>'
    return f'<td class="num" data-v="{sort}">{escape(text)}</td>'


def metrics_table(points: Sequence[ClassMeanPoint], floors: dict[str, float], n_classes: int) -> str:
    """The metrics of every method and γ (means over classes), sortable, under a "real data (floor)" row that
    stays on top; metrics no run and no floor has are left out."""
    metrics = [m for m in MODEL_METRICS if math.isfinite(floors[m]) or any(math.isfinite(p.mean(m)) for p in points)]
    heads = ["method", "γ", *(f"{m} {BETTER[m]}" if m in BETTER else m for m in metrics), "NFE ↓", "classes", "runs"]
    head = "".join(f'<th scope="col" aria-sort="none"><button type="button">{escape(h)}</button></th>' for h in heads)
    floor_cells = "".join(_value_cell(m, floors[m]) for m in metrics)
    floor_row = (
        f'<tr class="floor-row"><td>real data (floor)</td><td>—</td>{floor_cells}<td></td><td></td><td></td></tr>'
    )
    body = []
    for p in points:
        cells = "".join(_value_cell(m, p.mean(m), p.mean("fd_floor")) for m in metrics)
        others = params_text(p.rows[0]["params"], skip=("scale",))
        tip = f' title="{escape(others)}"' if others else ""
        body.append(
            f'<tr data-label="{escape(p.line.label)}" data-gamma="{escape(gamma_text(p.gamma))}"{tip}>'
            f"{_method_cell(p.line)}"
            f'<td class="num" data-v="{_sort_gamma(p.gamma)}">{escape(gamma_text(p.gamma) or "—")}</td>{cells}'
            f"{_value_cell('nfe', p.mean('nfe'))}{_classes_cell(p, n_classes)}"
            f'<td class="num" data-v="{len(p.rows)}">{len(p.rows)}</td></tr>'
        )
    return (
        '<p class="muted">Means over classes of the means over seeds. First row: each metric of real images against '
        "real images (mean over classes); an FD at or under its floor reads “at the floor”. Click a column header to "
        "sort.</p>"
        '<div class="scroll"><table class="runs sortable model-metrics">'
        f"<thead><tr>{head}</tr>{floor_row}</thead><tbody>{''.join(body)}</tbody></table></div>"
    )


def _sort_gamma(gamma: Any) -> str:
    value = gamma_sort(gamma)
    return repr(value) if math.isfinite(value) else ""


def _setting_gamma(row: dict[str, Any]) -> Any:
    """The scale a run was given (its schedule's nominal γ, so that an interval or a TV-CFG run sits in the column
    of the scale the sweep named), else its stored effective scale."""
    schedule = (row.get("guider_config") or {}).get("schedule")
    nominal = schedule.get("scale") if isinstance(schedule, dict) else None
    if isinstance(nominal, (int, float)) and not isinstance(nominal, bool):
        return float(nominal)
    gamma = row.get("gamma")
    return gamma if gamma is not None else (row.get("params") or {}).get("scale")


def class_grid_table(name: str, cond: str, rows: Sequence[dict[str, Any]], catalog: Catalog, report_dir: Path) -> str:
    """One class's image grids: a row per method line, a column per scale the sweep named (:func:`_setting_gamma`,
    in order; a run's effective γ is in its caption where it differs), each
    cell the lowest seed's ``grid.png`` linked relative to ``report_dir`` with its accuracy and FD; "—" where
    nothing ran, the error where every run failed."""
    gammas: dict[str, Any] = {}
    cells: dict[tuple[str, str], list[dict[str, Any]]] = {}
    lines: dict[str, Line] = {}
    for r in rows:
        line = catalog.line(r)
        lines.setdefault(line.key, line)
        gamma = _setting_gamma(r)
        key = gamma_text(gamma) or "—"
        gammas.setdefault(key, gamma)
        cells.setdefault((line.key, key), []).append(r)
    columns = sorted(gammas, key=lambda k: gamma_sort(gammas[k]))
    order = {line.key: i for i, line in enumerate(catalog.lines)}
    head = "".join(f'<th scope="col">scale {escape(k)}</th>' for k in columns)
    body = []
    for line in sorted(lines.values(), key=lambda line: order[line.key]):
        label = f'<span class="swatch" style="background:{line.color}"></span>{escape(line.name)}'
        tds = [f'<th scope="row">{label}</th>']
        for k in columns:
            cell = _cell(name, line, k, cond, cells.get((line.key, k), []), report_dir)
            tds.append(f'<td data-gamma="{escape(k)}">{cell}</td>')
        body.append(f'<tr data-label="{escape(line.label)}">{"".join(tds)}</tr>')
    return (
        f'<div class="scroll"><table class="images model-grids" data-cond="{escape(cond)}">'
        f'<thead><tr><th scope="col">method</th>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _cell(name: str, line: Line, gamma: str, cond: str, runs: list[dict[str, Any]], report_dir: Path) -> str:
    if not runs:
        return '<span class="muted">—</span>'
    runs = sorted(runs, key=lambda r: (r.get("seed") is None, r.get("seed") or 0))
    ok = [r for r in runs if r["status"] == "ok"]
    if not ok:
        error = str(runs[0].get("error") or "unknown error")
        short = error if len(error) <= _MAX_ERROR_CHARS else error[: _MAX_ERROR_CHARS - 1] + "…"
        return f'<span class="err" title="{escape(error)}">failed: {escape(short)}</span>'
    run = next((r for r in ok if grid_file(r).is_file()), None)
    if run is None:
        return '<span class="muted">images missing (runs/&lt;hash&gt;/grid.png)</span>'
    metrics = run["metrics"]
    facts = [f"seed {run.get('seed')}" + (f" (of {len(runs)})" if len(runs) > 1 else "")]
    if gamma_text(run.get("gamma")) and gamma_text(run.get("gamma")) != gamma:
        facts.append(f"effective γ {gamma_text(run.get('gamma'))}")
    facts.append(f"accuracy {fmt(metrics.get('accuracy'))}")
    facts.append(f"FD {fd_text(metrics.get('fd', math.nan), metrics.get('fd_floor', math.nan))}")
    if run.get("diverged"):
        facts.append(f"{run['diverged']} of {run.get('n')} diverged")
    failed = len(runs) - len(ok)
    if failed:
        facts.append(f"{failed} failed")
    alt = f"{name}: {line.name}, γ={gamma}, class {cond}"
    src = relative_url(grid_file(run), report_dir)
    return (
        f'<figure><a href="{src}"><img src="{src}" alt="{escape(alt)}" data-figure="model-grid" '
        f'data-key="{escape(str(run["hash"]))}" loading="eager"></a>'
        f"<figcaption>{escape(' · '.join(facts))}</figcaption></figure>"
    )
