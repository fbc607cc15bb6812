"""Retrieval-index nodes: build the item index, and measure it against exact search."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from twotower_pipeline.evaluation import index as ann

logger = logging.getLogger(__name__)


def build_item_index(item_embeddings: pd.DataFrame, index: dict, seed: int) -> ann.ItemIndex:
    """Return the approximate-nearest-neighbour index over the item vectors (rows = item index)."""
    item_index = ann.build_index(
        ann.vectors_of(item_embeddings), ann.IndexConfig.from_params(index, seed)
    )
    if item_index.index is None:
        logger.warning(item_index.skipped)
    return item_index


def evaluate_item_index(
    item_ann_index: ann.ItemIndex,
    item_embeddings: pd.DataFrame,
    user_embeddings: pd.DataFrame,
    test_interactions: pd.DataFrame,
    index: dict,
) -> dict:
    """Return the index's recall@recall_k against exact search, queried by the test users.

    The query vectors are the persisted user embeddings (rows = user index), the
    ones a service would send; recall is the share of the exact top-k the index
    returns, a property of the index alone, not of the model's quality.
    """
    users = np.unique(test_interactions["user"].to_numpy(np.int64))
    metrics = ann.index_recall(
        item_ann_index,
        ann.vectors_of(item_embeddings),
        ann.vectors_of(user_embeddings)[users],
        int(index["recall_k"]),
    )
    if "skipped" not in metrics:
        logger.info(
            "retrieval index (%s): recall@%d %.4f against exact search over %d test users",
            metrics["kind"],
            index["recall_k"],
            metrics[f"recall@{index['recall_k']}"],
            metrics["queries"],
        )
    return metrics
