"""Guider combines as one compiled loop each (numba, the optional ``fast`` extra): CFG, CFG-Zero*, APG, MAMBO-G,
guidance rescale and TCFG read the two predictions and x_t once (plus one or two passes over each sample's row for
its norms and dot products, in float64) and write the (x0̂, ε̂) pair directly.

Why: at the sizes of a sampling step on the CPU ((256, 64) float32) each ATen operator costs 2.5–4 µs, about one
pass over the data, and every guider returns the pair (two more operators), so the torch forms of the rules cost
3–56 operators; a kernel costs one numba dispatch (~0.3 µs) and one pass (``benchmarks/bench_guiders.py``). The
rules, their shapes and sources are those of the guiders (:mod:`~guidelab.guiders.cfg`,
:mod:`~guidelab.guiders.cfg_zero`, :mod:`~guidelab.guiders.apg`, :mod:`~guidelab.guiders.mambo`,
:mod:`~guidelab.guiders.rescale`, :mod:`~guidelab.guiders.tangential`); the loops are in
:mod:`guidelab.guiders._fused_kernels`.

When: each function here returns ``None`` (the caller runs its torch code unchanged) unless the kernels are available
(numba installed, ``GUIDELAB_COMPILE`` not ``0``, the probe passed), the step has scalar coefficients
(``Predictions.sc``), the conditional and unconditional predictions share a space, and they and x_t (as given, not
upcast) are CPU, C-contiguous, of one shape, float32 or float64 (half types keep the torch path, which computes in
float32), with at least one element, and autograd does not record them; the guiders call them only with a number as
scale (a per-sample scale keeps the torch path). The choice depends only on the install, the environment and the
inputs, never on timing or history. Results agree with the torch path to rounding (tests/test_guiders_jit.py: 10⁻¹³
relative per sample in float64, 10⁻⁵ in float32, measured ≲ 3·10⁻¹⁶ and 3·10⁻⁷): the kernels round each product to
the dtype where the torch path rounds intermediate tensors, and reduce in float64 where it reduces in the dtype. A
sample's result depends only on its own row, and the loops are single-threaded: the same numbers at every torch
thread count.

Loading: numba is imported, and the kernels loaded from numba's on-disk cache, on the first combine that can use
them: ~0.6 s once per process (numba's import 0.2 s, LLVM's start at the first kernel 0.35 s, the other kernels and
the probe 0.05 s); compiling them on an install's first use takes ~5 s. Nothing imports numba at import time of
guidelab or of its command line, and no sampler starts the load ahead: it happens inside the first step that can use
the kernels (a background :func:`warm_up` would hold the GIL for most of that time, against a sampler's own Python).
:func:`warm_up` is there for a caller with other work to overlap.
"""

from __future__ import annotations

import importlib

import numpy as np
import torch
from torch import Tensor

from guidelab import jit
from guidelab.guiders.base import GuidedStep, Predictions
from guidelab.paths import pair_coefficients, space_coefficients

__all__ = [
    "KERNELS",
    "apg",
    "available",
    "cfg_zero",
    "linear",
    "mambo",
    "rescale",
    "tangential",
    "warm_up",
]

_CONSTANT_RTOL = 64  # as guidelab.guiders.rescale: std(x) ≤ 64·eps·|mean(x)| is a constant x
_EPS = 1e-12


def _build() -> dict:
    kernels = importlib.import_module("guidelab.guiders._fused_kernels")  # imports numba (ImportError without it)
    return {torch.float32: kernels.make(np.float32), torch.float64: kernels.make(np.float64)}


# --- the probe: every kernel against the rule written out in numpy, on rows of mixed signs and scales -----------


def _rows_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1, keepdims=True)


