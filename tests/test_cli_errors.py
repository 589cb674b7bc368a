"""Every bad input to every command is one ``error: field: message`` line and exit 2, with no traceback and
nothing half-written: a table of over 150 cases, run in-process through the real entry point
(``guidelab.cli.main``, which also turns usage mistakes into one line)."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest

from guidelab.cli import main
from guidelab.models.guidance_weights import GuidanceWeights, save_weights


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Bad and good files the cases refer to, by key."""
    root = tmp_path_factory.mktemp("bad-inputs")
    f = {"root": root}
    f["dir"] = root / "a-folder"
    f["dir"].mkdir()
    f["file"] = root / "plain.txt"
    f["file"].write_text("not a folder\n")
    f["binary"] = root / "binary.yaml"
    f["binary"].write_bytes(bytes(range(256)) * 4)
    f["bad_yaml"] = root / "bad.yaml"
    f["bad_yaml"].write_text("a: [1, 2\nb: {\n")
    f["list_yaml"] = root / "list.yaml"
    f["list_yaml"].write_text("- 1\n- 2\n")
    f["bad_json"] = root / "bad.json"
    f["bad_json"].write_text("{not json")
    f["corrupt_store"] = root / "corrupt" / "results.sqlite"
    f["corrupt_store"].parent.mkdir()
    f["corrupt_store"].write_bytes(b"this is not an sqlite database" * 100)
    from tiny_diffusers import make_dit, make_sd

    f["sd_pipe"] = root / "sd-pipe"
    make_sd().save_pretrained(f["sd_pipe"])
    f["dit_pipe"] = root / "dit-pipe"
    make_dit().save_pretrained(f["dit_pipe"])
    f["broken_pipe"] = root / "broken-pipe"  # model_index.json lists a unet that is not there
    make_sd().save_pretrained(f["broken_pipe"])
    shutil.rmtree(f["broken_pipe"] / "unet")
    f["null_named"] = root / "null-named.yaml"  # class 0 is named "null", class 1 is named "0"
    f["null_named"].write_text(
        "kind: gaussian-mixture\ndim: 1\nclasses:\n"
        "  - {name: 'null', components: [{mean: [0.0], cov: [[1.0]]}]}\n"
        "  - {name: '0', components: [{mean: [3.0], cov: [[1.0]]}]}\n"
    )
    f["bad_cov"] = root / "bad-cov.yaml"
    f["bad_cov"].write_text(
        "kind: gaussian-mixture\ndim: 2\nclasses:\n  - name: a\n    components:\n"
        "      - {weight: 1, mean: [0, 0], cov: [[1, 2], [2, 1]]}\n"
    )
    f["weights3"] = root / "w3" / "weights.pt"
    f["weights3"].parent.mkdir()
    save_weights(GuidanceWeights(3, init_omega=0.5), f["weights3"], {"class_names": ["x", "y", "z"]})
    f["garbage_pt"] = root / "garbage.pt"
    f["garbage_pt"].write_bytes(b"\x00garbage" * 50)
    for name, text in {
        "sweep_unknown_key": "targets: [{target: multimodal-2d}]\nguiders: [{name: cfg}]\nbogus: 1\n",
        "sweep_no_guiders": "targets: [{target: multimodal-2d}]\n",
        "sweep_bad_guider": "targets: [{target: multimodal-2d}]\nguiders: [{name: magic}]\n",
        "sweep_bad_param": "targets: [{target: multimodal-2d}]\nguiders: [{name: cfg, params: {scael: 2}}]\n",
        "sweep_bad_metric": "targets: [{target: multimodal-2d}]\nguiders: [{name: cfg}]\nmetrics: [bogus]\n",
        "sweep_bad_target": "targets: [{target: nope}]\nguiders: [{name: cfg}]\n",
        "sweep_bad_cond": "targets: [{target: multimodal-2d, conds: [zebra]}]\nguiders: [{name: cfg}]\n",
        "sweep_bad_path": "targets: [{target: multimodal-2d}]\npaths: [warp]\nguiders: [{name: cfg}]\n",
        "sweep_bad_solver": "targets: [{target: multimodal-2d}]\nsolvers: [rk4]\nguiders: [{name: cfg}]\n",
        "sweep_bad_grid": "targets: [{target: multimodal-2d}]\ngrids: [{kind: log}]\nguiders: [{name: cfg}]\n",
        "sweep_unused_grid_param": (
            "targets: [{target: multimodal-2d}]\ngrids: [{kind: uniform, params: {rho: 3}}]\nguiders: [{name: cfg}]\n"
        ),
        "sweep_n_small": "targets: [{target: multimodal-2d}]\nguiders: [{name: cfg}]\nn: 1\n",
        "sweep_eta": "targets: [{target: multimodal-2d}]\nguiders: [{name: cfg}]\neta: 2\n",
        "sweep_bad_schedule": (
            "targets: [{target: multimodal-2d}]\nguiders: [{name: cfg, params: {schedule: {name: nope}}}]\n"
        ),
        "sweep_cfgpp_range": "targets: [{target: multimodal-2d}]\nguiders: [{name: cfg++, params: {scale: 2}}]\n",
        "sweep_bad_model": (
            "targets: [{target: multimodal-2d}]\nmodels: {weak: {kind: magic}}\n"
            "guiders: [{name: weak-model, params: {guide_model: weak}}]\n"
        ),
        "sweep_missing_model": (
            "targets: [{target: multimodal-2d}]\nguiders: [{name: weak-model, params: {guide_model: weak}}]\n"
        ),
        "sweep_ok": "targets: [{target: multimodal-2d}]\nguiders: [{name: cfg}]\nn: 4\n",
        "learn_list": "- steps\n",
        "learn_unknown": "target: multimodal-2d\nbogus: 1\n",
    }.items():
        f[name] = root / f"{name}.yaml"
        f[name].write_text(text)
    return f


