"""Noise that depends on the seed and the sample's stream index only (issue: same seed, same numbers)."""

from __future__ import annotations

import torch

from guidelab.grids import make_grid
from guidelab.guiders import build_guider
from guidelab.noise import NoiseSource, block_size
from guidelab.paths import get_path
from guidelab.sampling import sample
from guidelab.targets import get_target


def test_sample_k_does_not_depend_on_n_dtype_or_other_samples():
    like = torch.empty(10_000, 2)
    big = NoiseSource(7)(like)
    small = NoiseSource(7)(torch.empty(300, 2, dtype=torch.float64))
    assert torch.equal(small, big[:300].double())  # drawn in float32 then cast: equal, not just close
    assert small.dtype == torch.float64
    # the second draw of the stream continues per sample
    src_a, src_b = NoiseSource(7), NoiseSource(7)
    src_a(like), src_b(torch.empty(50, 2))
    assert torch.equal(src_a(like)[:50], src_b(torch.empty(50, 2)))


def test_stream_ids_pair_samples_and_follow_a_permutation():
    perm = torch.randperm(5000, generator=torch.Generator().manual_seed(0))
    plain = NoiseSource(3)(torch.empty(5000, 4))
    permuted = NoiseSource(3, ids=perm)(torch.empty(5000, 4))
    assert torch.equal(permuted, plain[perm])
    paired = NoiseSource(3, ids=torch.arange(100).repeat(3))(torch.empty(300, 4))
    assert torch.equal(paired[:100], paired[200:]) and torch.equal(paired[:100], plain[:100])


def test_blocks_are_independent_standard_normals():
    x = NoiseSource(11)(torch.empty(200_000, 2))
    assert abs(float(x.mean())) < 0.01 and abs(float(x.std()) - 1) < 0.01
    size = block_size(2)
    a, b = x[:size].reshape(-1), x[size : 2 * size].reshape(-1)
    assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < 0.05
    assert not torch.equal(NoiseSource(11)(torch.empty(4, 2)), NoiseSource(12)(torch.empty(4, 2)))


def test_image_batches_get_one_generator_per_sample():
    assert block_size(4 * 64 * 64) == 1
    a = NoiseSource(5)(torch.empty(3, 4, 64, 64))
    b = NoiseSource(5, ids=torch.tensor([2]))(torch.empty(1, 4, 64, 64))
    assert torch.equal(a[2:], b)


def test_samples_equal_across_float32_float64_and_n():
    target, path = get_target("multimodal-2d"), get_path("rf")
    grid = make_grid("uniform", 32, path)
    kw = dict(grid=grid, shape=(2,), cond=0, solver="heun", seed=0)
    guider = build_guider("cfg", scale=3.0)
    x32 = sample(target.denoiser(path), guider, n=2000, dtype=torch.float32, **kw).x
    x64 = sample(target.denoiser(path), guider, n=2000, dtype=torch.float64, **kw).x
    assert float((x32.double() - x64).abs().max()) < 1e-3  # was 3.9 with noise drawn in the target dtype
    x64_small = sample(target.denoiser(path), guider, n=300, dtype=torch.float64, **kw).x
    assert torch.allclose(x64_small, x64[:300], rtol=0, atol=1e-12)


def test_stochastic_solvers_keep_sample_k_whatever_n():
    target, path = get_target("multimodal-2d"), get_path("vp-linear")
    grid = make_grid("uniform", 16, path, t_max=0.999)
    for solver in ("euler-maruyama", "euler-ancestral", "ddim"):
        eta = 0.7 if solver == "ddim" else None
        kw = dict(grid=grid, shape=(2,), cond=1, solver=solver, seed=4, eta=eta, dtype=torch.float64)
        big = sample(target.denoiser(path), build_guider("cfg", scale=2.0), n=1500, **kw).x
        small = sample(target.denoiser(path), build_guider("cfg", scale=2.0), n=40, **kw).x
        assert torch.allclose(small, big[:40], rtol=0, atol=1e-12), solver
