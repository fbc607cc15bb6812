"""A model on validation: loss and AUC on a fixed sample, Recall and NDCG@k on the catalogue."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from twotower_pipeline.data.user_histories import HistoryTable
from twotower_pipeline.model.ensemble import TowerEnsemble
from twotower_pipeline.model.towers import TwoTowerModel
from twotower_pipeline.ranking.metrics import ranking_metrics
from twotower_pipeline.ranking.pointwise import binary_log_loss, roc_auc
from twotower_pipeline.ranking.protocol import sample_users
from twotower_pipeline.training.examples import ValidationSample
from twotower_pipeline.training.spec import TrainingSpec
from twotower_pipeline.training.tasks import BatchScores, BceTask, SoftmaxTask


def _sample_window(
    model: TwoTowerModel, sample: ValidationSample, known: pd.DataFrame, held_out: pd.DataFrame
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Return each sample row's history window: its `known` items before the held-out moment."""
    if model.config.history_length == 0:
        return None
    device = model.item_id.device
    histories = HistoryTable.from_interactions(known, model.config.n_users).to(device)
    moments = held_out["timestamp"].to_numpy(np.int64)
    ends = histories.ends_before(held_out["user"].to_numpy(np.int64), moments).to(device)
    return histories.window(sample.users.to(device), ends, model.config.history_length)


@torch.no_grad()
def sample_logits(
    model: TwoTowerModel, sample: ValidationSample, known: pd.DataFrame, held_out: pd.DataFrame
) -> np.ndarray:
    """Return the model's logits (V, 1 + neg_ratio) on a validation sample of `held_out` rows.

    Each user's history is its `known` interactions before the held-out row's moment.
    """
    device = model.item_id.device
    window = _sample_window(model, sample, known, held_out)
    return model(sample.users.to(device), sample.items.to(device), window).cpu().numpy()


@torch.no_grad()
def sample_task_loss(
    model: TwoTowerModel,
    sample: ValidationSample,
    known: pd.DataFrame,
    held_out: pd.DataFrame,
    task: SoftmaxTask,
) -> float:
    """Return the train task's loss on the validation sample, in batches as training forms them.

    Rows go in their fixed order, task.batch_size at a time, each batch's other
    positives its shared negatives: the same loss as the train loss, on held-out rows.
    """
    device = model.item_id.device
    window = _sample_window(model, sample, known, held_out)
    users, items = sample.users.to(device), sample.items.to(device)
    total, terms = 0.0, 0
    for start in range(0, users.numel(), task.batch_size):
        part = slice(start, start + task.batch_size)
        part_window = None if window is None else (window[0][part], window[1][part])
        logits, in_batch = model.group_scores(*model.towers(users[part], items[part], part_window))
        loss, count = task.loss(BatchScores(users[part], items[part], logits, in_batch))
        total, terms = total + float(loss) * count, terms + count
    return total / max(terms, 1)


@torch.no_grad()
def evaluate_epoch(
    model: TwoTowerModel,
    train: pd.DataFrame,
    val: pd.DataFrame,
    sample: ValidationSample,
    spec: TrainingSpec,
    task: BceTask | SoftmaxTask | None = None,
) -> dict[str, float]:
    """Return validation loss/AUC on the fixed sample and Recall/NDCG@k on the full catalogue.

    The loss is the train task's (BCE when None), so it reads against the train loss.
    """
    k = spec.eval_k
    model.eval()
    logits = sample_logits(model, sample, train, val)
    labels = sample.labels.numpy()
    if task is None or task.name == "bce":
        loss = binary_log_loss(logits.ravel(), labels.ravel())
    else:
        loss = sample_task_loss(model, sample, train, val, task)
    ranking = validation_ranking(
        model, train, val, k, spec.seed, spec.eval_chunk_size, spec.eval_max_users
    )
    model.train()
    return {
        "val_loss": loss,
        "val_auc": roc_auc(logits.ravel(), labels.ravel()),
        f"recall@{k}": ranking[f"recall@{k}"],
        f"ndcg@{k}": ranking[f"ndcg@{k}"],
    }


def validation_ranking(
    model: TwoTowerModel | TowerEnsemble,
    train: pd.DataFrame,
    val: pd.DataFrame,
    k: int,
    seed: int,
    chunk_size: int,
    max_users: int | None = None,
) -> dict[str, float]:
    """Return Recall@k and NDCG@k on the full catalogue (training items masked).

    With max_users, a seeded sample of the validation users is ranked: the same
    users for every model given the same seed.
    """
    ranked = sample_users(val, max_users, seed)
    return ranking_metrics(
        model.catalogue_scorer(train, ranked),
        train,
        ranked,
        model.config.n_users,
        model.config.n_items,
        [k],
        chunk_size,
        seed,
    )
