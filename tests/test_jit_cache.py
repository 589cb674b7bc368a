"""Every compiled kernel set loads from numba's disk cache in a new process instead of compiling again.

numba keys a cached function on its bytecode and, for a closure, on its pickled free variables. A closure over
another compiled function (a dispatcher pickles with a per-process id) got a new key in every process: it compiled
again each time (about 4 s for the combines, paid by every sweep and every script) and appended one more entry to
the cache. Two fresh processes run the same work, the probes of every set and sampling that takes each kernel
(the Gaussian-mixture and box denoisers, CFG and the nonlinear combines in float32 and float64, the energy distance);
the second must find every kernel it calls in the cache.
"""

import json
import subprocess
import sys

import pytest

pytest.importorskip("numba")

WORK = r"""
import json, sys
import torch
from numba.core.registry import CPUDispatcher
from guidelab.grids import make_grid
from guidelab.guiders import build_guider
from guidelab.guiders import fused_jit
from guidelab.metrics import pairwise_jit
from guidelab.metrics.distances import energy_distance
from guidelab.paths import get_path
from guidelab.sampling import sample
from guidelab.targets import get_target, mixture_jit

sets = {m.__name__: m.KERNELS for m in (fused_jit, mixture_jit, pairwise_jit)}
assert all(kernels.available() for kernels in sets.values())
path = get_path("rf")
for name, dtype in [("multimodal-2d", torch.float32), ("chidambaram-uniform-1d", torch.float64)]:
    target = get_target(name)
    grid = make_grid("uniform", 4, path)
    for guider in ["cfg", "apg", "cfg-zero-star", "mambo-g", "rescale", "tangential"]:
        out = sample(target.denoiser(path), build_guider(guider, scale=3.0), grid=grid, n=64,
                     shape=(target.dim,), cond=0, solver="heun", dtype=dtype)
x = torch.randn(3000, 2, dtype=torch.float64)
energy_distance(x, x + 0.1, compiled=True)


def dispatchers(value):
    if isinstance(value, CPUDispatcher):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from dispatchers(item)
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from dispatchers(item)
    elif hasattr(value, "__dict__") and not isinstance(value, type):
        for item in vars(value).values():
            yield from dispatchers(item)


report = {}
for set_name, kernels in sets.items():
    for d in dispatchers(kernels.get()):
        name = f"{set_name}:{d.py_func.__qualname__}:{id(d)}"
        report[name] = {"hits": sum(d.stats.cache_hits.values()), "misses": sum(d.stats.cache_misses.values())}
print(json.dumps(report))
"""


def run_work() -> dict:
    done = subprocess.run([sys.executable, "-c", WORK], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_kernel_loads_from_the_cache_in_a_new_process():
    first = run_work()  # compiles what the cache lacks (nothing, where earlier tests or runs filled it)
    second = run_work()
    assert set(second) and {name.rsplit(":", 1)[0] for name in first} == {name.rsplit(":", 1)[0] for name in second}
    called = {name: counts for name, counts in second.items() if counts["hits"] + counts["misses"]}
    for set_name in ("fused_jit", "mixture_jit", "pairwise_jit"):  # every set ran at least one kernel
        assert any(set_name in name for name in called), (set_name, second)
    compiled_again = {name: counts for name, counts in called.items() if counts["misses"]}
    assert not compiled_again, compiled_again
