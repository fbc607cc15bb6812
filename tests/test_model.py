"""The two-tower model: raw scaled-cosine logits, unit-norm towers, a clamped learned scale."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from twotower_pipeline.model import TwoTowerConfig, TwoTowerModel


def make_model(**overrides) -> TwoTowerModel:
    torch.manual_seed(0)
    return TwoTowerModel(make_config(n_users=5, n_items=7, embedding_dim=4, **overrides))


def make_config(**overrides) -> TwoTowerConfig:
    values = dict(embedding_dim=4, hidden_dims=[], init_std=0.1, logit_scale=1.0)
    return TwoTowerConfig(**(values | {"max_logit_scale": 100.0} | overrides))


@pytest.mark.parametrize("hidden_dims", [[], [8], [8, 6]])
def test_tower_outputs_have_unit_length_with_or_without_mlp(hidden_dims):
    model = make_model(hidden_dims=hidden_dims)
    few = model.item_tower(torch.tensor([0, 3, 3]))  # fewer lookups than rows: per-lookup path
    every = model.item_tower.all()
    assert torch.allclose(few.norm(dim=-1), torch.ones(3), atol=1e-6)
    assert torch.allclose(every.norm(dim=-1), torch.ones(7), atol=1e-6)
    assert every.shape == (7, 4)


def test_a_batch_larger_than_the_table_gives_the_same_vectors_as_single_lookups():
    model = make_model(hidden_dims=[8])
    ids = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 0]])  # 8 lookups >= 7 rows: gathered from all()
    for row in range(2):
        assert torch.allclose(model.item_tower(ids)[row], model.item_tower(ids[row]), atol=1e-6)


def test_mlp_layers_exist_only_when_hidden_dims_are_given():
    assert len(make_model().user_tower.mlp) == 0
    mlp = make_model(hidden_dims=[8]).user_tower.mlp
    assert [type(layer).__name__ for layer in mlp] == ["Linear", "ReLU", "Linear"]
    assert mlp[0].in_features == 4 and mlp[-1].out_features == 4


def test_logit_is_scale_times_cosine_and_not_squashed_by_a_sigmoid():
    model = make_model(logit_scale=50.0)
    with torch.no_grad():
        model.item_tower.embedding.weight[2] = model.user_tower.embedding.weight[1] * 3.0
        model.item_tower.embedding.weight[5] = -model.user_tower.embedding.weight[1]
    logits = model(torch.tensor([1, 1]), torch.tensor([2, 5]))
    # Same direction: cosine 1, logit 50; opposite: -50. A sigmoid would give values in (0, 1).
    assert torch.allclose(logits, torch.tensor([50.0, -50.0]), atol=1e-4)


def test_grouped_items_score_like_one_pair_at_a_time():
    model = make_model()
    users = torch.tensor([0, 4])
    items = torch.tensor([[1, 2, 3], [6, 0, 0]])
    grouped = model(users, items)
    flat = model(users.repeat_interleave(3), items.reshape(-1)).reshape(2, 3)
    assert grouped.shape == (2, 3)
    assert torch.allclose(grouped, flat, atol=1e-6)


def test_score_all_items_matches_pairwise_logits():
    model = make_model(logit_scale=3.0)
    users = torch.tensor([0, 2])
    scores = model.score_all_items(users)
    assert scores.shape == (2, 7)
    pairwise = model(users.repeat_interleave(7), torch.arange(7).repeat(2)).reshape(2, 7)
    assert torch.allclose(scores, pairwise, atol=1e-5)
    assert torch.allclose(model.catalogue_scorer()(np.array([0, 2])), pairwise, atol=1e-5)


def test_scale_starts_at_logit_scale_and_is_clamped_at_its_maximum():
    model = make_model(logit_scale=1.0, max_logit_scale=20.0)
    assert model.logit_scale == pytest.approx(1.0)
    with torch.no_grad():
        model.log_scale.fill_(math.log(500.0))
    model.clamp_scale()
    assert model.logit_scale == pytest.approx(20.0)


def test_config_round_trips_through_a_dict_and_rejects_unknown_keys():
    config = make_config(n_users=3, n_items=4, hidden_dims=[8])
    assert TwoTowerConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown model config key"):
        TwoTowerConfig.from_dict(config.to_dict() | {"dropout": 0.1})


def test_config_rejects_an_initial_scale_above_its_clamp():
    with pytest.raises(ValueError, match="logit_scale"):
        make_config(n_users=3, n_items=4, logit_scale=200.0, max_logit_scale=100.0)


def test_state_dict_reloads_into_a_model_built_from_the_config():
    model = make_model(hidden_dims=[8])
    rebuilt = TwoTowerModel(TwoTowerConfig.from_dict(model.config.to_dict()))
    rebuilt.load_state_dict(model.state_dict())
    users = torch.tensor([0, 1, 4])
    assert torch.equal(rebuilt.score_all_items(users), model.score_all_items(users))
