"""In-support fraction, distance to support and edge concentration on exact box samples and hand-built sets."""

import json

import numpy as np
import pytest
import torch

from guidelab.metrics import distance_to_far_edge, distance_to_support, edge_concentration, in_support_fraction
from guidelab.targets.gaussian_mixture import GaussianMixture
from test_metrics_targets import UniformBoxes, chidambaram_boxes_1d


def test_exact_box_samples_are_in_support():
    boxes = chidambaram_boxes_1d(0.5, 1.5)
    gen = torch.Generator().manual_seed(0)
    assert in_support_fraction(boxes.sample(1000, 0, gen), boxes, "+") == 1.0
    assert in_support_fraction(boxes.sample(1000, 1, gen), boxes, "+") == 0.0
    assert in_support_fraction(boxes.sample(1000, None, gen), boxes, None) == 1.0
    boxes2d = UniformBoxes([[0.5, 0.5], [-1.5, -1.5]], [[1.5, 1.5], [-0.5, -0.5]], [0, 1])  # 2D products
    assert in_support_fraction(boxes2d.sample(500, 1, gen), boxes2d, 1) == 1.0


def test_distance_to_support_hand_built():
    boxes = chidambaram_boxes_1d(0.5, 1.5)
    x = torch.tensor([[0.7], [1.5], [1.9], [0.0], [-2.0]], dtype=torch.float64)
    res = distance_to_support(x, boxes, "+", quantiles=(0.0, 0.5, 1.0))
    assert res.in_support_fraction == pytest.approx(0.4)
    assert res.max == pytest.approx(2.5)
    assert res.mean == pytest.approx((0.4 + 0.5 + 2.5) / 5)
    assert res.mean_outside == pytest.approx((0.4 + 0.5 + 2.5) / 3)
    assert res.quantiles == pytest.approx([0.0, 0.4, 2.5])
    json.dumps(res.to_dict(), allow_nan=False)


def test_support_metrics_need_a_bounded_target():
    gm = GaussianMixture(means=[[0.0]], covariances=[[[1.0]]])
    with pytest.raises(ValueError, match="support"):
        in_support_fraction(torch.zeros(3, 1), gm, 0)


def test_edge_concentration_quantiles_hand_built_1d():
    """x = α2 − d for d = 0, 0.1, …, 1.0 and one point past the edge: the quantiles of d are those of the list."""
    alpha2 = 1.5
    d = torch.linspace(0, 1, 11, dtype=torch.float64)
    x = torch.cat([alpha2 - d, torch.tensor([alpha2 + 0.2], dtype=torch.float64)])[:, None]
    res = edge_concentration(x, alpha2, quantiles=(0.0, 0.5, 1.0), width=0.25)
    all_d = torch.cat([d, torch.tensor([-0.2], dtype=torch.float64)])
    assert res.quantiles[0] == pytest.approx([-0.2, float(np.quantile(all_d.numpy(), 0.5)), 1.0])
    assert res.beyond_fraction == pytest.approx([1 / 12])
    assert res.within_fraction == pytest.approx([3 / 12])  # d ∈ {0, 0.1, 0.2}
    assert res.mean == pytest.approx([float(all_d.mean())])
    json.dumps(res.to_dict(), allow_nan=False)


def test_edge_concentration_negative_class_and_per_axis():
    # class − on [−α2, −α1]: the far edge is −α2, the distance x + α2
    x = torch.tensor([[-1.4], [-1.0], [-1.6]], dtype=torch.float64)
    assert distance_to_far_edge(x, -1.5)[:, 0].tolist() == pytest.approx([0.1, 0.5, -0.1])
    # 2D product support, one far edge per axis
    x2 = torch.tensor([[1.4, -1.5], [1.0, -1.2], [1.5, -0.5]], dtype=torch.float64)
    res = edge_concentration(x2, [1.5, -1.5], quantiles=(0.5,))
    assert res.quantiles == [pytest.approx([0.1]), pytest.approx([0.3])]
    assert res.beyond_fraction == [0.0, 0.0]
    with pytest.raises(ValueError, match="direction"):
        distance_to_far_edge(x, 0.0)
    assert distance_to_far_edge(x, 0.0, direction=1)[:, 0].tolist() == pytest.approx([1.4, 1.0, 1.6])
    assert distance_to_far_edge(x, 0.0, direction=-1)[:, 0].tolist() == pytest.approx([-1.4, -1.0, -1.6])


def test_exact_uniform_samples_have_uniform_edge_distances():
    """Exact samples of U[α1, α2]: d = α2 − x is uniform on [0, α2 − α1], so its median is (α2 − α1)/2."""
    boxes = chidambaram_boxes_1d(0.5, 1.5)
    x = boxes.sample(4000, 0, torch.Generator().manual_seed(1))
    res = edge_concentration(x, 1.5, quantiles=(0.1, 0.5, 0.9))
    assert res.quantiles[0] == pytest.approx([0.1, 0.5, 0.9], abs=0.03)
    assert res.beyond_fraction == [0.0]
