"""The analytic-target interface: a class-conditional distribution whose every noisy marginal, score and
denoiser is known exactly on any :class:`~guidelab.paths.NoisePath`.

A target is a mixture of components; each component belongs to one class, each class is a weighted
sub-mixture (so a conditional may be multimodal), and the unconditional is the prior-weighted mixture
of classes. ``cond`` arguments take an int64 tensor (batch,) of class indices where ``NULL_COND`` (−1)
means unconditional, a single int, or ``None`` (all unconditional).
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch
from torch import Tensor

from guidelab.denoiser import NULL_COND, as_cond
from guidelab.paths import NoisePath, path_scalars
from guidelab.validation import did_you_mean

logger = logging.getLogger(__name__)

__all__ = [
    "COMPILE_MAX_BATCH",
    "COMPILE_MIN_EVALUATIONS",
    "COMPILE_MIN_THREADS",
    "ExactDenoiser",
    "FusedTarget",
    "PathTime",
    "Target",
    "as_float_array",
    "compile_enabled",
    "compiling",
    "init_classes",
    "path_time",
]


def compiling() -> bool:
    """Whether the code is being traced by ``torch.compile``'s Dynamo (data-dependent branches must then be avoided).

    ``torch.compiler.is_dynamo_compiling`` (torch 2.3+): False in eager code and constant True while Dynamo traces,
    so another thread's compile does not change this thread's branches. Not ``torch.compiler.is_compiling``,
    whose flag is one process-wide value, True for the whole of any compile in any thread (a sweep's worker
    threads would take the traced branches while one of them compiles). Older torch: ``torch._dynamo.is_compiling``.
    """
    test = getattr(getattr(torch, "compiler", None), "is_dynamo_compiling", None)
    return bool(test()) if test is not None else bool(torch._dynamo.is_compiling())


class Target(ABC):
    """A class-conditional mixture with exact noisy log-densities and denoisers.

    Subclasses set ``dim``, ``class_names`` (one per class), ``class_prior`` (C,), ``component_class``
    (K,) int64 and ``log_component_weight`` (K,): the log of each component's weight *within its
    class* (so ``logsumexp`` over a class's components is 0).
    """

    dim: int
    class_names: list[str]
    class_prior: Tensor
    component_class: Tensor
    log_component_weight: Tensor
    name: str = ""
    description: str = ""
    # ``compile="auto"`` compiles the exact denoiser only where num_components·dim is at most this (0: never; the
    # families that measured faster compiled set it, see ExactDenoiser).
    compile_max_work: int = 0

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_components(self) -> int:
        return int(self.component_class.numel())

    @functools.cached_property
    def _reference_coordinates(self) -> Tensor:
        """The coordinates of 4096 exact samples (fixed seed 0, all classes), float64, flattened."""
        return self.sample(4096, None, torch.Generator().manual_seed(0)).reshape(-1).double()

    @functools.cached_property
    def data_scale(self) -> float:
        """The data's coordinate scale: the 0.999-quantile of |x0| over the coordinates of 4096 exact samples
        (fixed seed, all classes). Relative divergence bounds of the sampler are multiples of it."""
        return max(float(torch.quantile(self._reference_coordinates.abs(), 0.999)), 1e-12)

    @functools.cached_property
    def data_range(self) -> tuple[float, float]:
        """The data's coordinate range (low, high): the 0.0005- and 0.9995-quantiles of the coordinates of the
        same 4096 exact samples (all of a bounded target's support up to sampling, 99.9% of an unbounded one's).
        Thresholding guiders clip x0̂ into it by default."""
        low, high = torch.quantile(self._reference_coordinates, torch.tensor([0.0005, 0.9995], dtype=torch.float64))
        return float(low), max(float(high), float(low) + 1e-12)

    def class_index(self, name: str | int) -> int:
        """The index of a class given by name or index: an int is an index; a string is a class name if a class
        has that name, else an index if it is an integer, else ``null``/``none``/``uncond`` for ``NULL_COND``.
        ``name:X`` and ``index:N`` say which is meant. A digit string that is one class's name and another
        class's index is ambiguous: a ValueError naming ``cond`` asks for the prefix."""
        if isinstance(name, bool):
            raise ValueError(f"cond: expected a class name or index, got {name!r}")
        if isinstance(name, int):
            return self._index(name)
        text = str(name)
        if text.startswith("name:"):
            return self._named(text[5:])
        if text.startswith("index:"):
            digits = text[6:]
            if not digits.lstrip("-").isdigit():
                raise ValueError(f"cond: index:{digits} is not an integer")
            return self._index(int(digits))
        is_number = text.lstrip("-").isdigit()
        if text in self.class_names:
            named = self.class_names.index(text)
            if is_number and int(text) != named and 0 <= int(text) < self.num_classes:
                raise ValueError(
                    f"cond: {text!r} is the name of class {named} and the index of class "
                    f"{self.class_names[int(text)]!r}; write name:{text} or index:{text}"
                )
            return named
        if is_number:
            return self._index(int(text))
        if text.lower() in ("null", "none", "uncond"):
            return NULL_COND
        return self._named(text)

    def _index(self, idx: int) -> int:
        if idx == NULL_COND:
            return NULL_COND
        if not 0 <= idx < self.num_classes:
            raise ValueError(f"cond: class index {idx} out of range [0, {self.num_classes - 1}]")
        return idx

    def _named(self, text: str) -> int:
        if text in self.class_names:
            return self.class_names.index(text)
        if text.lower() in ("null", "none", "uncond"):
            return NULL_COND
        raise ValueError(f"cond: unknown class {text!r}{did_you_mean(text, self.class_names)} or null")

    def cond_rows(self, cond: Tensor | int | None, batch: int, device: torch.device | str | None = None) -> Tensor:
        """Each sample's condition as a row of :meth:`log_weight_table`: the class index, or C for null.

        A label outside [−1, C − 1] is a ValueError naming ``cond``, except under ``torch.compile``, where the check
        (data-dependent) is left out and an out-of-range label fails the table lookup instead."""
        cond = as_cond(cond, batch, device)
        checked = not compiling() and cond.numel()
        if checked and (bool((cond >= self.num_classes).any()) or bool((cond < NULL_COND).any())):
            raise ValueError(f"cond: labels must lie in [-1, {self.num_classes - 1}], got {cond.unique().tolist()}")
        return torch.where(cond == NULL_COND, self.num_classes, cond)

    def log_weight_table(self) -> Tensor:
        """(C + 1, K): row c holds log w_k within class c (−∞ outside it); the last row, for the null
        condition, holds ``log π_c + log w_k``."""
        log_prior = torch.log(self.class_prior)
        uncond = log_prior[self.component_class] + self.log_component_weight  # (K,)
        neg_inf = torch.tensor(float("-inf"), dtype=uncond.dtype, device=uncond.device)
        table = torch.where(
            self.component_class[None, :] == torch.arange(self.num_classes, device=uncond.device)[:, None],
            self.log_component_weight[None, :],
            neg_inf,
        )
        return torch.cat([table, uncond[None, :]], dim=0)

    def log_mixture_weights(self, cond: Tensor | int | None, batch: int) -> Tensor:
        """Log weight of every component under each sample's condition, (batch, K); −∞ outside the class.

        Unconditional rows use ``log π_c + log w_k``.
        """
        return self.log_weight_table()[self.cond_rows(cond, batch, self.class_prior.device)]

    # --- exact quantities, implemented per family -------------------------------------------------------

    @abstractmethod
    def sample(self, n: int, cond: int | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Exact samples (n, dim) of p(x | cond) (``cond=None``: of p(x))."""

    def reference_samples(self, n: int, cond: int | None, seed: int) -> Tensor:
        """Exact samples (n, dim), float64, of p(x | cond) (``cond`` None or ``NULL_COND``: of p(x)) from a
        generator seeded with ``seed``: the reference sets metrics compare against, the same for every caller."""
        cond = None if cond is None or cond == NULL_COND else cond
        return self.sample(n, cond, generator=torch.Generator().manual_seed(seed)).double()

    @abstractmethod
    def component_log_prob_t(self, x_t: Tensor, t: Tensor, path: NoisePath) -> Tensor:
        """log p_t(x_t | component k) for every component, (batch, K)."""

    @abstractmethod
    def posterior_mean(self, x_t: Tensor, t: Tensor, path: NoisePath, cond: Tensor | int | None) -> Tensor:
        """E[x0 | x_t, cond] (batch, dim) under ``x_t = α_t·x0 + σ_t·ε``."""

    def log_prob_t(self, x_t: Tensor, t: Tensor, path: NoisePath, cond: Tensor | int | None = None) -> Tensor:
        """log p_t(x_t | cond), (batch,)."""
        log_w = self.log_mixture_weights(cond, x_t.shape[0]).to(device=x_t.device, dtype=x_t.dtype)
        return torch.logsumexp(log_w + self.component_log_prob_t(x_t, t, path), dim=-1)

    def class_log_posterior(self, x_t: Tensor, t: Tensor, path: NoisePath) -> Tensor:
        """log p(c | x_t) for every class, (batch, C)."""
        log_w = self.log_mixture_weights(None, x_t.shape[0]).to(device=x_t.device, dtype=x_t.dtype)
        joint = log_w + self.component_log_prob_t(x_t, t, path)  # (batch, K)
        # (C, K) mask: 0 where component k belongs to class c, −∞ elsewhere; one logsumexp for all classes.
        classes = torch.arange(self.num_classes, device=x_t.device)
        member = self.component_class.to(x_t.device)[None, :] == classes[:, None]
        mask = torch.zeros(member.shape, dtype=x_t.dtype, device=x_t.device).masked_fill_(~member, float("-inf"))
        per_class = torch.logsumexp(joint[:, None, :] + mask, dim=-1)  # (batch, C)
        return per_class - torch.logsumexp(per_class, dim=-1, keepdim=True)

    def draw_components(self, n: int, cond: int | str | None, generator: torch.Generator | None) -> Tensor:
        """Component indices (n,) drawn from the weights of ``cond`` (``None``: the unconditional mixture)."""
        c = NULL_COND if cond is None else self.class_index(cond)
        device = generator.device if generator is not None else torch.device("cpu")
        probs = torch.exp(self.log_weight_table().to(device=device, dtype=torch.float64)[c % (self.num_classes + 1)])
        if n == 0:
            return torch.zeros(0, dtype=torch.long, device=device)
        return torch.multinomial(probs, n, replacement=True, generator=generator)

    def score(self, x_t: Tensor, t: Tensor | float, path: NoisePath, cond: Tensor | int | None = None) -> Tensor:
        """∇log p_t(x_t | cond) by Tweedie's formula: ``(α·E[x0 | x_t, c] − x_t)/σ²`` (needs σ > 0)."""
        time = path_time(path, t, x_t)
        alpha, sigma = time.alpha[:, None], time.sigma[:, None]
        return (alpha * self.posterior_mean(x_t, t, path, cond) - x_t) / sigma**2

    def config(self) -> dict:
        """A dict that identifies this target (and rebuilds it with ``guidelab.targets.get_target``)."""
        return dict(self._config) if getattr(self, "_config", None) else {"name": self.name}

    def check_input(self, x_t: Tensor) -> None:
        """Raise a ValueError naming ``x_t`` unless it is a floating tensor (batch, dim)."""
        if not isinstance(x_t, Tensor) or not x_t.is_floating_point():
            raise ValueError(f"x_t: expected a floating-point tensor (batch, {self.dim}), got {type(x_t).__name__}")
        if x_t.ndim != 2 or x_t.shape[1] != self.dim:
            raise ValueError(f"x_t: expected shape (batch, {self.dim}), got {tuple(x_t.shape)}")

    def __repr__(self) -> str:
        classes = ", ".join(
            f"{name}: {int((self.component_class == c).sum())}" for c, name in enumerate(self.class_names[:8])
        )
        more = ", ..." if self.num_classes > 8 else ""
        return (
            f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, components={self.num_components}, "
            f"classes={{{classes}{more}}})"
        )

    def uses_compiled_kernels(self, x_t: Tensor, t: Tensor | float | None = None) -> bool:
        """Whether a call on ``x_t`` (at times ``t``: autograd through either keeps the torch path) runs compiled
        per-particle kernels (numba) rather than torch operations; False here, overridden by the families that have
        them. ``ExactDenoiser(compile="auto")`` does not try ``torch.compile`` where it is True."""
        return False

    def denoiser(self, path: NoisePath, *, compile: bool | str = "auto") -> ExactDenoiser:
        """The exact denoiser of this target on ``path`` (prediction space x0); ``compile`` (``"auto"``, True or
        False) decides when it runs under ``torch.compile`` (see :class:`ExactDenoiser`)."""
        return ExactDenoiser(self, path, compile=compile)


class PathTime:
    """α_t and σ_t of one call, (batch,) in the dtype and device of ``x_t``.

    ``shared`` is true when every sample has the same t; then ``alpha0``/``sigma0`` hold it as floats so
    per-time quantities can be folded into matrices once per call, and the (batch,) tensors ``alpha``/``sigma``
    are made on first use only (most callers with one time read the floats alone).
    """

    __slots__ = ("_alpha", "_like", "_sigma", "alpha0", "shared", "sigma0")

    def __init__(
        self,
        alpha: Tensor | None,
        sigma: Tensor | None,
        shared: bool,
        alpha0: float = float("nan"),
        sigma0: float = float("nan"),
        *,
        like: tuple[int, int, torch.dtype, torch.device] | None = None,
    ):
        self._alpha, self._sigma, self.shared, self.alpha0, self.sigma0 = alpha, sigma, shared, alpha0, sigma0
        self._like = like  # (batch, size, dtype, device) of the tensors still to make from alpha0, sigma0

    def _expanded(self, value: float) -> Tensor:
        batch, size, dtype, device = self._like  # type: ignore[misc]
        return torch.full((size,), value, dtype=dtype, device=device).expand(batch)

    @property
    def alpha(self) -> Tensor:
        if self._alpha is None:
            self._alpha = self._expanded(self.alpha0)
        return self._alpha

    @property
    def sigma(self) -> Tensor:
        if self._sigma is None:
            self._sigma = self._expanded(self.sigma0)
        return self._sigma


def _one_time(t: Tensor) -> float | None:
    """t's value as a float where all of ``t`` (1-d, at least one element) holds one value, else None. On the CPU
    the test reads the values in place (numpy), elsewhere it is one comparison and one read back."""
    if t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64, torch.float16):
        values = t.detach().numpy()
        first = values[0]
        return float(first) if values.shape[0] == 1 or bool((values == first).all()) else None
    if t.numel() == 1 or bool((t == t[0]).all()):
        return float(t[0])
    return None


def _alpha_sigma(path: NoisePath, t: float) -> tuple[float, float]:
    """(α, σ) at one time as floats, in float64: from the cache of :func:`~guidelab.paths.path_scalars`, except at
    t = ±0 (the cache takes 0.0 and −0.0 for one key, and the sign of σ = 0 must not depend on which came first)
    and at NaN (a key that never hits again)."""
    if t == 0 or t != t:
        c = path.coefficients(torch.tensor(t, dtype=torch.float64))
        return float(c.alpha), float(c.sigma)
    return path_scalars(path, t)[:2]


def path_time(
    path: NoisePath, t: Tensor | float, x_t: Tensor, *, dtype: torch.dtype | None = None, full: bool = True
) -> PathTime:
    """Evaluate the path at ``t`` (a float, a 0-d tensor or one time per sample) in float64, then cast to ``dtype``
    (default that of ``x_t``). ``full=False``: for one shared time, ``alpha``/``sigma`` are one value expanded over
    the batch (views, not to be written), for callers that read ``alpha0``/``sigma0`` only.

    One time (a float, a one-element tensor, or a batch of equal times) is evaluated once in float64, by
    :func:`~guidelab.paths.path_scalars` (cached; t = ±0 and NaN uncached), the values of the earlier
    evaluation of ``t[:1]`` bit for bit.

    Raises a ValueError naming ``t`` when its size matches neither 1 nor the batch.

    Under ``torch.compile`` the time is always read per sample (``shared`` false): testing whether every sample has
    the same t, and reading that t as a float, are data-dependent (``.item()``) and would break the graph; the
    per-sample evaluation gives the same values to rounding.
    """
    batch = x_t.shape[0]
    wide = torch.float64 if x_t.device.type != "mps" else torch.float32
    dtype = x_t.dtype if dtype is None else dtype
    if compiling():
        t = torch.as_tensor(t, device=x_t.device).to(wide).reshape(-1)
        if t.numel() not in (1, batch):
            raise ValueError(f"t: expected a scalar or {batch} times (one per sample), got shape {tuple(t.shape)}")
        c = path.coefficients(t.expand(batch))
        return PathTime(c.alpha.to(dtype), c.sigma.to(dtype), False)
    if not isinstance(t, Tensor | int | float):  # a numpy array, a list of times
        t = torch.as_tensor(t, dtype=wide)
    if isinstance(t, Tensor):
        if t.numel() not in (1, batch):
            raise ValueError(f"t: expected a scalar or {batch} times (one per sample), got shape {tuple(t.shape)}")
        t = t.reshape(-1)
        t0 = _one_time(t) if t.numel() else None
    else:
        t0 = float(t)
    if t0 is not None or batch == 0:
        if t0 is None:  # an empty batch with an empty t
            t0 = float("nan")
        if wide != torch.float64:  # MPS: t read in float32, as the per-sample evaluation reads it
            t0 = float(np.float32(t0))
        alpha0, sigma0 = _alpha_sigma(path, t0)
        return PathTime(None, None, True, alpha0, sigma0, like=(batch, batch if full else 1, dtype, x_t.device))
    c = path.coefficients(t.to(device=x_t.device, dtype=wide))
    return PathTime(c.alpha.to(dtype), c.sigma.to(dtype), False)


def as_float_array(value: object, field: str, ndim: int | None = None) -> np.ndarray:
    """``value`` as a finite float64 numpy array, else a ValueError naming ``field``."""
    if isinstance(value, Tensor):
        value = value.detach().cpu().double().numpy()
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{field}: expected numbers, got {type(value).__name__} ({err})") from None
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{field}: expected a {ndim}-d array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{field}: contains non-finite values")
    return arr


def init_classes(
    target: Target,
    num_components: int,
    weights: object | None,
    component_class: object | None,
    class_names: list[str] | None,
    class_prior: object | None,
) -> None:
    """Validate and set ``class_names``, ``class_prior`` (normalized), ``component_class`` and
    ``log_component_weight`` (log of each weight normalized within its class) on ``target``."""
    K = num_components
    if component_class is None:
        comp = np.zeros(K, dtype=np.int64)
    else:
        raw = np.asarray(component_class.cpu() if isinstance(component_class, Tensor) else component_class)
        if raw.shape != (K,) or not (np.issubdtype(raw.dtype, np.integer) or (raw == np.round(raw)).all()):
            raise ValueError(f"component_class: expected {K} integer class indices, got shape {raw.shape}")
        comp = raw.astype(np.int64)
    num_classes = len(class_names) if class_names is not None else int(comp.max(initial=-1)) + 1
    if num_classes < 1:
        raise ValueError("component_class: need at least one class")
    if (comp < 0).any() or (comp >= num_classes).any():
        raise ValueError(f"component_class: indices must lie in [0, {num_classes - 1}], got {sorted(set(comp))}")
    names = [str(n) for n in class_names] if class_names is not None else [str(c) for c in range(num_classes)]
    if len(set(names)) != len(names):
        raise ValueError(f"class_names: names must be unique, got {names}")
    for c, name in enumerate(names):
        if not (comp == c).any():
            raise ValueError(f"component_class: class {name!r} (index {c}) has no component")
    w = np.ones(K) if weights is None else as_float_array(weights, "weights", 1)
    if w.shape != (K,):
        raise ValueError(f"weights: expected {K} values (one per component), got {w.shape[0]}")
    if (w < 0).any():
        raise ValueError(f"weights[{int(np.argmin(w))}]: must be >= 0, got {w.min()}")
    totals = np.bincount(comp, weights=w, minlength=num_classes)
    for c, name in enumerate(names):
        if not totals[c] > 0:
            raise ValueError(f"weights: the components of class {name!r} have total weight 0")
    prior = (
        np.full(num_classes, 1.0 / num_classes)
        if class_prior is None
        else as_float_array(class_prior, "class_prior", 1)
    )
    if prior.shape != (num_classes,):
        raise ValueError(f"class_prior: expected {num_classes} values (one per class), got {prior.shape[0]}")
    if (prior < 0).any() or not prior.sum() > 0:
        raise ValueError(f"class_prior: must be >= 0 with a positive sum, got {prior.tolist()}")
    with np.errstate(divide="ignore"):
        log_w = np.log(w / totals[comp])
    target.class_names = names
    target.class_prior = torch.from_numpy(prior / prior.sum())
    target.component_class = torch.from_numpy(comp)
    target.log_component_weight = torch.from_numpy(log_w)


class FusedTarget(Target):
    """A target whose exact quantities all come from one fused pass, :meth:`_evaluate`."""

    @abstractmethod
    def _evaluate(
        self, x_t: Tensor, t: Tensor | float, path: NoisePath, cond: Tensor | int | None, want_mean: bool
    ) -> tuple[Tensor | None, Tensor]:
        """E[x0 | x_t, c] (or None) and log p_t(x_t | c) (batch,); per-component log p_t (batch, K) when
        ``cond`` is None and no mean is wanted."""

    def component_log_prob_t(self, x_t: Tensor, t: Tensor | float, path: NoisePath) -> Tensor:
        """log p_t(x_t | k) for every component, (batch, K)."""
        return self._evaluate(x_t, t, path, None, want_mean=False)[1]

    def log_prob_t(self, x_t: Tensor, t: Tensor | float, path: NoisePath, cond: Tensor | int | None = None) -> Tensor:
        """log p_t(x_t | c) = logsumexp_k(log w_k^{(c)} + log p_t(x_t | k)), (batch,)."""
        return self._evaluate(x_t, t, path, NULL_COND if cond is None else cond, want_mean=False)[1]

    def posterior_mean(self, x_t: Tensor, t: Tensor | float, path: NoisePath, cond: Tensor | int | None) -> Tensor:
        """E[x0 | x_t, c] = Σ_k r_k^{(c)} E[x0 | x_t, k], (batch, D)."""
        return self._evaluate(x_t, t, path, cond, want_mean=True)[0]

    def posterior_mean_and_log_prob(
        self, x_t: Tensor, t: Tensor | float, path: NoisePath, cond: Tensor | int | None
    ) -> tuple[Tensor, Tensor]:
        """E[x0 | x_t, c] (batch, D) and log p_t(x_t | c) (batch,) from one pass."""
        return self._evaluate(x_t, t, path, cond, want_mean=True)


class TargetModel:
    """A model computed from an analytic target's exact posterior means on a path (prediction ``x0``): the exact
    denoiser, and the imperfect models with an exact form built from it (``targets.under_conditioned``,
    ``targets.scaled_conditional``)."""

    prediction = "x0"

    def __init__(self, target: Target, path: NoisePath):
        self.target = target
        self.path = path

    @property
    def data_scale(self) -> float:
        """The target's coordinate scale (sets the sampler's relative divergence bound)."""
        return self.target.data_scale

    @property
    def data_range(self) -> tuple[float, float]:
        """The target's coordinate range (low, high) (the default range of thresholding guiders)."""
        return self.target.data_range

    def exact_pair(self, x_t: Tensor, t: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
        """``(x0̂_u, x0̂_c, has_class, labels)``: the exact unconditional and conditional posterior means (batch, D)
        (``x0̂_c`` None where no sample has a class; rows of the null class hold class 0's), which samples have a
        class (batch,), and the labels with the null class read as 0 (batch,)."""
        labels = as_cond(cond, x_t.shape[0], x_t.device)
        uncond = self.target.posterior_mean(x_t, t, self.path, None)
        has_class = labels != NULL_COND
        safe = torch.where(has_class, labels, torch.zeros_like(labels))
        if not bool(has_class.any()):
            return uncond, None, has_class, safe
        return uncond, self.target.posterior_mean(x_t, t, self.path, safe), has_class, safe


# ``compile="auto"`` (the default of :class:`ExactDenoiser`): measured with ``benchmarks/bench_exact_denoiser.py
# compile`` on a shared 2-core AVX-512 machine. On 1 torch thread compiling gained nothing (1.02× at 10⁴
# particles, 0.84× at 10⁵), so "auto" needs at least COMPILE_MIN_THREADS. On 2 threads it gained 1.66× on D = 2,
# K = 8 at 10⁴ particles, 1.3× on D = 4, K = 16 and at 3·10⁴ particles, 1.0× at 10⁵ (the eager passes are then
# bandwidth-bound), and lost (0.67–0.75×) on D = 8, K = 32, D = 64, K = 100 and the box mixtures; it took 3–12 s
# (34 s for a box mixture). At 0.2 µs a particle eager and a 1.3–1.7× gain, those seconds are won back after
# 4·10⁷–1.5·10⁸ particle evaluations.
COMPILE_MIN_EVALUATIONS = 10**8  # "auto" compiles once a denoiser has evaluated this many particles eagerly
COMPILE_MAX_BATCH = 50_000  # and only for calls of at most this many particles
COMPILE_MIN_THREADS = 2  # and only on at least this many torch threads


def compile_enabled() -> bool:
    """Whether ``torch.compile`` may be tried at all: this torch has it and ``GUIDELAB_COMPILE`` is not ``0``."""
    return hasattr(torch, "compile") and os.environ.get("GUIDELAB_COMPILE", "1") != "0"


class ExactDenoiser(TargetModel):
    """The exact posterior mean ``E[x0 | x_t, c]`` of an analytic target on a path (prediction ``x0``).

    Swaps freely with a network: samplers and guiders run on ground truth through the same protocol.

    ``compile`` runs it through ``torch.compile(fullgraph=True, dynamic=False)`` (one graph per batch shape, no graph
    break: :func:`path_time` reads the time per sample under compilation), an optimisation that is never required:

    - ``"auto"`` (default): compile only where it was measured to pay (see :data:`COMPILE_MIN_EVALUATIONS`): the
      target's work per particle is small (``num_components·dim ≤ target.compile_max_work``; 0 for targets that
      compile to slower code), the call has at most :data:`COMPILE_MAX_BATCH` particles, torch runs at least
      :data:`COMPILE_MIN_THREADS` threads (on one, compiled code measured no faster), and this denoiser has
      already evaluated :data:`COMPILE_MIN_EVALUATIONS` particles eagerly (n·steps so far: a short run never pays
      the seconds of compiling, a long one compiles once it is known to be long). The decision depends on the
      counts only, so a run compiles at the same step on every machine with a working compiler. Where compiling is
      unavailable or fails, it evaluates eagerly from then on, with a debug log and no warning.
      Where the target runs its own compiled kernels on these inputs (``target.uses_compiled_kernels``: the numba
      loops of :mod:`guidelab.targets.mixture_jit`, 1.4–4.4× the eager torch path at small sizes), "auto" never
      compiles: ``torch.compile`` would trace the torch path instead, which measured slower than those kernels.
    - ``True``: compile from the first call; a failure warns once and falls back to eager evaluation. The traced
      function is the target's torch path (the numba kernels are not traced), so at small sizes this can be slower
      than ``"auto"``.
    - ``False``: no ``torch.compile`` (the target's numba kernels still run where it has them).
      ``GUIDELAB_COMPILE=0`` in the environment turns both ``torch.compile`` and the numba kernels off.

    Raises:
        ValueError: ``compile`` is not True, False or ``"auto"``.
    """

    def __init__(self, target: Target, path: NoisePath, *, compile: bool | str = "auto"):
        super().__init__(target, path)
        if compile not in (True, False, "auto"):
            raise ValueError(f"compile: expected True, False or 'auto', got {compile!r}")
        self.compile: bool | str = compile
        self.evaluated = 0  # particles evaluated eagerly (the "auto" rule's n·steps so far)
        self._compiled: Any = None

    def _eager(self, x_t: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        return self.target.posterior_mean(x_t, t, self.path, cond)

    def _wants_compiled(self, x_t: Tensor) -> bool:
        if self.compile is not True and self.compile != "auto":
            return False
        if not compile_enabled():
            return False
        if self.compile is True:
            return True
        work = self.target.num_components * self.target.dim
        return (
            work <= self.target.compile_max_work
            and x_t.shape[0] <= COMPILE_MAX_BATCH
            and torch.get_num_threads() >= COMPILE_MIN_THREADS
            and self.evaluated >= COMPILE_MIN_EVALUATIONS
            and not self.target.uses_compiled_kernels(x_t)
        )

    def __call__(self, x_t: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        if compiling():  # traced inside someone else's torch.compile: no counter (a guard on it would recompile)
            return self._eager(x_t, t, cond)
        if not self._wants_compiled(x_t):
            self.evaluated += x_t.shape[0]
            return self._eager(x_t, t, cond)
        if self._compiled is None:
            self._compiled = torch.compile(self._eager, fullgraph=True, dynamic=False)
        try:
            return self._compiled(x_t, t, cond)
        except Exception as err:  # compilation is an optimisation, never required (no C++ toolchain, a platform)
            message = f"ExactDenoiser: torch.compile failed ({type(err).__name__}: {err}); evaluating eagerly"
            if self.compile is True:
                warnings.warn(message, stacklevel=2)
            else:
                logger.debug(message)
            self.compile = False
            self._compiled = None
            return self._eager(x_t, t, cond)

    def __repr__(self) -> str:
        return f"ExactDenoiser({self.target!r}, {self.path!r})"
