"""Checking and encoding raw interaction logs: the project's input boundary.

Every problem found here is reported once, naming the file, the column and
how many rows are affected; past this module the data is trusted. All work is
vectorised (pandas hashing, numpy sorts): no Python loop runs per row. The
messages and the report are data/ingestion_report.py's, shared with Spark.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from twotower_pipeline.data import ingestion_report as said
from twotower_pipeline.data.ingestion_report import (
    MS_THRESHOLD,
    CleanLog,
    FirstOutside,
    InvalidInteractionsError,
    fail,
)
from twotower_pipeline.data.ordering import factorize_ids, sort_by_user_time

__all__ = ["IngestionSpec", "InvalidInteractionsError", "encode_ids", "validate_interactions"]

ROLES = ("user", "item", "timestamp", "rating", "weight")
_DEFAULT_COLUMNS = {"user": "user_id", "item": "item_id", "timestamp": "timestamp"}
TIMESTAMP_UNITS = ("auto", "s", "ms", "iso")


@dataclass(frozen=True)
class IngestionSpec:
    """How to read the raw log: which column is which, and how to turn it into positives."""

    # No defaults: the values come from conf/base (parameters_ingestion.yml).
    source: str
    columns: dict[str, str | None]
    timestamp_unit: str  # auto | s | ms | iso
    rating_threshold: float | None
    rating_range: tuple[float, float] | None
    encoding: str  # of a text file; the catalog's reader is given it (hooks/readable_errors.py)
    id_type: str  # auto | int | text
    # Plausible time span, epoch seconds; None: unchecked. From parameters:
    # timestamp_window.earliest (a date) and .latest (a date, or null: the run's clock + 1 day).
    earliest: int | None
    latest: int | None
    first_line: int | None = None  # file line of the first data row (CSV), known at load time

    @classmethod
    def from_params(cls, params: dict) -> IngestionSpec:
        """Return the spec of the `ingestion` block, as config/schema.py has checked it."""
        rating_range = params["rating_range"]
        earliest, latest = _window(params["timestamp_window"])
        return cls(
            source=params["source"],
            columns=dict(params["columns"] or {}),
            timestamp_unit=params["timestamp_unit"],
            rating_threshold=params["rating_threshold"],
            rating_range=tuple(rating_range) if rating_range else None,
            encoding=params["encoding"],
            id_type=params["id_type"],
            earliest=earliest,
            latest=latest,
        )

    def where(self, row: int) -> str:
        """Return how a message names data row `row` (0-based): the file's line, or the row."""
        if self.first_line is None:
            return f"row {row + 1}"
        return f"line {self.first_line + row}"

    def column(self, role: str) -> str | None:
        """Return the raw column that plays `role`, or None when the log has none."""
        return self.columns.get(role, _DEFAULT_COLUMNS.get(role))

    def columns_by_role(self) -> dict[str, str]:
        """Return {role: raw column} for the roles the log has, in ROLES order."""
        return {role: self.column(role) for role in ROLES if self.column(role)}


def _window(window: dict | None) -> tuple[int | None, int | None]:
    """Return (earliest, latest) epoch seconds of timestamp_window; latest null -> now + 1 day."""
    if window is None:
        return None, None
    earliest = window.get("earliest")
    latest = window.get("latest")
    low = None if earliest is None else int(pd.Timestamp(earliest, tz="UTC").timestamp())
    if latest is None:
        high = int(time.time()) + 86_400
    else:
        high = int(pd.Timestamp(latest, tz="UTC").timestamp())
    return low, high


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def parse_timestamps(values: pd.Series, unit: str = "auto") -> tuple[np.ndarray, np.ndarray, str]:
    """Return (epoch seconds as int64, mask of unparsable values, the unit used).

    `auto` reads numbers as epoch seconds, or milliseconds when their median
    exceeds 10^11 (epoch ms pass it in 1973, epoch s not before year 5138): the
    bulk of the data decides, so one far-future value cannot turn the whole log
    into 1970 (it is left for the plausibility window to report); anything else
    is read as ISO 8601 (naive times are taken as UTC).
    """
    if unit == "auto":
        if pd.api.types.is_numeric_dtype(values):
            unit = "s_or_ms"
        else:
            # A text column of numbers with a few bad cells is still a numeric column:
            # reporting every row as "not ISO" would hide the few that are wrong.
            numeric = pd.to_numeric(values, errors="coerce")
            unit = "s_or_ms" if numeric.notna().mean() >= 0.5 else "iso"
    if unit == "iso":
        parsed = pd.to_datetime(values, errors="coerce", utc=True, format="ISO8601")
        bad = parsed.isna().to_numpy()
        nanoseconds = parsed.array.as_unit("ns").asi8.copy()
        nanoseconds[bad] = 0
        return np.floor_divide(nanoseconds, 1_000_000_000), bad, "iso"
    numeric = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(numeric)
    if unit == "s_or_ms":
        finite = numeric[~bad]
        unit = "ms" if finite.size and np.median(finite) > MS_THRESHOLD else "s"
    if unit == "ms":
        numeric = numeric / 1000.0
    elif unit != "s":
        raise ValueError(f"timestamp_unit must be one of {TIMESTAMP_UNITS}, not {unit!r}")
    return np.floor(np.where(bad, 0.0, numeric)).astype(np.int64), bad, unit


