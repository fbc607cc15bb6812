"""The evaluation protocol: which positives are ranked, what is known when predicting them."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from twotower_pipeline.pipelines.evaluation import nodes
from twotower_pipeline.ranking.protocol import held_out_sets, items_without_training

TRAIN = pd.DataFrame({"user": [0, 0, 1, 1, 2, 2], "item": [0, 1, 0, 2, 0, 3]})
VAL = pd.DataFrame({"user": [0, 1, 2], "item": [2, 1, 1]})
TEST = pd.DataFrame({"user": [0, 2], "item": [3, 2]})
TEST_COLD = pd.DataFrame({"user": [1], "item": [4]})
EVALUATION = {"ks": [1, 2], "chunk_size": 2, "max_users": None}


def pairs(frame: pd.DataFrame) -> set[tuple[int, int]]:
    return set(zip(frame["user"].tolist(), frame["item"].tolist(), strict=True))


def test_test_knows_train_and_validation_and_validation_knows_train_only():
    sets = held_out_sets(TRAIN, VAL, TEST, TEST_COLD, 5)
    assert pairs(sets["validation"].known) == pairs(TRAIN)
    assert pairs(sets["test"].known) == pairs(TRAIN) | pairs(VAL)
    assert sets["test"].candidates is None and sets["cold_items_full"].candidates is None
    assert pairs(sets["cold_items"].positives) == pairs(sets["cold_items_full"].positives)


def test_the_cold_candidates_are_the_items_without_a_training_row():
    assert items_without_training(TRAIN, 6).tolist() == [False] * 4 + [True, True]
    sets = held_out_sets(TRAIN, VAL, TEST, TEST_COLD, 6)
    assert sets["cold_items"].candidates.tolist() == [False] * 4 + [True, True]


def test_the_model_is_scored_with_what_is_known_when_predicting_each_set(monkeypatch):
    # A fake model that records each catalogue_scorer call and scores item i as -i for
    # everyone: lower items first.
    calls = []

    def catalogue_scorer(known, predict_at=None):
        calls.append((pairs(known), pairs(predict_at)))
        return lambda users: -torch.arange(5, dtype=torch.float32).expand(len(users), 5).clone()

    fake = SimpleNamespace(catalogue_scorer=catalogue_scorer)
    monkeypatch.setattr(nodes, "TwoTowerModel", SimpleNamespace(from_state=lambda c, s: fake))
    results = nodes.evaluate_model(
        {}, {"n_users": 3, "n_items": 5}, TRAIN, VAL, TEST, TEST_COLD, 0, 2, EVALUATION
    )
    known_for_test = pairs(TRAIN) | pairs(VAL)
    assert (pairs(TRAIN), pairs(VAL)) in calls
    assert (known_for_test, pairs(TEST)) in calls
    assert (known_for_test, pairs(TEST_COLD)) in calls
    assert len(calls) == 3  # the two cold sets share one scorer
    assert set(results) == {"test", "validation", "cold_items", "cold_items_full"}
    # Test: user 0 knows 0, 1, 2 -> 3 ranks first; user 2 knows 0, 3, 1 -> 2 first.
    assert results["test"]["hit_rate@1"] == 1.0 and results["test"]["users"] == 2
    assert results["test"]["hit_rate_se@1"] == 0.0
    # Validation: user 0 knows 0, 1 -> item 2 first; user 1 knows 0, 2 -> 1 first;
    # user 2 knows 0, 3 -> 1 first.
    assert results["validation"]["hit_rate@1"] == 1.0
    # Cold: item 4 alone among the cold items; behind item 3 on the full catalogue.
    assert results["cold_items"]["hit_rate@1"] == 1.0
    assert results["cold_items_full"]["hit_rate@1"] == 0.0
    assert results["cold_items_full"]["mrr"] == pytest.approx(0.5)
    for section, prefix in (("test", "test"), ("validation", "val")):
        assert results[section][f"{prefix}_sample_positives"] == len(
            TEST if section == "test" else VAL
        )
        assert results[section][f"{prefix}_sample_negatives"] == 2 * len(
            TEST if section == "test" else VAL
        )
        assert 0.0 <= results[section][f"{prefix}_auc"] <= 1.0
        assert np.isfinite(results[section][f"{prefix}_log_loss"])


def test_a_sample_of_users_is_seeded_and_still_masks_every_validation_row():
    train = pd.DataFrame({"user": [0, 1, 2, 3, 4, 5], "item": [0] * 6, "timestamp": [1] * 6})
    val = pd.DataFrame({"user": [0, 1, 2, 3, 4, 5], "item": [1] * 6, "timestamp": [2] * 6})
    test = pd.DataFrame({"user": [0, 1, 2, 3, 4, 5], "item": [2] * 6, "timestamp": [3] * 6})
    cold = test.iloc[:0]
    a = held_out_sets(train, val, test, cold, 3, max_users=2, seed=7)
    b = held_out_sets(train, val, test, cold, 3, max_users=2, seed=7)
    assert a["test"].positives["user"].nunique() == 2
    assert a["test"].positives.equals(b["test"].positives)
    assert len(a["test"].known) == len(train) + len(val)  # every validation item stays masked
    assert held_out_sets(train, val, test, cold, 3, max_users=None)["test"].positives.equals(test)
