"""Train / validation / test splits of an encoded interaction log.

Validation and test hold positives only and never appear in train.
Validation chooses (the best epoch, defaults, sweeps); test reports. Held-out
rows that no model can score are dropped and counted: rows whose user has no
training interaction, and validation rows whose item has none. Test rows
whose item has no training interaction (but whose user has) are kept apart
as cold rows, scored through item features and reported as cold start.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from twotower_pipeline.data.interactions import (
    InvalidInteractionsError,
    is_sorted_by_user_time,
    sort_by_user_time,
)

STRATEGIES = ("leave_last_out", "global_temporal")


@dataclass(frozen=True)
class SplitSpec:
    """Which split, and its knobs (values come from parameters_split.yml; no defaults here)."""

    strategy: str  # leave_last_out | global_temporal
    min_train_interactions: int  # leave_last_out: users with fewer left for train stay in train
    temporal_quantiles: tuple[float, float]  # global_temporal: (validation, test) time cutoffs
    cold_item_fraction: float  # share of the catalogue whose every interaction leaves train

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"split.strategy must be leave_last_out or global_temporal, not {self.strategy!r}"
            )
        if self.min_train_interactions < 1:
            raise ValueError(
                f"split.min_train_interactions must be >= 1, not {self.min_train_interactions}"
            )
        quantiles = tuple(float(q) for q in self.temporal_quantiles)
        if len(quantiles) != 2 or not 0.0 < quantiles[0] < quantiles[1] < 1.0:
            raise ValueError(
                "split.temporal_quantiles must be two numbers 0 < validation < test < 1, "
                f"not {list(self.temporal_quantiles)}"
            )
        object.__setattr__(self, "temporal_quantiles", quantiles)
        if not 0.0 <= self.cold_item_fraction < 1.0:
            raise ValueError(
                f"split.cold_item_fraction must be in [0, 1), not {self.cold_item_fraction}"
            )

    @classmethod
    def from_params(cls, params: dict) -> SplitSpec:
        return cls(**params)


@dataclass
class Split:
    """The four tables a split writes, and its report."""

    train: pd.DataFrame
    val: pd.DataFrame  # validation positives (warm users and items)
    test: pd.DataFrame  # test positives (warm users and items)
    test_cold: pd.DataFrame  # test positives of warm users whose item has no training row
    report: dict


def _leave_last_out(interactions: pd.DataFrame, spec: SplitSpec) -> tuple[np.ndarray, np.ndarray]:
    """Return (validation mask, test mask): each eligible user's second-latest and latest row.

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
    # Two held out (test, validation) plus at least min_train_interactions left to train on.
    eligible = np.repeat(group_size >= 2 + spec.min_train_interactions, group_size)
    is_test_sorted = eligible & (position_from_latest == 0)
    is_val_sorted = eligible & (position_from_latest == 1)
    if order is None:
        return is_val_sorted, is_test_sorted
    is_val = np.zeros(n, dtype=bool)
    is_test = np.zeros(n, dtype=bool)
    is_val[order] = is_val_sorted
    is_test[order] = is_test_sorted
    return is_val, is_test