def S(*args):  # a sample call with a valid --out unless the case gives one
    return ["sample", "--target", "multimodal-2d", *args]


# (argv with {key} placeholders for the fixture files, the field the line must name)
CASES = [
    # --- sample: targets and conditions
    (["sample", "--target", "nope", "--out", "{root}/x.npy"], "target"),
    (["sample", "--target", "{dir}", "--out", "{root}/x.npy"], "folder"),
    (["sample", "--target", "{binary}", "--out", "{root}/x.npy"], "not a text file"),
    (["sample", "--target", "{bad_yaml}", "--out", "{root}/x.npy"], "not valid YAML"),
    (["sample", "--target", "{bad_json}", "--out", "{root}/x.npy"], "not valid JSON"),
    (["sample", "--target", "{list_yaml}", "--out", "{root}/x.npy"], "expected a mapping"),
    (["sample", "--target", "{bad_cov}", "--out", "{root}/x.npy"], "cov"),
    (["sample", "--target", "{null_named}", "--cond", "0", "--out", "{root}/x.npy"], "cond"),
    (["sample", "--target", "{null_named}", "--cond", "index:x", "--out", "{root}/x.npy"], "cond"),
    (["sample", "--target", "{null_named}", "--cond", "name:zz", "--out", "{root}/x.npy"], "cond"),
    (S("--cond", "zebra", "--out", "{root}/x.npy"), "cond"),
    (S("--cond", "9", "--out", "{root}/x.npy"), "cond"),
    (S("--cond", "-5", "--out", "{root}/x.npy"), "cond"),
    (S("--cond", "index:7", "--out", "{root}/x.npy"), "cond"),
    # sizes
    (S("--steps", "-2", "--out", "{root}/x.npy"), "steps"),
    (S("--steps", "0", "--out", "{root}/x.npy"), "steps"),
    (S("--steps", "abc", "--out", "{root}/x.npy"), "--steps"),
    (S("--steps", "1.5", "--out", "{root}/x.npy"), "--steps"),
    (S("--n", "0", "--out", "{root}/x.npy"), "n"),
    (S("--n", "-3", "--out", "{root}/x.npy"), "n"),
    (S("--n", "lots", "--out", "{root}/x.npy"), "--n"),
    (S("--n", "100000000000000", "--out", "{root}/x.npy"), "GiB"),
    (S("--seed", "-1", "--out", "{root}/x.npy"), "seed"),
    (S("--seed", "x", "--out", "{root}/x.npy"), "--seed"),
    (S("--dtype", "float8", "--out", "{root}/x.npy"), "dtype"),
    (S("--dtype", "int64", "--out", "{root}/x.npy"), "dtype"),
    # paths and grids
    (S("--path", "warp", "--out", "{root}/x.npy"), "path"),
    (S("--path", "ve", "--path-param", "sigma_max=-1", "--out", "{root}/x.npy"), "sigma_max"),
    (S("--path", "ve", "--path-param", "bogus=1", "--out", "{root}/x.npy"), "bogus"),
    (S("--path-param", "sigma_max", "--out", "{root}/x.npy"), "--path-param"),
    (S("--grid", "log", "--out", "{root}/x.npy"), "grid"),
    (S("--grid-param", "rho=3", "--out", "{root}/x.npy"), "grid_params"),
    (S("--grid", "shifted", "--grid-param", "shift=-1", "--out", "{root}/x.npy"), "shift"),
    (S("--grid", "edm", "--grid-param", "rho=0", "--out", "{root}/x.npy"), "rho"),
    (S("--grid", "edm", "--grid-param", "shift=2", "--out", "{root}/x.npy"), "grid_params"),
    (S("--grid", "geometric", "--grid-param", "lam_cap=-1", "--out", "{root}/x.npy"), "lam_cap"),
    (S("--grid-param", "bogus=1", "--out", "{root}/x.npy"), "grid_params"),
    (S("--grid-param", "rho", "--out", "{root}/x.npy"), "--grid-param"),
    (S("--grid", "edm", "--grid-param", "rho=3", "--grid-param", "rho=4", "--out", "{root}/x.npy"), "twice"),
    (S("--t-max", "1.5", "--out", "{root}/x.npy"), "t_max"),
    (S("--t-max", "0", "--out", "{root}/x.npy"), "t_max"),
    (S("--t-max", "-0.5", "--out", "{root}/x.npy"), "t_max"),
    (S("--t-min", "2", "--out", "{root}/x.npy"), "t_min"),
    (S("--t-min", "-0.1", "--out", "{root}/x.npy"), "t_min"),
    (S("--t-min", "0.9", "--t-max", "0.5", "--out", "{root}/x.npy"), "t_min"),
    (S("--t-max", "abc", "--out", "{root}/x.npy"), "--t-max"),
    # solvers
    (S("--solver", "rk4", "--out", "{root}/x.npy"), "solver"),
    (S("--eta", "2", "--out", "{root}/x.npy"), "eta"),
    (S("--eta", "-1", "--solver", "ddim", "--out", "{root}/x.npy"), "eta"),
    (S("--eta", "0.5", "--solver", "heun", "--out", "{root}/x.npy"), "eta"),
    (S("--eta", "0.5", "--solver", "dpm++2m", "--out", "{root}/x.npy"), "eta"),
    (S("--solver", "euler-maruyama", "--out", "{root}/x.npy"), "t_max"),
    # guiders and their parameters
    (S("--guider", "magic", "--out", "{root}/x.npy"), "guider"),
    (S("--param", "scael=2", "--out", "{root}/x.npy"), "scael"),
    (S("--param", "scale", "--out", "{root}/x.npy"), "--param"),
    (S("--param", "=2", "--out", "{root}/x.npy"), "--param"),
    (S("--param", "scale=2", "--param", "scale=3", "--out", "{root}/x.npy"), "twice"),
    (S("--param", "scale=abc", "--out", "{root}/x.npy"), "scale"),
    (S("--param", "scale=.inf", "--out", "{root}/x.npy"), "scale"),
    (S("--param", "scale=[1, x]", "--out", "{root}/x.npy"), "scale"),
    (S("--param", "scale=true", "--out", "{root}/x.npy"), "scale"),
    (S("--param", "schedule=nope", "--out", "{root}/x.npy"), "schedule"),
    (S("--param", "schedule=interval", "--param", "lam_lo=-1", "--out", "{root}/x.npy"), "lam_lo"),
    (
        S("--param", "schedule=interval", "--param", "lam_lo=2", "--param", "lam_hi=1", "--out", "{root}/x.npy"),
        "lam_hi",
    ),
    (S("--param", "schedule=tv-cfg", "--param", "bogus=1", "--out", "{root}/x.npy"), "bogus"),
    (S("--param", "schedule={name: tv-cfg, bogus: 1}", "--out", "{root}/x.npy"), "bogus"),
    (S("--param", "schedule={name: nope}", "--out", "{root}/x.npy"), "schedule"),
    (S("--param", "schedule=[1, 2]", "--out", "{root}/x.npy"), "scale: 2 per-sample values"),
    (S("--param", "schedule=wang", "--param", "shape=zigzag", "--out", "{root}/x.npy"), "shape"),
    (S("--param", "schedule=step-up", "--param", "p_switch=2", "--out", "{root}/x.npy"), "p_switch"),
    (S("--param", "schedule=negative-switch", "--param", "p_switch=-1", "--out", "{root}/x.npy"), "p_switch"),
    (S("--guider", "cfg++", "--param", "scale=1.5", "--out", "{root}/x.npy"), "scale"),
    (S("--guider", "cfg++", "--param", "scale=-0.1", "--out", "{root}/x.npy"), "scale"),
    (
        S("--guider", "cfg++", "--grid", "edm", "-p", "schedule=tv-cfg", "-p", "scale=0.8", "--out", "{root}/x.npy"),
        "scale",
    ),
    (S("--guider", "apg", "--param", "norm_threshold=-1", "--out", "{root}/x.npy"), "norm_threshold"),
    (S("--guider", "apg", "--param", "momentum_form=bogus", "--out", "{root}/x.npy"), "momentum_form"),
    (S("--guider", "apg", "--param", "cfg_steps=-1", "--out", "{root}/x.npy"), "cfg_steps"),
    (S("--guider", "adg", "--param", "theta_max=-1", "--out", "{root}/x.npy"), "theta_max"),
    (S("--guider", "adamag", "--param", "kappa=-1", "--out", "{root}/x.npy"), "kappa"),
    (S("--guider", "adamag", "--param", "beta=-1", "--out", "{root}/x.npy"), "beta"),
    (S("--guider", "rescale", "--param", "phi=2", "--out", "{root}/x.npy"), "phi"),
    (S("--guider", "rescale", "--param", "space=pixels", "--out", "{root}/x.npy"), "space"),
    (S("--guider", "beta-cfg", "-p", "scale=2", "-p", "beta_a=0.5", "--out", "{root}/x.npy"), "beta_a"),
    (S("--guider", "beta-cfg", "-p", "scale=2", "-p", "norm_power=-1", "--out", "{root}/x.npy"), "norm_power"),
    (S("--guider", "beta-cfg", "--out", "{root}/x.npy"), "scale"),
    (S("--guider", "cfg-zero-star", "--param", "zero_init_steps=-1", "--out", "{root}/x.npy"), "zero_init_steps"),
    (S("--guider", "mambo-g", "--param", "alpha=-1", "--out", "{root}/x.npy"), "alpha"),
    (S("--guider", "dynamic-thresholding", "--param", "percentile=2", "--out", "{root}/x.npy"), "percentile"),
    (S("--guider", "dynamic-thresholding", "--param", "mode=soft", "--out", "{root}/x.npy"), "mode"),
    (S("--guider", "dynamic-thresholding", "--param", "data_range=[1, -1]", "--out", "{root}/x.npy"), "data_range"),
    (
        S("--guider", "dynamic-thresholding", "--param", "sample_max_value=0.5", "--out", "{root}/x.npy"),
        "sample_max_value",
    ),
    (S("--guider", "weak-model", "--param", "guide_model=weak", "--out", "{root}/x.npy"), "guide"),
    (S("--guider", "weak-model", "--param", "guide_cond=maybe", "--out", "{root}/x.npy"), "guide_cond"),
    (S("--guider", "learned", "--out", "{root}/x.npy"), "checkpoint"),
    (S("--guider", "learned", "--param", "checkpoint={root}/missing.pt", "--out", "{root}/x.npy"), "checkpoint"),
    (S("--guider", "learned", "--param", "checkpoint={garbage_pt}", "--out", "{root}/x.npy"), "checkpoint"),
    (S("--guider", "learned", "--param", "checkpoint={weights3}", "--out", "{root}/x.npy"), "checkpoint"),
    (S("--guider", "tangential", "--param", "bogus=1", "--out", "{root}/x.npy"), "bogus"),
    # diffusers' own guiders (docs/methods.md §10)
    (S("--guider", "diffusers:Nope", "--out", "{root}/x.npy"), "guider: unknown diffusers guider"),
    (S("--guider", "diffusers:PerturbedAttentionGuidance", "--out", "{root}/x.npy"), "guider"),
    (
        S("--guider", "diffusers:ClassifierFreeGuidance", "--param", "guidance_scale=x", "--out", "{root}/x.npy"),
        "guidance_scale",
    ),
    (S("--guider", "diffusers:ClassifierFreeGuidance", "--param", "scale=4", "--out", "{root}/x.npy"), "scale"),
    (S("--guider", "diffusers:ClassifierFreeGuidance", "--param", "start=2", "--out", "{root}/x.npy"), "start"),
    # outputs
    (S("--out", "{root}/x.txt"), "out"),
    (S("--out", "{file}/x.npy"), "out"),
    (S("--out", "{file}/deeper/x.npy"), "out"),
    (S("--out", "{dir}"), "out"),
    (S(), "--out"),
    (["sample", "--out", "{root}/x.npy"], "--target"),
    (S("--out", "{root}/x.npy", "--bogus"), "--bogus"),
    (S("--out", "{root}/x.npy", "extra-argument"), "extra-argument"),
    # --- targets, methods and unknown commands
    (["targets", "--bogus"], "--bogus"),
    (["targets", "extra"], "extra"),
    (["methods", "--bogus"], "--bogus"),
    (["frob"], "frob"),
    (["--bogus"], "--bogus"),
    # --- schedule
    (["schedule", "--guider", "magic"], "guider"),
    (["schedule", "--param", "scael=2"], "scael"),
    (["schedule", "--param", "scale"], "--param"),
    (["schedule", "--param", "scale=2", "--param", "scale=3"], "twice"),
    (["schedule", "--path", "warp"], "path"),
    (["schedule", "--grid", "log"], "grid"),
    (["schedule", "--steps", "0"], "steps"),
    (["schedule", "--steps", "x"], "--steps"),
    (["schedule", "--t-max", "2"], "t_max"),
    (["schedule", "--t-min", "-1"], "t_min"),
    (["schedule", "--guider", "cfg", "--plot", "{root}/p.png"], "plot"),
    (["schedule", "--guider", "learned"], "checkpoint"),
    (["schedule", "--guider", "learned", "--param", "checkpoint={root}/none.pt"], "checkpoint"),
    (["schedule", "--guider", "cfg++", "--param", "scale=3"], "scale"),
    (["schedule", "--param", "schedule=nope"], "schedule"),
    # --- run
    (["run", "{root}/missing.yaml", "--out", "{root}/o"], "config"),
    (["run", "{dir}", "--out", "{root}/o"], "folder"),
    (["run", "{binary}", "--out", "{root}/o"], "config"),
    (["run", "{bad_yaml}", "--out", "{root}/o"], "config"),
    (["run", "{list_yaml}", "--out", "{root}/o"], "config"),
    (["run", "{sweep_unknown_key}", "--out", "{root}/o"], "bogus"),
    (["run", "{sweep_no_guiders}", "--out", "{root}/o"], "guiders"),
    (["run", "{sweep_bad_guider}", "--out", "{root}/o"], "guiders[0]"),
    (["run", "{sweep_bad_param}", "--out", "{root}/o"], "guiders[0]"),
    (["run", "{sweep_bad_metric}", "--out", "{root}/o"], "metrics"),
    (["run", "{sweep_bad_target}", "--out", "{root}/o"], "targets[0]"),
    (["run", "{sweep_bad_cond}", "--out", "{root}/o"], "targets[0].conds"),
    (["run", "{sweep_bad_path}", "--out", "{root}/o"], "paths[0]"),
    (["run", "{sweep_bad_solver}", "--out", "{root}/o"], "solvers[0]"),
    (["run", "{sweep_bad_grid}", "--out", "{root}/o"], "grids[0]"),
    (["run", "{sweep_unused_grid_param}", "--out", "{root}/o"], "grid_params"),
    (["run", "{sweep_n_small}", "--out", "{root}/o"], "n"),
    (["run", "{sweep_eta}", "--out", "{root}/o"], "eta"),
    (["run", "{sweep_bad_schedule}", "--out", "{root}/o"], "schedule"),
    (["run", "{sweep_cfgpp_range}", "--out", "{root}/o"], "scale"),
    (["run", "{sweep_bad_model}", "--out", "{root}/o"], "models"),
    (["run", "{sweep_missing_model}", "--out", "{root}/o"], "guide"),
    (["run", "{sweep_no_guiders}"], "--out"),
    (["run", "--out", "{root}/o"], "config"),
    (["run", "{sweep_bad_guider}", "--out", "{root}/o", "--workers", "x"], "--workers"),
    # --- report
    (["report", "{root}/missing"], "folder"),
    (["report", "{file}"], "folder"),
    (["report", "{corrupt_store.parent}"], "store"),
    (["report", "{dir}", "--out", "{file}/r.html"], "out"),
    (["report", "{dir}", "--out", "{dir}"], "out"),
    (["report"], "folder"),
    # --- reproduce
    (["reproduce", "bogus"], "name"),
    (["reproduce", "stagewise", "--size", "huge"], "size"),
    (["reproduce", "stagewise", "--out", "{file}/o"], "out"),
    (["reproduce"], "name"),
    # --- learn
    (["learn", "--out", "{file}/o", "--target", "multimodal-2d"], "out"),
    (["learn", "--out", "{root}/l1", "--config", "{root}/missing.yaml"], "config"),
    (["learn", "--out", "{root}/l2", "--config", "{bad_yaml}"], "config"),
    (["learn", "--out", "{root}/l3", "--config", "{binary}"], "config"),
    (["learn", "--out", "{root}/l4", "--config", "{learn_list}"], "config"),
    (["learn", "--out", "{root}/l5", "--config", "{learn_unknown}"], "bogus"),
    (["learn", "--out", "{root}/l6", "--target", "multimodal-2d", "--steps", "0"], "steps"),
    (["learn", "--out", "{root}/l7", "--target", "nope"], "target"),
    (["learn", "--out", "{root}/l8", "--target", "multimodal-2d", "--denoiser", "magic"], "denoiser"),
    (["learn", "--out", "{root}/l9", "--denoiser", "mlp"], "model"),
    (["learn", "--out", "{root}/la", "--target", "multimodal-2d", "--path", "warp"], "path"),
    (["learn", "--out", "{root}/lb", "--target", "multimodal-2d", "--score-error", "-1"], "score_error"),
    (["learn", "--out", "{root}/lc", "--target", "multimodal-2d", "--set", "lr=-1"], "lr"),
    (["learn", "--out", "{root}/ld", "--target", "multimodal-2d", "--set", "bogus=1"], "bogus"),
    (["learn", "--out", "{root}/le", "--target", "multimodal-2d", "--set", "lr"], "--set"),
    (["learn", "--out", "{root}/lf", "--target", "multimodal-2d", "--set", "lr=1", "--set", "lr=2"], "twice"),
    (["learn", "--out", "{root}/lg", "--target", "multimodal-2d", "--set", "particles=1"], "particles"),
    (
        ["learn", "--out", "{root}/lh", "--target", "multimodal-2d", "--set", "delta=0.6", "--set", "zeta=0.5"],
        "delta",
    ),
    (["learn", "--out", "{root}/li", "--target", "multimodal-2d", "--set", "repulsion=2"], "repulsion"),
    (["learn", "--out", "{root}/lj", "--target", "multimodal-2d", "--set", "reward_weight=1"], "reward"),
    (["learn", "--out", "{root}/lk", "--target", "multimodal-2d", "--set", "dtype=float8"], "dtype"),
    (["learn", "--out", "{root}/ll", "--target", "multimodal-2d", "--steps", "x"], "--steps"),
    (["learn", "--target", "multimodal-2d"], "--out"),
    # --- train
    (["train", "--target", "nope", "--out", "{root}/m.pt"], "target"),
    (["train", "--target", "multimodal-2d", "--out", "{file}/m.pt"], "out"),
    (["train", "--target", "multimodal-2d", "--out", "{dir}"], "out"),
    (["train", "--target", "multimodal-2d", "--out", "{root}/m.pt", "--steps", "0"], "steps"),
    (["train", "--target", "multimodal-2d", "--out", "{root}/m.pt", "--batch-size", "0"], "batch_size"),
    (["train", "--target", "multimodal-2d", "--out", "{root}/m.pt", "--hidden", "0"], "hidden"),
    (["train", "--target", "multimodal-2d", "--out", "{root}/m.pt", "--depth", "0"], "depth"),
    (["train", "--target", "multimodal-2d", "--out", "{root}/m.pt", "--lr", "0"], "lr"),
    (["train", "--target", "multimodal-2d", "--out", "{root}/m.pt", "--p-uncond", "1"], "p_uncond"),
    (["train", "--target", "multimodal-2d", "--out", "{root}/m.pt", "--threads", "0"], "threads"),
    # --- train on an image dataset, train-classifier
    (["train", "--out", "{root}/m.safetensors"], "data"),
    (["train", "--data", "digits", "--target", "multimodal-2d", "--out", "{root}/m.safetensors"], "data"),
    (["train", "--data", "cifar", "--out", "{root}/m.safetensors"], "data"),
    (["train", "--data", "digits", "--out", "{root}/m.pt"], "out"),
    (["train", "--data", "digits", "--arch", "transformer", "--out", "{root}/m.safetensors"], "arch"),
    (["train", "--data", "digits", "--prediction", "score", "--out", "{root}/m.safetensors"], "prediction"),
    (["train", "--data", "digits", "--path", "discrete-vp", "--out", "{root}/m.safetensors"], "path"),
    (["train", "--data", "digits", "--channels", "a,b", "--out", "{root}/m.safetensors"], "channels"),
    (["train", "--data", "digits", "--channels", "8,8,8,8,8", "--out", "{root}/m.safetensors"], "channels"),
    (["train", "--data", "digits", "--ema-decay", "1", "--out", "{root}/m.safetensors"], "ema_decay"),
    (["train", "--data", "digits", "--patience", "0", "--out", "{root}/m.safetensors"], "patience"),
    (["train", "--data", "digits", "--out", "{file}/m.safetensors"], "out"),
    (["train-classifier", "--data", "cifar", "--out", "{root}/c.safetensors"], "data"),
    (["train-classifier", "--data", "digits", "--out", "{root}/c.pt"], "out"),
    (["train-classifier", "--data", "digits", "--steps", "0", "--out", "{root}/c.safetensors"], "steps"),
    # --- sample a trained model
    (["sample", "--out", "{root}/x.npy"], "target"),
    (["sample", "--model", "digits", "--target", "multimodal-2d", "--out", "{root}/x.npy"], "target"),
    (["sample", "--model", "nope", "--out", "{root}/x.npy"], "model"),
    (["sample", "--model", "{root}/missing.safetensors", "--out", "{root}/x.npy"], "model"),
    (["sample", "--model", "{binary}", "--out", "{root}/x.npy"], "model"),
    (["sample", "--model", "no_such_module:build", "--out", "{root}/x.npy"], "model.factory"),
    (["sample", "--model", "digits", "--cond", "12", "--out", "{root}/x.npy"], "cond"),
    (["sample", "--model", "digits", "--cond", "seven", "--out", "{root}/x.npy"], "cond"),
    (["sample", "--model", "digits", "--path", "vp-cosine", "--out", "{root}/x.npy"], "path"),
    (["sample", "--model", "digits", "--path-param", "shift=2", "--out", "{root}/x.npy"], "path_params"),
    (["sample", "--model", "digits-classifier", "--out", "{root}/x.npy"], "model"),
    (["train", "--target", "multimodal-2d", "--out", "{root}/m.pt", "--path", "warp"], "path"),
    (["train", "--target", "multimodal-2d", "--out", "{root}/m.pt", "--steps", "x"], "--steps"),
    (["train", "--out", "{root}/m.pt"], "--target"),
    # --- demo
    (["demo", "--out", "{file}/d"], "out"),
    (["demo", "--workers", "0", "--out", "{root}/d"], "workers"),
    (["demo", "--workers", "x"], "--workers"),
    # generate on a saved diffusers pipeline (tiny random ones, built offline)
    (
        ["generate", "--pipeline", "{sd_pipe}", "--out", "{root}/g", "--prompt", "a", "--grid", "schedular"],
        "grid: unknown grid 'schedular'; did you mean 'scheduler'?",
    ),
    (["generate", "--pipeline", "{sd_pipe}", "--out", "{root}/g", "--prompt", "a", "--device", "cuda0"], "device:"),
    (
        [
            "generate",
            "--pipeline",
            "{sd_pipe}",
            "--out",
            "{root}/g",
            "--prompt",
            "a",
            "--grid",
            "edm",
            "--grid-param",
            "rhoo=7",
        ],
        "grid_params: the edm grid does not use 'rhoo'; did you mean 'rho'?",
    ),
    (
        ["generate", "--pipeline", "{sd_pipe}", "--out", "{root}/g", "--prompt", "a", "--grid-param", "rho=7"],
        "grid_params: the scheduler's grid takes none",
    ),
    (["smaple"], "smaple: no such command; did you mean 'sample'?"),
    (S("--out", "{root}/x.npy", "--param", "scale", "3"), "3: unexpected argument; an option takes one value"),
    (
        ["reproduce", "adg-norm", "--size", "CI", "--out", "{root}/r"],
        "size: unknown size 'CI'; did you mean 'ci'?",
    ),
    (S("--out", "{root}/x.npy", "--model", "digitz", "--target", "x"), "model"),
    (S("--out", "{root}/x.npy", "-p", "schedule={nmae: interval}"), "unknown parameter 'nmae'; did you mean 'name'?"),
    (["generate", "--pipeline", "{root}/no-such", "--out", "{root}/g", "--prompt", "a"], "pipeline"),
    (["generate", "--pipeline", "{dir}", "--out", "{root}/g", "--prompt", "a"], "pipeline"),
    (["generate", "--pipeline", "{file}", "--out", "{root}/g", "--prompt", "a"], "pipeline"),
    (["generate", "--pipeline", "{broken_pipe}", "--out", "{root}/g", "--prompt", "a"], "pipeline"),
    (["generate", "--pipeline", "{dit_pipe}", "--out", "{root}/g", "--prompt", "a cat"], "prompt"),
    (["generate", "--pipeline", "{dit_pipe}", "--out", "{root}/g", "--class", "5000"], "class_labels"),
    (["generate", "--pipeline", "{dit_pipe}", "--out", "{root}/g"], "class_labels"),
    (["generate", "--pipeline", "{sd_pipe}", "--out", "{root}/g", "--class", "3"], "class_labels"),
    (["generate", "--pipeline", "{sd_pipe}", "--out", "{root}/g", "--prompt", "a", "--guider", "nope"], "guider"),
    (["generate", "--pipeline", "{sd_pipe}", "--out", "{root}/g", "--prompt", "a", "--solver", "rk4"], "solver"),
    (["generate", "--pipeline", "{sd_pipe}", "--out", "{root}/g", "--prompt", "a", "--grid", "cosine"], "grid"),
    (["generate", "--pipeline", "{sd_pipe}", "--out", "{root}/g", "--prompt", "a", "-p", "scale=abc"], "scale"),
    (["generate", "--pipeline", "{sd_pipe}", "--out", "{root}/g", "--prompt", "a", "--steps", "0"], "steps"),
    (["generate", "--pipeline", "{sd_pipe}", "--out", "{root}/g", "--prompt", "a", "--n", "0"], "n"),
    (["generate", "--pipeline", "{sd_pipe}", "--out", "{root}/g", "--prompt", "a", "--height", "15"], "height"),
    (["generate", "--pipeline", "{sd_pipe}", "--out", "{root}/g", "--prompt", "a", "--dtype", "float16"], "dtype"),
    (["generate", "--pipeline", "{sd_pipe}", "--out", "{root}/g", "--prompt", "a", "--dtype", "int8"], "dtype"),
    (["generate", "--pipeline", "{sd_pipe}", "--out", "{file}/g", "--prompt", "a"], "out"),
    (["generate", "--pipeline", "{sd_pipe}", "--out", "{root}/g", "--prompt", "a", "--max-batch", "0"], "max_batch"),
    (["generate", "--pipeline", "{sd_pipe}", "--prompt", "a"], "--out"),
]


