"""Ingestion nodes: thin wrappers over twotower_pipeline.data.interactions."""

from __future__ import annotations

import logging
from dataclasses import replace

import pandas as pd

from twotower_pipeline.data.interactions import IngestionSpec, encode_ids, validate_interactions

logger = logging.getLogger(__name__)


def validate(raw_interactions: pd.DataFrame, ingestion: dict) -> tuple[pd.DataFrame, dict]:
    """Return the checked, de-duplicated log and the ingestion report."""
    # Where the reader's rows start in the file (set by ReadableErrorHooks), so errors name lines.
    spec = replace(
        IngestionSpec.from_params(ingestion),
        first_line=raw_interactions.attrs.get("first_line"),
    )
    clean, report = validate_interactions(raw_interactions, spec)
    logger.info(
        "read %d rows from %s: %d interactions, %d users, %d items, density %.4g (dropped %s); "
        "timestamps in %s (%s)",
        report["rows_read"],
        report["source"],
        report["interactions"],
        report["users"],
        report["items"],
        report["density"],
        report["rows_dropped"],
        report["timestamp_unit"],
        report["timestamp_unit_from"],
    )
    return clean, report


def encode(clean_interactions: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Return interactions with integer ids in (user, time) order, and the id maps."""
    return encode_ids(clean_interactions)
