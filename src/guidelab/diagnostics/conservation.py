"""The conservation decomposition of guidance (arXiv 2605.20079; docs/methods.md §2).

Adding a guidance field g to a flow that transports the density path p_t keeps that path iff
``∇·(p_t g) = 0``, i.e. iff the conservation residual vanishes:

    ∇·(p_t g)/p_t = ∇·g + g·∇log p_t = (divergence term) + (score-parallel flux).

Here g is the velocity of the guided flow minus that of the reference flow, evaluated from a denoiser and
a guider at (x, t) (:func:`guidance_field`). The reference is the conditional flow (default: it transports
p_t(x | c), the path guidance should keep) or the unconditional one (p_t(x)); the score is the exact score
of the matching target density. The divergence is the exact Jacobian trace in low dimension
(:func:`divergence_exact`) or Hutchinson's estimate (:func:`divergence_hutchinson`); both by autograd or
by central finite differences in float64 (for denoisers that are not differentiable, such as the exact
targets, whose kernels write in place).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from guidelab.denoiser import NULL_COND, Denoiser, as_cond
from guidelab.diagnostics._series import Series, as_trajectory, summarize
from guidelab.guiders.base import Guider
from guidelab.metrics.base import DEFAULT_QUANTILES, Record, seeded_generator
from guidelab.sampling import GuidedModel
from guidelab.validation import did_you_mean

__all__ = [
    "ConservationTerms",
    "ConservationTrajectory",
    "Field",
    "HutchinsonEstimate",
    "conservation_along_trajectory",
    "conservation_terms",
    "divergence_exact",
    "divergence_hutchinson",
    "guidance_field",
]

Field = Callable[[Tensor], Tensor]
"""A vector field ``x (n, D) -> g(x) (n, D)`` whose rows depend only on the matching rows of x."""

DerivativeMethod = Literal["autograd", "fd"]
_FD_REL_STEP = 6e-6  # ≈ ε_float64^{1/3}: the optimal central-difference step, relative to max(1, |x|_∞)


def _check_field_input(x: Tensor) -> Tensor:
    if not isinstance(x, Tensor) or x.ndim != 2 or not x.is_floating_point():
        raise ValueError(f"x: expected a floating tensor (n, D), got {getattr(x, 'shape', type(x).__name__)}")
    return x


def _fd_step(x: Tensor, step: float | None) -> Tensor:
    if step is not None:
        if not step > 0:
            raise ValueError(f"step: must be > 0, got {step}")
        return torch.full((x.shape[0], 1), float(step), dtype=x.dtype, device=x.device)
    return _FD_REL_STEP * torch.clamp(x.abs().amax(dim=1, keepdim=True), min=1.0)


def _directional_derivatives_fd(
    field: Field, x: Tensor, directions: Tensor, step: float | None, max_rows: int
) -> Tensor:
    """``vᵀ(J v)`` for each direction v (P, n, D) by central differences ``vᵀ(g(x + hv) − g(x − hv))/(2h)``, (P, n)."""
    P, n, _ = directions.shape
    h = _fd_step(x, step)  # (n, 1)
    out = torch.empty(P, n, dtype=x.dtype, device=x.device)
    group = max(1, max_rows // (2 * n))
    for lo in range(0, P, group):
        v = directions[lo : lo + group]  # (p, n, D)
        p = v.shape[0]
        shifted = torch.cat([(x + h * v).reshape(-1, x.shape[1]), (x - h * v).reshape(-1, x.shape[1])])
        y = field(shifted).detach().reshape(2, p, n, -1).to(x.dtype)
        out[lo : lo + p] = ((y[0] - y[1]) * v).sum(dim=-1) / (2 * h[:, 0])
    return out


def divergence_exact(
    field: Field, x: Tensor, *, method: DerivativeMethod = "fd", step: float | None = None, max_rows: int = 65536
) -> Tensor:
    """The exact Jacobian trace ``∇·g(x) = Σ_d ∂g_d/∂x_d`` per sample, (n,): D backward passes (autograd) or 2D
    field evaluations (central differences in float64, error O(h²) with h ≈ 6e-6·max(1, |x|_∞)).

    Args:
        field: ``(n, D) -> (n, D)``, rows independent.
        x: points (n, D).
        method: ``"autograd"`` (the field must be differentiable) or ``"fd"``.
        step: finite-difference step (default relative, see above).
        max_rows: largest batch passed to the field at once (fd).

    Raises:
        ValueError: ``method`` unknown, or (autograd) a field output without a graph to x.
    """
    x = _check_field_input(x)
    n, D = x.shape
    if method == "fd":
        x = x.double()
        eye = torch.eye(D, dtype=x.dtype, device=x.device)
        directions = eye[:, None, :].expand(D, n, D)  # basis vectors e_d: e_dᵀ J e_d = ∂g_d/∂x_d
        return _directional_derivatives_fd(field, x, directions, step, max_rows).sum(dim=0)
    if method != "autograd":
        raise ValueError(f"method: unknown derivative method {method!r}{did_you_mean(method, ('autograd', 'fd'))}")
    x = x.detach().clone().requires_grad_(True)
    div = torch.zeros(n, dtype=x.dtype, device=x.device)
    with torch.enable_grad():
        y = field(x)
        _check_differentiable(y)
        for d in range(D):
            (g,) = torch.autograd.grad(y[:, d].sum(), x, retain_graph=d < D - 1, allow_unused=True)
            if g is not None:
                div += g[:, d].detach()
    return div


def _check_differentiable(y: Tensor) -> None:
    """A field evaluated for autograd must carry a graph back to x: one computed under ``torch.no_grad``, detached
    or constant would otherwise read as divergence 0."""
    if not y.requires_grad:
        raise ValueError(
            "method: the field's output has no autograd graph to x (computed under torch.no_grad, detached, or "
            "constant), so autograd cannot differentiate it; use method='fd'"
        )


@dataclass
class HutchinsonEstimate:
    """Hutchinson's divergence estimate per sample: ``mean`` (n,) and its standard error ``se`` (n,)."""

    mean: Tensor
    se: Tensor
    num_probes: int