def fill(arg: str, files: dict) -> str:
    for key, value in files.items():
        arg = arg.replace("{" + key + "}", str(value))
        arg = arg.replace("{" + key + ".parent}", str(getattr(value, "parent", value)))
    return arg


def test_the_table_is_large_and_covers_every_command():
    assert len(CASES) >= 150
    commands = {argv[0] for argv, _ in CASES}
    assert {
        "sample",
        "targets",
        "methods",
        "schedule",
        "run",
        "report",
        "reproduce",
        "learn",
        "train",
        "demo",
        "generate",
    } <= commands


@pytest.mark.parametrize(("argv", "field"), CASES, ids=[" ".join(a)[:70] for a, _ in CASES])
def test_bad_input_is_one_line_naming_the_field_and_exit_2(argv, field, files, capsys):
    argv = [fill(a, files) for a in argv]
    before = {p for p in files["root"].rglob("*")}
    with pytest.raises(SystemExit) as info:
        main(argv)
    captured = capsys.readouterr()
    assert info.value.code == 2, (argv, captured.out, captured.err)
    lines = [line for line in captured.err.strip().splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, captured.err
    assert fill(field, files) in lines[0], lines[0]
    assert "Traceback" not in captured.err + captured.out
    written = {p for p in files["root"].rglob("*") if p.is_file()} - before
    assert not [p for p in written if p.suffix in (".npy", ".pt", ".html")], written  # nothing half-written


def test_a_folder_that_cannot_be_written_is_named(files, capsys, monkeypatch):
    """Read-only folders (root ignores permissions here, so the check itself is made to say no)."""
    import guidelab.cli as cli

    locked = files["root"] / "locked"
    locked.mkdir(exist_ok=True)
    real = cli.os.access
    monkeypatch.setattr(
        cli.os, "access", lambda p, mode: False if str(p) == str(locked) and mode & cli.os.W_OK else real(p, mode)
    )
    for argv in (S("--out", f"{locked}/x.npy"), ["run", str(files["sweep_ok"]), "--out", str(locked)]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        err = capsys.readouterr().err
        assert info.value.code == 2 and "permission denied" in err and err.count("error: ") == 1, err


def test_name_and_index_of_a_class_are_unambiguous(files, capsys):
    """A class named "0" in a target whose class 0 is named "null": the prefixes say which is meant, and the
    sidecar records the class used."""
    for cond, index in (("name:0", 1), ("index:0", 0), ("name:null", 0), ("index:1", 1), ("null", 0)):
        out = files["root"] / f"c-{index}-{cond.replace(':', '_')}.npy"
        main(
            [
                "sample",
                "--target",
                str(files["null_named"]),
                "--cond",
                cond,
                "--n",
                "8",
                "--steps",
                "4",
                "--out",
                str(out),
            ]
        )
        sidecar = json.loads(out.with_suffix(".json").read_text())
        assert sidecar["config"]["cond_index"] == index, cond
    capsys.readouterr()


def test_a_learned_checkpoint_of_other_class_names_warns(tmp_path):
    from guidelab.grids import make_grid
    from guidelab.guiders import build_guider
    from guidelab.paths import get_path
    from guidelab.sampling import sample
    from guidelab.targets import get_target

    file = tmp_path / "weights.pt"
    save_weights(GuidanceWeights(2, init_omega=0.5), file, {"class_names": ["p", "q"]})
    target, path = get_target("multimodal-2d"), get_path("rf")
    with pytest.warns(UserWarning, match="checkpoint: learned on the classes"):
        sample(target.denoiser(path), build_guider("learned", checkpoint=str(file)),
               grid=make_grid("uniform", 4, path), n=4, shape=(2,), cond=0)  # fmt: skip


def test_a_corrupt_store_is_named_not_a_traceback(files):
    from guidelab.experiments.store import ResultStore

    with pytest.raises(ValueError, match="store: .* is not a guidelab results store"):
        ResultStore(files["corrupt_store"])
    assert sqlite3.connect(":memory:")  # the error is the store's, not sqlite's


def test_generate_checks_its_options_before_loading_the_pipeline(files, capsys, monkeypatch):
    """A mistyped grid, grid parameter or device is told at once, not after the (possibly minutes-long) load."""
    import guidelab.pipelines

    def never(*args, **kwargs):
        raise AssertionError("the pipeline was loaded")

    monkeypatch.setattr(guidelab.pipelines, "load_pipeline", never)
    base = ["generate", "--pipeline", str(files["sd_pipe"]), "--out", str(files["root"] / "g"), "--prompt", "a"]
    for extra in (["--grid", "schedular"], ["--device", "cuda0"], ["--grid", "edm", "--grid-param", "rhoo=7"]):
        with pytest.raises(SystemExit) as info:
            main([*base, *extra])
        err = capsys.readouterr().err
        assert info.value.code == 2 and "loaded" not in err and err.startswith("error: "), err
