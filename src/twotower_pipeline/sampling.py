"""Negative sampling: items a user has not interacted with, drawn vectorised.

A negative for a user is never one of that user's known positives. Draws are
rejection-sampled for all rows at once; the few rows still rejected after a
number of rounds (users who have seen most of the catalogue) are drawn
exactly from the complement of their positives.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


class NegativeSamplingError(ValueError):
    """Negatives cannot be drawn for some users."""


class PositiveSet:
    """Membership test for (user, item) pairs, as sorted int64 keys."""

    def __init__(self, users: np.ndarray, items: np.ndarray, n_items: int) -> None:
        self.n_items = int(n_items)
        self.keys = np.unique(users.astype(np.int64) * self.n_items + items.astype(np.int64))

    def contains(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Return a boolean array: is (users[i], items[i]) a known positive."""
        keys = users.astype(np.int64) * self.n_items + items.astype(np.int64)
        where = np.searchsorted(self.keys, keys)
        where[where == self.keys.size] = 0
        return self.keys[where] == keys

    def items_of(self, user: int) -> np.ndarray:
        """Return the sorted positive items of one user."""
        lo, hi = np.searchsorted(self.keys, [user * self.n_items, (user + 1) * self.n_items])
        return (self.keys[lo:hi] - user * self.n_items).astype(np.int64)

    def counts_per_user(self, n_users: int) -> np.ndarray:
        return np.bincount(self.keys // self.n_items, minlength=n_users)


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
    unique_users = np.unique(users)
    per_user = positives.counts_per_user(int(unique_users[-1]) + 1)[unique_users]
    saturated = unique_users[per_user >= n_items]
    if saturated.size:
        raise NegativeSamplingError(
            f"{saturated.size} user(s) have interacted with all {n_items} items, so no negative "
            f"can be drawn for them (user indices {saturated[:5].tolist()}); "
            "drop them from the log or enlarge the catalogue"
        )


def sample_negatives(
    users: np.ndarray,
    positives: PositiveSet,
    neg_ratio: int,
    rng: np.random.Generator,
    probabilities: np.ndarray | None = None,
    max_rounds: int = 20,
    chunk_rows: int = 4_000_000,
) -> np.ndarray:
    """Return an int64 array (len(users), neg_ratio) of negatives, one row per given user.

    Rows are drawn in chunks of `chunk_rows` users so temporary memory stays
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
    for start in range(0, users.size, chunk_rows):
        chunk = users[start : start + chunk_rows]
        negatives[start : start + chunk.size] = _sample_chunk(
            chunk, positives, neg_ratio, rng, probabilities, cdf, max_rounds
        ).reshape(chunk.size, neg_ratio)
    return negatives


def _sample_chunk(
    users: np.ndarray,
    positives: PositiveSet,
    neg_ratio: int,
    rng: np.random.Generator,
    probabilities: np.ndarray | None,
    cdf: np.ndarray | None,
    max_rounds: int,
) -> np.ndarray:
    n_items = positives.n_items
    flat_users = np.repeat(users, neg_ratio)
    negatives = _draw(rng, n_items, flat_users.size, cdf)
    pending = np.flatnonzero(positives.contains(flat_users, negatives))
    for _ in range(max_rounds):
        if pending.size == 0:
            break
        negatives[pending] = _draw(rng, n_items, pending.size, cdf)
        pending = pending[positives.contains(flat_users[pending], negatives[pending])]

    # Whatever is still rejected belongs to users who hold most of the catalogue
    # (a handful at most): draw those exactly from what they have not seen.
    for user in np.unique(flat_users[pending]):
        rows = pending[flat_users[pending] == user]
        allowed = np.setdiff1d(np.arange(n_items), positives.items_of(int(user)))
        weights = None
        if probabilities is not None:
            weights = probabilities[allowed]
            weights = weights / weights.sum() if weights.sum() > 0 else None
        negatives[rows] = rng.choice(allowed, size=rows.size, p=weights)
    return negatives


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
    items = np.empty((users.size, group), dtype=np.int32)
    items[:, 0] = train["item"].to_numpy()
    items[:, 1:] = sample_negatives(users, positives, neg_ratio, rng, probabilities)
    labels = np.zeros((users.size, group), dtype=np.float32)
    labels[:, 0] = 1.0
    return pd.DataFrame(
        {
            "user": np.repeat(train["user"].to_numpy(np.int32), group),
            "item": items.ravel(),
            "label": labels.ravel(),
        }
    )
