"""Train/validation splits: hand-made logs a human can check, then properties on random logs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twotower_pipeline.interactions import InvalidInteractionsError
from twotower_pipeline.splitting import SplitSpec, split_interactions


def log(rows: list[tuple[int, int, int]]) -> pd.DataFrame:
    """(user, item, timestamp) rows as an encoded interactions frame."""
    frame = pd.DataFrame(rows, columns=["user", "item", "timestamp"])
    return frame.astype({"user": np.int32, "item": np.int32, "timestamp": np.int64})


def pairs(frame: pd.DataFrame) -> set[tuple[int, int]]:
    return set(zip(frame["user"].tolist(), frame["item"].tolist(), strict=True))


# user 0: items 0, 1, 2 at times 1, 2, 3 -> item 2 validates
# user 1: items 2, 3 only -> too few, stays in train
# user 2: items 1, 3, 0 at 5, 9, 7 -> item 3 (time 9) validates
HAND_MADE = log(
    [(0, 0, 1), (0, 1, 2), (0, 2, 3), (1, 2, 4), (1, 3, 5), (2, 1, 5), (2, 3, 9), (2, 0, 7)]
)


def test_leave_last_out_holds_out_each_eligible_users_latest_interaction():
    train, val, report = split_interactions(HAND_MADE, SplitSpec())
    assert pairs(val) == {(0, 2), (2, 3)}
    assert len(train) == 6 and not pairs(train) & pairs(val)
    assert report["val_users"] == 2 and report["users_without_validation"] == 1


def test_split_does_not_depend_on_row_order():
    shuffled = HAND_MADE.sample(frac=1.0, random_state=3).reset_index(drop=True)
    _, val_sorted, _ = split_interactions(HAND_MADE, SplitSpec())
    _, val_shuffled, _ = split_interactions(shuffled, SplitSpec())
    assert pairs(val_sorted) == pairs(val_shuffled)


def test_a_tie_on_the_latest_time_goes_to_the_larger_item():
    frame = log([(0, 5, 1), (0, 7, 1), (0, 1, 9), (0, 3, 9), (1, 1, 1), (1, 3, 2)])
    train, val, _ = split_interactions(frame, SplitSpec())
    assert pairs(val) == {(0, 3)}


def test_validation_items_never_seen_in_train_are_dropped_and_counted():
    # Item 9 appears only as user 0's latest interaction.
    frame = log(
        [(0, 0, 1), (0, 1, 2), (0, 9, 3), (1, 0, 1), (1, 1, 2), (1, 0, 3)][:5] + [(1, 2, 3)]
    )
    frame = pd.concat([frame, log([(2, 0, 1), (2, 2, 2), (2, 1, 3)])], ignore_index=True)
    _, val, report = split_interactions(frame, SplitSpec())
    assert (0, 9) not in pairs(val)
    assert report["val_dropped_cold_items"] == 1 and report["val_candidates"] == 3
    assert report["val_interactions"] == 2


def test_holdout_of_two_takes_the_two_latest():
    frame = log([(0, item, time) for item, time in [(0, 1), (1, 4), (2, 3), (3, 2), (4, 5)]])
    frame = pd.concat([frame, log([(1, i, i) for i in range(5)])], ignore_index=True)
    frame = pd.concat([frame, log([(2, 4, 1), (2, 3, 2)])], ignore_index=True)  # train only
    _, val, _ = split_interactions(frame, SplitSpec(holdout_per_user=2))
    assert pairs(val) == {(0, 4), (0, 1), (1, 4), (1, 3)}


def test_a_split_that_leaves_validation_empty_is_an_error_naming_the_reason():
    with pytest.raises(InvalidInteractionsError) as caught:
        split_interactions(log([(0, 0, 1), (0, 1, 2), (1, 0, 1)]), SplitSpec(), source="x.parquet")
    message = str(caught.value)
    assert message.startswith("x.parquet: the leave_last_out split leaves validation empty")
    assert "at least 3 interactions" in message


def test_global_temporal_validates_everything_at_or_after_the_cutoff():
    # Every user is active all along; each time slot holds different items.
    frame = log([(u, (u + i) % 5, 10 * i + u) for u in range(4) for i in range(5)])
    train, val, report = split_interactions(
        frame, SplitSpec(strategy="global_temporal", temporal_quantile=0.75)
    )
    cutoff = int(np.quantile(frame["timestamp"], 0.75, method="higher"))
    assert train["timestamp"].max() < cutoff <= val["timestamp"].min()
    assert report["temporal_cutoff"] == pd.Timestamp(cutoff, unit="s", tz="UTC").isoformat()


def test_global_temporal_drops_validation_users_unseen_in_train():
    # Cutoff at time 8: user 0's item 2 validates, user 2 (first seen at 9) is dropped.
    frame = log([(0, 0, 1), (0, 1, 2), (1, 0, 3), (1, 2, 4), (0, 2, 8), (2, 1, 9)])
    _, val, report = split_interactions(
        frame, SplitSpec(strategy="global_temporal", temporal_quantile=0.7)
    )
    assert pairs(val) == {(0, 2)}
    assert report["val_dropped_cold_users"] == 1


def test_an_unknown_strategy_is_rejected():
    with pytest.raises(ValueError, match="leave_last_out or global_temporal"):
        split_interactions(HAND_MADE, SplitSpec(strategy="random"))


# --- properties ----------------------------------------------------------------------

random_logs = st.lists(
    st.tuples(st.integers(0, 6), st.integers(0, 9), st.integers(0, 5)), min_size=1, max_size=60
).map(lambda rows: log(list({(u, i): (u, i, t) for u, i, t in rows}.values())))


@settings(max_examples=200, deadline=None)
@given(random_logs, st.integers(1, 2), st.integers(1, 3), st.booleans())
def test_leave_last_out_properties(frame, holdout, min_train, shuffle):
    if shuffle:
        frame = frame.sample(frac=1.0, random_state=0).reset_index(drop=True)
    spec = SplitSpec(holdout_per_user=holdout, min_train_interactions=min_train)
    try:
        train, val, report = split_interactions(frame, spec)
    except InvalidInteractionsError:
        return
    assert not pairs(train) & pairs(val)
    assert len(train) + report["val_candidates"] == len(frame)
    assert report["val_candidates"] == (
        report["val_interactions"]
        + report["val_dropped_cold_items"]
        + report["val_dropped_cold_users"]
    )
    sizes = frame.groupby("user").size()
    eligible = set(sizes[sizes >= holdout + min_train].index)
    assert report["val_candidates"] == holdout * len(eligible)
    assert set(val["user"]) <= eligible
    for user, rows in frame.groupby("user"):
        held = rows.loc[[(user, item) in pairs(val) for item in rows["item"]]]
        latest = rows.sort_values(["timestamp", "item"]).tail(holdout)
        # Whatever a user validates on is among its `holdout` latest interactions.
        assert pairs(held) <= pairs(latest)
        if user in eligible and report["val_dropped_cold_items"] == 0:
            assert pairs(held) == pairs(latest)


@settings(max_examples=100, deadline=None)
@given(random_logs, st.floats(0.05, 0.95))
def test_global_temporal_properties(frame, quantile):
    try:
        train, val, _ = split_interactions(
            frame, SplitSpec(strategy="global_temporal", temporal_quantile=quantile)
        )
    except InvalidInteractionsError:
        return
    assert not pairs(train) & pairs(val)
    assert train["timestamp"].max() < val["timestamp"].min()
    assert set(val["item"]) <= set(train["item"]) and set(val["user"]) <= set(train["user"])
