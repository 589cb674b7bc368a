"""The ``guidelab`` command. Bad input prints one ``error: field: message`` line per problem and exits 2."""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import os
import re
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from guidelab import jit
from guidelab.progress import counted

__all__ = ["app", "main"]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Guidance for diffusion and flow-matching models, measured on exact targets.",
)


def _cli_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn input errors into one clear line each and exit code 2, without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ValueError, FileNotFoundError) as err:  # pydantic's ValidationError is a ValueError
            for line in _error_lines(err):
                typer.echo(f"error: {line}", err=True)
        except BrokenPipeError:  # the reader went away (`guidelab methods | head`): nothing to say, as cat
            with contextlib.suppress(OSError):
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - no flush of the dead pipe at exit
            raise typer.Exit(0) from None
        except OSError as err:  # a path that cannot be read or written: name it, no traceback
            where = err.filename if err.filename is not None else "file"
            typer.echo(f"error: {where}: {err.strerror or err}", err=True)
        except MemoryError:
            typer.echo("error: out of memory; use a smaller --n or fewer steps recorded", err=True)
        raise typer.Exit(2)

    return wrapper


def _say_interrupted(out: Path) -> None:
    """One line after Ctrl-C in a sweep: how many runs its store holds, and how to go on."""
    from guidelab.experiments.store import ResultStore

    stored = 0
    if (out / "results.sqlite").is_file():
        with contextlib.suppress(Exception):  # a store being written: say what can be said
            stored = len(ResultStore(out / "results.sqlite").statuses())
    # print, flushed: the console script may leave by os._exit (worker threads still in a run), which drops
    # whatever a buffered stream still holds
    line = f"interrupted: {counted(stored, 'run')} stored in {out}; rerun the same command to resume"
    print(line, file=sys.stderr, flush=True)


