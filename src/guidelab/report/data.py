"""What the report reads: the runs of one or more sweep stores and the reproductions found under a folder,
grouped into the curves the figures draw.

A *line* is one method label at fixed run settings and fixed non-γ parameters; γ (the run's effective scale,
the ``gamma`` column the runner stores: the rectified-flow-time mean of the guider's schedule) varies along it.
A *point* is one line at one γ, averaged over seeds. A row's ``params`` here are the guider's parameters that
differ from their defaults, read from the one stored guider configuration. Colours follow the method label so a
method keeps its colour in every figure; lines of the same label differ by marker and line style.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BETTER",
    "FLOORED",
    "METRIC_ORDER",
    "Catalog",
    "Line",
    "Point",
    "Reproduction",
    "Unfinished",
    "aggregate",
    "find_reproductions",
    "find_stores",
    "finite",
    "gamma_text",
    "load_runs",
    "metric_names",
    "pareto_front",
    "unfinished_runs",
]

# run settings that may vary within a sweep; a line fixes them
# run settings that name a line where they vary among one target's runs; a trained model's weights (its digest:
# a checkpoint rewritten between two sweeps into one folder) are one of them, so two models are never averaged
SETTING_KEYS = (
    "path",
    "path_params",
    "grid",
    "steps",
    "t_min",
    "t_max",
    "grid_params",
    "solver",
    "eta",
    "dtype",
    "model_digest",
)

# the metrics of a trained image model's runs (guidelab.metrics.images), in the order the tables show them
MODEL_METRICS = (
    "accuracy",
    "confidence",
    "fd",
    "precision",
    "recall",
    "density",
    "coverage",
    "vendi",
    "out_of_range",
    "x0_rms",
)
# metrics in the order tables show them; the rest (the image models' floors, ``<metric>_floor``, among them)
# follow alphabetically
METRIC_ORDER = (
    "energy_distance",
    "class_fidelity",
    "class_accuracy",
    "w2",
    "mmd2",
    "vendi",
    "vendi_true",
    "within_mode_variance_ratio",
    "mode_weight_tv",
    "weak_mode_weight",
    "weak_mode_weight_true",
    "mode_coverage",
    "in_support",
    "support_distance_mean",
    "out_of_support",
    "nll",
    "prdc.precision",
    "prdc.recall",
    "prdc.density",
    "prdc.coverage",
    "saturation",
    "pixel_diversity",
    "latent_rms",
    *(m for m in MODEL_METRICS if m != "vendi"),  # vendi sits above, with the exact targets' diversity
    "diverged_fraction",
)
# which direction is better, for the arrows in headers and axis labels (absent: no direction)
BETTER = {
    "energy_distance": "↓",
    "w2": "↓",
    "mmd2": "↓",
    "class_fidelity": "↑",
    "class_accuracy": "↑",
    "mode_weight_tv": "↓",
    "mode_coverage": "↑",
    "in_support": "↑",
    "support_distance_mean": "↓",
    "out_of_support": "↓",
    "nll": "↓",
    "prdc.precision": "↑",
    "prdc.recall": "↑",
    "prdc.density": "↑",
    "prdc.coverage": "↑",
    "diverged_fraction": "↓",
    "saturation": "↓",
    "pixel_diversity": "↑",
    "accuracy": "↑",
    "confidence": "↑",
    "fd": "↓",
    "precision": "↑",
    "recall": "↑",
    "density": "↑",
    "coverage": "↑",
    "out_of_range": "↓",
    "nfe": "↓",
    "wall_time_s": "↓",
    "diverged": "↓",
}

# unbiased distance estimates: ≈ 0 for samples of the truth and then often negative; at or below 0 the report
# says "at the noise floor" (tables) or draws them at a marked floor value (log axes), never a negative distance
FLOORED = ("energy_distance", "mmd2")

_PALETTE = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
    "#7f7f7f",
    "#393b79",
    "#ad494a",
    "#637939",
    "#8c6d31",
    "#7b4173",
    "#3182bd",
)
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")
_LINESTYLES = ("-", "--", ":", "-.")


def finite(value: Any) -> bool:
    """Whether ``value`` is a real, finite number (bools excluded)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _num(value: Any) -> float:
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _compact(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_compact(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_compact(v)}" for k, v in value.items()) + "}"
    return str(value)


