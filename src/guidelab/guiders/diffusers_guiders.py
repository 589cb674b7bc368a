"""diffusers' own guiders as guidelab guiders (docs/methods.md §10): ``build_guider("diffusers:ClassifierFreeGuidance",
guidance_scale=5.0)`` runs diffusers' implementation inside guidelab's samplers, beside guidelab's own rules, on the
same model, noise, grid and metrics.

Every guider of ``diffusers.guiders`` that combines a conditional and an unconditional prediction is accepted: its
``_input_predictions`` are exactly ``["pred_cond", "pred_uncond"]`` and it leaves the network alone (it does not
override ``prepare_models``). In diffusers 0.42 that is ``ClassifierFreeGuidance``, ``AdaptiveProjectedGuidance``,
``AdaptiveProjectedMixGuidance``, ``ClassifierFreeZeroStarGuidance``, ``TangentialClassifierFreeGuidance``,
``MagnitudeAwareGuidance`` and ``FrequencyDecoupledGuidance`` (which needs kornia and image-shaped predictions).
The others (PAG, SkipLayer, SmoothedEnergy, AutoGuidance, LTX2) perturb the network's attention or layers, or need
predictions of other inputs, and are refused with a ValueError naming ``guider``.

diffusers is an optional extra: this module imports it only when a ``diffusers:`` guider is built or listed, so
``import guidelab.guiders`` never does.
"""

from __future__ import annotations

import inspect
import logging
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any, ClassVar

import torch
from torch import Tensor

from guidelab.guiders.base import COND, UNCOND, GuidedStep, Guider, Pass, Predictions, StepContext
from guidelab.guiders.reductions import upcast
from guidelab.guiders.schedules import Schedule
from guidelab.paths import NoisePath
from guidelab.validation import did_you_mean

__all__ = [
    "PREFIX",
    "DiffusersGuider",
    "describe_diffusers_guiders",
    "diffusers_guider_class",
    "diffusers_guider_names",
    "refused_diffusers_guiders",
]

PREFIX = "diffusers:"
INPUTS = ["pred_cond", "pred_uncond"]  # the predictions of a combine of cond and uncond
_TIMESTEP_SCALE = 1000.0  # set_state's timestep is 1000·t, diffusers' scale (no accepted guider reads it)


def _guiders_module() -> Any:
    """``diffusers.guiders``, or a ValueError naming ``guider`` where diffusers (with guiders, ≥ 0.35) is missing."""
    try:
        import diffusers.guiders as module
    except ImportError as err:
        raise ValueError(
            "guider: the diffusers: guiders need diffusers ≥ 0.35, with its guiders (pip install "
            f"'guidelab[diffusers]'); import failed: {err}"
        ) from None
    return module


@cache
def _catalogue() -> tuple[dict[str, type], dict[str, str]]:
    """(accepted classes by short name, refusal reason by short name) of every guider in ``diffusers.guiders``."""
    module = _guiders_module()
    base = module.BaseGuidance
    accepted: dict[str, type] = {}
    refused: dict[str, str] = {}
    for short, cls in sorted(vars(module).items()):
        if not (isinstance(cls, type) and issubclass(cls, base) and cls is not base):
            continue
        reason = _refusal(cls, base)
        if reason is None:
            accepted[short] = cls
        else:
            refused[short] = reason
    return accepted, refused


def _refusal(cls: type, base: type) -> str | None:
    """Why ``cls`` is not a combine of the conditional and unconditional predictions; None where it is."""
    inputs = list(getattr(cls, "_input_predictions", None) or [])
    extra = [p for p in inputs if p not in INPUTS]
    hooks = cls.prepare_models is not base.prepare_models
    if not hooks and inputs == INPUTS:
        return None
    why = []
    if hooks:
        why.append("perturbs the network (prepare_models hooks its attention or layers)")
    if extra:
        why.append(f"needs {', '.join(extra)} besides pred_cond and pred_uncond")
    if not why:
        why.append(f"takes the predictions {inputs}, not {INPUTS}")
    return (
        f"it {' and '.join(why)}; guidelab wraps only the diffusers guiders that combine a conditional and an "
        "unconditional prediction"
    )


def diffusers_guider_names() -> list[str]:
    """The accepted names, ``diffusers:ClassName``, sorted (imports diffusers; ValueError naming ``guider`` where it
    is missing)."""
    return [PREFIX + short for short in _catalogue()[0]]