def _check_window(values: pd.Series, seconds: np.ndarray, unit: str, spec: IngestionSpec) -> None:
    """Raise when timestamps fall outside the plausible window (count, first value, its line)."""
    if spec.earliest is None and spec.latest is None:
        return
    low = np.iinfo(np.int64).min if spec.earliest is None else spec.earliest
    high = np.iinfo(np.int64).max if spec.latest is None else spec.latest
    outside = (seconds < low) | (seconds > high)
    if not outside.any():
        return
    first = _first(outside)
    where = FirstOutside(values.iloc[first], spec.where(first), int(seconds[first]), unit)
    message = said.outside_window_message(
        values.name, int(outside.sum()), (spec.earliest, spec.latest), where
    )
    fail(spec.source, message)


def typed_ids(values: pd.Series, role: str, spec: IngestionSpec) -> np.ndarray:
    """Return one id column as integers or as text, never a silent mix of the two.

    `auto`: integer columns stay integers (floats that are all whole numbers
    become integers). Text (a CSV's ids are read as text under auto, so that
    nothing is lost on reading) becomes integers when every id is written as a
    canonical integer (`7`, `-3`, `10`); a column with any id written with a
    leading zero (`007`, `00`), or too large for int64, stays text as written,
    so `007`, `7` and `00007` are three ids. Other numbers written otherwise
    (`7.0`, `1e3`) are read as numbers. A column that mixes numbers and names,
    or holds fractional numbers, is an error, because sorting or printing it
    would change what an id means (2 -> 2.0, "10" < "9").
    `int`: every id must be a whole number. `text`: every id becomes a string.
    """
    label = f"column {values.name!r} ({role})"
    if spec.id_type == "text":
        return values.astype(str).to_numpy(dtype=object)
    if pd.api.types.is_integer_dtype(values.dtype):
        return values.to_numpy()
    stored_as_text = pd.api.types.infer_dtype(values, skipna=True) == "string"
    if spec.id_type == "auto" and stored_as_text:
        written = _written_integers(values)
        if written is not None:
            return written  # every id a canonical integer: the integers they name
    numeric = pd.to_numeric(values, errors="coerce").to_numpy(np.float64, na_value=np.nan)
    is_number = np.isfinite(numeric)
    is_text = ~is_number
    if pd.api.types.is_bool_dtype(values.dtype):
        is_text[:] = True
    if spec.id_type == "auto" and (is_text.all() or (stored_as_text and is_number.all())):
        if is_text.all() or _codes_as_written(values):
            return values.astype(str).to_numpy(dtype=object)  # text in the file: kept as text
    if is_text.any():
        first = _first(is_text)
        text = (int(is_text.sum()), spec.where(first), values.iloc[first])
        number = None
        if spec.id_type != "int":
            row = _first(is_number)
            number = (int(is_number.sum()), spec.where(row), values.iloc[row])
        fail(spec.source, said.mixed_ids_message(label, spec.id_type, text, number))
    fractional = numeric != np.floor(numeric)
    if fractional.any():
        first = _first(fractional)
        message = said.fractional_ids_message(
            label, int(fractional.sum()), values.iloc[first], spec.where(first)
        )
        fail(spec.source, message)
    return numeric.astype(np.int64)


# An integer as a program writes it: no sign but a minus, no leading zero, no spaces.
_CANONICAL_INTEGER = r"^-?(?:0|[1-9][0-9]*)$"
# An id a number could not write back: a leading zero (`007`, `-01`, `00`).
_LEADING_ZERO = r"[+-]?0[0-9]"


