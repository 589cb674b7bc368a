"""CFG++ (Chung et al. 2024, arXiv 2406.08070; docs/methods.md §6): denoise with the guided clean estimate, renoise
with the unconditional noise estimate. A sampler-level method, expressed through the guided pair."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from guidelab.guiders.base import GuidedStep, Pass, Predictions, Scale, ScheduledGuider, StepContext, step_contexts
from guidelab.guiders.combine import keep_neutral
from guidelab.guiders.context import as_batch, per_sample
from guidelab.guiders.registry import register_guider
from guidelab.guiders.schedules import ConstantSchedule, Schedule
from guidelab.paths import NoisePath

__all__ = ["CFGPlusPlus"]


def _check_scale(value: Scale, where: str = "") -> None:
    bad = bool(((value < 0) | (value > 1)).any()) if isinstance(value, Tensor) else not 0 <= value <= 1
    if bad:
        got = value.tolist() if isinstance(value, Tensor) else value
        raise ValueError(f"scale: CFG++'s λ must lie in [0, 1] for every sample, got {got}{where}")


@register_guider
class CFGPlusPlus(ScheduledGuider):
    """CFG++: the pair ``x0̂ = x0̂_u + λ·(x0̂_c − x0̂_u)``, ``ε̂ = ε̂_u``, λ ∈ [0, 1].

    On a DDIM step this is exactly ``x_s = α_s·x0̂_λ + σ_s·ε̂_u`` (denoise guided, renoise unconditional);
    every other sampler consumes the same pair and, where it reads the state, the pair's implied state
    ``x̂ = α_t·x0̂_λ + σ_t·ε̂_u`` rather than x_t (Euler steps ``x̂ + Δt·(α'·x0̂_λ + σ'·ε̂_u)``). So ddim, euler (on
    paths affine in t), euler-ancestral and dpm++2m give CFGpp-diffusion/CFGpp's ``ddim_cfg++``, ``euler_cfg++``,
    ``euler_a_cfg++`` and ``dpm++_2m_cfg++`` steps, and dpm++2s-ancestral ComfyUI's original
    ``sample_dpmpp_2s_ancestral_cfg_pp`` (tests/test_solvers_official_cfgpp.py). ``scale`` is the paper's λ (the
    schedule's value); λ = 1 means unguided here as for every guider (the conditional pair (x0̂_c, ε̂_c), one
    evaluation), not the official (x0̂_c, ε̂_u); λ = 0 is the unconditional model. λ outside [0, 1], scalar or per
    sample, is a ValueError naming ``scale``: at construction for a constant schedule; for any other one at every
    step of the grid before the first network evaluation (:meth:`prepare`, also run by the first :meth:`passes` of a
    grid); and again whenever a step is guided.

    Args:
        schedule: λ(step) ∈ [0, 1]; a number means constant.
    """

    name = "cfg++"
    space = "x0"
    source = "arXiv 2406.08070"
    default_scale = 0.6  # docs/methods.md §9

    def __init__(self, schedule: Schedule | Scale | None = None):
        super().__init__(schedule)
        if isinstance(self.schedule, ConstantSchedule):
            _check_scale(self.schedule.scale)
        self._checked: tuple[Tensor, NoisePath] | None = None

    def prepare(self, grid: Tensor, path: NoisePath, denoiser: Any = None) -> None:
        """Check λ at every step of ``grid`` (N + 1 times) on ``path``: a ValueError naming ``scale`` and the step
        where the schedule leaves [0, 1]."""
        for ctx in step_contexts(grid, path):
            where = f" at step {ctx.index} of {ctx.steps} (t = {ctx.t:g}) from the {self.schedule.name} schedule"
            _check_scale(self.schedule(ctx), where)
        self._checked = (grid, path)

    def passes(self, ctx: StepContext) -> tuple[Pass, ...]:
        checked = self._checked
        if checked is None or checked[0] is not ctx.grid or checked[1] is not ctx.path:
            self.prepare(ctx.grid, ctx.path)  # once per grid, before its first network evaluation
        return super().passes(ctx)

    def combine(self, preds: Predictions, ctx: StepContext, gamma: Scale) -> GuidedStep:
        _check_scale(gamma)
        c, u = preds.get("cond", "x0"), preds.get("uncond", "x0")
        x0_hat = torch.lerp(u, c, per_sample(as_batch(gamma, c), c))
        return keep_neutral(GuidedStep(x0_hat, preds.get("uncond", "eps")), preds, gamma)

    def params(self) -> dict[str, Any]:
        return {}
