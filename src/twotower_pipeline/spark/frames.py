"""Spark helpers the ingestion and the split share: counts, positions and exact quantiles.

Every helper is a Spark aggregation, window or join: the driver only ever
holds counts and a few boundary values.
"""

from __future__ import annotations

import math
from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

__all__ = ["DataFrame", "count_if", "finite", "first_row", "kth_smallest", "sorted_index"]

_POSITION_BITS = 33  # monotonically_increasing_id() = partition << 33 | position in partition
ORDER = ("user", "timestamp", "item")  # the order encode_ids writes interactions in


def finite(value: Column) -> Column:
    return value.isNotNull() & ~F.isnan(value) & (F.abs(value) != float("inf"))


def count_if(condition: Column) -> Column:
    return F.sum(F.when(condition, 1).otherwise(0))


def with_position(frame: DataFrame, name: str) -> DataFrame:
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


def first_row(frame: DataFrame, condition: Column) -> tuple[int, Any]:
    """Return (position in read order, row) of the first row meeting `condition`.

    On the error path only: it costs a pass over the data.
    """
    first = with_position(frame, "_row").filter(condition).orderBy("_row").first()
    return int(first["_row"]), first


def sorted_index(values: DataFrame, column: str, index: str) -> DataFrame:
    """Return the distinct values of `column` with `index`: their 0-based rank in sorted order.

    A range partitioning spreads them over partitions in order, each partition
    is sorted, and a partition's ranks start after the rows of those before it.
    """
    ranged = values.select(column).distinct().repartitionByRange(column)
    ranked = with_position(ranged.sortWithinPartitions(column), index)
    return ranked.select(F.col(index).cast("int").alias(index), column)


def kth_smallest(frame: DataFrame, column: str, ranks: list[int], n: int) -> list[Any]:
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
        *[count_if(value < low).alias(f"below{i}") for i, low in enumerate(lows)],
        *[count_if(value <= high).alias(f"upto{i}") for i, high in enumerate(highs)],
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
