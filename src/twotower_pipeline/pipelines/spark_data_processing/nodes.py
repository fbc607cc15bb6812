"""Spark data-preparation nodes: each builds its spec and calls twotower_pipeline.spark.prep.

The tables are Spark DataFrames; pyspark itself is imported in spark/ only.
"""

from __future__ import annotations

from twotower_pipeline.data.interactions import IngestionSpec
from twotower_pipeline.data.splitting import SplitSpec
from twotower_pipeline.spark import prep
from twotower_pipeline.spark.frames import DataFrame


def validate_on_spark(raw_interactions: DataFrame, ingestion: dict) -> tuple[DataFrame, dict]:
    """Return the checked, de-duplicated log (a Spark DataFrame) and the ingestion report."""
    return prep.validate_on_spark(raw_interactions, IngestionSpec.from_params(ingestion))


def encode_on_spark(clean_interactions: DataFrame) -> tuple[DataFrame, DataFrame, DataFrame]:
    """Return interactions with integer ids in (user, time, item) order, and the id maps."""
    return prep.encode_on_spark(clean_interactions)


def split_on_spark(
    interactions: DataFrame, split: dict, seed: int
) -> tuple[DataFrame, DataFrame, DataFrame, DataFrame, dict]:
    """Return train, validation and test positives, cold test rows and the split report."""
    return prep.split_on_spark(interactions, SplitSpec.from_params(split), seed)
