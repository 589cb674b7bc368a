"""Weak-model guidance: any second denoiser as the guide (autoguidance, Karras et al. 2024, arXiv 2406.02507;
small unconditional nets; docs/methods.md §6), in the general form ``main + Σ_k (γ_k − 1)·(main − guide_k)``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from guidelab.denoiser import Denoiser
from guidelab.guiders._checks import check_choice
from guidelab.guiders.base import COND, GuidedStep, Pass, Predictions, Scale, ScheduledGuider, StepContext, is_neutral
from guidelab.guiders.combine import affine_pair
from guidelab.guiders.context import as_batch, per_sample
from guidelab.guiders.registry import register_guider
from guidelab.guiders.schedules import Schedule, build_schedule
from guidelab.paths import NoisePath
from guidelab.validation import did_you_mean

__all__ = ["GuideSpec", "WeakModelGuidance"]

_CONDS = ("cond", "null")


@dataclass
class GuideSpec:
    """One guide: a named model (``None`` = the main model), the condition it sees, its scale schedule."""

    model: str | None
    cond: str
    schedule: Schedule

    def config(self) -> dict[str, Any]:
        return {"model": self.model, "cond": self.cond, "schedule": self.schedule.spec()}


@register_guider
class WeakModelGuidance(ScheduledGuider):
    """Guidance by one or more guide predictors: ``D̂ = D_main + Σ_k (γ_k − 1)·(D_main − D_k)``.

    With one guide this is ``D_k + γ·(D_main − D_k)``, docs/methods.md §6's ``D₀ + γ(D₁ − D₀)`` in Ho form:

    - CFG: the guide is the main model with the null condition (``guide_model=None, guide_cond="null"``, the
      default);
    - autoguidance (arXiv 2406.02507): a smaller or less-trained version of the main model, same condition
      (``guide_model="weak", guide_cond="cond"``);
    - a small unconditional net: ``guide_model="small", guide_cond="null"``.

    The combination weights sum to 1, so the result is the same in every prediction space; it is formed in the
    models' own space where they share one, else in x0. Each guide has its own schedule; a guide whose γ_k = 1
    for every sample is not evaluated at that step. Guide models must be on the main model's noise path; each
    may predict in its own space.

    Models are given by name so that the config stays plain JSON: pass the name → Denoiser mapping as
    ``models`` (the config leaves it out). To rebuild from a config::

        build_guider(**guider.config(), models={"weak": weak_net})

    Further guides beyond the first go in ``extra_guides``, a list of dicts
    ``{"model": name | None, "cond": "cond" | "null", "schedule": name, **schedule parameters}``.

    Args:
        schedule: γ(step) of the first guide; a number means constant.
        guide_model: name of the first guide's model in ``models``; ``None`` for the main model.
        guide_cond: the condition the first guide sees: ``cond`` (the sample's label) or ``null``.
        extra_guides: further guides, each a dict as above.
        models: name → Denoiser for every guide model named.
    """

    name = "weak-model"
    space = "x0"
    source = "arXiv 2406.02507"
    default_scale = 2.0  # docs/methods.md §9

    def __init__(
        self,
        schedule: Schedule | Scale | None = None,
        guide_model: str | None = None,
        guide_cond: str = "null",
        extra_guides: Sequence[Mapping[str, Any]] | None = None,
        models: Mapping[str, Denoiser] | None = None,
    ):
        self.models: dict[str, Denoiser] = dict(models or {})
        super().__init__(schedule)
        self.guides = [self._spec(guide_model, guide_cond, self.schedule, "guide")]
        for k, extra in enumerate(extra_guides or ()):
            self.guides.append(self._parse_extra(extra, f"extra_guides[{k}]"))
        self._passes = [
            Pass(f"guide{k}", spec.cond, None if spec.model is None else self.models[spec.model])
            for k, spec in enumerate(self.guides)
        ]

    def _spec(self, model: str | None, cond: str, schedule: Schedule, label: str) -> GuideSpec:
        check_choice(f"{label}_cond" if label == "guide" else f"{label}.cond", cond, _CONDS)
        if model is not None:
            if not isinstance(model, str):
                raise ValueError(f"{label}: models are named by a string key of `models`, got {model!r}")
            if model not in self.models:
                tail = did_you_mean(model, self.models, ", ".join(self.models) or "none: give `models`")
                raise ValueError(f"{label}: model {model!r} is not in `models`{tail}")
            if not isinstance(self.models[model], Denoiser):
                raise ValueError(f"models[{model!r}]: not a Denoiser (needs path, prediction and __call__)")
        elif cond == "cond":
            raise ValueError(f"{label}: the main model with the sample's condition is the main prediction itself")
        return GuideSpec(model, cond, schedule)

    def _parse_extra(self, extra: Mapping[str, Any], label: str) -> GuideSpec:
        if not isinstance(extra, Mapping):
            raise ValueError(f"{label}: expected a dict with model, cond, schedule and its parameters, got {extra!r}")
        params = dict(extra)
        model, cond = params.pop("model", None), params.pop("cond", "null")
        schedule = params.pop("schedule", "constant")
        if isinstance(schedule, Schedule):
            if params:
                raise ValueError(f"{label}: unknown keys {sorted(params)} beside a schedule object")
        elif isinstance(schedule, Mapping):
            if params:
                raise ValueError(f"{label}: unknown keys {sorted(params)} beside the schedule block")
            schedule = build_schedule(schedule, f"{label}.schedule")
        else:
            schedule = build_schedule({"name": schedule, **params}, f"{label}.schedule")
        return self._spec(model, cond, schedule, label)

    def prepare(self, grid: Tensor, path: NoisePath, denoiser: Any = None) -> None:
        """Every guide model must be on the sampling ``path``: its prediction is converted between spaces with
        that path's coefficients. A ValueError naming ``models`` otherwise."""
        for key in sorted({spec.model for spec in self.guides if spec.model is not None}):
            model_path = self.models[key].path
            if model_path.config() != path.config():
                raise ValueError(
                    f"models[{key!r}]: the guide model is on path {model_path.config()}, the sampler on "
                    f"{path.config()}; a guide model must share the main model's path"
                )

    def passes(self, ctx: StepContext) -> tuple[Pass, ...]:
        active = [p for p, g in zip(self._passes, self.guides, strict=True) if not is_neutral(g.schedule(ctx))]
        return (COND, *active)

    def guide(self, preds: Predictions, ctx: StepContext) -> GuidedStep:
        active = [(p.name, spec) for p, spec in zip(self._passes, self.guides, strict=True) if p.name in preds]
        if not active:
            return preds.cond_pair()
        if len(active) == 1:  # D_k + γ·(D_main − D_k): one fused combination in the models' own space
            name, spec = active[0]
            return affine_pair(preds, spec.schedule(ctx), base=name)
        main = preds.get("cond", "x0")
        x0_hat = main
        for name, spec in active:
            s = as_batch(spec.schedule(ctx), main)
            x0_hat = x0_hat + per_sample(s - 1, main) * (main - preds.get(name, "x0"))
        return preds.pair(x0_hat, self.space)

    def combine(self, preds: Predictions, ctx: StepContext, gamma: Scale) -> GuidedStep:
        """The first guide alone: ``D_0 + γ·(D_main − D_0)`` (one fused combination in the models' own space)."""
        return affine_pair(preds, gamma, base="guide0")

    def params(self) -> dict[str, Any]:
        first = self.guides[0]
        return {
            "guide_model": first.model,
            "guide_cond": first.cond,
            "extra_guides": [g.config() for g in self.guides[1:]] or None,
        }