def gamma_of(row: dict[str, Any]) -> Any:
    """The effective guidance scale γ of a run (its stored ``gamma``), or None."""
    return row.get("gamma")


def chosen_params(guider_config: dict[str, Any]) -> dict[str, Any]:
    """The parameters of a stored guider configuration that differ from the guider's defaults, flat (the
    schedule's name as ``schedule`` unless it is ``constant``, its parameters beside the guider's)."""
    from guidelab.guiders.registry import guider_parameters

    flat = {k: v for k, v in guider_config.items() if k != "name"}
    schedule = flat.pop("schedule", None)
    if isinstance(schedule, dict):
        flat.update({k: v for k, v in schedule.items() if k != "name"}, schedule=schedule.get("name", "constant"))
    elif schedule is not None:
        flat["schedule"] = schedule
    try:
        defaults = guider_parameters(str(guider_config.get("name")), flat.get("schedule"))
    except ValueError:  # a guider this version does not know: show everything
        defaults = {}
    missing = object()
    return {k: v for k, v in flat.items() if defaults.get(k, missing) != v}


def gamma_text(gamma: Any) -> str:
    """γ as a short label: ``3``, ``1.5``, ``1.781`` (an effective scale to 4 significant digits), ``[1, 2]``;
    empty when absent."""
    if gamma is None:
        return ""
    if isinstance(gamma, float) and math.isfinite(gamma):
        return f"{gamma:.4g}"
    return _compact(gamma)


def gamma_sort(gamma: Any) -> float:
    if isinstance(gamma, list | tuple) and gamma:
        values = [_num(g) for g in gamma]
        return sum(values) / len(values)
    value = _num(gamma)
    return value if math.isfinite(value) else math.inf


def params_text(params: dict[str, Any], skip: Iterable[str] = ()) -> str:
    """``key=value`` pairs, sorted, without the keys in ``skip``."""
    skip = set(skip)
    return ", ".join(f"{k}={_compact(v)}" for k, v in sorted(params.items()) if k not in skip)


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


# --- loading -----------------------------------------------------------------------------------------------


def find_stores(root: Path) -> list[Path]:
    """``root/results.sqlite`` if it exists, else every ``results.sqlite`` below ``root`` (sorted)."""
    top = root / "results.sqlite"
    if top.is_file():
        return [top]
    return sorted(p for p in _walk(root, "results.sqlite"))


def _walk(root: Path, name: str | None = None, suffix: str | None = None) -> Iterable[Path]:
    """Files under ``root``, skipping hidden folders and the per-run folders of sweep outputs."""
    for folder, dirs, files in os.walk(root):
        if "results.sqlite" in files and "runs" in dirs:
            dirs.remove("runs")  # one folder per run: samples and run.json, never a reproduction
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            if (name is not None and f == name) or (suffix is not None and f.endswith(suffix)):
                yield Path(folder) / f


def load_runs(stores: Sequence[Path]) -> list[dict[str, Any]]:
    """Rows of every store (insertion order), each with ``root`` (the sweep folder) and float metrics."""
    from guidelab.experiments.store import ResultStore

    rows = []
    for store in stores:
        for row in ResultStore(store).rows():
            row["root"] = store.parent
            row["guider_config"] = row.get("guider_config") or {"name": row.get("guider")}
            row["params"] = chosen_params(row["guider_config"])
            row["config"] = row.get("config") or {}
            row["metrics"] = {k: _num(v) for k, v in (row.get("metrics") or {}).items()}
            row["label"] = row.get("label") or row.get("guider") or "?"
            rows.append(row)
    return rows


