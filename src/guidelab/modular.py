"""Any guidelab guider as the ``guider`` component of a diffusers modular pipeline (SD3, SDXL, Flux 2, Wan, LTX,
Qwen-Image and the others that take one): :class:`GuidelabGuidance`, a ``diffusers.guiders.BaseGuidance``.

    mp.update_components(guider=GuidelabGuidance.from_pipeline(mp, "apg", scale=5.0))

Per step the pipeline calls ``set_state(step, num_inference_steps, timestep)``; :attr:`num_conditions` then follows
the guidelab guider's passes at that step (1 where it needs only the conditional prediction: γ = 1, outside an
interval; 2 otherwise), so the pipeline skips the null forward there. The guider's time is the pipeline's step on
the grid of the pipeline's scheduler (read from it where attached, else rebuilt from the scheduler's saved config and
checked against the timesteps the pipeline passes), so λ intervals and TV-CFG weights mean what they mean in
``guidelab generate``. The state x_t that guidelab's rules need is read where the pipeline hands it to the guider
(SD3 passes the latents as ``hidden_states``) or else from the network's input (a forward pre-hook, installed in
``prepare_models`` and removed in ``cleanup_models``: the scaled model input is the state on guidelab's path).
The prediction is converted from the network's output (ε, v, x0, flow velocity) to guidelab's pair and back
(:class:`~guidelab.pipeline_guidance.StepGuidance`), and per-trajectory state is reset at step 0.

The configuration (the guidelab guider's config, the path, the network's output, the scheduler's class and config)
is a diffusers config, so the guider round-trips through ``save_pretrained``/``from_pretrained``.

Guiders whose pair the scheduler cannot step with one prediction (CFG++, thresholding without renoising) or that ask
for other networks are refused with one line that names ``guidelab generate``. Importing this module needs the
``[diffusers]`` extra.
"""

from __future__ import annotations

import copy
from typing import Any

import diffusers
import torch
from diffusers.configuration_utils import register_to_config
from diffusers.guiders import BaseGuidance
from diffusers.guiders.guider_utils import GuiderOutput
from torch import Tensor

from guidelab.guiders.base import Guider
from guidelab.guiders.registry import build_guider
from guidelab.paths import get_path
from guidelab.pipeline_guidance import MODEL_OUTPUTS, StepGuidance, model_output_of
from guidelab.pipelines import pipeline_path
from guidelab.validation import did_you_mean

__all__ = ["GuidelabGuidance"]


