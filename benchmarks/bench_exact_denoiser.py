"""Benchmark: exact Gaussian-mixture denoiser throughput and peak memory (PERFORMANCE.md).

For (D=2, K=8) and (D=64, K=100) full-covariance mixtures at 10⁵ particles it runs N Euler steps of the
guided sampler (CFG, cond + uncond in one batched call) and reports, from one process:

- particle-steps per second of the vectorized denoiser, and the ratio to a straightforward per-component
  reference loop (torch.distributions.MultivariateNormal + a linear solve per component) measured on the
  same particles;
- achieved GFLOP/s of the two GEMMs per evaluation as a fraction of a large float32 matmul's GFLOP/s;
- peak extra resident memory during sampling (Linux VmHWM after resetting it);
- for the small case, the ratio to the same code under ``torch.compile``.

Medians with min–max over repeats after a warm-up; ``torch.set_num_threads`` fixed. Usage:

    .venv/bin/python benchmarks/bench_exact_denoiser.py [--particles 100000] [--steps 100] [--quick]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from _timing import timed
from guidelab.grids import make_grid
from guidelab.guiders import CFG
from guidelab.paths import get_path
from guidelab.sampling import sample
from guidelab.targets import GaussianMixture


def random_mixture(dim: int, components: int, classes: int, seed: int = 0) -> GaussianMixture:
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=3.0, size=(components, dim))
    q = np.linalg.qr(rng.normal(size=(components, dim, dim)))[0]
    eig = rng.uniform(0.1, 1.0, size=(components, dim))
    covs = np.einsum("kij,kj,klj->kil", q, eig, q)
    return GaussianMixture(means, covs, component_class=np.arange(components) % classes)


def matmul_gflops(repeats: int) -> float:
    a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
    med, _, _ = timed(lambda: a @ b, repeats)
    return 2 * 4096**3 / med / 1e9


def reference_posterior_mean(target: GaussianMixture, x_t: torch.Tensor, t: float, path) -> torch.Tensor:
    """The textbook per-component loop: log N(x_t; αμ_k, α²Σ_k + σ²I) and μ_k + αΣ_k C_k⁻¹(x_t − αμ_k)."""
    c = path.coefficients(torch.tensor(t, dtype=torch.float64))
    a, s = float(c.alpha), float(c.sigma)
    log_w = target.log_mixture_weights(None, 1)[0]
    logits, means = [], []
    eye = torch.eye(target.dim)
    for k in range(target.num_components):
        mu, cov = target.means[k].float(), target.covariances[k].float()
        cov_t = a * a * cov + s * s * eye
        logits.append(log_w[k] + torch.distributions.MultivariateNormal(a * mu, cov_t).log_prob(x_t))
        means.append(mu + a * torch.linalg.solve(cov_t, (x_t - a * mu).T).T @ cov.T)
    r = torch.softmax(torch.stack(logits, dim=1), dim=1)
    return torch.einsum("nk,knd->nd", r, torch.stack(means))


def _vm_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def _peak_child(dim: int, components: int, particles: int, steps: int, queue: object) -> None:
    torch.set_num_threads(1)
    target = random_mixture(dim, components, classes=4)
    path = get_path("rf")
    grid = make_grid("uniform", steps, path)
    del grid, steps
    x = torch.randn(2 * particles, dim)  # one cond + uncond batch; it and the output are not "extra"
    t = torch.full((2 * particles,), 0.5)
    cond = torch.cat([torch.ones(particles, dtype=torch.long), torch.full((particles,), -1)])
    out = torch.empty_like(x)
    target.posterior_mean(x[:2], t[:2], path, cond[:2])  # build caches
    before = _vm_kb("VmRSS:")
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current RSS
    out.copy_(target.posterior_mean(x, t, path, cond))
    queue.put((_vm_kb("VmHWM:") - before) / 1024 - out.numel() * 4 / 2**20)  # type: ignore[attr-defined]


def peak_extra_mb(dim: int, components: int, particles: int, steps: int) -> float:
    """Peak resident memory the denoiser adds beyond its input and output for one cond + uncond batch of
    ``particles``, measured in a fresh process (Linux VmHWM)."""
    import multiprocessing

    if not Path("/proc/self/clear_refs").exists():
        return float("nan")
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_peak_child, args=(dim, components, particles, min(steps, 3), queue))
    child.start()
    child.join()
    return float(queue.get()) if child.exitcode == 0 else float("nan")


def bench_case(dim: int, components: int, particles: int, steps: int, repeats: int, gflops: float) -> dict:
    target = random_mixture(dim, components, classes=4)
    path = get_path("rf")
    grid = make_grid("uniform", steps, path)
    den = target.denoiser(path)

    def run() -> None:
        sample(den, CFG(3.0), grid=grid, n=particles, shape=(dim,), cond=1, seed=0)

    med, lo, hi = timed(run, repeats)
    evaluations = 2 * particles * steps  # cond + uncond per step
    throughput = particles * steps / med
    flops = evaluations * 2 * (2 * components * dim * dim)  # two GEMMs (D × K·D) per evaluation
    x = torch.randn(min(particles, 20_000), dim) * 2
    t = 0.3
    tt = torch.full((x.shape[0],), t)
    fast, _, _ = timed(lambda: target.posterior_mean(x, tt, path, None), repeats)
    slow, _, _ = timed(lambda: reference_posterior_mean(target, x, t, path), max(1, repeats // 2))
    err = float((target.posterior_mean(x, tt, path, None) - reference_posterior_mean(target, x, t, path)).abs().max())
    result = {
        "dim": dim,
        "components": components,
        "particles": particles,
        "steps": steps,
        "seconds_median": med,
        "seconds_min": lo,
        "seconds_max": hi,
        "particle_steps_per_s": throughput,
        "gemm_gflops": flops / med / 1e9,
        "fraction_of_matmul": flops / med / 1e9 / gflops,
        "speedup_vs_per_component_loop": slow / fast,
        "max_abs_diff_vs_loop": err,
        "peak_extra_mb": peak_extra_mb(dim, components, particles, steps),
        "finite": bool(torch.isfinite(target.posterior_mean(x, tt, path, None)).all()),
    }
    if dim == 2:
        compiled = torch.compile(lambda x_t: target.posterior_mean(x_t, tt, path, None), dynamic=False)
        try:
            comp, _, _ = timed(lambda: compiled(x), repeats)
            result["ratio_to_torch_compile"] = fast / comp
        except Exception as err:  # compile needs a working C++ toolchain; report instead of failing
            result["ratio_to_torch_compile"] = f"unavailable: {type(err).__name__}"
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--particles", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="10⁴ particles, 10 steps")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args()
    if args.quick:
        args.particles, args.steps = 10_000, 10
    torch.set_num_threads(args.threads)
    gflops = matmul_gflops(args.repeats)
    print(f"float32 matmul 4096²: {gflops:.1f} GFLOP/s ({args.threads} threads)")
    results = {"matmul_gflops": gflops, "cases": []}
    for dim, components in ((2, 8), (64, 100)):
        r = bench_case(dim, components, args.particles, args.steps, args.repeats, gflops)
        results["cases"].append(r)
        print(
            f"D={dim:<3} K={components:<4} {r['particle_steps_per_s']:.3g} particle-steps/s "
            f"(median {r['seconds_median']:.2f} s, min {r['seconds_min']:.2f}, max {r['seconds_max']:.2f}); "
            f"GEMM {r['gemm_gflops']:.1f} GFLOP/s = {100 * r['fraction_of_matmul']:.0f}% of matmul; "
            f"{r['speedup_vs_per_component_loop']:.1f}x the per-component loop (max diff "
            f"{r['max_abs_diff_vs_loop']:.1e}); peak +{r['peak_extra_mb']:.0f} MB; finite={r['finite']}"
            + (f"; ratio to torch.compile {r['ratio_to_torch_compile']}" if "ratio_to_torch_compile" in r else "")
        )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