@dataclass(frozen=True)
class Unfinished:
    """Runs of a store's sweep (its ``sweep.json``, the last sweep run into the folder) not yet in its store."""

    folder: Path
    sweep: str
    missing: int
    total: int


def unfinished_runs(stores: Sequence[Path]) -> list[Unfinished]:
    """For every store whose folder's ``sweep.json`` lists runs that the store does not hold (a sweep stopped by
    Ctrl-C, a kill or a crash, and not yet resumed): how many of how many. A ``sweep.json`` that cannot be read or
    no longer validates (written by another version) is skipped: the report never fails on it."""
    from guidelab.experiments.config import SweepConfig
    from guidelab.experiments.store import ResultStore

    out = []
    for store in stores:
        try:
            config = SweepConfig.model_validate(json.loads((store.parent / "sweep.json").read_text()))
            hashes = {spec.hash for spec in config.runs()}
            missing = len(hashes - set(ResultStore(store).statuses()))
        except Exception:  # no sweep.json, one this version cannot rebuild, or a store it cannot read: no note
            continue
        if missing:
            out.append(Unfinished(store.parent, config.name, missing, len(hashes)))
    return out


def metric_names(rows: Iterable[dict[str, Any]]) -> list[str]:
    """Every metric any row has, in :data:`METRIC_ORDER` then alphabetically."""
    seen = {k for row in rows for k in row["metrics"]}
    return [m for m in METRIC_ORDER if m in seen] + sorted(seen - set(METRIC_ORDER))


# --- lines, colours, points --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    """One curve: a method label at fixed settings and fixed non-γ parameters (γ varies along it)."""

    key: str
    label: str
    name: str
    color: str
    marker: str
    linestyle: str


class Catalog:
    """The lines of a set of runs with their colours and styles, stable across every figure of a report."""

    def __init__(self, rows: Sequence[dict[str, Any]]):
        ok = [r for r in rows if r["status"] == "ok"] or list(rows)
        by_target: dict[str, list[dict[str, Any]]] = {}
        for r in ok:
            by_target.setdefault(str(r.get("target")), []).append(r)
        # a setting names the lines where it varies among one target's runs (runs on different targets are never
        # drawn as one line, so a sweep on images at 12 steps does not rename the 32-step lines of another)
        self.varying = [
            k
            for k in SETTING_KEYS
            if any(len({_key(r["config"].get(k)) for r in group}) > 1 for group in by_target.values())
        ]
        labels: list[str] = []
        for r in rows:
            if r["label"] not in labels:
                labels.append(r["label"])
        self.labels = labels
        self.colors = {label: _PALETTE[i % len(_PALETTE)] for i, label in enumerate(labels)}
        # non-γ parameters vary within a label? then they name the line
        self._other_varies = {
            label: len({_key(_others(r["params"])) for r in rows if r["label"] == label}) > 1 for label in labels
        }
        self._lines: dict[str, Line] = {}
        per_label: dict[str, int] = {}
        for r in rows:
            key = self._line_key(r)
            if key in self._lines:
                continue
            i = per_label.get(r["label"], 0)
            per_label[r["label"]] = i + 1
            self._lines[key] = Line(
                key,
                r["label"],
                self._line_name(r),
                self.colors[r["label"]],
                _MARKERS[i % len(_MARKERS)],
                _LINESTYLES[i % len(_LINESTYLES)],
            )

    def settings_text(self, row: dict[str, Any]) -> str:
        return ", ".join(f"{k}={_compact(row['config'].get(k))}" for k in self.varying)

    def _line_key(self, row: dict[str, Any]) -> str:
        return _key([row["label"], [row["config"].get(k) for k in self.varying], _others(row["params"])])

    def _line_name(self, row: dict[str, Any]) -> str:
        extra = [self.settings_text(row)] if self.varying else []
        if self._other_varies[row["label"]]:
            extra.append(params_text(row["params"], skip=("scale",)) or "defaults")
        return row["label"] + (f" ({'; '.join(extra)})" if extra else "")

    def line(self, row: dict[str, Any]) -> Line:
        return self._lines[self._line_key(row)]

    @property
    def lines(self) -> list[Line]:
        return list(self._lines.values())


