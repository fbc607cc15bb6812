"""Train/validation splits of an encoded interaction log. Validation holds positives only."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from twotower_pipeline.interactions import InvalidInteractionsError


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
    """Return a mask of the rows that go to validation: each user's latest ones."""
    # Latest first within a user; ties on time broken by item index, so the split
    # never depends on row order.
    order = np.lexsort(
        (-interactions["item"].to_numpy(np.int64),
         -interactions["timestamp"].to_numpy(np.int64),
         interactions["user"].to_numpy(np.int64))
    )
    users_sorted = interactions["user"].to_numpy()[order]
    group_start = np.r_[0, np.flatnonzero(np.diff(users_sorted)) + 1]
    group_size = np.diff(np.r_[group_start, users_sorted.size])
    position_from_latest = np.arange(users_sorted.size) - np.repeat(group_start, group_size)
    size_of_group = np.repeat(group_size, group_size)
    eligible = size_of_group >= spec.holdout_per_user + spec.min_train_interactions
    is_val_sorted = eligible & (position_from_latest < spec.holdout_per_user)
    is_val = np.zeros(users_sorted.size, dtype=bool)
    is_val[order] = is_val_sorted
    return is_val


def _global_temporal(interactions: pd.DataFrame, spec: SplitSpec) -> tuple[np.ndarray, int]:
    timestamps = interactions["timestamp"].to_numpy()
    cutoff = int(np.quantile(timestamps, spec.temporal_quantile, method="higher"))
    return timestamps >= cutoff, cutoff


def split_interactions(
    interactions: pd.DataFrame, spec: SplitSpec, source: str = "interactions"
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Return (train, validation positives, split report).

    Validation rows whose item or user never occurs in train are dropped and
    counted: no model can score them, and keeping them would punish every
    model alike while hiding the reason.
    """
    cutoff = None
    if spec.strategy == "leave_last_out":
        is_val = _leave_last_out(interactions, spec)
    elif spec.strategy == "global_temporal":
        is_val, cutoff = _global_temporal(interactions, spec)
    else:
        raise ValueError(f"split.strategy must be leave_last_out or global_temporal, not {spec.strategy!r}")

    train = interactions.loc[~is_val].reset_index(drop=True)
    candidates = interactions.loc[is_val]
    n_items = int(interactions["item"].max()) + 1
    n_users = int(interactions["user"].max()) + 1
    item_in_train = np.bincount(train["item"], minlength=n_items) > 0
    user_in_train = np.bincount(train["user"], minlength=n_users) > 0
    warm_item = item_in_train[candidates["item"].to_numpy()]
    warm_user = user_in_train[candidates["user"].to_numpy()]
    val = candidates.loc[warm_item & warm_user].reset_index(drop=True)

    if val.empty:
        raise InvalidInteractionsError(
            f"{source}: the {spec.strategy} split leaves validation empty "
            f"({len(candidates)} candidate row(s), {int((~warm_item).sum())} with items unseen in "
            f"train, {int((~warm_user).sum())} with users unseen in train); users need at least "
            f"{spec.holdout_per_user + spec.min_train_interactions} interactions"
        )

    report = {
        "strategy": spec.strategy,
        "train_interactions": len(train),
        "val_interactions": len(val),
        "train_users": int(train["user"].nunique()),
        "train_items": int(train["item"].nunique()),
        "val_users": int(val["user"].nunique()),
        "users_in_train_only": int(n_users - val["user"].nunique()),
        "val_dropped_cold_items": int((~warm_item).sum()),
        "val_dropped_cold_users": int((warm_item & ~warm_user).sum()),
        "train_time_span": [int(train["timestamp"].min()), int(train["timestamp"].max())],
        "val_time_span": [int(val["timestamp"].min()), int(val["timestamp"].max())],
    }
    if cutoff is not None:
        report["temporal_cutoff"] = cutoff
    return train, val, report
