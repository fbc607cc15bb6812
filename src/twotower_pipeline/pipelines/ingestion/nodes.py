"""Ingestion nodes: thin wrappers over twotower_pipeline.interactions."""

from __future__ import annotations

import logging

import pandas as pd

from twotower_pipeline.interactions import IngestionSpec, encode_ids, validate_interactions

logger = logging.getLogger(__name__)


def validate(raw_interactions: pd.DataFrame, ingestion: dict) -> tuple[pd.DataFrame, dict]:
    """Return the checked, de-duplicated log and the ingestion report."""
    clean, report = validate_interactions(raw_interactions, IngestionSpec.from_params(ingestion))
    span = clean["timestamp"]
    report["time_span"] = [
        pd.Timestamp(int(span.min()), unit="s").isoformat(),
        pd.Timestamp(int(span.max()), unit="s").isoformat(),
    ]
    report["density"] = report["interactions"] / (report["users"] * report["items"])
    logger.info(
        "read %d rows from %s: %d interactions, %d users, %d items (dropped %s)",
        report["rows_read"], report["source"], report["interactions"], report["users"],
        report["items"], report["rows_dropped"],
    )
    return clean, report


def encode(clean_interactions: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Return interactions with integer ids, and the user and item id maps."""
    return encode_ids(clean_interactions)
