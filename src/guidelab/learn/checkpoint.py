"""Checkpoints of learning: the held-out record with early stopping, and save / restore of φ, the optimiser,
the generator and the loop state (bit-identical resume)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from guidelab.io import torch_load_checked, torch_save_atomic
from guidelab.learn.config import LearnConfig
from guidelab.models.guidance_weights import CHECKPOINT_FORMAT, GuidanceWeights

__all__ = [
    "record_evaluation",
    "restore_checkpoint",
    "save_checkpoint",
]


def record_evaluation(
    state: dict[str, Any], weights: GuidanceWeights, holdout: float, train_loss: float, config: LearnConfig
) -> float:
    """Append an evaluation to the history; keep the best weights; decide early stopping."""
    state["history"].append({"step": state["step"], "train_loss": train_loss, "holdout": holdout})
    if holdout < state["best_holdout"] - config.min_delta or state["best_weights"] is None:
        state["best_holdout"], state["best_step"] = holdout, state["step"]
        state["best_weights"] = copy.deepcopy(weights.state_dict())
        state["bad_evals"] = 0
    else:
        state["bad_evals"] += 1
        if config.patience and state["bad_evals"] >= config.patience:
            state["stopped_early"] = True
    return holdout


def save_checkpoint(
    file: Path,
    config: LearnConfig,
    weights: GuidanceWeights,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    state: dict[str, Any],
    meta: dict[str, Any],
) -> None:
    torch_save_atomic(
        {
            "format": CHECKPOINT_FORMAT,
            "config": config.model_dump(mode="json"),
            "result_fields": config.result_fields(),
            "weights_config": weights.config(),
            "weights": weights.state_dict(),
            "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(),
            "meta": meta,
            **state,
        },
        file,
    )


def restore_checkpoint(
    file: Path,
    config: LearnConfig,
    weights: GuidanceWeights,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> dict[str, Any]:
    """Load a checkpoint into φ, the optimiser and the generator; return the loop state."""
    blob = torch_load_checked(file)
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint: {str(file)!r} is not a guidelab learning checkpoint")
    stored, current = blob["result_fields"], config.result_fields()
    differing = sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))
    if differing:
        key = differing[0]
        raise ValueError(
            f"{key}: the checkpoint in {str(file.parent)!r} was written with {key}={stored.get(key)!r}, not "
            f"{current.get(key)!r}; use another out_dir or resume=False"
        )
    weights.load_state_dict(blob["weights"])
    optimizer.load_state_dict(blob["optimizer"])
    generator.set_state(blob["generator"])
    return {
        k: blob[k]
        for k in ("step", "best_holdout", "best_step", "best_weights", "bad_evals", "history", "stopped_early")
    }
