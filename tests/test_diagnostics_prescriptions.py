"""Prescriptions of arXiv 2409.13074: largest in-support γ (list and bisection), mean projected trajectory and
its monotonicity, on synthetic sample functions with known answers."""

import json

import pytest
import torch

from guidelab.diagnostics import (
    is_monotone,
    largest_scale,
    largest_scale_in_support,
    largest_scale_monotone,
    mean_projected_trajectory,
)

U = ((torch.arange(1000, dtype=torch.float64) + 0.5) / 1000)[:, None]  # stratified U(0, 1)


def spread(gamma: float) -> torch.Tensor:
    """Samples γ·U on [0, γ]: the fraction inside the support [0, 5] is min(1, 5/γ)."""
    return gamma * U


def in_support(x: torch.Tensor) -> torch.Tensor:
    return (x[:, 0] >= 0) & (x[:, 0] <= 5)


def test_largest_gamma_in_support_by_bisection_and_list():
    """Fraction ≥ 0.9 ⇔ γ ≤ 5/0.9 = 5.556 (up to the stratification, 1/1000)."""
    res = largest_scale_in_support(spread, in_support, fraction=0.9, bracket=(1.0, 20.0), tol=0.01)
    assert res.method == "bisection"
    assert 5.556 - 0.02 < res.scale <= 5.556 + 0.01
    assert all(v >= 0.9 for v, ok in zip(res.values, res.passed, strict=True) if ok)
    listed = largest_scale_in_support(spread, in_support, fraction=0.9, scales=[1, 2, 4, 5.5, 6, 8])
    assert listed.scale == 5.5
    assert listed.passed == [True] * 4 + [False] * 2
    assert listed.values[-1] == pytest.approx(5 / 8, abs=1e-3)
    json.dumps(res.to_dict(), allow_nan=False)


def test_largest_gamma_edge_cases():
    assert largest_scale_in_support(spread, in_support, fraction=0.9, bracket=(6.0, 9.0)).scale is None
    top = largest_scale_in_support(spread, in_support, fraction=0.9, bracket=(1.0, 3.0))
    assert top.scale == 3.0
    assert len(top.scales) == 2
    assert largest_scale_in_support(spread, in_support, scales=[7.0, 8.0]).scale is None
    with pytest.raises(ValueError, match="exactly one"):
        largest_scale(lambda g: g, lambda v: v < 1)
    with pytest.raises(ValueError, match="fraction"):
        largest_scale_in_support(spread, in_support, fraction=1.5, scales=[1.0])


def test_is_monotone():
    assert is_monotone([3.0, 2.0, 2.0, 0.5])
    assert is_monotone([3.0, 2.0, 2.0, 0.5], direction="decreasing")
    assert not is_monotone([3.0, 2.0, 2.0, 0.5], direction="increasing")
    assert not is_monotone([0.0, 1.0, 0.9])
    assert is_monotone([0.0, 1.0, 0.9], tolerance=0.2)
    assert is_monotone([1.0])


def overshooting_states(gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean path m(t) = t·0 + (1 − t)·1 plus an overshoot bump (γ − 3)₊·sin(π(1 − t))·0.5, with per-sample
    spread ±0.1: monotone iff γ ≤ 3."""
    times = torch.linspace(1, 0, 11, dtype=torch.float64)
    s = 1 - times
    mean = s + max(gamma - 3, 0) * 0.5 * torch.sin(torch.pi * s)
    offsets = torch.tensor([-0.1, 0.1], dtype=torch.float64)
    along = mean[:, None] + offsets[None, :]  # (R, 2 samples)
    states = torch.stack([along, torch.full_like(along, 7.0)], dim=-1)  # the second coordinate is orthogonal
    return times, states


def test_mean_projected_trajectory():
    times, states = overshooting_states(2.0)
    res = mean_projected_trajectory(states, times, torch.tensor([2.0, 0.0]))
    assert res.mean == pytest.approx((1 - times).tolist(), abs=1e-12)
    assert res.sd == pytest.approx([0.1 * 2**0.5] * 11)
    assert res.monotone
    shifted = mean_projected_trajectory(states, times, torch.tensor([0.0, 1.0]), origin=torch.tensor([0.0, 7.0]))
    assert shifted.mean == pytest.approx([0.0] * 11)
    assert not mean_projected_trajectory(*overshooting_states(5.0)[::-1], torch.tensor([1.0, 0.0])).monotone
    json.dumps(res.to_dict(), allow_nan=False)


def test_largest_gamma_monotone():
    res = largest_scale_monotone(overshooting_states, torch.tensor([1.0, 0.0]), bracket=(1.0, 10.0), tol=0.01)
    # the bump's slope must beat the linear rise: 0.5(γ − 3)·π·|cos| > 1 at the end, i.e. γ > 3 + 2/π
    assert 3.0 <= res.scale <= 3 + 2 / torch.pi + 0.02
    listed = largest_scale_monotone(overshooting_states, torch.tensor([1.0, 0.0]), scales=[1.0, 2.0, 3.0, 6.0])
    assert listed.scale == 3.0
    assert listed.passed == [True, True, True, False]
