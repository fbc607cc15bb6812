"""The checkpoint of a run: where it lives, how it is written, what a resume must share with it.

A checkpoint records the fingerprint of what it was trained on
(config/fingerprint.py: the train split's rows, the split and sampling
settings, the environment, the candidate's model block and name), so a resume
continues only its own run. Every defect of the file (empty, truncated, not a
checkpoint) and a disk that fills up while one is written is one line naming
the file and what to do (config/errors.py), never a traceback.
"""

from __future__ import annotations

import errno
import logging
import os
import pickle
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from twotower_pipeline.config.errors import DiskFullError, PipelineInputError, human_size
from twotower_pipeline.config.fingerprint import fingerprint_differences, resume_refusal
from twotower_pipeline.model.towers import TwoTowerModel
from twotower_pipeline.training.spec import TrainingSpec

if TYPE_CHECKING:
    from twotower_pipeline.training.optimizers import Optimizers
    from twotower_pipeline.training.shard import Shard

logger = logging.getLogger(__name__)

# What torch.load raises on a file cut off mid-write or of other bytes.
UNREADABLE = (RuntimeError, OSError, EOFError, pickle.UnpicklingError, ValueError)
# The keys every checkpoint this project writes holds (training/loop.py's _save).
CHECKPOINT_KEYS = ("model", "optimizer", "model_config", "seed", "training", "history")
WHAT_TO_DO = "delete it, or set training.resume=false to start from epoch 1"


class CheckpointMismatchError(PipelineInputError, ValueError):
    """A checkpoint of another model, seed, training settings or data than this run's."""


@dataclass
class CheckpointedSpec(TrainingSpec):
    """A TrainingSpec with the fingerprint its checkpoints record and a resume compares."""

    fingerprint: dict | None = None


def checkpoint_path(spec: TrainingSpec) -> Path:
    return Path(spec.checkpoint_dir) / "last.pt"


def save_checkpoint(spec: TrainingSpec, state: dict) -> None:
    """Write `state` (and the spec's fingerprint) beside the checkpoint, then rename it over.

    The temporary name is this process's own (`.last.pt.<pid>.<random>.tmp`) and
    is removed whatever happens; a full disk is a DiskFullError naming the file
    and the space the checkpoint needs. A kill mid-write leaves the previous
    checkpoint whole.
    """
    fingerprint = getattr(spec, "fingerprint", None)
    if fingerprint is not None:
        state = {**state, "fingerprint": fingerprint}
    path = checkpoint_path(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        # Through a Python file, so a full disk is an OSError (torch's own writer says
        # only "unexpected pos"); created with the process's umask like any file.
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as error:
        if not _disk_full_error(error):
            raise
        raise DiskFullError(_disk_full(path, state)) from None
    finally:
        tmp.unlink(missing_ok=True)


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
        "fingerprint",  # compared on its own (config/fingerprint.py)
    }
    return {key: value for key, value in vars(spec).items() if key not in skip}


def read_checkpoint(path: Path) -> dict:
    """Return a checkpoint's content; any defect is one PipelineInputError naming the file."""
    size = path.stat().st_size
    if size == 0:
        raise PipelineInputError(
            f"the checkpoint {path} is empty (0 bytes), so training.resume cannot continue "
            f"from it: {WHAT_TO_DO}"
        )
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except UNREADABLE as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise PipelineInputError(
            f"the checkpoint {path} ({size} bytes) cannot be read ({type(error).__name__}: "
            f"{reason[:200]}); it may be truncated: {WHAT_TO_DO}"
        ) from None
    missing = (
        [key for key in CHECKPOINT_KEYS if key not in state]
        if isinstance(state, dict)
        else list(CHECKPOINT_KEYS)
    )
    if missing:
        held = type(state).__name__ if not isinstance(state, dict) else f"keys {sorted(state)[:8]}"
        raise PipelineInputError(
            f"{path} is not a checkpoint of this project: it lacks {', '.join(missing)} "
            f"(it holds {held}): {WHAT_TO_DO}"
        )
    return state


def checkpoint_differences(spec: TrainingSpec, state: dict) -> list[str]:
    """Return one phrase per way a checkpoint differs from this run (none: it can resume).

    The fingerprint (when the spec has one), then the seed and training settings.
    """
    differences = []
    fingerprint = getattr(spec, "fingerprint", None)
    if fingerprint is not None:
        differences += fingerprint_differences(state.get("fingerprint"), fingerprint)
    settings = resumable_settings(spec)
    for key, value in state["training"].items():
        if settings.get(key) != value:
            differences.append(f"training.{key} {value!r} -> now {settings.get(key)!r}")
    return differences


def checkpoint_standing(spec: TrainingSpec) -> list[str] | None:
    """Return None when there is no checkpoint, else how it differs from this run ([]: resumes).

    A defective file raises its one-line PipelineInputError.
    """
    path = checkpoint_path(spec)
    if not path.exists():
        return None
    return checkpoint_differences(spec, read_checkpoint(path))


def no_checkpoint_message(path: Path) -> str:
    return (
        f"training.resume is true but there is no checkpoint at {path}: "
        "set training.resume=false to start from epoch 1"
    )


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
            raise PipelineInputError(no_checkpoint_message(path))
        state = read_checkpoint(path)
    if shard is not None:
        state = shard.broadcast(state)
    fingerprint = getattr(spec, "fingerprint", None)
    if fingerprint is not None:
        differences = fingerprint_differences(state.get("fingerprint"), fingerprint)
        if differences:
            raise CheckpointMismatchError(resume_refusal(str(path), differences))
    if state["model_config"] != model.config.to_dict() or state["seed"] != spec.seed:
        raise CheckpointMismatchError(
            f"{path} was written for another model or seed ({state['model_config']}, seed "
            f"{state['seed']}); {WHAT_TO_DO}"
        )
    changed = {
        key: (value, resumable_settings(spec).get(key))
        for key, value in state["training"].items()
        if resumable_settings(spec).get(key) != value
    }
    if changed:
        # Resuming under other settings would mix two runs in one model.
        raise CheckpointMismatchError(
            f"{path} was written with other training settings "
            f"({', '.join(f'{k}: {a} -> now {b}' for k, (a, b) in changed.items())}); "
            "resume with the same parameters, or set training.resume=false"
        )
    model.load_state_dict(state["model"])
    optimizers.load_state_dict(state["optimizer"])
    logger.info("resuming from %s after epoch %d", path, len(state["history"]))
    return list(state["history"]), state.get("best")


def _disk_full_error(error: BaseException | None) -> bool:
    """Return whether an error, or one it arose from, is a full disk (or quota)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def _disk_full(path: Path, state: dict[str, Any]) -> str:
    """Return the one line for a checkpoint that did not fit on the disk."""
    counter = _ByteCounter()
    try:
        torch.save(state, counter)
        size = f"it needs {human_size(counter.written)}"
    except Exception:  # noqa: BLE001 - the size is a courtesy; the disk is the error
        size = "it needs more than is free"
    free = shutil.disk_usage(path.parent).free
    return (
        f"no space left on the disk while writing the checkpoint {path}: {size}, and "
        f"{human_size(free)} is free there; free some space (the previous checkpoint is unchanged) "
        "and run again (training.resume=true continues from it)"
    )


class _ByteCounter:
    """A file-like sink that only counts what is written to it."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> int:
        self.written += len(data)
        return len(data)

    def flush(self) -> None:
        return None
