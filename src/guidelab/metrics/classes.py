"""Class and mode statistics against an analytic target: class fidelity, mode weights and coverage by exact
component assignment, and the within-mode variance ratio to the truth.

Component assignment: a sample goes to the component of the class sub-mixture with the largest
responsibility, ``k*(x) = argmax_{k ∈ c} [log w_k^{(c)} + log p_t(x | k)]``, evaluated at t = 0 (the data
density; all paths agree there) or at a small t for targets whose t = 0 density is discontinuous.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from guidelab.denoiser import NULL_COND
from guidelab.metrics.base import Record, as_points, float_or_none, path_for, resolve_cond, seeded_generator
from guidelab.paths import NoisePath

__all__ = [
    "ClassFidelity",
    "ModeVariance",
    "ModeWeights",
    "assign_components",
    "class_fidelity",
    "component_covariances",
    "component_log_responsibilities",
    "mode_weights",
    "within_mode_variance",
]


def _times(x: Tensor, t: float) -> Tensor:
    return torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)


def component_log_responsibilities(
    x: Tensor, target: object, cond: int | str | None = None, *, t: float = 0.0, path: NoisePath | None = None
) -> Tensor:
    """``log r_k(x) = log w_k^{(c)} + log p_t(x | k) − log p_t(x | c)`` for every component, (n, K): −∞ outside
    the class; NaN rows where no component of the class has positive density at x."""
    x = as_points(x, "x")
    c = resolve_cond(target, cond)
    log_w = target.log_mixture_weights(c, x.shape[0]).to(x)  # type: ignore[attr-defined]
    joint = log_w + target.component_log_prob_t(x, _times(x, t), path_for(t, path)).to(x)  # type: ignore[attr-defined]
    norm = torch.logsumexp(joint, dim=1, keepdim=True)
    out = joint - norm
    return torch.where(torch.isfinite(norm), out, torch.full_like(out, float("nan")))


def assign_components(
    x: Tensor, target: object, cond: int | str | None = None, *, t: float = 0.0, path: NoisePath | None = None
) -> Tensor:
    """The component of largest responsibility under the class sub-mixture, (n,) int64; −1 where undefined
    (no component of the class has positive density at x, e.g. outside a box support at t = 0)."""
    log_r = component_log_responsibilities(x, target, cond, t=t, path=path)
    k = torch.argmax(torch.nan_to_num(log_r, nan=-torch.inf), dim=1)
    return torch.where(torch.isnan(log_r).any(dim=1), torch.full_like(k, -1), k)


@dataclass(frozen=True)
class ClassFidelity(Record):
    """Exact class posterior of samples meant for class c.

    Attributes:
        mean_posterior: mean of p(c | x) over the samples where it is defined (None if nowhere).
        accuracy: fraction of those samples whose most probable class is c.
        undefined_fraction: fraction of samples where p(c | x) is undefined (zero density under every class).
    """

    mean_posterior: float | None
    accuracy: float | None
    undefined_fraction: float


def class_fidelity(
    x: Tensor, target: object, cond: int | str, *, t: float = 0.0, path: NoisePath | None = None
) -> ClassFidelity:
    """Mean exact posterior ``(1/n) Σ_i p(c | x_i)`` at t = 0 (or a small t), ``p(c | x) ∝ π_c p(x | c)``, and the
    accuracy of the Bayes classifier ``argmax_c' p(c' | x)`` on the samples."""
    x = as_points(x, "x")
    c = resolve_cond(target, cond)
    if c == NULL_COND:
        raise ValueError("cond: class fidelity needs a class, got the null condition")
    log_post = target.class_log_posterior(x, _times(x, t), path_for(t, path))  # type: ignore[attr-defined]
    defined = ~torch.isnan(log_post).any(dim=1)
    n_def = int(defined.sum())
    if n_def == 0:
        return ClassFidelity(None, None, 1.0)
    post = log_post[defined].exp()
    return ClassFidelity(
        mean_posterior=float(post[:, c].mean()),
        accuracy=float((post.argmax(dim=1) == c).double().mean()),
        undefined_fraction=1 - n_def / x.shape[0],
    )


@dataclass(frozen=True)
class ModeWeights(Record):
    """Mode weights by exact component assignment against the true within-class weights.

    Attributes:
        components: the component indices of the class (its modes).
        true_weights: w_k^{(c)} (π_c w_k for the null condition).
        sample_weights: fraction of the assigned samples in each mode.
        covered: whether each mode holds at least ``threshold`` × its true weight.
        coverage: fraction of modes covered.
        tv: ½ Σ_k |ŵ_k − w_k|.
        unassigned_fraction: samples where the assignment is undefined (excluded from the weights).
    """

    components: list[int]
    true_weights: list[float]
    sample_weights: list[float]
    covered: list[bool]
    coverage: float
    tv: float
    unassigned_fraction: float


def mode_weights(
    x: Tensor,
    target: object,
    cond: int | str | None = None,
    *,
    threshold: float = 0.1,
    t: float = 0.0,
    path: NoisePath | None = None,
) -> ModeWeights:
    """Fraction of samples per mode ``ŵ_k = #{i : k*(x_i) = k}/n`` against the true weights ``w_k^{(c)}``; a mode
    counts as covered when ``ŵ_k ≥ threshold·w_k`` (default 0.1: a mode holding a tenth of its mass)."""
    x = as_points(x, "x")
    c = resolve_cond(target, cond)
    k = assign_components(x, target, c, t=t, path=path)
    true_log_w = target.log_mixture_weights(c, 1)[0].double()  # type: ignore[attr-defined]
    members = torch.nonzero(torch.isfinite(true_log_w)).flatten()
    w_true = true_log_w[members].exp()
    assigned = k >= 0
    n_assigned = int(assigned.sum())
    counts = torch.bincount(k[assigned], minlength=true_log_w.numel()).double().to(w_true.device)[members]
    w_hat = counts / n_assigned if n_assigned > 0 else torch.zeros_like(w_true)
    covered = w_hat >= threshold * w_true
    return ModeWeights(
        components=members.tolist(),
        true_weights=w_true.tolist(),
        sample_weights=w_hat.tolist(),
        covered=covered.tolist(),
        coverage=float(covered.double().mean()),
        tv=float(0.5 * (w_hat - w_true).abs().sum()),
        unassigned_fraction=1 - n_assigned / x.shape[0],
    )


def component_covariances(
    target: object, *, num_samples: int = 20_000, seed: int = 0, t: float = 0.0, path: NoisePath | None = None
) -> Tensor:
    """True covariance of every component, (K, D, D) float64.

    From ``target.covariances`` (Gaussian mixtures), ``diag((high − low)²/12)`` for boxes (``target.low``,
    ``target.high``) or ``target.component_covariance(k)`` when the target has them; otherwise estimated from
    ``num_samples`` exact samples per class (seeded), each assigned to its component by
    :func:`assign_components` (so the reference shares the assignment rule of the samples).
    """
    if hasattr(target, "covariances"):
        return torch.as_tensor(target.covariances, dtype=torch.float64)
    if hasattr(target, "low") and hasattr(target, "high"):
        width = torch.as_tensor(target.high, dtype=torch.float64) - torch.as_tensor(target.low, dtype=torch.float64)
        return torch.diag_embed(width.square() / 12)  # uniform on [a, b]: variance (b − a)²/12 per axis
    K = target.num_components  # type: ignore[attr-defined]
    if hasattr(target, "component_covariance"):
        return torch.stack([torch.as_tensor(target.component_covariance(k), dtype=torch.float64) for k in range(K)])
    D = target.dim  # type: ignore[attr-defined]
    out = torch.full((K, D, D), float("nan"), dtype=torch.float64)
    gen = seeded_generator(seed)
    for c in range(target.num_classes):  # type: ignore[attr-defined]
        ref = target.sample(num_samples, c, gen).double()  # type: ignore[attr-defined]
        k = assign_components(ref, target, c, t=t, path=path)
        for j in torch.unique(k[k >= 0]).tolist():
            pts = ref[k == j]
            if pts.shape[0] > 1:
                out[j] = torch.cov(pts.T).reshape(D, D)
    return out


@dataclass(frozen=True)
class ModeVariance(Record):
    """Within-mode variance ratio per component of the class.

    Attributes:
        components: component indices.
        ratio: ``tr Ĉov_k / tr Σ_k`` (None where fewer than 2 samples are assigned).
        sample_trace, true_trace: the two traces (sample trace None where undefined).
        counts: samples assigned to each component.
    """

    components: list[int]
    ratio: list[float | None]
    sample_trace: list[float | None]
    true_trace: list[float]
    counts: list[int]


def within_mode_variance(
    x: Tensor,
    target: object,
    cond: int | str | None = None,
    *,
    t: float = 0.0,
    path: NoisePath | None = None,
    true_covariances: Tensor | None = None,
) -> ModeVariance:
    """Per component k of the class: ``tr Ĉov(x_i : k*(x_i) = k) / tr Σ_k``, the trace of the sample covariance
    of the points assigned to k (unbiased, n_k − 1) over the trace of the true component covariance (1 when
    the mode is reproduced; < 1 when guidance shrinks it). Assignment truncates the tails of overlapping modes,
    so exact samples give a ratio slightly below 1 unless ``true_covariances`` comes from
    :func:`component_covariances` with the sample-based reference."""
    x = as_points(x, "x")
    c = resolve_cond(target, cond)
    k = assign_components(x, target, c, t=t, path=path)
    cov = component_covariances(target, t=t, path=path) if true_covariances is None else true_covariances.double()
    members = torch.nonzero(torch.isfinite(target.log_mixture_weights(c, 1)[0])).flatten().tolist()  # type: ignore[attr-defined]
    ratio, sample_trace, true_trace, counts = [], [], [], []
    for j in members:
        pts = x[k == j]
        tr_true = float(torch.diagonal(cov[j]).sum())
        tr_hat = float(pts.var(dim=0, unbiased=True).sum()) if pts.shape[0] > 1 else float("nan")
        counts.append(int(pts.shape[0]))
        true_trace.append(tr_true)
        sample_trace.append(float_or_none(tr_hat))
        ratio.append(float_or_none(tr_hat / tr_true))
    return ModeVariance(members, ratio, sample_trace, true_trace, counts)
