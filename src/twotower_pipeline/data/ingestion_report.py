"""What ingestion tells the user: the one-line error messages and the ingestion report.

The pandas path (data/interactions.py) and the Spark path (spark/ingestion.py)
find the same problems in their own way; the words they report them in, and
the report of a clean log, are written once, here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from twotower_pipeline.config.errors import PipelineInputError

# `auto` reads epoch numbers as milliseconds when their median exceeds this: epoch ms
# pass it in 1973, epoch seconds not before the year 5138.
MS_THRESHOLD = 1e11


class InvalidInteractionsError(PipelineInputError, ValueError):
    """The raw interaction log cannot be used as it is."""


def shown(value: Any) -> str:
    """Return a raw cell as a message shows it: 1.5, 'bob' (numpy scalars as plain numbers)."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def utc_minute(seconds: int) -> str:
    """Return epoch seconds as a message shows a time: 2024-01-31 12:00 (UTC)."""
    return pd.Timestamp(seconds, unit="s", tz="UTC").strftime("%Y-%m-%d %H:%M")


def iso_utc(seconds: int) -> str:
    """Return epoch seconds as a report writes a time: ISO 8601 in UTC."""
    return pd.Timestamp(int(seconds), unit="s", tz="UTC").isoformat()


def fail(source: str, message: str) -> None:
    """Raise InvalidInteractionsError for `source` (the raw file) with one line that says why."""
    raise InvalidInteractionsError(f"{source}: {message}")


def missing_columns_message(missing: list[str], columns: list) -> str:
    return (
        f"missing column(s) {', '.join(missing)}; the file has {list(map(str, columns))}. "
        "Map your columns with ingestion.columns in parameters."
    )


def nulls_message(column: str, role: str, nulls: int, rows_read: int, where: str) -> str:
    return (
        f"column {column!r} ({role}) has {nulls} null value(s) of {rows_read} rows "
        f"(first at {where})"
    )


def unparsable_message(column: str, count: int, rows_read: int, value: Any, where: str) -> str:
    return (
        f"column {column!r} (timestamp) has {count} unparsable "
        f"timestamp(s) of {rows_read} rows (first: {value!r} "
        f"at {where}); expected epoch seconds, milliseconds or ISO 8601"
    )


@dataclass(frozen=True)
class FirstOutside:
    """The first timestamp outside the window: its raw value, where it is, what it was read as."""

    value: Any
    where: str
    seconds: int
    unit: str


def outside_window_message(
    column: str, count: int, window: tuple[int | None, int | None], first: FirstOutside
) -> str:
    """Return the message for `count` timestamps outside window (earliest, latest; None: open)."""
    earliest, latest = window
    bounds = (
        f"[{'-' if earliest is None else utc_minute(earliest)}, "
        f"{'-' if latest is None else utc_minute(latest)}]"
    )
    return (
        f"column {column!r} (timestamp) has {count} timestamp(s) outside "
        f"{bounds} UTC (first: {shown(first.value)} at {first.where}, read as "
        f"{utc_minute(first.seconds)} with unit {first.unit}); fix those rows, set "
        "ingestion.timestamp_unit, or widen ingestion.timestamp_window"
    )


def mixed_ids_message(
    label: str, id_type: str, text: tuple[int, str, Any], number: tuple[int, str, Any] | None
) -> str:
    """Return the message for an id column holding text: (count, where, value) of each kind."""
    texts, text_where, text_value = text
    first_text = f"first text {shown(text_value)} at {text_where}"
    if id_type == "int":
        detail = f"{texts} id(s) that are not numbers ({first_text})"
    else:
        numbers, number_where, number_value = number
        detail = (
            f"{numbers} numeric and {texts} text id(s) (first "
            f"number {shown(number_value)} at {number_where}, {first_text})"
        )
    return f"{label} has {detail}; set ingestion.id_type: text if the ids are names"


def fractional_ids_message(label: str, count: int, value: Any, where: str) -> str:
    return (
        f"{label} has {count} fractional id(s) (first "
        f"{shown(value)} at {where}); ids must be whole numbers, "
        "or set ingestion.id_type: text"
    )


def bad_ratings_message(column: str, count: int) -> str:
    return f"column {column!r} (rating) has {count} missing or non-numeric rating(s)"


def ratings_outside_message(column: str, count: int, low: float, high: float, example) -> str:
    return (
        f"column {column!r} (rating) has {count} rating(s) outside the "
        f"declared range [{low}, {high}] (e.g. {example:g})"
    )


def bad_weights_message(column: str, count: int) -> str:
    return f"column {column!r} (weight) has {count} missing or negative weight(s)"


THRESHOLD_WITHOUT_RATING = "ingestion.rating_threshold is set but no rating column is mapped"
NO_ROWS = "the file holds no rows"


@dataclass(frozen=True)
class CleanLog:
    """What the ingestion report says of a clean log, however it was counted."""

    rows_read: int
    rows_dropped: dict[str, int]
    interactions: int
    users: int
    items: int
    timestamp_unit: str  # the unit used: s, ms or iso
    first_timestamp: int  # epoch seconds
    last_timestamp: int
    weight_total: float | None  # None: the log has no weight column


def ingestion_report(source: str, timestamp_unit_setting: str, log: CleanLog) -> dict:
    """Return the ingestion report (ingestion_report.json) of a clean log."""
    report = {
        "source": source,
        "rows_read": log.rows_read,
        "rows_dropped": log.rows_dropped,
        "interactions": log.interactions,
        "users": log.users,
        "items": log.items,
        "density": log.interactions / (log.users * log.items),
        "timestamp_unit": log.timestamp_unit,
        "timestamp_unit_from": (
            "ingestion.timestamp_unit"
            if timestamp_unit_setting != "auto"
            else "inferred from the median value (ms above 1e11)"
            if log.timestamp_unit in ("s", "ms")
            else "inferred: text timestamps"
        ),
        "time_span": [iso_utc(log.first_timestamp), iso_utc(log.last_timestamp)],
    }
    if log.weight_total is not None:
        report["weight_total"] = log.weight_total
    return report
