"""Feynman–Kac correctors for classifier-free guidance (Skreta et al. 2025, arXiv 2503.02819; official code
martaskrt/fkc-diffusion ``applications/images/edm2/generate_images.py``, ``edm_sampler_new`` and
``sample_cat_sys``).

CFG with scale γ does not sample the tilted target ``q_t ∝ p_t(x | c)^γ p_t(x)^{1−γ}`` it was meant for
(Chidambaram et al., arXiv 2409.13074). FKC runs K particles through the ordinary CFG-guided *stochastic* sampler,
gives each a log-weight, and resamples, so that the weighted particles track q_t.

Derivation (VE-cast state x̃ = x/α, λ = σ/α, s = ∇log p = −ε̂/λ). The marginals solve the heat equation
``∂_λ p = λ·Δp`` and ``∂_λ log p = λ(∇·s + ‖s‖²)``. Run, from high λ to low (τ = −λ), any of the SDEs
``dx̃ = (1 + ρ)λ·s_q dτ + √(2ρλ) dW`` (ρ = 1 the reverse SDE, ρ = 0 the probability-flow ODE) with the CFG score
``s_q = s_u + γ(s_c − s_u) = ∇log q̃``, ``q̃ = p_c^γ p_u^{1−γ}``. The Feynman–Kac weight that makes the particles
track q̃ is ``d log w = g dτ`` with ``g = [∂_τ q̃ + ∇·(q̃ b) − ρλ·Δq̃]/q̃``. With ``Δq̃/q̃ = ∇·s_q + ‖s_q‖²``:
``g = ∂_τ log q̃ + λ(∇·s_q + ‖s_q‖²)`` for every ρ, and
``∂_τ log q̃ = −λ[γ(∇·s_c + ‖s_c‖²) + (1 − γ)(∇·s_u + ‖s_u‖²)]``. The divergences cancel (∇·s_q is the same
geometric mixture of ∇·s_c and ∇·s_u), leaving ``g = λ[‖s_q‖² − γ‖s_c‖² − (1 − γ)‖s_u‖²] = λγ(γ − 1)‖s_c − s_u‖²
= γ(γ − 1)‖ε̂_c − ε̂_u‖²/λ``, so over a step λ_cur → λ_next (Δℓ = log λ_cur − log λ_next > 0)

    Δlog w = γ(γ − 1)·‖ε̂_c − ε̂_u‖²·Δℓ                       (``increment="log"``, the default)

with ε̂ evaluated at the step's start. The official code takes the same integrand with a first-order Δℓ,
``(λ_cur − λ_next)/λ_cur`` (its ``d_a = −γ(γ − 1)·‖s_u − s_c‖²·dt·t_cur`` with t = λ, s = −ε̂/λ)
(``increment="first-order"``): the two agree to first order in the step. The weight does not depend on the churn
ρ, but with ρ = 0 (an ODE) resampling only duplicates deterministic trajectories and collapses diversity, so a
deterministic solver is refused. The last step (onto λ = 0, where Δℓ = ∞) carries no weight, as in the official
code, and a step from λ = ∞ carries none either (there ε̂_c = ε̂_u, ‖ε̂_c − ε̂_u‖²·Δℓ → 0).

Resampling is systematic, per class (particles of one condition resample among themselves), as in the official
``sample_cat_sys``: one ``u ~ U(0, 1)`` per group, positions ``u_i = (u + i/K) mod 1``, index ``i`` = the first
bin of the cumulative normalised weights that reaches ``u_i``. By default every weighted step resamples (the
official schedule); with ``ess_threshold`` a group resamples only when its effective sample size
``(Σw)²/Σw²`` falls under ``ess_threshold·K`` — and always at the last weighted step, so the returned particles
are equally weighted. Log-weights reset to 0 after each resampling. The official code also centres each step's
increments and clamps them to ±1 (±2 in its Heun sampler): ``clamp`` (off by default) does both. Its clip of
the normalised weights at 10⁻⁶ is not reproduced.

Only the ``cfg`` guider with a constant scale is accepted: the weight above is derived for the CFG drift with a
fixed γ (another guider's drift, or a γ changing in time, needs other weights). CFG has no per-particle state;
the stochastic solvers keep no history between steps, so a resampling permutes the state and the divergence
flags, nothing else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor

from guidelab.guiders.base import GuidedStep, Guider, Predictions, StepContext
from guidelab.guiders.cfg import CFG
from guidelab.validation import did_you_mean

if TYPE_CHECKING:
    from guidelab.sampling import GuidedModel, Monitor

__all__ = [
    "INCREMENTS",
    "FKCConfig",
    "FKCorrector",
    "effective_sample_size",
    "log_weight_increment",
    "systematic_resample",
]

INCREMENTS = ("log", "first-order")


def log_weight_increment(
    eps_cond: Tensor,
    eps_uncond: Tensor,
    gamma: float | Tensor,
    lam_cur: float,
    lam_next: float,
    form: str = "log",
) -> Tensor:
    """FKC's log-weight increment of one step, ``γ(γ − 1)·‖ε̂_c − ε̂_u‖²·Δℓ`` (float64, shape (batch,)).

    Args:
        eps_cond, eps_uncond: the conditional and unconditional ε̂ at the step's start (batch, ...).
        gamma: the CFG scale γ (Ho form), a number or per-sample (batch,).
        lam_cur, lam_next: λ = σ/α at the step's start and end, λ_cur > λ_next > 0.
        form: ``"log"``: Δℓ = log λ_cur − log λ_next; ``"first-order"``: Δℓ = (λ_cur − λ_next)/λ_cur (official code).
    """
    if form not in INCREMENTS:
        raise ValueError(f"increment: unknown form {form!r}{did_you_mean(form, INCREMENTS)}")
    sq = (eps_cond.double() - eps_uncond.double()).reshape(eps_cond.shape[0], -1).square().sum(dim=1)
    dl = math.log(lam_cur) - math.log(lam_next) if form == "log" else (lam_cur - lam_next) / lam_cur
    g = torch.as_tensor(gamma, dtype=torch.float64, device=sq.device)
    return g * (g - 1) * sq * dl


def systematic_resample(logits: Tensor, u: float) -> Tensor:
    """Systematic resampling of K particles with unnormalised log-weights ``logits`` (K,) and offset ``u`` ∈ [0, 1):
    positions ``u_i = (u + i/K) mod 1``, index i = the first j with ``cumsum(softmax(logits))_j ≥ u_i``
    (official ``sample_cat_sys``). Returns (K,) int64 indices; −∞ logits are never chosen."""
    k = logits.shape[0]
    w = torch.softmax(logits.double().cpu(), dim=0)
    bins = torch.cumsum(w, dim=0)
    bins[-1] = 1.0
    pos = torch.remainder(u + torch.arange(k, dtype=torch.float64) / k, 1.0)
    idx = torch.searchsorted(bins, pos, right=False)
    return idx.clamp_(max=k - 1)


def effective_sample_size(logits: Tensor) -> float:
    """``(Σw)²/Σw²`` of the weights ``w = exp(logits)`` (K,): K for equal weights, 1 for one particle."""
    w = torch.softmax(logits.double(), dim=0)
    return float(1.0 / w.square().sum())


@dataclass(frozen=True)
class FKCConfig:
    """Feynman–Kac corrector settings (see the module docstring).

    Args:
        increment: ``"log"`` (Δℓ = log λ_cur − log λ_next, default) or ``"first-order"`` ((λ_cur − λ_next)/λ_cur,
            the official code's).
        ess_threshold: ``None`` resamples at every weighted step (official); a number in (0, 1] resamples a group
            only when its ESS < ess_threshold·K (and at the last weighted step).
        clamp: ``None`` (default) or a bound c > 0: centre each step's increments on their group mean and clamp
            them to [−c, c] (official: c = 1 with its SDE sampler). Biases the target; off by default.
    """

    increment: Literal["log", "first-order"] = "log"
    ess_threshold: float | None = None
    clamp: float | None = None

    def __post_init__(self) -> None:
        if self.increment not in INCREMENTS:
            raise ValueError(
                f"fkc.increment: unknown form {self.increment!r}{did_you_mean(self.increment, INCREMENTS)}"
            )
        if self.ess_threshold is not None and not 0 < self.ess_threshold <= 1:
            raise ValueError(f"fkc.ess_threshold: must lie in (0, 1], got {self.ess_threshold}")
        if self.clamp is not None and not (self.clamp > 0 and math.isfinite(self.clamp)):
            raise ValueError(f"fkc.clamp: must be a finite number > 0, got {self.clamp}")

    def config(self) -> dict[str, Any]:
        return {"increment": self.increment, "ess_threshold": self.ess_threshold, "clamp": self.clamp}

    @classmethod
    def from_config(cls, spec: FKCConfig | dict[str, Any] | bool | None) -> FKCConfig | None:
        """``None``/``False`` → no FKC, ``True`` → defaults, a dict → its fields (unknown keys are a ValueError)."""
        if spec is None or spec is False:
            return None
        if spec is True:
            return cls()
        if isinstance(spec, FKCConfig):
            return spec
        keys = ("increment", "ess_threshold", "clamp")
        unknown = sorted(set(spec) - set(keys))
        if unknown:
            raise ValueError(f"fkc.{unknown[0]}: unknown key{did_you_mean(unknown[0], keys)}")
        return cls(**spec)

    def start(self, guider: Guider | None, labels: Tensor, *, solver: str, stochastic: bool, seed: int) -> FKCorrector:
        """The corrector of one run (called by :func:`guidelab.sampling.sample`); checks guider and solver."""
        return FKCorrector(self, guider, labels, solver=solver, stochastic=stochastic, seed=seed)


class _RecordingCFG(CFG):
    """CFG that keeps the step's ‖ε̂_c − ε̂_u‖² terms (at the step's first evaluation, stage 0) for the corrector."""

    def __init__(self, schedule: Any):
        super().__init__(schedule)
        self.last: tuple[int, Tensor, Tensor] | None = None  # (step, eps_c, eps_u)

    def guide(self, preds: Predictions, ctx: StepContext) -> GuidedStep:
        if ctx.stage == 0:
            if "uncond" in preds:
                self.last = (ctx.index, preds.get("cond", "eps"), preds.get("uncond", "eps"))
            else:
                self.last = None
        return super().guide(preds, ctx)


class FKCorrector:
    """One run's Feynman–Kac corrector: weights after every step, resamples per class.

    Attributes:
        guider: the CFG guider the sampler must use (records ε̂_c − ε̂_u).
        ess: per weighted step, the ESS of each class group before resampling (steps, groups), as fractions of K.
        resamplings: number of group resamplings done.
        groups: the class label of each group.
    """

    def __init__(
        self, config: FKCConfig, guider: Guider | None, labels: Tensor, *, solver: str, stochastic: bool, seed: int
    ):
        if not isinstance(guider, CFG) or type(guider) is not CFG:
            name = "none" if guider is None else repr(getattr(guider, "name", type(guider).__name__))
            raise ValueError(
                f"guider: FKC weights are derived for the CFG drift toward p(x|c)^γ p(x)^(1−γ); got {name}, "
                "give a 'cfg' guider"
            )
        spec = guider.schedule.spec()
        if spec.get("name") != "constant":
            raise ValueError(
                f"guider.schedule: FKC needs a constant scale (its weights assume a fixed γ), got {spec.get('name')!r}"
            )
        if not stochastic:
            raise ValueError(
                f"solver: FKC resampling with the deterministic solver {solver!r} (or eta = 0) collapses the particles "
                "onto copies of a few trajectories; use euler-maruyama, ddim with eta > 0, euler-ancestral or "
                "dpm++2s-ancestral"
            )
        self.config = config
        self.guider = _RecordingCFG(guider.schedule)
        labels = labels.reshape(-1).cpu()
        self.groups = torch.unique(labels)
        self.members = [torch.nonzero(labels == g).reshape(-1) for g in self.groups]
        self.log_w = torch.zeros(labels.shape[0], dtype=torch.float64)
        self.rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, 0xF4C]))
        self.ess: list[list[float]] = []
        self.resamplings = 0

    def correct(self, model: GuidedModel, i: int, x_next: Tensor, monitor: Monitor) -> Tensor:
        """Add step ``i``'s increments and resample ``x_next`` (and the monitor's divergence flags) per group."""
        last_weighted = model.steps - 2
        if i > last_weighted:
            return x_next  # the step onto λ = 0 carries no weight
        lam_cur, lam_next = model.lam(model.t(i)), model.lam(model.t(i + 1))
        rec = self.guider.last
        if rec is not None and rec[0] == i and math.isfinite(lam_cur):
            gamma = self.guider.schedule(model.context(i))
            inc = log_weight_increment(rec[1], rec[2], gamma, lam_cur, lam_next, self.config.increment).cpu()
        else:
            inc = torch.zeros_like(self.log_w)
        diverged = monitor.diverged.cpu()
        inc = torch.where(torch.isfinite(inc) & ~diverged, inc, torch.tensor(-math.inf, dtype=torch.float64))
        perm = torch.arange(self.log_w.shape[0])
        step_ess = []
        for members in self.members:
            d = inc[members]
            if self.config.clamp is not None:
                finite = torch.isfinite(d)
                if finite.any():
                    d = torch.where(finite, (d - d[finite].mean()).clamp(-self.config.clamp, self.config.clamp), d)
            logw = self.log_w[members] + d
            if not torch.isfinite(logw).any():
                logw = torch.zeros_like(logw)  # the whole group diverged: nothing to select
            self.log_w[members] = logw
            k = members.numel()
            ess = effective_sample_size(logw)
            step_ess.append(ess / k)
            threshold = self.config.ess_threshold
            if k > 1 and (threshold is None or i == last_weighted or ess < threshold * k):
                idx = systematic_resample(logw, float(self.rng.random()))
                perm[members] = members[idx]
                self.log_w[members] = 0.0
                self.resamplings += 1
        self.ess.append(step_ess)
        if bool((perm != torch.arange(perm.numel())).any()):
            index = perm.to(x_next.device)
            x_next = x_next[index]
            monitor.diverged = monitor.diverged[perm.to(monitor.diverged.device)]
        return x_next

    def ess_tensor(self) -> Tensor:
        """ESS per weighted step and group (steps, groups), as fractions of the group's size."""
        return torch.tensor(self.ess, dtype=torch.float64).reshape(len(self.ess), len(self.members))
