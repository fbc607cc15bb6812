"""The training loop: BCE-with-logits on positives and freshly drawn negatives.

Examples are kept as groups: one positive and its neg_ratio negatives, so a
step takes B users and a (B, 1 + neg_ratio) block of items and computes each
user vector once. Batches are slices of a shuffled permutation of the groups
(no per-sample Dataset). Every random choice of epoch e (negatives, order) is
seeded by (seed, e), so a run resumed from the checkpoint of epoch e ends with
the same weights as a run that was never interrupted.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F
from tqdm import tqdm

from twotower_pipeline.errors import PipelineInputError
from twotower_pipeline.metrics import binary_log_loss, ranking_metrics, roc_auc
from twotower_pipeline.model import TwoTowerModel
from twotower_pipeline.sampling import PositiveSet, item_groups

logger = logging.getLogger(__name__)

HISTORY_COLUMNS = [
    "epoch",
    "train_loss",
    "val_loss",
    "val_auc",
    "recall@{k}",
    "ndcg@{k}",
    "logit_scale",
    "learning_rate",
    "examples_per_second",
    "seconds",
]


class TrainingDivergedError(PipelineInputError, RuntimeError):
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
    resample_each_epoch: bool
    eval_k: int
    checkpoint_dir: str
    resume: bool
    progress_bar: bool


@dataclass
class ExampleGroups:
    """One epoch's examples: users (P,) and items (P, 1 + neg_ratio), the positive first."""

    users: torch.Tensor
    items: torch.Tensor

    @property
    def n_examples(self) -> int:
        return self.items.numel()


@dataclass
class ValidationSample:
    """Validation positives plus neg_ratio sampled negatives each, drawn once."""

    users: torch.Tensor
    items: torch.Tensor
    labels: torch.Tensor


def groups_from_examples(examples: pd.DataFrame, neg_ratio: int) -> ExampleGroups:
    """Return the persisted examples (positive-then-negatives rows) as groups.

    Raises ValueError when the rows are not in that layout, e.g. when they were
    made with another neg_ratio.
    """
    group = 1 + neg_ratio
    users = examples["user"].to_numpy(np.int64)
    labels = examples["label"].to_numpy()
    if users.size % group:
        raise ValueError(
            f"train_examples has {users.size} rows, not a multiple of 1 + neg_ratio = {group}; "
            "it was made with another neg_ratio: re-run the negative_sampling pipeline"
        )
    users = users.reshape(-1, group)
    labels = labels.reshape(-1, group)
    if not (
        (labels[:, 0] == 1).all() and (labels[:, 1:] == 0).all() and (users == users[:, :1]).all()
    ):
        raise ValueError(
            f"train_examples is not laid out as one positive followed by its {neg_ratio} "
            "negatives for the same user: re-run the negative_sampling pipeline"
        )
    items = examples["item"].to_numpy(np.int64).reshape(-1, group)
    return ExampleGroups(torch.from_numpy(users[:, 0].copy()), torch.from_numpy(items.copy()))


def draw_groups(
    train: pd.DataFrame,
    positives: PositiveSet,
    neg_ratio: int,
    rng: np.random.Generator,
    probabilities: np.ndarray | None,
) -> ExampleGroups:
    """Return every training positive with freshly drawn negatives, as arrays.

    The same draw as sampling.build_training_examples with the same rng.
    """
    users = train["user"].to_numpy(np.int64)
    items = item_groups(users, train["item"].to_numpy(), positives, neg_ratio, rng, probabilities)
    return ExampleGroups(torch.from_numpy(users), torch.from_numpy(items))


def validation_sample(
    train: pd.DataFrame, val: pd.DataFrame, n_items: int, neg_ratio: int, seed: int
) -> ValidationSample:
    """Return the fixed sample on which validation loss and AUC are computed.

    Its negatives exclude the user's training and validation positives, so the
    validation loss is on two classes, comparable with the training loss.
    """
    known = PositiveSet(
        np.concatenate([train["user"].to_numpy(), val["user"].to_numpy()]),
        np.concatenate([train["item"].to_numpy(), val["item"].to_numpy()]),
        n_items,
    )
    users = val["user"].to_numpy(np.int64)
    rng = np.random.default_rng([seed, 1_000_003])
    items = item_groups(users, val["item"].to_numpy(), known, neg_ratio, rng)
    group = 1 + neg_ratio
    labels = np.zeros((users.size, group), dtype=np.float32)
    labels[:, 0] = 1
    return ValidationSample(
        users=torch.from_numpy(np.repeat(users, group)),
        items=torch.from_numpy(items.ravel()),
        labels=torch.from_numpy(labels.ravel()),
    )


