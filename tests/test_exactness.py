"""Unguided sampling of the exact targets reproduces p(x|c): the energy distance to exact class samples is
within the two-sample noise floor (the spread of the same statistic between independent exact samples)."""

import pytest
import torch

from guidelab.grids import make_grid
from guidelab.metrics import energy_distance
from guidelab.paths import get_path
from guidelab.sampling import sample
from guidelab.targets import get_target

N = 1500


def noise_floor(target, cond, replicates=12):
    """Mean + 4 s.d. of the energy distance between two independent exact sample sets of size N."""
    values = []
    for r in range(replicates):
        a = target.sample(N, cond, generator=torch.Generator().manual_seed(100 + 2 * r)).double()
        b = target.sample(N, cond, generator=torch.Generator().manual_seed(101 + 2 * r)).double()
        values.append(energy_distance(a, b))
    values = torch.tensor(values)
    return float(values.mean() + 4 * values.std())


@pytest.mark.parametrize(
    ("name", "cond", "path_name", "solver", "kind"),
    [
        ("multimodal-2d", "a", "rf", "heun", "uniform"),
        ("multimodal-2d", "b", "vp-cosine", "dpm++2m", "edm"),
        ("chidambaram-uniform-2d", "pos", "rf", "heun", "uniform"),
        ("chidambaram-gauss-1d", "neg", "ou", "ddim", "geometric"),
        ("gmm-highdim", "3", "ve", "dpm++2m", "edm"),
    ],
)
def test_unguided_sampling_is_within_the_noise_floor(name, cond, path_name, solver, kind):
    target, path = get_target(name), get_path(path_name)
    c = target.class_index(cond)
    grid = make_grid(kind, 48, path, t_min=1e-3 if kind != "uniform" else None)
    out = sample(
        target.denoiser(path),
        None,
        grid=grid,
        n=N,
        shape=(target.dim,),
        cond=c,
        solver=solver,
        seed=5,
        dtype=torch.float64,
    )
    assert out.num_diverged == 0
    reference = target.sample(N, c, generator=torch.Generator().manual_seed(7)).double()
    assert energy_distance(out.x, reference) < noise_floor(target, c)


def test_a_biased_sampler_is_caught_by_the_same_floor():
    """The check has power: 4 Euler steps visibly miss the target."""
    target, path = get_target("multimodal-2d"), get_path("rf")
    out = sample(
        target.denoiser(path),
        None,
        grid=make_grid("uniform", 4, path),
        n=N,
        shape=(2,),
        cond=0,
        solver="euler",
        seed=5,
        dtype=torch.float64,
    )
    reference = target.sample(N, 0, generator=torch.Generator().manual_seed(7)).double()
    assert energy_distance(out.x, reference) > 3 * noise_floor(target, 0)
