"""diffusers networks as guidelab denoisers: one thin class per family, in the way k-diffusion's ``external.py``
wraps foreign networks (crowsonkb/k-diffusion, ``k_diffusion/external.py``).

Each adapter is a :class:`~guidelab.denoiser.Denoiser` ``(x_t, t, cond) -> prediction`` on a guidelab path:

- :class:`UNetDenoiser`: ``UNet2DConditionModel`` (SD 1.x/2.x, SDXL with its added conditioning) and
  ``UNet2DModel`` (DDPM/DDIM-trained class-conditional or unconditional models), ε-, v- or sample-prediction, on
  the scheduler's discrete ``alphas_cumprod`` (:class:`~guidelab.paths.DiscreteVPPath`);
- :class:`DiTDenoiser`: class-conditional DiT transformers (learned-σ channels dropped), null class = the number
  of classes;
- :class:`SD3Denoiser`, :class:`FluxDenoiser`: flow-matching velocity transformers on the ``rf`` path, where
  guidelab's t is the scheduler's (shifted) σ, ``x_t = (1 − σ)·x0 + σ·ε`` and the network's velocity is
  ``dx/dσ = ε − x0``; Flux's 2×2 latent packing, image ids and distilled-guidance embedding are handled inside,
  so the guidelab state stays an image-shaped latent (batch, C, H, W).

The network's timestep is the scheduler's: ``N·t − 1`` on a discrete path (an integer at the scheduler's own
times), ``σ·N`` for SD3, ``σ`` for Flux (whose transformer multiplies by 1000 itself).

**Conditions.** Class-conditional models take class labels (``NULL_COND`` → the model's null class). Text models
take a :class:`ConditionTable`: label i ≥ 0 selects row i (a prompt's embeddings, pooled embeddings, SDXL's time
ids, …); a null label selects a null row (the negative or empty prompt): ``NULL_COND`` the first, and
``−2 − i`` prompt i's own negative where each prompt has one (:meth:`ConditionTable.null_cond`, which the sampler
calls to label the unconditional pass). The conditional and null passes of one step arrive as one batch and run
as **one forward**; ``max_batch`` splits larger batches into forwards of at most that many samples (memory).

Predictions: ε-models return ``"eps"``; v-prediction (Salimans & Ho's ``v = α·ε − σ·x0``) and sample-prediction
models return ``"x0"`` (``x0 = α·x_t − σ·v``), defined at every noise level, also at a zero terminal SNR; flow
models return ``"velocity"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from guidelab.denoiser import NULL_COND, as_cond
from guidelab.paths import DiscreteVPPath, NoisePath, RectifiedFlowPath
from guidelab.validation import did_you_mean

__all__ = [
    "PREDICTION_TYPES",
    "ConditionTable",
    "DiTDenoiser",
    "DiffusersDenoiser",
    "FluxDenoiser",
    "SD3Denoiser",
    "UNetDenoiser",
    "flux_pack",
    "flux_unpack",
]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


class ConditionTable:
    """Per-condition model inputs, by name: row i of every tensor in ``cond`` belongs to condition (prompt) i; the
    rows of ``null`` to the null condition, one row for all prompts or one per prompt.

    Args:
        cond: name → tensor (P, ...) (e.g. ``encoder_hidden_states`` (P, L, D), ``pooled_projections`` (P, D')).
        null: the same names → tensor (1, ...) or (P, ...) with the same trailing shapes.

    Raises:
        ValueError: naming ``null`` or the tensor when names, row counts or trailing shapes disagree.
    """

    def __init__(self, cond: Mapping[str, Tensor], null: Mapping[str, Tensor]):
        if not cond:
            raise ValueError("cond: give at least one conditioning tensor")
        if set(cond) != set(null):
            raise ValueError(f"null: names {sorted(null)} differ from the conditional ones {sorted(cond)}")
        rows = {v.shape[0] for v in cond.values()}
        if len(rows) != 1:
            raise ValueError(f"cond: tensors have different row counts {sorted(rows)}")
        self.num_conditions = rows.pop()
        null_rows = {v.shape[0] for v in null.values()}
        if len(null_rows) != 1 or null_rows.pop() not in (1, self.num_conditions):
            raise ValueError(f"null: need 1 row or {self.num_conditions} rows (one per prompt) in every tensor")
        for name, value in cond.items():
            if tuple(null[name].shape[1:]) != tuple(value.shape[1:]):
                raise ValueError(
                    f"null: {name} has shape {tuple(null[name].shape[1:])} per row, the conditional one "
                    f"{tuple(value.shape[1:])} (pad both prompts to the same length)"
                )
        self.cond = dict(cond)
        self.null = dict(null)
        self.per_prompt_null = next(iter(null.values())).shape[0] > 1
        # One stacked table per name, the conditional rows then the null rows, so that a step's rows are one
        # indexing per tensor (no masked select of the embeddings every step).
        self._stacked = {k: torch.cat([v, self.null[k].to(v.device)]) for k, v in self.cond.items()}

    def null_cond(self, cond: Tensor) -> Tensor:
        """The null label of each sample's condition: ``−2 − i`` (prompt i's negative) where each prompt has its
        own null row, else ``NULL_COND``."""
        if not self.per_prompt_null:
            return torch.full_like(cond, NULL_COND)
        return torch.where(cond >= 0, -2 - cond, cond)

    def rows(self, labels: Tensor) -> Tensor:
        """The rows of ``labels`` (batch,) in the stacked table ``[cond; null]``: label i ≥ 0 → i, a null label
        → P + its null row (``NULL_COND`` → the first, ``−2 − i`` → prompt i's where each prompt has its own).

        Raises:
            ValueError: naming ``cond`` for a label beyond the last prompt or a null label naming no prompt.
        """
        p = self.num_conditions
        low = -1 - p if self.per_prompt_null else None  # the smallest valid null label
        bad = labels >= p if low is None else (labels >= p) | (labels < low)
        if bool(bad.any()):  # one check (one device sync) per step; the message is worked out only on failure
            if bool((labels >= p).any()):
                raise ValueError(f"cond: label {int(labels.max())} but only {p} conditions (prompts 0 … {p - 1})")
            raise ValueError(f"cond: null label {int(labels.min())} names no prompt's negative ({p} prompts)")
        if self.per_prompt_null:
            return torch.where(labels >= 0, labels, p + (-labels - 2).clamp_min(0))
        return torch.where(labels >= 0, labels, p)

    def gather(self, labels: Tensor) -> dict[str, Tensor]:
        """The rows of ``labels`` (batch,): name → tensor (batch, ...)."""
        rows = self.rows(labels)
        out = {}
        for name, value in self._stacked.items():
            if rows.device != value.device:
                rows = rows.to(value.device)
            out[name] = value.index_select(0, rows)
        return out

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> ConditionTable:
        """The table on ``device`` with floating tensors in ``dtype``."""

        def move(v: Tensor) -> Tensor:
            return v.to(device=device, dtype=dtype if v.is_floating_point() else None)

        return ConditionTable({k: move(v) for k, v in self.cond.items()}, {k: move(v) for k, v in self.null.items()})


class DiffusersDenoiser:
    """The common part of the adapters: checks, dtype and device of the network, chunked forwards.

    Attributes:
        module: the wrapped network (a ``torch.nn.Module``).
        path, prediction: the :class:`~guidelab.denoiser.Denoiser` contract.
        max_batch: largest batch of one forward (None: the whole batch, the cond and null passes together).
        data_scale: coordinate scale of the latents (1: diffusers' latents are scaled to unit variance).
    """

    data_scale = 1.0

    def __init__(self, module: Any, path: NoisePath, prediction: str, max_batch: int | None = None):
        if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1):
            raise ValueError(f"max_batch: must be an integer ≥ 1 or None, got {max_batch!r}")
        self.module = module
        self.path = path
        self.prediction = prediction
        self.max_batch = max_batch

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype

    def __call__(self, x_t: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        """Predict for ``x_t`` (batch, C, H, W) at times ``t`` (batch,) under labels ``cond`` (batch,)."""
        if x_t.ndim != 4:
            raise ValueError(f"x_t: expected a latent batch (batch, C, H, W), got shape {tuple(x_t.shape)}")
        n = x_t.shape[0]
        labels = as_cond(cond, n, x_t.device)
        t = torch.as_tensor(t, device=x_t.device).reshape(-1).expand(n)
        size = self.max_batch or n
        dtype = self.dtype
        outs = []
        for lo in range(0, n, size):
            hi = min(lo + size, n)
            xs, ts, ls = (x_t, t, labels) if hi - lo == n else (x_t[lo:hi], t[lo:hi], labels[lo:hi])
            out = self._forward(xs.to(dtype), ts, ls)
            outs.append(self._to_prediction(out.to(x_t.dtype), xs, ts))
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def _forward(self, x: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        raise NotImplementedError

    def _to_prediction(self, out: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        return out


class _DiscreteMixin(DiffusersDenoiser):
    """ε/v/sample prediction on a discrete VP path: v and sample predictions become x0."""

    prediction_type: str

    def _init_prediction(self, prediction_type: str) -> str:
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"prediction_type: unknown {prediction_type!r}{did_you_mean(prediction_type, PREDICTION_TYPES)}"
            )
        self.prediction_type = prediction_type
        return "eps" if prediction_type == "epsilon" else "x0"

    def timesteps(self, t: Tensor) -> Tensor:
        """The network's timesteps at guidelab times ``t`` (batch,)."""
        assert isinstance(self.path, DiscreteVPPath)
        steps = self.path.timestep(t.to(torch.float64))
        top = self.path.num_train_timesteps - 1
        if bool(((steps > top + 1e-6) | (steps < -1e-6)).any()):  # one check: one device sync per step
            raise ValueError(
                f"t: the network was trained on timesteps 0 … {top}; t = {float(t.max()):.6g} asks for timestep "
                f"{float(steps.max()):.6g} (grids on a discrete path must stay within t ∈ [1/N, 1], or end at t = 0 "
                "only after the last evaluation)"
            )
        return steps

    def _to_prediction(self, out: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        if self.prediction_type == "v_prediction":
            c = self.path.coefficients(t.to(torch.float64)).expand_as(x_t)
            return c.alpha * x_t - c.sigma * out
        return out


def _timestep_input(steps: Tensor, like: Tensor) -> Tensor:
    """Integer timesteps as int64 (as the pipelines pass them), fractional ones as float32."""
    if bool((steps == steps.round()).all()):
        return steps.to(device=like.device, dtype=torch.long)
    return steps.to(device=like.device, dtype=torch.float32)


class UNetDenoiser(_DiscreteMixin):
    """A diffusers UNet on its scheduler's discrete path.

    Args:
        unet: ``UNet2DConditionModel`` (give ``conditions``) or ``UNet2DModel`` (class labels, or none).
        path: the scheduler's path (:meth:`DiscreteVPPath.from_scheduler`).
        prediction_type: the scheduler's ``prediction_type``: ``epsilon``, ``v_prediction`` or ``sample``.
        conditions: for text models, a :class:`ConditionTable` with ``encoder_hidden_states`` (P, L, D) and, for
            SDXL, ``text_embeds`` (P, D') and ``time_ids`` (P, 6).
        null_class: for class-conditional ``UNet2DModel``: the label of the null class (default: the last row of
            its class embedding, ``num_class_embeds − 1``).
        max_batch: largest batch of one forward.
    """

    def __init__(
        self,
        unet: Any,
        path: DiscreteVPPath,
        *,
        prediction_type: str = "epsilon",
        conditions: ConditionTable | None = None,
        null_class: int | None = None,
        max_batch: int | None = None,
    ):
        _require_discrete(path)
        super().__init__(unet, path, "eps", max_batch)
        self.prediction = self._init_prediction(prediction_type)
        self.conditions = conditions
        self.text = getattr(unet.config, "cross_attention_dim", None) is not None
        if self.text and conditions is None:
            raise ValueError("conditions: a cross-attention UNet needs prompt embeddings (a ConditionTable)")
        num_class_embeds = getattr(unet.config, "num_class_embeds", None)
        self.num_classes = None if num_class_embeds is None else int(num_class_embeds) - 1
        self.null_class = null_class if null_class is not None else self.num_classes
        if conditions is not None:
            self.null_cond = conditions.null_cond

    def _forward(self, x: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        timestep = _timestep_input(self.timesteps(t), x)
        if self.text:
            assert self.conditions is not None
            rows = self.conditions.gather(labels)
            added = {k: rows[k] for k in ("text_embeds", "time_ids") if k in rows}
            return self.module(
                x,
                timestep,
                encoder_hidden_states=rows["encoder_hidden_states"],
                added_cond_kwargs=added or None,
                return_dict=False,
            )[0]
        class_labels = None
        if self.num_classes is not None:
            class_labels = _class_labels(labels, self.num_classes, self.null_class)
        return self.module(x, timestep, class_labels=class_labels, return_dict=False)[0]


class DiTDenoiser(_DiscreteMixin):
    """A class-conditional DiT (``DiTTransformer2DModel`` or DiT's ``Transformer2DModel``) on its scheduler's
    discrete path. The learned-σ channels (``out_channels = 2·in_channels``) are dropped; the null class is the
    number of classes (``num_embeds_ada_norm``), as in DiT's label embedding with its dropout row.

    Args:
        transformer: the DiT network.
        path: the scheduler's path.
        prediction_type: ``epsilon`` (DiT) or ``v_prediction``/``sample``.
        num_classes: default ``transformer.config.num_embeds_ada_norm``.
        max_batch: largest batch of one forward.
    """

    def __init__(
        self,
        transformer: Any,
        path: DiscreteVPPath,
        *,
        prediction_type: str = "epsilon",
        num_classes: int | None = None,
        max_batch: int | None = None,
    ):
        _require_discrete(path)
        super().__init__(transformer, path, "eps", max_batch)
        self.prediction = self._init_prediction(prediction_type)
        self.num_classes = int(num_classes or transformer.config.num_embeds_ada_norm)
        self.channels = int(transformer.config.in_channels)

    def _forward(self, x: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        timestep = _timestep_input(self.timesteps(t), x)
        class_labels = _class_labels(labels, self.num_classes, self.num_classes)
        out = self.module(x, timestep=timestep, class_labels=class_labels, return_dict=False)[0]
        return out[:, : self.channels]  # learned-σ channels, if any, carry the variance


class _FlowMixin(DiffusersDenoiser):
    def __init__(self, module: Any, conditions: ConditionTable, max_batch: int | None, timestep_scale: float):
        super().__init__(module, RectifiedFlowPath(), "velocity", max_batch)
        self.conditions = conditions
        self.null_cond = conditions.null_cond
        self.timestep_scale = float(timestep_scale)


class SD3Denoiser(_FlowMixin):
    """Stable Diffusion 3's ``SD3Transformer2DModel``: velocity on the ``rf`` path, timestep ``σ·N``.

    Args:
        transformer: the network.
        conditions: ``encoder_hidden_states`` (P, L, D) and ``pooled_projections`` (P, D').
        num_train_timesteps: N of the scheduler (1000).
        max_batch: largest batch of one forward.
    """

    def __init__(
        self,
        transformer: Any,
        conditions: ConditionTable,
        *,
        num_train_timesteps: int = 1000,
        max_batch: int | None = None,
    ):
        super().__init__(transformer, conditions, max_batch, num_train_timesteps)

    def _forward(self, x: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        rows = self.conditions.gather(labels)
        timestep = (t.to(torch.float32) * self.timestep_scale).to(x.device)
        return self.module(
            hidden_states=x,
            timestep=timestep,
            encoder_hidden_states=rows["encoder_hidden_states"],
            pooled_projections=rows["pooled_projections"],
            return_dict=False,
        )[0]


def flux_pack(latents: Tensor) -> Tensor:
    """Flux's 2×2 patch packing: (batch, C, H, W) → (batch, H/2·W/2, 4C) (diffusers ``FluxPipeline._pack_latents``)."""
    b, c, h, w = latents.shape
    if h % 2 or w % 2:
        raise ValueError(f"latents: Flux packs 2×2 patches; height and width must be even, got {h}×{w}")
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def flux_unpack(packed: Tensor, height: int, width: int) -> Tensor:
    """The inverse of :func:`flux_pack` for a latent of ``height`` × ``width``."""
    b, _, d = packed.shape
    x = packed.view(b, height // 2, width // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, d // 4, height, width)


def flux_image_ids(height: int, width: int, device: torch.device | str, dtype: torch.dtype) -> Tensor:
    """Flux's position ids of the packed latent: (H/2·W/2, 3) rows ``(0, row, column)``."""
    ids = torch.zeros(height // 2, width // 2, 3)
    ids[..., 1] = torch.arange(height // 2)[:, None]
    ids[..., 2] = torch.arange(width // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


class FluxDenoiser(_FlowMixin):
    """Flux's ``FluxTransformer2DModel``: velocity on the ``rf`` path, timestep σ (the network scales it by 1000).

    The state is the unpacked latent (batch, C, H, W); packing to 2×2 patches, the image position ids and the
    text ids are the adapter's business. ``distilled_guidance`` is Flux-dev's guidance *embedding* (a network
    input, not a guidance method): required by models built with ``guidance_embeds``, refused otherwise.

    Args:
        transformer: the network.
        conditions: ``encoder_hidden_states`` (P, L, D), ``pooled_projections`` (P, D'); ``txt_ids`` (L, 3) are
            zeros as in the pipeline.
        distilled_guidance: the embedded guidance value (FluxPipeline's ``guidance_scale``, 3.5 by default there).
        max_batch: largest batch of one forward.
    """

    def __init__(
        self,
        transformer: Any,
        conditions: ConditionTable,
        *,
        distilled_guidance: float | None = None,
        max_batch: int | None = None,
    ):
        super().__init__(transformer, conditions, max_batch, 1.0)
        embeds = bool(getattr(transformer.config, "guidance_embeds", False))
        if embeds and distilled_guidance is None:
            raise ValueError("distilled_guidance: this Flux model embeds a guidance value; give one (Flux-dev: 3.5)")
        if not embeds and distilled_guidance is not None:
            raise ValueError("distilled_guidance: this Flux model has no guidance embedding; leave it unset")
        self.distilled_guidance = distilled_guidance

    def _forward(self, x: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        rows = self.conditions.gather(labels)
        b, _, h, w = x.shape
        text = rows["encoder_hidden_states"]
        guidance = None
        if self.distilled_guidance is not None:
            guidance = torch.full((b,), float(self.distilled_guidance), device=x.device, dtype=torch.float32)
        out = self.module(
            hidden_states=flux_pack(x),
            timestep=t.to(device=x.device, dtype=x.dtype),
            guidance=guidance,
            pooled_projections=rows["pooled_projections"],
            encoder_hidden_states=text,
            txt_ids=torch.zeros(text.shape[1], 3, device=x.device, dtype=x.dtype),
            img_ids=flux_image_ids(h, w, x.device, x.dtype),
            return_dict=False,
        )[0]
        return flux_unpack(out, h, w)


def _class_labels(labels: Tensor, num_classes: int, null_class: int | None) -> Tensor:
    if bool((labels >= num_classes).any()) or bool((labels < NULL_COND).any()):
        raise ValueError(f"cond: class labels must lie in 0 … {num_classes - 1} (or NULL_COND), got {labels.tolist()}")
    if null_class is None and bool((labels == NULL_COND).any()):
        raise ValueError("cond: this model has no null class; it cannot give the unconditional pass")
    return torch.where(
        labels == NULL_COND, torch.full_like(labels, null_class if null_class is not None else 0), labels
    )


def _require_discrete(path: NoisePath) -> None:
    if not isinstance(path, DiscreteVPPath):
        raise ValueError(
            f"path: a diffusers UNet or DiT runs on its scheduler's discrete path (DiscreteVPPath.from_scheduler), "
            f"got {type(path).__name__}"
        )
