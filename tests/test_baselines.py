"""Baselines are scored by the model's protocol, side by side, and say when one is absent."""

from __future__ import annotations

import builtins

import numpy as np
import pandas as pd
import pytest

from twotower_pipeline.evaluation.baselines import als_scorer, popularity_scorer, random_scorer
from twotower_pipeline.pipelines.evaluation.nodes import evaluate_baselines

# Five items; item 4 has no training row, so user 1's test row on it is a cold row.
TRAIN = pd.DataFrame({"user": [0, 0, 1, 1, 2, 2], "item": [0, 1, 0, 2, 0, 3]})
VAL = pd.DataFrame({"user": [0, 1, 2], "item": [2, 1, 1]})
TEST = pd.DataFrame({"user": [0, 2], "item": [3, 2]})
TEST_COLD = pd.DataFrame({"user": [1], "item": [4]})
HELD_OUT = (TRAIN, VAL, TEST, TEST_COLD)
INDEX = pd.DataFrame({"user_id": ["a", "b", "c"]}), pd.DataFrame({"item_id": list("vwxyz")})
EVALUATION = {
    "ks": [1, 2],
    "chunk_size": 2,
    "max_users": None,
    "als": {"enabled": False, "factors": 4, "regularization": 0.01, "alpha": 1.0, "iterations": 2},
}


def test_popularity_scores_every_user_by_training_counts():
    scores = popularity_scorer(TRAIN, 5)(np.array([0, 2]))
    assert scores.tolist() == [[3.0, 1.0, 1.0, 1.0, 0.0], [3.0, 1.0, 1.0, 1.0, 0.0]]


def test_random_scorer_is_reproducible_with_its_seed():
    first = random_scorer(5, seed=1)(np.array([0, 1]))
    again = random_scorer(5, seed=1)(np.array([0, 1]))
    assert first.shape == (2, 5)
    assert np.array_equal(first.numpy(), again.numpy())


def test_baselines_are_scored_on_validation_test_and_the_cold_rows():
    results = evaluate_baselines(*HELD_OUT, *INDEX, 0, EVALUATION)
    validation, test = results["validation"], results["test"]
    assert validation["popularity"]["users"] == validation["random"]["users"] == 3
    # Validation masks train only. User 0's best unseen items are 2 and 3 (count 1 each,
    # tied), so popularity's top-2 holds the validation item of every user.
    assert validation["popularity"]["hit_rate@2"] == 1.0
    # Test masks train + validation: user 0 is left with items 3 and 4, and 3 (count 1)
    # beats 4 (count 0); user 2 with 2 and 4. Popularity's top-1 hits for both.
    assert test["popularity"]["users"] == 2 and test["popularity"]["hit_rate@1"] == 1.0
    assert test["als"] == {"skipped": "disabled in parameters (evaluation.als.enabled)"}
    # Among the cold items (item 4 alone) every scorer ranks user 1's item first; on the
    # full catalogue popularity puts item 3 ahead of it.
    assert set(results["cold_items"]) == {"popularity", "random"}
    assert results["cold_items"]["popularity"]["hit_rate@1"] == 1.0
    assert results["cold_items"]["random"]["hit_rate@1"] == 1.0
    assert results["cold_items"]["popularity"]["coverage@1"] == 1.0  # of the cold items
    assert results["cold_items_full"]["popularity"]["hit_rate@1"] == 0.0
    assert results["cold_items_full"]["popularity"]["hit_rate@2"] == 1.0


def test_without_cold_rows_the_cold_sets_say_so():
    results = evaluate_baselines(TRAIN, VAL, TEST, TEST_COLD.iloc[:0], *INDEX, 0, EVALUATION)
    for section in ("cold_items", "cold_items_full"):
        assert results[section]["popularity"] == {
            "skipped": "no test row has an item without training interactions"
        }


def test_absent_implicit_is_reported_not_fatal(monkeypatch):
    real_import = builtins.__import__

    def no_implicit(name, *args, **kwargs):
        if name.startswith("implicit"):
            raise ModuleNotFoundError(f"No module named {name!r}", name="implicit")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_implicit)
    assert als_scorer(TRAIN, 3, 5, EVALUATION["als"], seed=0) is None
    enabled = {**EVALUATION, "als": {**EVALUATION["als"], "enabled": True}}
    results = evaluate_baselines(*HELD_OUT, *INDEX, 0, enabled)
    for section in ("test", "validation"):
        assert results[section]["als"] == {
            "skipped": "the optional library implicit is not installed"
        }


def test_als_scores_every_item_for_each_user_when_installed():
    pytest.importorskip("implicit")
    scores = als_scorer(TRAIN, 3, 5, EVALUATION["als"], seed=0)(np.array([0, 1, 2]))
    assert tuple(scores.shape) == (3, 5)


def test_als_ranks_the_item_a_users_taste_group_shares_above_the_other_groups_items():
    pytest.importorskip("implicit")
    # Users 0-5 take items 0-2, users 6-11 items 3-5; user 0 has not seen item 2 yet.
    pairs = [(u, i) for u in range(6) for i in range(3)] + [
        (u, i) for u in range(6, 12) for i in range(3, 6)
    ]
    pairs.remove((0, 2))
    train = pd.DataFrame(pairs, columns=["user", "item"])
    params = {**EVALUATION["als"], "factors": 2, "iterations": 15}
    scores = als_scorer(train, 12, 6, params, seed=0)(np.array([0]))[0]
    assert scores[2] > scores[3:].max()
