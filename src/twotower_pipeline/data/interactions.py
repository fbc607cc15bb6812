"""Checking and encoding raw interaction logs: the project's input boundary.

Every problem found here is reported once, naming the file, the column and
how many rows are affected; past this module the data is trusted. All work is
vectorised (pandas hashing, numpy sorts): no Python loop runs per row, so a
25M-row log is checked in seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from twotower_pipeline.config.errors import PipelineInputError

ROLES = ("user", "item", "timestamp", "rating", "weight")
_DEFAULT_COLUMNS = {"user": "user_id", "item": "item_id", "timestamp": "timestamp"}
TIMESTAMP_UNITS = ("auto", "s", "ms", "iso")
ID_TYPES = ("auto", "int", "text")
# `auto` reads epoch numbers as milliseconds when their median exceeds this: epoch ms
# pass it in 1973, epoch seconds not before the year 5138.
_MS_THRESHOLD = 1e11
_PARAMETERS = (
    "source",
    "columns",
    "encoding",
    "id_type",
    "timestamp_unit",
    "timestamp_window",
    "rating_threshold",
    "rating_range",
)


class InvalidInteractionsError(PipelineInputError, ValueError):
    """The raw interaction log cannot be used as it is."""


@dataclass(frozen=True)
class IngestionSpec:
    """How to read the raw log: which column is which, and how to turn it into positives."""

    # No defaults: the values come from conf/base (parameters_ingestion.yml).
    source: str
    columns: dict[str, str | None]
    timestamp_unit: str  # auto | s | ms | iso
    rating_threshold: float | None
    rating_range: tuple[float, float] | None
    encoding: str  # of a text file; the catalog's reader is given it (hooks.py)
    id_type: str  # auto | int | text
    # Plausible time span, epoch seconds; None: unchecked. From parameters:
    # timestamp_window.earliest (a date) and .latest (a date, or null: the run's clock + 1 day).
    earliest: int | None
    latest: int | None
    first_line: int | None = None  # file line of the first data row (CSV), known at load time

    @classmethod
    def from_params(cls, params: dict) -> IngestionSpec:
        unknown = set(params) - set(_PARAMETERS)
        if unknown:
            raise ValueError(f"unknown ingestion parameter(s): {sorted(unknown)}")
        missing = [key for key in _PARAMETERS if key not in params]
        if missing:
            raise ValueError(f"missing ingestion parameter(s): {missing} (see conf/base)")
        columns = dict(params["columns"] or {})
        bad_roles = set(columns) - set(ROLES)
        if bad_roles:
            raise ValueError(
                f"ingestion.columns has unknown role(s) {sorted(bad_roles)}; roles are {ROLES}"
            )
        unit = params["timestamp_unit"]
        if unit not in TIMESTAMP_UNITS:
            raise ValueError(
                f"ingestion.timestamp_unit must be one of {TIMESTAMP_UNITS}, not {unit!r}"
            )
        id_type = params["id_type"]
        if id_type not in ID_TYPES:
            raise ValueError(f"ingestion.id_type must be one of {ID_TYPES}, not {id_type!r}")
        rating_range = params["rating_range"]
        earliest, latest = _window(params["timestamp_window"])
        return cls(
            source=params["source"],
            columns=columns,
            timestamp_unit=unit,
            rating_threshold=params["rating_threshold"],
            rating_range=tuple(rating_range) if rating_range else None,
            encoding=params["encoding"],
            id_type=id_type,
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


def _shown(value) -> str:
    """Return a raw cell as a message shows it: 1.5, 'bob' (numpy scalars as plain numbers)."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _date(seconds: int) -> str:
    return pd.Timestamp(seconds, unit="s", tz="UTC").strftime("%Y-%m-%d %H:%M")


def _fail(spec: IngestionSpec, message: str) -> None:
    raise InvalidInteractionsError(f"{spec.source}: {message}")


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
        unit = "ms" if finite.size and np.median(finite) > _MS_THRESHOLD else "s"
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
    first = int(np.flatnonzero(outside)[0])
    bounds = (
        f"[{'-' if spec.earliest is None else _date(low)}, "
        f"{'-' if spec.latest is None else _date(high)}]"
    )
    _fail(
        spec,
        f"column {values.name!r} (timestamp) has {int(outside.sum())} timestamp(s) outside "
        f"{bounds} UTC (first: {_shown(values.iloc[first])} at {spec.where(first)}, read as "
        f"{_date(int(seconds[first]))} with unit {unit}); fix those rows, set "
        "ingestion.timestamp_unit, or widen ingestion.timestamp_window",
    )


