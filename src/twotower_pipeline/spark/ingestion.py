"""Ingestion on PySpark: the rules, messages and report of data/interactions.py, on Spark.

tests/test_spark_parity.py checks that both paths write the same rows, the
same report and the same error messages. No Kedro here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import IntegralType, NumericType, StringType

from twotower_pipeline.data import ingestion_report as said
from twotower_pipeline.data.ingestion_report import MS_THRESHOLD, CleanLog, FirstOutside, fail
from twotower_pipeline.data.interactions import IngestionSpec
from twotower_pipeline.spark.frames import (
    ORDER,
    count_if,
    finite,
    first_row,
    kth_smallest,
    sorted_index,
)


@dataclass(frozen=True)
class _Timestamps:
    """How the timestamp column was read, for its checks."""

    column: str
    seconds: Column  # epoch seconds
    unparsed: Column  # flag
    unit: str
    rows_read: int
    window_checked: bool


def _as_number(raw: DataFrame, column: str) -> Column:
    values = F.col(column)
    if isinstance(raw.schema[column].dataType, NumericType):
        return values.cast("double")
    return values.try_cast("double")


def _timestamp_facts(raw: DataFrame, column: str) -> list[Column]:
    """Return the aggregates that decide the timestamp unit (asked in the first pass)."""
    as_number = _as_number(raw, column)
    finite_number = F.when(finite(as_number), as_number)
    return [
        F.avg(as_number.isNotNull().cast("double")).alias("_ts_share"),
        F.count(finite_number).alias("_ts_count"),
        F.min(finite_number).alias("_ts_min"),
        F.max(finite_number).alias("_ts_max"),
    ]


def _timestamp_seconds(
    raw: DataFrame, column: str, unit: str, facts: Any
) -> tuple[Column, Column, str]:
    """Return (epoch seconds, unparsable flag, unit used), decided as parse_timestamps does.

    `facts` is the row that holds _timestamp_facts's aggregates.
    """
    values = F.col(column)
    numeric_type = isinstance(raw.schema[column].dataType, NumericType)
    as_number = _as_number(raw, column)
    if unit == "auto":
        # A text column of numbers with a few bad cells is still a numeric column.
        unit = "s_or_ms" if numeric_type or facts["_ts_share"] >= 0.5 else "iso"
    if unit == "iso":
        parsed = values.cast("string").try_cast("timestamp")  # naive times: session zone, UTC
        seconds = F.coalesce(F.unix_seconds(parsed), F.lit(0)).cast("long")
        return seconds, parsed.isNull(), "iso"
    bad = ~finite(as_number)
    if unit == "s_or_ms":
        count = int(facts["_ts_count"])
        if count == 0 or facts["_ts_max"] <= MS_THRESHOLD:
            unit = "s"
        elif facts["_ts_min"] > MS_THRESHOLD:
            unit = "ms"
        else:  # the median decides; it needs the exact middle values
            numbers = raw.filter(~bad).select(as_number.alias("_t"))
            low, high = kth_smallest(numbers, "_t", [(count - 1) // 2, count // 2], count)
            unit = "ms" if (low + high) / 2 > MS_THRESHOLD else "s"
    scaled = as_number / 1000.0 if unit == "ms" else as_number
    return F.when(bad, F.lit(0)).otherwise(F.floor(scaled)).cast("long"), bad, unit


def _typed_ids(raw: DataFrame, column: str, role: str, spec: IngestionSpec) -> Column:
    """Return one id column as integers or as text, as interactions.typed_ids decides."""
    values = F.col(column)
    data_type = raw.schema[column].dataType
    label = f"column {column!r} ({role})"
    if spec.id_type == "text":
        return values.cast("string")
    if isinstance(data_type, IntegralType):
        return values
    as_number = _as_number(raw, column)
    is_number = finite(as_number)
    text_stored = isinstance(data_type, StringType)
    counts = raw.agg(
        count_if(is_number).alias("numbers"),
        count_if(is_number & (as_number != F.floor(as_number))).alias("fractional"),
        F.count(F.lit(1)).alias("rows"),
    ).first()
    numbers, rows = int(counts["numbers"] or 0), int(counts["rows"])
    if spec.id_type == "auto" and text_stored and numbers in (0, rows):
        return values  # text in the file: kept as text
    if numbers < rows:
        first, row = first_row(raw, ~is_number)
        text = (rows - numbers, spec.where(first), row[column])
        number = None
        if spec.id_type != "int":
            position, number_row = first_row(raw, is_number)
            number = (numbers, spec.where(position), number_row[column])
        fail(spec.source, said.mixed_ids_message(label, spec.id_type, text, number))
    if int(counts["fractional"] or 0):
        first, row = first_row(raw, as_number != F.floor(as_number))
        message = said.fractional_ids_message(
            label, int(counts["fractional"]), row[column], spec.where(first)
        )
        fail(spec.source, message)
    return as_number.cast("long")


def _check_columns(raw: DataFrame, spec: IngestionSpec, wanted: dict[str, str]) -> Any:
    """Return the first pass's row: rows, nulls per role, what decides the timestamp unit.

    Raises when a mapped column is missing or an id or time column holds nulls.
    """
    missing = [f"{col!r} ({role})" for role, col in wanted.items() if col not in raw.columns]
    if missing and raw.isEmpty():
        fail(spec.source, said.NO_ROWS)
    if missing:
        fail(spec.source, said.missing_columns_message(missing, list(raw.columns)))
    first_pass = raw.agg(
        F.count(F.lit(1)).alias("rows"),
        *[count_if(F.col(wanted[r]).isNull()).alias(r) for r in ("user", "item", "timestamp")],
        *_timestamp_facts(raw, wanted["timestamp"]),
    ).first()
    rows_read = int(first_pass["rows"])
    if rows_read == 0:
        fail(spec.source, said.NO_ROWS)
    for role in ("user", "item", "timestamp"):
        if first_pass[role]:
            first, _ = first_row(raw, F.col(wanted[role]).isNull())
            message = said.nulls_message(
                wanted[role], role, first_pass[role], rows_read, spec.where(first)
            )
            fail(spec.source, message)
    return first_pass


def _value_checks(
    spec: IngestionSpec, wanted: dict[str, str], seconds: Column, unparsed: Column
) -> dict[str, Column]:
    """Return the counts of bad values, asked of the log in one pass."""
    checks: dict[str, Column] = {"unparsable": count_if(unparsed)}
    if "rating" in wanted:
        rating = F.col(wanted["rating"]).try_cast("double")
        checks["bad_rating"] = count_if(~finite(rating))
        if spec.rating_range is not None:
            low, high = spec.rating_range
            checks["outside"] = count_if(finite(rating) & ((rating < low) | (rating > high)))
        if spec.rating_threshold is not None:
            checks["below"] = count_if(~(rating >= spec.rating_threshold))
    elif spec.rating_threshold is not None:
        checks["threshold_without_rating"] = F.lit(1)
    if "weight" in wanted:
        weight = F.col(wanted["weight"]).try_cast("double")
        checks["bad_weight"] = count_if(~finite(weight) | (weight < 0))
    if spec.earliest is not None or spec.latest is not None:
        checks["outside_window"] = count_if(_outside_window(spec, seconds, unparsed))
    return checks


def _outside_window(spec: IngestionSpec, seconds: Column, unparsed: Column) -> Column:
    earliest = -(2**63) if spec.earliest is None else spec.earliest
    latest = 2**63 - 1 if spec.latest is None else spec.latest
    return ~unparsed & ((seconds < earliest) | (seconds > latest))


def _check_timestamps(raw: DataFrame, spec: IngestionSpec, read: _Timestamps, found: Any) -> None:
    """Raise on unparsable timestamps or ones outside the window (found: the counts' row)."""
    if found["unparsable"]:
        first, row = first_row(raw, read.unparsed)
        message = said.unparsable_message(
            read.column, found["unparsable"], read.rows_read, row[read.column], spec.where(first)
        )
        fail(spec.source, message)
    if read.window_checked and found["outside_window"]:
        with_seconds = raw.withColumn("_seconds", read.seconds)
        first, row = first_row(with_seconds, _outside_window(spec, read.seconds, read.unparsed))
        where = FirstOutside(row[read.column], spec.where(first), int(row["_seconds"]), read.unit)
        message = said.outside_window_message(
            read.column, found["outside_window"], (spec.earliest, spec.latest), where
        )
        fail(spec.source, message)


def _check_values(
    raw: DataFrame, spec: IngestionSpec, wanted: dict[str, str], found: Any, rows_read: int
) -> tuple[Column, dict[str, int]]:
    """Return (which rows to keep, rows dropped by reason); raise on bad ratings or weights."""
    dropped: dict[str, int] = {}
    keep = F.lit(True)
    if "rating" in wanted:
        column = wanted["rating"]
        rating = F.col(column).try_cast("double")
        if found["bad_rating"]:
            fail(spec.source, said.bad_ratings_message(column, found["bad_rating"]))
        if spec.rating_range is not None and found["outside"]:
            low, high = spec.rating_range
            _, row = first_row(raw, (rating < low) | (rating > high))
            message = said.ratings_outside_message(
                column, found["outside"], low, high, float(row[column])
            )
            fail(spec.source, message)
        if spec.rating_threshold is not None:
            keep = rating >= spec.rating_threshold
            dropped["below_rating_threshold"] = int(found["below"])
    elif spec.rating_threshold is not None:
        fail(spec.source, said.THRESHOLD_WITHOUT_RATING)
    if "weight" in wanted and found["bad_weight"]:
        fail(spec.source, said.bad_weights_message(wanted["weight"], found["bad_weight"]))
    if dropped.get("below_rating_threshold", 0) == rows_read:
        fail(spec.source, f"no interaction is left after dropping {dropped}")
    return keep, dropped


def _collapsed(
    raw: DataFrame, spec: IngestionSpec, wanted: dict[str, str], keep: Column, seconds: Column
) -> DataFrame:
    """Return the kept rows with each (user, item) pair once: its latest time, weights summed."""
    weight = F.col(wanted["weight"]).try_cast("double") if "weight" in wanted else None
    user_ids = _typed_ids(raw, wanted["user"], "user", spec)
    item_ids = _typed_ids(raw, wanted["item"], "item", spec)
    kept = raw.filter(keep).select(
        user_ids.alias("user_id"),
        item_ids.alias("item_id"),
        seconds.alias("timestamp"),
        *([weight.alias("weight")] if weight is not None else []),
    )
    aggregates = [F.max("timestamp").alias("timestamp")]
    if weight is not None:
        aggregates.append(F.sum("weight").alias("weight"))
    # Weights are summed in float64 and stored as float32, as on the pandas path.
    return kept.groupBy("user_id", "item_id").agg(*aggregates).persist()


def validate_interactions_spark(raw: DataFrame, spec: IngestionSpec) -> tuple[DataFrame, dict]:
    """Return the clean log (user_id, item_id, timestamp[, weight]) and the ingestion report.

    The rules, messages and report of interactions.validate_interactions: a
    repeated (user, item) pair becomes one positive at its latest time, its
    weights summed. Raises InvalidInteractionsError naming file, column and count.
    """
    wanted = spec.columns_by_role()
    first_pass = _check_columns(raw, spec, wanted)  # one pass: rows, nulls, the unit's facts
    rows_read = int(first_pass["rows"])
    column = wanted["timestamp"]
    seconds, unparsed, unit = _timestamp_seconds(raw, column, spec.timestamp_unit, first_pass)
    checks = _value_checks(spec, wanted, seconds, unparsed)
    found = raw.agg(*[value.alias(name) for name, value in checks.items()]).first()
    read = _Timestamps(column, seconds, unparsed, unit, rows_read, "outside_window" in checks)
    _check_timestamps(raw, spec, read, found)
    keep, dropped = _check_values(raw, spec, wanted, found, rows_read)

    clean = _collapsed(raw, spec, wanted, keep, seconds)
    with_weight = "weight" in wanted
    summary = clean.agg(
        F.count(F.lit(1)).alias("interactions"),
        F.countDistinct("user_id").alias("users"),
        F.countDistinct("item_id").alias("items"),
        F.min("timestamp").alias("first"),
        F.max("timestamp").alias("last"),
        *([F.sum("weight").alias("weight_total")] if with_weight else []),
    ).first()
    if with_weight:
        clean = clean.withColumn("weight", F.col("weight").cast("float"))
    interactions = int(summary["interactions"])
    kept_rows = rows_read - dropped.get("below_rating_threshold", 0)
    dropped["duplicates_collapsed"] = kept_rows - interactions
    log = CleanLog(
        rows_read=rows_read,
        rows_dropped=dropped,
        interactions=interactions,
        users=int(summary["users"]),
        items=int(summary["items"]),
        timestamp_unit=unit,
        first_timestamp=summary["first"],
        last_timestamp=summary["last"],
        weight_total=float(summary["weight_total"]) if with_weight else None,
    )
    return clean, said.ingestion_report(spec.source, spec.timestamp_unit, log)


def encode_ids_spark(clean: DataFrame) -> tuple[DataFrame, DataFrame, DataFrame]:
    """Return interactions with integer user/item indices, and the two id maps.

    Indices follow the sorted original ids, as encode_ids's do; interactions
    are written in (user, timestamp, item) order, so the part files read back
    in name order give the pandas path's order.
    """
    user_index = sorted_index(clean, "user_id", "user").persist()
    item_index = sorted_index(clean, "item_id", "item").persist()
    columns = [F.col("user"), F.col("item"), F.col("timestamp").cast("long")]
    if "weight" in clean.columns:
        columns.append(F.col("weight").cast("float"))
    interactions = (
        clean.join(user_index, "user_id").join(item_index, "item_id").select(*columns)
    ).orderBy(*ORDER)
    return interactions, user_index.orderBy("user"), item_index.orderBy("item")