def _probe(kernels: dict) -> bool:
    rows, d = 3, 5
    base = np.arange(3 * rows * d, dtype=np.float64)
    c, u, x = (np.cos(base * k + k).reshape(3, rows, d)[k] * (1 + k) for k in range(3))
    ac, bc, g, p = 0.7, -0.4, 3.0, (0.8, 0.3, -0.6, 1.2)

    def pair(pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return p[0] * pred + p[1] * x, p[2] * pred + p[3] * x

    cs, us = ac * c + bc * x, ac * u + bc * x
    r = np.sqrt(_rows_dot(cs - us, cs - us) / _rows_dot(us, us))
    expected = {
        "affine": pair(u + g * (c - u)),
        "cfg_zero": pair(g * cs + (1 - g) * _rows_dot(cs, us) / (_rows_dot(us, us) + _EPS) * us),
        "mambo": pair(c + (g - 1) * np.exp(-2.0 * r) * (c - u)),
    }
    xs = us + g * (cs - us)
    factor = 0.7 * cs.std(axis=1, keepdims=True) / xs.std(axis=1, keepdims=True) + 0.3
    expected["rescale"] = pair(xs * factor)
    gram = np.einsum("rkd,rld->rkl", np.stack([cs, us], 1), np.stack([cs, us], 1))
    v1 = np.linalg.eigh(gram)[1][:, :, 1]  # the top eigenvector e of each Gram matrix: u' = e₁·(e₀·c + e₁·u)
    expected["tangential"] = pair(g * cs + (1 - g) * v1[:, 1:] * (v1[:, :1] * cs + v1[:, 1:] * us))
    prev = np.sin(base[: rows * d]).reshape(rows, d)
    avg = cs - us + 0.5 * prev
    shrink = np.minimum(1.0, 2.0 / np.sqrt(_rows_dot(avg, avg)))
    x0 = cs + (g - 1) * (avg * shrink - 0.7 * _rows_dot(avg * shrink, cs) / _rows_dot(cs, cs) * cs)
    expected["apg"] = (x0, p[2] * x0 + p[3] * x)
    ok = True
    for torch_dtype, kit in kernels.items():
        dt = np.float32 if torch_dtype == torch.float32 else np.float64
        rtol = 1e-5 if dt == np.float32 else 1e-12
        args = [np.ascontiguousarray(v, dtype=dt) for v in (c, u, x)]
        addresses = [v.ctypes.data for v in args]
        for name, (x0_ref, eps_ref) in expected.items():
            out = np.zeros((3, rows, d), dtype=dt)  # x0̂, ε̂, Δ̄
            prev_in = np.ascontiguousarray(prev, dtype=dt)
            x0_at, eps_at, avg_at = (out[k].ctypes.data for k in range(3))
            if name == "affine":
                kit.affine(*addresses, x0_at, eps_at, rows * d, g, *p)
            elif name == "cfg_zero":
                kit.cfg_zero(*addresses, x0_at, eps_at, rows, d, ac, bc, g, *p)
            elif name == "mambo":
                kit.mambo(*addresses, x0_at, eps_at, rows, d, ac, bc, 2.0, g - 1, *p)
            elif name == "rescale":
                kit.rescale(*addresses, x0_at, eps_at, rows, d, ac, bc, g, 0.7, 0.0, *p)
            elif name == "tangential":
                kit.tangential(*addresses, x0_at, eps_at, rows, d, ac, bc, g, *p)
            else:
                args_apg = (ac, bc, 0.5, False, g - 1, 0.3, 2.0, p[2], p[3])
                kit.apg(*addresses, prev_in.ctypes.data, avg_at, x0_at, eps_at, rows, d, *args_apg)
                ok &= bool(np.allclose(out[2], avg, rtol=rtol, atol=rtol))
            ok &= bool(np.allclose(out[0], x0_ref, rtol=rtol, atol=rtol * 10))
            ok &= bool(np.allclose(out[1], eps_ref, rtol=rtol, atol=rtol * 10))
    return ok


KERNELS = jit.Kernels(_build, _probe, "combines", "guidelab's fast loops for the guiders", "about 5 s on 2 cores")


def available() -> bool:
    """Whether the compiled combines can be used here (loads them once per process; thread-safe)."""
    return KERNELS.available()


def warm_up() -> None:
    """Load the kernels on a background thread (does nothing once tried)."""
    KERNELS.warm_up()


# --- the wrappers: each returns the guided pair, or None where the kernels do not apply ------------------------


def _operands(preds: Predictions, base: str = "uncond") -> tuple | None:
    """(kernels for the dtype, c, u, x_t, the models' space, the number of elements) where the kernels apply to this
    step; None otherwise. Every check is on the inputs (no timing, no history). On the timed path of every step:
    attribute reads only (~1.3 µs at torch 2.13). Reads ``Predictions._raw`` directly (``raw()`` checks and formats
    an error)."""
    raw = preds._raw
    other = raw.get(base)
    if preds.sc is None or other is None:
        return None
    c, src = raw["cond"]
    u, src_u = other
    x = preds.x_t
    dtype = c.dtype
    if src != src_u or dtype not in _DTYPES or u.dtype is not dtype or x.dtype is not dtype or preds.dtype is not dtype:
        return None
    if not (c.shape == u.shape == x.shape and c.is_cpu and u.is_cpu and x.is_cpu):
        return None
    if not (c.is_contiguous() and u.is_contiguous() and x.is_contiguous()):
        return None
    n = c.numel()
    if not n or c.is_neg() or u.is_neg() or x.is_neg():
        return None
    if (c.requires_grad or u.requires_grad or x.requires_grad) and torch.is_grad_enabled():
        return None
    kernels = KERNELS.loaded()
    return None if kernels is None else (kernels[dtype], c, u, x, src, n)


_DTYPES = frozenset({torch.float32, torch.float64})


def _pair(space: str, sc: tuple) -> tuple[float, float, float, float] | None:
    """:func:`~guidelab.paths.pair_coefficients`, memoised by (space, scalars): a sampler's grid repeats its times
    every run (0.1 µs instead of 0.6 on the timed path)."""
    key = (space, sc)
    coefs = _PAIRS.get(key, _MISSING)
    if coefs is _MISSING:
        if len(_PAIRS) >= 4096:
            _PAIRS.clear()
        coefs = _PAIRS[key] = pair_coefficients(space, sc)
    return coefs


_PAIRS: dict = {}
_MISSING = object()


def _to_space(src: str, dst: str, sc: tuple) -> tuple[float, float] | None:
    """(a, b) with ``pred_dst = a·pred_src + b·x_t`` (the scalar conversion of :meth:`Predictions.convert`)."""
    if src == dst:
        return 1.0, 0.0
    to_pair, from_pair = pair_coefficients(src, sc), space_coefficients(dst, sc)
    if to_pair is None or from_pair is None:
        return None
    p0, q0, p1, q1 = to_pair
    a_, b_ = from_pair
    return a_ * p0 + b_ * p1, a_ * q0 + b_ * q1


def _rows(c: Tensor) -> tuple[int, int]:
    rows = c.shape[0]
    return rows, c.numel() // rows


def linear(preds: Predictions, weight: float, base: str = "uncond") -> GuidedStep | None:
    """CFG's step (:func:`guidelab.guiders.combine.linear_step`): ``m = b + w·(c − b)`` in the models' space, then
    ``x0̂ = p0·m + q0·x_t``, ``ε̂ = p1·m + q1·x_t`` (:func:`~guidelab.paths.pair_coefficients`), flat over all
    elements: (batch, ...) in, the pair (batch, ...) out. arXiv 2207.12598."""
    ops = _operands(preds, base)
    if ops is None:
        return None
    kit, c, u, x, src, n = ops
    coefs = _PAIRS.get((src, preds.sc)) or _pair(src, preds.sc)
    if coefs is None:
        return None
    x0, eps = torch.empty_like(c), torch.empty_like(c)
    kit.affine(c.data_ptr(), u.data_ptr(), x.data_ptr(), x0.data_ptr(), eps.data_ptr(), n, weight, *coefs)
    return GuidedStep(x0, eps)


def _rowwise(preds: Predictions, space: str, own: bool = False) -> tuple | None:
    """The operands of a per-sample rule measured in ``space`` whose prediction lies in ``space`` (``own``: in the
    models' own space): (kernels, c, u, x, src, (ac, bc), pair coefficients)."""
    ops = _operands(preds)
    if ops is None:
        return None
    src = ops[4]
    if ops[1].ndim == 0:
        return None
    to_space = _to_space(src, space, preds.sc)
    coefs = _pair(src if own else space, preds.sc)
    if to_space is None or coefs is None:
        return None
    return (*ops[:5], to_space, coefs)


def _call(kernel, c: Tensor, u: Tensor, x: Tensor, *scalars: float) -> GuidedStep:
    x0, eps = torch.empty_like(c), torch.empty_like(c)
    kernel(c.data_ptr(), u.data_ptr(), x.data_ptr(), x0.data_ptr(), eps.data_ptr(), *_rows(c), *scalars)
    return GuidedStep(x0, eps)


def cfg_zero(preds: Predictions, gamma: float) -> GuidedStep | None:
    """CFG-Zero*'s optimised-scale step (:class:`~guidelab.guiders.cfg_zero.CFGZeroStar`, arXiv 2503.18886), per
    sample over its (D,) row in velocity space: ``s* = <v_c, v_u>/(||v_u||² + ε)`` (float64),
    ``v̂ = γ·v_c + (1 − γ)·s*·v_u``, and the pair of v̂."""
    ops = _rowwise(preds, "velocity")
    if ops is None:
        return None
    kit, c, u, x, _, (ac, bc), coefs = ops
    return _call(kit.cfg_zero, c, u, x, ac, bc, gamma, *coefs)


def mambo(preds: Predictions, gamma: float, alpha: float, space: str) -> GuidedStep | None:
    """MAMBO-G's step (:class:`~guidelab.guiders.mambo.MamboG`, arXiv 2508.03442): ``r = ||c_S − u_S||/(||u_S|| + ε)``
    in ``space`` S (float64), ``x̂ = c + (γ − 1)·exp(−α·r)·(c − u)`` in the models' own space, and its pair."""
    ops = _rowwise(preds, space, own=True)
    if ops is None:
        return None
    kit, c, u, x, _, (ac, bc), coefs = ops
    return _call(kit.mambo, c, u, x, ac, bc, alpha, gamma - 1, *coefs)


def rescale(preds: Predictions, gamma: float, phi: float, space: str) -> GuidedStep | None:
    """Guidance rescale (:class:`~guidelab.guiders.rescale.GuidanceRescale`, arXiv 2305.08891 §3.4) in ``space``:
    ``x = u + γ·(c − u)``, ``x ← x·(φ·(std(c) + ε)/(std(x) + ε) + 1 − φ)`` (two-pass population stds per sample in
    float64; a constant x is left unchanged), and its pair. None where the pair of ``space`` is undefined (ε or
    score at α = 0: the guider's pure-noise rule)."""
    ops = _rowwise(preds, space)
    if ops is None:
        return None
    kit, c, u, x, _, (ac, bc), coefs = ops
    tiny = _CONSTANT_RTOL * torch.finfo(c.dtype).eps
    return _call(kit.rescale, c, u, x, ac, bc, gamma, phi, tiny, *coefs)


def tangential(preds: Predictions, gamma: float, space: str) -> GuidedStep | None:
    """TCFG (:class:`~guidelab.guiders.tangential.TangentialCFG`, arXiv 2503.18137) in ``space``: the three float64
    dot products of c and u per sample give the projection u' = p·c + q·u of u on the top right singular vector of
    [c; u] (:func:`~guidelab.guiders.tangential.top_singular_projection`, no SVD), ``x̂ = u' + γ·(c − u')``, and its
    pair. None where the pair of ``space`` is undefined (the guider's pure-noise rule)."""
    ops = _rowwise(preds, space)
    if ops is None:
        return None
    kit, c, u, x, _, (ac, bc), coefs = ops
    return _call(kit.tangential, c, u, x, ac, bc, gamma, *coefs)


def apg(
    preds: Predictions,
    gamma: float,
    eta: float,
    threshold: float | None,
    prev: Tensor | None,
    momentum: float,
    ema: bool,
) -> tuple[GuidedStep, Tensor] | None:
    """APG's step (:class:`~guidelab.guiders.apg.APG`, arXiv 2410.02416), paper form in x0, per sample over its
    (D,) row: ``Δ̄ = Δ + β·Δ̄_prev`` (``ema``: ``Δ + β·(Δ̄_prev − Δ)``; ``prev`` None: ``Δ̄ = Δ``), then
    ``x0̂ = (1 − (γ−1)(1−η)·k·s)·x0̂_c + (γ−1)·s·Δ̄`` with ``k = <Δ̄, x0̂_c>/(||x0̂_c||² + ε)`` and
    ``s = min(1, r/(||Δ̄|| + ε))`` (1 without threshold). Returns the pair and Δ̄ (batch, ...), for the momentum
    buffer; None where the kernels do not apply (also where ``prev`` is not a CPU contiguous tensor of the
    predictions' shape and dtype, or autograd records it)."""
    ops = _rowwise(preds, "x0")
    if ops is None:
        return None
    kit, c, u, x, _, (ac, bc), coefs = ops
    prev_at = 0
    if prev is not None:
        if prev.dtype != c.dtype or prev.shape != c.shape or not prev.is_cpu or not prev.is_contiguous():
            return None
        if prev.is_neg() or (torch.is_grad_enabled() and prev.requires_grad):
            return None
        prev_at = prev.data_ptr()
    avg, x0, eps = torch.empty_like(c), torch.empty_like(c), torch.empty_like(c)
    r = -1.0 if threshold is None else threshold
    kit.apg(
        c.data_ptr(), u.data_ptr(), x.data_ptr(), prev_at, avg.data_ptr(), x0.data_ptr(), eps.data_ptr(), *_rows(c),
        ac, bc, momentum, ema, gamma - 1, eta, r, coefs[2], coefs[3],
    )  # fmt: skip
    return GuidedStep(x0, eps), avg
