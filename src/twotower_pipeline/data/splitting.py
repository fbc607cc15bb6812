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

from twotower_pipeline.data.ingestion_report import InvalidInteractionsError, iso_utc
from twotower_pipeline.data.ordering import is_sorted_by_user_time, sort_by_user_time


@dataclass(frozen=True)
class SplitSpec:
    """Which split, and its knobs (values come from parameters_split.yml; no defaults here).

    config/schema.py checks the strategy, the quantiles and the cold fraction; this
    object trusts them.
    """

    strategy: str  # leave_last_out | global_temporal
    min_train_interactions: int  # leave_last_out: users with fewer left for train stay in train
    temporal_quantiles: tuple[float, float]  # global_temporal: (validation, test) time cutoffs
    cold_item_fraction: float  # share of the catalogue whose every interaction leaves train

    def __post_init__(self) -> None:
        # The schema lets 0 through; a user needs one training row to be scored at all.
        if self.min_train_interactions < 1:
            raise ValueError(
                f"split.min_train_interactions must be >= 1, not {self.min_train_interactions}"
            )
        quantiles = tuple(float(q) for q in self.temporal_quantiles)
        object.__setattr__(self, "temporal_quantiles", quantiles)

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


def empty_split_error(
    source: str, spec: SplitSpec, which: str, candidates: int, cold_users: int, cold_items: int
) -> InvalidInteractionsError:
    """Return the error for a split that leaves `which` (validation or test) empty."""
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


def raise_if_empty(source: str, spec: SplitSpec, counts: dict[str, int]) -> None:
    """Raise empty_split_error when validation or test keeps no row (counts: the report's)."""
    if counts["val_interactions"] == 0:
        raise empty_split_error(
            source,
            spec,
            "validation",
            counts["val_candidates"],
            counts["val_dropped_cold_users"],
            counts["val_dropped_cold_items"],
        )
    if counts["test_interactions"] == 0:
        raise empty_split_error(
            source,
            spec,
            "test",
            counts["test_candidates"],
            counts["test_dropped_cold_users"],
            counts["test_cold_interactions"],
        )


def no_interactions_error(source: str) -> InvalidInteractionsError:
    return InvalidInteractionsError(f"{source}: there are no interactions to split")


def time_span(first: int | None, last: int | None) -> list[str] | None:
    """Return [first, last] as ISO 8601 UTC, or None for an empty table."""
    return None if first is None else [iso_utc(first), iso_utc(last)]


# The report's counts, in the order it lists them; split_report adds what follows from them.
_SIZES = (
    "train_interactions",
    "val_interactions",
    "test_interactions",
    "test_cold_interactions",
    "train_users",
    "train_items",
    "val_users",
    "val_items",
    "test_users",
    "test_items",
    "test_cold_users",
    "test_cold_items",
)
_DROPS = (
    "val_candidates",
    "val_dropped_cold_users",
    "val_dropped_cold_items",
    "test_candidates",
    "test_dropped_cold_users",
)


def split_report(
    spec: SplitSpec,
    counts: dict[str, int],
    spans: dict[str, list[str] | None],
    cutoffs: tuple[int, int] | None,
) -> dict:
    """Return the split report (split_report.json), the same whichever engine counted.

    counts: _SIZES and _DROPS, plus users and items (of the whole log),
    cold_items_held_out and train_rows_removed_cold_items; spans: train, val and
    test time spans; cutoffs: global_temporal's (validation, test) times.
    """
    report: dict = {"strategy": spec.strategy}
    report.update({name: counts[name] for name in _SIZES})
    report["users_without_validation"] = counts["users"] - counts["val_users"]
    report["users_without_test"] = counts["users"] - counts["test_users"]
    report.update({name: counts[name] for name in _DROPS})
    report["items_without_training"] = counts["items"] - counts["train_items"]
    report["cold_item_fraction"] = spec.cold_item_fraction
    report["cold_items_held_out"] = counts["cold_items_held_out"]
    report["train_rows_removed_cold_items"] = counts["train_rows_removed_cold_items"]
    report.update({f"{kind}_time_span": spans[kind] for kind in ("train", "val", "test")})
    if cutoffs is None:
        report["min_train_interactions"] = spec.min_train_interactions
    else:
        report["temporal_quantiles"] = list(spec.temporal_quantiles)
        report["temporal_cutoffs"] = [iso_utc(cutoffs[0]), iso_utc(cutoffs[1])]
    return report