def refused_diffusers_guiders() -> dict[str, str]:
    """``diffusers:ClassName`` → why it is refused, for the guiders of diffusers that are not accepted."""
    return {PREFIX + short: reason for short, reason in _catalogue()[1].items()}


@cache
def diffusers_guider_class(name: str) -> type[DiffusersGuider]:
    """The guidelab guider class of ``name`` = ``diffusers:ClassName``: a :class:`DiffusersGuider` whose constructor
    takes the diffusers class's own parameters (so the registry's parameter checks and ``guidelab methods`` read
    them). Raises a ValueError starting ``guider:`` for a name without the prefix, an unknown class (listing the
    accepted ones), a refused one (saying why) or a missing diffusers."""
    if not name.startswith(PREFIX):
        raise ValueError(f"guider: {name!r} is not a diffusers guider name (diffusers:ClassName)")
    short = name[len(PREFIX) :]
    accepted, refused = _catalogue()
    if short in refused:
        raise ValueError(f"guider: {name} is not supported: {refused[short]}")
    if short not in accepted:
        raise ValueError(f"guider: unknown diffusers guider {name!r}{did_you_mean(name, diffusers_guider_names())}")
    return _subclass(name, accepted[short])


def _subclass(name: str, target: type) -> type[DiffusersGuider]:
    signature = inspect.signature(target.__init__)
    params = [p for p in signature.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]

    def __init__(self: DiffusersGuider, **kwargs: Any) -> None:
        DiffusersGuider.__init__(self, target, **kwargs)

    __init__.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    doc = inspect.getdoc(target) or ""
    summary = doc.split("\n\n", 1)[0].replace("\n", " ").strip()
    arxiv = re.search(r"papers/(\d{4}\.\d{4,5})", doc)
    source = (f"arXiv {arxiv.group(1)}; " if arxiv else "") + f"diffusers {target.__name__}"
    return type(
        target.__name__,
        (DiffusersGuider,),
        {
            "__init__": __init__,
            "__doc__": f"diffusers' {target.__name__} as a guidelab guider. {summary}",
            "__module__": __name__,
            "__qualname__": f"DiffusersGuider[{target.__name__}]",
            "name": name,
            "source": source,
        },
    )


@contextmanager
def _quiet_diffusers() -> Iterator[None]:
    """Silence the "Guiders are currently an experimental feature" warning of every diffusers guider's
    constructor (printed once per instance; the wrapper builds one per trajectory)."""
    logger = logging.getLogger("diffusers.guiders.guider_utils")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _split_alternatives(annotation: str) -> list[str]:
    """``"float | list[float] | None"`` → ``["float", "list[float]", "None"]`` (``|`` inside brackets kept)."""
    out, depth, current = [], 0, ""
    for ch in annotation:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "|" and depth == 0:
            out.append(current.strip())
            current = ""
        else:
            current += ch
    out.append(current.strip())
    return [a for a in out if a]


_NO = object()


def _as_type(value: Any, kind: str) -> Any:
    """``value`` as the annotation ``kind`` (numbers as floats where ``float`` is asked: diffusers tells a scalar
    from a list by ``isinstance(x, float)``), or ``_NO`` where it does not fit."""
    if kind == "None":
        return None if value is None else _NO
    if kind == "bool":
        return value if isinstance(value, bool) else _NO
    if kind == "int":
        if isinstance(value, bool):
            return _NO
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value if isinstance(value, int) else _NO
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return _NO
        return float(value)
    if kind == "str":
        return value if isinstance(value, str) else _NO
    match = re.fullmatch(r"(list|tuple)\[(\w+)(?:, \.\.\.)?\]", kind)
    if match:
        if not isinstance(value, list | tuple) or not value:
            return _NO
        items = [_as_type(v, match.group(2)) for v in value]
        return _NO if any(v is _NO for v in items) else items
    return value  # an annotation this check does not read: diffusers checks it


def _checked(key: str, value: Any, annotation: Any) -> Any:
    """``value`` checked against the diffusers parameter's annotation (a string in diffusers' modules); a ValueError
    naming ``key`` where it fits none of the alternatives."""
    if not isinstance(annotation, str):
        return value
    kinds = _split_alternatives(annotation)
    for kind in kinds:
        out = _as_type(value, kind)
        if out is not _NO:
            return out
    raise ValueError(f"{key}: expected {annotation}, got {value!r}")


def _plain(value: Any) -> Any:
    """A parameter value as plain JSON (tuples as lists)."""
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


