"""guidelab guiders inside a diffusers pipeline's own call: :func:`guided` (classic pipelines) and the per-step core
:class:`StepGuidance` that the modular pipelines' guider (:mod:`guidelab.modular`) shares.

``with guided(pipe, "apg", scale=5): pipe(prompt, guidance_scale=2)`` makes that call use the guidelab guider: the
network the pipeline calls (``pipe.unet`` or ``pipe.transformer``) gets a forward of guidelab's for the duration
(nothing in diffusers is edited; leaving the block restores it). Per step the forward

1. maps the pipeline's timestep to guidelab's time on the pipeline's path (the scheduler's discrete
   ``alphas_cumprod`` or flow matching's σ, :mod:`guidelab.pipelines`), so λ intervals and TV-CFG weights mean what
   they mean in ``guidelab generate``;
2. asks the guider which passes the step needs: where only the conditional one (γ = 1, outside an interval), it runs
   the network on the conditional half of the batch only, and returns that prediction for both halves;
3. otherwise runs the network on the whole batch, converts the model's prediction (ε, v, x0 or flow velocity) to
   guidelab's pair, lets the guider combine, converts the guided pair back, and returns it for **both** halves, so
   that the pipeline's own ``u + s·(c − u)`` returns it unchanged whatever ``guidance_scale`` it was given.

The pipeline decides once whether to double its batch (``guidance_scale > 1``; Flux: ``true_cfg_scale > 1`` with a
negative prompt); the doubled embeddings stay doubled at every step, and a skipped null pass only skips compute.
FluxPipeline calls the conditional and the negative pass as two forwards: the first returns the conditional
prediction, the second the guided one, and overwrites the first in place before the pipeline combines them.

A guider's guided pair must be one the scheduler can step with a single prediction: ``x_t = α·x0̂ + σ·ε̂``. CFG++
(which renoises with the unconditional ε̂) and thresholding without renoising are not; they are refused with a
one-line error that names ``guidelab generate``, where guidelab's own solvers step the pair. So are guiders that
ask for other networks (weak-model guidance) or extra evaluations.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from guidelab.guiders.base import GuidedStep, Guider, Predictions
from guidelab.guiders.context import StepContext
from guidelab.guiders.registry import build_guider
from guidelab.models.adapters import flux_pack, flux_unpack
from guidelab.paths import NoisePath, path_scalars
from guidelab.pipelines import current_grid, family_of, pipeline_path
from guidelab.validation import did_you_mean

__all__ = ["MODEL_OUTPUTS", "StepGuidance", "guided", "model_output_of"]

MODEL_OUTPUTS = ("epsilon", "v_prediction", "sample", "flow")


def model_output_of(pipe: Any) -> str:
    """What the pipeline's network predicts: ``flow`` (SD3, Flux velocity) or the scheduler's ``prediction_type``."""
    if family_of(pipe) in ("sd3", "flux"):
        return "flow"
    return str(pipe.scheduler.config.get("prediction_type", "epsilon"))


class StepGuidance:
    """One guidelab guider driven step by step from inside a pipeline.

    Args:
        guider: the guidelab guider.
        path: the pipeline's path (:func:`guidelab.pipelines.pipeline_path`).
        model_output: the network's output, one of :data:`MODEL_OUTPUTS`.
        scheduler: the pipeline's scheduler, read (never stepped) after the pipeline's ``set_timesteps``.

    Raises:
        ValueError: naming ``guider`` for a guider that needs another network or extra evaluations.
    """

    def __init__(self, guider: Guider, path: NoisePath, model_output: str, scheduler: Any):
        if model_output not in MODEL_OUTPUTS:
            raise ValueError(f"model_output: unknown {model_output!r}{did_you_mean(model_output, MODEL_OUTPUTS)}")
        self.guider = guider
        self.path = path
        self.model_output = model_output
        self.scheduler = scheduler
        self.grid: Tensor | None = None
        self.timesteps: list[float] = []
        self.batch: int | None = None
        self.last_index = -1
        self.calls = 0  # network forwards run under this guidance
        self.uncond_passes = 0  # steps whose null pass ran

    def begin(self, scheduler: Any = None) -> None:
        """Start a trajectory: read the grid the scheduler is set to (by the pipeline, just now; or ``scheduler``, a
        copy set to the same steps) and clear the guider's state."""
        scheduler = scheduler if scheduler is not None else self.scheduler
        self.grid = current_grid(scheduler, self.path)
        self.timesteps = [float(t) for t in torch.as_tensor(scheduler.timesteps).reshape(-1).tolist()]
        self.batch = None
        self.last_index = -1

    def index_of(self, timestep: Tensor | float) -> int:
        """The step whose scheduler timestep is ``timestep`` (the first at or after the last step seen)."""
        if self.grid is None:
            self.begin()
        value = float(torch.as_tensor(timestep).reshape(-1)[0])
        start = max(self.last_index, 0)
        for j in range(start, len(self.timesteps)):
            if abs(self.timesteps[j] - value) <= 1e-6 * max(1.0, abs(value)):
                self.last_index = j
                return j
        raise ValueError(
            f"timestep: {value:g} is not one of the scheduler's timesteps {self.timesteps[:4]}…; the pipeline must "
            "set them with its scheduler before calling the network"
        )

    def context(self, index: int) -> StepContext:
        assert self.grid is not None
        steps = self.grid.numel() - 1
        t = float(self.grid[index])
        a, s, _, _ = path_scalars(self.path, t)
        lam = math.inf if a == 0 else s / a
        return StepContext(index, steps, t, lam, self.grid, self.path)

    def needs_uncond(self, index: int) -> bool:
        """Whether step ``index`` needs the null pass (checks the guider asks only for cond and null passes)."""
        ctx = self.context(index)
        passes = self.guider.passes(ctx)
        for p in passes:
            if p.model is not None or p.name not in ("cond", "uncond"):
                raise ValueError(
                    f"guider: {self.guider.name!r} asks for the pass {p.name!r} of another model; inside a pipeline's "
                    "call only its own network's cond and null passes exist: use guidelab.pipelines.generate(pipe, "
                    "...) or `guidelab generate`"
                )
        return any(p.name == "uncond" for p in passes)

    def preflight(self, steps: int = 8) -> None:
        """Refuse, before the pipeline's call, a guider that cannot run inside it: one that asks for another network
        or extra evaluations, or whose guided pair the scheduler cannot step as one prediction. Probed on random,
        inconsistent predictions at every step of an ``steps``-step grid of the scheduler (on a copy of it); the
        guider's state is cleared afterwards. Other errors are left to the real call, which reports them with its
        own inputs.

        Raises:
            ValueError: naming ``guider``.
        """
        from guidelab.pipelines import scheduler_grid

        saved = (self.grid, self.timesteps, self.last_index)
        self.grid = scheduler_grid(self.scheduler, steps, self.path, image_seq_len=256)
        g = torch.Generator().manual_seed(0)
        try:
            for i in range(steps):
                needs = self.needs_uncond(i)
                x, c, noise = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
                try:
                    self.combine(i, x, c, 0.8 * c + 0.6 * noise if needs else None)
                except ValueError as err:
                    if str(err).startswith("guider:"):
                        raise
                    return  # e.g. a per-sample scale of another length than the probe's batch: the call will tell
        finally:
            self.grid, self.timesteps, self.last_index = saved
            self.batch = None  # the real call resets the guider's state

    def _raw(self, pred: Tensor, x_t: Tensor, t: float) -> tuple[Tensor, str]:
        if self.model_output == "flow":
            return pred, "velocity"
        if self.model_output == "epsilon":
            return pred, "eps"
        if self.model_output == "sample":
            return pred, "x0"
        a, s, _, _ = path_scalars(self.path, t)  # v = α·ε − σ·x0  ⇒  x0 = α·x_t − σ·v
        return x_t * a - pred * s, "x0"

    def _from_pair(self, out: GuidedStep, t: float) -> Tensor:
        a, s, da, ds = path_scalars(self.path, t)
        if self.model_output == "epsilon":
            return out.eps_hat
        if self.model_output == "sample":
            return out.x0_hat
        if self.model_output == "flow":
            return out.x0_hat * da + out.eps_hat * ds
        return out.eps_hat * a - out.x0_hat * s  # v

    def combine(self, index: int, x_t: Tensor, cond: Tensor, uncond: Tensor | None) -> Tensor:
        """The guided prediction, in the network's output space, from its conditional (and null) prediction at
        ``x_t`` (batch, ...) of step ``index``."""
        ctx = self.context(index)
        if self.batch != x_t.shape[0]:
            self.batch = x_t.shape[0]
            self.guider.reset(self.batch)
            assert self.grid is not None
            self.guider.prepare(self.grid, self.path, None)
        raw = {"cond": self._raw(cond, x_t, ctx.t)}
        if uncond is not None:
            raw["uncond"] = self._raw(uncond, x_t, ctx.t)
        scalars = path_scalars(self.path, ctx.t)
        coefficients = self.path.coefficients(torch.tensor(ctx.t, dtype=torch.float64)).expand_as(x_t)
        preds = Predictions(raw, x_t, coefficients, scalars)
        out = self.guider.guide(preds, ctx)
        self._check_consistent(out, x_t, scalars)
        return self._from_pair(out, ctx.t).to(cond.dtype)

    def _check_consistent(self, out: GuidedStep, x_t: Tensor, scalars: tuple[float, float, float, float]) -> None:
        a, s, _, _ = scalars
        if a == 0 or s == 0:
            return
        implied = out.x0_hat.float() * a + out.eps_hat.float() * s
        x = x_t.float()
        tol = (1e-3 if x_t.dtype in (torch.float16, torch.bfloat16) else 1e-4) * (1.0 + float(x.abs().max()))
        if float((implied - x).abs().max()) > tol:
            raise ValueError(
                f"guider: {self.guider.name!r} gives a guided pair (x0̂, ε̂) that no single prediction represents "
                "(it needs the solver step, e.g. CFG++ renoises with the unconditional ε̂); a pipeline's scheduler "
                "steps one prediction: use guidelab.pipelines.generate(pipe, ...) or `guidelab generate`"
            )


