"""Split node: a thin wrapper over twotower_pipeline.splitting."""

from __future__ import annotations

import logging

import pandas as pd

from twotower_pipeline.splitting import SplitSpec, split_interactions

logger = logging.getLogger(__name__)


def split(interactions: pd.DataFrame, split: dict) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Return train interactions, validation positives and the split report."""
    train, val, report = split_interactions(interactions, SplitSpec.from_params(split))
    logger.info(
        "%s split: %d train, %d validation positives for %d users "
        "(dropped: %d with an item unseen in train, %d with a user unseen in train)",
        report["strategy"],
        report["train_interactions"],
        report["val_interactions"],
        report["val_users"],
        report["val_dropped_cold_items"],
        report["val_dropped_cold_users"],
    )
    return train, val, report
