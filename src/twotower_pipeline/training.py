"""The training loop: BCE-with-logits on positives and freshly drawn negatives.

Batches are slices of a shuffled permutation of flat (user, item, label)
tensors, with no per-sample Dataset. Every random choice of epoch e is seeded by
(seed, e), so a run resumed from the checkpoint of epoch e ends with the same
weights as a run that was never interrupted.
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
from tqdm.auto import tqdm

from twotower_pipeline.metrics import binary_log_loss, ranking_metrics, roc_auc
from twotower_pipeline.model import TwoTowerModel
from twotower_pipeline.sampling import PositiveSet, build_training_examples, sample_negatives

logger = logging.getLogger(__name__)


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class TrainingSpec:
    """The knobs of one training run (values come from parameters; no defaults here)."""

    seed: int
    num_epochs: int
    neg_ratio: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    lr_schedule: str
    resample_each_epoch: bool
    eval_k: int
    checkpoint_dir: str
    resume: bool
    progress_bar: bool


@dataclass
class ValidationSample:
    """Validation positives plus neg_ratio sampled negatives each, drawn once."""

    users: torch.Tensor
    items: torch.Tensor
    labels: torch.Tensor


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
    negatives = sample_negatives(users, known, neg_ratio, rng)
    group = 1 + neg_ratio
    labels = np.zeros((users.size, group), dtype=np.float32)
    labels[:, 0] = 1
    return ValidationSample(
        users=torch.from_numpy(np.repeat(users, group)),
        items=torch.from_numpy(np.column_stack([val["item"].to_numpy(np.int64), negatives]).ravel()),
        labels=torch.from_numpy(labels.ravel()),
    )


def _learning_rate(spec: TrainingSpec, epoch: int) -> float:
    if spec.lr_schedule == "constant":
        return spec.learning_rate
    if spec.lr_schedule == "cosine":
        return spec.learning_rate * 0.5 * (1 + math.cos(math.pi * epoch / spec.num_epochs))
    raise ValueError(f"training.lr_schedule must be constant or cosine, not {spec.lr_schedule!r}")


def _show_progress(spec: TrainingSpec) -> bool:
    return spec.progress_bar and sys.stderr.isatty() and not os.environ.get("CI")


def _checkpoint_path(spec: TrainingSpec) -> Path:
    return Path(spec.checkpoint_dir) / "last.pt"


def _save_checkpoint(spec: TrainingSpec, state: dict) -> None:
    path = _checkpoint_path(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_checkpoint(spec: TrainingSpec, model: TwoTowerModel, optimizer) -> list[dict]:
    """Restore model and optimizer from the last checkpoint; return the history so far."""
    path = _checkpoint_path(spec)
    if not path.exists():
        logger.warning("training.resume is set but %s does not exist: starting from epoch 1", path)
        return []
    state = torch.load(path, weights_only=True)
    if state["model_config"] != model.config.to_dict() or state["seed"] != spec.seed:
        raise ValueError(
            f"{path} was written for another model or seed ({state['model_config']}, seed "
            f"{state['seed']}); delete it or set training.resume=false"
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    logger.info("resuming from %s after epoch %d", path, len(state["history"]))
    return list(state["history"])


def _epoch_examples(
    epoch: int,
    first_examples: pd.DataFrame,
    train: pd.DataFrame,
    n_items: int,
    spec: TrainingSpec,
    probabilities: np.ndarray | None,
) -> pd.DataFrame:
    if epoch == 0 or not spec.resample_each_epoch:
        return first_examples
    rng = np.random.default_rng([spec.seed, epoch])
    return build_training_examples(train, n_items, spec.neg_ratio, rng, probabilities)


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
        lambda users: model.score_all_items(torch.from_numpy(users)),
        train, val, model.config.n_users, model.config.n_items, [k], seed=seed,
    )
    model.train()
    return {
        "val_loss": binary_log_loss(logits, labels),
        "val_auc": roc_auc(logits, labels),
        f"recall@{k}": ranking[f"recall@{k}"],
        f"ndcg@{k}": ranking[f"ndcg@{k}"],
    }


def fit(
    model: TwoTowerModel,
    train: pd.DataFrame,
    val: pd.DataFrame,
    first_examples: pd.DataFrame,
    spec: TrainingSpec,
    probabilities: np.ndarray | None = None,
) -> pd.DataFrame:
    """Train the model in place; return one history row per epoch."""
    n_items = model.config.n_items
    optimizer = torch.optim.Adam(
        model.parameters(), lr=spec.learning_rate, weight_decay=spec.weight_decay
    )
    history = _load_checkpoint(spec, model, optimizer) if spec.resume else []
    sample = validation_sample(train, val, n_items, spec.neg_ratio, spec.seed)

    for epoch in range(len(history), spec.num_epochs):
        started = time.perf_counter()
        lr = _learning_rate(spec, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        examples = _epoch_examples(epoch, first_examples, train, n_items, spec, probabilities)
        users = torch.from_numpy(examples["user"].to_numpy(np.int64))
        items = torch.from_numpy(examples["item"].to_numpy(np.int64))
        labels = torch.from_numpy(examples["label"].to_numpy(np.float32))
        order = torch.randperm(users.numel(), generator=torch.Generator().manual_seed(
            spec.seed * 100_003 + epoch))

        total_loss, total_seen = 0.0, 0
        steps = range(0, users.numel(), spec.batch_size)
        for start in tqdm(steps, desc=f"epoch {epoch + 1}/{spec.num_epochs}", leave=False,
                          disable=not _show_progress(spec)):
            batch = order[start : start + spec.batch_size]
            logits = model(users[batch], items[batch])
            loss = F.binary_cross_entropy_with_logits(logits, labels[batch])
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"epoch {epoch + 1}, example {start}: loss is {loss.item()}; "
                    f"the last good checkpoint (epoch {len(history)}) is kept at "
                    f"{_checkpoint_path(spec)}. Lower training.learning_rate."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            model.clamp_scale()
            total_loss += loss.item() * batch.numel()
            total_seen += batch.numel()
        train_seconds = time.perf_counter() - started

        row = {
            "epoch": epoch + 1,
            "train_loss": total_loss / total_seen,
            **evaluate_epoch(model, train, val, sample, spec.eval_k, spec.seed),
            "logit_scale": model.logit_scale,
            "learning_rate": lr,
            "examples_per_second": total_seen / train_seconds,
            "seconds": time.perf_counter() - started,
        }
        history.append(row)
        logger.info(
            "epoch %2d/%d  train_loss %.4f  val_loss %.4f  val_auc %.3f  recall@%d %.4f  "
            "ndcg@%d %.4f  scale %.2f  %.2fM ex/s",
            row["epoch"], spec.num_epochs, row["train_loss"], row["val_loss"], row["val_auc"],
            spec.eval_k, row[f"recall@{spec.eval_k}"], spec.eval_k, row[f"ndcg@{spec.eval_k}"],
            row["logit_scale"], row["examples_per_second"] / 1e6,
        )
        _save_checkpoint(spec, {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "model_config": model.config.to_dict(),
            "seed": spec.seed,
            "history": history,
        })
    return pd.DataFrame(history)
