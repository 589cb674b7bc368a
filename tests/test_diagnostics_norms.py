"""Norm of x0̂ over time: per-sample norms over non-batch dimensions, per-time summaries, and norm growth
under CFG on exact scores."""

import json

import numpy as np
import pytest
import torch

from conftest import TwoGaussians1D
from guidelab.diagnostics import norm_trajectory, per_sample_norms
from guidelab.grids import make_grid
from guidelab.guiders import CFG
from guidelab.paths import get_path
from guidelab.sampling import sample


def test_per_sample_norms_over_all_non_batch_dimensions():
    x = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    expected = [float(np.linalg.norm(np.arange(12))), float(np.linalg.norm(np.arange(12, 24)))]
    assert per_sample_norms(x).tolist() == pytest.approx(expected, rel=1e-12)
    assert per_sample_norms(x).dtype == torch.float64


def test_norm_trajectory_summary_hand_built():
    states = torch.tensor([[[3.0, 4.0], [0.0, 1.0]], [[6.0, 8.0], [0.0, 0.0]]])  # norms [5, 1], [10, 0]
    res = norm_trajectory(states, [1.0, 0.0], quantiles=(0.0, 0.5, 1.0))
    assert res.times == [1.0, 0.0]
    assert res.mean == pytest.approx([3.0, 5.0])
    assert res.sd == pytest.approx([float(np.std([5, 1], ddof=1)), float(np.std([10, 0], ddof=1))])
    assert res.quantiles == [pytest.approx([1.0, 3.0, 5.0]), pytest.approx([0.0, 5.0, 10.0])]
    json.dumps(res.to_dict(), allow_nan=False)
    with pytest.raises(ValueError, match="times"):
        norm_trajectory(states, [1.0])


def test_cfg_grows_the_norm_of_x0_hat():
    """On ½N(1, 1) + ½N(−1, 1), x0̂ of class + under CFG γ: at t = 1 it is exactly γ·1 (m_u = 0, m_c = 1) and the
    final samples have a larger mean norm than the unguided ones."""
    path = get_path("rf")
    grid = make_grid("uniform", 16, path)
    finals = {}
    for gamma in (1.0, 4.0):
        out = sample(
            TwoGaussians1D(path), CFG(gamma), grid=grid, n=300, shape=(1,), cond=0, dtype=torch.float64, record_every=4
        )
        res = norm_trajectory(out.x0_trajectory, out.times)
        assert res.mean[0] == pytest.approx(gamma, rel=1e-9)
        assert res.sd[0] == pytest.approx(0.0, abs=1e-9)
        finals[gamma] = res.mean[-1]
    assert finals[4.0] > finals[1.0] + 0.5