def _others(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k != "scale"}


@dataclass
class Point:
    """One line at one γ: metric means (and standard deviations over seeds) of its finished runs."""

    line: Line
    gamma: Any
    rows: list[dict[str, Any]] = field(default_factory=list)

    def mean(self, metric: str) -> float:
        values = [v for v in (_value(r, metric) for r in self.rows) if math.isfinite(v)]
        return sum(values) / len(values) if values else math.nan

    def std(self, metric: str) -> float:
        values = [v for v in (_value(r, metric) for r in self.rows) if math.isfinite(v)]
        if len(values) < 2:
            return 0.0
        mu = sum(values) / len(values)
        return math.sqrt(sum((v - mu) ** 2 for v in values) / (len(values) - 1))


def _value(row: dict[str, Any], metric: str) -> float:
    if metric in ("nfe", "wall_time_s", "diverged"):
        return _num(row.get(metric))
    return _num(row["metrics"].get(metric))


def aggregate(rows: Iterable[dict[str, Any]], catalog: Catalog) -> list[Point]:
    """Finished runs grouped by (line, γ) over seeds, in line order then by γ."""
    points: dict[tuple[str, str], Point] = {}
    for r in rows:
        if r["status"] != "ok":
            continue
        line = catalog.line(r)
        key = (line.key, _key(gamma_of(r)))
        points.setdefault(key, Point(line, gamma_of(r))).rows.append(r)
    order = {line.key: i for i, line in enumerate(catalog.lines)}
    return sorted(points.values(), key=lambda p: (order[p.line.key], gamma_sort(p.gamma)))


def pareto_front(xy: Sequence[tuple[float, float]], y_tol: float = 1e-4) -> list[int]:
    """Indices of the points no other point beats in both (lower x, higher y), sorted by x.

    Values of y within ``y_tol`` count as equal, so a saturated fidelity (0.9999996 against 0.9999999) does
    not put every point on the front.
    """
    front = []
    for i, (x, y) in enumerate(xy):
        dominated = any(
            x2 <= x and y2 >= y - y_tol and (x2 < x or y2 > y + y_tol) for j, (x2, y2) in enumerate(xy) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (xy[i][0], -xy[i][1]))


# --- reproductions -----------------------------------------------------------------------------------------


@dataclass
class Reproduction:
    """A reproduction's result file (a JSON object with ``claims``) and the PNG figures beside it."""

    path: Path
    data: dict[str, Any]
    figures: list[Path]

    @property
    def title(self) -> str:
        return str(self.data.get("reproduction") or self.data.get("name") or self.path.stem)


_MAX_JSON_BYTES = 50_000_000


def find_reproductions(root: Path) -> list[Reproduction]:
    """Every JSON object with a ``claims`` entry under ``root``, with the PNGs in its folder.

    A folder with one such file gives it every PNG there; with several, each PNG goes to the file whose stem
    starts its name (the longest such stem), and PNGs no stem claims are shown as the folder's other figures.
    """
    found: dict[Path, list[Reproduction]] = {}
    for file in _walk(root, suffix=".json"):
        if file.name in ("sweep.json", "run.json") or file.stat().st_size > _MAX_JSON_BYTES:
            continue
        try:
            data = json.loads(file.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("claims"), dict | list):
            found.setdefault(file.parent, []).append(Reproduction(file, data, []))
    out = []
    for folder, repros in found.items():
        pngs = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and p.is_file())
        rest = Reproduction(folder, {"reproduction": f"other figures in {folder.name}/", "claims": {}}, [])
        for png in pngs:
            owners = [r for r in repros if len(repros) == 1 or png.stem.startswith(r.path.stem)]
            (max(owners, key=lambda r: len(r.path.stem)) if owners else rest).figures.append(png)
        out.extend(repros)
        if rest.figures:
            out.append(rest)
    return out
