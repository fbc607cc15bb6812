"""User histories: each user's items in time order, and what came strictly before a moment.

A history is the user's most recent `length` items *before the moment being
predicted*. Items that share a timestamp are a set: none is in the history of
another from the same second (their order in a log is an artefact of
tie-breaking, not behaviour). For a training positive that means the history
ends where the positive's group of same-second items begins, so a positive
never sits in its own history and the model cannot learn to copy.

Everything is stored as compressed rows (CSR): `items` sorted by (user, time,
item), `user_ptr[u]:user_ptr[u + 1]` the slice of user u, and one end position
per query. A (batch, length) window of history items is then a gather,
`items[end - length : end]`, masked where it runs into the previous user.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
import torch

from twotower_pipeline.data.ordering import is_sorted_by_user_time, sort_by_user_time


@dataclass
class HistoryTable:
    """Items of every user in (time, item) order; user u owns items[user_ptr[u]:user_ptr[u+1]]."""

    items: torch.Tensor  # (N,) int64
    timestamps: np.ndarray  # (N,) int64, in the same order
    user_ptr: torch.Tensor  # (n_users + 1,) int64

    @classmethod
    def from_interactions(cls, interactions: pd.DataFrame, n_users: int) -> HistoryTable:
        """Return the table of the given (user, item, timestamp) rows."""
        users = interactions["user"].to_numpy(np.int64)
        items = interactions["item"].to_numpy(np.int64)
        timestamps = interactions["timestamp"].to_numpy(np.int64)
        if not is_sorted_by_user_time(users, timestamps, items):
            order = sort_by_user_time(users, timestamps, items)
            users, items, timestamps = users[order], items[order], timestamps[order]
        user_ptr = np.zeros(n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(users, minlength=n_users), out=user_ptr[1:])
        return cls(torch.from_numpy(items.copy()), timestamps, torch.from_numpy(user_ptr))

    def ends_before(self, users: np.ndarray, moments: np.ndarray | None) -> torch.Tensor:
        """Return, per user, where its history before `moments` ends (all of it if None)."""
        users = np.asarray(users, dtype=np.int64)
        ptr = self.user_ptr.cpu().numpy()
        stops = ptr[users + 1]
        if moments is None:
            return torch.from_numpy(stops.copy())
        starts = ptr[users]
        if self.timestamps.size == 0:
            return torch.from_numpy(stops.copy())
        # Within a user's slice timestamps ascend: count those < moment by one search
        # over a (user, time) key that orders the whole table.
        low, span, key = self._time_key
        moments = np.clip(np.asarray(moments, dtype=np.int64) - low, 0, span - 1)
        ends = np.searchsorted(key, users * span + moments, "left")
        return torch.from_numpy(np.clip(ends, starts, stops))

    @cached_property
    def _time_key(self) -> tuple[int, int, np.ndarray]:
        """Return (lowest timestamp, span, the sorted int64 key user * span + time - lowest)."""
        ptr = self.user_ptr.cpu().numpy()
        users = np.repeat(np.arange(ptr.size - 1, dtype=np.int64), np.diff(ptr))
        low = int(self.timestamps.min())
        span = int(self.timestamps.max()) - low + 2
        return low, span, users * span + (self.timestamps - low)

    def window(
        self, users: torch.Tensor, ends: torch.Tensor, length: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (items, mask), each (B, length): the `length` items before each end.

        Position length-1 is the most recent; positions that reach before the
        user's first item are masked (mask False, item 0).
        """
        offsets = torch.arange(-length, 0, device=ends.device)
        positions = ends.unsqueeze(-1) + offsets
        mask = positions >= self.user_ptr[users].unsqueeze(-1)
        if self.items.numel() == 0:
            return torch.zeros_like(positions), torch.zeros_like(mask)
        items = self.items[positions.clamp(min=0)]
        return items.masked_fill(~mask, 0), mask

    def to(self, device: torch.device) -> HistoryTable:
        return HistoryTable(self.items.to(device), self.timestamps, self.user_ptr.to(device))


def training_history_ends(train: pd.DataFrame) -> np.ndarray:
    """Return, per training row (in train's order), where its user's history before it ends.

    The end is the first position of the row's (user, timestamp) group in the
    sorted table: items of the same second never see one another.
    """
    users = train["user"].to_numpy(np.int64)
    items = train["item"].to_numpy(np.int64)
    timestamps = train["timestamp"].to_numpy(np.int64)
    sorted_already = is_sorted_by_user_time(users, timestamps, items)
    order = np.arange(users.size) if sorted_already else sort_by_user_time(users, timestamps, items)
    su, st = users[order], timestamps[order]
    new_group = np.r_[True, (su[1:] != su[:-1]) | (st[1:] != st[:-1])] if su.size else su
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(su.size), 0))
    ends = np.empty(users.size, dtype=np.int64)
    ends[order] = group_start
    return ends
