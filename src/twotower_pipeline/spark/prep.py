"""Data preparation on Spark, step by step: what the Spark environment's nodes call.

Each step runs one of spark/ingestion.py's or spark/split.py's functions on a
spec and logs what it found, as the pandas nodes do for theirs.
"""

from __future__ import annotations

import logging

from pyspark.sql import DataFrame

from twotower_pipeline.data.interactions import IngestionSpec
from twotower_pipeline.data.splitting import SplitSpec
from twotower_pipeline.spark.ingestion import encode_ids_spark, validate_interactions_spark
from twotower_pipeline.spark.split import split_interactions_spark

logger = logging.getLogger(__name__)


def validate_on_spark(raw_interactions: DataFrame, spec: IngestionSpec) -> tuple[DataFrame, dict]:
    """Return the checked, de-duplicated log (a Spark DataFrame) and the ingestion report."""
    clean, report = validate_interactions_spark(raw_interactions, spec)
    logger.info(
        "Spark read %d rows from %s: %d interactions, %d users, %d items (dropped %s)",
        report["rows_read"],
        report["source"],
        report["interactions"],
        report["users"],
        report["items"],
        report["rows_dropped"],
    )
    return clean, report


def encode_on_spark(clean_interactions: DataFrame) -> tuple[DataFrame, DataFrame, DataFrame]:
    """Return interactions with integer ids in (user, time, item) order, and the id maps."""
    return encode_ids_spark(clean_interactions)


def split_on_spark(
    interactions: DataFrame, spec: SplitSpec, seed: int
) -> tuple[DataFrame, DataFrame, DataFrame, DataFrame, dict]:
    """Return train, validation and test positives, cold test rows and the split report."""
    *tables, report = split_interactions_spark(interactions, spec, seed)
    logger.info(
        "Spark %s split: %d train, %d validation and %d test positives (+%d cold test rows)",
        report["strategy"],
        report["train_interactions"],
        report["val_interactions"],
        report["test_interactions"],
        report["test_cold_interactions"],
    )
    return (*tables, report)
