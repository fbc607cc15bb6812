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


@torch.no_grad()
def sample_logits(
    model: TwoTowerModel, sample: ValidationSample, known: pd.DataFrame, held_out: pd.DataFrame
) -> np.ndarray:
    """Return the model's logits (V, 1 + neg_ratio) on a validation sample of `held_out` rows.

    Each user's history is its `known` interactions before the held-out row's moment.
    """
    device = model.item_id.device
    window = None
    if model.config.history_length > 0:
        histories = HistoryTable.from_interactions(known, model.config.n_users).to(device)
        moments = held_out["timestamp"].to_numpy(np.int64)
        ends = histories.ends_before(held_out["user"].to_numpy(np.int64), moments).to(device)
        window = histories.window(sample.users.to(device), ends, model.config.history_length)
    return model(sample.users.to(device), sample.items.to(device), window).cpu().numpy()


@torch.no_grad()
def evaluate_epoch(
    model: TwoTowerModel,
    train: pd.DataFrame,
    val: pd.DataFrame,
    sample: ValidationSample,
    k: int,
    seed: int,
    chunk_size: int,
    max_users: int | None = None,
) -> dict[str, float]:
    """Return validation loss/AUC on the fixed sample and Recall/NDCG@k on the full catalogue."""
    model.eval()
    logits = sample_logits(model, sample, train, val)
    labels = sample.labels.numpy()
    ranking = validation_ranking(model, train, val, k, seed, chunk_size, max_users)
    model.train()
    return {
        "val_loss": binary_log_loss(logits.ravel(), labels.ravel()),
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
