"""Split node: a thin wrapper over twotower_pipeline.data.splitting."""

from __future__ import annotations

import logging

import pandas as pd

from twotower_pipeline.data.splitting import SplitSpec, split_interactions

logger = logging.getLogger(__name__)


def split(
    interactions: pd.DataFrame, split: dict, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """Return train interactions, validation and test positives, cold test rows, the report."""
    result = split_interactions(interactions, SplitSpec.from_params(split), seed)
    report = result.report
    logger.info(
        "%s split: %d train, %d validation and %d test positives (+%d test rows with a cold "
        "item); dropped for a user unseen in train: %d validation, %d test; dropped for an "
        "item unseen in train: %d validation",
        report["strategy"],
        report["train_interactions"],
        report["val_interactions"],
        report["test_interactions"],
        report["test_cold_interactions"],
        report["val_dropped_cold_users"],
        report["test_dropped_cold_users"],
        report["val_dropped_cold_items"],
    )
    return result.train, result.val, result.test, result.test_cold, report
