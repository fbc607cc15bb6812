"""The embedded synthetic log: deterministic, shaped like real feedback, regenerated on change."""

from __future__ import annotations

import tracemalloc
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from kedro.io import DatasetError

from twotower_pipeline.data.features import FeatureSpec, build_side, padded_tokens
from twotower_pipeline.data.interactions import encode_ids
from twotower_pipeline.data.splitting import SplitSpec, split_interactions
from twotower_pipeline.data.synthetic import (
    SyntheticLogSpec,
    generate_interactions,
    generate_world,
    oracle_scorer,
)
from twotower_pipeline.io.datasets import (
    SYNTHETIC_COMPANIONS,
    SyntheticInteractionsDataset,
    synthetic_companion_path,
)
from twotower_pipeline.ranking.metrics import ranking_metrics
from twotower_pipeline.ranking.protocol import items_without_training, known_for_test

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


# A world big enough for ranking figures to mean something, small enough for a test.
MEDIUM = SyntheticLogSpec(n_users=1000, n_items=600, mean_interactions_per_user=25, seed=7)
SPLIT = SplitSpec.from_params(
    {
        "strategy": "leave_last_out",
        "min_train_interactions": 2,
        "temporal_quantiles": [0.8, 0.9],
        "cold_item_fraction": 0.0,
    }
)


@pytest.fixture(scope="module")
def medium_world():
    """(world, split, user_index, item_index) of MEDIUM, split leave-last-out."""
    world = generate_world(MEDIUM)
    interactions, user_index, item_index = encode_ids(world.interactions)
    return world, split_interactions(interactions, SPLIT, seed=0), user_index, item_index


def test_world_with_features_and_taste_is_the_same_bit_for_bit():
    first, second = generate_world(SMALL), generate_world(SMALL)
    for name in ("interactions", *SYNTHETIC_COMPANIONS):
        pd.testing.assert_frame_equal(getattr(first, name), getattr(second, name))


def test_every_entity_has_one_feature_row_with_valid_values():
    world = generate_world(SMALL)
    items, users = world.item_features, world.user_features
    assert len(items) == SMALL.n_items and items["item_id"].is_unique
    assert len(users) == SMALL.n_users and users["user_id"].is_unique
    assert items["genres"].map(len).between(1, 3).all()
    assert users["age"].between(16, 80).all()
    assert set(world.interactions["item_id"]) <= set(items["item_id"])


def test_new_arrivals_are_each_users_latest_events_and_give_cold_test_items(medium_world):
    world, split, _, item_index = medium_world
    release = world.item_taste.set_index("item_id")["release"]
    log = world.interactions.assign(release=release.loc[world.interactions["item_id"]].to_numpy())
    is_new = log["release"] > release.min()
    assert (log.loc[is_new, "timestamp"] >= log.loc[is_new, "release"]).all()
    latest_old = log[~is_new].groupby("user_id")["timestamp"].max()
    new_events = log[is_new]
    assert (new_events["timestamp"].to_numpy() >= latest_old.loc[new_events["user_id"]]).all()
    assert new_events.groupby("user_id").size().max() <= MEDIUM.max_new_items_per_user
    # Held out, never trained on: the cold rows of the split.
    assert len(split.test_cold) > 0
    new_indices = np.flatnonzero(item_index["item_id"].isin(release[release > 0].index))
    assert set(split.test_cold["item"]) <= set(new_indices)


def _popularity(train: pd.DataFrame, n_items: int):
    counts = torch.from_numpy(np.bincount(train["item"], minlength=n_items).astype(np.float32))
    return lambda users: counts.log1p().expand(len(users), -1).clone()


def _hit_rate(scorer, split, n_users, n_items, candidates=None, cold=False) -> float:
    known = known_for_test(split.train, split.val)
    held_out = split.test_cold if cold else split.test
    metrics = ranking_metrics(
        scorer, known, held_out, n_users, n_items, [10], 1024, 0, candidates=candidates
    )
    return metrics["hit_rate@10"]


def test_the_oracle_ranks_test_items_far_better_than_popularity(medium_world):
    world, split, user_index, item_index = medium_world
    n_users, n_items = len(user_index), len(item_index)
    oracle = oracle_scorer(world.user_taste, world.item_taste, user_index, item_index)
    popularity = _popularity(split.train, n_items)
    assert _hit_rate(oracle, split, n_users, n_items) > 2 * _hit_rate(
        popularity, split, n_users, n_items
    )


