"""Benchmark: exact-target denoisers against their limits (the README's Performance table; issue 17 item 2).

Parts (``--parts``, all by default), each a ratio to a baseline measured in the same process:

- ``direct``: the Gaussian-mixture posterior mean, D = 64, K = 100, full covariances, one shared time, mixed
  conditions, at 2·10⁴ and 10⁵ particles: the rate of its dense form's two GEMMs (4·n·K·D² flops over the call's
  time) as a fraction of a large (4096²) float32 matmul's, per round (interleaved, so drift in the machine's load
  cancels); float32 finite. Above 100% the call beats that roof: the back-projection ran over the nonzero
  responsibilities only (their share is printed). The same call with the sparse back-projection off
  (``sparse_max_density = 0``) is the dense line.
- ``box``: the box-mixture posterior mean (float64, the mpmath-checked tails) against the Gaussian mixture at the
  same D, K and n (1-D with 2 boxes and 2-D with 8 boxes, n = 4000): evaluations per second and their ratios, each
  by its default path (the compiled loops of ``targets.mixture_jit`` where numba is installed) and the Gaussian
  mixture's and the box's torch paths (eager).
- ``compile``: the Gaussian mixture, D = 2, K = 8, at 10⁴ and 10⁵ particles: the torch path (eager) against the
  compiled numba loop (the default) and ``torch.compile`` of the torch path (fullgraph, inductor), with the compile
  time; "unavailable" where one cannot be used.
- ``sampler``: N Euler steps of CFG sampling (cond + uncond in one batched call) for (D=2, K=8) and (D=64, K=100):
  particle-steps per second, the fraction of the matmul's GFLOP/s, the speed-up over a textbook per-component loop
  (torch.distributions + a solve per component) and the peak extra resident memory (Linux VmHWM in a fresh
  process).

Medians with min–max over repeats after a warm-up; ``torch.set_num_threads`` fixed. Usage:

    .venv/bin/python benchmarks/bench_exact_denoiser.py [--parts direct,box,compile,sampler] [--threads 2]
        [--particles 100000] [--steps 100] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from _timing import interleaved, timed
from guidelab.grids import make_grid
from guidelab.guiders import CFG
from guidelab.paths import get_path
from guidelab.sampling import sample
from guidelab.targets import BoxMixture, GaussianMixture, mixture_jit


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


def _peak_child(dim: int, components: int, particles: int, steps: int, threads: int, queue: object) -> None:
    torch.set_num_threads(threads)  # the chunk size depends on the thread count
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
    args = (dim, components, particles, min(steps, 3), torch.get_num_threads(), queue)
    child = context.Process(target=_peak_child, args=args)
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
    return result


def direct_case(particles: int, repeats: int, dim: int = 64, components: int = 100) -> dict:
    """The posterior mean alone against a 4096² float32 matmul, per round."""
    target = random_mixture(dim, components, classes=4)
    path = get_path("rf")
    gen = torch.Generator().manual_seed(0)
    x = 2 * torch.randn(particles, dim, generator=gen)
    t = torch.full((particles,), 0.3)  # the sampler's tensor of one shared time
    cond = torch.randint(-1, 4, (particles,), generator=gen)
    a, b = torch.randn(4096, 4096, generator=gen), torch.randn(4096, 4096, generator=gen)
    dense = copy.copy(target)
    dense.sparse_max_density = 0.0  # the two dense GEMMs whatever the responsibilities
    fns = {
        "matmul": lambda: a @ b,
        "denoiser": lambda: target.posterior_mean(x, t, path, cond),
        "dense": lambda: dense.posterior_mean(x, t, path, cond),
    }
    times = interleaved(fns, repeats)
    flops = 4 * particles * components * dim * dim

    def fractions(name: str) -> list[float]:
        return [(flops / td) / (2 * 4096**3 / tm) for td, tm in zip(times[name], times["matmul"], strict=True)]

    return {
        "dim": dim,
        "components": components,
        "particles": particles,
        "denoiser_gflops": flops / statistics.median(times["denoiser"]) / 1e9,
        "matmul_gflops": 2 * 4096**3 / statistics.median(times["matmul"]) / 1e9,
        "fraction_of_matmul": statistics.median(fractions("denoiser")),
        "fraction_min": min(fractions("denoiser")),
        "fraction_max": max(fractions("denoiser")),
        "dense_fraction_of_matmul": statistics.median(fractions("dense")),
        "dense_fraction_min": min(fractions("dense")),
        "dense_fraction_max": max(fractions("dense")),
        "nonzero_responsibilities": nonzero_fraction(target, x, t, path, cond),
        "finite": bool(torch.isfinite(target.posterior_mean(x, t, path, cond)).all()),
    }


def nonzero_fraction(target: GaussianMixture, x: torch.Tensor, t: torch.Tensor, path, cond: torch.Tensor) -> float:
    """The fraction of responsibilities r_k^{(c)}(x_t) not flushed to 0 in x's dtype (the sparse back-projection's
    share of the dense one's work)."""
    logits = target.component_log_prob_t(x.double(), t.double(), path) + target.log_mixture_weights(cond, x.shape[0])
    return float((torch.softmax(logits, dim=1) > 4 * torch.finfo(x.dtype).tiny).double().mean())  # as flushed


