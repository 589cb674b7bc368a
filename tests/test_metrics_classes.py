"""Class fidelity, mode weights/coverage and within-mode variance against exact posteriors and hand-built sets."""

import json
import math

import numpy as np
import pytest
import torch
from scipy import integrate, special, stats

from guidelab.metrics import (
    assign_components,
    class_fidelity,
    component_covariances,
    component_log_responsibilities,
    mode_weights,
    within_mode_variance,
)
from guidelab.targets.gaussian_mixture import GaussianMixture
from test_metrics_targets import chidambaram_boxes_1d


def two_gaussians_1d() -> GaussianMixture:
    """½N(1, 1) (class +) + ½N(−1, 1) (class −): p(+ | x) = sigmoid(2x)."""
    return GaussianMixture(
        means=[[1.0], [-1.0]], covariances=[[[1.0]], [[1.0]]], component_class=[0, 1], class_names=["+", "-"]
    )


def three_modes_2d() -> GaussianMixture:
    """Class a: two well-separated modes (weights 0.7, 0.3); class b: one mode."""
    return GaussianMixture(
        means=[[4.0, 0.0], [-4.0, 0.0], [0.0, 6.0]],
        covariances=[np.diag([0.5, 0.2]), np.diag([0.3, 0.3]), np.eye(2)],
        weights=[0.7, 0.3, 1.0],
        component_class=[0, 0, 1],
        class_names=["a", "b"],
    )


def test_class_fidelity_matches_the_exact_expectation():
    """E_{x ~ N(1, 1)}[sigmoid(2x)] by quadrature; the sample mean lies within 4 standard errors."""
    gm = two_gaussians_1d()
    x = gm.sample(4000, "+", torch.Generator().manual_seed(0), dtype=torch.float64)
    res = class_fidelity(x, gm, "+")
    expected = integrate.quad(lambda v: special.expit(2 * v) * stats.norm.pdf(v, 1, 1), -12, 14)[0]
    post = special.expit(2 * x.numpy()[:, 0])
    assert res.mean_posterior == pytest.approx(float(post.mean()), rel=1e-9)
    assert abs(res.mean_posterior - expected) < 4 * post.std() / math.sqrt(4000)
    assert res.accuracy == pytest.approx(float((x > 0).double().mean()))
    assert res.undefined_fraction == 0.0
    assert class_fidelity(x, gm, "-").mean_posterior == pytest.approx(1 - res.mean_posterior, rel=1e-9)


def test_class_fidelity_with_disjoint_boxes_and_undefined_points():
    boxes = chidambaram_boxes_1d()
    x = torch.tensor([[0.7], [1.2], [-1.0], [3.0]], dtype=torch.float64)
    res = class_fidelity(x, boxes, "+")
    assert res.undefined_fraction == 0.25
    assert res.mean_posterior == pytest.approx(2 / 3)
    assert res.accuracy == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="cond"):
        class_fidelity(x, boxes, None)


def test_component_responsibilities_and_assignment():
    gm = three_modes_2d()
    x = torch.tensor([[3.5, 0.1], [-4.2, 0.3], [0.0, 6.0]], dtype=torch.float64)
    log_r = component_log_responsibilities(x, gm, "a")
    assert torch.isinf(log_r[:, 2]).all()  # component of class b: −∞ under class a
    assert torch.allclose(torch.logsumexp(log_r, dim=1), torch.zeros(3, dtype=torch.float64))
    assert assign_components(x[:2], gm, "a").tolist() == [0, 1]
    assert assign_components(x, gm, None).tolist() == [0, 1, 2]
    boxes = chidambaram_boxes_1d()
    assert assign_components(torch.tensor([[0.7], [3.0]]), boxes, 0).tolist() == [0, -1]


def test_mode_weights_of_exact_and_collapsed_samples():
    gm = three_modes_2d()
    x = gm.sample(2000, "a", torch.Generator().manual_seed(1), dtype=torch.float64)
    res = mode_weights(x, gm, "a")
    assert res.components == [0, 1]
    assert res.true_weights == pytest.approx([0.7, 0.3])
    assert res.sample_weights[0] == pytest.approx(0.7, abs=4 * math.sqrt(0.21 / 2000))
    assert res.coverage == 1.0
    assert res.unassigned_fraction == 0.0
    collapsed = x[x[:, 0] > 0]  # the weak mode dropped entirely
    res_c = mode_weights(collapsed, gm, "a")
    assert res_c.sample_weights == [1.0, 0.0]
    assert res_c.covered == [True, False]
    assert res_c.coverage == 0.5
    assert res_c.tv == pytest.approx(0.3)
    almost = torch.cat([collapsed[:950], x[x[:, 0] < 0][:20]])  # the weak mode at 2% of 30%: below 0.1 × weight
    assert mode_weights(almost, gm, "a").covered == [True, False]
    unconditional = mode_weights(gm.sample(3000, None, torch.Generator().manual_seed(2), dtype=torch.float64), gm, None)
    assert unconditional.true_weights == pytest.approx([0.35, 0.15, 0.5])
    json.dumps(res.to_dict(), allow_nan=False)


def test_within_mode_variance_ratio():
    gm = three_modes_2d()
    x = gm.sample(4000, "a", torch.Generator().manual_seed(3), dtype=torch.float64)
    res = within_mode_variance(x, gm, "a")
    assert res.true_trace == pytest.approx([0.7, 0.6])
    assert res.ratio[0] == pytest.approx(1.0, abs=0.08)
    assert res.ratio[1] == pytest.approx(1.0, abs=0.12)
    # shrink every point halfway to its mode mean: the variance ratio becomes 1/4
    k = assign_components(x, gm, "a")
    shrunk = gm.means[k] + 0.5 * (x - gm.means[k])
    res_s = within_mode_variance(shrunk, gm, "a")
    assert res_s.ratio[0] == pytest.approx(res.ratio[0] / 4, rel=1e-9)
    assert res_s.counts == res.counts
    lonely = within_mode_variance(x[x[:, 0] > 0], gm, "a")
    assert lonely.ratio[1] is None
    assert lonely.counts[1] == 0
    json.dumps(lonely.to_dict(), allow_nan=False)


def test_component_covariances_from_reference_samples_for_boxes():
    """Without closed-form covariances the reference comes from exact samples: uniform on [a, b] has (b − a)²/12."""
    boxes = chidambaram_boxes_1d(0.5, 1.5)
    cov = component_covariances(boxes, num_samples=20000, seed=0)
    assert cov.shape == (2, 1, 1)
    assert cov[:, 0, 0].tolist() == pytest.approx([1 / 12, 1 / 12], rel=0.05)
    x = boxes.sample(3000, 0, torch.Generator().manual_seed(4))
    assert within_mode_variance(x, boxes, 0).ratio[0] == pytest.approx(1.0, abs=0.1)