def typed_ids(values: pd.Series, role: str, spec: IngestionSpec) -> np.ndarray:
    """Return one id column as integers or as text, never a silent mix of the two.

    `auto`: integer columns stay integers (floats that are all whole numbers
    become integers); text columns stay text; a column that mixes numbers and
    text, or holds fractional numbers, is an error, because sorting or
    printing it would change what an id means (2 -> 2.0, "10" < "9").
    `int`: every id must be a whole number. `text`: every id becomes a string.
    """
    column = f"column {values.name!r} ({role})"
    if spec.id_type == "text":
        return values.astype(str).to_numpy(dtype=object)
    if pd.api.types.is_integer_dtype(values.dtype):
        return values.to_numpy()
    numeric = pd.to_numeric(values, errors="coerce").to_numpy(np.float64, na_value=np.nan)
    is_number = np.isfinite(numeric)
    is_text = ~is_number
    if pd.api.types.is_bool_dtype(values.dtype):
        is_text[:] = True
    stored_as_text = pd.api.types.infer_dtype(values, skipna=True) == "string"
    if spec.id_type == "auto" and (is_text.all() or (stored_as_text and is_number.all())):
        return values.astype(str).to_numpy(dtype=object)  # text in the file: kept as text
    if is_text.any():
        first = int(np.flatnonzero(is_text)[0])
        text = f"first text {_shown(values.iloc[first])} at {spec.where(first)}"
        if spec.id_type == "int":
            detail = f"{int(is_text.sum())} id(s) that are not numbers ({text})"
        else:
            number = int(np.flatnonzero(is_number)[0])
            detail = (
                f"{int(is_number.sum())} numeric and {int(is_text.sum())} text id(s) (first "
                f"number {_shown(values.iloc[number])} at {spec.where(number)}, {text})"
            )
        _fail(spec, f"{column} has {detail}; set ingestion.id_type: text if the ids are names")
    fractional = numeric != np.floor(numeric)
    if fractional.any():
        first = int(np.flatnonzero(fractional)[0])
        _fail(
            spec,
            f"{column} has {int(fractional.sum())} fractional id(s) (first "
            f"{_shown(values.iloc[first])} at {spec.where(first)}); ids must be whole numbers, "
            "or set ingestion.id_type: text",
        )
    return numeric.astype(np.int64)


def _numeric_column(raw: pd.DataFrame, column: str) -> np.ndarray:
    return pd.to_numeric(raw[column], errors="coerce").to_numpy(np.float64, na_value=np.nan)