def _output_tensor(out: Any) -> Tensor:
    if isinstance(out, tuple):
        return out[0]
    return out.sample


def _with_tensor(out: Any, tensor: Tensor) -> Any:
    if isinstance(out, tuple):
        return (tensor, *out[1:])
    return type(out)(sample=tensor)


def _half(value: Any, batch: int, half: slice) -> Any:
    """``value``'s rows ``half`` where it is a tensor with ``batch`` rows (dicts of them too); else unchanged."""
    if isinstance(value, Tensor) and value.ndim > 0 and value.shape[0] == batch:
        return value[half]
    if isinstance(value, dict):
        return {k: _half(v, batch, half) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_half(v, batch, half) for v in value)
    return value


@contextlib.contextmanager
def guided(pipe: Any, guider: Guider | str = "cfg", **params: Any) -> Iterator[StepGuidance]:
    """Make the pipeline's calls inside the block use a guidelab guider (see the module docstring).

    Call the pipeline with classifier-free guidance switched on (``guidance_scale > 1``; FluxPipeline:
    ``true_cfg_scale > 1`` and a ``negative_prompt``): its value is ignored, the guider's scale is used.

    Args:
        pipe: StableDiffusionPipeline, StableDiffusionXLPipeline, StableDiffusion3Pipeline or FluxPipeline (or any
            pipeline of those families).
        guider: a guidelab guider or a registry name (with ``params``).

    Yields:
        The :class:`StepGuidance`, whose ``calls`` and ``uncond_passes`` count what ran.

    Raises:
        ValueError: naming ``guider`` (another model, an inconsistent pair) or ``guidance_scale`` (the pipeline ran
            without its null pass), during the pipeline's call.
    """
    family = family_of(pipe)
    if family == "dit":
        raise ValueError("pipeline: DiTPipeline guides inside its own loop; use guidelab generate for DiT models")
    if isinstance(guider, str):
        guider = build_guider(guider, **params)
    elif params:
        raise ValueError("params: give them with a guider name, not with a built guider")
    net = pipe.unet if family in ("sd", "sdxl") else pipe.transformer
    scheduler = pipe.scheduler
    core = StepGuidance(guider, pipeline_path(pipe), model_output_of(pipe), scheduler)
    core.preflight()  # a guider that cannot run inside the call is refused here, before any encoding
    forward = net.forward
    set_timesteps = scheduler.set_timesteps

    sequential = family == "flux"
    pending: dict[str, Any] = {}  # Flux: the conditional output of the current step, until its negative pass

    @functools.wraps(set_timesteps)
    def set_timesteps_and_begin(*args: Any, **kwargs: Any) -> Any:
        result = set_timesteps(*args, **kwargs)
        core.begin()
        pending.clear()  # a call that failed between Flux's two passes leaves its step here
        return result

    def guided_forward(*args: Any, **kwargs: Any) -> Any:
        x = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        if family == "flux":
            timestep = torch.as_tensor(timestep) * 1000  # FluxPipeline passes σ = timestep/1000
        index = core.index_of(timestep)
        if sequential:
            return _flux_pass(index, x, args, kwargs)
        batch = x.shape[0]
        # an even batch need not be doubled (two prompts without CFG): ask the pipeline where it can tell
        if batch % 2 or getattr(pipe, "do_classifier_free_guidance", True) is False:
            raise ValueError(
                "guidance_scale: the pipeline ran without its null pass; call it with guidance_scale > 1 (the guidelab "
                "guider sets the scale)"
            )
        n = batch // 2
        uncond_half, cond_half = slice(0, n), slice(n, batch)  # diffusers puts the negative prompt first
        if not core.needs_uncond(index):
            core.calls += 1
            out = forward(*_half(args, batch, cond_half), **_half(kwargs, batch, cond_half))
            g = core.combine(index, x[cond_half], _output_tensor(out), None)  # e.g. CFG-Zero*'s zero start
            return _with_tensor(out, torch.cat([g, g]))
        core.calls += 1
        core.uncond_passes += 1
        out = forward(*args, **kwargs)
        pred = _output_tensor(out)
        g = core.combine(index, x[cond_half], pred[cond_half], pred[uncond_half])
        return _with_tensor(out, torch.cat([g, g]))

    def _flux_pass(index: int, x: Tensor, args: tuple, kwargs: dict) -> Any:
        if pending and pending["index"] != index and pending["needs"] and not pending["done"]:
            raise ValueError(
                "true_cfg_scale: FluxPipeline ran without its negative pass; call it with true_cfg_scale > 1 and a "
                "negative_prompt (the guidelab guider sets the scale)"
            )
        first = not pending or pending["index"] != index or pending["done"]
        if first:  # the conditional pass
            core.calls += 1
            out = forward(*args, **kwargs)
            pending.clear()
            pending.update(index=index, out=_output_tensor(out), needs=core.needs_uncond(index), done=False)
            return out
        pending["done"] = True
        cond = pending["out"]
        if not pending["needs"]:
            h, w = _flux_hw(kwargs)
            g = flux_pack(core.combine(index, flux_unpack(x, h, w), flux_unpack(cond, h, w), None)).to(cond.dtype)
            cond.copy_(g)
            return _with_tensor_like(kwargs, g.clone())
        core.calls += 1
        core.uncond_passes += 1
        out = forward(*args, **kwargs)
        uncond = _output_tensor(out)
        # the guider works on the unpacked latent (batch, C, H, W): unpack, combine, pack
        h, w = _flux_hw(kwargs)
        g = core.combine(index, flux_unpack(x, h, w), flux_unpack(cond, h, w), flux_unpack(uncond, h, w))
        packed = flux_pack(g).to(cond.dtype)
        cond.copy_(packed)  # the pipeline computes neg + s·(cond − neg) = packed
        return _with_tensor(out, packed)

    def _with_tensor_like(kwargs: dict, tensor: Tensor) -> Any:
        return (tensor,) if not kwargs.get("return_dict", True) else _flux_output(tensor)

    # what the instances held before (accelerate's offload hooks set ``forward`` on the module; an outer block)
    patched = ((net, "forward"), (scheduler, "set_timesteps"))
    saved = [(obj, name, vars(obj).get(name, _ABSENT)) for obj, name in patched]
    net.forward = guided_forward
    scheduler.set_timesteps = set_timesteps_and_begin
    try:
        yield core
    finally:
        for obj, name, value in saved:
            if value is _ABSENT:
                delattr(obj, name)
            else:
                setattr(obj, name, value)


_ABSENT = object()


def _flux_hw(kwargs: dict) -> tuple[int, int]:
    """Latent height and width from Flux's image ids (rows ``(0, row, column)`` of the packed 2×2 patches)."""
    ids = kwargs["img_ids"]
    ids = ids[0] if ids.ndim == 3 else ids
    return 2 * (int(ids[:, 1].max()) + 1), 2 * (int(ids[:, 2].max()) + 1)


def _flux_output(tensor: Tensor) -> Any:
    from diffusers.models.modeling_outputs import Transformer2DModelOutput

    return Transformer2DModelOutput(sample=tensor)
