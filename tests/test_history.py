"""User histories: causal, ties as sets, the latest items in time order, capped and masked."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from twotower_pipeline.data.user_histories import HistoryTable, training_history_ends


def log(rows: list[tuple[int, int, int]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user", "item", "timestamp"]).astype(np.int64)


# User 0: item 5 at t=10, items 3 and 7 together at t=20, item 1 at t=30.
# User 1: item 2 at t=5, item 4 at t=15. User 2: nothing.
# Rows are deliberately out of order; the table sorts them by (user, time, item):
# positions 0..3 = items 5, 3, 7, 1 (user 0), positions 4, 5 = items 2, 4 (user 1).
TRAIN = log([(0, 1, 30), (1, 4, 15), (0, 7, 20), (0, 5, 10), (1, 2, 5), (0, 3, 20)])
N_USERS = 3


def windows_of_training_rows(train: pd.DataFrame, n_users: int, length: int):
    table = HistoryTable.from_interactions(train, n_users)
    ends = torch.from_numpy(training_history_ends(train))
    users = torch.tensor(train["user"].to_numpy(np.int64))
    return table.window(users, ends, length)


def test_the_table_holds_each_users_items_in_time_order():
    table = HistoryTable.from_interactions(TRAIN, N_USERS)
    assert table.items.tolist() == [5, 3, 7, 1, 2, 4]
    assert table.user_ptr.tolist() == [0, 4, 6, 6]


def test_a_training_row_sees_only_what_came_strictly_before_it_in_train_order():
    items, mask = windows_of_training_rows(TRAIN, N_USERS, length=3)
    # Row by row, TRAIN's order: (0,1,30) (1,4,15) (0,7,20) (0,5,10) (1,2,5) (0,3,20).
    assert items.tolist() == [
        [5, 3, 7],  # item 1 at t=30 sees all three earlier items, oldest first
        [0, 0, 2],  # user 1's item 4 sees item 2 only, never user 0's items
        [0, 0, 5],  # item 7 at t=20 does not see item 3 of the same second (nor itself)
        [0, 0, 0],  # the first item has no history
        [0, 0, 0],
        [0, 0, 5],  # item 3 at t=20 does not see item 7 of the same second
    ]
    assert mask.tolist() == [
        [True, True, True],
        [False, False, True],
        [False, False, True],
        [False, False, False],
        [False, False, False],
        [False, False, True],
    ]


def test_a_positive_is_never_in_its_own_history_nor_with_its_same_second_items():
    items, mask = windows_of_training_rows(TRAIN, N_USERS, length=4)
    same_second = {(0, 7): {3, 7}, (0, 3): {3, 7}}
    for row, (user, item) in enumerate(zip(TRAIN["user"], TRAIN["item"], strict=True)):
        seen = set(items[row][mask[row]].tolist())
        assert item not in seen
        assert not seen & same_second.get((user, item), set())


def test_the_window_keeps_the_latest_items_capped_at_its_length():
    items, mask = windows_of_training_rows(TRAIN, N_USERS, length=2)
    assert items[0].tolist() == [3, 7]  # item 1's history is 5, 3, 7: the latest two, in order
    assert mask[0].tolist() == [True, True]
    items, mask = windows_of_training_rows(TRAIN, N_USERS, length=1)
    assert items[0].tolist() == [7] and items[2].tolist() == [5]


def test_ends_before_a_moment_excludes_items_of_that_second_and_none_takes_everything():
    table = HistoryTable.from_interactions(TRAIN, N_USERS)
    users = np.array([0, 0, 0, 0, 1, 2])
    moments = np.array([5, 20, 21, 1_000, 15, 50])
    # User 0 starts at position 0: nothing before t=5, item 5 before t=20 (not 3 and 7 of
    # that second), 5, 3, 7 before t=21, all four before t=1000. User 1 (positions 4, 5)
    # has item 2 before t=15. User 2 has no items: its window is empty.
    assert table.ends_before(users, moments).tolist() == [0, 1, 3, 4, 5, 6]
    assert table.ends_before(users, None).tolist() == [4, 4, 4, 4, 6, 6]
    items, mask = table.window(torch.from_numpy(users), table.ends_before(users, moments), 2)
    assert items.tolist() == [[0, 0], [0, 5], [3, 7], [7, 1], [0, 2], [0, 0]]
    assert mask.sum(1).tolist() == [0, 1, 2, 2, 1, 0]


def test_an_empty_log_gives_empty_masked_windows():
    table = HistoryTable.from_interactions(log([]), 2)
    users = np.array([0, 1])
    ends = table.ends_before(users, np.array([10, 10]))
    items, mask = table.window(torch.from_numpy(users), ends, 3)
    assert items.tolist() == [[0, 0, 0]] * 2 and not mask.any()


def brute_force_history(
    frame: pd.DataFrame, user: int, before: int | None, length: int
) -> list[int]:
    """Return the user's items with timestamp < before, in (time, item) order, the last `length`."""
    rows = frame[frame["user"] == user]
    if before is not None:
        rows = rows[rows["timestamp"] < before]
    ordered = rows.sort_values(["timestamp", "item"])["item"].tolist()
    return ordered[-length:] if length else []


small_logs = st.lists(
    st.tuples(
        st.integers(0, 3),  # user
        st.integers(0, 5),  # item
        st.integers(0, 4),  # timestamp: few values, so ties are common
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(rows=small_logs, length=st.integers(1, 4))
def test_every_history_item_of_a_positive_is_the_same_users_and_strictly_earlier(rows, length):
    train = log(rows)
    items, mask = windows_of_training_rows(train, 4, length)
    for row, (user, timestamp) in enumerate(zip(train["user"], train["timestamp"], strict=True)):
        earlier = train[(train["user"] == user) & (train["timestamp"] < timestamp)]
        seen = items[row][mask[row]].tolist()
        # Every unmasked item is one of this user's strictly earlier items ...
        assert set(seen) <= set(earlier["item"])
        # ... and the window is exactly the latest `length` of them, oldest first.
        assert seen == brute_force_history(train, user, timestamp, length)
        assert items[row][~mask[row]].eq(0).all()


@settings(max_examples=40, deadline=None)
@given(rows=small_logs, moment=st.integers(-1, 6), length=st.integers(1, 4))
def test_a_window_before_any_moment_is_the_brute_force_history(rows, moment, length):
    known = log(rows)
    table = HistoryTable.from_interactions(known, 5)
    users = np.arange(5)
    for moments in (np.full(5, moment), None):
        items, mask = table.window(
            torch.from_numpy(users), table.ends_before(users, moments), length
        )
        for user in users:
            before = None if moments is None else moment
            expected = brute_force_history(known, int(user), before, length)
            assert items[user][mask[user]].tolist() == expected