def _resumable(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A sweep command: Ctrl-C at any moment (start-up included) is the one :func:`_say_interrupted` line and
    exit 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            _say_interrupted(Path(kwargs["out"]))
            raise typer.Exit(130) from None

    return wrapper


def _error_lines(err: Exception) -> list[str]:
    """The lines of an input error: a pydantic ValidationError one ``field: message`` line per mistake (pydantic
    and the formatter are imported only here, so start-up stays light), any other error its message's lines."""
    if type(err).__module__.startswith("pydantic"):
        from guidelab.validation import error_lines

        return error_lines(err)  # type: ignore[arg-type]
    return str(err).splitlines()


def parse_params(items: list[str] | None, option: str = "--param") -> dict[str, Any]:
    """``KEY=VALUE`` pairs; values are read as YAML scalars or lists (``3``, ``0.5``, ``true``, ``[1, 2]``). A key
    given twice is an error (the last would silently win)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{option}: expected KEY=VALUE, got {item!r}")
        if key.strip() in out:
            raise ValueError(f"{option} {key.strip()}: given twice; give each parameter once")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ValueError(f"{option} {key}: cannot read value {value!r}") from None
    return out


def writable_file(path: Path, field: str) -> Path:
    """``path`` if a file can be written there (its folder is created); else a ValueError naming ``field``."""
    if path.is_dir():
        raise ValueError(f"{field}: {str(path)!r} is a folder; give a file name")
    writable_folder(path.parent, field)
    return path


def writable_folder(path: Path, field: str) -> Path:
    """``path`` as a folder that exists (created if needed) and can be written in; else a ValueError naming
    ``field`` and the reason (a file in the way, no permission)."""
    for parent in (path, *path.parents):
        if parent.exists() and not parent.is_dir():
            raise ValueError(f"{field}: {str(parent)!r} is a file, so {str(path)!r} cannot be a folder")
        if parent.exists():
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"{field}: cannot create {str(path)!r} ({err.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"{field}: cannot write in {str(path)!r} (permission denied)")
    return path


def positive(value: int, field: str) -> int:
    """``value`` if ≥ 1, else a ValueError naming the option."""
    if value < 1:
        raise ValueError(f"{field}: must be ≥ 1, got {value}")
    return value


Param = Annotated[list[str] | None, typer.Option("--param", "-p", help="guider/schedule parameter KEY=VALUE")]
GuiderFile = Annotated[
    Path | None,
    typer.Option(
        help="a guider file {name, params} (e.g. the best.yaml of `guidelab tune`), instead of --guider/--param"
    ),
]


def _guider_choice(
    ctx: typer.Context, guider: str, param: list[str] | None, guider_file: Path | None
) -> tuple[str, dict[str, Any]]:
    """The guider and its parameters: from ``--guider-file``, or from ``--guider``/``--param`` (not both)."""
    if guider_file is None:
        return guider, parse_params(param)
    given = [f"--{name}" for name in ("guider", "param") if _given(ctx, name)]
    if given:
        raise ValueError(f"guider_file: give --guider-file or {'/'.join(given)}, not both")
    from guidelab.guiders.registry import load_guider_file

    spec = load_guider_file(guider_file)
    return spec["name"], spec["params"]


@app.command()
@_cli_errors
def sample(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(help="samples .npy; a sidecar .json is written beside it")],
    target: Annotated[str | None, typer.Option(help="built-in target name or YAML/JSON target file")] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="instead of a target: a shipped model (digits, mnist), a .safetensors checkpoint, or "
            "package.module:function"
        ),
    ] = None,
    cond: Annotated[str, typer.Option(help="class name or index; 'null' for unconditional")] = "0",
    path: Annotated[str, typer.Option(help="rf, vp-cosine, vp-linear, ve, ou")] = "rf",
    path_param: Annotated[list[str] | None, typer.Option(help="path parameter KEY=VALUE")] = None,
    grid: Annotated[str, typer.Option(help="uniform, shifted, geometric, edm")] = "uniform",
    steps: Annotated[int, typer.Option(help="number of steps")] = 50,
    t_min: Annotated[float | None, typer.Option(help="last evaluation time")] = None,
    t_max: Annotated[float, typer.Option(help="first time")] = 1.0,
    grid_param: Annotated[list[str] | None, typer.Option(help="grid parameter KEY=VALUE (rho, shift, lam_cap)")] = None,
    solver: Annotated[
        str, typer.Option(help="euler, heun, ddim, euler-maruyama, dpm++2m, euler-ancestral, dpm++2s-ancestral")
    ] = "euler",
    eta: Annotated[
        float | None, typer.Option(help="churn in [0, 1]: ddim (default 0), ancestral solvers (default 1)")
    ] = None,
    guider: Annotated[str, typer.Option(help="guider name (see `guidelab methods`)")] = "cfg",
    param: Param = None,
    guider_file: GuiderFile = None,
    n: Annotated[int, typer.Option(help="number of samples")] = 1000,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    dtype: Annotated[str, typer.Option(help="float32 or float64")] = "float32",
    fkc: Annotated[
        bool,
        typer.Option(
            "--fkc",
            help="Feynman–Kac correctors toward p(x|c)^γ p(x)^(1−γ) (cfg guider, stochastic solver); the sidecar "
            "records the ESS per step and the resamplings",
        ),
    ] = False,
    fkc_param: Annotated[
        list[str] | None, typer.Option(help="FKC parameter KEY=VALUE (increment, ess_threshold, clamp); implies --fkc")
    ] = None,
) -> None:
    """Sample a target's exact denoiser, or a trained model, under a guider; write samples and a JSON sidecar
    (and, for images, a PNG sheet of them beside the samples)."""
    from guidelab.io import write_image_grid, write_json_atomic, write_npy_atomic
    from guidelab.recipe import SampleConfig, run_sample

    if out.suffix != ".npy":
        raise ValueError(f"out: must end in .npy, got {str(out)!r}")
    if (target is None) == (model is None):
        raise ValueError("target: give exactly one of --target (an exact target) and --model (a trained model)")
    guider, params = _guider_choice(ctx, guider, param, guider_file)
    writable_file(out, "out")
    # a trained model brings its path: --path only where given (then it must be the model's)
    on_path = {"path": path} if model is None or _given(ctx, "path") else {}
    fkc_spec = parse_params(fkc_param, "--fkc-param") if fkc or fkc_param else None
    config = SampleConfig(
        target=target,
        model=_model_spec(model) if model is not None else {},
        cond=cond,
        **on_path,
        path_params=parse_params(path_param, "--path-param"),
        grid=grid,
        steps=steps,
        t_min=t_min,
        t_max=t_max,
        grid_params=parse_params(grid_param, "--grid-param"),
        solver=solver,
        eta=eta,
        guider=guider,
        params=params,
        n=n,
        seed=seed,
        dtype=dtype,
        fkc=fkc_spec,
    )
    outcome = run_sample(config, progress=True)
    result = outcome.result
    write_npy_atomic(out, result.x.cpu().numpy())
    if result.x.ndim == 4:
        sheet = out.with_suffix(".png")
        write_image_grid(result.x[:64].nan_to_num(0.0), sheet, scale=max(1, 64 // result.x.shape[-1]))
    sidecar = {
        "samples": str(out),
        "nfe": result.nfe,
        "calls": result.calls,
        "diverged": result.num_diverged,
        "diverged_indices": result.diverged_indices,
        "notes": result.notes,
        "wall_time_s": result.wall_time,
        **({} if result.ess is None else {"fkc_ess": result.ess.tolist(), "fkc_resamplings": result.resamplings}),
        "config": outcome.resolved,
    }
    write_json_atomic(out.with_suffix(".json"), sidecar)
    sheet = f", a sheet of them in {out.with_suffix('.png')}" if result.x.ndim == 4 else ""
    typer.echo(
        f"wrote {counted(n, 'sample')} to {out}{sheet} (nfe {result.nfe}, diverged {result.num_diverged}, "
        f"{result.wall_time:.2f} s)"
    )


def _model_spec(text: str) -> dict[str, str]:
    """``--model`` as a model spec: a shipped name, a checkpoint file, or ``package.module:function``."""
    from guidelab.models.zoo import SHIPPED_DENOISERS

    if text in SHIPPED_DENOISERS:
        return {"kind": "shipped", "name": text}
    if text.endswith(".safetensors") or Path(text).is_file():
        return {"kind": "checkpoint", "path": text}
    if ":" in text:
        return {"kind": "python", "factory": text}
    from guidelab.validation import did_you_mean

    listed = f"{', '.join(SHIPPED_DENOISERS)} (shipped), a .safetensors checkpoint or package.module:function"
    raise ValueError(f"model: unknown model {text!r}{did_you_mean(text, SHIPPED_DENOISERS, listed)}")


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether the command line gave option ``name`` (a default value is not given)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")


@app.command()
@_cli_errors
def generate(
    ctx: typer.Context,
    pipeline: Annotated[
        Path, typer.Option(help="a diffusers pipeline saved on disk (save_pretrained); never downloaded")
    ],
    out: Annotated[Path, typer.Option(help="output folder: grid.png, one PNG per image, generate.json")],
    prompt: Annotated[list[str] | None, typer.Option(help="prompt (repeat for several)")] = None,
    negative_prompt: Annotated[
        list[str] | None, typer.Option(help="negative prompt: once for all, or once per prompt")
    ] = None,
    class_: Annotated[
        list[str] | None, typer.Option("--class", help="class id or label name of a DiT model (repeat)")
    ] = None,
    guider: Annotated[str, typer.Option(help="guider name (see `guidelab methods`); 'none' for no guidance")] = "cfg",
    param: Param = None,
    guider_file: GuiderFile = None,
    solver: Annotated[str | None, typer.Option(help="guidelab solver (default: the scheduler's match)")] = None,
    steps: Annotated[int, typer.Option(help="number of steps")] = 30,
    grid: Annotated[
        str, typer.Option(help="scheduler (its own times), uniform, shifted, geometric, edm")
    ] = "scheduler",
    grid_param: Annotated[list[str] | None, typer.Option(help="grid parameter KEY=VALUE")] = None,
    eta: Annotated[float | None, typer.Option(help="churn of the stochastic solvers")] = None,
    n: Annotated[int, typer.Option(help="images per prompt or class")] = 1,
    seed: Annotated[int, typer.Option(help="noise seed")] = 0,
    height: Annotated[int | None, typer.Option(help="image height in pixels (default: the model's)")] = None,
    width: Annotated[int | None, typer.Option(help="image width in pixels (default: the model's)")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, mps")] = "cpu",
    dtype: Annotated[str, typer.Option(help="float32, float16 or bfloat16 (half types on a GPU)")] = "float32",
    max_batch: Annotated[int | None, typer.Option(help="largest batch of one network forward")] = None,
    distilled_guidance: Annotated[
        float | None, typer.Option(help="Flux-dev's guidance embedding (default 3.5 where the model has one)")
    ] = None,
    divergence_factor: Annotated[
        float, typer.Option(help="freeze a sample whose latent leaves factor·(α + σ); inf turns the check off")
    ] = 100.0,
) -> None:
    """Generate images with a guidelab guider and solver on a diffusers pipeline saved on disk."""
    from guidelab.guiders.registry import build_guider
    from guidelab.io import write_json_atomic
    from guidelab.pipelines import check_grid_choice, load_pipeline, quiet_libraries, save_images
    from guidelab.pipelines import generate as run_generate
    from guidelab.sampling import SOLVERS

    positive(steps, "steps")
    positive(n, "n")
    if max_batch is not None:
        positive(max_batch, "max_batch")
    if not divergence_factor > 0:
        raise ValueError(f"divergence_factor: must be > 0, got {divergence_factor}")
    if dtype in ("float16", "bfloat16") and device == "cpu":
        raise ValueError(f"dtype: {dtype} needs a GPU (--device cuda); on the CPU use float32")
    if solver is not None and solver not in SOLVERS:
        from guidelab.validation import did_you_mean

        raise ValueError(f"solver: unknown name {solver!r}{did_you_mean(solver, SOLVERS)}")
    # the grid, device, guider and their parameters are checked before the (possibly long) load of the pipeline
    import torch

    grid_params = parse_params(grid_param, "--grid-param")
    check_grid_choice(grid, grid_params)
    try:
        torch.device(device)
    except RuntimeError:
        raise ValueError(f"device: {device!r} is not a device name (cpu, cuda, cuda:0, mps, …)") from None
    guider, params = _guider_choice(ctx, guider, param, guider_file)
    built = None if guider == "none" else build_guider(guider, **params)
    writable_folder(out, "out")
    quiet_libraries()
    pipe = load_pipeline(pipeline, device=device, dtype=dtype)
    result = run_generate(
        pipe,
        prompt,
        negative_prompt=negative_prompt,
        class_labels=class_,
        guider=built,
        solver=solver,
        steps=steps,
        grid=grid,
        grid_params=grid_params,
        eta=eta,
        n=n,
        seed=seed,
        height=height,
        width=width,
        max_batch=max_batch,
        distilled_guidance=distilled_guidance,
        divergence_factor=divergence_factor,
        output_type="pil",
        progress=True,
    )
    files = save_images(result.images, out, columns=n)
    sidecar = {
        "pipeline": str(pipeline),
        "images": [f.name for f in files],  # beside this file; prompt-major: image k is prompt k // n, copy k % n
        "nfe": result.nfe,
        "calls": result.calls,
        "diverged": result.diverged,
        "diverged_indices": result.diverged_indices,
        "wall_time_s": result.wall_time,
        "notes": result.notes,
        "config": result.config,
    }
    write_json_atomic(out / "generate.json", sidecar)
    typer.echo(
        f"wrote {counted(len(files) - 1, 'image')} and grid.png to {out} (nfe {result.nfe}, "
        f"diverged {result.diverged}, {result.wall_time:.2f} s)"
    )
    if result.diverged:
        typer.echo(
            f"warning: images {result.diverged_indices} diverged and were frozen at their last finite latent (their "
            "PNGs are not samples); try more steps, a lower scale or another guider, or --divergence-factor",
            err=True,
        )


@app.command()
@_cli_errors
def targets() -> None:
    """List the built-in targets."""
    from guidelab.targets import list_targets

    for name, description in list_targets().items():
        typer.echo(f"{name:<26} {description}")


@app.command()
@_cli_errors
def methods(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    diffusers: Annotated[
        bool, typer.Option("--diffusers", help="list diffusers' own guiders (--guider diffusers:NAME) instead")
    ] = False,
) -> None:
    """List every guider with its parameters, defaults, prediction space and source; with --diffusers, the diffusers
    guiders that run as guidelab guiders (and the ones refused, with why)."""
    from guidelab.guiders.describe import describe_guiders

    if diffusers:
        from guidelab.guiders.diffusers_guiders import describe_diffusers_guiders, refused_diffusers_guiders

        rows, refused = describe_diffusers_guiders(), refused_diffusers_guiders()
    else:
        rows, refused = describe_guiders(), {}
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    for row in rows:
        typer.echo(f"{row['name']}  [space: {row['space']}; source: {row['source']}]")
        typer.echo(f"    {row['summary']}")
        params = ", ".join(f"{k}={v!r}" for k, v in row["parameters"].items())
        typer.echo(f"    parameters: {params or 'none'}")
    for name, reason in refused.items():
        typer.echo(f"{name}  refused: {reason}")
    if not diffusers:
        typer.echo("diffusers' own guiders run as --guider diffusers:NAME: guidelab methods --diffusers")


@app.command()
@_cli_errors
def schedule(
    guider: Annotated[str, typer.Option(help="guider name")] = "cfg",
    param: Param = None,
    path: Annotated[str, typer.Option(help="noise path")] = "rf",
    grid: Annotated[str, typer.Option(help="grid kind")] = "uniform",
    steps: Annotated[int, typer.Option(help="number of steps")] = 20,
    t_min: Annotated[float | None, typer.Option(help="last evaluation time")] = None,
    t_max: Annotated[float, typer.Option(help="first time")] = 1.0,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of CSV")] = False,
    plot: Annotated[Path | None, typer.Option(help="also plot a learned guider's ω per class to this PNG")] = None,
) -> None:
    """Print a guider's per-step table (step, t, λ, γ, passes) as CSV or JSON; a learned guider's ω per class."""
    import csv

    from guidelab.grids import make_grid
    from guidelab.guiders import build_guider
    from guidelab.guiders.describe import schedule_table
    from guidelab.paths import get_path

    noise_path = get_path(path)
    times = make_grid(grid, steps, noise_path, t_min=t_min, t_max=t_max)
    built = build_guider(guider, **parse_params(param))
    rows = built.schedule_rows(noise_path, times) if hasattr(built, "schedule_rows") else None
    rows = rows or schedule_table(built, noise_path, times)
    if plot is not None:
        if not hasattr(built, "schedule_rows"):
            raise ValueError(f"plot: only a learned guider's schedule can be plotted, not {guider!r}")
        from guidelab.learn.plots import plot_learned_schedule

        plot_learned_schedule(built, noise_path, times, plot)
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)


@app.command()
@_cli_errors
@_resumable
def run(
    config: Annotated[Path, typer.Argument(help="sweep file (YAML)")],
    out: Annotated[Path, typer.Option(help="output folder (results.sqlite, runs/)")],
    workers: Annotated[
        int | None,
        typer.Option(
            help="runs at a time: worker threads of this process (--executor local) or worker processes "
            "(--executor processes); default: the usable cores at --threads each, fewer for few or short runs; "
            "the split is written to OUT/sweep.log"
        ),
    ] = None,
    executor: Annotated[
        str,
        typer.Option(
            help="local (this process, on worker threads), processes (spawned workers: a run that crashes its "
            "process costs only that run) or ray"
        ),
    ] = "local",
    address: Annotated[str | None, typer.Option(help="Ray cluster address (with --executor ray)")] = None,
    threads: Annotated[int, typer.Option(help="torch threads per run, the same in every mode")] = 1,
    retry_failed: Annotated[bool, typer.Option(help="run again the runs that failed before")] = True,
    guider_file: Annotated[
        list[Path] | None,
        typer.Option(help="add a guider file's setting (e.g. tune's best.yaml) to the sweep's guiders (repeatable)"),
    ] = None,
) -> None:
    """Run a sweep; restarting the same command resumes it without repeating finished runs and retries failed ones.

    Exit code 0 when every run is ok, 1 when runs failed (or the store cannot be written), 2 for bad input or
    when another `guidelab run` works in the same folder."""
    import sqlite3

    from guidelab.experiments.config import load_sweep
    from guidelab.experiments.runner import check_options, run_sweep
    from guidelab.guiders.registry import load_guider_file

    check_options(workers=workers, executor=executor, address=address, threads=threads)
    extra = []
    for file in guider_file or []:  # each file's setting joins the sweep's guiders, labelled as in the file
        spec = load_guider_file(file)
        params = {k: [v] if isinstance(v, list) else v for k, v in spec["params"].items()}  # a list is a value here
        extra.append({"name": spec["name"], "params": params, "label": spec["label"] or file.stem})
    sweep = load_sweep(config, extra_guiders=extra)  # a bad sweep file or option leaves no output folder behind
    if sweep.pipeline is not None:  # runs in this process: the pipeline is loaded once
        check_options(workers=workers, executor=executor, address=address, threads=threads, pipeline=True)
    writable_folder(out, "out")
    try:
        summary = run_sweep(
            sweep,
            out,
            workers=workers,
            executor=executor,
            address=address,
            threads=threads,
            retry_failed=retry_failed,
            progress=True,
        )
    except (OSError, sqlite3.OperationalError) as err:  # a full disk: what is stored stays, a rerun resumes
        typer.echo(f"error: out: cannot write {out}: {err}; rerun the same command to resume", err=True)
        raise typer.Exit(1) from None
    retried = f" ({summary.retried} retried)" if summary.retried else ""
    typer.echo(
        f"{counted(summary.total, 'run')}: {summary.skipped} already done, {summary.ran} ran{retried}, "
        f"{summary.failed} failed; results in {summary.out / 'results.sqlite'}"
    )
    if summary.diverged:
        typer.echo(
            f"warning: {summary.diverged} of the {counted(summary.ran, 'run')} "
            f"{'has' if summary.diverged == 1 else 'have'} diverged samples (frozen, left out of their metrics); "
            "the report lists them",
            err=True,
        )
    if summary.failed_total:
        typer.echo(
            f"error: {summary.failed_total} of {counted(summary.total, 'run')} failed; "
            f"see the error column of {summary.out / 'results.sqlite'}",
            err=True,
        )
        raise typer.Exit(1)


@app.command()
@_cli_errors
def tune(
    config: Annotated[Path, typer.Argument(help="tune file (YAML): runs, guider, search space, objective, budget")],
    out: Annotated[Path, typer.Option(help="output folder (study.sqlite, results.sqlite, best.yaml, report.html)")],
    compare: Annotated[
        str | None, typer.Option(help="tune these methods alike and rank them, comma-separated: cfg,apg,adg")
    ] = None,
    executor: Annotated[str, typer.Option(help="local or ray (each trial's runs as Ray tasks)")] = "local",
    address: Annotated[str | None, typer.Option(help="Ray cluster address (with --executor ray)")] = None,
    threads: Annotated[int, typer.Option(help="torch threads per run, the same in every mode")] = 1,
    write_report: Annotated[bool, typer.Option("--report/--no-report", help="write OUT/report.html at the end")] = True,
) -> None:
    """Tune a guider's parameters (Optuna, or a coordinate search) on common seeds, re-score the best setting on
    held-out seeds and write it as a guider file; rerunning the same command resumes a killed tune.

    Exit code 0 when every method has a feasible best setting, 1 when one has none, 2 for bad input."""
    from guidelab.experiments.runner import check_options
    from guidelab.tune import load_tune
    from guidelab.tune.runner import BEST_FILE, TUNE_EXECUTORS, import_optuna, run_tune

    import_optuna()
    check_options(executor=executor, address=address, threads=threads, executors=TUNE_EXECUTORS)
    names = None
    if compare is not None:
        names = [n.strip() for n in compare.split(",") if n.strip()]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"compare: give distinct method names separated by commas, got {compare!r}")
    plan = load_tune(config, compare=names)  # a bad tune file leaves no output folder behind
    check_options(
        executor=executor, address=address, threads=threads, pipeline=plan.kind == "pipeline", executors=TUNE_EXECUTORS
    )
    writable_folder(out, "out")
    summary = run_tune(plan, out, executor=executor, address=address, threads=threads, progress=True)
    for line in _tune_lines(summary):
        typer.echo(line)
    if summary["best_file"]:
        typer.echo(f"best setting: {out / BEST_FILE} (guidelab sample --guider-file {out / BEST_FILE} ...)")
    if write_report:
        from guidelab.report import write_report as write_html

        typer.echo(f"report written to {write_html(out)}")
    missing = [s["label"] for s in summary["studies"] if s["best"] is None]
    if missing:
        typer.echo(
            f"error: no feasible trial for {', '.join(missing)}; widen the space or loosen the constraints", err=True
        )
        raise typer.Exit(1)


def _tune_lines(summary: dict[str, Any]) -> list[str]:
    """What ``guidelab tune`` prints: per method its trials and best setting on both seed sets; the ranking."""
    names = summary["objective"]["metrics"]
    held = {e["study"]: e for e in summary["heldout"] if e["setting"] == "tuned"}

    def values(part: dict[str, Any] | None) -> str:
        if not part or part["values"] is None:
            return "failed"
        text = ", ".join(f"{m} {v:.4g}" for m, v in zip(names, part["values"], strict=True))
        return text + ("" if part["feasible"] else " (infeasible)")

    lines = [f"objective: {summary['objective']['text']}"]
    for study in summary["studies"]:
        done = f"{study['label']}: {counted(len(study['trials']), 'trial')} ({study['stopped'] or 'done'})"
        best = study["best"]
        if best is None:
            lines.append(f"{done}; no feasible trial")
            continue
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["params"].items())
        entry = held.get(study["label"])
        lines.append(
            f"{done}; best trial {best['number']} ({params}): {values(entry['search'] if entry else None)} on the "
            f"search seeds, {values(entry['heldout'] if entry else None)} on the held-out seeds"
        )
    if len(summary["ranking"]) > 1:
        lines.append("ranking on the held-out seeds:")
        for r in summary["ranking"]:
            value = "failed" if r["heldout"] is None else f"{r['heldout']:.4g}"
            lines.append(
                f"  {r['rank']}. {r['study']}  {names[0]} {value}" + ("" if r["heldout_feasible"] else " (infeasible)")
            )
    return lines


@app.command()
@_cli_errors
def report(
    folder: Annotated[Path, typer.Argument(help="a sweep or reproduction output folder")],
    out: Annotated[Path | None, typer.Option(help="HTML file (default: FOLDER/report.html)")] = None,
) -> None:
    """Write the self-contained HTML report of a sweep folder (and of any reproduction run into it)."""
    from guidelab.report import write_report
    from guidelab.report.data import find_stores, unfinished_runs

    if not folder.is_dir():
        raise ValueError(f"folder: no such directory {str(folder)!r}")
    if out is not None:
        writable_file(out, "out")

    unfinished = unfinished_runs(find_stores(folder))  # for the report and the lines below: one pass over each store
    try:
        path = write_report(folder, out, unfinished)
    except ValueError as err:  # write_report names its argument dir; here it is the FOLDER argument
        message = str(err)
        raise ValueError(
            "folder: " + message.removeprefix("dir: ") if message.startswith("dir: ") else message
        ) from None
    typer.echo(f"report written to {path}")
    for u in unfinished:
        typer.echo(
            f"note: sweep {u.sweep} in {u.folder} is unfinished ({u.missing} of its {counted(u.total, 'run')} not "
            "stored); rerun the same guidelab run command to finish it",
            err=True,
        )


@app.command()
@_cli_errors
def reproduce(
    name: Annotated[str, typer.Argument(help="reproduction name (see --help of `guidelab reproduce list`)")],
    out: Annotated[Path, typer.Option(help="output folder")] = Path("guidelab-reproductions"),
    size: Annotated[str, typer.Option(help="ci (seconds) or paper (minutes)")] = "ci",
) -> None:
    """Run a named reproduction of a seed paper's claim (or `list` them) and write its report."""
    from guidelab.experiments.reproductions import CLAIMS, REPRODUCTIONS
    from guidelab.report import write_report

    if name == "list":
        width = max(map(len, REPRODUCTIONS))
        for key in REPRODUCTIONS:
            claim, source = CLAIMS[key]
            typer.echo(f"{key:<{width}}  {claim} ({source})")
        return
    if name not in REPRODUCTIONS:
        from guidelab.validation import did_you_mean

        raise ValueError(f"name: unknown reproduction {name!r}{did_you_mean(name, REPRODUCTIONS)}")
    if size not in ("ci", "paper"):
        from guidelab.validation import did_you_mean

        raise ValueError(f"size: unknown size {size!r}{did_you_mean(size, ('ci', 'paper'))}")
    writable_folder(out, "out")
    result = REPRODUCTIONS[name](size, out)
    claims = result.get("claims", {})
    for claim, ok in claims.items():
        typer.echo(f"{'holds         ' if ok else 'not reproduced'}  {claim}")
    held = sum(bool(ok) for ok in claims.values())
    typer.echo(
        f"{held} of {counted(len(claims), 'claim')} hold here (a claim not reproduced is a result, with its reason "
        f"in the notes; the command succeeded); numbers and figures in {out}; report written to {write_report(out)}"
    )


_LEARN_FIELDS = (  # LearnConfig's fields, listed here so that --help needs no torch import (a test keeps it true)
    "target, target_params, denoiser, model, score_error, score_error_seed, path, path_params, dtype, conditional, "
    "hidden, depth, frequencies, class_dim, output, init_omega, beta, repulsion, particles, eta, delta, zeta, "
    "s_min, reward, reward_weight, reward_t, steps, batch_size, lr, grad_clip, seed, eval_every, holdout, "
    "patience, min_delta, out_dir, checkpoint_every, resume, threads"
)


@app.command()
@_cli_errors
def learn(
    out: Annotated[Path, typer.Option(help="output folder (checkpoint.pt, weights.pt)")],
    target: Annotated[str | None, typer.Option(help="target to learn on (not needed for an mlp denoiser)")] = None,
    denoiser: Annotated[str | None, typer.Option(help="exact, score-error, mlp or image [default: exact]")] = None,
    model: Annotated[
        Path | None,
        typer.Option(help="the mlp denoiser checkpoint (from `guidelab train`); image: a shipped name or checkpoint"),
    ] = None,
    score_error: Annotated[float | None, typer.Option(help="δ of the score-error denoiser [default: 0.5]")] = None,
    path: Annotated[str | None, typer.Option(help="noise path [default: rf]")] = None,
    steps: Annotated[int | None, typer.Option(help="optimisation steps [default: 1000]")] = None,
    seed: Annotated[int | None, typer.Option(help="random seed [default: 0]")] = None,
    resume: Annotated[
        bool | None, typer.Option(help="resume from OUT/checkpoint.pt when present [default: resume]")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(help="YAML file of any LearnConfig fields (an option given on the command line overrides it)"),
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help=f"LearnConfig field KEY=VALUE; fields: {_LEARN_FIELDS}")
    ] = None,
) -> None:
    """Learn guidance weights ω(c, s, t) by self-consistency (arXiv 2510.00815); resumable, early stopping."""
    import yaml

    from guidelab.learn import LearnConfig
    from guidelab.learn import learn as run_learn

    fields: dict[str, Any] = {}
    if config is not None:
        if not config.is_file():
            raise ValueError(f"config: no such file {str(config)!r}")
        try:
            fields = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            from guidelab.validation import yaml_problem

            raise ValueError(f"config: {config} is not valid YAML ({yaml_problem(err)})") from None
    if not isinstance(fields, dict):
        raise ValueError(f"config: {config} must hold a mapping of LearnConfig fields")
    writable_folder(out, "out")
    # precedence: --set, then the options given, then the file, then LearnConfig's defaults
    given = {"target": target, "denoiser": denoiser, "model": str(model) if model else None}
    given |= {"score_error": score_error, "path": path, "steps": steps, "seed": seed, "resume": resume}
    fields.update({key: value for key, value in given.items() if value is not None}, out_dir=str(out))
    fields.update(parse_params(set_, "--set"))
    result = run_learn(LearnConfig(**fields), progress=True)
    typer.echo(
        f"weights written to {result.weights_path} (best step {result.best_step}, held-out loss "
        f"{result.best_holdout:.4g}, {'stopped early' if result.stopped_early else 'ran all steps'}, "
        f"{result.wall_time:.1f} s)"
    )