def learning_rate_at(spec: TrainingSpec, epoch: int) -> float:
    """Return the learning rate of 0-based epoch `epoch` (constant within an epoch)."""
    if spec.lr_schedule == "constant":
        return spec.learning_rate
    if spec.lr_schedule == "cosine":
        return spec.learning_rate * 0.5 * (1 + math.cos(math.pi * epoch / spec.num_epochs))
    raise ValueError(f"training.lr_schedule must be constant or cosine, not {spec.lr_schedule!r}")


def make_optimizer(model: TwoTowerModel, spec: TrainingSpec) -> torch.optim.Optimizer:
    """Return AdamW: the towers with weight decay; the logit scale undecayed, at its own rate."""
    towers = [p for name, p in model.named_parameters() if name != "log_scale"]
    return torch.optim.AdamW(
        [
            {"params": towers, "weight_decay": spec.weight_decay, "lr_ratio": 1.0},
            {"params": [model.log_scale], "weight_decay": 0.0, "lr_ratio": spec.scale_lr_ratio},
        ],
        lr=spec.learning_rate,
    )


def _show_progress(spec: TrainingSpec) -> bool:
    return spec.progress_bar and sys.stderr.isatty() and not os.environ.get("CI")


def checkpoint_path(spec: TrainingSpec) -> Path:
    return Path(spec.checkpoint_dir) / "last.pt"


