"""k-NN precision/recall/density/coverage against a brute-force loop and limiting cases."""

import json

import numpy as np
import pytest
import torch

from guidelab.metrics import knn_radii, prdc


def brute_prdc(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float, float, float]:
    """Straight from the definitions (arXiv 1904.06991 eq. 1–2; arXiv 2002.09797 eq. 3–4)."""

    def radii(a):
        out = []
        for i in range(len(a)):
            d = sorted(np.linalg.norm(a[i] - a[j]) for j in range(len(a)) if j != i)
            out.append(d[k - 1])
        return out

    r_real, r_fake = radii(real), radii(fake)
    dist = lambda a, b: float(np.linalg.norm(a - b))  # noqa: E731
    precision = np.mean([any(dist(y, x) <= r for x, r in zip(real, r_real, strict=True)) for y in fake])
    recall = np.mean([any(dist(x, y) <= r for y, r in zip(fake, r_fake, strict=True)) for x in real])
    density = sum(dist(y, x) <= r for y in fake for x, r in zip(real, r_real, strict=True)) / (k * len(fake))
    coverage = np.mean([min(dist(x, y) for y in fake) <= r for x, r in zip(real, r_real, strict=True)])
    return float(precision), float(recall), float(density), float(coverage)


@pytest.mark.parametrize("k", [1, 3])
def test_prdc_matches_brute_force(k):
    gen = torch.Generator().manual_seed(k)
    real = torch.randn(25, 2, generator=gen, dtype=torch.float64)
    fake = 0.7 * torch.randn(18, 2, generator=gen, dtype=torch.float64) + 0.6
    res = prdc(real, fake, k=k)
    ref = brute_prdc(real.numpy(), fake.numpy(), k)
    assert (res.precision, res.recall, res.density, res.coverage) == pytest.approx(ref, rel=1e-12)
    chunked = prdc(real, fake, k=k, budget=40)  # a few rows per chunk
    assert chunked == res
    json.dumps(res.to_dict(), allow_nan=False)


def test_identical_and_disjoint_sets():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 3, generator=gen, dtype=torch.float64)
    same = prdc(x, x.clone(), k=5)
    assert same.precision == 1.0
    assert same.recall == 1.0
    assert same.coverage == 1.0
    # each real ball holds its centre and its k neighbours: density = (k + 1)/k for points in general position
    assert same.density == pytest.approx(6 / 5)
    far = prdc(x, x + 100.0, k=5)
    assert (far.precision, far.recall, far.density, far.coverage) == (0.0, 0.0, 0.0, 0.0)


def test_knn_radii_exclude_the_point_itself():
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0]], dtype=torch.float64)
    assert knn_radii(x, 1).tolist() == [1.0, 1.0, 2.0, 4.0]
    assert knn_radii(x, 2).tolist() == [3.0, 2.0, 3.0, 6.0]
    with pytest.raises(ValueError, match="k"):
        knn_radii(x, 4)
