"""Training node: builds the model from parameters and runs twotower_pipeline.training."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch

from twotower_pipeline.model import TwoTowerConfig, TwoTowerModel
from twotower_pipeline.sampling import item_distribution
from twotower_pipeline.training import TrainingSpec, fit

logger = logging.getLogger(__name__)


def train_two_tower(
    train_examples: pd.DataFrame,
    train_interactions: pd.DataFrame,
    val_interactions: pd.DataFrame,
    user_index: pd.DataFrame,
    item_index: pd.DataFrame,
    seed: int,
    neg_ratio: int,
    logit_scale: float,
    num_epochs: int,
    model: dict,
    training: dict,
    negative_sampling: dict,
    headline_k: int,
) -> tuple[TwoTowerModel, dict, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Return the trained model, its config, the per-epoch history and both embedding tables.

    Recall/NDCG are tracked per epoch at evaluation.headline_k, the K the health
    report and the ranking curve read.
    """
    torch.manual_seed(seed)
    config = TwoTowerConfig(
        n_users=len(user_index),
        n_items=len(item_index),
        logit_scale=logit_scale,
        **model,
    )
    two_tower = TwoTowerModel(config)
    spec = TrainingSpec(
        seed=seed, num_epochs=num_epochs, neg_ratio=neg_ratio, eval_k=headline_k, **training
    )
    probabilities = item_distribution(
        train_interactions["item"].to_numpy(),
        config.n_items,
        negative_sampling["distribution"],
        negative_sampling["popularity_alpha"],
    )
    with torch.random.fork_rng():
        history = fit(
            two_tower, train_interactions, val_interactions, train_examples, spec, probabilities
        )
    two_tower.eval()
    with torch.no_grad():
        user_vectors = two_tower.user_tower.all().numpy()
        item_vectors = two_tower.item_tower.all().numpy()
    return (
        two_tower,
        config.to_dict(),
        history,
        _embedding_table(user_index, "user_id", user_vectors),
        _embedding_table(item_index, "item_id", item_vectors),
    )


def _embedding_table(index: pd.DataFrame, id_column: str, vectors: np.ndarray) -> pd.DataFrame:
    """Return one row per original id with its L2-normalised embedding as a list column."""
    return pd.DataFrame({id_column: index[id_column].to_numpy(), "embedding": list(vectors)})
