"""Ingestion nodes: thin wrappers over twotower_pipeline.interactions."""

from __future__ import annotations

import logging

import pandas as pd

from twotower_pipeline.interactions import IngestionSpec, encode_ids, validate_interactions

logger = logging.getLogger(__name__)


def validate(raw_interactions: pd.DataFrame, ingestion: dict) -> tuple[pd.DataFrame, dict]:
    """Return the checked, de-duplicated log and the ingestion report."""
    clean, report = validate_interactions(raw_interactions, IngestionSpec.from_params(ingestion))
    logger.info(
        "read %d rows from %s: %d interactions, %d users, %d items, density %.4g (dropped %s)",
        report["rows_read"],
        report["source"],
        report["interactions"],
        report["users"],
        report["items"],
        report["density"],
        report["rows_dropped"],
    )
    return clean, report


def encode(clean_interactions: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Return interactions with integer ids in (user, time) order, and the id maps."""
    return encode_ids(clean_interactions)