class DiffusersGuider(Guider):
    """A diffusers guider (``diffusers.guiders``) run as a guidelab guider; built by name,
    ``build_guider("diffusers:ClassName", **its constructor arguments)``.

    At every evaluation the wrapper does what a diffusers pipeline does: ``set_state(step=i,
    num_inference_steps=N, timestep=1000·t)``, then (first evaluation of the step) ``prepare_inputs``, then
    ``forward(pred_cond, pred_uncond).pred``. It combines in the network's **own output space** (the predictions as
    the denoiser gave them: ε for SD, velocity for SD3 and Flux, x0 for guidelab's exact targets; half types are
    upcast to float32 as for every guidelab rule), and the guided prediction becomes the consistent (x0̂, ε̂) pair
    (:meth:`Predictions.pair`)::

        out = forward(c_raw, u_raw)          (c_raw, u_raw: (batch, ...) in the denoiser's space)
        (x0̂, ε̂) = pair(out, space)

    Passes: ``(COND,)`` where the diffusers guider's ``num_conditions`` is 1 at that step (outside its
    ``start``/``stop`` window, a neutral scale, ``enabled=False``), else ``(COND, UNCOND)``; diffusers' window is in
    step indices: guided where ``int(start·N) ≤ i < int(stop·N)``. A step with only the conditional pass still calls
    ``forward`` (CFG-Zero*'s zero-init outranks its window); where it returns the conditional prediction itself, the
    step is the conditional pair. CFG-Zero*'s zero-init steps cost two evaluations, as in diffusers (guidelab's
    ``cfg-zero-star`` asks for none).

    State: :meth:`reset` builds a fresh diffusers instance per batch of trajectories, and ``prepare_inputs`` at
    step 0 starts APG's momentum buffer, as in diffusers. A solver's second evaluation of a step (Heun's corrector,
    DPM++ 2S's midpoint: ``ctx.stage > 0``) reads the momentum buffer without advancing it, so momentum advances
    once per step as in diffusers' one-evaluation-per-step loop and as guidelab's ``apg`` does.

    Scale: ``effective_scale`` (and the ``gamma`` column of ``guidelab schedule``) is the Ho-form γ of each step,
    γ = ``guidance_scale``, or ``guidance_scale + 1`` with ``use_original_formulation=True`` (diffusers' original
    form is ``c + s·(c − u)``), 1 where the step has one pass; APG-Mix's APG steps read
    ``adaptive_projected_guidance_scale``. FrequencyDecoupledGuidance (one scale per frequency band) has none.

    ``config()`` is ``{"name": "diffusers:ClassName", **every constructor argument}`` (lists for tuples), which
    ``build_guider`` rebuilds. Parameters are checked against the diffusers annotations (a ValueError naming the
    parameter); diffusers' own checks come back as a ValueError starting ``guider:``.

    Source: diffusers ``guiders/`` (``guider_utils.BaseGuidance``); docs/methods.md §10 for the measured differences
    from guidelab's own rules.
    """

    name: ClassVar[str] = PREFIX
    space: ClassVar[str] = "model"  # the denoiser's own output space
    source: ClassVar[str] = "diffusers"

    def __init__(self, target: type, **kwargs: Any):
        params = inspect.signature(target.__init__).parameters
        config: dict[str, Any] = {}
        for key, p in params.items():
            if key == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            if key in kwargs:
                config[key] = _checked(key, kwargs[key], p.annotation)
            elif p.default is not inspect.Parameter.empty:
                config[key] = p.default
        unknown = sorted(set(kwargs) - set(config))
        if unknown:
            raise ValueError(
                f"guider {self.name!r}: unknown parameter {unknown[0]!r}{did_you_mean(unknown[0], config)}"
            )
        self._target = target
        self._kwargs = config
        self._inner = self._build()
        self._probe = self._build()  # answers num_conditions for passes() and the scale, never runs forward
        scale = getattr(self._probe, "guidance_scale", None)
        numeric = isinstance(scale, int | float) and not isinstance(scale, bool)
        self.schedule: Schedule | None = _StepScale(self) if numeric else None

    def _build(self) -> Any:
        try:
            with _quiet_diffusers():
                return self._target(**self._kwargs)
        except ImportError as err:  # FrequencyDecoupledGuidance without kornia
            raise ValueError(f"guider: {self.name} cannot be built: {err}") from None
        except (ValueError, TypeError) as err:
            raise ValueError(f"guider: {self.name}: {err}") from None

    @property
    def diffusers_guider(self) -> Any:
        """The diffusers instance that runs ``forward`` (rebuilt by :meth:`reset`)."""
        return self._inner

    def reset(self, batch: int) -> None:
        """A fresh diffusers instance for a new batch of trajectories (APG's momentum starts again)."""
        self._inner = self._build()

    def prepare(self, grid: Tensor, path: NoisePath, denoiser: Any = None) -> None:
        """Run ``prepare_inputs`` once on the probe before sampling, so that its first import of diffusers' modular
        pipelines (about a second) is not counted in the run's wall time."""
        self._probe.set_state(step=0, num_inference_steps=max(grid.numel() - 1, 1), timestep=None)
        self._probe.prepare_inputs({})

    def _set_state(self, guider: Any, ctx: StepContext) -> None:
        timestep = torch.tensor(_TIMESTEP_SCALE * ctx.t, dtype=torch.float64)
        guider.set_state(step=ctx.index, num_inference_steps=ctx.steps, timestep=timestep)

    def passes(self, ctx: StepContext) -> tuple[Pass, ...]:
        self._set_state(self._probe, ctx)
        return (COND,) if self._probe.num_conditions == 1 else (COND, UNCOND)

    def guide(self, preds: Predictions, ctx: StepContext) -> GuidedStep:
        inner = self._inner
        self._set_state(inner, ctx)
        if ctx.stage == 0:
            inner.prepare_inputs({})  # diffusers' per-step preparation: APG's momentum buffer starts at step 0
        cond, space = preds.raw("cond")
        cond = upcast(cond)
        uncond = None
        if "uncond" in preds:
            raw, uncond_space = preds.raw("uncond")
            uncond = upcast(raw) if uncond_space == space else preds.get("uncond", space)
        buffer = getattr(inner, "momentum_buffer", None)
        kept = getattr(buffer, "running_average", None)
        out = inner.forward(cond, uncond).pred
        if ctx.stage > 0 and buffer is not None:
            buffer.running_average = kept  # a corrector reads the momentum without advancing it
        if out is cond:
            return preds.cond_pair()
        return preds.pair(out, space)

    def ho_scale(self, ctx: StepContext) -> float:
        """The Ho-form γ at ``ctx`` (1 where the step has one pass): see the class docstring."""
        probe = self._probe
        self._set_state(probe, ctx)
        if probe.num_conditions == 1:
            return 1.0
        scale = probe.guidance_scale
        if probe.get_state().get("is_apg_enabled"):  # APG-Mix past its CFG steps
            scale = probe.adaptive_projected_guidance_scale
        original = bool(getattr(probe, "use_original_formulation", False))
        return float(scale) + 1.0 if original else float(scale)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, **{k: _plain(v) for k, v in self._kwargs.items()}}

    def __reduce__(self) -> tuple[Any, ...]:  # the class is built at run time: pickle by name and parameters
        return _rebuild, (self.name, self.config())