def _written_integers(values: pd.Series) -> np.ndarray | None:
    """Return text ids as int64 when every one is a canonical integer within int64, else None."""
    text = pa.array(values, type=pa.string(), from_pandas=True)
    if text.null_count or not pc.all(pc.match_substring_regex(text, _CANONICAL_INTEGER)).as_py():
        return None
    try:
        return pc.cast(text, pa.int64()).to_numpy()
    except pa.ArrowInvalid:  # beyond int64
        return None


def _codes_as_written(values: pd.Series) -> bool:
    """Return whether text ids are codes to keep as written (a leading zero, or too large)."""
    text = values.astype(str)
    if text.str.match(_LEADING_ZERO).any():
        return True
    whole = text.str.match(_CANONICAL_INTEGER)
    return bool(whole.all())  # canonical but beyond int64 (_written_integers said no)


def _numeric_column(raw: pd.DataFrame, column: str) -> np.ndarray:
    return pd.to_numeric(raw[column], errors="coerce").to_numpy(np.float64, na_value=np.nan)


def _collapse_duplicates(
    user_codes: np.ndarray, item_codes: np.ndarray, n_items: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """Return (pair code of every row, first row of each pair), or None when no pair repeats.

    Pair codes follow first occurrence, so the first rows come out in input order.
    """
    keys = user_codes.astype(np.int64) * n_items + item_codes
    pair_codes, pairs = pd.factorize(keys)  # one hash pass, no sort
    if pairs.size == keys.size:
        return None
    # A row is its pair's first exactly when its code exceeds every code before it.
    running_max = np.maximum.accumulate(pair_codes)
    first = np.r_[True, running_max[1:] > running_max[:-1]]
    return pair_codes, np.flatnonzero(first)


def _check_columns(raw: pd.DataFrame, spec: IngestionSpec, wanted: dict[str, str]) -> None:
    """Raise when a mapped column is missing, or an id or time column holds nulls."""
    if len(raw) == 0:
        fail(spec.source, said.NO_ROWS)
    missing = [f"{col!r} ({role})" for role, col in wanted.items() if col not in raw.columns]
    if missing:
        fail(spec.source, said.missing_columns_message(missing, raw.columns))
    for role in ("user", "item", "timestamp"):
        column = wanted[role]
        nulls = int(raw[column].isna().sum())
        if nulls:
            first = _first(raw[column].isna().to_numpy())
            fail(spec.source, said.nulls_message(column, role, nulls, len(raw), spec.where(first)))


def _read_timestamps(raw: pd.DataFrame, spec: IngestionSpec, column: str) -> tuple[np.ndarray, str]:
    """Return (epoch seconds, unit used); raise on unparsable or implausible timestamps."""
    timestamps, unparsed, unit = parse_timestamps(raw[column], spec.timestamp_unit)
    unparsable = int(unparsed.sum())
    if unparsable:
        first = _first(unparsed)
        value = raw[column].iloc[first]
        message = said.unparsable_message(column, unparsable, len(raw), value, spec.where(first))
        fail(spec.source, message)
    _check_window(raw[column], timestamps, unit, spec)
    return timestamps, unit


def _kept_by_rating(
    raw: pd.DataFrame, spec: IngestionSpec, wanted: dict[str, str]
) -> tuple[np.ndarray, dict[str, int]]:
    """Return (rows kept, rows dropped by reason); raise on bad or out-of-range ratings."""
    keep = np.ones(len(raw), dtype=bool)
    dropped: dict[str, int] = {}
    if "rating" in wanted:
        column = wanted["rating"]
        rating = _numeric_column(raw, column)
        bad = int((~np.isfinite(rating)).sum())
        if bad:
            fail(spec.source, said.bad_ratings_message(column, bad))
        if spec.rating_range is not None:
            low, high = spec.rating_range
            outside = (rating < low) | (rating > high)
            if outside.any():
                message = said.ratings_outside_message(
                    column, int(outside.sum()), low, high, rating[outside][0]
                )
                fail(spec.source, message)
        if spec.rating_threshold is not None:
            keep &= rating >= spec.rating_threshold
            dropped["below_rating_threshold"] = int((~keep).sum())
    elif spec.rating_threshold is not None:
        fail(spec.source, said.THRESHOLD_WITHOUT_RATING)
    return keep, dropped


def _weights(raw: pd.DataFrame, spec: IngestionSpec, wanted: dict[str, str]) -> np.ndarray | None:
    """Return the weight column as float64 (None without one); raise on missing or negative."""
    if "weight" not in wanted:
        return None
    column = wanted["weight"]
    weight = _numeric_column(raw, column)
    bad = int((~np.isfinite(weight) | (weight < 0)).sum())
    if bad:
        fail(spec.source, said.bad_weights_message(column, bad))
    return weight


def validate_interactions(raw: pd.DataFrame, spec: IngestionSpec) -> tuple[pd.DataFrame, dict]:
    """Return the clean log (user_id, item_id, timestamp[, weight]) and an ingestion report.

    Raises InvalidInteractionsError naming the file, column and count for
    anything that would make the model or its evaluation silently wrong.
    A repeated (user, item) pair becomes one positive at its latest time (its
    weights summed), in the order of its first occurrence; the report counts it.
    """
    wanted = spec.columns_by_role()
    _check_columns(raw, spec, wanted)
    timestamps, unit = _read_timestamps(raw, spec, wanted["timestamp"])
    keep, dropped = _kept_by_rating(raw, spec, wanted)
    weight = _weights(raw, spec, wanted)
    if not keep.any():
        fail(spec.source, f"no interaction is left after dropping {dropped}")
    user_ids = typed_ids(raw[wanted["user"]], "user", spec)
    item_ids = typed_ids(raw[wanted["item"]], "item", spec)
    if not keep.all():
        user_ids, item_ids, timestamps = user_ids[keep], item_ids[keep], timestamps[keep]
        weight = None if weight is None else weight[keep]

    user_codes, user_uniques = factorize_ids(user_ids)
    item_codes, item_uniques = factorize_ids(item_ids)
    groups = _collapse_duplicates(user_codes, item_codes, len(item_uniques))
    dropped["duplicates_collapsed"] = 0
    if groups is not None:
        pair_codes, rows = groups
        latest = np.full(rows.size, np.iinfo(np.int64).min, dtype=np.int64)
        np.maximum.at(latest, pair_codes, timestamps)
        if weight is not None:
            weight = np.bincount(pair_codes, weights=weight, minlength=rows.size)
        dropped["duplicates_collapsed"] = int(len(user_ids) - rows.size)
        user_ids, item_ids, timestamps = user_ids[rows], item_ids[rows], latest
        user_codes, item_codes = user_codes[rows], item_codes[rows]

    clean = pd.DataFrame({"user_id": user_ids, "item_id": item_ids, "timestamp": timestamps})
    if weight is not None:
        clean["weight"] = weight.astype(np.float32)
    log = CleanLog(
        rows_read=len(raw),
        rows_dropped=dropped,
        interactions=len(clean),
        users=int(np.count_nonzero(np.bincount(user_codes, minlength=len(user_uniques)))),
        items=int(np.count_nonzero(np.bincount(item_codes, minlength=len(item_uniques)))),
        timestamp_unit=unit,
        first_timestamp=int(timestamps.min()),
        last_timestamp=int(timestamps.max()),
        weight_total=None if weight is None else float(weight.sum()),
    )
    return clean, said.ingestion_report(spec.source, spec.timestamp_unit, log)


def encode_ids(clean: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Return interactions with integer user/item indices, and the two id maps.

    Indices follow the sorted original ids. Interactions come out ordered by
    (user, timestamp, item), so each user's history is contiguous and in time
    order; the split and the sampler use that order, and any run on the same
    log writes the same bytes.
    """
    user_codes, user_ids = factorize_ids(clean["user_id"].to_numpy(), sort=True)
    item_codes, item_ids = factorize_ids(clean["item_id"].to_numpy(), sort=True)
    user_codes = user_codes.astype(np.int32)
    item_codes = item_codes.astype(np.int32)
    timestamps = clean["timestamp"].to_numpy(np.int64)
    order = sort_by_user_time(user_codes, timestamps, item_codes)
    interactions = pd.DataFrame(
        {"user": user_codes[order], "item": item_codes[order], "timestamp": timestamps[order]}
    )
    if "weight" in clean.columns:
        interactions["weight"] = clean["weight"].to_numpy(np.float32)[order]
    user_index = pd.DataFrame(
        {"user": np.arange(len(user_ids), dtype=np.int32), "user_id": user_ids}
    )
    item_index = pd.DataFrame(
        {"item": np.arange(len(item_ids), dtype=np.int32), "item_id": item_ids}
    )
    return interactions, user_index, item_index