@app.command()
@_cli_errors
def train(
    out: Annotated[Path, typer.Option(help="checkpoint: .safetensors with --data, .pt with --target")],
    data: Annotated[str | None, typer.Option(help="shipped image dataset: digits or mnist")] = None,
    target: Annotated[str | None, typer.Option(help="or: an exact target whose samples are the data")] = None,
    arch: Annotated[str, typer.Option(help="with --data: unet or mlp")] = "unet",
    path: Annotated[str, typer.Option(help="noise path: rf, vp-cosine, vp-linear, ve, ou")] = "rf",
    prediction: Annotated[str, typer.Option(help="with --data: x0, eps or velocity")] = "x0",
    steps: Annotated[int | None, typer.Option(help="Adam steps (default 4000 with --data, 2000 with --target)")] = None,
    batch_size: Annotated[int | None, typer.Option(help="samples per step (default 128 / 256)")] = None,
    lr: Annotated[float, typer.Option(help="learning rate")] = 2e-3,
    channels: Annotated[
        str, typer.Option(help="with --data --arch unet: channels per level, comma-separated")
    ] = "32,64",
    hidden: Annotated[int | None, typer.Option(help="MLP width (default 256 / 128)")] = None,
    depth: Annotated[int, typer.Option(help="MLP hidden layers")] = 3,
    p_uncond: Annotated[float, typer.Option(help="probability of dropping the label (CFG training)")] = 0.1,
    ema_decay: Annotated[float, typer.Option(help="with --data: EMA decay of the saved weights")] = 0.999,
    eval_every: Annotated[int, typer.Option(help="with --data: steps between held-out evaluations")] = 250,
    patience: Annotated[int, typer.Option(help="with --data: evaluations without improvement before stopping")] = 8,
    checkpoint_every: Annotated[int, typer.Option(help="with --data: steps between resumable states")] = 100,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    threads: Annotated[
        int | None, typer.Option(help="torch threads (default: 1 with --target, all with --data)")
    ] = None,
    one_vs_rest: Annotated[
        int | None,
        typer.Option(help="with --data: a binary condition, class K (label 0) against every other class (label 1)"),
    ] = None,
) -> None:
    """Train a class-conditional denoiser: on a shipped image dataset (--data; resumable: run the same command
    again after a crash), or on an exact target's samples (--target; for learned guidance and tests)."""
    if (data is None) == (target is None):
        raise ValueError("data: give exactly one of --data (an image dataset) and --target (an exact target)")
    if one_vs_rest is not None and data is None:
        raise ValueError("one_vs_rest: relabels an image dataset; give it with --data, not --target")
    for name, value in (("steps", steps), ("batch_size", batch_size), ("hidden", hidden), ("threads", threads)):
        if value is not None:
            positive(value, name)
    positive(depth, "depth")
    if not lr > 0:
        raise ValueError(f"lr: must be > 0, got {lr}")
    if not 0 <= p_uncond < 1:
        raise ValueError(f"p_uncond: must lie in [0, 1), got {p_uncond}")
    writable_file(out, "out")
    if target is not None:
        _train_on_target(
            target, out, path, steps or 2000, batch_size or 256, lr, hidden or 128, depth, p_uncond, seed, threads or 1
        )
        return
    from guidelab.train_images import DenoiserTrainConfig, train_image_denoiser

    config = DenoiserTrainConfig(
        data=data,
        arch=arch,
        path=path,
        prediction=prediction,
        steps=steps or 4000,
        batch_size=batch_size or 128,
        lr=lr,
        channels=_int_list(channels, "channels"),
        hidden=hidden or 256,
        depth=depth,
        p_uncond=p_uncond,
        ema_decay=ema_decay,
        eval_every=eval_every,
        patience=patience,
        checkpoint_every=checkpoint_every,
        seed=seed,
        one_vs_rest=one_vs_rest,
    )
    result = _train_reporting(train_image_denoiser, config, out, threads)
    _say_trained(result, out)


