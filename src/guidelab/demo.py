"""``guidelab demo``: what constant CFG samples on two exact targets, scale by scale.

For each target and scale γ it samples the exact denoiser and measures against the truth: energy distance
to exact samples of p(x|c), class fidelity (mean exact p(c|x)), the weight of the class's weak mode
(``multimodal-2d``) and the in-support fraction (``chidambaram-uniform-2d``). A table is printed and the
numbers are written to ``OUT/demo.json``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from guidelab.io import write_json_atomic
from guidelab.metrics import energy_distance
from guidelab.recipe import SampleConfig, run_sample

__all__ = ["DEMO_RUNS", "run_demo"]

DEMO_RUNS: tuple[tuple[str, str], ...] = (("multimodal-2d", "a"), ("chidambaram-uniform-2d", "pos"))
DEMO_SCALES: tuple[float, ...] = (1.0, 1.5, 3.0, 6.0, 12.0)
_T_DATA = 1e-3  # posteriors are read at a small t so that box densities stay smooth


def _measure(outcome: Any, reference: torch.Tensor) -> dict[str, float]:
    target, x = outcome.target, outcome.result.x.double()
    t = torch.full((x.shape[0],), _T_DATA, dtype=torch.float64)
    row = {
        "energy_distance": energy_distance(x, reference),
        "class_fidelity": float(target.class_log_posterior(x, t, outcome.path)[:, outcome.cond].exp().mean()),
    }
    in_class = (target.component_class == outcome.cond).nonzero().flatten()
    if in_class.numel() > 1:  # weight of the class's lightest mode, by exact component assignment
        joint = target.log_mixture_weights(outcome.cond, x.shape[0]).double()
        joint = joint + target.component_log_prob_t(x, t, outcome.path)
        weakest = in_class[target.log_component_weight[in_class].argmin()]
        row["weak_mode_weight"] = float((joint.argmax(dim=1) == weakest).double().mean())
        row["weak_mode_weight_true"] = float(target.log_component_weight[weakest].exp())
    if hasattr(target, "support_contains"):
        row["in_support"] = float(target.support_contains(x, outcome.cond).double().mean())
        # the far corner: per axis, the class's edge on the side away from the other classes
        centers = 0.5 * (target.low + target.high).double()
        away = centers[in_class].mean(0) >= centers.mean(0)
        far = torch.where(away, target.high[in_class].amax(0), target.low[in_class].amin(0)).double()
        row["median_distance_to_far_corner"] = float((x - far).norm(dim=1).median())
    return row


def run_demo(out: Path, *, n: int = 2000, steps: int = 64, seed: int = 0) -> list[dict[str, Any]]:
    """Run the demo grid, print the table, write ``out/demo.json``; returns the rows."""
    from rich.console import Console
    from rich.progress import track
    from rich.table import Table

    console = Console()
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    jobs = [(name, cond, gamma) for name, cond in DEMO_RUNS for gamma in DEMO_SCALES]
    references: dict[str, torch.Tensor] = {}
    for name, cond, gamma in track(jobs, description="sampling", console=console, transient=True):
        config = SampleConfig(
            target=name,
            cond=cond,
            path="rf",
            grid="uniform",
            steps=steps,
            solver="heun",
            guider="cfg",
            params={"scale": gamma},
            n=n,
            seed=seed,
            dtype="float64",
        )
        outcome = run_sample(config)
        if name not in references:
            generator = torch.Generator().manual_seed(seed + 1)
            references[name] = outcome.target.sample(n, outcome.cond, generator=generator).double()
        rows.append(
            {
                "target": name,
                "cond": cond,
                "gamma": gamma,
                "nfe": outcome.result.nfe,
                "diverged": outcome.result.num_diverged,
                **_measure(outcome, references[name]),
            }
        )

    table = Table(title=f"Constant CFG on exact targets (rf path, Heun, {steps} steps, n = {n})")
    columns = [
        "target",
        "gamma",
        "nfe",
        "energy_distance",
        "class_fidelity",
        "weak_mode_weight",
        "in_support",
        "median_distance_to_far_corner",
    ]
    for col in columns:
        table.add_column(col.replace("_", " "), justify="left" if col == "target" else "right")
    for row in rows:
        cells = []
        for col in columns:
            value = row.get(col)
            cells.append("-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value))
        table.add_row(*cells)
    console.print(table)
    console.print(
        "Energy distance to the true conditional grows with γ while class fidelity saturates: CFG does not "
        "sample p(x|c). The weak mode of class 'a' (true weight 0.25) is suppressed, and box samples move to "
        "the far corner of their support (median distance to it shrinks), staying inside only because the "
        "scores are exact and the grid fine."
    )
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "demo.json", {"rows": rows, "wall_time_s": time.perf_counter() - start})
    console.print(f"results written to {out / 'demo.json'}")
    return rows
