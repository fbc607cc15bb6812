"""Orders of an interaction log: ids coded by rank, rows in (user, timestamp, item) order.

Ingestion writes the log in this order and the split, the samplers and the
user histories read it in it; sorting is skipped when a log already is.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


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