def _count_distinct(codes: np.ndarray, size: int) -> int:
    return int(np.count_nonzero(np.bincount(codes, minlength=size)))


def _span(frame: pd.DataFrame) -> list[str] | None:
    ts = frame["timestamp"].to_numpy()
    return time_span(ts.min(), ts.max()) if ts.size else None


@dataclass
class _HeldOut:
    """Which rows of one held-out set survive, and why the others do not."""

    candidates: np.ndarray  # row numbers
    kept: np.ndarray
    cold: np.ndarray  # warm user, item unseen in train
    cold_users: int  # rows whose user has no training row


def _warm_rows(
    is_held: np.ndarray,
    users: np.ndarray,
    items: np.ndarray,
    user_in_train: np.ndarray,
    item_in_train: np.ndarray,
) -> _HeldOut:
    candidates = np.flatnonzero(is_held)
    warm_user = user_in_train[users[candidates]]
    warm_item = item_in_train[items[candidates]]
    return _HeldOut(
        candidates,
        candidates[warm_user & warm_item],
        candidates[warm_user & ~warm_item],
        int((~warm_user).sum()),
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
        raise no_interactions_error(source)
    if spec.strategy == "leave_last_out":
        (is_val, is_test), cutoffs = _leave_last_out(interactions, spec), None
    else:
        is_val, is_test, cutoffs = _global_temporal(interactions, spec)
    users = interactions["user"].to_numpy()
    items = interactions["item"].to_numpy()
    n_users, n_items = int(users.max()) + 1, int(items.max()) + 1
    held_out_cold = np.zeros(n_items, dtype=bool)
    held_out_cold[cold_items(n_items, spec.cold_item_fraction, seed)] = True
    removed_cold = ~is_val & ~is_test & held_out_cold[items]
    in_train = ~is_val & ~is_test & ~removed_cold
    user_in_train = np.bincount(users[in_train], minlength=n_users) > 0
    item_in_train = np.bincount(items[in_train], minlength=n_items) > 0
    val = _warm_rows(is_val, users, items, user_in_train, item_in_train)
    test = _warm_rows(is_test, users, items, user_in_train, item_in_train)
    counts = {
        "users": _count_distinct(users, n_users),
        "items": n_items,
        "cold_items_held_out": int(held_out_cold.sum()),
        "train_rows_removed_cold_items": int(removed_cold.sum()),
        "val_candidates": int(val.candidates.size),
        "val_dropped_cold_users": val.cold_users,
        "val_dropped_cold_items": int(val.cold.size),
        "test_candidates": int(test.candidates.size),
        "test_dropped_cold_users": test.cold_users,
        "val_interactions": int(val.kept.size),
        "test_interactions": int(test.kept.size),
        "test_cold_interactions": int(test.cold.size),
    }
    raise_if_empty(source, spec, counts)
    tables = {
        "train": interactions.loc[in_train].reset_index(drop=True),
        "val": interactions.iloc[val.kept].reset_index(drop=True),
        "test": interactions.iloc[test.kept].reset_index(drop=True),
        "test_cold": interactions.iloc[test.cold].reset_index(drop=True),
    }
    for kind, table in tables.items():
        counts[f"{kind}_interactions"] = len(table)
        counts[f"{kind}_users"] = _count_distinct(table["user"].to_numpy(), n_users)
        counts[f"{kind}_items"] = _count_distinct(table["item"].to_numpy(), n_items)
    spans = {kind: _span(tables[kind]) for kind in ("train", "val", "test")}
    report = split_report(spec, counts, spans, cutoffs)
    return Split(tables["train"], tables["val"], tables["test"], tables["test_cold"], report)