def test_item_features_alone_carry_taste_for_warm_and_cold_items(medium_world):
    """A user's genre/studio profile from training scores items better than popularity does."""
    world, split, user_index, item_index = medium_world
    n_users, n_items = len(user_index), len(item_index)
    feature_spec = FeatureSpec.from_params(
        "item",
        {
            "source": "items",
            "id": "item_id",
            "categorical": ["studio"],
            "multi_valued": ["genres"],
            "buckets": 10,
            "missing_values": "error",
        },
    )
    tokens, encoder, _ = build_side(
        world.item_features, feature_spec, item_index["item_id"], split.train["item"], "item"
    )
    one_hot = np.zeros((n_items, encoder["vocab_size"]), np.float32)
    one_hot[np.arange(n_items)[:, None], padded_tokens(tokens["tokens"])] = 1.0
    one_hot[:, 0] = 0.0
    profile = np.zeros((n_users, encoder["vocab_size"]), np.float32)
    np.add.at(profile, split.train["user"].to_numpy(), one_hot[split.train["item"].to_numpy()])
    profile = profile / profile.sum(axis=1, keepdims=True) - one_hot.mean(axis=0)
    popularity = _popularity(split.train, n_items)

    def by_features(users):
        return popularity(users) + 3.0 * torch.from_numpy(profile[users] @ one_hot.T)

    assert _hit_rate(by_features, split, n_users, n_items) > 1.2 * _hit_rate(
        popularity, split, n_users, n_items
    )
    cold = items_without_training(split.train, n_items)
    features_only = lambda users: torch.from_numpy(profile[users] @ one_hot.T)  # noqa: E731
    uniform = lambda users: torch.zeros(len(users), n_items)  # noqa: E731
    assert _hit_rate(features_only, split, n_users, n_items, cold, cold=True) > 1.5 * _hit_rate(
        uniform, split, n_users, n_items, cold, cold=True
    )


def test_the_oracle_refuses_data_that_is_not_its_own(medium_world):
    world, _, user_index, item_index = medium_world
    other = item_index.assign(item_id=item_index["item_id"].str.replace("i", "x"))
    with pytest.raises(ValueError, match=r"0 user\(s\) and \d+ item\(s\) of the index"):
        oracle_scorer(world.user_taste, world.item_taste, user_index, other)


def test_dataset_writes_its_companions_and_regenerates_when_one_is_missing(tmp_path):
    path = tmp_path / "raw.parquet"
    SyntheticInteractionsDataset(filepath=str(path), spec=SMALL.__dict__).load()
    world = generate_world(SMALL)
    for name in SYNTHETIC_COMPANIONS:
        companion = pd.read_parquet(synthetic_companion_path(path, name))
        pd.testing.assert_frame_equal(companion, getattr(world, name), check_dtype=False)
    synthetic_companion_path(path, "item_features").unlink()
    SyntheticInteractionsDataset(filepath=str(path), spec=SMALL.__dict__).load()
    assert synthetic_companion_path(path, "item_features").exists()


def test_another_feature_share_gives_other_tastes():
    other = generate_world(replace(SMALL, genre_share=0.0))
    assert not other.item_taste.equals(generate_world(SMALL).item_taste)


def test_generating_for_more_users_does_not_hold_more_memory():
    # Users are drawn a chunk at a time (here 100 users x 20,000 items): each chunk's
    # temporaries must be freed before the next, so six chunks peak like one.
    def peak_mb(n_users: int) -> float:
        tracemalloc.start()
        try:
            generate_world(
                SyntheticLogSpec(n_users=n_users, n_items=20_000, mean_interactions_per_user=10)
            )
            return tracemalloc.get_traced_memory()[1] / 2**20
        finally:
            tracemalloc.stop()

    one_chunk, six_chunks = peak_mb(100), peak_mb(600)
    # A chunk's item order alone is 100 x 20,000 int64 = 16 MB; keeping five more adds 80.
    assert six_chunks < one_chunk + 40, (one_chunk, six_chunks)
