"""The report's sections for a tune folder (``guidelab tune``): read from its ``summary.json``, never from Optuna.

Per tune: the objective and the chosen settings; the **optimisation history** (each trial's value and the best so
far, per method); the **Pareto front** where there are two objectives; Optuna's **parameter importances**
(fANOVA, computed by the tuner at the end); the **held-out table**: each method's tuned setting and its defaults
(and tuned plain CFG beside another method) on the search seeds, which chose the setting, and on held-out seeds,
which did not: a setting that only won by its seeds loses there; the ranking of a comparison; and every trial.

Values are the tuner's: each metric's mean over the trial's runs (conditions × seeds). Unbiased distance estimates
(energy distance, MMD²) may be negative near the truth; they are shown as they are, because the tuner compared them
as they are.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

from guidelab.progress import counted
from guidelab.report import figures
from guidelab.report.data import _walk, finite
from guidelab.report.html import Section, figure, note
from guidelab.report.tables import fmt

__all__ = ["TUNE_INTRO", "find_tunes", "history_figure", "pareto_figure", "tune_sections"]

TUNE_INTRO = """
<div class="intro"><p><strong>Tunes.</strong> Every trial of a tune runs on the same seeds (common random numbers),
so differences between trials are the settings' own; the chosen settings are then re-scored on held-out seeds.
<dl><dt>History</dt><dd>each trial's value (filled: feasible; hollow: breaks a constraint; ×: failed) and the best
feasible value so far.</dd><dt>Held-out</dt><dd>the tuned setting against the method's defaults and tuned CFG, on the
search seeds and on held-out ones; trust the held-out column.</dd></dl></div>
"""

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def find_tunes(root: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every tune summary (``summary.json`` with ``"kind": "guidelab-tune"``) under ``root``, with its folder."""
    out = []
    for file in _walk(root, "summary.json"):
        try:
            data = json.loads(file.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("kind") == "guidelab-tune":
            out.append((file.parent, data))
    return out


def _color(i: int) -> str:
    return _COLORS[i % len(_COLORS)]


def _sign(direction: str) -> float:
    return 1.0 if direction == "minimize" else -1.0


def history_figure(summary: dict[str, Any]) -> bytes:
    """Value per trial and the best feasible value so far, per method; one panel per objective metric."""
    metrics, directions = summary["objective"]["metrics"], summary["objective"]["directions"]
    fig = figures._figure(6.4 * len(metrics) + 1.6, 3.8)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for j, (metric, direction) in enumerate(zip(metrics, directions, strict=True)):
        ax = axes[j]
        low = []
        for i, study in enumerate(summary["studies"]):
            color, trials = _color(i), study["trials"]
            done = [t for t in trials if t["values"] is not None]
            ok = [t for t in done if t["feasible"]]
            bad = [t for t in done if not t["feasible"]]
            ax.scatter([t["number"] for t in ok], [t["values"][j] for t in ok], s=18, color=color, label=study["label"])
            if bad:
                ax.scatter(
                    [t["number"] for t in bad], [t["values"][j] for t in bad], s=18, facecolors="none", edgecolors=color
                )
            low += [t["values"][j] for t in done]
            if not summary["objective"]["pareto"]:
                xs, ys, best = [], [], None
                for t in trials:
                    if t["feasible"] and (best is None or _sign(direction) * t["values"][j] < _sign(direction) * best):
                        best = t["values"][j]
                    if best is not None:
                        xs.append(t["number"])
                        ys.append(best)
                ax.step(xs, ys, where="post", color=color, lw=1.4, alpha=0.8)
            failed = [t["number"] for t in trials if t["values"] is None]
            if failed:
                ax.scatter(failed, [0.0] * len(failed), marker="x", color=color, transform=ax.get_xaxis_transform())
        ax.set_xlabel("trial")
        ax.set_ylabel(f"{metric} ({'lower' if direction == 'minimize' else 'higher'} is better)")
        ax.grid(alpha=0.3)
    figures._legend_outside(axes[-1])
    return figures._png(fig)


def pareto_figure(summary: dict[str, Any]) -> bytes:
    """The trials of two objectives and each method's Pareto front (ringed, joined)."""
    (mx, my), (dx, dy) = summary["objective"]["metrics"], summary["objective"]["directions"]
    fig = figures._figure(7.2, 4.6)
    ax = fig.subplots()
    for i, study in enumerate(summary["studies"]):
        color = _color(i)
        done = [t for t in study["trials"] if t["values"] is not None]
        ok = [t for t in done if t["feasible"]]
        ax.scatter([t["values"][0] for t in ok], [t["values"][1] for t in ok], s=16, color=color, alpha=0.6)
        bad = [t for t in done if not t["feasible"]]
        if bad:
            xs, ys = [t["values"][0] for t in bad], [t["values"][1] for t in bad]
            ax.scatter(xs, ys, s=16, facecolors="none", edgecolors=color, alpha=0.6)
        front = sorted((t for t in done if t["number"] in set(study["front"])), key=lambda t: t["values"][0])
        if front:
            xs, ys = [t["values"][0] for t in front], [t["values"][1] for t in front]
            ax.plot(xs, ys, color=color, lw=1.2, label=f"{study['label']} front ({len(front)})")
            ax.scatter(xs, ys, s=70, facecolors="none", edgecolors=color, linewidths=1.6)
        if study["best"] is not None:
            bx, by = study["best"]["values"]
            ax.scatter([bx], [by], marker="*", s=160, color=color, edgecolors="black", zorder=5)
    ax.set_xlabel(f"{mx} ({'← lower' if dx == 'minimize' else '→ higher'} is better)")
    ax.set_ylabel(f"{my} ({'lower' if dy == 'minimize' else 'higher'} is better)")
    ax.grid(alpha=0.3)
    figures._legend_outside(ax)
    return figures._png(fig)


def importance_figure(summary: dict[str, Any]) -> bytes | None:
    """Optuna's fANOVA importance of each searched parameter, per method and objective metric."""
    bars = [
        (f"{s['label']} · {metric}", param, value)
        for s in summary["studies"]
        for metric, values in (s.get("importances") or {}).items()
        for param, value in values.items()
    ]
    if not bars:
        return None
    fig = figures._figure(7.2, 0.8 + 0.32 * len(bars))
    ax = fig.subplots()
    groups = list(dict.fromkeys(b[0] for b in bars))
    labels = [f"{group}: {param}" for group, param, _ in bars]
    ax.barh(range(len(bars)), [v for _, _, v in bars], color=[_color(groups.index(g)) for g, _, _ in bars])
    ax.set_yticks(range(len(bars)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("importance (fANOVA, share of the objective's variance)")
    ax.grid(axis="x", alpha=0.3)
    return figures._png(fig)


def tune_sections(root: Path, tunes: Sequence[tuple[Path, dict[str, Any]]]) -> list[Section]:
    """One section per tune (see the module docstring)."""
    return [_section(root, i, folder, summary) for i, (folder, summary) in enumerate(tunes)]


def _section(root: Path, i: int, folder: Path, summary: dict[str, Any]) -> Section:
    title = f"Tune: {summary.get('name', 'tune')}"
    try:
        where = str(folder.relative_to(root)) or "."
    except ValueError:
        where = str(folder)
    studies = summary.get("studies") or []
    trials = sum(len(s["trials"]) for s in studies)
    parts = [
        f"<p class='muted'>Folder {escape(where)}; objective: {escape(summary['objective']['text'])}; "
        f"search: {escape(str(summary.get('search_method')))}, {counted(trials, 'trial')} over "
        f"{counted(len(studies), 'method')}; search seeds {escape(fmt(summary.get('seeds')))}, held-out seeds "
        f"{escape(fmt(summary.get('heldout_seeds')))}.</p>"
    ]
    if not summary.get("complete"):
        parts.append(note("This tune has not finished (killed, or still running): run the same command to resume it."))
    if summary.get("best_file"):
        parts.append(
            f"<p>Best setting ({escape(str(summary.get('best_study')))}): <code>{escape(summary['best_file'])}</code>"
            " — use it with <code>--guider-file</code> in <code>guidelab sample</code>, <code>run</code> or "
            "<code>generate</code>.</p>"
        )
    if summary.get("baseline"):
        b = summary["baseline"]
        shown = {k: v for k, v in b["metrics"].items() if k in _constraint_metrics(summary)}
        parts.append(
            f"<p class='muted'>Baseline {escape(fmt(b['guider']))} on the search seeds: {escape(fmt(shown))}.</p>"
        )
    if trials:
        parts.append("<h3>Optimisation history</h3>")
        parts.append(
            figure(
                history_figure(summary),
                f"objective value per trial, {title}",
                "Filled: feasible; hollow: a constraint is broken; ×: failed. Line: the best feasible value so far.",
                "tune-history",
                str(summary.get("name")),
            )
        )
        if summary["objective"]["pareto"]:
            parts.append("<h3>Pareto front</h3>")
            parts.append(
                figure(
                    pareto_figure(summary),
                    f"Pareto front, {title}",
                    "Ringed and joined: the front (no feasible trial is better in both); star: the chosen compromise "
                    "(nearest the ideal point with both objectives scaled to [0, 1] over the front).",
                    "tune-pareto",
                    str(summary.get("name")),
                )
            )
    parts.append("<h3>Parameter importances</h3>")
    png = importance_figure(summary)
    if png is not None:
        parts.append(figure(png, f"parameter importances, {title}", "Optuna's fANOVA (seeded).", "tune-importance"))
    reasons = [f"{s['label']}: {s['importances_note']}" for s in studies if s.get("importances_note")]
    if reasons:
        parts.append(note("No importances for " + "; ".join(reasons) + "."))
    elif png is None:
        parts.append(note("Importances are computed when the tune finishes."))
    parts.append("<h3>Held-out seeds</h3>")
    parts.append(heldout_table(summary))
    if len(summary.get("ranking") or []) > 1:
        parts.append("<h3>Ranking</h3>")
        parts.append(ranking_table(summary))
    parts.append("<h3>Trials</h3>")
    parts.append(trials_table(summary))
    return Section(f"tune-{i}", title, "".join(parts))


def _constraint_metrics(summary: dict[str, Any]) -> list[str]:
    return list(summary["objective"].get("constraint_metrics") or [])


def _num_cell(value: Any, cls: str = "num") -> str:
    v = value if finite(value) else ""
    return f"<td class='{cls}' data-v='{v}'>{escape(fmt(value))}</td>"


def heldout_table(summary: dict[str, Any]) -> str:
    """Each method's tuned setting and defaults: the objective (and constraint metrics) on the search seeds and on
    the held-out seeds."""
    entries = summary.get("heldout") or []
    if not entries:
        return note("The held-out re-scoring runs when the search ends.")
    metrics = summary["objective"]["metrics"]
    extra = [m for m in _constraint_metrics(summary) if m not in metrics]
    head = "".join(
        f"<th>{escape(m)} ({escape(part)})</th>" for m in metrics + extra for part in ("search seeds", "held-out")
    )
    body = []
    for e in entries:
        what = "tuned" if e["setting"] == "tuned" else "defaults"
        name = f"{e['study']} {what}" + (" (reference)" if e.get("reference") else "")
        cells = []
        for m in metrics + extra:
            for part in ("search", "heldout"):
                cells.append(_num_cell((e[part].get("metrics") or {}).get(m, math.nan)))
        feasible = "".join(
            f"<td>{'yes' if e[p]['feasible'] else ('failed' if e[p]['values'] is None else 'no')}</td>"
            for p in ("search", "heldout")
        )
        trial = "" if e.get("trial") is None else f" (trial {e['trial']})"
        body.append(
            f"<tr><td>{escape(name)}{escape(trial)}</td><td class='mono'>{escape(fmt(e['guider']['params']))}</td>"
            f"{''.join(cells)}{feasible}</tr>"
        )
    return (
        "<div class='scroll'><table class='best heldout'><caption>Search seeds chose the setting; held-out seeds did "
        "not.</caption><thead><tr><th>setting</th><th>parameters</th>"
        f"{head}<th>feasible (search)</th><th>feasible (held-out)</th></tr></thead><tbody>{''.join(body)}"
        "</tbody></table></div>"
    )


def ranking_table(summary: dict[str, Any]) -> str:
    """The compared methods by their tuned setting's held-out objective (feasible first)."""
    metric = summary["objective"]["metrics"][0]
    rows = "".join(
        f"<tr><td class='num'>{r['rank']}</td><td>{escape(r['study'])}</td>{_num_cell(r['heldout'])}"
        f"{_num_cell(r['search'])}<td>{'yes' if r['heldout_feasible'] else 'no'}</td>"
        f"<td class='mono'>{escape(fmt(r['guider']['params']))}</td></tr>"
        for r in summary["ranking"]
    )
    return (
        "<table class='best ranking'><caption>Same budget, objective and seeds for every method.</caption><thead><tr>"
        f"<th>rank</th><th>method</th><th>{escape(metric)} (held-out)</th><th>{escape(metric)} (search seeds)</th>"
        f"<th>feasible (held-out)</th><th>tuned parameters</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def trials_table(summary: dict[str, Any]) -> str:
    """Every trial of every method (sortable)."""
    metrics = summary["objective"]["metrics"]
    extra = [m for m in _constraint_metrics(summary) if m not in metrics]
    params = list(dict.fromkeys(k for s in summary["studies"] for t in s["trials"] for k in t["params"]))
    head = "".join(f"<th><button>{escape(h)}</button></th>" for h in ["method", "trial", *params, *metrics, *extra])
    body = []
    for s in summary["studies"]:
        best = (s.get("best") or {}).get("number")
        for t in s["trials"]:
            cls = " class='error'" if t["values"] is None else ""
            star = " ★" if t["number"] == best else ""
            cells = [
                f"<td>{escape(s['label'])}</td>",
                f"<td class='num' data-v='{t['number']}'>{t['number']}{star}</td>",
            ]
            cells += [
                _num_cell(t["params"].get(p))
                if _is_number(t["params"].get(p))
                else f"<td>{escape(fmt(t['params'].get(p)))}</td>"
                for p in params
            ]
            cells += [_num_cell(t["metrics"].get(m, math.nan)) for m in metrics + extra]
            body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return (
        "<div class='scroll'><table class='runs sortable tune-trials'><thead><tr>"
        f"{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
