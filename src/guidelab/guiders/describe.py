"""Plain-data views of the catalogue for the command line: ``guidelab methods`` and ``guidelab schedule``."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor

from guidelab.guiders.base import Guider, step_contexts
from guidelab.guiders.registry import GUIDERS, guider_parameters
from guidelab.guiders.schedules import SCHEDULES, Schedule
from guidelab.paths import NoisePath, get_path

__all__ = ["describe_guiders", "describe_schedules", "schedule_table"]


def _summary(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    summary = doc.split("\n\n", 1)[0].replace("\n", " ").strip()
    return summary.rstrip(":")  # a summary leading into a formula block ends in ':' or '::'


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Tensor):
        return value.tolist()
    return value


def _defaults(cls: type) -> dict[str, Any]:
    params = inspect.signature(cls.__init__).parameters
    return {
        k: None if p.default is inspect.Parameter.empty else _plain(p.default)
        for k, p in params.items()
        if k != "self" and p.kind is not p.VAR_KEYWORD
    }


def describe_guiders() -> list[dict[str, Any]]:
    """Every registered guider: ``name``, ``space`` (where it combines; ``space_param`` says whether a ``space``
    parameter can change it), ``source`` (arXiv id), ``summary`` (one line), ``parameters`` (name → default,
    with the default ``constant`` schedule's parameters for guiders that take a schedule) and ``schedules``
    (the schedule names it accepts, empty if it has no scale)."""
    out = []  # every built-in guider is registered: importing this module ran the package's __init__
    for name in sorted(GUIDERS):
        cls = GUIDERS[name]
        own = _defaults(cls)
        out.append(
            {
                "name": name,
                "space": cls.space,
                "space_param": "space" in own,
                "source": cls.source,
                "summary": _summary(cls),
                "parameters": {k: _plain(v) for k, v in guider_parameters(name).items()},
                "schedules": sorted(SCHEDULES) if "schedule" in own else [],
            }
        )
    return out


def describe_schedules() -> list[dict[str, Any]]:
    """Every registered schedule: ``name``, ``source``, ``summary`` and ``parameters`` (name → default)."""
    return [
        {
            "name": name,
            "source": SCHEDULES[name].source,
            "summary": _summary(SCHEDULES[name]),
            "parameters": _defaults(SCHEDULES[name]),
        }
        for name in sorted(SCHEDULES)
    ]


def schedule_table(guider: Guider, path: NoisePath | str, grid: Tensor) -> list[dict[str, Any]]:
    """The per-step plan of ``guider`` on ``grid``: one row per step with ``step``, ``t``, ``lam`` (λ = σ/α, may be
    ``inf`` at t = 1), ``gamma`` (the schedule's value: a float, a per-sample list, or ``"n/a"`` for a guider
    without a schedule) and ``passes`` (the pass names joined by ``+``; ``none`` where no evaluation is needed).

    Rows are the first evaluation of each step (stage 0); every schedule here gives a solver's corrector
    evaluation of the same step the same passes.
    """
    path = get_path(path)
    grid = torch.as_tensor(grid, dtype=torch.float64)
    if grid.ndim != 1 or grid.numel() < 2:
        raise ValueError("grid: must be a 1-D tensor of at least 2 times")
    schedule = getattr(guider, "schedule", None)
    rows = []
    for ctx in step_contexts(grid, path):
        gamma: Any = "n/a"
        if isinstance(schedule, Schedule):
            value = schedule(ctx)
            gamma = value.tolist() if isinstance(value, Tensor) else float(value)
        names = [p.name for p in guider.passes(ctx)]
        rows.append(
            {"step": ctx.index, "t": ctx.t, "lam": ctx.lam, "gamma": gamma, "passes": "+".join(names) or "none"}
        )
    return rows
