"""Named measurements of a finished run against the exact target, for sweeps and the report.

Each measure takes a :class:`MeasureInput` (the samples, the target, the condition, exact reference
samples) and returns a flat dict of floats, keyed ``name`` or ``name.sub``. Distances are measured
against exact samples of the true conditional drawn with a seed fixed per (target, condition), so every
run of a sweep is compared with the same reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from guidelab import metrics as m
from guidelab.metrics.pairwise import cached_self_distance_mean
from guidelab.targets import Target
from guidelab.validation import did_you_mean

__all__ = ["MEASURES", "MEASURE_KEYS", "MeasureInput", "measure", "measure_of_key", "reference_samples"]

_REFERENCE_SEED = 1_000_003
_DATA_T = 0.0


@dataclass
class MeasureInput:
    x: Tensor  # (n, D) finite samples (diverged ones removed)
    target: Target
    cond: int
    reference: Tensor  # (m, D) exact samples of p(x | cond)
    diverged_fraction: float


def reference_samples(target: Target, cond: int, n: int) -> Tensor:
    """Exact samples of p(x | cond) (or p(x) for the null condition) with a seed fixed per condition."""
    return target.reference_samples(n, cond, _REFERENCE_SEED + 7919 * (cond + 1))


def _num(value: Any) -> float:
    """A metric value as a float; undefined (None) becomes NaN."""
    return float("nan") if value is None else float(value)


def _energy(inp: MeasureInput) -> dict[str, float]:
    # the reference's self-term E‖Y − Y'‖ is the same for every run of a sweep on (target, cond, n): computed
    # once per process, shared by its worker threads (cached by the reference's bytes, so the value is the one
    # computed without cache); large sets use the compiled pairwise loop where available (loaded once per process)
    y_self = cached_self_distance_mean(inp.reference, compiled="auto")
    return {"energy_distance": m.energy_distance(inp.x, inp.reference, y_self=y_self, compiled="auto")}


def _mmd(inp: MeasureInput) -> dict[str, float]:
    return {"mmd2": m.mmd2(inp.x, inp.reference)}


def _w2(inp: MeasureInput) -> dict[str, float]:
    n = min(inp.x.shape[0], inp.reference.shape[0], 4000)
    return {"w2": m.wasserstein2(inp.x[:n], inp.reference[:n])}


def _fidelity(inp: MeasureInput) -> dict[str, float]:
    if inp.cond < 0:
        return {}
    rec = m.class_fidelity(inp.x, inp.target, inp.cond, t=_DATA_T)
    return {"class_fidelity": _num(rec.mean_posterior), "class_accuracy": _num(rec.accuracy)}


def _modes(inp: MeasureInput) -> dict[str, float]:
    rec = m.mode_weights(inp.x, inp.target, inp.cond, t=_DATA_T)
    out = {"mode_weight_tv": _num(rec.tv), "mode_coverage": _num(rec.coverage)}
    true = torch.as_tensor(rec.true_weights)
    if true.numel() < 2:
        return out
    weakest = int(true.argmin())
    out["weak_mode_weight"] = float(torch.as_tensor(rec.sample_weights)[weakest])
    out["weak_mode_weight_true"] = float(true[weakest])
    return out


def _mode_variance(inp: MeasureInput) -> dict[str, float]:
    rec = m.within_mode_variance(inp.x, inp.target, inp.cond, t=_DATA_T)
    ratios = torch.tensor([_num(r) for r in rec.ratio], dtype=torch.float64)
    ratios = ratios[torch.isfinite(ratios)]
    return {"within_mode_variance_ratio": float(ratios.mean()) if ratios.numel() else float("nan")}


def _nll(inp: MeasureInput) -> dict[str, float]:
    rec = m.negative_log_likelihood(inp.x, inp.target, inp.cond, t=_DATA_T)
    return {"nll": _num(rec.nll), "out_of_support": _num(rec.out_of_support_fraction)}


def _support(inp: MeasureInput) -> dict[str, float]:
    if not hasattr(inp.target, "support_contains"):  # no compact support: not applicable, said as NaN
        return {"in_support": math.nan, "support_distance_mean": math.nan}
    rec = m.distance_to_support(inp.x, inp.target, inp.cond)
    return {"in_support": float(rec.in_support_fraction), "support_distance_mean": float(rec.mean)}


def _prdc(inp: MeasureInput) -> dict[str, float]:
    n = min(inp.x.shape[0], inp.reference.shape[0], 5000)
    rec = m.prdc(inp.reference[:n], inp.x[:n])
    return {f"prdc.{k}": float(getattr(rec, k)) for k in ("precision", "recall", "density", "coverage")}


def _vendi(inp: MeasureInput) -> dict[str, float]:
    return {"vendi": m.vendi_score(inp.x), "vendi_true": m.vendi_score(inp.reference)}


def _diverged(inp: MeasureInput) -> dict[str, float]:
    return {"diverged_fraction": inp.diverged_fraction}


MEASURES: dict[str, Callable[[MeasureInput], dict[str, float]]] = {
    "energy_distance": _energy,
    "mmd": _mmd,
    "w2": _w2,
    "class_fidelity": _fidelity,
    "mode_weights": _modes,
    "within_mode_variance": _mode_variance,
    "nll": _nll,
    "support": _support,
    "prdc": _prdc,
    "vendi": _vendi,
    "diverged": _diverged,
}


# the keys each measure writes into a run's metrics (tests/test_tune_config.py checks them against the measures)
MEASURE_KEYS: dict[str, tuple[str, ...]] = {
    "energy_distance": ("energy_distance",),
    "mmd": ("mmd2",),
    "w2": ("w2",),
    "class_fidelity": ("class_fidelity", "class_accuracy"),
    "mode_weights": ("mode_weight_tv", "mode_coverage", "weak_mode_weight", "weak_mode_weight_true"),
    "within_mode_variance": ("within_mode_variance_ratio",),
    "nll": ("nll", "out_of_support"),
    "support": ("in_support", "support_distance_mean"),
    "prdc": ("prdc.precision", "prdc.recall", "prdc.density", "prdc.coverage"),
    "vendi": ("vendi", "vendi_true"),
    "diverged": ("diverged_fraction",),
}


def measure_of_key(key: str) -> str | None:
    """The measure that writes metric ``key`` (``class_accuracy`` → ``class_fidelity``), or None."""
    return next((name for name, keys in MEASURE_KEYS.items() if key in keys), None)


def measure(names: tuple[str, ...] | list[str], inp: MeasureInput) -> dict[str, float]:
    """Every named measure on one run, merged into one flat dict."""
    out: dict[str, float] = {}
    for name in names:
        if name not in MEASURES:
            raise ValueError(f"metrics: unknown metric {name!r}{did_you_mean(name, MEASURES)}")
        out.update(MEASURES[name](inp))
    return out
