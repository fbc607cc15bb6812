"""Recommendations for users the model never saw, from their histories alone."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import torch

# Shared builders (pytest puts tests/ on the import path).
from test_model import ID_ONLY
from test_training import make_spec
from twotower_pipeline.data.sampling import build_training_examples
from twotower_pipeline.evaluation.retrieval import recommend_from_histories
from twotower_pipeline.model.config import TwoTowerConfig
from twotower_pipeline.model.towers import TwoTowerModel
from twotower_pipeline.training.loop import fit

N_USERS, N_ITEMS, NEG = 40, 10, 3


def two_taste_groups() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Users 0-19 watch items 0-4 in turn, users 20-39 items 5-9; the last one validates."""
    rows = []
    for user in range(N_USERS):
        group = 0 if user < 20 else 5
        for step in range(5):
            rows.append((user, group + (user + step) % 5, step))
    log = pd.DataFrame(rows, columns=["user", "item", "timestamp"])
    last = log.groupby("user")["timestamp"].transform("max") == log["timestamp"]
    return log[~last].reset_index(drop=True), log[last].reset_index(drop=True)


def history_config(**overrides) -> TwoTowerConfig:
    # test_model's id-only towers, sized for this log, with a 3-item mean-pooled history.
    values = ID_ONLY | dict(
        n_users=N_USERS, n_items=N_ITEMS, embedding_dim=8, user_id=False, history_length=3
    )
    return TwoTowerConfig(**(values | overrides))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> TwoTowerModel:
    train, val = two_taste_groups()
    torch.manual_seed(0)
    model = TwoTowerModel(history_config())
    spec = make_spec(
        tmp_path_factory.mktemp("run"),
        seed=3,
        num_epochs=30,
        batch_size=16,
        weight_decay=0.0,
        lr_schedule="constant",
        eval_chunk_size=64,
        chunk_positives=64,
    )
    examples = build_training_examples(train, N_ITEMS, NEG, np.random.default_rng([3, 0]))
    fit(model, train, val, examples, spec)
    return model.eval()


ITEM_INDEX = pd.DataFrame(
    {"item": np.arange(N_ITEMS), "item_id": [f"m{i}" for i in range(N_ITEMS)]}
)


def test_a_new_user_gets_items_of_the_taste_its_history_shows(trained):
    histories = pd.DataFrame(
        {
            "user_id": ["new-a", "new-a", "new-b", "new-b"],
            "item_id": ["m0", "m1", "m6", "m7"],
            "timestamp": [1, 2, 1, 2],
        }
    )
    top = recommend_from_histories(trained, histories, ITEM_INDEX, k=3)
    first = top.groupby("user_id")["item_id"].apply(list).to_dict()
    assert set(first) == {"new-a", "new-b"}
    assert all(item in {"m2", "m3", "m4"} for item in first["new-a"])
    assert all(item in {"m5", "m8", "m9"} for item in first["new-b"])
    assert top.groupby("user_id")["rank"].apply(list).tolist() == [[1, 2, 3], [1, 2, 3]]


def test_items_the_model_does_not_know_are_left_out_and_counted(trained, caplog):
    histories = pd.DataFrame({"user_id": ["x", "x", "y"], "item_id": ["m0", "zz", "qq"]})
    with caplog.at_level(logging.WARNING, logger="twotower_pipeline.evaluation.retrieval"):
        top = recommend_from_histories(trained, histories, ITEM_INDEX, k=2)
    assert set(top["user_id"]) == {"x"}  # y's only item is unknown: no rows for y
    assert "m0" not in set(top["item_id"])  # what the user has seen is never recommended
    assert "2 history row(s)" in caplog.text


def test_an_id_only_model_cannot_score_a_user_it_never_saw():
    model = TwoTowerModel(history_config(user_id=True, history_length=0))
    histories = pd.DataFrame({"user_id": ["x"], "item_id": ["m0"]})
    with pytest.raises(ValueError, match="no history tower"):
        recommend_from_histories(model, histories, ITEM_INDEX, k=2)
