"""The report's tables as HTML fragments: every run (sortable), the best γ per method, reproduction claims.

Every cell's text goes through :func:`html.escape`; a cell's ``data-v`` holds the value the page's sort
script compares (a number where the column is numeric, empty where the value is missing or not finite).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from html import escape
from typing import Any

from guidelab.report.data import (
    BETTER,
    FLOORED,
    SETTING_KEYS,
    Catalog,
    Point,
    finite,
    gamma_of,
    gamma_sort,
    gamma_text,
    params_text,
)

__all__ = [
    "AT_FLOOR",
    "best_table",
    "claim_items",
    "claims_table",
    "diverged_table",
    "fmt",
    "metric_text",
    "n_diverged",
    "runs_table",
]

# an unbiased distance (data.FLOORED) at or below 0 is shown as this text, never as a negative distance; the
# cell's title attribute and sort value keep the number
AT_FLOOR = "at the floor"
_AT_FLOOR_TIP = "at the noise floor: the unbiased estimate is ≤ 0, so the samples are indistinguishable from exact ones"

_VERDICT_KEYS = ("passed", "pass", "ok", "holds", "holds_with_margin", "satisfied", "result")


def fmt(value: Any) -> str:
    """A value as short text: 4 significant digits for floats, ``nan``/``inf`` spelled out, ``—`` for None."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "−inf"
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    if isinstance(value, dict):
        return ", ".join(f"{k}={fmt(v)}" for k, v in value.items())
    return str(value)


def metric_text(metric: str, value: Any) -> str:
    """A metric's value as short text; an unbiased distance (:data:`FLOORED`) at or below 0 is :data:`AT_FLOOR`."""
    if metric in FLOORED and finite(value) and value <= 0:
        return AT_FLOOR
    return fmt(value)


def _metric_cell(metric: str, value: Any) -> str:
    """A metric's table cell; at the floor (:func:`metric_text`), its number is in the title (hover), not shown."""
    text = metric_text(metric, value)
    if text == AT_FLOOR:
        sort = escape(_sort_value(value))
        tip = escape(f"{metric} = {fmt(value)}: {_AT_FLOOR_TIP}")
        return f'<td class="num floor" data-v="{sort}" title="{tip}">{escape(text)}</td>'
    return _cell(value, text, "num")


def _sort_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if finite(value):
        return repr(float(value))
    if value is None or isinstance(value, float):
        return ""  # missing and NaN sort last
    return str(value)


