"""Benchmark: the per-step cost of every guider's combine, as a ratio to one network forward (README, Performance).

Small networks at batch 256 set the unit: a 4-layer, 256-wide MLP on 64- and on 2-dimensional data and a
3-layer 32-channel conv net on 1×8×8 images, all predicting velocity (a flow model). Raw predictions are made once;
what is timed is the guider's whole per-step work outside the network: ``passes(ctx)``, wrapping the raw
predictions (with the step's scalars, as the sampler does), and ``guide`` down to the (x0̂, ε̂) pair every sampler
consumes (conversions included).

diffusers' own guiders are timed on the same tensors the way its modular pipelines call them per step
(``set_state``, ``prepare_inputs``, ``prepare_models``/``cleanup_models`` per batch, then ``guider(state)``):
ClassifierFreeGuidance, ClassifierFreeGuidance with ``guidance_rescale``, AdaptiveProjectedGuidance,
ClassifierFreeZeroStarGuidance, MagnitudeAwareGuidance and TangentialClassifierFreeGuidance. Targets: CFG
combine ≤ 1% of the forward; nonlinear combines ≤ half of diffusers' cost for the same method.

Also: the network evaluations saved by interval and windowed schedules over a 32-step grid.

Medians with min–max over repeats after a warm-up, ``torch.set_num_threads`` fixed; the ratio to diffusers is the
median (min–max) of per-round ratios. Every row counts, for one call, the ATen operators dispatched, those among them
that pass over a full-size (batch, ...) tensor, and the kilobytes all of them read and write (views move nothing):
figures a loaded machine cannot blur. At these sizes an operator's dispatch costs about as much as its pass over the
data, so the operator count bounds a ratio: diffusers returns the guided prediction alone, while every guider here
also converts it to the (x0̂, ε̂) pair (the ``pair conversion alone`` row). The combines compiled by numba
(``guidelab.guiders.fused_jit``: CFG, rescale, APG, CFG-Zero*, MAMBO-G, TCFG, on these float32 CPU tensors) are one
loop each, invisible to the dispatcher: their rows count only the allocation of the pair (and of APG's momentum
buffer); the header says whether they were available (``GUIDELAB_COMPILE=0`` times the torch forms). Reference
rows: CFG's arithmetic in torch with no Python around it (``cfg floor``: one lerp and the pair), and a per-sample dot
product as ``linalg.vecdot`` against a batched (1 × D)·(D × 1) GEMM (what the reductions use, and why). Usage:

    .venv/bin/python benchmarks/bench_guiders.py [--threads 1] [--repeats 15] [--json out.json] [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from guidelab.grids import make_grid
from guidelab.guiders import Predictions, StepContext, build_guider, schedule_table
from guidelab.paths import get_path, path_scalars

BATCH = 256

# ours: (label, guider name, parameters, diffusers counterpart)
OURS = [
    ("cfg", "cfg", {"scale": 5.0}, "cfg"),
    ("rescale (φ=0.7, velocity)", "rescale", {"scale": 5.0, "phi": 0.7}, "rescale"),
    ("apg (paper, x0)", "apg", {"scale": 5.0, "eta": 0.0, "momentum": -0.5, "norm_threshold": 15.0}, "apg"),
    ("cfg-zero-star", "cfg-zero-star", {"scale": 5.0, "zero_init_steps": 0}, "cfg-zero-star"),
    ("mambo-g", "mambo-g", {"scale": 5.0}, "mambo-g"),
    ("tangential (eps)", "tangential", {"scale": 5.0}, "tangential"),
    ("tangential (velocity)", "tangential", {"scale": 5.0, "space": "velocity"}, "tangential"),
    ("adamag", "adamag", {"scale": 5.0}, None),
    ("adg", "adg", {"scale": 5.0}, None),
    ("beta-cfg", "beta-cfg", {"scale": 5.0}, None),
    ("cfg++", "cfg++", {"scale": 0.6}, None),
    ("dynamic-thresholding", "dynamic-thresholding", {"scale": 5.0}, None),
    ("weak-model (= cfg)", "weak-model", {"scale": 5.0}, None),
    ("cfg + tv-cfg schedule", "cfg", {"schedule": "tv-cfg", "scale": 5.0}, None),
    ("apg + tv-cfg schedule", "apg", {"schedule": "tv-cfg", "scale": 5.0}, None),
]


def mlp(dim: int = 64, width: int = 256) -> nn.Module:
    return nn.Sequential(
        nn.Linear(dim + 1, width),
        nn.SiLU(),
        nn.Linear(width, width),
        nn.SiLU(),
        nn.Linear(width, width),
        nn.SiLU(),
        nn.Linear(width, dim),
    )


class ConvNet(nn.Module):
    def __init__(self, channels: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(2, channels, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(channels, 1, 3, padding=1),
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, t.reshape(-1, 1, 1, 1).expand_as(x)], dim=1))


def measure(fns: dict[str, Callable[[], object]], repeats: int, inner: dict[str, int]) -> dict[str, list[float]]:
    """Per-call seconds for each function, ``repeats`` times, interleaved so that drift hits all alike."""
    for name, fn in fns.items():  # warm-up
        for _ in range(max(3, inner[name] // 4)):
            fn()
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(inner[name]):
                fn()
            out[name].append((time.perf_counter() - start) / inner[name])
    return out


class _CountOps(TorchDispatchMode):
    """Counts the ATen operators dispatched, the passes over full-size (batch, ...) tensors and the bytes those
    operators read and write (views move nothing; a reduction reads its input)."""

    def __init__(self, full: int) -> None:
        super().__init__()
        self.full = full
        self.count = 0
        self.passes = 0
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        out = func(*args, **(kwargs or {}))
        if not func.is_view:
            tensors = [a for a in args if isinstance(a, torch.Tensor)] + list((kwargs or {}).values())
            tensors += list(out) if isinstance(out, tuple | list) else [out]
            tensors = [x for x in tensors if isinstance(x, torch.Tensor)]
            self.bytes += sum(x.numel() * x.element_size() for x in tensors)
            self.passes += any(x.numel() >= self.full for x in tensors)
        return out


def aten_ops(fn: Callable[[], object], full: int = 1) -> tuple[int, int, int]:
    """ATen operators one call of ``fn`` dispatches (views and tiny (batch,) ops included), the operators among them
    that touch a tensor of at least ``full`` elements, and the bytes all of them read and write: figures that, unlike
    a time, a loaded machine cannot blur."""
    with _CountOps(full) as counter:
        fn()
    return counter.count, counter.passes, counter.bytes


def diffusers_step(kind: str) -> tuple[Callable[[torch.Tensor, torch.Tensor, int], object], object]:
    """A diffusers guider and the per-step calls its modular pipelines make around the network."""
    from diffusers.guiders import (
        AdaptiveProjectedGuidance,
        ClassifierFreeGuidance,
        ClassifierFreeZeroStarGuidance,
        MagnitudeAwareGuidance,
        TangentialClassifierFreeGuidance,
    )

    guider = {
        "cfg": lambda: ClassifierFreeGuidance(guidance_scale=5.0),
        "rescale": lambda: ClassifierFreeGuidance(guidance_scale=5.0, guidance_rescale=0.7),
        "apg": lambda: AdaptiveProjectedGuidance(
            guidance_scale=5.0, adaptive_projected_guidance_momentum=-0.5, adaptive_projected_guidance_rescale=15.0
        ),
        "cfg-zero-star": lambda: ClassifierFreeZeroStarGuidance(guidance_scale=5.0, zero_init_steps=0),
        "mambo-g": lambda: MagnitudeAwareGuidance(guidance_scale=5.0, alpha=8.0),
        "tangential": lambda: TangentialClassifierFreeGuidance(guidance_scale=5.0),
    }[kind]()
    labels = torch.zeros(BATCH, dtype=torch.long)
    null = torch.full_like(labels, -1)
    dummy = nn.Identity()

    def step(pred_cond: torch.Tensor, pred_uncond: torch.Tensor, i: int) -> object:
        guider.set_state(step=i, num_inference_steps=32, timestep=torch.tensor(1000 - i))
        state = guider.prepare_inputs({"class_labels": (labels, null)})
        for batch in state:
            guider.prepare_models(dummy)
            batch.noise_pred = pred_cond if getattr(batch, guider._identifier_key) == "pred_cond" else pred_uncond
            guider.cleanup_models(dummy)
        return guider(state).pred

    return step, guider


def bench_network(label: str, net: nn.Module, x_t: torch.Tensor, repeats: int, quick: bool) -> list[dict]:
    path = get_path("rf")
    grid = make_grid("uniform", 32, path)
    i = 5
    t = float(grid[i])
    ctx = StepContext(i, 32, t, float(path.lam(grid[i])), grid, path)
    t_in = torch.full((BATCH,), t)
    with torch.no_grad():
        v_c = net(x_t, t_in) if isinstance(net, ConvNet) else net(torch.cat([x_t, t_in[:, None]], 1))
        v_u = v_c + 0.3 * torch.randn_like(v_c)

    def forward() -> object:
        with torch.no_grad():
            return net(x_t, t_in) if isinstance(net, ConvNet) else net(torch.cat([x_t, t_in[:, None]], 1))

    coefficients = path.coefficients(torch.tensor(t, dtype=torch.float64)).expand_as(x_t)
    # As the sampler builds its Predictions (sampling.GuidedModel.predict): with the step's (α, σ, α', σ') as
    # floats from the per-path cache, so no coefficient is read back from a tensor per step.
    scalars = path_scalars(path, t)
    raw = {"cond": (v_c, "velocity"), "uncond": (v_u, "velocity")}

    fns: dict[str, Callable[[], object]] = {"forward": forward}
    inner: dict[str, int] = {"forward": 5 if quick else 20}
    for name, guider_name, params, _ in OURS:
        guider = build_guider(guider_name, **params)
        guider.reset(BATCH)

        def ours(guider=guider) -> object:
            guider.passes(ctx)
            return guider.guide(Predictions(dict(raw), x_t, coefficients, scalars), ctx)

        fns[name] = ours
        inner[name] = 20 if quick else 200

    def pair_only() -> object:  # the floor every guider pays: the (x0̂, ε̂) pair of one velocity
        return Predictions(dict(raw), x_t, coefficients, scalars).pair(v_c, "velocity")

    fns["(pair conversion alone)"] = pair_only
    inner["(pair conversion alone)"] = 20 if quick else 200

    def cfg_floor() -> object:  # CFG's arithmetic with no Python around it: one lerp and the pair's kernels
        return Predictions(dict(raw), x_t, coefficients, scalars).pair(torch.lerp(v_u, v_c, 5.0), "velocity")

    fns["(cfg floor: lerp + pair)"] = cfg_floor
    inner["(cfg floor: lerp + pair)"] = 20 if quick else 200
    flat_c, flat_u = v_c.reshape(BATCH, -1), v_u.reshape(BATCH, -1)
    fns["(per-sample dot: vecdot)"] = lambda: torch.linalg.vecdot(flat_c, flat_u)
    fns["(per-sample dot: batched GEMM)"] = lambda: torch.bmm(flat_c.unsqueeze(1), flat_u.unsqueeze(2))
    inner["(per-sample dot: vecdot)"] = inner["(per-sample dot: batched GEMM)"] = 20 if quick else 200
    for kind in sorted({d for *_, d in OURS if d is not None}):
        step, _ = diffusers_step(kind)
        try:
            step(v_c, v_u, 1)
        except RuntimeError as err:  # e.g. MagnitudeAwareGuidance's torch.norm over 3 dims on torch 2.13
            print(f"  diffusers {kind}: fails on {tuple(v_c.shape)}: {str(err).splitlines()[0]}")
            continue
        fns[f"diffusers:{kind}"] = lambda step=step: step(v_c, v_u, 1)
        inner[f"diffusers:{kind}"] = 20 if quick else 200

    times = measure(fns, repeats, inner)
    ops = {name: aten_ops(fn, v_c.numel()) for name, fn in fns.items()}
    fwd = statistics.median(times["forward"])
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        row = {
            "network": label,
            "what": name,
            "median_us": med * 1e6,
            "min_us": min(ts) * 1e6,
            "max_us": max(ts) * 1e6,
            "ratio_to_forward": med / fwd,
            "ratio_min": min(ts) / fwd,
            "ratio_max": max(ts) / fwd,
            "aten_ops": ops[name][0],
            "full_size_ops": ops[name][1],
            "bytes_moved": ops[name][2],
        }
        counterpart = next((d for n, _, _, d in OURS if n == name), None)
        if counterpart is not None and f"diffusers:{counterpart}" in times:
            # per round (both timed within the same round, so drift in the machine's load cancels), then the median
            per_round = [a / b for a, b in zip(ts, times[f"diffusers:{counterpart}"], strict=True)]
            row["ratio_to_diffusers"] = statistics.median(per_round)
            row["ratio_to_diffusers_min"], row["ratio_to_diffusers_max"] = min(per_round), max(per_round)
        rows.append(row)
    return rows


def nfe_saved() -> list[dict]:
    """Network evaluations of each schedule's plan over a 32-step grid, against always-two-passes CFG."""
    path = get_path("rf")
    grid = make_grid("edm", 32, path)
    plans = [
        ("constant", {"scale": 2.0}),
        ("interval (EDM2: (0.19, 1.61])", {"schedule": "interval"}),
        ("interval (0.28, 5.42]", {"schedule": "interval", "lam_lo": 0.28, "lam_hi": 5.42}),
        ("tv-cfg", {"schedule": "tv-cfg", "scale": 2.0}),
        ("step-up (low = 1)", {"schedule": "step-up", "scale": 3.0, "scale_low": 1.0}),
        ("negative-switch (late = 1)", {"schedule": "negative-switch", "scale": 3.0, "scale_late": 1.0}),
        ("negative-window (w0 = 0, ω = 0)", {"schedule": "negative-window", "w0": 0.0, "omega": 0.0}),
    ]
    rows = []
    for label, params in plans:
        table = schedule_table(build_guider("cfg", **params), path, grid)
        nfe = sum(len(r["passes"].split("+")) for r in table if r["passes"] != "none")
        rows.append({"schedule": label, "steps": 32, "nfe": nfe, "saved_vs_cfg": 64 - nfe})
    zero = schedule_table(build_guider("cfg-zero-star", scale=3.0, zero_init_steps=1), path, grid)
    nfe = sum(len(r["passes"].split("+")) for r in zero if r["passes"] != "none")
    rows.append({"schedule": "cfg-zero-star (K = 1)", "steps": 32, "nfe": nfe, "saved_vs_cfg": 64 - nfe})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", default=None, help="write all rows to this file")
    parser.add_argument("--quick", action="store_true", help="few iterations (a smoke run)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    repeats = 3 if args.quick else args.repeats
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {BATCH}, repeats {repeats}")
    from guidelab.guiders import fused_jit

    print(f"compiled combines (numba): {'on' if fused_jit.available() else 'off (torch forms)'}")

    rows = []
    for label, net, x_t in [
        ("mlp 4x256, D=64", mlp(), torch.randn(BATCH, 64)),
        ("mlp 4x256, D=2", mlp(2), torch.randn(BATCH, 2)),
        ("conv 3x32, 1x8x8", ConvNet(), torch.randn(BATCH, 1, 8, 8)),
    ]:
        net.eval()
        print(f"\n{label}")
        net_rows = bench_network(label, net, x_t, repeats, args.quick)
        rows += net_rows
        fwd = next(r for r in net_rows if r["what"] == "forward")
        print(f"  forward: {fwd['median_us']:.0f} µs (min {fwd['min_us']:.0f}, max {fwd['max_us']:.0f})")
        print(
            f"  {'combine':34s} {'median µs':>10s} {'% fwd':>8s} {'min–max %':>14s} {'÷ diffusers (min–max)':>22s}"
            f" {'aten ops':>9s} {'full-size':>9s} {'KB moved':>9s}"
        )
        for r in net_rows:
            if r["what"] == "forward":
                continue
            vs = (
                f"{r['ratio_to_diffusers']:.2f} ({r['ratio_to_diffusers_min']:.2f}–{r['ratio_to_diffusers_max']:.2f})"
                if "ratio_to_diffusers" in r
                else ""
            )
            spread = f"{100 * r['ratio_min']:.2f}–{100 * r['ratio_max']:.2f}"
            pct = 100 * r["ratio_to_forward"]
            print(
                f"  {r['what']:34s} {r['median_us']:10.1f} {pct:8.2f} {spread:>14s} {vs:>22s} {r['aten_ops']:9d}"
                f" {r['full_size_ops']:9d} {r['bytes_moved'] / 1024:9.0f}"
            )

    print("\nnetwork evaluations over 32 steps (edm grid, rf path); CFG always runs 64")
    saved = nfe_saved()
    for r in saved:
        print(f"  {r['schedule']:34s} nfe {r['nfe']:3d}  saved {r['saved_vs_cfg']:3d}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "combine": rows, "nfe": saved}, f, indent=1)


if __name__ == "__main__":
    main()
