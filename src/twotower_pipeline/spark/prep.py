"""Ingestion and the split on PySpark: the rules of interactions.py and splitting.py, on Spark.

The specs (IngestionSpec, SplitSpec), the draw of cold items, the error for
an empty split and the helpers that format values in messages come from the
pandas modules;
tests/test_spark_parity.py checks that both paths write the same rows, the
same reports and the same error messages. Every step is a Spark aggregation,
window or join: the driver only ever holds counts, a few boundary values and
the list of cold items. No Kedro here.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import IntegralType, NumericType, StringType

from twotower_pipeline.data.interactions import (
    IngestionSpec,
    InvalidInteractionsError,
    _date,
    _fail,
    _shown,
)
from twotower_pipeline.data.splitting import SplitSpec, _empty_error, cold_items

_MS_THRESHOLD = 1e11  # as parse_timestamps: epoch ms pass it in 1973, epoch s not before 5138
_POSITION_BITS = 33  # monotonically_increasing_id() = partition << 33 | position in partition
_ORDER = ("user", "timestamp", "item")  # the order encode_ids writes interactions in


def _iso(seconds: int) -> str:
    return pd.Timestamp(int(seconds), unit="s", tz="UTC").isoformat()


def _finite(value: Column) -> Column:
    return value.isNotNull() & ~F.isnan(value) & (F.abs(value) != float("inf"))


def _count_if(condition: Column) -> Column:
    return F.sum(F.when(condition, 1).otherwise(0))


# --- positions: in read order (for messages) and in sorted order (for ids) --------------


def _with_position(frame: DataFrame, name: str) -> DataFrame:
    """Return `frame` with `name`: each row's 0-based position in partition order.

    A partition's positions follow every row of the partitions before it. The
    tagged frame is persisted so that the counts and the positions come from
    one evaluation.
    """
    tagged = frame.withColumn("_id", F.monotonically_increasing_id()).persist()
    part = F.shiftright(F.col("_id"), _POSITION_BITS)
    counts = tagged.groupBy(part.alias("_part")).count().orderBy("_part").collect()
    offsets, total = [], 0
    for row in counts:  # one row per partition
        offsets.append((int(row["_part"]), total))
        total += int(row["count"])
    offset_frame = frame.sparkSession.createDataFrame(offsets, "_part long, _offset long")
    in_part = F.col("_id").bitwiseAND(F.lit((1 << _POSITION_BITS) - 1))
    return (
        tagged.withColumn("_part", part)
        .join(F.broadcast(offset_frame), "_part")
        .withColumn(name, F.col("_offset") + in_part)
        .drop("_id", "_part", "_offset")
    )


def _first_row(frame: DataFrame, condition: Column) -> tuple[int, Any]:
    """Return (position in read order, row) of the first row meeting `condition`.

    On the error path only: it costs a pass over the data.
    """
    first = _with_position(frame, "_row").filter(condition).orderBy("_row").first()
    return int(first["_row"]), first


def _sorted_index(values: DataFrame, column: str, index: str) -> DataFrame:
    """Return the distinct values of `column` with `index`: their 0-based rank in sorted order.

    A range partitioning spreads them over partitions in order, each partition
    is sorted, and a partition's ranks start after the rows of those before it.
    """
    ranged = values.select(column).distinct().repartitionByRange(column)
    ranked = _with_position(ranged.sortWithinPartitions(column), index)
    return ranked.select(F.col(index).cast("int").alias(index), column)


def _kth_smallest(frame: DataFrame, column: str, ranks: list[int], n: int) -> list[Any]:
    """Return the values at 0-based `ranks` of `column` in sorted order, exactly.

    approxQuantile brackets each rank, exact counts confirm the bracket, and
    the distinct values inside it (a few per 10^4 rows) are walked on the driver.
    """
    error = 1e-4
    probabilities = [rank / max(n - 1, 1) for rank in ranks]
    bounds = frame.approxQuantile(
        column,
        [max(p - 2 * error, 0.0) for p in probabilities]
        + [min(p + 2 * error, 1.0) for p in probabilities],
        error,
    )
    lows = [math.floor(v) for v in bounds[: len(ranks)]]
    highs = [math.ceil(v) for v in bounds[len(ranks) :]]
    value = F.col(column)
    counts = frame.agg(
        *[_count_if(value < low).alias(f"below{i}") for i, low in enumerate(lows)],
        *[_count_if(value <= high).alias(f"upto{i}") for i, high in enumerate(highs)],
        F.min(value).alias("lo"),
        F.max(value).alias("hi"),
    ).first()
    answers = []
    for i, rank in enumerate(ranks):
        low, high, below = lows[i], highs[i], int(counts[f"below{i}"] or 0)
        if not below <= rank < int(counts[f"upto{i}"] or 0):  # the sketch missed: walk all
            low, high, below = counts["lo"], counts["hi"], 0
        window = frame.filter(value.between(low, high)).groupBy(column).count()
        seen = below
        for row in window.orderBy(column).collect():
            seen += int(row["count"])
            if seen > rank:
                answers.append(row[column])
                break
    return answers


# --- ingestion ---------------------------------------------------------------------------


def _as_number(raw: DataFrame, column: str) -> Column:
    values = F.col(column)
    if isinstance(raw.schema[column].dataType, NumericType):
        return values.cast("double")
    return values.try_cast("double")


def _timestamp_facts(raw: DataFrame, column: str) -> list[Column]:
    """Return the aggregates that decide the timestamp unit (asked in the first pass)."""
    as_number = _as_number(raw, column)
    finite = F.when(_finite(as_number), as_number)
    return [
        F.avg(as_number.isNotNull().cast("double")).alias("_ts_share"),
        F.count(finite).alias("_ts_count"),
        F.min(finite).alias("_ts_min"),
        F.max(finite).alias("_ts_max"),
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
    bad = ~_finite(as_number)
    if unit == "s_or_ms":
        count = int(facts["_ts_count"])
        if count == 0 or facts["_ts_max"] <= _MS_THRESHOLD:
            unit = "s"
        elif facts["_ts_min"] > _MS_THRESHOLD:
            unit = "ms"
        else:  # the median decides; it needs the exact middle values
            finite = raw.filter(~bad).select(as_number.alias("_t"))
            low, high = _kth_smallest(finite, "_t", [(count - 1) // 2, count // 2], count)
            unit = "ms" if (low + high) / 2 > _MS_THRESHOLD else "s"
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
    is_number = _finite(as_number)
    text_stored = isinstance(data_type, StringType)
    counts = raw.agg(
        _count_if(is_number).alias("numbers"),
        _count_if(is_number & (as_number != F.floor(as_number))).alias("fractional"),
        F.count(F.lit(1)).alias("rows"),
    ).first()
    numbers, rows = int(counts["numbers"] or 0), int(counts["rows"])
    if spec.id_type == "auto" and text_stored and numbers in (0, rows):
        return values  # text in the file: kept as text
    if numbers < rows:
        first, row = _first_row(raw, ~is_number)
        text = f"first text {_shown(row[column])} at {spec.where(first)}"
        if spec.id_type == "int":
            detail = f"{rows - numbers} id(s) that are not numbers ({text})"
        else:
            number, number_row = _first_row(raw, is_number)
            detail = (
                f"{numbers} numeric and {rows - numbers} text id(s) (first "
                f"number {_shown(number_row[column])} at {spec.where(number)}, {text})"
            )
        _fail(spec, f"{label} has {detail}; set ingestion.id_type: text if the ids are names")
    if int(counts["fractional"] or 0):
        first, row = _first_row(raw, as_number != F.floor(as_number))
        _fail(
            spec,
            f"{label} has {int(counts['fractional'])} fractional id(s) (first "
            f"{_shown(row[column])} at {spec.where(first)}); ids must be whole numbers, "
            "or set ingestion.id_type: text",
        )
    return as_number.cast("long")


def validate_interactions_spark(raw: DataFrame, spec: IngestionSpec) -> tuple[DataFrame, dict]:
    """Return the clean log (user_id, item_id, timestamp[, weight]) and the ingestion report.

    The rules, messages and report of interactions.validate_interactions: a
    repeated (user, item) pair becomes one positive at its latest time, its
    weights summed. Raises InvalidInteractionsError naming file, column and count.
    """
    columns = list(raw.columns)
    wanted = {role: spec.column(role) for role in ("user", "item", "timestamp", "rating", "weight")}
    wanted = {role: column for role, column in wanted.items() if column}
    missing = [f"{col!r} ({role})" for role, col in wanted.items() if col not in columns]
    if missing and raw.isEmpty():
        _fail(spec, "the file holds no rows")
    if missing:
        _fail(
            spec,
            f"missing column(s) {', '.join(missing)}; the file has {list(map(str, columns))}. "
            "Map your columns with ingestion.columns in parameters.",
        )
    # One pass for the row count, the nulls and what decides the timestamp unit.
    ts_column = wanted["timestamp"]
    nulls = raw.agg(
        F.count(F.lit(1)).alias("rows"),
        *[_count_if(F.col(wanted[r]).isNull()).alias(r) for r in ("user", "item", "timestamp")],
        *_timestamp_facts(raw, ts_column),
    ).first()
    rows_read = int(nulls["rows"])
    if rows_read == 0:
        _fail(spec, "the file holds no rows")
    for role in ("user", "item", "timestamp"):
        if nulls[role]:
            first, _ = _first_row(raw, F.col(wanted[role]).isNull())
            _fail(
                spec,
                f"column {wanted[role]!r} ({role}) has {nulls[role]} null value(s) of "
                f"{rows_read} rows (first at {spec.where(first)})",
            )

    seconds, unparsed, unit = _timestamp_seconds(raw, ts_column, spec.timestamp_unit, nulls)
    checks: dict[str, Column] = {"unparsable": _count_if(unparsed)}
    rating = weight = None
    if "rating" in wanted:
        rating = F.col(wanted["rating"]).try_cast("double")
        checks["bad_rating"] = _count_if(~_finite(rating))
        if spec.rating_range is not None:
            low, high = spec.rating_range
            checks["outside"] = _count_if(_finite(rating) & ((rating < low) | (rating > high)))
        if spec.rating_threshold is not None:
            checks["below"] = _count_if(~(rating >= spec.rating_threshold))
    elif spec.rating_threshold is not None:
        checks["threshold_without_rating"] = F.lit(1)
    if "weight" in wanted:
        weight = F.col(wanted["weight"]).try_cast("double")
        checks["bad_weight"] = _count_if(~_finite(weight) | (weight < 0))
    if spec.earliest is not None or spec.latest is not None:
        earliest = -(2**63) if spec.earliest is None else spec.earliest
        latest = 2**63 - 1 if spec.latest is None else spec.latest
        outside_window = ~unparsed & ((seconds < earliest) | (seconds > latest))
        checks["outside_window"] = _count_if(outside_window)
    found = raw.agg(*[value.alias(name) for name, value in checks.items()]).first()

    if found["unparsable"]:
        first, row = _first_row(raw, unparsed)
        _fail(
            spec,
            f"column {ts_column!r} (timestamp) has {found['unparsable']} unparsable "
            f"timestamp(s) of {rows_read} rows (first: {row[ts_column]!r} "
            f"at {spec.where(first)}); expected epoch seconds, milliseconds or ISO 8601",
        )
    if "outside_window" in checks and found["outside_window"]:
        first, row = _first_row(raw.withColumn("_seconds", seconds), outside_window)
        bounds = (
            f"[{'-' if spec.earliest is None else _date(earliest)}, "
            f"{'-' if spec.latest is None else _date(latest)}]"
        )
        _fail(
            spec,
            f"column {ts_column!r} (timestamp) has {found['outside_window']} timestamp(s) "
            f"outside {bounds} UTC (first: {_shown(row[ts_column])} at {spec.where(first)}, "
            f"read as {_date(int(row['_seconds']))} with unit {unit}); fix those rows, set "
            "ingestion.timestamp_unit, or widen ingestion.timestamp_window",
        )
    dropped: dict[str, int] = {}
    keep = F.lit(True)
    if rating is not None:
        if found["bad_rating"]:
            _fail(
                spec,
                f"column {wanted['rating']!r} (rating) has {found['bad_rating']} missing or "
                "non-numeric rating(s)",
            )
        if spec.rating_range is not None and found["outside"]:
            low, high = spec.rating_range
            _, row = _first_row(raw, (rating < low) | (rating > high))
            example = float(row[wanted["rating"]])
            _fail(
                spec,
                f"column {wanted['rating']!r} (rating) has {found['outside']} rating(s) outside "
                f"the declared range [{low}, {high}] (e.g. {example:g})",
            )
        if spec.rating_threshold is not None:
            keep = rating >= spec.rating_threshold
            dropped["below_rating_threshold"] = int(found["below"])
    elif spec.rating_threshold is not None:
        _fail(spec, "ingestion.rating_threshold is set but no rating column is mapped")
    if weight is not None and found["bad_weight"]:
        _fail(
            spec,
            f"column {wanted['weight']!r} (weight) has {found['bad_weight']} missing or "
            "negative weight(s)",
        )
    if dropped.get("below_rating_threshold", 0) == rows_read:
        _fail(spec, f"no interaction is left after dropping {dropped}")

    user_ids = _typed_ids(raw, wanted["user"], "user", spec)
    item_ids = _typed_ids(raw, wanted["item"], "item", spec)
    kept = raw.filter(keep).select(
        user_ids.alias("user_id"),
        item_ids.alias("item_id"),
        seconds.alias("timestamp"),
        *([weight.alias("weight")] if weight is not None else []),
    )
    kept_rows = rows_read - dropped.get("below_rating_threshold", 0)
    aggregates = [F.max("timestamp").alias("timestamp")]
    if weight is not None:
        aggregates.append(F.sum("weight").alias("weight"))
    # Weights are summed in float64 and stored as float32, as on the pandas path.
    clean = kept.groupBy("user_id", "item_id").agg(*aggregates).persist()

    summary = clean.agg(
        F.count(F.lit(1)).alias("interactions"),
        F.countDistinct("user_id").alias("users"),
        F.countDistinct("item_id").alias("items"),
        F.min("timestamp").alias("first"),
        F.max("timestamp").alias("last"),
        *([F.sum("weight").alias("weight_total")] if weight is not None else []),
    ).first()
    if weight is not None:
        clean = clean.withColumn("weight", F.col("weight").cast("float"))
    interactions = int(summary["interactions"])
    dropped["duplicates_collapsed"] = kept_rows - interactions
    n_users, n_items = int(summary["users"]), int(summary["items"])
    report = {
        "source": spec.source,
        "rows_read": rows_read,
        "rows_dropped": dropped,
        "interactions": interactions,
        "users": n_users,
        "items": n_items,
        "density": interactions / (n_users * n_items),
        "timestamp_unit": unit,
        "timestamp_unit_from": (
            "ingestion.timestamp_unit"
            if spec.timestamp_unit != "auto"
            else "inferred from the median value (ms above 1e11)"
            if unit in ("s", "ms")
            else "inferred: text timestamps"
        ),
        "time_span": [_iso(summary["first"]), _iso(summary["last"])],
    }
    if weight is not None:
        report["weight_total"] = float(summary["weight_total"])
    return clean, report


def encode_ids_spark(clean: DataFrame) -> tuple[DataFrame, DataFrame, DataFrame]:
    """Return interactions with integer user/item indices, and the two id maps.

    Indices follow the sorted original ids, as encode_ids's do; interactions
    are written in (user, timestamp, item) order, so the part files read back
    in name order give the pandas path's order.
    """
    user_index = _sorted_index(clean, "user_id", "user").persist()
    item_index = _sorted_index(clean, "item_id", "item").persist()
    columns = [F.col("user"), F.col("item"), F.col("timestamp").cast("long")]
    if "weight" in clean.columns:
        columns.append(F.col("weight").cast("float"))
    interactions = (
        clean.join(user_index, "user_id").join(item_index, "item_id").select(*columns)
    ).orderBy(*_ORDER)
    return interactions, user_index.orderBy("user"), item_index.orderBy("item")


# --- split -------------------------------------------------------------------------------


def _held_out_roles(interactions: DataFrame, spec: SplitSpec) -> tuple[DataFrame, Any]:
    """Return (interactions with `_role`: train | val | test, the cutoffs or None)."""
    if spec.strategy == "leave_last_out":
        by_user = Window.partitionBy("user")
        latest_first = by_user.orderBy(F.desc("timestamp"), F.desc("item"))
        from_latest = F.row_number().over(latest_first) - 1
        # Two held out (test, validation) plus at least min_train_interactions to train on.
        eligible = F.count(F.lit(1)).over(by_user) >= 2 + spec.min_train_interactions
        role = (
            F.when(eligible & (from_latest == 0), "test")
            .when(eligible & (from_latest == 1), "val")
            .otherwise("train")
        )
        return interactions.withColumn("_role", role), None
    n = interactions.count()
    val_q, test_q = spec.temporal_quantiles
    # numpy's quantile(method="higher") takes the value at rank ceil((n - 1) q).
    ranks = [int(math.ceil((n - 1) * val_q)), int(math.ceil((n - 1) * test_q))]
    val_cutoff, test_cutoff = (int(v) for v in _kth_smallest(interactions, "timestamp", ranks, n))
    role = (
        F.when(F.col("timestamp") >= test_cutoff, "test")
        .when(F.col("timestamp") >= val_cutoff, "val")
        .otherwise("train")
    )
    return interactions.withColumn("_role", role), (val_cutoff, test_cutoff)


def _span(first: int | None, last: int | None) -> list[str] | None:
    return None if first is None else [_iso(first), _iso(last)]


def split_interactions_spark(
    interactions: DataFrame, spec: SplitSpec, seed: int, source: str = "interactions"
) -> tuple[DataFrame, DataFrame, DataFrame, DataFrame, dict]:
    """Return train, validation and test positives, cold test rows and the split report.

    The rules of splitting.split_interactions: held-out rows first, then the
    cold items (drawn by splitting.cold_items with the same seed) lose their
    training rows; held-out rows of users with no training row are dropped
    and counted, validation rows of items with none likewise, such test rows
    go to test_cold. Raises InvalidInteractionsError when validation or test
    ends up empty.
    """
    columns = list(interactions.columns)
    extent = interactions.agg(
        F.count(F.lit(1)).alias("rows"),
        F.max("user").alias("max_user"),
        F.max("item").alias("max_item"),
        F.countDistinct("user").alias("users"),
    ).first()
    if not extent["rows"]:
        raise InvalidInteractionsError(f"{source}: there are no interactions to split")
    n_items = int(extent["max_item"]) + 1
    labelled, cutoffs = _held_out_roles(interactions, spec)

    held_out_cold = [int(i) for i in cold_items(n_items, spec.cold_item_fraction, seed)]
    if held_out_cold:
        spark = interactions.sparkSession
        cold = spark.createDataFrame([(i,) for i in held_out_cold], "item int")
        cold = cold.withColumn("_cold", F.lit(True))
        labelled = labelled.join(F.broadcast(cold), "item", "left")
        labelled = labelled.withColumn("_cold", F.coalesce("_cold", F.lit(False)))
    else:
        labelled = labelled.withColumn("_cold", F.lit(False))
    labelled = labelled.withColumn(
        "_role",
        F.when((F.col("_role") == "train") & F.col("_cold"), "removed").otherwise(F.col("_role")),
    ).persist()

    train = labelled.filter(F.col("_role") == "train")
    train_users = train.select("user").distinct().withColumn("_warm_user", F.lit(True)).persist()
    train_items = train.select("item").distinct().withColumn("_warm_item", F.lit(True)).persist()
    held = (
        labelled.filter(F.col("_role").isin("val", "test"))
        .join(train_users, "user", "left")
        .join(train_items, "item", "left")
        .withColumn("_warm_user", F.coalesce("_warm_user", F.lit(False)))
        .withColumn("_warm_item", F.coalesce("_warm_item", F.lit(False)))
        .withColumn(
            "_out",
            F.when(~F.col("_warm_user"), "dropped_user")
            .when(F.col("_warm_item"), F.col("_role"))
            .when(F.col("_role") == "test", "test_cold")
            .otherwise("dropped_item"),
        )
        .persist()
    )

    def distinct_where(column: str, condition: Column) -> Column:
        return F.countDistinct(F.when(condition, F.col(column)))

    out, role = F.col("_out"), F.col("_role")
    held_counts = held.agg(
        _count_if(role == "val").alias("val_candidates"),
        _count_if(role == "test").alias("test_candidates"),
        _count_if((role == "val") & (out == "dropped_user")).alias("val_dropped_cold_users"),
        _count_if(out == "dropped_item").alias("val_dropped_cold_items"),
        _count_if((role == "test") & (out == "dropped_user")).alias("test_dropped_cold_users"),
        _count_if(out == "val").alias("val"),
        _count_if(out == "test").alias("test"),
        _count_if(out == "test_cold").alias("test_cold"),
        *[
            distinct_where(column, out == kind).alias(f"{kind}_{column}s")
            for kind in ("val", "test", "test_cold")
            for column in ("user", "item")
        ],
        *[
            agg(F.when(out == kind, F.col("timestamp"))).alias(f"{kind}_{name}")
            for kind in ("val", "test")
            for name, agg in (("first", F.min), ("last", F.max))
        ],
    ).first()
    train_counts = labelled.agg(
        _count_if(role == "train").alias("rows"),
        _count_if(role == "removed").alias("removed"),
        F.min(F.when(role == "train", F.col("timestamp"))).alias("first"),
        F.max(F.when(role == "train", F.col("timestamp"))).alias("last"),
    ).first()

    def count(name: str) -> int:
        return int(held_counts[name] or 0)

    if count("val") == 0:
        raise _empty_error(
            source,
            spec,
            "validation",
            count("val_candidates"),
            count("val_dropped_cold_users"),
            count("val_dropped_cold_items"),
        )
    if count("test") == 0:
        raise _empty_error(
            source,
            spec,
            "test",
            count("test_candidates"),
            count("test_dropped_cold_users"),
            count("test_cold"),
        )

    all_users = int(extent["users"])
    train_items_count = train_items.count()
    report = {
        "strategy": spec.strategy,
        "train_interactions": int(train_counts["rows"]),
        "val_interactions": count("val"),
        "test_interactions": count("test"),
        "test_cold_interactions": count("test_cold"),
        "train_users": train_users.count(),
        "train_items": train_items_count,
        "val_users": count("val_users"),
        "val_items": count("val_items"),
        "test_users": count("test_users"),
        "test_items": count("test_items"),
        "test_cold_users": count("test_cold_users"),
        "test_cold_items": count("test_cold_items"),
        "users_without_validation": all_users - count("val_users"),
        "users_without_test": all_users - count("test_users"),
        "val_candidates": count("val_candidates"),
        "val_dropped_cold_users": count("val_dropped_cold_users"),
        "val_dropped_cold_items": count("val_dropped_cold_items"),
        "test_candidates": count("test_candidates"),
        "test_dropped_cold_users": count("test_dropped_cold_users"),
        "items_without_training": n_items - train_items_count,
        "cold_item_fraction": spec.cold_item_fraction,
        "cold_items_held_out": len(held_out_cold),
        "train_rows_removed_cold_items": int(train_counts["removed"] or 0),
        "train_time_span": _span(train_counts["first"], train_counts["last"]),
        "val_time_span": _span(held_counts["val_first"], held_counts["val_last"]),
        "test_time_span": _span(held_counts["test_first"], held_counts["test_last"]),
    }
    if cutoffs is None:
        report["min_train_interactions"] = spec.min_train_interactions
    else:
        report["temporal_quantiles"] = list(spec.temporal_quantiles)
        report["temporal_cutoffs"] = [_iso(cutoffs[0]), _iso(cutoffs[1])]

    def rows(frame: DataFrame, condition: Column) -> DataFrame:
        return frame.filter(condition).select(*columns).orderBy(*_ORDER)

    return (
        rows(labelled, role == "train"),
        rows(held, out == "val"),
        rows(held, out == "test"),
        rows(held, out == "test_cold"),
        report,
    )
