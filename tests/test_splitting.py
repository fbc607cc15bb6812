"""Train/validation/test splits: hand-made logs a human can check, then random-log properties."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from twotower_pipeline.config.errors import SettingsError
from twotower_pipeline.config.schema import check_parameters
from twotower_pipeline.data.ingestion_report import InvalidInteractionsError
from twotower_pipeline.data.splitting import SplitSpec, cold_items, split_interactions

ROOT = Path(__file__).resolve().parents[1]


def log(rows: list[tuple[int, int, int]]) -> pd.DataFrame:
    """(user, item, timestamp) rows as an encoded interactions frame."""
    frame = pd.DataFrame(rows, columns=["user", "item", "timestamp"])
    return frame.astype({"user": np.int32, "item": np.int32, "timestamp": np.int64})


def pairs(frame: pd.DataFrame) -> set[tuple[int, int]]:
    return set(zip(frame["user"].tolist(), frame["item"].tolist(), strict=True))


def spec(**overrides) -> SplitSpec:
    """The base parameters (conf/base/parameters_split.yml), with overrides."""
    values = {
        "strategy": "leave_last_out",
        "min_train_interactions": 2,
        "temporal_quantiles": [0.8, 0.9],
        "cold_item_fraction": 0.0,
    }
    return SplitSpec(**{**values, **overrides})


def test_the_spec_matches_the_base_parameters():
    params = yaml.safe_load((ROOT / "conf/base/parameters_split.yml").read_text())["split"]
    assert SplitSpec.from_params(params) == spec()


# user 0: items 0, 1, 2, 3 at times 1, 2, 3, 4 -> item 3 tests, item 2 validates
# user 1: items 2, 3, 0 only -> too few (needs 2 + 2), stays in train
# user 2: items 1, 3, 0, 2 at 5, 9, 7, 6 -> item 3 (time 9) tests, item 0 (time 7) validates
HAND_MADE = log(
    [
        (0, 0, 1),
        (0, 1, 2),
        (0, 2, 3),
        (0, 3, 4),
        (1, 2, 4),
        (1, 3, 5),
        (1, 0, 6),
        (2, 1, 5),
        (2, 3, 9),
        (2, 0, 7),
        (2, 2, 6),
    ]
)


def test_leave_last_out_tests_the_latest_and_validates_the_one_before():
    result = split_interactions(HAND_MADE, spec(), seed=0)
    assert pairs(result.test) == {(0, 3), (2, 3)}
    assert pairs(result.val) == {(0, 2), (2, 0)}
    assert len(result.train) == 7
    assert not pairs(result.train) & (pairs(result.val) | pairs(result.test))
    assert result.test_cold.empty
    report = result.report
    assert report["test_users"] == report["val_users"] == 2
    assert report["users_without_test"] == report["users_without_validation"] == 1
    assert report["test_interactions"] == report["val_interactions"] == 2


def test_held_out_sets_keep_every_column_of_the_log():
    weighted = HAND_MADE.assign(weight=np.arange(len(HAND_MADE), dtype=np.float32))
    result = split_interactions(weighted, spec(), seed=0)
    for frame in (result.train, result.val, result.test, result.test_cold):
        assert list(frame.columns) == ["user", "item", "timestamp", "weight"]
    assert result.test.set_index("item").loc[3, "weight"].tolist() == [3.0, 8.0]


def test_split_does_not_depend_on_row_order():
    shuffled = HAND_MADE.sample(frac=1.0, random_state=3).reset_index(drop=True)
    first = split_interactions(HAND_MADE, spec(), seed=0)
    again = split_interactions(shuffled, spec(), seed=0)
    assert pairs(first.val) == pairs(again.val) and pairs(first.test) == pairs(again.test)


def test_a_tie_on_the_time_goes_to_the_larger_item():
    # User 0's two latest share time 9: item 3 counts as later (test), item 1 validates.
    frame = log([(0, 5, 1), (0, 7, 1), (0, 1, 9), (0, 3, 9), (1, 1, 1), (1, 3, 2)])
    result = split_interactions(frame, spec(), seed=0)
    assert pairs(result.test) == {(0, 3)} and pairs(result.val) == {(0, 1)}


def test_min_train_interactions_sets_who_is_held_out():
    # User 0 has 3 interactions: enough for 2 held out + 1 train, not + 2.
    frame = log([(0, 0, 1), (0, 1, 2), (0, 2, 3), (1, 1, 1), (1, 2, 2), (1, 0, 3), (1, 3, 4)])
    frame = pd.concat([frame, log([(2, 3, 1), (2, 0, 2)])], ignore_index=True)
    one = split_interactions(frame, spec(min_train_interactions=1), seed=0)
    assert pairs(one.test) == {(0, 2), (1, 3)}
    two = split_interactions(frame, spec(min_train_interactions=2), seed=0)
    assert pairs(two.test) == {(1, 3)}


def test_a_test_item_never_seen_in_train_is_a_cold_row_and_a_validation_one_is_dropped():
    # Item 4 is only user 0's latest (test); item 3 only user 1's second-latest (validation).
    frame = log(
        [(0, 0, 1), (0, 1, 2), (0, 2, 3), (0, 4, 4)]
        + [(1, 0, 1), (1, 1, 2), (1, 3, 3), (1, 2, 4)]
        + [(2, 5, 1), (2, 2, 2), (2, 1, 3), (2, 0, 4)]
    )
    result = split_interactions(frame, spec(), seed=0)
    assert pairs(result.test_cold) == {(0, 4)}
    assert pairs(result.test) == {(1, 2), (2, 0)}
    assert pairs(result.val) == {(0, 2), (2, 1)}
    report = result.report
    assert report["test_cold_interactions"] == 1 and report["test_cold_users"] == 1
    assert report["val_dropped_cold_items"] == 1 and report["val_candidates"] == 3
    assert report["items_without_training"] == 2  # items 3 and 4


def test_rows_of_a_user_left_without_training_rows_are_dropped_and_counted():
    # global_temporal, cutoffs at times 8 (validation) and 9 (test): user 2 appears only at 8
    # and user 3 only at 9, so neither can be scored.
    frame = log(
        [(0, 0, 1), (0, 1, 2), (1, 0, 3), (1, 2, 4), (1, 3, 5), (0, 3, 6), (1, 1, 7)]
        + [(0, 2, 8), (2, 1, 8), (0, 4, 9), (1, 4, 9), (3, 1, 9), (4, 0, 1), (4, 1, 9)]
    )
    result = split_interactions(
        frame, spec(strategy="global_temporal", temporal_quantiles=[0.6, 0.8]), seed=0
    )
    report = result.report
    assert pairs(result.val) == {(0, 2)} and report["val_dropped_cold_users"] == 1
    # Item 4 first appears at time 9: the two warm users' test rows on it are cold rows.
    assert pairs(result.test_cold) == {(0, 4), (1, 4)}
    assert pairs(result.test) == {(4, 1)}
    assert report["test_dropped_cold_users"] == 1


def test_global_temporal_validates_between_the_cutoffs_and_tests_after_the_second():
    # Every user is active all along; each time slot holds different items.
    frame = log([(u, (u + i) % 5, 10 * i + u) for u in range(4) for i in range(10)])
    result = split_interactions(
        frame, spec(strategy="global_temporal", temporal_quantiles=[0.7, 0.85]), seed=0
    )
    ts = frame["timestamp"]
    val_cutoff = int(np.quantile(ts, 0.7, method="higher"))
    test_cutoff = int(np.quantile(ts, 0.85, method="higher"))
    assert result.train["timestamp"].max() < val_cutoff <= result.val["timestamp"].min()
    assert result.val["timestamp"].max() < test_cutoff
    assert test_cutoff <= min(result.test["timestamp"].min(), result.test_cold["timestamp"].min())
    assert result.report["temporal_cutoffs"] == [
        pd.Timestamp(c, unit="s", tz="UTC").isoformat() for c in (val_cutoff, test_cutoff)
    ]


def test_cold_items_lose_every_training_row_and_their_test_rows_turn_cold():
    # 10 users take 20 items each in time order; the latest two are held out.
    frame = log([(u, (u + i) % 20, i) for u in range(10) for i in range(20)])
    cold = cold_items(20, 0.25, seed=3)
    assert cold.size == 5
    result = split_interactions(frame, spec(cold_item_fraction=0.25), seed=3)
    assert not set(result.train["item"]) & set(cold.tolist())
    assert set(result.test_cold["item"]) <= set(cold.tolist())
    assert not set(result.test["item"]) & set(cold.tolist())
    assert not set(result.val["item"]) & set(cold.tolist())
    test_rows = result.test_cold.shape[0] + result.test.shape[0]
    assert test_rows == 10 and result.test_cold.shape[0] == (
        np.isin([(u + 19) % 20 for u in range(10)], cold).sum()
    )
    report = result.report
    assert report["cold_items_held_out"] == 5
    assert report["train_rows_removed_cold_items"] == (
        np.isin(frame["item"], cold).sum()
        - report["test_cold_interactions"]
        - report["val_dropped_cold_items"]
    )


def test_the_cold_items_are_drawn_with_the_seed():
    assert cold_items(100, 0.1, seed=1).tolist() == cold_items(100, 0.1, seed=1).tolist()
    assert cold_items(100, 0.1, seed=1).tolist() != cold_items(100, 0.1, seed=2).tolist()
    assert cold_items(100, 0.0, seed=1).size == 0


def test_a_split_that_leaves_validation_empty_is_an_error_naming_the_reason():
    with pytest.raises(InvalidInteractionsError) as caught:
        split_interactions(
            log([(0, 0, 1), (0, 1, 2), (0, 2, 3), (1, 0, 1)]), spec(), 0, source="x.parquet"
        )
    message = str(caught.value)
    assert message.startswith("x.parquet: the leave_last_out split leaves validation empty")
    assert "at least 4 interactions" in message


def test_a_split_that_leaves_test_empty_is_an_error():
    # Item 3 is every user's latest and never trained on: every test row is cold.
    frame = log([(0, 0, 1), (0, 1, 2), (0, 2, 3), (0, 3, 4), (1, 2, 1), (1, 0, 2), (1, 1, 3)])
    frame = pd.concat([frame, log([(1, 3, 4)])], ignore_index=True)
    with pytest.raises(InvalidInteractionsError, match="leaves test empty"):
        split_interactions(frame, spec(), seed=0)


def base_parameters() -> dict:
    parameters = {}
    for path in sorted((ROOT / "conf" / "base").glob("parameters*.yml")):
        parameters.update(yaml.safe_load(path.read_text()))
    return parameters


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            {"strategy": "random"},
            "split.strategy='random': input should be 'leave_last_out' or 'global_temporal'",
        ),
        (
            {"temporal_quantiles": [0.9, 0.8]},
            "split: temporal_quantiles must be [validation, test] with validation < test, "
            "not [0.9, 0.8]",
        ),
        (
            {"temporal_quantiles": [0.9]},
            "split: temporal_quantiles must be [validation, test] with validation < test, "
            "not [0.9]",
        ),
        (
            {"temporal_quantiles": [0.0, 0.5]},
            "split.temporal_quantiles.0=0.0: input should be greater than 0",
        ),
        ({"cold_item_fraction": 1.0}, "split.cold_item_fraction=1.0: input should be less than 1"),
    ],
)
def test_bad_parameters_get_the_schemas_one_line_message(override, message):
    parameters = base_parameters()
    with pytest.raises(SettingsError) as caught:
        check_parameters({**parameters, "split": {**parameters["split"], **override}})
    assert str(caught.value).startswith(f"bad settings (1): {message} (")


def test_a_spec_that_leaves_no_training_row_is_rejected_by_name():
    with pytest.raises(ValueError, match="split.min_train_interactions must be >= 1, not 0"):
        spec(min_train_interactions=0)


# --- properties ----------------------------------------------------------------------

random_logs = st.lists(
    st.tuples(st.integers(0, 6), st.integers(0, 9), st.integers(0, 5)), min_size=1, max_size=60
).map(lambda rows: log(list({(u, i): (u, i, t) for u, i, t in rows}.values())))


def check_held_out_sets(frame: pd.DataFrame, result) -> None:
    """Properties every split has: disjoint, warm, counted."""
    train, val, test, cold = result.train, result.val, result.test, result.test_cold
    held = [pairs(val), pairs(test), pairs(cold)]
    assert not pairs(train) & (held[0] | held[1] | held[2])
    assert not held[0] & held[1] and not held[1] & held[2] and not held[0] & held[2]
    train_users, train_items = set(train["user"]), set(train["item"])
    for part in (val, test, cold):
        assert set(part["user"]) <= train_users
    assert set(val["item"]) <= train_items and set(test["item"]) <= train_items
    assert not set(cold["item"]) & train_items
    report = result.report
    assert report["val_candidates"] == (
        len(val) + report["val_dropped_cold_items"] + report["val_dropped_cold_users"]
    )
    assert report["test_candidates"] == (len(test) + len(cold) + report["test_dropped_cold_users"])
    assert len(train) + report["train_rows_removed_cold_items"] + report["val_candidates"] + (
        report["test_candidates"]
    ) == len(frame)


@settings(max_examples=200, deadline=None)
@given(random_logs, st.integers(1, 3), st.booleans(), st.sampled_from([0.0, 0.0, 0.2]))
def test_leave_last_out_properties(frame, min_train, shuffle, cold_fraction):
    if shuffle:
        frame = frame.sample(frac=1.0, random_state=0).reset_index(drop=True)
    try:
        result = split_interactions(
            frame, spec(min_train_interactions=min_train, cold_item_fraction=cold_fraction), 0
        )
    except InvalidInteractionsError:
        return
    check_held_out_sets(frame, result)
    sizes = frame.groupby("user").size()
    eligible = set(sizes[sizes >= 2 + min_train].index)
    assert result.report["test_candidates"] == result.report["val_candidates"] == len(eligible)
    test_and_cold = pairs(result.test) | pairs(result.test_cold)
    for user, rows in frame.groupby("user"):
        ordered = rows.sort_values(["timestamp", "item"])
        latest, before = pairs(ordered.tail(1)), pairs(ordered.tail(2).head(1))
        mine = {p for p in test_and_cold if p[0] == user}
        # Whatever a user is tested on is its latest interaction, validated on the one before.
        assert mine <= latest
        assert {p for p in pairs(result.val) if p[0] == user} <= before
        if user in eligible and cold_fraction == 0.0 and (user in set(result.train["user"])):
            assert mine == latest


@settings(max_examples=100, deadline=None)
@given(random_logs, st.floats(0.05, 0.9), st.floats(0.01, 0.5))
def test_global_temporal_properties(frame, val_q, gap):
    test_q = min(val_q + gap, 0.99)
    try:
        result = split_interactions(
            frame, spec(strategy="global_temporal", temporal_quantiles=[val_q, test_q]), 0
        )
    except InvalidInteractionsError:
        return
    check_held_out_sets(frame, result)
    assert result.train["timestamp"].max() < result.val["timestamp"].min()
    assert result.val["timestamp"].max() < result.test["timestamp"].min()


def test_split_pipeline_is_wired_on_an_in_memory_catalog():
    from kedro.io import DataCatalog, MemoryDataset
    from kedro.runner import SequentialRunner

    from twotower_pipeline.pipelines.split import create_pipeline

    params = yaml.safe_load(
        (Path(__file__).resolve().parents[1] / "conf/base/parameters_split.yml").read_text()
    )["split"]
    inputs = {"interactions": HAND_MADE, "params:split": params, "params:seed": 0}
    catalog = DataCatalog({name: MemoryDataset(value) for name, value in inputs.items()})
    SequentialRunner().run(create_pipeline(), catalog)
    assert pairs(catalog.load("test_interactions")) == {(0, 3), (2, 3)}
    assert pairs(catalog.load("val_interactions")) == {(0, 2), (2, 0)}
    assert catalog.load("test_cold_interactions").empty
    assert catalog.load("split_report")["train_interactions"] == len(
        catalog.load("train_interactions")
    )
