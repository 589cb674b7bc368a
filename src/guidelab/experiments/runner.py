"""The sweep runner: run every configuration of a sweep once, store each finished run atomically, resume.

A run's artifacts (samples, its resolved config) are written atomically into ``OUT/runs/<hash>/`` first,
then its row is committed to ``OUT/results.sqlite``; a run is finished iff its row exists. A sweep killed
at any moment (even ``kill -9``) and restarted with the same command skips the finished runs and redoes
the others, so the store ends with exactly one row per configuration. A run that raises, or whose worker
process dies, is stored with status ``error`` and its message, and the sweep goes on; a rerun tries the
failed runs again (``retry_failed``). One sweep at a time works in a folder: it holds an exclusive lock on
``OUT/.lock`` (released on exit, and by the OS when the process dies). Worker processes end with the main
process, even when it is killed. Every run is seeded by its own configuration and runs on the same number
of torch threads (``threads``, 1 by default) whatever the executor or the number of workers, so the stored
metrics are bitwise the same however the sweep is run.

By default (``workers=None``) the split of the machine is chosen by :func:`choose_split`: as many runs at a
time as the usable cores hold at ``threads`` torch threads each, fewer where there are fewer runs, one where the
whole sweep is a second's work. The runs go to worker threads of this process (``executor="local"``): torch's
kernels and the compiled pairwise loop release the GIL, and the threads share one import of torch, the compiled
kernels and the cached reference self-terms, so nothing is paid per worker. ``executor="processes"`` spawns worker
processes instead, which live for the sweep and take its runs one after the other (torch imported once each),
so that a run that crashes its process costs only that run. The split is appended to ``OUT/sweep.log`` (and
printed with the progress).

A sweep on a diffusers pipeline (:class:`~guidelab.experiments.config.PipelineSweep`) runs in this process: the
pipeline is loaded once, the first time a run needs it, and each run (one condition × guider setting × seed ×
solver × steps) calls :func:`~guidelab.pipelines.generate`, measures the images
(:mod:`~guidelab.experiments.image_measures`) and writes ``OUT/runs/<hash>/grid.png`` (the run's images side by
side), one PNG per image and ``run.json`` before its row is committed, with the same resume and retry rules.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.util
import json
import os
import signal
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from queue import SimpleQueue
from typing import Any

import numpy as np
import torch

from guidelab.experiments.config import PipelineRunSpec, PipelineSweep, RunSpec, SweepConfig
from guidelab.experiments.measures import MeasureInput, measure, reference_samples
from guidelab.experiments.store import ResultStore
from guidelab.io import write_json_atomic, write_npy_atomic
from guidelab.progress import ProgressBar, counted
from guidelab.validation import did_you_mean

__all__ = [
    "Split",
    "SweepLocked",
    "SweepSummary",
    "check_options",
    "choose_split",
    "estimated_run_seconds",
    "execute_pipeline_run",
    "execute_run",
    "folder_lock",
    "map_runs",
    "ray_cluster",
    "run_sweep",
    "torch_threads",
]


@dataclass
class SweepSummary:
    """``failed``: runs that failed in this call; ``failed_total``: the sweep's runs whose stored row is an
    error at the end (those of earlier calls left untried included); ``retried``: failed runs tried again."""

    total: int
    skipped: int
    ran: int
    failed: int
    out: Path
    retried: int = 0
    failed_total: int = 0
    diverged: int = 0  # runs of this call with samples that diverged (left out of their metrics)
    split: str = ""  # how the runs were spread over the machine (as written to OUT/sweep.log)


EXECUTORS = ("local", "processes", "ray")  # this process (on worker threads), spawned worker processes, Ray tasks


@dataclass(frozen=True)
class Split:
    """How a sweep's runs use the machine: ``workers`` runs at a time (threads of this process or spawned processes,
    by ``kind``; 1: one after the other in this process) × ``threads`` torch threads per run, and why."""

    workers: int
    threads: int
    reason: str
    kind: str = "threads"  # the workers: "threads" of this process or spawned "processes"

    def describe(self) -> str:
        where = "in this process" if self.workers == 1 else f"on {self.workers} worker {self.kind}"
        return f"{where} × {self.threads} torch thread(s) per run ({self.reason})"


_THREADS_MIN_S = 0.5  # below this much work in all, worker threads would only take turns holding the GIL
_SPAWN_S = 3.0  # starting a spawned worker (python, torch and guidelab imports), seconds on a loaded 2-core machine
_WORKER_MEMORY = 1 << 30  # bytes a worker process may take (torch, a compiled kernel, a run of 10⁵ points)
_RUN_MEMORY = 1 << 29  # bytes a run may take on a worker thread (its denoiser's chunks ≤ 200 MB, samples, tiles)
# One thread, measured on multimodal-2d and chidambaram-uniform-1d at n = 2,000–20,000, 32–100 steps (2026-12-01):
_SAMPLE_S = 5e-8  # seconds per sample per network evaluation of an exact target on its torch path (4.7–7.5e-8)
_SAMPLE_JIT_S = 1.5e-8  # the same by the compiled denoiser loops (numba; 1.4–2.2e-8)
_STEP_S = 1e-3  # seconds of a solver step's fixed cost (0.5–0.7 ms compiled, 1.0–1.25 ms on the torch path)
_MODEL_SAMPLE_S = 2e-4  # per sample per evaluation for a trained model (the shipped digits UNet; larger nets cost more)
_PAIR_S = 1.5e-9  # seconds per pair of the energy distance by eager tiles
_PAIR_JIT_S = 4.5e-10  # the same by the compiled pairwise loop, the default metrics included (4.2e-10)
_RUN_S = 0.01  # seconds of a run's fixed costs (building it, writing samples, run.json and its row; measured)
_KERNEL_PAIR_S = 1e-8  # seconds per pair of a kernel or k-NN measure (mmd, prdc, w2's cost matrix; one thread)
_EIGEN_S = 8e-11  # seconds per n³ of Vendi's eigenvalues (n = 2000: ~0.65 s per set, measured, one thread)
_PAIRWISE_MEASURES = ("mmd", "w2", "prdc")


def estimated_run_seconds(spec: RunSpec) -> float:
    """A rough one-thread cost of a run, used to decide whether workers pay (:func:`choose_split`) and said in the
    sweep's log: ``_RUN_S``, ``steps`` solver steps at ``_STEP_S``, ``n · steps · 4`` network evaluations (a
    second-order solver, conditional and unconditional) at ``_SAMPLE_S`` (``_SAMPLE_JIT_S`` where the compiled loops
    can run, ``_MODEL_SAMPLE_S`` for a trained model), the energy distance's pairs at ``_PAIR_S`` (``_PAIR_JIT_S`` by
    the compiled loop), the other pairwise measures' at ``_KERNEL_PAIR_S``, and Vendi's two n³ eigendecompositions
    (samples and reference) at ``_EIGEN_S``. Within a factor of ~2 of the measured runs on 2-D targets; an upper
    estimate on 1-D ones (their energy distance is a sort)."""
    cfg = spec.sample
    m = spec.reference_n or cfg.n
    jit = _compiled_loops()
    per_sample = (_SAMPLE_JIT_S if jit else _SAMPLE_S) if spec.reference is None else _MODEL_SAMPLE_S
    seconds = _RUN_S + (_STEP_S + per_sample * cfg.n * 4) * cfg.steps
    if "energy_distance" in spec.metrics:
        per_pair = _PAIR_JIT_S if jit and _uses_compiled_loop(spec) else _PAIR_S
        seconds += per_pair * (cfg.n * m + (cfg.n**2 + m**2) / 2)
    seconds += _KERNEL_PAIR_S * (cfg.n + m) ** 2 * sum(k in spec.metrics for k in _PAIRWISE_MEASURES)
    if "vendi" in spec.metrics:
        seconds += _EIGEN_S * (cfg.n**3 + m**3)
    return seconds


def _compiled_loops() -> bool:
    """Whether the compiled loops can run here, as far as is known without loading them: numba installed and
    ``GUIDELAB_COMPILE`` not ``0``."""
    from guidelab import jit

    return jit.enabled() and importlib.util.find_spec("numba") is not None


def _usable_cores() -> int:
    with contextlib.suppress(AttributeError, OSError):
        return max(1, len(os.sched_getaffinity(0)))  # type: ignore[attr-defined]
    return max(1, os.cpu_count() or 1)


def _available_memory() -> int | None:
    """MemAvailable from /proc/meminfo in bytes, or None where unknown."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def choose_split(
    runs: list[RunSpec],
    *,
    threads: int = 1,
    cores: int | None = None,
    memory: int | None = None,
    kind: str = "threads",
) -> Split:
    """The default split of the machine for ``runs`` at ``threads`` torch threads per run (kept as given: the
    thread count is part of a run's numbers, so a chosen split never changes them).

    Workers: ``cores // threads`` (the usable cores, ``os.sched_getaffinity``), at most one per run, and at most
    as many as the available memory holds. Worker threads (``kind="threads"``, the default) share this process,
    so they cost nothing to start and only a run's working memory each (``_RUN_MEMORY``, 512 MB); 1 (this
    thread) where the runs' estimated total (:func:`estimated_run_seconds`) is under ``_THREADS_MIN_S``, where
    short runs would only take turns holding the GIL. Worker processes (``kind="processes"``) each take torch's
    imports and up to ``_WORKER_MEMORY`` (1 GB), and 1 where the total is under twice a worker's start-up, which
    parallel workers would not win back.
    """
    cores = _usable_cores() if cores is None else cores
    slots = max(1, cores // threads)
    why = f"{cores} usable cores" if threads == 1 else f"{cores} usable cores at {threads} torch threads a run"
    memory = _available_memory() if memory is None else memory
    per_worker = _WORKER_MEMORY if kind == "processes" else _RUN_MEMORY
    if memory is not None and memory // per_worker < slots:
        slots = max(1, int(memory // per_worker))
        why += f", memory for {slots}"
    if slots == 1 or len(runs) <= 1:
        return Split(1, threads, f"{why}, {counted(len(runs), 'run')}", kind)
    total = sum(estimated_run_seconds(spec) for spec in runs)
    least = 2 * _SPAWN_S if kind == "processes" else _THREADS_MIN_S
    if total < least:
        return Split(1, threads, f"{why}; about {total:.1f} s of work, too little to share", kind)
    return Split(min(slots, len(runs)), threads, f"{why}, {len(runs)} runs of about {total / len(runs):.1f} s", kind)


class SweepLocked(ValueError):
    """Another sweep holds the output folder's lock."""


def _base_row(spec: RunSpec) -> dict[str, Any]:
    """A run's row before it runs: its configuration, no result."""
    cfg = spec.sample
    config = cfg.model_dump(exclude={"guider", "params"})  # the settings; the guider is stored once
    if spec.reference is not None:
        config.update(reference=spec.reference.model_dump(), model_digest=spec.model_digest, path=None)
    return {
        "hash": spec.hash,
        "sweep": spec.sweep,
        "target": cfg.target if spec.reference is None else spec.reference.name,
        "cond": cfg.cond,
        "path": cfg.path if spec.reference is None else None,
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
        "config": config,
        "metrics": {},
    }


def _failed_row(spec: RunSpec, error: str) -> dict[str, Any]:
    """The row of a run that did not return (its worker died)."""
    return {**_base_row(spec), "status": "error", "error": error, "nfe": None, "diverged": None, "wall_time_s": None}


def execute_run(spec: RunSpec, out: str, threads: int | None = None) -> dict[str, Any]:
    """Sample and measure one run, write its artifacts; return its store row (never raises)."""
    from guidelab.guiders.describe import schedule_table
    from guidelab.recipe import fkc_metrics, run_sample

    if threads:
        torch.set_num_threads(threads)
    run_dir = Path(out) / "runs" / spec.hash
    cfg = spec.sample
    row = _base_row(spec)
    start = time.perf_counter()
    if spec.reference is not None:
        from guidelab.experiments.model_runs import execute_model_run

        try:
            execute_model_run(spec, out, row)
        except Exception as err:  # a failing run is recorded, and the sweep goes on
            _record_error(row, err)
        row["wall_time_s"] = time.perf_counter() - start
        return row
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
        row["metrics"].update(fkc_metrics(result))
        write_json_atomic(
            run_dir / "run.json", {"hash": spec.hash, "resolved": outcome.resolved, "metrics": row["metrics"]}
        )
        row.update(status="ok", nfe=result.nfe, diverged=result.num_diverged, error=None)
    except Exception as err:  # a failing run is recorded, and the sweep goes on
        _record_error(row, err)
    row["wall_time_s"] = time.perf_counter() - start
    return row


def _record_error(row: dict[str, Any], err: Exception) -> None:
    """Mark ``row`` failed with the exception's last line (the sweep goes on)."""
    last = traceback.format_exception_only(type(err), err)[-1].strip()
    row.update(status="error", error=last, nfe=None, diverged=None)


def _pipeline_base_row(spec: PipelineRunSpec) -> dict[str, Any]:
    """A pipeline run's row before it runs: its configuration, no result."""
    run = spec.run
    return {
        "hash": spec.hash,
        "sweep": spec.sweep,
        "target": Path(run.pipeline).name,  # the pipeline, by its folder's name
        "cond": run.cond,
        "path": None,  # the scheduler's, known once the pipeline is loaded
        "grid": run.grid,
        "steps": run.steps,
        "solver": run.solver,
        "guider": run.guider,
        "label": spec.label,
        "seed": run.seed,
        "n": run.n,
        "gamma": None,
        "guider_config": {"name": run.guider, **run.params},
        "schedule": [],
        "config": run.model_dump(exclude={"guider", "params"}),
        "metrics": {},
    }


def execute_pipeline_run(
    spec: PipelineRunSpec,
    pipe: Any,
    out: str,
    metrics: list[Any],
    *,
    threads: int | None = None,
    device_settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Generate, measure and save one run on a loaded pipeline; return its store row (never raises).

    Args:
        spec: the run.
        pipe: the sweep's pipeline, loaded once (:func:`~guidelab.pipelines.load_pipeline`).
        out: the sweep folder; the images go to ``out/runs/<hash>/`` (``grid.png``: the n images in one row).
        metrics: resolved metrics (:func:`~guidelab.experiments.image_measures.resolve_image_metrics`); they see
            the images of the samples that did not diverge.
        threads: torch threads of the run.
        device_settings: ``max_batch`` (and other settings of how, not what, to compute) passed to ``generate``.
    """
    from PIL import Image

    from guidelab.experiments.image_measures import ImageMeasureInput, measure_images, to_uint8
    from guidelab.guiders import build_guider
    from guidelab.guiders.describe import schedule_table
    from guidelab.pipelines import generate, pipeline_path, save_images
    from guidelab.recipe import effective_scale

    if threads:
        torch.set_num_threads(threads)
    run = spec.run
    run_dir = Path(out) / "runs" / spec.hash
    row = _pipeline_base_row(spec)
    start = time.perf_counter()
    try:
        guider = build_guider(run.guider, **run.params)
        result = generate(
            pipe,
            None if run.prompt is None else [run.prompt],
            negative_prompt=run.negative_prompt,
            class_labels=None if run.class_label is None else [run.class_label],
            guider=guider,
            solver=run.solver,
            steps=run.steps,
            grid=run.grid,
            grid_params=run.grid_params or None,
            eta=run.eta,
            n=run.n,
            seed=run.seed,
            height=run.height,
            width=run.width,
            output_type="np",
            **(device_settings or {}),
        )
        path = pipeline_path(pipe)
        times = torch.tensor(result.config["times"], dtype=torch.float64)
        images = np.asarray(result.images, dtype=np.float32)  # (n, H, W, 3) in [0, 1]
        keep = np.setdiff1d(np.arange(images.shape[0]), np.asarray(result.diverged_indices, dtype=np.int64))
        metrics_out: dict[str, float] = {}
        if keep.size:
            latents = result.latents.detach().to("cpu", torch.float32).numpy()
            condition = run.prompt if run.prompt is not None else run.class_label
            assert condition is not None
            metrics_out = measure_images(metrics, ImageMeasureInput(images[keep], latents[keep], condition))
        metrics_out["n_excluded"] = float(result.diverged)
        save_images([Image.fromarray(im) for im in to_uint8(images)], run_dir, columns=run.n)
        done = result.config
        config = {
            **row["config"],
            "pipeline_class": done["pipeline"],
            "family": done["family"],
            "path": path.name,
            "path_config": done["path"],
            "times": done["times"],
            "latent_shape": done["latent_shape"],
            "device": done["device"],
            "max_batch": done["max_batch"],
            "distilled_guidance": done["distilled_guidance"],
            "divergence_factor": done["divergence_factor"],
            "images": f"runs/{spec.hash}/grid.png",
            "notes": result.notes,
        }
        row.update(
            path=path.name,
            solver=result.config["solver"],
            guider_config=guider.config(),
            gamma=effective_scale(guider, times, path, run.class_label if run.class_label is not None else 0),
            schedule=schedule_table(guider, path, times),
            config=config,
            metrics=metrics_out,
        )
        write_json_atomic(run_dir / "run.json", {"hash": spec.hash, "config": config, "metrics": metrics_out})
        row.update(status="ok", nfe=result.nfe, diverged=result.diverged, error=None)
    except Exception as err:  # a failing run is recorded, and the sweep goes on
        _record_error(row, err)
    row["wall_time_s"] = time.perf_counter() - start
    return row


def _pipeline_map(
    runs: list[PipelineRunSpec], out: str, block: PipelineSweep, threads: int
) -> Iterator[dict[str, Any]]:
    """Run ``runs`` one after the other in this process on the pipeline, loaded once when the first run needs it.

    Raises:
        ValueError: the metrics cannot be resolved or the pipeline cannot be loaded (naming the field).
    """
    from guidelab.experiments.image_measures import resolve_image_metrics
    from guidelab.pipelines import load_pipeline

    if not runs:
        return
    try:
        metrics = resolve_image_metrics(block.metrics)
    except ValueError as err:
        raise ValueError("\n".join(f"pipeline.{line}" for line in str(err).splitlines())) from None
    pipe = load_pipeline(runs[0].run.pipeline, device=block.device, dtype=block.dtype)
    settings = {"max_batch": block.max_batch} if block.max_batch is not None else {}
    for spec in runs:
        yield execute_pipeline_run(spec, pipe, out, metrics, threads=threads, device_settings=settings)


def ray_where(address: str | None) -> str:
    """Where the ray executor runs, for the sweep's log. ``ray.init(address)`` connects to ``address``; without one,
    to ``RAY_ADDRESS``, else to the instance ``ray start`` left running on this machine (which may have other nodes
    joined), else it starts a Ray instance on this machine only (Ray's ``ray.init`` documentation)."""
    if address == "auto":
        return "on the Ray cluster running on this machine (--address auto)"
    where = address or os.environ.get("RAY_ADDRESS")
    if where:
        return f"on the Ray cluster at {where}" + ("" if address else " (RAY_ADDRESS)")
    return (
        "on this machine's Ray instance (the one `ray start` left running, else a new one on this machine only: pass "
        "--address to use another cluster)"
    )


@contextlib.contextmanager
def ray_cluster(address: str | None) -> Iterator[Any]:
    """Connect to the Ray cluster at ``address`` (None: Ray's default, see :func:`ray_where`) unless this process
    already is, and yield the ``ray`` module; disconnect at the end only where connected here.

    Raises:
        ValueError: naming ``executor`` where ray is not installed.
    """
    try:
        import ray
    except ImportError:
        raise ValueError("executor: 'ray' needs the ray package (pip install 'guidelab[ray]')") from None
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    try:
        yield ray
    finally:
        if started_here:
            ray.shutdown()


def _ray_map(runs: list[RunSpec], out: str, address: str | None, threads: int) -> Iterator[dict[str, Any]]:
    with ray_cluster(address) as ray:
        remote = ray.remote(num_cpus=1)(execute_run)  # Ray retries a task whose worker died, then we record it
        specs = {remote.remote(spec, out, threads): spec for spec in runs}
        pending = list(specs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                try:
                    yield ray.get(ref)
                except Exception as err:  # execute_run never raises: its worker (or node) died
                    yield _failed_row(specs[ref], f"worker died: {type(err).__name__}: {str(err).splitlines()[0]}")


def _die_with_parent(parent_pid: int) -> None:
    """End this worker when the sweep's main process ends, even by ``kill -9``: the kernel's parent-death
    signal on Linux, else a watchdog thread that exits when the parent changes."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(1, int(signal.SIGKILL), 0, 0, 0) == 0:  # PR_SET_PDEATHSIG
                if os.getppid() != parent_pid:  # the parent died before the signal was armed
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="guidelab-parent-watch", daemon=True).start()


def _worker_main(conn: Any, parent_pid: int, out: str, threads: int) -> None:
    """A pool worker: run the specs it is sent, one at a time, and send back their rows; None ends it."""
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    while True:
        try:
            spec = conn.recv()
        except (EOFError, OSError):
            return
        if spec is None:
            return
        conn.send(execute_run(spec, out, threads))


class _Worker:
    def __init__(self, context: Any, out: str, threads: int):
        here, there = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(there, os.getpid(), out, threads), daemon=True)
        self.process.start()
        there.close()
        self.conn = here
        self.spec: RunSpec | None = None

    def give(self, spec: RunSpec) -> None:
        self.spec = spec
        with contextlib.suppress(OSError):  # it died since its last row: the next wait sees it
            self.conn.send(spec)

    def receive(self) -> dict[str, Any] | None:
        """The row it sent, or None where it died without one."""
        try:
            if self.conn.poll():
                return self.conn.recv()
        except (EOFError, OSError):
            pass
        return None

    def death(self) -> str:
        self.process.join(5)
        code = self.process.exitcode
        if code is not None and code < 0:
            with contextlib.suppress(ValueError):
                return f"worker died: killed by signal {signal.Signals(-code).name} (pid {self.process.pid})"
        return f"worker died: exit code {code} (pid {self.process.pid})"

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            if self.spec is None and self.process.is_alive():
                self.conn.send(None)
                self.process.join(2)
        if self.process.is_alive():
            self.process.kill()
        self.process.join(2)
        self.conn.close()


def _pool_map(runs: list[RunSpec], out: str, workers: int, threads: int) -> Iterator[dict[str, Any]]:
    """Run ``runs`` on ``workers`` spawned processes. A worker that dies (killed, out of memory, a crash in
    native code) costs only the run it held: that run's row is an error naming the death, a fresh worker
    takes its place, and the others go on."""
    import multiprocessing
    from multiprocessing.connection import wait

    context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads
    queue = deque(runs)
    pool: list[_Worker] = []
    try:
        for _ in range(min(workers, len(queue))):
            worker = _Worker(context, out, threads)
            pool.append(worker)
            worker.give(queue.popleft())
        while any(w.spec is not None for w in pool):
            busy = [w for w in pool if w.spec is not None]
            ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy]))
            rows = []
            for worker in busy:
                if worker.conn not in ready and worker.process.sentinel not in ready:
                    continue
                row = worker.receive()
                spec, worker.spec = worker.spec, None
                if row is None:  # it died holding ``spec``
                    assert spec is not None
                    rows.append(_failed_row(spec, worker.death()))
                    worker.stop()
                    pool.remove(worker)
                    if queue:
                        worker = _Worker(context, out, threads)
                        pool.append(worker)
                else:
                    rows.append(row)
                if queue:
                    worker.give(queue.popleft())
            yield from rows
    finally:
        for worker in pool:
            worker.stop()


WORKER_THREAD_PREFIX = "guidelab-"  # the names of a sweep's threads: its workers and the compiled loop's loading


class _ThreadRuns:
    """The rows of runs on ``workers`` threads of this process, yielded as they finish. torch's kernels and the
    compiled pairwise loop release the GIL, so the runs compute in parallel, and they share this process's
    imports, compiled kernels and cached reference self-terms. Each thread sets its own torch thread count
    (OpenMP's is per thread).

    :meth:`close` hands out no more runs; with ``wait`` it waits for the runs under way, so that nothing is written
    after it returns. Without (an interrupt), they finish in their daemon threads, whose only writes are their
    runs' artifacts, each atomic and the same as a rerun's; a process that exits while they run leaves by
    ``os._exit`` (the console script does), as after ``kill -9``.
    """

    def __init__(self, runs: list[RunSpec], out: str, workers: int, threads: int):
        self._queue = deque(runs)
        self._rows: SimpleQueue[dict[str, Any] | None] = SimpleQueue()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._out, self._threads = out, threads
        self._pool = [
            threading.Thread(target=self._work, name=f"{WORKER_THREAD_PREFIX}run-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._pool:
            thread.start()
        self._running = len(self._pool)

    def _work(self) -> None:
        torch.set_num_threads(self._threads)
        try:
            while not self._stop.is_set():
                with self._lock:
                    if not self._queue:
                        return
                    spec = self._queue.popleft()
                self._rows.put(execute_run(spec, self._out, self._threads))
        finally:
            self._rows.put(None)  # this worker is done

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        while self._running:
            row = self._rows.get()
            if row is not None:
                return row
            self._running -= 1
        raise StopIteration

    def close(self, wait: bool = True) -> None:
        self._stop.set()
        if wait:
            for thread in self._pool:
                thread.join()


def map_runs(
    runs: list[RunSpec],
    out: str | Path,
    *,
    executor: str = "local",
    address: str | None = None,
    workers: int = 1,
    threads: int = 1,
) -> Iterator[dict[str, Any]]:
    """The rows of ``runs`` (exact-target or trained-model runs), yielded as they finish: in this process (on
    ``workers`` threads of it, ``executor="local"``), on ``workers`` spawned processes (``"processes"``: a run
    that crashes its process costs only that run), or as Ray tasks (``"ray"``; on the cluster at ``address``, or
    the one this process is connected to). Each row is what :func:`execute_run` returns; a run whose worker
    process died gets an error row. Close the iterator to end the workers early."""
    if executor == "ray":
        return _ray_map(runs, str(out), address, threads)
    if workers > 1 and len(runs) > 1:
        if executor == "processes":
            return _pool_map(runs, str(out), workers, threads)
        return _ThreadRuns(runs, str(out), workers, threads)
    return (execute_run(spec, str(out), threads) for spec in runs)


@contextlib.contextmanager
def folder_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out/.lock`` (the OS releases it when the process dies); raise
    :class:`SweepLocked`, naming the holder, where another process holds it."""
    try:
        import fcntl
    except ImportError:  # no flock on this platform: no lock
        yield
        return
    path = out / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = {}
            for _ in range(20):  # the holder writes its name just after locking
                with contextlib.suppress(ValueError, OSError):
                    holder = json.loads(path.read_text() or "{}")
                if holder:
                    break
                time.sleep(0.05)
            who = f"pid {holder.get('pid', '?')}, started {holder.get('started', '?')}"
            raise SweepLocked(f"out: {out} is in use by another guidelab run ({who}); wait for it or stop it") from None
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "started": started}).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def torch_threads() -> Iterator[None]:
    """Give the process back its torch thread count after runs in it set their own."""
    before = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(before)


def check_options(
    *,
    workers: int | None = 1,
    executor: str = "local",
    address: str | None = None,
    threads: int = 1,
    pipeline: bool = False,
    executors: tuple[str, ...] = EXECUTORS,
) -> None:
    """A ValueError naming the option when the executor options make no sense (before anything is written);
    ``pipeline``: for a sweep on a pipeline, which runs in this process; ``workers=None``: chosen later;
    ``executors``: those the caller accepts."""
    if executor not in executors:
        raise ValueError(f"executor: unknown {executor!r}{did_you_mean(executor, executors)}")
    if workers is None:
        workers = 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers: must be an integer ≥ 1, got {workers!r}")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads: must be an integer ≥ 1 (torch threads per run), got {threads!r}")
    if executor != "ray" and address is not None:
        raise ValueError(f"address: only the ray executor uses it (--executor ray); the {executor} executor ignores it")
    if executor == "ray" and workers != 1:
        raise ValueError(f"workers: the ray executor ignores it (Ray places one run per CPU); got {workers}")
    if pipeline and executor != "local":  # also not "processes": each would load the pipeline
        raise ValueError("executor: a sweep on a pipeline runs locally, in this process (the pipeline is loaded once)")
    if pipeline and workers != 1:
        raise ValueError(
            f"workers: a sweep on a pipeline runs in this process (the pipeline is loaded once); got {workers}"
        )


def run_sweep(
    config: SweepConfig,
    out: str | Path,
    *,
    workers: int | None = None,
    executor: str = "local",
    address: str | None = None,
    threads: int = 1,
    retry_failed: bool = True,
    progress: bool = False,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> SweepSummary:
    """Run the sweep into ``out`` (created), skipping runs already in its store.

    Args:
        workers: runs at a time: threads of this process for the ``local`` executor, spawned processes for
            ``processes`` (1: one after the other in this process; a sweep on a pipeline always runs in this
            process and takes only 1). None, the default: :func:`choose_split` picks them for the runs to do.
            Worker processes are spawned, so a script that asks for them must guard its top level with
            ``if __name__ == "__main__":``. The split is appended to ``out/sweep.log``.
        executor: ``local`` (this process, on worker threads), ``processes`` (spawned worker processes: a run
            that crashes its process, e.g. out of memory, costs only that run) or ``ray`` (``address`` of an
            existing cluster, or None for a local one).
        threads: torch threads of every run, whatever the executor and workers (the same count gives
            bitwise the same metrics).
        retry_failed: run again the runs whose stored row is an error (else they are skipped too).

    Raises:
        ValueError: a nonsense option (``field: message``); :class:`SweepLocked` (a ``ValueError``) where
            another sweep works in ``out``.
        OSError: the store cannot be written (a full disk); rerun to resume.
    """
    check_options(
        workers=workers, executor=executor, address=address, threads=threads, pipeline=config.pipeline is not None
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with folder_lock(out), torch_threads():
        write_json_atomic(out / "sweep.json", config.model_dump())
        store = ResultStore(out / "results.sqlite")
        runs = config.runs()
        unique = list({spec.hash: spec for spec in runs}.values())
        statuses = store.statuses()
        todo = [
            spec for spec in unique if spec.hash not in statuses or (retry_failed and statuses[spec.hash] == "error")
        ]
        retried = sum(spec.hash in statuses for spec in todo)
        if config.pipeline is not None:
            split = Split(1, threads, "a pipeline sweep runs in this process")
        elif executor == "ray":
            split = Split(1, threads, "ray places one run per CPU")
        else:
            kind = "processes" if executor == "processes" else "threads"
            if workers is None:
                split = choose_split(todo, threads=threads, kind=kind)  # type: ignore[arg-type]
            else:
                used, cores = min(workers, max(1, len(todo))), _usable_cores()
                why = f"--workers {workers}"
                if used * threads > cores:
                    why += f"; {used * threads} torch threads on {cores} usable cores: the runs share cores"
                split = Split(used, threads, why, kind)
        described = f"{len(todo)} of {counted(len(unique), 'run')} to do, " + (
            f"ray executor {ray_where(address)} × {threads} torch thread(s) per run"
            if executor == "ray"
            else split.describe()
        )
        _log(out, described)
        if progress:
            print(described, file=sys.stderr)
        if config.pipeline is not None:
            rows = _pipeline_map(todo, str(out), config.pipeline, threads)  # type: ignore[arg-type]
        else:
            if executor == "local" and any(_uses_compiled_loop(spec) for spec in todo):
                from guidelab.metrics import pairwise_jit

                pairwise_jit.warm_up()  # loads the compiled loop while the first runs sample
            rows = map_runs(todo, out, executor=executor, address=address, workers=split.workers, threads=threads)  # type: ignore[arg-type]
        failed = diverged = 0
        try:
            with ProgressBar(progress, len(todo), "runs", transient=False) as bar:
                for row in rows:
                    store.put(row)
                    failed += row["status"] == "error"
                    diverged += bool(row.get("diverged"))
                    if on_row is not None:
                        on_row(row)
                    bar.advance(description=f"{row['label']} {row['target']} ({row['status']})")
        except BaseException:  # an interrupt, the store or a callback: end the workers without waiting for runs
            _end(rows, wait=False)
            raise
        _end(rows, wait=True)
        statuses = store.statuses()
    failed_total = sum(statuses.get(spec.hash) == "error" for spec in unique)
    return SweepSummary(
        len(unique), len(unique) - len(todo), len(todo), failed, out, retried, failed_total, diverged, described
    )


def _uses_compiled_loop(spec: RunSpec) -> bool:
    """Whether a run's energy distance is large enough for the compiled pairwise loop ("auto")."""
    from guidelab.metrics.pairwise import COMPILE_MIN_PAIRS

    n = spec.sample.n
    return "energy_distance" in spec.metrics and n * (spec.reference_n or n) >= COMPILE_MIN_PAIRS


def _end(rows: Iterator[dict[str, Any]], wait: bool) -> None:
    """End the workers behind ``rows``: worker processes are stopped; worker threads take no more runs (``wait``:
    the runs under way finish first)."""
    if isinstance(rows, _ThreadRuns):
        rows.close(wait=wait)
        return
    close = getattr(rows, "close", None)
    if close is not None:
        close()


def _log(out: Path, line: str) -> None:
    """Append a timestamped line to ``out/sweep.log``."""
    stamp = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    with open(out / "sweep.log", "a", encoding="utf-8") as f:
        f.write(f"{stamp} {line}\n")
