"""Learned guidance weights (Learn to Guide, Galashov et al., arXiv 2510.00815; docs/methods.md §4).

At step k of a grid (from ``t_k`` to ``t_{k+1}``) the guider queries the learned network at the step's
two times, ``ω = ω_φ(c, s = t_{k+1}, t = t_k)`` (that is ``(t_k − dt, t_k)``), per sample, and guides the
clean prediction ``x0̂ = x0̂_c + ω·(x0̂_c − x0̂_u)`` (γ = 1 + ω). ω never sees x_t, so the guider evaluates
it for every class and step of the grid in one network call at the first step of a run, then looks up
each sample's class per step (overhead: ``benchmarks/bench_learn.py``). Where ω = 0 for every sample (a
ReLU output can reach it; the null class always does), the unconditional pass is skipped. A solver's
intermediate stage (Heun's corrector) uses the ω of its step.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from guidelab.guiders.base import COND, UNCOND, GuidedStep, Pass, Predictions, ScheduledGuider, StepContext
from guidelab.guiders.context import Scale
from guidelab.guiders.registry import register_guider
from guidelab.guiders.schedules import Schedule
from guidelab.paths import NoisePath
from guidelab.progress import counted

__all__ = ["LearnedGuider", "LearnedSchedule"]


class LearnedSchedule(Schedule):
    """γ = 1 + ω per sample from a :class:`LearnedGuider`'s weights (its classes from ``ctx.cond``). Rebuilt from
    the guider's checkpoint, not from a name: it is not in the schedule registry."""

    name = "learned"

    def __init__(self, guider: LearnedGuider):
        self.guider = guider

    def __call__(self, ctx: StepContext) -> Scale:
        return 1.0 + self.guider.omega(ctx)

    def config(self) -> dict[str, Any]:
        return {"checkpoint": self.guider.checkpoint}


