"""The checkpoint of a run: where it lives, how it is written, what a resume must share with it."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from twotower_pipeline.config.errors import PipelineInputError
from twotower_pipeline.model.towers import TwoTowerModel
from twotower_pipeline.training.spec import TrainingSpec

if TYPE_CHECKING:
    from twotower_pipeline.training.optimizers import Optimizers
    from twotower_pipeline.training.shard import Shard

logger = logging.getLogger(__name__)


def checkpoint_path(spec: TrainingSpec) -> Path:
    return Path(spec.checkpoint_dir) / "last.pt"


def save_checkpoint(spec: TrainingSpec, state: dict) -> None:
    path = checkpoint_path(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a kill mid-write leaves the previous checkpoint whole


def resumable_settings(spec: TrainingSpec) -> dict:
    """Return the settings a resumed run must share with the run it continues."""
    skip = {
        "resume",
        "progress_bar",
        "checkpoint_dir",
        "device",
        "compile_rows",  # compiled or eager: the same rule, to float rounding
        "eval_chunk_size",
        "eval_max_users",
    }
    return {key: value for key, value in vars(spec).items() if key not in skip}


def load_checkpoint(
    spec: TrainingSpec, model: TwoTowerModel, optimizers: Optimizers, shard: Shard | None = None
) -> tuple[list[dict], dict | None]:
    """Restore model and optimizers from the last checkpoint; return (history, best state).

    With a shard, rank 0 reads the file and every rank receives its content.
    """
    path = checkpoint_path(spec)
    state = None
    if shard is None or shard.writes:
        if not path.exists():
            raise PipelineInputError(
                f"training.resume is true but there is no checkpoint at {path}: "
                "set training.resume=false to start from epoch 1"
            )
        state = torch.load(path, weights_only=True, map_location="cpu")
    if shard is not None:
        state = shard.broadcast(state)
    if state["model_config"] != model.config.to_dict() or state["seed"] != spec.seed:
        raise ValueError(
            f"{path} was written for another model or seed ({state['model_config']}, seed "
            f"{state['seed']}); delete it or set training.resume=false"
        )
    changed = {
        key: (value, resumable_settings(spec).get(key))
        for key, value in state["training"].items()
        if resumable_settings(spec).get(key) != value
    }
    if changed:
        # Resuming under other settings would mix two runs in one model.
        raise ValueError(
            f"{path} was written with other training settings "
            f"({', '.join(f'{k}: {a} -> now {b}' for k, (a, b) in changed.items())}); "
            "resume with the same parameters, or set training.resume=false"
        )
    model.load_state_dict(state["model"])
    optimizers.load_state_dict(state["optimizer"])
    logger.info("resuming from %s after epoch %d", path, len(state["history"]))
    return list(state["history"]), state.get("best")