def divergence_hutchinson(
    field: Field,
    x: Tensor,
    *,
    num_probes: int = 16,
    seed: int = 0,
    method: DerivativeMethod = "fd",
    step: float | None = None,
    max_rows: int = 65536,
) -> HutchinsonEstimate:
    """Hutchinson's estimator ``∇·g ≈ (1/m) Σ_j v_jᵀ J v_j`` with Rademacher probes v_j ∈ {±1}^D (Hutchinson
    1989, doi:10.1080/03610918908812806), seeded; the standard error is the sample sd over probes / √m.
    ``J v`` by a vector–Jacobian product (autograd, ``vᵀJ v = (Jᵀv)ᵀv``) or by central differences.
    """
    x = _check_field_input(x)
    if num_probes < 2:
        raise ValueError(f"num_probes: need ≥ 2 for a standard error, got {num_probes}")
    n, D = x.shape
    gen = seeded_generator(seed)
    probes = (2 * torch.randint(0, 2, (num_probes, n, D), generator=gen) - 1).to(torch.float64).to(x.device)
    if method == "fd":
        x = x.double()
        est = _directional_derivatives_fd(field, x, probes, step, max_rows)  # (m, n)
    elif method == "autograd":
        xg = x.detach().clone().requires_grad_(True)
        probes = probes.to(x.dtype)
        est = torch.zeros(num_probes, n, dtype=x.dtype, device=x.device)
        with torch.enable_grad():
            y = field(xg)
            _check_differentiable(y)
            for j in range(num_probes):
                (g,) = torch.autograd.grad(
                    (y * probes[j]).sum(), xg, retain_graph=j < num_probes - 1, allow_unused=True
                )
                if g is not None:
                    est[j] = (g.detach() * probes[j]).sum(dim=1)
    else:
        raise ValueError(f"method: unknown derivative method {method!r}{did_you_mean(method, ('autograd', 'fd'))}")
    return HutchinsonEstimate(est.mean(dim=0), est.std(dim=0, unbiased=True) / math.sqrt(num_probes), num_probes)


