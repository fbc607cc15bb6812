"""Negative sampling: items a user has not interacted with, drawn vectorised.

A negative for a user is never one of that user's known positives. Draws are
rejection-sampled for all rows at once; the few rows still rejected after a
number of rounds (users who have seen most of the catalogue) are drawn
exactly from the complement of their positives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from twotower_pipeline.config.errors import PipelineInputError


class NegativeSamplingError(PipelineInputError, ValueError):
    """Negatives cannot be drawn for some users."""


def _in_sorted(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Return whether each of keys is in sorted_keys (sorted, unique), by binary search."""
    if sorted_keys.size == 0:
        return np.zeros(keys.shape, dtype=bool)
    where = np.searchsorted(sorted_keys, keys)
    where[where == sorted_keys.size] = 0
    return sorted_keys[where] == keys


class PositiveSet:
    """Membership test for (user, item) pairs, as sorted int64 keys."""

    def __init__(self, users: np.ndarray, items: np.ndarray, n_items: int) -> None:
        self.n_items = int(n_items)
        keys = users.astype(np.int64) * self.n_items + items.astype(np.int64)
        keys.sort()
        # Sort and drop repeats by hand: np.unique's hashing path is slower
        # (benchmarks/data_prep.py).
        self.keys = keys[np.r_[True, keys[1:] != keys[:-1]]] if keys.size else keys
        self._counts: np.ndarray | None = None  # positives per user, counted once

    def contains(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Return a boolean array: is (users[i], items[i]) a known positive."""
        keys = users.astype(np.int64) * self.n_items + items.astype(np.int64)
        return _in_sorted(self.keys, keys)

    def items_of(self, user: int) -> np.ndarray:
        """Return the sorted positive items of one user."""
        lo, hi = np.searchsorted(self.keys, [user * self.n_items, (user + 1) * self.n_items])
        return (self.keys[lo:hi] - user * self.n_items).astype(np.int64)

    def counts_per_user(self, n_users: int) -> np.ndarray:
        """Return each user's number of positives, users 0..n_users-1 (a read-only array).

        Counted once and kept: an epoch asks once per chunk of its draws, and counting
        all positives each time made the draws grow with positives x chunks.
        """
        if self._counts is None:
            self._counts = np.bincount(self.keys // self.n_items)
            self._counts.flags.writeable = False
        if self._counts.size >= n_users:
            return self._counts[:n_users]
        return np.pad(self._counts, (0, n_users - self._counts.size))


def item_distribution(
    train_items: np.ndarray, n_items: int, kind: str = "uniform", alpha: float = 0.75
) -> np.ndarray | None:
    """Return sampling probabilities over items (None for uniform).

    Popularity comes from the training split only, so validation never leaks
    into the sampler.
    """
    if kind == "uniform":
        return None
    if kind != "popularity":
        raise ValueError(
            f"negative_sampling.distribution must be uniform or popularity, not {kind!r}"
        )
    counts = np.bincount(train_items, minlength=n_items).astype(np.float64)
    weights = counts**alpha
    if weights.sum() == 0:
        return None
    return weights / weights.sum()


def _draw(rng: np.random.Generator, n_items: int, size: int, cdf: np.ndarray | None) -> np.ndarray:
    if cdf is None:
        return rng.integers(0, n_items, size=size, dtype=np.int64)
    return np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), n_items - 1)


def _check_catalogue(users: np.ndarray, positives: PositiveSet) -> None:
    n_items = positives.n_items
    if n_items < 2:
        raise NegativeSamplingError(
            f"the catalogue has {n_items} item(s): negatives need at least 2 items"
        )
    n_users = int(users.max()) + 1
    present = np.bincount(users, minlength=n_users) > 0
    counts = positives.counts_per_user(n_users)[:n_users]  # positives may name later users
    saturated = np.flatnonzero(present & (counts >= n_items))
    if saturated.size:
        raise NegativeSamplingError(
            f"{saturated.size} user(s) have interacted with all {n_items} items, so no negative "
            f"can be drawn for them (user indices {saturated[:5].tolist()}); "
            "drop them from the log or enlarge the catalogue"
        )


class _KeySearch:
    """Positives looked up by binary search, for users spread thinly over a large catalogue.

    A bitmap of their user range would cost more to clear than the draws it serves.
    The search runs over the keys of first_user..last_user only: a slice that stays in
    cache, where a search over all positives (hundreds of MB at 10^7 and more) misses
    it at nearly every step, so an epoch's draws grew faster than its positives.
    """

    def __init__(self, positives: PositiveSet, first_user: int, last_user: int) -> None:
        n_items = positives.n_items
        self.offset = first_user * n_items
        lo, hi = np.searchsorted(positives.keys, [self.offset, (last_user + 1) * n_items])
        self.keys = positives.keys[lo:hi] - self.offset  # sorted, unique, local

    def contains(self, local_keys: np.ndarray) -> np.ndarray:
        return _in_sorted(self.keys, local_keys)


class _UserRangeBitmap:
    """Positives of the users first_user..last_user as one bit per (user, item).

    A lookup reads one byte near the previous one (rows come grouped by user,
    a user's row of bits is a few kB), faster than a binary search over all
    positives (benchmarks/data_prep.py).
    """

    def __init__(self, positives: PositiveSet, first_user: int, last_user: int) -> None:
        n_items = positives.n_items
        offset = first_user * n_items
        lo, hi = np.searchsorted(positives.keys, [offset, (last_user + 1) * n_items])
        local = positives.keys[lo:hi] - offset  # sorted, unique
        self.bits = np.zeros(((last_user - first_user + 1) * n_items + 7) // 8, dtype=np.uint8)
        if local.size:
            byte = local >> 3
            starts = np.flatnonzero(np.r_[True, byte[1:] != byte[:-1]])
            values = np.left_shift(1, local & 7).astype(np.uint8)
            self.bits[byte[starts]] = np.bitwise_or.reduceat(values, starts)

    def contains(self, local_keys: np.ndarray) -> np.ndarray:
        """Return whether each (local user * n_items + item) key is a positive."""
        return (self.bits[local_keys >> 3] >> (local_keys & 7).astype(np.uint8)) & 1 == 1


@dataclass(frozen=True)
class _Draws:
    """How one call of sample_negatives draws, the same for each of its chunks."""

    neg_ratio: int
    rng: np.random.Generator
    probabilities: np.ndarray | None
    cdf: np.ndarray | None  # cumulative probabilities, None for uniform
    max_rounds: int


def sample_negatives(
    users: np.ndarray,
    positives: PositiveSet,
    neg_ratio: int,
    rng: np.random.Generator,
    probabilities: np.ndarray | None = None,
    max_rounds: int = 20,
    chunk_rows: int = 4_000_000,
    bitmap_bytes: int = 64 * 2**20,
) -> np.ndarray:
    """Return an int64 array (len(users), neg_ratio) of negatives, one row per given user.

    Rows are processed grouped by user, in chunks of at most `chunk_rows` rows
    whose users' (user, item) bitmap fits in `bitmap_bytes`, so memory stays
    bounded on logs of tens of millions of positives. Raises
    NegativeSamplingError, naming how many users and which, when some user
    has no item left to be a negative.
    """
    users = np.asarray(users, dtype=np.int64)
    negatives = np.empty((users.size, neg_ratio), dtype=np.int64)
    if users.size == 0 or neg_ratio == 0:
        return negatives
    _check_catalogue(users, positives)
    cdf = None if probabilities is None else np.cumsum(probabilities)
    draws = _Draws(neg_ratio, rng, probabilities, cdf, max_rounds)
    n_items = positives.n_items

    grouped = bool((users[1:] >= users[:-1]).all())
    order = None if grouped else np.argsort(users, kind="stable")
    sorted_users = users if grouped else users[order]
    users_per_chunk = max(1, bitmap_bytes * 8 // n_items)
    drawn = negatives if grouped else np.empty_like(negatives)
    start = 0
    while start < users.size:
        first_user = int(sorted_users[start])
        stop = int(np.searchsorted(sorted_users, first_user + users_per_chunk))
        stop = min(stop, start + chunk_rows)
        chunk = sorted_users[start:stop]
        bitmap_bytes_needed = (int(chunk[-1]) - first_user + 1) * n_items / 8
        if bitmap_bytes_needed <= 64 * chunk.size * neg_ratio:
            bitmap = _UserRangeBitmap(positives, first_user, int(chunk[-1]))
        else:
            bitmap = _KeySearch(positives, first_user, int(chunk[-1]))
        drawn[start:stop] = _sample_chunk(
            chunk - first_user, bitmap, positives, first_user, draws
        ).reshape(chunk.size, neg_ratio)
        start = stop
    if not grouped:
        negatives[order] = drawn
    return negatives


def _sample_chunk(
    local_users: np.ndarray,
    bitmap: _UserRangeBitmap | _KeySearch,
    positives: PositiveSet,
    first_user: int,
    draws: _Draws,
) -> np.ndarray:
    n_items, rng, cdf = positives.n_items, draws.rng, draws.cdf
    row_base = np.repeat(local_users * n_items, draws.neg_ratio)
    negatives = _draw(rng, n_items, row_base.size, cdf)
    pending = np.flatnonzero(bitmap.contains(row_base + negatives))
    for _ in range(draws.max_rounds):
        if pending.size == 0:
            break
        negatives[pending] = _draw(rng, n_items, pending.size, cdf)
        pending = pending[bitmap.contains(row_base[pending] + negatives[pending])]

    # Whatever is still rejected belongs to users who hold most of the catalogue
    # (a handful at most): draw those exactly from what they have not seen.
    pending_users = row_base[pending] // n_items + first_user
    for user in np.unique(pending_users):
        rows = pending[pending_users == user]
        allowed = np.setdiff1d(np.arange(n_items), positives.items_of(int(user)))
        weights = None
        if draws.probabilities is not None:
            weights = draws.probabilities[allowed]
            weights = weights / weights.sum() if weights.sum() > 0 else None
        negatives[rows] = rng.choice(allowed, size=rows.size, p=weights)
    return negatives


def item_groups(
    users: np.ndarray,
    positive_items: np.ndarray,
    positives: PositiveSet,
    neg_ratio: int,
    rng: np.random.Generator,
    probabilities: np.ndarray | None = None,
) -> np.ndarray:
    """Return int64 items (len(users), 1 + neg_ratio): each positive, then its negatives."""
    items = np.empty((users.size, 1 + neg_ratio), dtype=np.int64)
    items[:, 0] = positive_items
    items[:, 1:] = sample_negatives(users, positives, neg_ratio, rng, probabilities)
    return items


def build_training_examples(
    train: pd.DataFrame,
    n_items: int,
    neg_ratio: int,
    rng: np.random.Generator,
    probabilities: np.ndarray | None = None,
) -> pd.DataFrame:
    """Return every training positive followed by its neg_ratio negatives (user, item, label)."""
    users = train["user"].to_numpy(np.int64)
    positives = PositiveSet(users, train["item"].to_numpy(np.int64), n_items)
    group = 1 + neg_ratio
    items = item_groups(users, train["item"].to_numpy(), positives, neg_ratio, rng, probabilities)
    labels = np.zeros((users.size, group), dtype=np.float32)
    labels[:, 0] = 1.0
    return pd.DataFrame(
        {
            "user": np.repeat(train["user"].to_numpy(np.int32), group),
            "item": items.ravel().astype(np.int32),
            "label": labels.ravel(),
        }
    )
