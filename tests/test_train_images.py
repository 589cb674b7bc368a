"""Training image models: determinism, resuming after ``kill -9`` to the same bits, refusing another run's state,
early stopping by the documented rule, and the classifier's stored test accuracy."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import guidelab
from guidelab.cli import main
from guidelab.data import load_dataset
from guidelab.io import load_safetensors_checked
from guidelab.models.zoo import load_classifier
from guidelab.train_images import state_path, train_classifier, train_image_denoiser

STATE_FORMAT = "guidelab-train-state/1"
TINY = {
    "data": "digits",
    "arch": "mlp",
    "hidden": 32,
    "depth": 1,
    "embed_dim": 8,
    "batch_size": 32,
    "warmup": 5,
}
COMMAND = [
    "train",
    "--data",
    "digits",
    "--arch",
    "mlp",
    "--steps",
    "60",
    "--checkpoint-every",
    "5",
    "--eval-every",
    "20",
    "--threads",
    "1",
    "--out",
    "A.safetensors",
]


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _assert_same_bits(a: Path, b: Path) -> None:
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys()
    differ = [key for key in ta if ta[key].dtype != tb[key].dtype or not torch.equal(ta[key], tb[key])]
    assert not differ, f"tensors differ: {differ}"


def test_same_seed_gives_identical_weights_and_another_seed_does_not(tmp_path):
    config = {**TINY, "steps": 20, "eval_every": 10, "checkpoint_every": 10}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        train_image_denoiser({**config, "seed": seed}, tmp_path / f"{name}.safetensors", threads=1)
    _assert_same_bits(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    ta, tc = _tensors(tmp_path / "a.safetensors"), _tensors(tmp_path / "c.safetensors")
    assert any(not torch.equal(ta[k], tc[k]) for k in ta)


def _cli(cwd: Path, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(guidelab.__file__).resolve().parents[1])}  # this checkout's code
    return subprocess.Popen([sys.executable, "-m", "guidelab.cli", *COMMAND], cwd=cwd, env=env, **kwargs)


def _state_step(folder: Path) -> int:
    try:
        _, config = load_safetensors_checked(folder / "A.state.safetensors", STATE_FORMAT)
    except (FileNotFoundError, ValueError):
        return -1  # not written yet
    return int(config["record"]["step"])


def _killed_midway(folder: Path) -> int | None:
    """Start the command, SIGKILL it once its state has reached step 15; the state's step at death, or None when
    the run finished first (a busy machine)."""
    proc = _cli(folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if _state_step(folder) >= 15:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
    finally:
        if proc.poll() is None and time.monotonic() >= deadline:
            proc.kill()
        proc.wait()
    step = _state_step(folder)
    return step if proc.returncode == -signal.SIGKILL and 15 <= step < 60 else None


def test_kill_9_then_rerun_ends_bit_identical_to_an_uninterrupted_run(tmp_path):
    for attempt in range(3):
        killed = tmp_path / f"killed-{attempt}"
        killed.mkdir()
        killed_at = _killed_midway(killed)
        if killed_at is not None:
            break
    assert killed_at is not None, "the run always finished before it could be killed"

    resumed = _cli(killed, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert f"resumed at step {killed_at}" in out, out
    assert _state_step(killed) == 60

    whole = tmp_path / "whole"
    whole.mkdir()
    straight = _cli(whole, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = straight.communicate(timeout=300)
    assert straight.returncode == 0, err
    assert "resumed" not in out

    _assert_same_bits(killed / "A.safetensors", whole / "A.safetensors")
    _, config_killed = load_safetensors_checked(killed / "A.safetensors", "guidelab-image-denoiser/1")
    _, config_whole = load_safetensors_checked(whole / "A.safetensors", "guidelab-image-denoiser/1")
    assert config_killed == config_whole  # the same best step and held-out loss too
    _, state_killed = load_safetensors_checked(killed / "A.state.safetensors", STATE_FORMAT)
    _, state_whole = load_safetensors_checked(whole / "A.state.safetensors", STATE_FORMAT)
    assert state_killed["record"] == state_whole["record"]


def test_a_rerun_with_another_arch_against_the_same_out_is_refused_naming_out(tmp_path, capsys):
    out = tmp_path / "A.safetensors"
    base = ["train", "--data", "digits", "--steps", "4", "--eval-every", "2", "--hidden", "16", "--threads", "1"]
    main([*base, "--arch", "mlp", "--out", str(out)])
    assert state_path(out).is_file()
    before = out.read_bytes(), state_path(out).read_bytes()
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main([*base, "--arch", "unet", "--out", str(out)])
    err = capsys.readouterr().err
    assert info.value.code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: out: "), err
    assert '"mlp"' in lines[0] and '"unet"' in lines[0]
    assert (out.read_bytes(), state_path(out).read_bytes()) == before  # nothing overwritten


def _stop_step(history: list[tuple[int, float]], patience: int) -> int | None:
    """The documented rule replayed: an evaluation better than the best so far resets the count, any other adds
    one; training stops at the evaluation where the count reaches ``patience``."""
    best, bad = float("inf"), 0
    for step, loss in history:
        if loss < best:
            best, bad = loss, 0
        else:
            bad += 1
            if bad >= patience:
                return step
    return None


def test_early_stopping_when_the_held_out_loss_cannot_improve(tmp_path):
    """lr = 1e-50 is zero in float32: the weights and their EMA never move, so the held-out loss repeats exactly and
    patience 1 stops training at the second evaluation."""
    out = tmp_path / "still.safetensors"
    config = {**TINY, "steps": 100, "lr": 1e-50, "eval_every": 5, "patience": 1, "checkpoint_every": 100}
    result = train_image_denoiser(config, out, threads=1)
    assert result.stopped_early
    assert result.steps_run == 10 and result.best_step == 5
    assert [s for s, _ in result.history] == [5, 10]
    assert result.history[0][1] == result.history[1][1]
    assert _stop_step(result.history, 1) == result.steps_run
    again = train_image_denoiser(config, out, threads=1)  # a finished run stays finished
    assert again.resumed_from == 10 and again.steps_run == 10 and again.losses == []


def test_early_stopping_follows_the_rule_on_a_real_run(tmp_path):
    config = {**TINY, "steps": 200, "lr": 5e-2, "warmup": 0, "eval_every": 4, "patience": 2, "ema_decay": 0.5}
    result = train_image_denoiser(config, tmp_path / "m.safetensors", threads=1)
    expected = _stop_step(result.history, 2)
    assert result.stopped_early == (expected is not None)
    assert result.steps_run == (expected if expected is not None else 200)
    best_step, best = min(result.history, key=lambda h: (h[1], h[0]))
    assert (result.best_step, result.best_holdout) == (best_step, best)  # the first of the lowest losses


def test_classifier_stores_its_test_accuracy_measured_by_hand(tmp_path):
    out = tmp_path / "clf.safetensors"
    config = {"data": "digits", "steps": 100, "batch_size": 64, "channels": [16, 16, 16], "feature_dim": 8}
    result = train_classifier({**config, "lr": 5e-3, "warmup": 10, "ema_decay": 0.9, "eval_every": 50}, out, threads=1)
    clf = load_classifier(out, expect={"data": "digits"})
    test = load_dataset("digits", "test")
    with torch.no_grad():
        logits = clf(test.images).numpy()
    predicted = np.argmax(logits, axis=1)
    correct = int(np.sum(predicted == test.labels.numpy()))
    assert correct > 0.3 * len(test)  # it learned something: a wrong split or label order would show
    assert clf.checkpoint_config["test_accuracy"] == correct / len(test)
    assert result.test_accuracy == correct / len(test)


def test_a_run_too_short_for_its_ema_is_warned_about_on_one_line(tmp_path):
    from guidelab.train_images import ClassifierTrainConfig, DenoiserTrainConfig, ema_note

    assert ema_note(DenoiserTrainConfig()) is None  # the defaults: 4,000 steps for an average over ~1,000
    assert ema_note(ClassifierTrainConfig()) is None
    note = ema_note(DenoiserTrainConfig(steps=300))
    assert note.startswith("ema_decay: 300 steps") and f"{0.999**300:.0%}" in note and "\n" not in note
    assert ema_note(DenoiserTrainConfig(steps=300, ema_decay=0.99)) is None
    done = subprocess.run(
        [sys.executable, "-m", "guidelab.cli", "train", "--data", "digits", "--arch", "mlp", "--hidden", "8",
         "--steps", "10", "--eval-every", "10", "--threads", "1", "--out", str(tmp_path / "m.safetensors")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith("warning: ema_decay: 10 steps")
    assert "UserWarning" not in done.stderr


def test_one_vs_rest_relabels_the_dataset():
    data = load_dataset("digits", "val")
    binary = data.one_vs_rest(3)
    assert binary.class_names == ("3", "not-3") and binary.num_classes == 2
    assert torch.equal(binary.images, data.images)
    assert torch.equal(binary.labels == 0, data.labels == 3) and set(binary.labels.tolist()) == {0, 1}
    with pytest.raises(ValueError, match="^one_vs_rest: "):
        data.one_vs_rest(10)


def test_one_vs_rest_trains_a_binary_model_that_names_its_classes(tmp_path):
    out = tmp_path / "b.safetensors"
    result = train_image_denoiser(
        {**TINY, "steps": 2, "eval_every": 2, "ema_decay": 0.0, "one_vs_rest": 0}, out, threads=1
    )
    model = result.model
    assert model.num_classes == 2 and model.class_names == ("0", "not-0")
    assert model.checkpoint_config["train"]["one_vs_rest"] == 0
    plain = train_image_denoiser(
        {**TINY, "steps": 2, "eval_every": 2, "ema_decay": 0.0}, tmp_path / "p.safetensors", threads=1
    )
    assert "one_vs_rest" not in plain.model.checkpoint_config["train"]  # the all-class recipe is unchanged
    assert not hasattr(plain.model, "class_names")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--one-vs-rest", "10"], "error: one_vs_rest: digits has classes 0 to 9, got 10"),
        (["--one-vs-rest", "-1"], "error: one_vs_rest: "),
    ],
)
def test_bad_one_vs_rest_is_one_line_and_exit_2(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as info:
        main(["train", "--data", "digits", "--steps", "1", "--out", str(tmp_path / "x.safetensors"), *extra])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and len(err.splitlines()) == 1 and err.startswith(message), err