def random_boxes(dim: int, components: int, classes: int, seed: int = 0) -> BoxMixture:
    gen = torch.Generator().manual_seed(seed)
    low = 3 * torch.randn(components, dim, generator=gen, dtype=torch.float64)
    high = low + 0.5 + torch.rand(components, dim, generator=gen, dtype=torch.float64)
    return BoxMixture(low, high, component_class=torch.arange(components) % classes)


def eager(target):
    """The same target on its torch path (the compiled loops turned off for this instance)."""
    target.jit_max_work = 0
    return target


def ratio_stats(times: dict[str, list[float]], slow: str, fast: str) -> dict:
    """Per-round ratios time[slow]/time[fast] (how many times faster ``fast`` is): median, min, max."""
    ratios = [ts / tf for ts, tf in zip(times[slow], times[fast], strict=True)]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


def box_case(dim: int, components: int, particles: int, repeats: int) -> dict:
    """Box mixture against a Gaussian mixture of the same D, K and n (same points, times, conditions), each by its
    default path and its torch path."""
    classes = min(2, components)
    box, box_eager = random_boxes(dim, components, classes), eager(random_boxes(dim, components, classes))
    gmm, gmm_eager = random_mixture(dim, components, classes), eager(random_mixture(dim, components, classes))
    path = get_path("rf")
    gen = torch.Generator().manual_seed(1)
    x = 2 * torch.randn(particles, dim, generator=gen)
    t = torch.full((particles,), 0.3)
    cond = torch.randint(-1, classes, (particles,), generator=gen)
    times = interleaved(
        {
            "gaussian": lambda: gmm.posterior_mean(x, t, path, cond),
            "gaussian_eager": lambda: gmm_eager.posterior_mean(x, t, path, cond),
            "box": lambda: box.posterior_mean(x, t, path, cond),
            "box_eager": lambda: box_eager.posterior_mean(x, t, path, cond),
        },
        repeats,
    )
    rate = {name: particles / statistics.median(ts) for name, ts in times.items()}
    return {
        "dim": dim,
        "components": components,
        "particles": particles,
        "compiled_loops": mixture_jit.available(),
        "evals_per_s": rate,
        "box_over_gaussian": ratio_stats(times, "gaussian", "box"),
        "box_over_gaussian_eager": ratio_stats(times, "gaussian_eager", "box"),
        "box_over_box_eager": ratio_stats(times, "box_eager", "box"),
        "box_eager_over_gaussian_eager": ratio_stats(times, "gaussian_eager", "box_eager"),
    }


def compile_case(particles: int, repeats: int, dim: int = 2, components: int = 8) -> dict:
    """The torch path (eager) against the compiled numba loop and torch.compile (fullgraph, default inductor backend)
    of the torch path, on the same inputs."""
    target = random_mixture(dim, components, classes=4)
    slow = eager(random_mixture(dim, components, classes=4))
    path = get_path("rf")
    gen = torch.Generator().manual_seed(2)
    x = 2 * torch.randn(particles, dim, generator=gen)
    t = torch.full((particles,), 0.3)
    cond = torch.randint(-1, 4, (particles,), generator=gen)
    eager_den = slow.denoiser(path, compile=False)
    fns = {"eager": lambda: eager_den(x, t, cond)}
    result: dict = {"dim": dim, "components": components, "particles": particles}
    if target.uses_compiled_kernels(x):
        numba_den = target.denoiser(path, compile=False)
        fns["numba"] = lambda: numba_den(x, t, cond)
        result["numba_max_abs_diff"] = float((numba_den(x, t, cond) - eager_den(x, t, cond)).abs().max())
    else:
        result["numba"] = "unavailable (numba not installed or GUIDELAB_COMPILE=0)"
    try:
        torch._dynamo.reset()
        compiled = torch.compile(lambda x, t, c: eager_den(x, t, c), fullgraph=True, dynamic=False)
        start = time.perf_counter()
        diff = float((compiled(x, t, cond) - eager_den(x, t, cond)).abs().max())
        result["compile_s"] = time.perf_counter() - start
        result["compiled_max_abs_diff"] = diff
        fns["compiled"] = lambda: compiled(x, t, cond)
    except Exception as err:  # compile needs a working C++ toolchain; report instead of failing
        result["compiled"] = f"unavailable: {type(err).__name__}"
    times = interleaved(fns, repeats)
    result["ms"] = {name: 1e3 * statistics.median(ts) for name, ts in times.items()}
    for name in ("numba", "compiled"):
        if name in times:
            result[f"{name}_speedup"] = ratio_stats(times, "eager", name)
    return result


