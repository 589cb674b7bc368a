"""The sweep runner: run every configuration of a sweep once, store each finished run atomically, resume.

A run's artifacts (samples, its resolved config) are written atomically into ``OUT/runs/<hash>/`` first,
then its row is committed to ``OUT/results.sqlite``; a run is finished iff its row exists. A sweep killed
at any moment (even ``kill -9``) and restarted with the same command skips the finished runs and redoes
the others, so the store ends with exactly one row per configuration. A run that raises is stored with
status ``error`` and its message, and the sweep goes on. Every run is seeded by its own configuration,
so results do not depend on order, workers or executor.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from guidelab.experiments.config import RunSpec, SweepConfig
from guidelab.experiments.measures import MeasureInput, measure, reference_samples
from guidelab.experiments.store import ResultStore
from guidelab.io import write_json_atomic, write_npy_atomic
from guidelab.progress import ProgressBar

__all__ = ["SweepSummary", "execute_run", "run_sweep"]


@dataclass
class SweepSummary:
    total: int
    skipped: int
    ran: int
    failed: int
    out: Path


def execute_run(spec: RunSpec, out: str, threads: int | None = None) -> dict[str, Any]:
    """Sample and measure one run, write its artifacts; return its store row (never raises)."""
    from guidelab.guiders.describe import schedule_table
    from guidelab.recipe import run_sample

    if threads:
        torch.set_num_threads(threads)
    run_dir = Path(out) / "runs" / spec.hash
    cfg = spec.sample
    row: dict[str, Any] = {
        "hash": spec.hash,
        "sweep": spec.sweep,
        "target": cfg.target,
        "cond": cfg.cond,
        "path": cfg.path,
        "grid": cfg.grid,
        "steps": cfg.steps,
        "solver": cfg.solver,
        "guider": cfg.guider,
        "label": spec.label,
        "seed": cfg.seed,
        "n": cfg.n,
        "gamma": None,
        "guider_config": {"name": cfg.guider, **cfg.params},  # as given, until the run resolves it
        "schedule": [],
        "config": cfg.model_dump(exclude={"guider", "params"}),  # the settings; the guider is stored once
        "metrics": {},
    }
    start = time.perf_counter()
    try:
        outcome = run_sample(cfg)
        result = outcome.result
        row.update(
            target=outcome.target.name,  # the target's own name, also for a target file given by its path
            guider_config=outcome.resolved["guider_config"],
            gamma=outcome.resolved["gamma"],
            schedule=schedule_table(outcome.guider, outcome.path, outcome.grid),
        )
        keep = ~result.diverged
        x = result.x[keep].double()
        if spec.save_samples:
            write_npy_atomic(run_dir / "samples.npy", result.x.cpu().numpy())
        reference = reference_samples(outcome.target, outcome.cond, spec.reference_n or cfg.n)
        if x.shape[0] >= 2:
            row["metrics"] = measure(
                spec.metrics, MeasureInput(x, outcome.target, outcome.cond, reference, result.num_diverged / cfg.n)
            )
        else:
            row["metrics"] = {"diverged_fraction": result.num_diverged / cfg.n}
        row["metrics"]["n_excluded"] = result.num_diverged  # diverged samples left out of every metric
        write_json_atomic(
            run_dir / "run.json", {"hash": spec.hash, "resolved": outcome.resolved, "metrics": row["metrics"]}
        )
        row.update(status="ok", nfe=result.nfe, diverged=result.num_diverged, error=None)
    except Exception as err:  # a failing run is recorded, and the sweep goes on
        last = traceback.format_exception_only(type(err), err)[-1].strip()
        row.update(status="error", error=last, nfe=None, diverged=None)
    row["wall_time_s"] = time.perf_counter() - start
    return row


def _ray_map(runs: list[RunSpec], out: str, address: str | None, threads: int) -> Iterable[dict[str, Any]]:
    try:
        import ray
    except ImportError:
        raise ValueError("executor: 'ray' needs the ray package (pip install 'guidelab[ray]')") from None
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    try:
        remote = ray.remote(num_cpus=1)(execute_run)
        pending = [remote.remote(spec, out, threads) for spec in runs]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield from ray.get(done)
    finally:
        if started_here:
            ray.shutdown()


def _pool_map(runs: list[RunSpec], out: str, workers: int, threads: int) -> Iterable[dict[str, Any]]:
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        pending = {pool.submit(execute_run, spec, out, threads) for spec in runs}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()


def run_sweep(
    config: SweepConfig,
    out: str | Path,
    *,
    workers: int = 1,
    executor: str = "local",
    address: str | None = None,
    threads: int | None = None,
    progress: bool = False,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> SweepSummary:
    """Run the sweep into ``out`` (created), skipping runs already in its store.

    Args:
        workers: processes for the local executor (1 runs in this process).
        executor: ``local`` or ``ray`` (``address`` of an existing cluster, or None for a local one).
        threads: torch threads per run (default: all cores in-process, 1 per worker otherwise).
    """
    if executor not in ("local", "ray"):
        raise ValueError(f"executor: unknown {executor!r}; accepted: local, ray")
    if workers < 1:
        raise ValueError(f"workers: must be ≥ 1, got {workers}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "sweep.json", config.model_dump())
    store = ResultStore(out / "results.sqlite")
    runs = config.runs()
    unique = list({spec.hash: spec for spec in runs}.values())
    finished = store.finished()
    todo = [spec for spec in unique if spec.hash not in finished]
    if executor == "ray":
        rows = _ray_map(todo, str(out), address, threads or 1)
    elif workers > 1 and len(todo) > 1:
        rows = _pool_map(todo, str(out), workers, threads or 1)
    else:
        rows = (execute_run(spec, str(out), threads) for spec in todo)
    failed = 0
    with ProgressBar(progress, len(todo), "runs", transient=False) as bar:
        for row in rows:
            store.put(row)
            failed += row["status"] == "error"
            if on_row is not None:
                on_row(row)
            bar.advance(description=f"{row['label']} {row['target']} ({row['status']})")
    return SweepSummary(len(unique), len(unique) - len(todo), len(todo), failed, out)


def default_workers() -> int:
    return max(1, (os.cpu_count() or 1))
