"""Vendi score: limiting cases and a direct eigenvalue reference."""

import math

import numpy as np
import pytest
import torch

from guidelab.metrics import vendi_score


def test_copies_of_one_point_score_one():
    x = torch.tensor([[0.3, -1.2]], dtype=torch.float64).repeat(50, 1)
    assert vendi_score(x, bandwidth=1.0) == pytest.approx(1.0, abs=1e-9)
    assert vendi_score(x, kernel="cosine") == pytest.approx(1.0, abs=1e-9)


def test_orthogonal_points_score_n_under_the_cosine_kernel():
    x = 3.0 * torch.eye(7, dtype=torch.float64)
    assert vendi_score(x, kernel="cosine") == pytest.approx(7.0, rel=1e-9)
    for q in (0.5, 2.0, math.inf):  # every order gives n for uniform eigenvalues
        assert vendi_score(x, kernel="cosine", q=q) == pytest.approx(7.0, rel=1e-9)


def test_k_far_clusters_of_duplicates_score_k():
    """k groups of identical points, far apart: K is block-diagonal with k equal blocks -> VS = k."""
    centers = torch.tensor([[0.0, 0.0], [50.0, 0.0], [0.0, 50.0], [50.0, 50.0]], dtype=torch.float64)
    x = centers.repeat_interleave(10, dim=0)
    assert vendi_score(x, bandwidth=1.0) == pytest.approx(4.0, rel=1e-9)
    # unequal groups: eigenvalues 0.5, 0.25, 0.25 -> exp(entropy)
    y = torch.cat([centers[:1].repeat(20, 1), centers[1:2].repeat(10, 1), centers[2:3].repeat(10, 1)])
    entropy = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert vendi_score(y, bandwidth=1.0) == pytest.approx(math.exp(entropy), rel=1e-9)


def test_gaussian_kernel_matches_numpy_eigenvalues_and_is_seeded():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(60, 3, generator=gen, dtype=torch.float64)
    xs = x.numpy()
    gram = np.exp(-((xs[:, None] - xs[None]) ** 2).sum(-1) / (2 * 0.8**2))
    lam = np.clip(np.linalg.eigvalsh(gram / 60), 0, None)
    lam = lam[lam > 0] / lam.sum()
    assert vendi_score(x, bandwidth=0.8) == pytest.approx(float(np.exp(-(lam * np.log(lam)).sum())), rel=1e-8)
    big = torch.randn(500, 2, generator=gen, dtype=torch.float64)
    assert vendi_score(big, max_points=100, seed=3) == vendi_score(big, max_points=100, seed=3)
    with pytest.raises(ValueError, match="kernel"):
        vendi_score(x, kernel="laplace")
