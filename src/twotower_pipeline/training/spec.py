"""The knobs of one training run, its learning-rate schedule, its device and how it fails."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from twotower_pipeline.config.errors import RunFailedError


class TrainingDivergedError(RunFailedError, RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class TrainingSpec:
    """The knobs of one training run (values come from parameters; no defaults here)."""

    seed: int
    num_epochs: int
    neg_ratio: int
    batch_size: int  # positives per step; each brings its neg_ratio negatives
    learning_rate: float
    weight_decay: float  # decoupled (AdamW) decay of the tower weights, not of the scale
    scale_lr_ratio: float  # the logit scale learns at learning_rate x this
    lr_schedule: str  # constant | cosine
    warmup_epochs: float  # the rate grows linearly from ~0 over this many epochs' steps
    resample_each_epoch: bool
    eval_k: int
    eval_chunk_size: int  # users scored at once by the per-epoch ranking metric
    eval_max_users: int | None  # a seeded sample of validation users ranked per epoch (None: all)
    chunk_positives: int  # positives whose negatives are drawn at once
    optimizer: str  # rowwise | rowwise_rmsprop (sparse rows) | dense (AdamW over whole tables)
    compile_rows: str | bool  # auto | true | false: a row optimizer's update compiled
    device: str  # auto | cpu | cuda
    checkpoint_dir: str
    resume: bool
    progress_bar: bool
    loss: str  # bce | softmax (training/tasks.py)
    log_q: bool  # softmax: each candidate's logit corrected by the log of how it was drawn


def learning_rate_at(spec: TrainingSpec, epoch: int) -> float:
    """Return the learning rate of 0-based epoch `epoch` (constant within an epoch)."""
    if spec.lr_schedule == "constant":
        return spec.learning_rate
    if spec.lr_schedule == "cosine":
        return spec.learning_rate * 0.5 * (1 + math.cos(math.pi * epoch / spec.num_epochs))
    raise ValueError(f"training.lr_schedule must be constant or cosine, not {spec.lr_schedule!r}")


def resolve_device(name: str) -> torch.device:
    """Return the torch device for training.device (auto: CUDA when present)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("training.device is cuda but no CUDA device is available: use auto or cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"training.device must be auto, cpu or cuda, not {name!r}")
    return torch.device(name)
