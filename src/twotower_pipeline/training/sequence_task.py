"""Training a sequence encoder at every position of a user's history in one pass (SASRec's way).

Where the pooled tower builds one history window per training positive, a
causal encoder reads a user's sequence once and gives, at every position, the
state of the user after the items up to there. A training positive (a target)
then takes its user vector from the end of its causal prefix: the position
just before its group of same-second items begins, since items that share a
timestamp are a set and none is in the history of another (as
data.user_histories has it for the pooled tower). A target in its user's
first group has no history (position -1: the encoder contributes nothing).

Long sequences are cut into right-aligned windows of `length` positions, the
latest window ending at the last prefix end, the others every `stride`
(default `length`) before it, so each training positive is a target of
exactly one window: the one whose last `stride` positions hold its prefix end
(the earliest window for those without history). A window sees its own
positions only, so a target's history is the items of its window up to its
prefix end: `length` items for the latest targets, at least
`length - stride + 1` (where the user has them) for the others. A stride below
the length buys longer histories with overlapping windows, at the cost of
encoding each position length / stride times.

Batches are groups of whole windows holding about `targets_per_batch`
targets, cut to the longest history among them (windows are right-aligned,
so only empty columns on the left go); the encoder counts positions from the
right, so a cut window reads as the full one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch


@dataclass
class SequenceWindows:
    """Right-aligned windows of users' sequences and the targets each trains.

    Window w holds user `users[w]`'s items (L positions, position L-1 the
    latest, masked positions on the left holding item 0); its targets are
    `target_ptr[w]:target_ptr[w + 1]` of the target arrays, in time order.
    """

    users: torch.Tensor  # (W,) int64
    items: torch.Tensor  # (W, L) int64
    mask: torch.Tensor  # (W, L) bool
    target_ptr: torch.Tensor  # (W + 1,) int64
    target_items: torch.Tensor  # (T,) int64
    target_positions: torch.Tensor  # (T,) int64: the window position ending its prefix; -1: none
    target_rows: torch.Tensor  # (T,) int64: each target's row number in the training frame

    @property
    def n_targets(self) -> int:
        return self.target_items.numel()


@dataclass
class SequenceBatch:
    """A batch of whole windows (cut to their longest history) and their targets."""

    users: torch.Tensor  # (W_b,)
    items: torch.Tensor  # (W_b, L_b)
    mask: torch.Tensor  # (W_b, L_b)
    target_windows: torch.Tensor  # (T_b,) the batch window of each target
    target_positions: torch.Tensor  # (T_b,) position in the cut window; -1: no history
    target_items: torch.Tensor  # (T_b,)
    target_rows: torch.Tensor  # (T_b,) rows of the training frame

    @property
    def target_users(self) -> torch.Tensor:
        """Return the user of each target, (T_b,)."""
        return self.users[self.target_windows]

    def user_states(self, encoded: torch.Tensor) -> torch.Tensor:
        """Return (T_b, d): the encoder's output at each target's prefix end (zeros without one).

        encoded is the encoder's (W_b, L_b, d) output over the batch's windows.
        """
        has_history = self.target_positions >= 0
        states = encoded[self.target_windows, self.target_positions.clamp(min=0)]
        return states * has_history.unsqueeze(-1).to(states.dtype)


def sequence_windows(
    train: pd.DataFrame, length: int, stride: int | None = None
) -> SequenceWindows:
    """Return every training row as the target of one window of its user's sequence.

    (One vectorised pass over the sorted log, kept whole so the index arithmetic
    reads in one place: 63 lines.)

    train has columns user, item, timestamp (any order; sorted here by user,
    time, item, as the history table sorts). Ties on time are sets.
    """
    stride = length if stride is None else stride
    if not 1 <= stride <= length:
        raise ValueError(f"sequence windows need 1 <= stride <= length, got {stride}, {length}")
    if train.empty:
        raise ValueError("no training rows to make sequence windows of")
    users = train["user"].to_numpy(np.int64)
    items = train["item"].to_numpy(np.int64)
    timestamps = train["timestamp"].to_numpy(np.int64)
    order = np.lexsort((items, timestamps, users))
    users, items, timestamps = users[order], items[order], timestamps[order]
    index = np.arange(users.size)
    first_of_user = np.r_[True, users[1:] != users[:-1]]
    first_of_group = first_of_user | np.r_[True, timestamps[1:] != timestamps[:-1]]
    user_start = np.maximum.accumulate(np.where(first_of_user, index, 0))
    group_start = np.maximum.accumulate(np.where(first_of_group, index, 0))
    prefix_end = group_start - user_start - 1  # in the user's sequence; -1: first group

    segment = np.cumsum(first_of_user) - 1  # the user's number among the users present
    n_segments = int(segment[-1]) + 1
    last_end = np.full(n_segments, -1, dtype=np.int64)
    np.maximum.at(last_end, segment, prefix_end)
    n_windows = np.where(last_end >= 0, last_end // stride + 1, 1)
    window_offset = np.r_[0, np.cumsum(n_windows)]

    # Window 0 of a user is its latest; it ends at last_end, window k at last_end - k x stride.
    from_latest = np.where(
        prefix_end >= 0, (last_end[segment] - prefix_end) // stride, n_windows[segment] - 1
    )
    target_window = window_offset[segment] + n_windows[segment] - 1 - from_latest
    window_end = last_end[segment] - from_latest * stride
    target_position = np.where(prefix_end >= 0, length - 1 - (window_end - prefix_end), -1)

    n_all = int(window_offset[-1])
    window_segment = np.repeat(np.arange(n_segments), n_windows)
    window_from_latest = (
        window_offset[window_segment] + n_windows[window_segment] - 1 - np.arange(n_all)
    )
    ends = last_end[window_segment] - window_from_latest * stride
    first_row = user_start[first_of_user]  # the sorted row of each segment's first item
    positions = ends[:, None] + np.arange(1 - length, 1)  # in the user's sequence
    valid = positions >= 0
    rows = np.where(valid, first_row[window_segment][:, None] + positions, 0)
    window_items = np.where(valid, items[rows], 0)

    by_window = np.argsort(target_window, kind="stable")
    counts = np.bincount(target_window, minlength=n_all)
    return SequenceWindows(
        users=torch.from_numpy(users[first_of_user][window_segment].copy()),
        items=torch.from_numpy(window_items),
        mask=torch.from_numpy(valid),
        target_ptr=torch.from_numpy(np.r_[0, np.cumsum(counts)].astype(np.int64)),
        target_items=torch.from_numpy(items[by_window].copy()),
        target_positions=torch.from_numpy(target_position[by_window].astype(np.int64)),
        target_rows=torch.from_numpy(order[by_window].astype(np.int64)),
    )


def _batch_of(windows: SequenceWindows, chosen: torch.Tensor) -> SequenceBatch:
    """Return the batch of the windows `chosen`, cut to their longest history."""
    mask = windows.mask[chosen]
    length = mask.shape[1]
    longest = int(mask.sum(1).max()) if chosen.numel() else 0
    cut = length - max(longest, 1)
    starts, stops = windows.target_ptr[chosen], windows.target_ptr[chosen + 1]
    counts = stops - starts
    target_windows = torch.repeat_interleave(torch.arange(chosen.numel()), counts)
    offsets = torch.arange(int(counts.sum())) - torch.repeat_interleave(
        counts.cumsum(0) - counts, counts
    )
    targets = starts[target_windows] + offsets
    positions = windows.target_positions[targets]
    return SequenceBatch(
        users=windows.users[chosen],
        items=windows.items[chosen, cut:],
        mask=mask[:, cut:],
        target_windows=target_windows,
        target_positions=torch.where(positions >= 0, positions - cut, positions),
        target_items=windows.target_items[targets],
        target_rows=windows.target_rows[targets],
    )


def epoch_batches(
    windows: SequenceWindows, targets_per_batch: int, generator: torch.Generator, pool: int = 1
) -> Iterator[SequenceBatch]:
    """Yield the epoch's batches: windows in a seeded random order, ~targets_per_batch targets each.

    A window is never split, so a batch holds at least one window and may
    pass targets_per_batch by up to one window's targets. With pool > 1, that
    many batches' worth of windows at a time are sorted by history length
    before being cut, and the batches come in random order: batches of
    like-length windows, which cutting leaves with little padding (on sparse
    logs most histories are far shorter than the window).
    """
    counts = windows.target_ptr[1:] - windows.target_ptr[:-1]
    order = torch.randperm(counts.numel(), generator=generator)
    if pool > 1:
        before = counts[order].cumsum(0) - counts[order]
        length = windows.mask.shape[1]
        key = (before // (targets_per_batch * pool)) * (length + 1) + windows.mask[order].sum(1)
        order = order[torch.sort(key, stable=True).indices]
    before = counts[order].cumsum(0) - counts[order]
    batch_of = before // targets_per_batch
    bounds = torch.searchsorted(batch_of, torch.arange(int(batch_of[-1]) + 2)).tolist()
    spans = [(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
    if pool > 1:
        spans = [spans[i] for i in torch.randperm(len(spans), generator=generator).tolist()]
    for start, stop in spans:
        yield _batch_of(windows, order[start:stop])