@register_guider
class LearnedGuider(ScheduledGuider):
    """``x0̂ = x0̂_c + ω_φ(c, t_{k+1}, t_k)·(x0̂_c − x0̂_u)`` with ω from a learned checkpoint (arXiv 2510.00815).

    Args:
        checkpoint: a ``weights.pt`` written by :func:`guidelab.learn.learn` (``guidelab learn``), a training
            ``checkpoint.pt`` (its best weights so far) or the output folder holding them.

    The class labels of the samples come from the step context (``ctx.cond``).
    """

    name = "learned"
    space = "x0"
    source = "arXiv 2510.00815"

    def __init__(self, checkpoint: str):
        from guidelab.models.guidance_weights import load_weights

        if checkpoint is None or (isinstance(checkpoint, str) and not checkpoint.strip()):
            raise ValueError("checkpoint: give the path of learned weights (weights.pt or its folder)")
        self.checkpoint = str(checkpoint)
        self.weights, self.meta = load_weights(Path(self.checkpoint))
        self._cache: dict[tuple[int, int], Tensor] = {}
        self._grid_table: tuple[Any, Tensor] | None = None
        super().__init__(LearnedSchedule(self))

    @classmethod
    def from_weights(cls, weights: Any, meta: dict[str, Any] | None = None) -> LearnedGuider:
        """A guider on in-memory :class:`~guidelab.models.guidance_weights.GuidanceWeights` (no checkpoint)."""
        guider = cls.__new__(cls)
        guider.checkpoint = None  # type: ignore[assignment]
        guider.weights, guider.meta = weights.eval(), dict(meta or {})
        guider._cache = {}
        guider._grid_table = None
        ScheduledGuider.__init__(guider, LearnedSchedule(guider))
        return guider

    @property
    def class_names(self) -> list[str]:
        """Class names stored with the weights."""
        return list(self.meta.get("class_names") or [str(c) for c in range(self.weights.num_classes)])

    def prepare(self, grid: Tensor, path: NoisePath, denoiser: Any = None) -> None:
        """Check the weights against the sampled target: learned on another number of classes is an error naming
        ``checkpoint``; on classes of other names (another target) a warning."""
        target = getattr(denoiser, "target", None)
        names = list(getattr(target, "class_names", None) or [])
        if not self.weights.conditional or not names:
            return
        learned = self.class_names
        source = (self.meta.get("learn") or {}).get("target") or "its target"
        if len(learned) != len(names):
            raise ValueError(
                f"checkpoint: learned on {counted(len(learned), 'class', 'classes')} of {source} "
                f"({', '.join(learned)}), but the denoiser's target has {len(names)} ({', '.join(names)})"
            )
        if learned != names:
            warnings.warn(
                f"checkpoint: learned on the classes {learned} of {source}; the denoiser's target has {names}: the "
                "weights are applied by class index",
                UserWarning,
                stacklevel=3,
            )

    def reset(self, batch: int) -> None:
        self._cache.clear()
        self._grid_table = None

    def _labels(self, ctx: StepContext) -> Tensor | None:
        return None if ctx.cond is None else torch.as_tensor(ctx.cond).long().reshape(-1)

    def _table_for(self, ctx: StepContext) -> Tensor:
        """ω for every class and step of ``ctx.grid`` (C, N), computed in one network call per grid."""
        key = (id(ctx.grid), ctx.grid.numel(), float(ctx.grid[0]), float(ctx.grid[-2]), repr(ctx.path))
        cached = getattr(self, "_grid_table", None)
        if cached is None or cached[0] != key:
            cached = (key, self.table(ctx.path, ctx.grid).float())
            self._grid_table = cached
        return cached[1]

    def omega(self, ctx: StepContext) -> Tensor:
        """ω per sample (batch,) at the step of ``ctx``: ``ω_φ(c, t_{k+1}, t_k)`` (a 0-d tensor when the
        weights are conditioning-agnostic and no labels are known)."""
        key = (ctx.index, id(ctx.grid))
        if key not in self._cache:
            column = self._table_for(ctx)[:, ctx.index]  # (C,), computed on the CPU
            labels = self._labels(ctx)
            if labels is not None:
                column = column.to(labels.device)  # the labels live where the samples do
            if not self.weights.conditional:
                omega = column[0] if labels is None else torch.where(labels == -1, 0.0, column[0])
            elif labels is None:
                raise ValueError(
                    "cond: the learned guider needs the samples' class labels, and the step context carries none"
                )
            else:
                if bool(((labels < -1) | (labels >= column.numel())).any()):
                    raise ValueError(
                        f"cond: labels must lie in [-1, {column.numel() - 1}], got {labels.unique().tolist()}"
                    )
                omega = torch.where(labels == -1, 0.0, column[labels.clamp(min=0)])
            self._cache[key] = omega
        return self._cache[key]

    def passes(self, ctx: StepContext) -> tuple[Pass, ...]:
        if self.weights.conditional and self._labels(ctx) is None:
            return (COND, UNCOND)  # a plan without labels (``guidelab schedule``): assume guidance is needed
        return (COND,) if bool((self.omega(ctx) == 0).all()) else (COND, UNCOND)

    def combine(self, preds: Predictions, ctx: StepContext, gamma: Scale) -> GuidedStep:
        """``x0̂_c + ω·(x0̂_c − x0̂_u)``, with ω read directly (γ − 1 would round it)."""
        cond, uncond = preds.get("cond", self.space), preds.get("uncond", self.space)
        omega = self.omega(ctx).to(device=cond.device, dtype=cond.dtype)
        omega = omega.reshape(-1, *([1] * (cond.ndim - 1))) if omega.numel() > 1 else omega.reshape(())
        return preds.pair(cond + omega * (cond - uncond), self.space)

    def table(self, path: NoisePath, grid: Tensor, classes: list[int] | None = None) -> Tensor:
        """ω per class and step, (C, N), at ``(t_{k+1}, t_k)`` of an N-step ``grid`` on ``path`` (one call)."""
        grid = torch.as_tensor(grid, dtype=torch.float64)
        if classes is None:
            classes = list(range(max(self.weights.num_classes, 1)))
        steps = grid.numel() - 1
        labels = torch.tensor(classes, dtype=torch.long).repeat_interleave(steps)  # (C·N,) class-major
        s = grid[1:].repeat(len(classes))
        t = grid[:-1].repeat(len(classes))
        return self.weights.omega(labels, s, t, path).double().reshape(len(classes), steps)

    def schedule_rows(self, path: NoisePath, grid: Tensor) -> list[dict[str, Any]]:
        """One row per step: ``step, t, t_next, lam`` and ``omega[<class>]``, ``gamma[<class>]`` (γ = 1 + ω)."""
        grid = torch.as_tensor(grid, dtype=torch.float64)
        table = self.table(path, grid)
        names = self.class_names if self.weights.conditional else ["all"]
        rows = []
        for k in range(grid.numel() - 1):
            t = float(grid[k])
            row: dict[str, Any] = {
                "step": k,
                "t": t,
                "t_next": float(grid[k + 1]),
                "lam": float(path.lam(torch.tensor(t, dtype=torch.float64))),
            }
            for c, name in enumerate(names):
                row[f"omega[{name}]"] = float(table[c, k])
            for c, name in enumerate(names):
                row[f"gamma[{name}]"] = 1.0 + float(table[c, k])
            rows.append(row)
        return rows

    def effective_scale(self, grid: Tensor, path: NoisePath, cond: int | None = None) -> float | None:
        """γ = 1 + ω̄: ω averaged over the steps of ``grid`` in rectified-flow time, for class ``cond`` (all classes
        for ``None`` or the null condition)."""
        grid = torch.as_tensor(grid, dtype=torch.float64)
        table = self.table(path, grid).double()  # (C, N)
        rows = table[cond : cond + 1] if cond is not None and 0 <= cond < table.shape[0] else table
        s = path.rf_time(grid)
        ds = (s[:-1] - s[1:]).to(rows)
        return 1.0 + float((rows * ds).sum(dim=1).mean() / ds.sum())

    def params(self) -> dict[str, Any]:
        return {"checkpoint": self.checkpoint}

    def config(self) -> dict[str, Any]:
        return {"name": self.name, **self.params()}  # the weights are the schedule