def _train_reporting(train: Callable[..., Any], config: Any, out: Path, threads: int | None) -> Any:
    """Train with a progress bar; a warning that the run is too short for its EMA is one warning line, an
    interrupt one error line saying where the same command resumes."""
    try:
        return train(config, out, progress=True, threads=threads, warn=lambda m: typer.echo(f"warning: {m}", err=True))
    except KeyboardInterrupt as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(130) from None


def _int_list(text: str, field: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{field}: expected comma-separated integers, got {text!r}") from None


def _say_trained(result: Any, out: Path) -> None:
    how = "stopped early on held-out loss" if result.stopped_early else "ran all steps"
    resumed = f", resumed at step {result.resumed_from}" if result.resumed_from else ""
    accuracy = f", test accuracy {result.test_accuracy:.4f}" if result.test_accuracy is not None else ""
    typer.echo(
        f"written to {out} (best held-out loss {result.best_holdout:.4g} at step {result.best_step}{accuracy}; "
        f"{how} at step {result.steps_run}{resumed}; {result.wall_time:.1f} s)"
    )


def _train_on_target(
    target: str,
    out: Path,
    path: str,
    steps: int,
    batch_size: int,
    lr: float,
    hidden: int,
    depth: int,
    p_uncond: float,
    seed: int,
    threads: int,
) -> None:
    from guidelab.paths import get_path
    from guidelab.targets import get_target
    from guidelab.train import train_denoiser

    result = train_denoiser(
        get_target(target),
        get_path(path),
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        hidden=hidden,
        depth=depth,
        p_uncond=p_uncond,
        seed=seed,
        out=out,
        progress=True,
        threads=threads,
    )
    final = f", final loss {result.losses[-1]:.4g}" if result.losses else ""
    typer.echo(f"denoiser written to {out} ({counted(steps, 'step')}{final}, {result.wall_time:.1f} s)")


@app.command("train-classifier")
@_cli_errors
def train_classifier_command(
    data: Annotated[str, typer.Option(help="shipped image dataset: digits or mnist")],
    out: Annotated[Path, typer.Option(help="checkpoint (.safetensors)")],
    steps: Annotated[int, typer.Option(help="Adam steps")] = 3000,
    batch_size: Annotated[int, typer.Option(help="images per step")] = 128,
    lr: Annotated[float, typer.Option(help="learning rate")] = 2e-3,
    eval_every: Annotated[int, typer.Option(help="steps between held-out evaluations")] = 250,
    patience: Annotated[int, typer.Option(help="evaluations without improvement before stopping")] = 8,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    threads: Annotated[int | None, typer.Option(help="torch threads (default: all)")] = None,
) -> None:
    """Train the classifier of the image metrics (accuracy, and the feature space of the Fréchet distance) on a
    shipped dataset; its test accuracy is printed and stored in the checkpoint."""
    from guidelab.train_images import ClassifierTrainConfig, train_classifier

    writable_file(out, "out")
    config = ClassifierTrainConfig(
        data=data, steps=steps, batch_size=batch_size, lr=lr, eval_every=eval_every, patience=patience, seed=seed
    )
    _say_trained(_train_reporting(train_classifier, config, out, threads), out)


@app.command()
@_cli_errors
def demo(
    out: Annotated[Path, typer.Option(help="output folder")] = Path("guidelab-demo"),
    workers: Annotated[
        int | None, typer.Option(help="runs at a time, on worker threads (default: chosen from the machine's cores)")
    ] = None,
) -> None:
    """Run every guider over a range of scales on two exact targets and on the shipped digits model, and write the
    HTML report."""
    from guidelab.demo import run_demo

    if workers is not None:
        positive(workers, "workers")
    writable_folder(out, "out")
    _, report_path = run_demo(out, workers=workers, progress=True)
    typer.echo(f"report written to {report_path}")


def _notice(line: str) -> None:
    """One line on stderr (from any thread), as the progress lines."""
    print(line, file=sys.stderr, flush=True)


def _usage_message(err: Exception) -> str:
    """click's usage error as ``option: message`` where it names one option (``--steps: Input should be a valid
    integer…``, ``--stesp: no such option; did you mean --steps?``, ``--out: required``), else its own message,
    on one line."""
    kind = type(err).__name__
    param = getattr(err, "param", None)
    option = getattr(err, "option_name", None)
    message = " ".join(str(getattr(err, "message", "") or "").split())
    name = (param.opts[0] if getattr(param, "opts", None) else param.name) if param is not None else option
    if kind == "BadParameter" and name and message:
        return f"{name}: {message}"
    if kind == "MissingParameter" and name:
        return f"{name}: required"
    if kind == "NoSuchOption" and name:
        guesses = list(getattr(err, "possibilities", None) or [])[:3]  # click's, closest first
        return f"{name}: no such option" + (f"; did you mean {' or '.join(guesses)}?" if guesses else "")
    if kind == "BadOptionUsage" and name and "requires an argument" in message:
        return f"{name}: needs a value"
    command = re.fullmatch(r"No such command '(.+?)'\.(?: Did you mean '(.+?)'\?)?", message)
    if command:
        return f"{command[1]}: no such command" + (f"; did you mean '{command[2]}'?" if command[2] else "")
    extra = re.fullmatch(r"Got unexpected extra argument(?:s|\(s\))? \((.+)\)", message)
    if extra:  # e.g. ``--param scale 3``
        what = "argument" if len(extra[1].split()) == 1 else "arguments"
        return f"{extra[1]}: unexpected {what}; an option takes one value (--param scale=3; repeat it for more)"
    return " ".join(err.format_message().split())  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``guidelab`` script. A usage mistake (an unknown option, a value of the wrong type, a
    missing required option) is one ``error: option: message`` line and exit 2, like every other bad input."""
    usage_error = typer.BadParameter.__bases__[0]  # the UsageError of the click that typer ships
    jit.notify = _notice  # a first compile of the kernels (a minute) says so instead of a silent wait
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="guidelab", standalone_mode=False)
    except usage_error as err:
        where = err.ctx.command_path if err.ctx is not None else "guidelab"
        typer.echo(f"error: {_usage_message(err)} (see `{where} --help`)", err=True)
        sys.exit(2)
    except typer.Exit as err:
        sys.exit(err.exit_code)
    except typer.Abort:
        typer.echo("error: aborted", err=True)
        sys.exit(1)
    if isinstance(code, int) and code:
        sys.exit(code)  # a command's typer.Exit(code) comes back as the return value here


def script() -> None:
    """The ``guidelab`` console script (and ``python -m guidelab.cli``): :func:`main`, then ``gc.freeze()`` before
    the interpreter ends, so that its final garbage collection skips the ~10⁶ objects of torch's and numba's
    imports (about 0.4 s of every command's exit on a 2-core machine). Not in :func:`main`, which tests and
    scripts call in a process that goes on.

    Where a sweep's worker threads are still inside a run (an interrupted ``guidelab run``), the process leaves by
    ``os._exit`` once its output is flushed: the store is committed row by row, and an interpreter that finalises
    torch under a running thread aborts instead of exiting."""
    code: int | str | None = 0
    try:
        main()
    except SystemExit as err:
        code = err.code
        raise
    finally:
        gc.freeze()
        if _worker_threads_alive():
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code if isinstance(code, int) else 1)


def _worker_threads_alive() -> bool:
    runner = sys.modules.get("guidelab.experiments.runner")  # not imported: no sweep ran (and no torch to import)
    if runner is None:
        return False
    return any(t.name.startswith(runner.WORKER_THREAD_PREFIX) and t.is_alive() for t in threading.enumerate())


if __name__ == "__main__":
    script()
