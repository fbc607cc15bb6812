"""Checking and encoding raw interaction logs: the project's input boundary.

Every problem found here is reported once, naming the file, the column and
how many rows are affected; past this module the data is trusted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd


class InvalidInteractionsError(ValueError):
    """The raw interaction log cannot be used as it is."""


@dataclass(frozen=True)
class IngestionSpec:
    """How to read the raw log: which column is which, and how to turn it into positives."""

    source: str
    columns: dict[str, str | None] = field(default_factory=dict)
    timestamp_unit: str = "auto"  # auto | s | ms | iso
    rating_threshold: float | None = None
    rating_range: tuple[float, float] | None = None

    @classmethod
    def from_params(cls, params: dict) -> IngestionSpec:
        rating_range = params.get("rating_range")
        return cls(
            source=params["source"],
            columns=dict(params.get("columns") or {}),
            timestamp_unit=params.get("timestamp_unit", "auto"),
            rating_threshold=params.get("rating_threshold"),
            rating_range=tuple(rating_range) if rating_range else None,
        )

    def column(self, role: str) -> str | None:
        default = {"user": "user_id", "item": "item_id", "timestamp": "timestamp"}.get(role)
        return self.columns.get(role, default)


def _fail(spec: IngestionSpec, message: str) -> None:
    raise InvalidInteractionsError(f"{spec.source}: {message}")


def _parse_timestamps(values: pd.Series, unit: str) -> tuple[np.ndarray, np.ndarray]:
    """Return (epoch seconds as int64, mask of values that could not be parsed)."""
    if unit == "auto":
        unit = "s_or_ms" if pd.api.types.is_numeric_dtype(values) else "iso"
    if unit == "iso":
        parsed = pd.to_datetime(values, errors="coerce", utc=True, format="mixed")
        bad = parsed.isna().to_numpy()
        seconds = parsed.dt.as_unit("s").array.asi8.copy()
        seconds[bad] = 0
        return seconds, bad
    numeric = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(numeric)
    if unit == "s_or_ms":
        # Epoch milliseconds pass 10^11 from 1973 on; epoch seconds not before year 5138.
        finite = numeric[~bad]
        unit = "ms" if finite.size and finite.max() > 1e11 else "s"
    if unit == "ms":
        numeric = numeric / 1000.0
    elif unit != "s":
        raise ValueError(f"timestamp_unit must be auto, s, ms or iso, not {unit!r}")
    return np.floor(np.where(bad, 0.0, numeric)).astype(np.int64), bad


def validate_interactions(raw: pd.DataFrame, spec: IngestionSpec) -> tuple[pd.DataFrame, dict]:
    """Return the clean log (user_id, item_id, timestamp[, weight]) and an ingestion report.

    Raises InvalidInteractionsError naming the file, column and count for
    anything that would make the model or its evaluation silently wrong.
    """
    rows_read = len(raw)
    if rows_read == 0:
        _fail(spec, "the file holds no rows")

    roles = ["user", "item", "timestamp", "rating", "weight"]
    wanted = {role: spec.column(role) for role in roles if spec.column(role)}
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
            _fail(spec, f"column {column!r} has {nulls} null value(s) of {rows_read} rows")

    timestamps, unparsed = _parse_timestamps(raw[wanted["timestamp"]], spec.timestamp_unit)
    unparsable = int(unparsed.sum())
    if unparsable:
        first_bad = raw[wanted["timestamp"]].to_numpy()[np.flatnonzero(unparsed)[0]]
        _fail(
            spec,
            f"column {wanted['timestamp']!r} has {unparsable} unparsable timestamp(s) "
            f"(first: {first_bad!r}); expected epoch seconds, milliseconds or ISO 8601",
        )

    clean = pd.DataFrame(
        {
            "user_id": raw[wanted["user"]].to_numpy(),
            "item_id": raw[wanted["item"]].to_numpy(),
            "timestamp": timestamps,
        }
    )
    dropped: dict[str, int] = {}

    if "rating" in wanted:
        rating = pd.to_numeric(raw[wanted["rating"]], errors="coerce").to_numpy(np.float64)
        bad = int((~np.isfinite(rating)).sum())
        if bad:
            _fail(spec, f"column {wanted['rating']!r} has {bad} missing or non-numeric rating(s)")
        if spec.rating_range is not None:
            low, high = spec.rating_range
            outside = int(((rating < low) | (rating > high)).sum())
            if outside:
                _fail(
                    spec,
                    f"column {wanted['rating']!r} has {outside} rating(s) outside the declared "
                    f"range [{low}, {high}]",
                )
        if spec.rating_threshold is not None:
            keep = rating >= spec.rating_threshold
            dropped["below_rating_threshold"] = int((~keep).sum())
            clean = clean.loc[keep]

    if "weight" in wanted:
        weight = pd.to_numeric(raw[wanted["weight"]], errors="coerce").to_numpy(np.float64)
        bad = int((~np.isfinite(weight) | (weight < 0)).sum())
        if bad:
            _fail(spec, f"column {wanted['weight']!r} has {bad} missing or negative weight(s)")
        clean["weight"] = weight[clean.index.to_numpy()]

    if clean.empty:
        _fail(spec, f"no interaction is left after dropping {dropped}")

    # A repeated (user, item) pair is one positive: keep its latest time, sum its weight.
    before = len(clean)
    clean = clean.sort_values(["user_id", "item_id", "timestamp"], kind="stable")
    aggregations = {"timestamp": "max"}
    if "weight" in clean.columns:
        aggregations["weight"] = "sum"
    clean = clean.groupby(["user_id", "item_id"], sort=False, as_index=False).agg(aggregations)
    dropped["duplicates_collapsed"] = before - len(clean)

    report = {
        "source": spec.source,
        "rows_read": rows_read,
        "rows_dropped": dropped,
        "interactions": len(clean),
        "users": int(clean["user_id"].nunique()),
        "items": int(clean["item_id"].nunique()),
    }
    return clean.reset_index(drop=True), report


def encode_ids(clean: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Return interactions with integer user/item indices, and the two id maps."""
    user_codes, user_ids = pd.factorize(clean["user_id"], sort=True)
    item_codes, item_ids = pd.factorize(clean["item_id"], sort=True)
    interactions = pd.DataFrame(
        {
            "user": user_codes.astype(np.int32),
            "item": item_codes.astype(np.int32),
            "timestamp": clean["timestamp"].to_numpy(np.int64),
        }
    )
    if "weight" in clean.columns:
        interactions["weight"] = clean["weight"].to_numpy(np.float32)
    user_index = pd.DataFrame({"user": np.arange(len(user_ids), dtype=np.int32), "user_id": user_ids})
    item_index = pd.DataFrame({"item": np.arange(len(item_ids), dtype=np.int32), "item_id": item_ids})
    return interactions, user_index, item_index