def _save_checkpoint(spec: TrainingSpec, state: dict) -> None:
    path = checkpoint_path(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a kill mid-write leaves the previous checkpoint whole


def _resumable_settings(spec: TrainingSpec) -> dict:
    """Return the settings a resumed run must share with the run it continues."""
    skip = {"resume", "progress_bar", "checkpoint_dir"}
    return {key: value for key, value in vars(spec).items() if key not in skip}


def _load_checkpoint(spec: TrainingSpec, model: TwoTowerModel, optimizer) -> list[dict]:
    """Restore model and optimizer from the last checkpoint; return the history so far."""
    path = checkpoint_path(spec)
    if not path.exists():
        logger.warning("training.resume is set but %s does not exist: starting from epoch 1", path)
        return []
    state = torch.load(path, weights_only=True)
    if state["model_config"] != model.config.to_dict() or state["seed"] != spec.seed:
        raise ValueError(
            f"{path} was written for another model or seed ({state['model_config']}, seed "
            f"{state['seed']}); delete it or set training.resume=false"
        )
    changed = {
        key: (value, _resumable_settings(spec).get(key))
        for key, value in state["training"].items()
        if _resumable_settings(spec).get(key) != value
    }
    if changed:
        # Resuming under other settings would mix two runs in one model.
        raise ValueError(
            f"{path} was written with other training settings "
            f"({', '.join(f'{k}: {a} -> now {b}' for k, (a, b) in changed.items())}); "
            "resume with the same parameters, or set training.resume=false"
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    logger.info("resuming from %s after epoch %d", path, len(state["history"]))
    return list(state["history"])


@torch.no_grad()
def evaluate_epoch(
    model: TwoTowerModel,
    train: pd.DataFrame,
    val: pd.DataFrame,
    sample: ValidationSample,
    k: int,
    seed: int,
) -> dict[str, float]:
    """Return validation loss/AUC on the fixed sample and Recall/NDCG@k on the full catalogue."""
    model.eval()
    logits = model(sample.users, sample.items).numpy()
    labels = sample.labels.numpy()
    ranking = ranking_metrics(
        model.catalogue_scorer(),
        train,
        val,
        model.config.n_users,
        model.config.n_items,
        [k],
        seed=seed,
    )
    model.train()
    return {
        "val_loss": binary_log_loss(logits, labels),
        "val_auc": roc_auc(logits, labels),
        f"recall@{k}": ranking[f"recall@{k}"],
        f"ndcg@{k}": ranking[f"ndcg@{k}"],
    }


def train_epoch(
    model: TwoTowerModel,
    optimizer: torch.optim.Optimizer,
    groups: ExampleGroups,
    batch_size: int,
    generator: torch.Generator,
    description: str = "",
    progress: bool = False,
) -> float:
    """Run one pass over the groups in a seeded random order; return the mean loss per example.

    Raises TrainingDivergedError at the first step whose loss is NaN or infinite,
    before that step changes any weight.
    """
    n_groups = groups.users.numel()
    order = torch.randperm(n_groups, generator=generator)
    labels = torch.zeros(min(batch_size, n_groups), groups.items.shape[1])
    labels[:, 0] = 1.0
    total = torch.zeros((), dtype=torch.float64)
    steps = range(0, n_groups, batch_size)
    for start in tqdm(steps, desc=description, leave=False, disable=not progress):
        batch = order[start : start + batch_size]
        logits = model(groups.users[batch], groups.items[batch])
        loss = F.binary_cross_entropy_with_logits(logits, labels[: batch.numel()])
        if not torch.isfinite(loss):
            raise TrainingDivergedError(
                f"loss is {loss.item()} at the step starting at group {start}"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.clamp_scale()
        total += loss.detach() * logits.numel()
    return float(total) / groups.n_examples


def fit(
    model: TwoTowerModel,
    train: pd.DataFrame,
    val: pd.DataFrame,
    first_examples: pd.DataFrame,
    spec: TrainingSpec,
    probabilities: np.ndarray | None = None,
) -> pd.DataFrame:
    """Train the model in place; return one history row per epoch (columns HISTORY_COLUMNS)."""
    n_items = model.config.n_items
    optimizer = make_optimizer(model, spec)
    if spec.resume:
        history = _load_checkpoint(spec, model, optimizer)
    else:
        history = []
        checkpoint_path(spec).unlink(missing_ok=True)  # never resume into another run's state
    sample = validation_sample(train, val, n_items, spec.neg_ratio, spec.seed)
    positives = PositiveSet(train["user"].to_numpy(), train["item"].to_numpy(), n_items)
    first_groups = groups_from_examples(first_examples, spec.neg_ratio)
    k = spec.eval_k

    for epoch in range(len(history), spec.num_epochs):
        started = time.perf_counter()
        lr = learning_rate_at(spec, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_ratio"]
        if epoch == 0 or not spec.resample_each_epoch:
            groups = first_groups
        else:
            rng = np.random.default_rng([spec.seed, epoch])
            groups = draw_groups(train, positives, spec.neg_ratio, rng, probabilities)
        step_started = time.perf_counter()
        try:
            train_loss = train_epoch(
                model,
                optimizer,
                groups,
                spec.batch_size,
                torch.Generator().manual_seed(spec.seed * 100_003 + epoch),
                f"epoch {epoch + 1}/{spec.num_epochs}",
                _show_progress(spec),
            )
        except TrainingDivergedError as error:
            where = checkpoint_path(spec)
            kept = (
                f"the last good checkpoint (epoch {len(history)}) is kept at {where}"
                if history
                else "no epoch finished, so there is no checkpoint"
            )
            raise TrainingDivergedError(
                f"training diverged in epoch {epoch + 1}: {error}; {kept}. "
                "Lower training.learning_rate or model.max_logit_scale."
            ) from error
        step_seconds = time.perf_counter() - step_started

        row = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            **evaluate_epoch(model, train, val, sample, k, spec.seed),
            "logit_scale": model.logit_scale,
            "learning_rate": lr,
            "examples_per_second": groups.n_examples / step_seconds,
            "seconds": time.perf_counter() - started,
        }
        history.append(row)
        logger.info(
            "epoch %2d/%d  train_loss %.4f  val_loss %.4f  val_auc %.3f  recall@%d %.4f  "
            "ndcg@%d %.4f  scale %.2f  lr %.2g  %.2fM ex/s",
            row["epoch"],
            spec.num_epochs,
            row["train_loss"],
            row["val_loss"],
            row["val_auc"],
            k,
            row[f"recall@{k}"],
            k,
            row[f"ndcg@{k}"],
            row["logit_scale"],
            lr,
            row["examples_per_second"] / 1e6,
        )
        _save_checkpoint(
            spec,
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "model_config": model.config.to_dict(),
                "seed": spec.seed,
                "training": _resumable_settings(spec),
                "history": history,
            },
        )
    return pd.DataFrame(history, columns=[c.format(k=k) for c in HISTORY_COLUMNS])
