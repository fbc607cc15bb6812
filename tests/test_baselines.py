"""Baselines are scored by the model's protocol, side by side, and say when one is absent."""

from __future__ import annotations

import builtins

import numpy as np
import pandas as pd
import pytest

from twotower_pipeline.baselines import als_scorer, popularity_scorer, random_scorer
from twotower_pipeline.pipelines.evaluation.nodes import evaluate_baselines

TRAIN = pd.DataFrame({"user": [0, 0, 1, 1, 2], "item": [0, 1, 0, 2, 0]})
VAL = pd.DataFrame({"user": [0, 1, 2], "item": [2, 1, 1]})
EVALUATION = {
    "ks": [1, 2],
    "chunk_size": 2,
    "als": {"enabled": False, "factors": 4, "regularization": 0.01, "alpha": 1.0, "iterations": 2},
}


def test_popularity_scores_every_user_by_training_counts():
    scores = popularity_scorer(TRAIN, 4)(np.array([0, 2]))
    assert scores.tolist() == [[3.0, 1.0, 1.0, 0.0], [3.0, 1.0, 1.0, 0.0]]


def test_random_scorer_is_reproducible_with_its_seed():
    first = random_scorer(5, seed=1)(np.array([0, 1]))
    again = random_scorer(5, seed=1)(np.array([0, 1]))
    assert first.shape == (2, 5)
    assert np.array_equal(first.numpy(), again.numpy())


def test_baselines_are_scored_on_the_same_validation_users():
    index = pd.DataFrame({"user_id": ["a", "b", "c"]}), pd.DataFrame({"item_id": list("wxyz")})
    results = evaluate_baselines(TRAIN, VAL, *index, 0, EVALUATION)
    assert results["popularity"]["users"] == results["random"]["users"] == 3
    # Masking item 0 (everyone's), user 0's best unseen item is 2 (tied with 1 at count 1):
    # popularity's top-1 hits for user 0 half the time; its HR@2 is 1 for all three users.
    assert results["popularity"]["hit_rate@2"] == 1.0
    assert results["als"] == {"skipped": "disabled in parameters (evaluation.als.enabled)"}


def test_absent_implicit_is_reported_not_fatal(monkeypatch):
    real_import = builtins.__import__

    def no_implicit(name, *args, **kwargs):
        if name.startswith("implicit"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_implicit)
    assert als_scorer(TRAIN, 3, 4, EVALUATION["als"], seed=0) is None
    index = pd.DataFrame({"user_id": ["a", "b", "c"]}), pd.DataFrame({"item_id": list("wxyz")})
    enabled = {**EVALUATION, "als": {**EVALUATION["als"], "enabled": True}}
    results = evaluate_baselines(TRAIN, VAL, *index, 0, enabled)
    assert results["als"] == {"skipped": "the optional library implicit is not installed"}


def test_als_scores_every_item_for_each_user_when_installed():
    pytest.importorskip("implicit")
    scores = als_scorer(TRAIN, 3, 4, EVALUATION["als"], seed=0)(np.array([0, 1, 2]))
    assert tuple(scores.shape) == (3, 4)


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