def _global_temporal(
    interactions: pd.DataFrame, spec: SplitSpec
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Return (validation mask, test mask, cutoffs): validation between the cutoffs, test after."""
    timestamps = interactions["timestamp"].to_numpy()
    val_q, test_q = spec.temporal_quantiles
    val_cutoff = int(np.quantile(timestamps, val_q, method="higher"))
    test_cutoff = int(np.quantile(timestamps, test_q, method="higher"))
    is_test = timestamps >= test_cutoff
    return (timestamps >= val_cutoff) & ~is_test, is_test, (val_cutoff, test_cutoff)


def cold_items(n_items: int, fraction: float, seed: int) -> np.ndarray:
    """Return the sorted item indices held out of training: round(fraction x n_items), seeded."""
    n_cold = int(round(fraction * n_items))
    rng = np.random.default_rng([seed, 7_919])
    return np.sort(rng.choice(n_items, size=n_cold, replace=False))


def _count_distinct(codes: np.ndarray, size: int) -> int:
    return int(np.count_nonzero(np.bincount(codes, minlength=size)))


def _iso(seconds: int) -> str:
    return pd.Timestamp(int(seconds), unit="s", tz="UTC").isoformat()


def _span(frame: pd.DataFrame) -> list[str] | None:
    ts = frame["timestamp"].to_numpy()
    return [_iso(ts.min()), _iso(ts.max())] if ts.size else None


def _empty_error(
    source: str, spec: SplitSpec, which: str, candidates: int, cold_users: int, cold_items: int
) -> InvalidInteractionsError:
    if spec.strategy == "leave_last_out":
        fix = (
            f"leave_last_out needs users with at least {2 + spec.min_train_interactions} "
            "interactions"
        )
    else:
        fix = f"move split.temporal_quantiles (now {list(spec.temporal_quantiles)}) apart"
    return InvalidInteractionsError(
        f"{source}: the {spec.strategy} split leaves {which} empty ({candidates} candidate "
        f"row(s), {cold_users} with users unseen in train, {cold_items} with items unseen in "
        f"train); {fix}"
    )


def split_interactions(
    interactions: pd.DataFrame, spec: SplitSpec, seed: int, source: str = "interactions"
) -> Split:
    """Return train, validation and test positives, cold test rows and the split report.

    Held-out rows are chosen first (leave_last_out or global_temporal); then
    the cold items (spec.cold_item_fraction of the catalogue, drawn with seed)
    lose every training row. Rows whose user has no training row left are
    dropped and counted; validation rows whose item has none are dropped and
    counted; such test rows go to test_cold. Raises InvalidInteractionsError
    when validation or test ends up empty.
    """
    if interactions.empty:
        raise InvalidInteractionsError(f"{source}: there are no interactions to split")

    cutoffs = None
    if spec.strategy == "leave_last_out":
        is_val, is_test = _leave_last_out(interactions, spec)
    else:
        is_val, is_test, cutoffs = _global_temporal(interactions, spec)

    users = interactions["user"].to_numpy()
    items = interactions["item"].to_numpy()
    n_users = int(users.max()) + 1
    n_items = int(items.max()) + 1
    held_out_cold = np.zeros(n_items, dtype=bool)
    held_out_cold[cold_items(n_items, spec.cold_item_fraction, seed)] = True
    in_train = ~is_val & ~is_test
    removed_cold = in_train & held_out_cold[items]
    in_train &= ~removed_cold
    item_in_train = np.bincount(items[in_train], minlength=n_items) > 0
    user_in_train = np.bincount(users[in_train], minlength=n_users) > 0

    val_candidates = np.flatnonzero(is_val)
    val_warm_user = user_in_train[users[val_candidates]]
    val_warm_item = item_in_train[items[val_candidates]]
    val_rows = val_candidates[val_warm_user & val_warm_item]
    val_cold_users = int((~val_warm_user).sum())
    val_cold_items = int((val_warm_user & ~val_warm_item).sum())

    test_candidates = np.flatnonzero(is_test)
    test_warm_user = user_in_train[users[test_candidates]]
    test_warm_item = item_in_train[items[test_candidates]]
    test_rows = test_candidates[test_warm_user & test_warm_item]
    test_cold_rows = test_candidates[test_warm_user & ~test_warm_item]
    test_cold_users = int((~test_warm_user).sum())

    if val_rows.size == 0:
        raise _empty_error(
            source, spec, "validation", val_candidates.size, val_cold_users, val_cold_items
        )
    if test_rows.size == 0:
        raise _empty_error(
            source, spec, "test", test_candidates.size, test_cold_users, test_cold_rows.size
        )

    train = interactions.loc[in_train].reset_index(drop=True)
    val = interactions.iloc[val_rows].reset_index(drop=True)
    test = interactions.iloc[test_rows].reset_index(drop=True)
    test_cold = interactions.iloc[test_cold_rows].reset_index(drop=True)
    all_users = _count_distinct(users, n_users)
    val_users = _count_distinct(val["user"].to_numpy(), n_users)
    test_users = _count_distinct(test["user"].to_numpy(), n_users)
    report = {
        "strategy": spec.strategy,
        "train_interactions": len(train),
        "val_interactions": len(val),
        "test_interactions": len(test),
        "test_cold_interactions": len(test_cold),
        "train_users": _count_distinct(train["user"].to_numpy(), n_users),
        "train_items": int(item_in_train.sum()),
        "val_users": val_users,
        "val_items": _count_distinct(val["item"].to_numpy(), n_items),
        "test_users": test_users,
        "test_items": _count_distinct(test["item"].to_numpy(), n_items),
        "test_cold_users": _count_distinct(test_cold["user"].to_numpy(), n_users),
        "test_cold_items": _count_distinct(test_cold["item"].to_numpy(), n_items),
        "users_without_validation": all_users - val_users,
        "users_without_test": all_users - test_users,
        "val_candidates": int(val_candidates.size),
        "val_dropped_cold_users": val_cold_users,
        "val_dropped_cold_items": val_cold_items,
        "test_candidates": int(test_candidates.size),
        "test_dropped_cold_users": test_cold_users,
        "items_without_training": int(n_items - item_in_train.sum()),
        "cold_item_fraction": spec.cold_item_fraction,
        "cold_items_held_out": int(held_out_cold.sum()),
        "train_rows_removed_cold_items": int(removed_cold.sum()),
        "train_time_span": _span(train),
        "val_time_span": _span(val),
        "test_time_span": _span(test),
    }
    if cutoffs is None:
        report["min_train_interactions"] = spec.min_train_interactions
    else:
        report["temporal_quantiles"] = list(spec.temporal_quantiles)
        report["temporal_cutoffs"] = [_iso(cutoffs[0]), _iso(cutoffs[1])]
    return Split(train, val, test, test_cold, report)