def factorize_ids(values: np.ndarray, sort: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Return (codes, uniques) like pandas.factorize; integer ids are coded by their rank.

    Integer ids within a moderate range (as MovieLens' are) need no hashing:
    a presence array and a cumulative sum give every id its rank, in one
    pass and already sorted.
    """
    if values.dtype.kind in "iu" and values.size:
        low, high = int(values.min()), int(values.max())
        if high - low < max(4 * values.size, 1 << 20):
            shifted = values - low
            present = np.zeros(high - low + 1, dtype=bool)
            present[shifted] = True
            rank = np.cumsum(present, dtype=np.int64) - 1
            uniques = (np.flatnonzero(present) + low).astype(values.dtype)
            return rank[shifted], uniques
    return pd.factorize(values, sort=sort)


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


def validate_interactions(raw: pd.DataFrame, spec: IngestionSpec) -> tuple[pd.DataFrame, dict]:
    """Return the clean log (user_id, item_id, timestamp[, weight]) and an ingestion report.

    Raises InvalidInteractionsError naming the file, column and count for
    anything that would make the model or its evaluation silently wrong.
    A repeated (user, item) pair becomes one positive at its latest time (its
    weights summed), in the order of its first occurrence; the report counts it.
    """
    rows_read = len(raw)
    if rows_read == 0:
        _fail(spec, "the file holds no rows")

    wanted = {role: spec.column(role) for role in ROLES if spec.column(role)}
    missing = [f"{col!r} ({role})" for role, col in wanted.items() if col not in raw.columns]
    if missing:
        _fail(
            spec,
            f"missing column(s) {', '.join(missing)}; the file has {list(map(str, raw.columns))}. "
            "Map your columns with ingestion.columns in parameters.",
        )

    for role in ("user", "item", "timestamp"):
        column = wanted[role]
        nulls = int(raw[column].isna().sum())
        if nulls:
            first = int(np.flatnonzero(raw[column].isna().to_numpy())[0])
            _fail(
                spec,
                f"column {column!r} ({role}) has {nulls} null value(s) of {rows_read} rows "
                f"(first at {spec.where(first)})",
            )

    timestamps, unparsed, unit = parse_timestamps(raw[wanted["timestamp"]], spec.timestamp_unit)
    unparsable = int(unparsed.sum())
    if unparsable:
        first = int(np.flatnonzero(unparsed)[0])
        _fail(
            spec,
            f"column {wanted['timestamp']!r} (timestamp) has {unparsable} unparsable "
            f"timestamp(s) of {rows_read} rows (first: {raw[wanted['timestamp']].iloc[first]!r} "
            f"at {spec.where(first)}); expected epoch seconds, milliseconds or ISO 8601",
        )
    _check_window(raw[wanted["timestamp"]], timestamps, unit, spec)

    keep = np.ones(rows_read, dtype=bool)
    dropped: dict[str, int] = {}
    if "rating" in wanted:
        column = wanted["rating"]
        rating = _numeric_column(raw, column)
        bad = int((~np.isfinite(rating)).sum())
        if bad:
            _fail(spec, f"column {column!r} (rating) has {bad} missing or non-numeric rating(s)")
        if spec.rating_range is not None:
            low, high = spec.rating_range
            outside = (rating < low) | (rating > high)
            if outside.any():
                _fail(
                    spec,
                    f"column {column!r} (rating) has {int(outside.sum())} rating(s) outside the "
                    f"declared range [{low}, {high}] (e.g. {rating[outside][0]:g})",
                )
        if spec.rating_threshold is not None:
            keep &= rating >= spec.rating_threshold
            dropped["below_rating_threshold"] = int((~keep).sum())
    elif spec.rating_threshold is not None:
        _fail(spec, "ingestion.rating_threshold is set but no rating column is mapped")

    weight = None
    if "weight" in wanted:
        column = wanted["weight"]
        weight = _numeric_column(raw, column)
        bad = int((~np.isfinite(weight) | (weight < 0)).sum())
        if bad:
            _fail(spec, f"column {column!r} (weight) has {bad} missing or negative weight(s)")

    if not keep.any():
        _fail(spec, f"no interaction is left after dropping {dropped}")
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

    n_users = int(np.count_nonzero(np.bincount(user_codes, minlength=len(user_uniques))))
    n_items = int(np.count_nonzero(np.bincount(item_codes, minlength=len(item_uniques))))
    report = {
        "source": spec.source,
        "rows_read": rows_read,
        "rows_dropped": dropped,
        "interactions": len(clean),
        "users": n_users,
        "items": n_items,
        "density": len(clean) / (n_users * n_items),
        "timestamp_unit": unit,
        "timestamp_unit_from": (
            "ingestion.timestamp_unit"
            if spec.timestamp_unit != "auto"
            else "inferred from the median value (ms above 1e11)"
            if unit in ("s", "ms")
            else "inferred: text timestamps"
        ),
        "time_span": [
            pd.Timestamp(int(timestamps.min()), unit="s", tz="UTC").isoformat(),
            pd.Timestamp(int(timestamps.max()), unit="s", tz="UTC").isoformat(),
        ],
    }
    if weight is not None:
        report["weight_total"] = float(weight.sum())
    return clean, report


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


def sort_by_user_time(users: np.ndarray, timestamps: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Return the permutation that orders rows by (user, timestamp, item).

    One sort of a single int64 key (user, time) when it fits, then the rare
    rows that tie on it are ordered by item; three-key lexsort otherwise.
    """
    if users.size == 0:
        return np.arange(0)
    t_low = int(timestamps.min())
    span = int(timestamps.max()) - t_low + 1
    if (int(users.max()) + 1) * span >= 2**62:
        return np.lexsort((items, timestamps, users))
    key = users.astype(np.int64) * span + (timestamps - t_low)
    order = np.argsort(key)
    sorted_key = key[order]
    tie = sorted_key[1:] == sorted_key[:-1]
    if tie.any():
        in_tie = np.zeros(order.size, dtype=bool)
        in_tie[1:] |= tie
        in_tie[:-1] |= tie
        slots = np.flatnonzero(in_tie)
        rows = order[slots]
        order[slots] = rows[np.lexsort((items[rows], key[rows]))]
    return order


def is_sorted_by_user_time(users: np.ndarray, timestamps: np.ndarray, items: np.ndarray) -> bool:
    """Return whether rows are already in (user, timestamp, item) order."""
    if users.size < 2:
        return True
    du = np.diff(users.astype(np.int64))
    if (du < 0).any():
        return False
    same_user = du == 0
    dt = np.diff(timestamps)
    if (same_user & (dt < 0)).any():
        return False
    tie = same_user & (dt == 0)
    return not (tie & (np.diff(items.astype(np.int64)) < 0)).any()
