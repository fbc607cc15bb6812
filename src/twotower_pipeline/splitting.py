"""Train/validation splits of an encoded interaction log. Validation holds positives only."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from twotower_pipeline.interactions import (
    InvalidInteractionsError,
    is_sorted_by_user_time,
    sort_by_user_time,
)


@dataclass(frozen=True)
class SplitSpec:
    """Which split, and its knobs."""

    strategy: str = "leave_last_out"  # leave_last_out | global_temporal
    holdout_per_user: int = 1
    min_train_interactions: int = 2
    temporal_quantile: float = 0.9

    @classmethod
    def from_params(cls, params: dict) -> SplitSpec:
        return cls(**params)


def _leave_last_out(interactions: pd.DataFrame, spec: SplitSpec) -> np.ndarray:
    """Return a mask of the rows that go to validation: each eligible user's latest ones.

    "Latest" is by timestamp, ties broken by the larger item index, so the
    split never depends on row order. Interactions that come from encode_ids
    are already in (user, timestamp, item) order and need no sort.
    """
    users = interactions["user"].to_numpy()
    timestamps = interactions["timestamp"].to_numpy(np.int64)
    items = interactions["item"].to_numpy()
    if is_sorted_by_user_time(users, timestamps, items):
        order = None
        users_sorted = users
    else:
        order = sort_by_user_time(users, timestamps, items)
        users_sorted = users[order]
    n = users_sorted.size
    group_end = np.r_[np.flatnonzero(users_sorted[1:] != users_sorted[:-1]) + 1, n]
    group_size = np.diff(np.r_[0, group_end])
    position_from_latest = np.repeat(group_end, group_size) - 1 - np.arange(n)
    eligible = np.repeat(
        group_size >= spec.holdout_per_user + spec.min_train_interactions, group_size
    )
    is_val_sorted = eligible & (position_from_latest < spec.holdout_per_user)
    if order is None:
        return is_val_sorted
    is_val = np.zeros(n, dtype=bool)
    is_val[order] = is_val_sorted
    return is_val


def _global_temporal(interactions: pd.DataFrame, spec: SplitSpec) -> tuple[np.ndarray, int]:
    """Return (validation mask, cutoff): every interaction at or after the time quantile."""
    timestamps = interactions["timestamp"].to_numpy()
    cutoff = int(np.quantile(timestamps, spec.temporal_quantile, method="higher"))
    return timestamps >= cutoff, cutoff


def _count_distinct(codes: np.ndarray, size: int) -> int:
    return int(np.count_nonzero(np.bincount(codes, minlength=size)))


def _iso(seconds: int) -> str:
    return pd.Timestamp(int(seconds), unit="s", tz="UTC").isoformat()


def split_interactions(
    interactions: pd.DataFrame, spec: SplitSpec, source: str = "interactions"
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Return (train, validation positives, split report).

    Validation rows whose item or user never occurs in train are dropped and
    counted: no model can score them, and keeping them would punish every
    model alike while hiding the reason. Raises InvalidInteractionsError when
    validation ends up empty.
    """
    if spec.holdout_per_user < 1 or spec.min_train_interactions < 1:
        raise ValueError("split.holdout_per_user and split.min_train_interactions must be >= 1")
    if not 0.0 < spec.temporal_quantile < 1.0:
        raise ValueError(f"split.temporal_quantile must be in (0, 1), not {spec.temporal_quantile}")
    if interactions.empty:
        raise InvalidInteractionsError(f"{source}: there are no interactions to split")

    cutoff = None
    if spec.strategy == "leave_last_out":
        is_val = _leave_last_out(interactions, spec)
    elif spec.strategy == "global_temporal":
        is_val, cutoff = _global_temporal(interactions, spec)
    else:
        raise ValueError(
            f"split.strategy must be leave_last_out or global_temporal, not {spec.strategy!r}"
        )

    users = interactions["user"].to_numpy()
    items = interactions["item"].to_numpy()
    n_users = int(users.max()) + 1
    n_items = int(items.max()) + 1
    in_train = ~is_val
    item_in_train = np.bincount(items[in_train], minlength=n_items) > 0
    user_in_train = np.bincount(users[in_train], minlength=n_users) > 0
    candidate_rows = np.flatnonzero(is_val)
    warm_item = item_in_train[items[candidate_rows]]
    warm_user = user_in_train[users[candidate_rows]]
    val_rows = candidate_rows[warm_item & warm_user]

    if val_rows.size == 0:
        raise InvalidInteractionsError(
            f"{source}: the {spec.strategy} split leaves validation empty "
            f"({candidate_rows.size} candidate row(s), {int((~warm_item).sum())} with items "
            f"unseen in train, {int((warm_item & ~warm_user).sum())} with users unseen in train); "
            + (
                f"leave_last_out needs users with at least "
                f"{spec.holdout_per_user + spec.min_train_interactions} interactions"
                if cutoff is None
                else f"lower split.temporal_quantile (now {spec.temporal_quantile})"
            )
        )

    train = interactions.loc[in_train].reset_index(drop=True)
    val = interactions.iloc[val_rows].reset_index(drop=True)
    train_ts = train["timestamp"].to_numpy()
    val_ts = val["timestamp"].to_numpy()
    val_users = _count_distinct(val["user"].to_numpy(), n_users)
    report = {
        "strategy": spec.strategy,
        "train_interactions": len(train),
        "val_interactions": len(val),
        "train_users": _count_distinct(train["user"].to_numpy(), n_users),
        "train_items": _count_distinct(train["item"].to_numpy(), n_items),
        "val_users": val_users,
        "val_items": _count_distinct(val["item"].to_numpy(), n_items),
        "users_without_validation": _count_distinct(users, n_users) - val_users,
        "val_candidates": int(candidate_rows.size),
        "val_dropped_cold_items": int((~warm_item).sum()),
        "val_dropped_cold_users": int((warm_item & ~warm_user).sum()),
        "train_time_span": [_iso(train_ts.min()), _iso(train_ts.max())] if train_ts.size else None,
        "val_time_span": [_iso(val_ts.min()), _iso(val_ts.max())],
    }
    if spec.strategy == "leave_last_out":
        report["holdout_per_user"] = spec.holdout_per_user
        report["min_train_interactions"] = spec.min_train_interactions
    else:
        report["temporal_quantile"] = spec.temporal_quantile
        report["temporal_cutoff"] = _iso(cutoff)
    return train, val, report
