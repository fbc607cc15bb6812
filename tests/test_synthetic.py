"""The embedded synthetic log: deterministic, shaped like real feedback, regenerated on change."""

from __future__ import annotations

import pandas as pd
import pytest
from kedro.io import DatasetError

from twotower_pipeline.datasets import SyntheticInteractionsDataset
from twotower_pipeline.synthetic import SyntheticLogSpec, generate_interactions

SMALL = SyntheticLogSpec(n_users=60, n_items=40, mean_interactions_per_user=8, seed=3)


def test_same_spec_gives_the_same_log_bit_for_bit():
    pd.testing.assert_frame_equal(generate_interactions(SMALL), generate_interactions(SMALL))


def test_another_seed_gives_another_log():
    other = generate_interactions(SyntheticLogSpec(**{**SMALL.__dict__, "seed": 4}))
    assert not generate_interactions(SMALL).equals(other)


def test_log_has_string_ids_epoch_seconds_and_no_repeated_pair():
    log = generate_interactions(SMALL)
    assert list(log.columns) == ["user_id", "item_id", "timestamp"]
    assert log["user_id"].str.startswith("u").all() and log["item_id"].str.startswith("i").all()
    assert not log.duplicated(["user_id", "item_id"]).any()
    assert log["timestamp"].between(1_704_067_200, 1_704_067_200 + 2 * 365 * 86400).all()


def test_every_user_has_the_minimum_and_at_most_half_the_catalogue():
    per_user = generate_interactions(SMALL).groupby("user_id").size()
    assert len(per_user) == SMALL.n_users
    assert per_user.min() >= SMALL.min_interactions_per_user
    assert per_user.max() <= SMALL.n_items // 2


def test_item_popularity_is_long_tailed():
    spec = SyntheticLogSpec(n_users=400, n_items=200, mean_interactions_per_user=20, seed=1)
    counts = generate_interactions(spec).groupby("item_id").size().sort_values(ascending=False)
    top_tenth = counts.iloc[: len(counts) // 10].sum() / counts.sum()
    assert top_tenth > 0.2  # a uniform catalogue would give 0.1


def test_dataset_generates_once_and_regenerates_when_the_spec_changes(tmp_path):
    path = tmp_path / "raw.parquet"
    first = SyntheticInteractionsDataset(filepath=str(path), spec=SMALL.__dict__)
    log = first.load()
    written = path.stat().st_mtime_ns
    assert SyntheticInteractionsDataset(filepath=str(path), spec=SMALL.__dict__).load().equals(log)
    assert path.stat().st_mtime_ns == written
    changed = SyntheticInteractionsDataset(
        filepath=str(path), spec={**SMALL.__dict__, "n_users": 70}
    )
    assert changed.load()["user_id"].nunique() == 70


def test_dataset_is_read_only(tmp_path):
    dataset = SyntheticInteractionsDataset(filepath=str(tmp_path / "raw.parquet"))
    with pytest.raises(DatasetError, match="read-only"):
        dataset.save(pd.DataFrame({"user_id": ["u"], "item_id": ["i"], "timestamp": [0]}))
