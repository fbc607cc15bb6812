"""Negative sampling node: a thin wrapper over twotower_pipeline.data.sampling."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from twotower_pipeline.data.sampling import build_training_examples, item_distribution

logger = logging.getLogger(__name__)


def sample_training_examples(
    train_interactions: pd.DataFrame,
    item_index: pd.DataFrame,
    neg_ratio: int,
    seed: int,
    negative_sampling: dict,
) -> pd.DataFrame:
    """Return epoch 0's training examples: each positive followed by neg_ratio negatives.

    Popularity for the weighted sampler is counted on the training split only.
    """
    n_items = len(item_index)
    probabilities = item_distribution(
        train_interactions["item"].to_numpy(),
        n_items,
        negative_sampling["distribution"],
        negative_sampling["popularity_alpha"],
    )
    rng = np.random.default_rng([seed, 0])
    examples = build_training_examples(train_interactions, n_items, neg_ratio, rng, probabilities)
    logger.info(
        "%d training examples: %d positives x (1 + %d negatives, %s)",
        len(examples),
        len(train_interactions),
        neg_ratio,
        negative_sampling["distribution"],
    )
    return examples