def _fmt(stats: dict) -> str:
    return f"{stats['median']:.2f}x (min {stats['min']:.2f}, max {stats['max']:.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="direct,box,compile,sampler", help="comma-separated parts to run")
    parser.add_argument("--particles", type=int, default=100_000, help="particles of the sampler part")
    parser.add_argument("--steps", type=int, default=100, help="steps of the sampler part")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="sampler part at 10⁴ particles, 10 steps")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args()
    if args.quick:
        args.particles, args.steps = 10_000, 10
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    unknown = parts - {"direct", "box", "compile", "sampler"}
    if unknown:
        parser.error(f"--parts: unknown {', '.join(sorted(unknown))}; choose from direct, box, compile, sampler")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, repeats {args.repeats}")
    results: dict = {"threads": args.threads}
    if "direct" in parts:
        results["direct"] = []
        for n in (20_000, 100_000):
            r = direct_case(n, args.repeats)
            results["direct"].append(r)
            print(
                f"GMM D=64 K=100 n={n}: {r['denoiser_gflops']:.1f} GFLOP/s = {100 * r['fraction_of_matmul']:.0f}% "
                f"(min {100 * r['fraction_min']:.0f}, max {100 * r['fraction_max']:.0f}) of a 4096² matmul "
                f"({r['matmul_gflops']:.1f} GFLOP/s); dense {100 * r['dense_fraction_of_matmul']:.0f}% "
                f"(min {100 * r['dense_fraction_min']:.0f}, max {100 * r['dense_fraction_max']:.0f}); "
                f"{100 * r['nonzero_responsibilities']:.1f}% of responsibilities nonzero; float32 finite={r['finite']}"
            )
    if "box" in parts:
        results["box"] = []
        for dim, k in ((1, 2), (2, 8)):
            r = box_case(dim, k, 4000, max(args.repeats, 5))
            results["box"].append(r)
            rate = r["evals_per_s"]
            print(
                f"box D={dim} K={k} n=4000 (compiled loops: {r['compiled_loops']}): box {rate['box']:.3g} evals/s, "
                f"Gaussian {rate['gaussian']:.3g}; box/Gaussian {_fmt(r['box_over_gaussian'])}, box/Gaussian eager "
                f"{_fmt(r['box_over_gaussian_eager'])}; box over its eager path {_fmt(r['box_over_box_eager'])} "
                f"(eager box/eager Gaussian {_fmt(r['box_eager_over_gaussian_eager'])})"
            )
    if "compile" in parts:
        results["compile"] = []
        for n in (10_000, 100_000):
            r = compile_case(n, max(args.repeats, 5))
            results["compile"].append(r)
            ms = ", ".join(f"{name} {value:.2f} ms" for name, value in r["ms"].items())
            line = f"GMM D=2 K=8 n={n}: {ms}"
            if "numba_speedup" in r:
                line += f"; numba {_fmt(r['numba_speedup'])} eager (max diff {r['numba_max_abs_diff']:.1e})"
            else:
                line += f"; numba {r['numba']}"
            if "compiled_speedup" in r:
                line += (
                    f"; torch.compile {_fmt(r['compiled_speedup'])} eager (compiling took {r['compile_s']:.1f} s, "
                    f"max diff {r['compiled_max_abs_diff']:.1e})"
                )
            else:
                line += f"; torch.compile {r['compiled']}"
            print(line)
    if "sampler" in parts:
        gflops = matmul_gflops(args.repeats)
        print(f"float32 matmul 4096²: {gflops:.1f} GFLOP/s ({args.threads} threads)")
        results["sampler"] = {"matmul_gflops": gflops, "cases": []}
        for dim, components in ((2, 8), (64, 100)):
            r = bench_case(dim, components, args.particles, args.steps, args.repeats, gflops)
            results["sampler"]["cases"].append(r)
            print(
                f"D={dim:<3} K={components:<4} {r['particle_steps_per_s']:.3g} particle-steps/s "
                f"(median {r['seconds_median']:.2f} s, min {r['seconds_min']:.2f}, max {r['seconds_max']:.2f}); "
                f"GEMM {r['gemm_gflops']:.1f} GFLOP/s = {100 * r['fraction_of_matmul']:.0f}% of matmul; "
                f"{r['speedup_vs_per_component_loop']:.1f}x the per-component loop (max diff "
                f"{r['max_abs_diff_vs_loop']:.1e}); peak +{r['peak_extra_mb']:.0f} MB; finite={r['finite']}"
            )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