def _cell(value: Any, text: str | None = None, cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    shown = fmt(value) if text is None else text
    return f'<td{attr} data-v="{escape(_sort_value(value))}">{escape(shown)}</td>'


Column = tuple[str, str, Callable[[dict[str, Any]], Any], str]  # header, tooltip, value getter, css class


def _header(metric: str) -> str:
    arrow = BETTER.get(metric)
    return f"{metric} {arrow}" if arrow else metric


def runs_table(rows: Sequence[dict[str, Any]], catalog: Catalog, metrics: Sequence[str]) -> str:
    """Every run, failed ones with their error text; settings common to all runs go in the caption."""
    settings = [*SETTING_KEYS, "n", "sweep"]

    def setting(row: dict[str, Any], key: str) -> Any:
        return row.get(key, row["config"].get(key)) if key in ("n", "sweep") else row["config"].get(key)

    varying = [k for k in settings if len({json.dumps(setting(r, k), default=str) for r in rows}) > 1]
    common = [k for k in settings if k not in varying and setting(rows[0], k) not in (None, {}, "")] if rows else []
    columns: list[Column] = [("status", "ok or error", lambda r: r["status"], "")]
    if any(r["status"] != "ok" or r.get("error") for r in rows):
        columns.append(("error", "the exception of a failed run", lambda r: r.get("error") or "", "err"))
    columns += [
        ("target", "analytic target, or the pipeline's folder", lambda r: r["target"], ""),
        ("cond", "condition c (a pipeline's prompt or class label)", lambda r: r["cond"], ""),
        ("method", "the sweep's label for the guider", lambda r: r["label"], ""),
        ("guider", "registered guider name", lambda r: r["guider"], ""),
        ("γ", "effective guidance scale (schedule mean)", lambda r: _gamma_value(gamma_of(r)), "num"),
        ("params", "other guider parameters", lambda r: params_text(r["params"], skip=("scale",)), ""),
    ]
    columns += [(k, "run setting", lambda r, k=k: _plain(setting(r, k)), "") for k in varying]
    columns += [
        ("seed", "random seed", lambda r: r.get("seed"), "num"),
        ("NFE ↓", "network evaluations per sample", lambda r: r.get("nfe"), "num"),
        ("diverged ↓", "diverged samples (removed before measuring)", lambda r: r.get("diverged"), "num"),
        ("wall s", "wall time of the run in seconds", lambda r: r.get("wall_time_s"), "num"),
    ]
    columns += [(_header(m), m, lambda r, m=m: r["metrics"].get(m), "metric") for m in metrics]
    columns.append(("hash", "run folder: runs/<hash>", lambda r: r["hash"], "mono"))
    head = "".join(
        f'<th scope="col" title="{escape(tip)}" aria-sort="none"><button type="button">{escape(name)}</button></th>'
        for name, tip, _, _ in columns
    )
    body = []
    for i, r in enumerate(rows):
        color = catalog.colors.get(r["label"], "#000")
        cells = [f'<td class="num" data-v="{i}">{i + 1}</td>']
        for name, _, get, cls in columns:
            value = get(r)
            if name == "method":
                cells.append(
                    f'<td data-v="{escape(str(value))}"><span class="swatch" style="background:{color}"></span>'
                    f"{escape(str(value))}</td>"
                )
            elif name == "γ":
                cells.append(_cell(value, gamma_text(gamma_of(r)) or "—", cls))
            elif cls == "metric":
                cells.append(_metric_cell(name.split(" ")[0], value))
            else:
                cells.append(_cell(value, cls=cls))
        status = "ok" if r["status"] == "ok" else "error"
        body.append(f'<tr class="run {status}" data-hash="{escape(str(r["hash"]))}">{"".join(cells)}</tr>')
    caption = (
        "Common to all runs: " + ", ".join(f"{k} = {fmt(_plain(setting(rows[0], k)))}" for k in common) + ". "
        if common
        else ""
    )
    caption += "Click a column header to sort; click again to reverse. Missing and NaN values sort last."
    return (
        f'<p class="muted">{escape(caption)}</p><div class="scroll"><table class="runs sortable" id="runs-table">'
        f'<thead><tr><th scope="col" aria-sort="none"><button type="button">#</button></th>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _plain(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, dict | list) else value


def _gamma_value(gamma: Any) -> Any:
    if gamma is None:
        return None
    value = gamma_sort(gamma)
    return value if math.isfinite(value) else gamma_text(gamma)


def best_table(points: Sequence[Point], metric: str = "energy_distance", also: Sequence[str] = ()) -> str:
    """Per method line, the γ with the best mean ``metric`` (over seeds) and its other metrics."""
    arrow = BETTER.get(metric, "↓")
    best: dict[str, Point] = {}
    for p in points:
        value = p.mean(metric)
        if not math.isfinite(value):
            continue
        cur = best.get(p.line.key)
        if cur is None or (value < cur.mean(metric) if arrow == "↓" else value > cur.mean(metric)):
            best[p.line.key] = p
    if not best:
        return ""
    cols = [metric, *[m for m in also if m != metric]]
    head = "".join(f"<th>{escape(_header(m))}</th>" for m in cols)
    body = []
    for p in sorted(best.values(), key=lambda p: p.mean(metric) * (1 if arrow == "↓" else -1)):
        seeds = len(p.rows)
        cells = "".join(_metric_cell(m, p.mean(m)) for m in cols)
        body.append(
            f'<tr><td><span class="swatch" style="background:{p.line.color}"></span>{escape(p.line.name)}</td>'
            f"<td>{escape(gamma_text(p.gamma) or '—')}</td>{cells}<td class='num'>{seeds}</td></tr>"
        )
    return (
        f'<table class="best"><caption>Best γ per method by {escape(metric)} ({"lowest" if arrow == "↓" else "highest"}'
        f", mean over seeds)</caption><thead><tr><th>method</th><th>γ</th>{head}<th>runs</th></tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def diverged_table(rows: Sequence[dict[str, Any]], catalog: Catalog) -> str:
    """The finished runs with diverged samples (left out of every metric): method, γ, other parameters, seed,
    how many of n diverged and what was measured; a fully diverged run has no metrics but is listed here.
    Empty when no run diverged."""
    bad = [r for r in rows if r["status"] == "ok" and n_diverged(r) > 0]
    if not bad:
        return ""
    body = []
    for r in sorted(bad, key=lambda r: (catalog.labels.index(r["label"]), gamma_sort(gamma_of(r)), r.get("seed") or 0)):
        d, n = n_diverged(r), r.get("n") or r["config"].get("n")
        total = int(n) if finite(n) else None
        every = total is not None and d >= total
        share = f"{d} of {total}" if total is not None else str(d)
        measured = f"on the {total - d} others" if total else "on the rest"
        measured = "none: every sample diverged" if every else measured
        color = catalog.colors.get(r["label"], "#000")
        body.append(
            f'<tr class="{"all-diverged" if every else "some-diverged"}" data-hash="{escape(str(r["hash"]))}">'
            f'<td><span class="swatch" style="background:{color}"></span>{escape(str(r["label"]))}</td>'
            f"<td>{escape(gamma_text(gamma_of(r)) or '—')}</td>"
            f"<td>{escape(params_text(r['params'], skip=('scale',)) or '—')}</td>"
            f"<td class='num'>{escape(fmt(r.get('seed')))}</td><td class='num'>{escape(share)}</td>"
            f"<td>{escape(measured)}</td></tr>"
        )
    return (
        '<table class="best diverged"><caption>Runs with diverged samples (left out of every metric; a run whose '
        "samples all diverged has no metrics and no point in the plots)</caption><thead><tr><th>method</th>"
        "<th>γ</th><th>params</th><th>seed</th><th>diverged</th><th>metrics</th></tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def n_diverged(row: dict[str, Any]) -> int:
    """Diverged samples of a run: its ``diverged`` column, else the ``n_excluded`` metric, else 0."""
    for value in (row.get("diverged"), row["metrics"].get("n_excluded")):
        if finite(value):
            return int(value)
    return 0


def _verdict(value: Any) -> tuple[bool | None, Any]:
    """A claim's pass/fail (None when it has none) and the value to show."""
    if isinstance(value, bool):
        return value, None
    if isinstance(value, dict):
        for key in _VERDICT_KEYS:
            if isinstance(value.get(key), bool):
                return value[key], {k: v for k, v in value.items() if k != key} or None
    return None, value


def claim_items(claims: dict[str, Any] | list[Any]) -> list[tuple[str, bool | None, Any]]:
    """A reproduction's claims as (name, verdict or None, value to show); a list holds dicts with ``name``."""
    items: list[tuple[str, Any]]
    if isinstance(claims, dict):
        items = [(str(k), v) for k, v in claims.items()]
    else:
        items = []
        for i, c in enumerate(claims):
            if isinstance(c, dict):
                name = c.get("name") or c.get("claim") or f"claim {i + 1}"
                items.append((str(name), {k: v for k, v in c.items() if k not in ("name", "claim")}))
            else:
                items.append((f"claim {i + 1}", c))
    return [(name, *_verdict(value)) for name, value in items]


def claims_table(claims: dict[str, Any] | list[Any]) -> str:
    """A reproduction's claims: name, the numbers it rests on, and ✓/✗ where the claim is a check."""
    items = claim_items(claims)
    values = any(shown is not None for _, _, shown in items)  # plain pass/fail claims: no value column
    body = []
    for name, ok, shown in items:
        verdict = (
            '<td class="pass">✓ holds</td>'
            if ok is True
            else ('<td class="fail">✗ not reproduced</td>' if ok is False else '<td class="muted">—</td>')
        )
        value = f"<td>{escape(fmt(shown))}</td>" if values else ""
        body.append(f"<tr><td><code>{escape(name)}</code></td>{value}{verdict}</tr>")
    head = "<th>claim</th>" + ("<th>value</th>" if values else "") + "<th>verdict</th>"
    return f'<table class="claims"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