def _rebuild(name: str, config: dict[str, Any]) -> DiffusersGuider:
    params = {k: v for k, v in config.items() if k != "name"}
    return diffusers_guider_class(name)(**params)


class _StepScale(Schedule):
    """The Ho-form γ of a :class:`DiffusersGuider` at each step (for ``effective_scale`` and ``guidelab schedule``);
    not a registered schedule: the guider's own parameters rebuild it."""

    name = "diffusers"

    def __init__(self, guider: DiffusersGuider):
        self.guider = guider

    def __call__(self, ctx: StepContext) -> float:
        return self.guider.ho_scale(ctx)

    def config(self) -> dict[str, Any]:
        return {}


def describe_diffusers_guiders() -> list[dict[str, Any]]:
    """The accepted diffusers guiders as rows like :func:`~guidelab.guiders.describe.describe_guiders`' (``name``,
    ``space`` = ``"model"``, ``source``, ``summary``, ``parameters`` with diffusers' defaults, ``schedules`` = [])."""
    rows = []
    for name in diffusers_guider_names():
        cls = diffusers_guider_class(name)
        params = {
            k: None if p.default is inspect.Parameter.empty else _plain(p.default)
            for k, p in inspect.signature(cls.__init__).parameters.items()
            if k != "self"
        }
        summary = (cls.__doc__ or "").split(". ", 1)[-1].strip()
        rows.append(
            {
                "name": name,
                "space": cls.space,
                "space_param": False,
                "source": cls.source,
                "summary": summary,
                "parameters": params,
                "schedules": [],
            }
        )
    return rows