def _tile_labels(cond: Tensor | int | None, base: int, batch: int, device: torch.device) -> Tensor:
    """Labels for a batch made of ``batch // base`` stacked copies of the ``base`` original samples."""
    if cond is None or isinstance(cond, int):
        return as_cond(cond, batch, device)
    labels = as_cond(cond, base, device)
    if batch % base:
        raise ValueError(f"x: batch {batch} is not a multiple of the {base} samples the labels were given for")
    return labels.repeat(batch // base)


def guidance_field(
    denoiser: Denoiser,
    guider: Guider,
    cond: Tensor | int | None,
    grid: Tensor,
    index: int,
    *,
    reference: Literal["cond", "uncond"] = "cond",
) -> Field:
    """The guidance field at step ``index`` of ``grid`` (t = grid[index]) as a function of x:

        g(x) = v_guided(x, t) − v_ref(x, t),   v = α'·x0̂ + σ'·ε̂ (probability-flow velocity),

    with v_ref the conditional model (``reference="cond"``, labels ``cond``) or the unconditional one
    (``"uncond"``). For CFG with scale γ and the conditional reference, ``g = (γ − 1)(v_c − v_u)``.

    The guider is reset for every evaluation (``guider.reset(batch)``), so a stateful guider (momentum) is
    evaluated as at its first step. ``cond`` may be an int (all samples), None, or labels (n,) for n samples;
    the field then accepts batches of stacked copies (n·k, D), as the finite differences make.
    """
    if reference not in ("cond", "uncond"):
        raise ValueError(f"reference: expected 'cond' or 'uncond', got {reference!r}")
    grid = torch.as_tensor(grid, dtype=torch.float64)
    if not 0 <= index < grid.numel() - 1:
        raise ValueError(f"index: step index must lie in [0, {grid.numel() - 2}], got {index}")
    t = float(grid[index])
    if float(denoiser.path.coefficients(torch.tensor(t, dtype=torch.float64)).sigma) == 0:
        raise ValueError(f"index: σ = 0 at t = {t}; the velocity is undefined there")
    base = cond.shape[0] if isinstance(cond, Tensor) and cond.ndim > 0 else 1

    def field(x: Tensor) -> Tensor:
        labels = _tile_labels(cond, base, x.shape[0], x.device)
        guider.reset(x.shape[0])
        guided = GuidedModel(denoiser, guider, labels, grid)
        v_guided = guided.velocity(guided(x, index), t)
        ref_labels = labels if reference == "cond" else torch.full_like(labels, NULL_COND)
        plain = GuidedModel(denoiser, None, ref_labels, grid)
        return v_guided - plain.velocity(plain(x, index), t)

    return field


@dataclass
class ConservationTerms:
    """Per-sample terms of ``∇·(p g)/p = ∇·g + g·∇log p`` at one time, each (n,).

    ``divergence_se`` is Hutchinson's standard error (None for the exact trace).
    """

    divergence: Tensor
    flux: Tensor
    residual: Tensor
    divergence_se: Tensor | None = None


def conservation_terms(
    field: Field,
    score: Tensor | Field,
    x: Tensor,
    *,
    divergence: Literal["exact", "hutchinson"] = "exact",
    method: DerivativeMethod = "fd",
    num_probes: int = 16,
    seed: int = 0,
    step: float | None = None,
) -> ConservationTerms:
    """Divergence term ``∇·g``, score-parallel flux ``g·∇log p`` and their sum, the conservation residual
    ``∇·g + g·∇log p = ∇·(p g)/p`` (arXiv 2605.20079), at points x (n, D).

    Args:
        field: the guidance field g.
        score: ``∇log p`` at x (n, D), or a function of x giving it.
        divergence: ``"exact"`` (Jacobian trace) or ``"hutchinson"`` (seeded, with its standard error).
        method: ``"fd"`` (float64 central differences) or ``"autograd"``.
    """
    x = _check_field_input(x)
    g = field(x.double() if method == "fd" else x).detach().double()
    s = (score(x) if callable(score) else score).detach().double().reshape(g.shape)
    se = None
    if divergence == "exact":
        div = divergence_exact(field, x, method=method, step=step).double()
    elif divergence == "hutchinson":
        est = divergence_hutchinson(field, x, num_probes=num_probes, seed=seed, method=method, step=step)
        div, se = est.mean.double(), est.se.double()
    else:
        raise ValueError(f"divergence: expected 'exact' or 'hutchinson', got {divergence!r}")
    flux = (g * s).sum(dim=1)
    return ConservationTerms(div, flux, div + flux, se)


@dataclass(frozen=True)
class ConservationTrajectory(Record):
    """The conservation terms summarized over samples at each evaluated time of a trajectory.

    Attributes:
        times: evaluated times (recorded times with σ_t > 0).
        divergence, flux, residual: per-time summaries of ∇·g, g·∇log p_t and their sum.
        abs_residual: per-time summary of |∇·g + g·∇log p_t|.
        divergence_se_mean: per time, the mean Hutchinson standard error (None for the exact trace).
        reference: ``"cond"`` or ``"uncond"``; estimator: ``"exact"`` or ``"hutchinson"``.
    """

    times: list[float]
    divergence: Series
    flux: Series
    residual: Series
    abs_residual: Series
    divergence_se_mean: list[float] | None
    reference: str
    estimator: str


def conservation_along_trajectory(
    denoiser: Denoiser,
    guider: Guider,
    target: object,
    times: Tensor | Sequence[float],
    states: Tensor,
    cond: Tensor | int | None,
    grid: Tensor,
    *,
    reference: Literal["cond", "uncond"] = "cond",
    divergence: Literal["exact", "hutchinson"] = "exact",
    method: DerivativeMethod = "fd",
    num_probes: int = 16,
    seed: int = 0,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
) -> ConservationTrajectory:
    """The conservation decomposition along a recorded trajectory (``SampleResult.times`` and ``.trajectory``
    of ``sample(..., record_every=k)`` on ``grid``): at each recorded time t_r with σ > 0, the guidance field of
    :func:`guidance_field` at the states x_r, its divergence, the flux with the target's exact score
    ``∇log p_t(x | c)`` (reference ``"cond"``) or ``∇log p_t(x)`` (``"uncond"``), and the residual.

    Every recorded time must be a grid time (its step index is looked up); the final t = 0 is skipped.
    """
    states, times = as_trajectory(states, times)
    grid = torch.as_tensor(grid, dtype=torch.float64)
    path = denoiser.path
    n = states.shape[1]
    score_cond: Tensor | int | None = None if reference == "uncond" else cond
    if isinstance(score_cond, Tensor):
        score_cond = as_cond(score_cond, n)
    kept_times: list[float] = []
    div_rows, flux_rows, res_rows, se_rows = [], [], [], []
    for r, t in enumerate(times.tolist()):
        if float(path.coefficients(torch.tensor(t, dtype=torch.float64)).sigma) == 0:
            continue
        index = int(torch.argmin((grid - t).abs()))
        if abs(float(grid[index]) - t) > 1e-9 * max(1.0, abs(t)) or index == grid.numel() - 1:
            raise ValueError(f"times: recorded time {t} is not a step time of the grid")
        field = guidance_field(denoiser, guider, cond, grid, index, reference=reference)
        x = states[r]
        score = target.score(x, torch.full((n,), t, dtype=x.dtype), path, score_cond)  # type: ignore[attr-defined]
        terms = conservation_terms(
            field, score, x, divergence=divergence, method=method, num_probes=num_probes, seed=seed + r
        )
        kept_times.append(t)
        div_rows.append(terms.divergence)
        flux_rows.append(terms.flux)
        res_rows.append(terms.residual)
        if terms.divergence_se is not None:
            se_rows.append(float(terms.divergence_se.mean()))
    if not kept_times:
        raise ValueError("times: no recorded time with σ > 0 to evaluate")
    stack = torch.stack
    residual = stack(res_rows)
    return ConservationTrajectory(
        times=kept_times,
        divergence=summarize(kept_times, stack(div_rows), quantiles),
        flux=summarize(kept_times, stack(flux_rows), quantiles),
        residual=summarize(kept_times, residual, quantiles),
        abs_residual=summarize(kept_times, residual.abs(), quantiles),
        divergence_se_mean=se_rows if divergence == "hutchinson" else None,
        reference=reference,
        estimator=divergence,
    )
