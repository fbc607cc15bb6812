"""The split on PySpark: the rules and report of data/splitting.py, on Spark.

The draw of cold items, the report and the error for an empty split are
data/splitting.py's; tests/test_spark_parity.py checks that both paths write
the same rows and the same report. No Kedro here.
"""

from __future__ import annotations

import math
from typing import Any

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from twotower_pipeline.data.splitting import (
    SplitSpec,
    cold_items,
    no_interactions_error,
    raise_if_empty,
    split_report,
    time_span,
)
from twotower_pipeline.spark.frames import ORDER, count_if, kth_smallest


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
    val_cutoff, test_cutoff = (int(v) for v in kth_smallest(interactions, "timestamp", ranks, n))
    role = (
        F.when(F.col("timestamp") >= test_cutoff, "test")
        .when(F.col("timestamp") >= val_cutoff, "val")
        .otherwise("train")
    )
    return interactions.withColumn("_role", role), (val_cutoff, test_cutoff)


def _with_cold_items(labelled: DataFrame, spec: SplitSpec, seed: int, n_items: int):
    """Return (labelled with cold items' training rows as `removed`, the cold items)."""
    held_out_cold = [int(i) for i in cold_items(n_items, spec.cold_item_fraction, seed)]
    if held_out_cold:
        spark = labelled.sparkSession
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
    return labelled, held_out_cold


def _held_out(labelled: DataFrame, train_users: DataFrame, train_items: DataFrame) -> DataFrame:
    """Return the held-out rows, with `_out`: val, test, test_cold, dropped_user or dropped_item."""
    return (
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


def _held_out_counts(held: DataFrame) -> Any:
    """Return the row of the held-out sets' counts, distinct users and items, and time spans."""
    out, role = F.col("_out"), F.col("_role")

    def distinct_where(column: str, condition: Column) -> Column:
        return F.countDistinct(F.when(condition, F.col(column)))

    return held.agg(
        count_if(role == "val").alias("val_candidates"),
        count_if(role == "test").alias("test_candidates"),
        count_if((role == "val") & (out == "dropped_user")).alias("val_dropped_cold_users"),
        count_if(out == "dropped_item").alias("val_dropped_cold_items"),
        count_if((role == "test") & (out == "dropped_user")).alias("test_dropped_cold_users"),
        count_if(out == "val").alias("val_interactions"),
        count_if(out == "test").alias("test_interactions"),
        count_if(out == "test_cold").alias("test_cold_interactions"),
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


def _train_counts(labelled: DataFrame) -> Any:
    """Return the row of training rows, cold items' removed rows, and the training time span."""
    role = F.col("_role")
    return labelled.agg(
        count_if(role == "train").alias("rows"),
        count_if(role == "removed").alias("removed"),
        F.min(F.when(role == "train", F.col("timestamp"))).alias("first"),
        F.max(F.when(role == "train", F.col("timestamp"))).alias("last"),
    ).first()


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
        F.max("item").alias("max_item"),
        F.countDistinct("user").alias("users"),
    ).first()
    if not extent["rows"]:
        raise no_interactions_error(source)
    n_items = int(extent["max_item"]) + 1
    labelled, cutoffs = _held_out_roles(interactions, spec)
    labelled, held_out_cold = _with_cold_items(labelled, spec, seed, n_items)
    train = labelled.filter(F.col("_role") == "train")
    train_users = train.select("user").distinct().withColumn("_warm_user", F.lit(True)).persist()
    train_items = train.select("item").distinct().withColumn("_warm_item", F.lit(True)).persist()
    held = _held_out(labelled, train_users, train_items)
    held_counts = _held_out_counts(held)
    train_counts = _train_counts(labelled)
    counts = {name: int(held_counts[name] or 0) for name in held_counts.asDict()}
    raise_if_empty(source, spec, counts)
    counts.update(
        users=int(extent["users"]),
        items=n_items,
        train_interactions=int(train_counts["rows"]),
        train_users=train_users.count(),
        train_items=train_items.count(),
        cold_items_held_out=len(held_out_cold),
        train_rows_removed_cold_items=int(train_counts["removed"] or 0),
    )
    spans = {
        "train": time_span(train_counts["first"], train_counts["last"]),
        "val": time_span(held_counts["val_first"], held_counts["val_last"]),
        "test": time_span(held_counts["test_first"], held_counts["test_last"]),
    }

    def rows(frame: DataFrame, condition: Column) -> DataFrame:
        return frame.filter(condition).select(*columns).orderBy(*ORDER)

    out, role = F.col("_out"), F.col("_role")
    return (
        rows(labelled, role == "train"),
        rows(held, out == "val"),
        rows(held, out == "test"),
        rows(held, out == "test_cold"),
        split_report(spec, counts, spans, cutoffs),
    )