class GuidelabGuidance(BaseGuidance):
    """A guidelab guider as a diffusers guider (see the module docstring).

    Args:
        guider: the guidelab guider's configuration (``Guider.config()``: ``{"name": "apg", …}``).
        path: the pipeline's path as ``NoisePath.config()`` (``{"name": "rf"}`` for flow matching).
        model_output: what the network predicts: ``flow``, ``epsilon``, ``v_prediction`` or ``sample``.
        scheduler: ``{"class_name": …, "config": {…}}`` of the pipeline's scheduler, to rebuild its grid where the
            live scheduler is not attached (after ``from_pretrained``).
        start, stop, enabled: diffusers' window in fractions of the steps, and the switch (outside: conditional only).

    Raises:
        ValueError: naming the field, for an unknown guider, path or output; during sampling, naming ``guider``
            (a pair no single prediction represents, another model) or ``timestep`` (a grid that is not the
            scheduler's).
    """

    _input_predictions = ["pred_cond", "pred_uncond"]  # noqa: RUF012 - diffusers' class attribute

    @register_to_config
    def __init__(
        self,
        guider: dict | None = None,
        path: dict | None = None,
        model_output: str = "flow",
        scheduler: dict | None = None,
        start: float = 0.0,
        stop: float = 1.0,
        enabled: bool = True,
    ):
        super().__init__(start, stop, enabled)
        if model_output not in MODEL_OUTPUTS:
            raise ValueError(f"model_output: unknown {model_output!r}{did_you_mean(model_output, MODEL_OUTPUTS)}")
        self.guidelab_guider: Guider = build_guider(**dict(guider or {"name": "cfg"}))
        self.guidelab_path = get_path(**dict(path or {"name": "rf"}))
        self.scheduler_spec = scheduler
        self.live_scheduler: Any = None
        self.core = StepGuidance(self.guidelab_guider, self.guidelab_path, model_output, None)
        self._x_t: Tensor | None = None
        self._hook: Any = None
        self._needs_uncond = True

    @classmethod
    def from_pipeline(cls, pipe: Any, guider: Guider | str = "cfg", **params: Any) -> GuidelabGuidance:
        """The guider for ``pipe`` (a modular or classic pipeline with its network and scheduler loaded), with the
        live scheduler attached."""
        if isinstance(guider, str):
            guider = build_guider(guider, **params)
        elif params:
            raise ValueError("params: give them with a guider name, not with a built guider")
        scheduler = pipe.scheduler
        spec = {"class_name": type(scheduler).__name__, "config": _plain(dict(scheduler.config))}
        out = cls(
            guider=guider.config(),
            path=pipeline_path(pipe).config(),
            model_output=model_output_of(pipe),
            scheduler=spec,
        )
        out.guidelab_guider = guider  # the very object (keeps guide models and state the config cannot carry)
        out.core.guider = guider
        out.attach(scheduler)
        out.core.preflight()  # refuse here a guider the pipeline cannot run, before its first step
        return out

    def attach(self, scheduler: Any) -> GuidelabGuidance:
        """Read the grid from this live scheduler (the pipeline's) at the first step of each run."""
        self.live_scheduler = scheduler
        self.core.scheduler = scheduler  # the core reads its grid (and the preflight its probe grid) from it
        return self

    # --- the diffusers guider protocol ---------------------------------------------------------------------

    def set_state(self, step: int, num_inference_steps: int, timestep: torch.LongTensor) -> None:
        super().set_state(step, num_inference_steps, timestep)
        if step == 0 or self.core.grid is None or self.core.grid.numel() - 1 != num_inference_steps:
            self.core.begin(self._grid_scheduler(num_inference_steps))
        self._check_timestep(step, timestep)
        self._x_t = None
        self._needs_uncond = self.core.needs_uncond(step)

    def _grid_scheduler(self, steps: int) -> Any:
        if self.live_scheduler is not None:
            return self.live_scheduler
        if self.scheduler_spec is None:
            raise ValueError("scheduler: attach the pipeline's scheduler (guider.attach(pipe.scheduler))")
        cls = getattr(diffusers, self.scheduler_spec["class_name"])
        rebuilt = cls.from_config(copy.deepcopy(self.scheduler_spec["config"]))
        rebuilt.set_timesteps(steps)
        return rebuilt

    def _check_timestep(self, step: int, timestep: Any) -> None:
        if timestep is None:
            return
        value = float(torch.as_tensor(timestep).reshape(-1)[0])
        expected = self.core.timesteps[step] if step < len(self.core.timesteps) else None
        if expected is None or abs(expected - value) > 1e-4 * max(1.0, abs(value)):
            raise ValueError(
                f"timestep: the pipeline's step {step} runs at timestep {value:g}, the scheduler's grid has "
                f"{expected}; "
                "attach the pipeline's scheduler (guider.attach(pipe.scheduler)) so that its own grid is read"
            )

    def _enabled_here(self) -> bool:
        if not self._enabled:
            return False
        if self._num_inference_steps is not None:
            first = int(self._start * self._num_inference_steps)
            last = int(self._stop * self._num_inference_steps)
            if not first <= self._step < last:
                return False
        return True

    @property
    def num_conditions(self) -> int:
        return 2 if (self._enabled_here() and self._needs_uncond) else 1

    @property
    def is_conditional(self) -> bool:
        return self._count_prepared == 1

    def prepare_inputs(self, data: dict[str, Any]) -> list[Any]:
        latents = data.get("hidden_states")
        if isinstance(latents, tuple):
            latents = latents[0]
        if isinstance(latents, Tensor):
            self._x_t = latents
        if self.num_conditions == 2 and not any(isinstance(v, tuple) and v[1] is not None for v in data.values()):
            raise ValueError(
                "negative_prompt: the pipeline gave the guider no null conditioning, so the null pass would repeat the "
                'conditional one; call it with a negative prompt (negative_prompt="" for the empty one)'
            )
        indices = [0] if self.num_conditions == 1 else [0, 1]
        return [self._prepare_batch(data, k, name) for k, name in zip(indices, self._input_predictions, strict=False)]

    def prepare_inputs_from_block_state(self, data: Any, input_fields: dict[str, Any]) -> list[Any]:
        if self._x_t is None and isinstance(getattr(data, "latents", None), Tensor):
            self._x_t = data.latents
        indices = [0] if self.num_conditions == 1 else [0, 1]
        return [
            self._prepare_batch_from_block_state(input_fields, data, k, name)
            for k, name in zip(indices, self._input_predictions, strict=False)
        ]

    def prepare_models(self, denoiser: torch.nn.Module) -> None:
        super().prepare_models(denoiser)
        if self._x_t is None and self._hook is None:
            self._hook = denoiser.register_forward_pre_hook(self._read_input, with_kwargs=True)

    def _read_input(self, module: Any, args: tuple, kwargs: dict) -> None:
        x = args[0] if args else kwargs.get("hidden_states", kwargs.get("sample"))
        if self._x_t is None and isinstance(x, Tensor):
            self._x_t = x

    def cleanup_models(self, denoiser: torch.nn.Module) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def forward(self, pred_cond: Tensor, pred_uncond: Tensor | None = None) -> GuiderOutput:
        if not self._enabled_here():
            return GuiderOutput(pred=pred_cond, pred_cond=pred_cond, pred_uncond=pred_uncond)
        if self._x_t is None:
            raise ValueError(
                "x_t: the pipeline gave the guider no latents and the network no input to read them from; run the "
                "guider with guidelab generate"
            )
        x_t = self._x_t
        if x_t.shape != pred_cond.shape:
            raise ValueError(
                f"x_t: the latents {tuple(x_t.shape)} do not match the prediction {tuple(pred_cond.shape)} "
                "(a packed latent layout?); run this pipeline with guidelab generate"
            )
        # also where only the conditional pass ran: a guider may still change it (CFG-Zero*'s zero start)
        pred = self.core.combine(self._step, x_t, pred_cond, pred_uncond if self.num_conditions == 2 else None)
        return GuiderOutput(pred=pred, pred_cond=pred_cond, pred_uncond=pred_uncond)


def _plain(config: dict[str, Any]) -> dict[str, Any]:
    """A scheduler config as plain JSON values (diffusers keeps tuples and numpy scalars)."""
    out = {}
    for key, value in config.items():
        if key.startswith("_"):
            continue
        if isinstance(value, tuple):
            value = list(value)
        if hasattr(value, "item") and not isinstance(value, list):
            value = value.item()
        out[key] = value
    return out
