"""The two-tower model: scaled-cosine logits, unit-norm towers, histories, features, cold items."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch.nn import functional as F

from twotower_pipeline.evaluation.retrieval import recommend_from_histories
from twotower_pipeline.model.config import TwoTowerConfig
from twotower_pipeline.model.ensemble import TowerEnsemble
from twotower_pipeline.model.layers import ScaledCosine, full_rows
from twotower_pipeline.model.towers import TwoTowerModel

N_USERS, N_ITEMS, DIM = 5, 7, 4

ID_ONLY = dict(
    n_users=N_USERS,
    n_items=N_ITEMS,
    embedding_dim=DIM,
    hidden_dims=[],
    init_std=0.1,
    logit_scale=1.0,
    max_logit_scale=100.0,
    user_id=True,
    user_id_dropout=0.0,
    history_length=0,
    history_pooling="mean",
    item_id_dropout=0.0,
    item_feature_vocab=1,
    item_feature_width=0,
    user_feature_vocab=1,
    user_feature_width=0,
)
# A history of 3 items with learned recency weights, two item and one user feature tokens.
WITH_EVERYTHING = ID_ONLY | dict(
    history_length=3,
    history_pooling="recency",
    item_feature_vocab=4,
    item_feature_width=2,
    user_feature_vocab=3,
    user_feature_width=1,
)
ITEM_TOKENS = torch.tensor([[1, 0], [1, 2], [2, 0], [3, 0], [1, 3], [0, 0], [2, 3]])
USER_TOKENS = torch.tensor([[1], [2], [1], [0], [2]])


def make_config(**overrides) -> TwoTowerConfig:
    return TwoTowerConfig(**(ID_ONLY | overrides))


def make_model(**overrides) -> TwoTowerModel:
    torch.manual_seed(0)
    model = TwoTowerModel(make_config(**overrides))
    if model.config.item_feature_width:
        model.set_side_information(item_tokens=ITEM_TOKENS)
    if model.config.user_feature_width:
        model.set_side_information(user_tokens=USER_TOKENS)
    return model


def known_log() -> pd.DataFrame:
    """User 0: item 5 at t=10, items 3 and 1 at t=20; user 1: item 2 at t=5; others nothing."""
    rows = [(0, 5, 10), (0, 3, 20), (0, 1, 20), (1, 2, 5)]
    return pd.DataFrame(rows, columns=["user", "item", "timestamp"]).astype(np.int64)


@pytest.mark.parametrize("hidden_dims", [[], [8], [8, 6]])
@pytest.mark.parametrize("towers", [ID_ONLY, WITH_EVERYTHING], ids=["id_only", "history"])
def test_tower_outputs_have_unit_length_with_or_without_mlp(hidden_dims, towers):
    model = make_model(**(towers | {"hidden_dims": hidden_dims}))
    items = model.all_item_vectors()
    window = (torch.tensor([[0, 5, 3], [0, 0, 0]]), torch.tensor([[False, True, True]] * 2))
    users = model.user_vectors(
        torch.tensor([0, 4]), window if model.history_table is not None else None
    )
    assert items.shape == (N_ITEMS, DIM) and users.shape == (2, DIM)
    assert torch.allclose(items.norm(dim=-1), torch.ones(N_ITEMS), atol=1e-6)
    assert torch.allclose(users.norm(dim=-1), torch.ones(2), atol=1e-6)


def test_mlp_layers_exist_only_when_hidden_dims_are_given():
    assert len(make_model().user_mlp) == 0 and len(make_model().item_mlp) == 0
    mlp = make_model(hidden_dims=[8]).user_mlp
    assert [type(layer).__name__ for layer in mlp] == ["Linear", "ReLU", "Linear"]
    assert mlp[0].in_features == DIM and mlp[-1].out_features == DIM


def test_logit_is_scale_times_cosine_and_not_squashed_by_a_sigmoid():
    model = make_model(logit_scale=50.0)
    with torch.no_grad():
        model.item_id[2] = model.user_id_table[1] * 3.0
        model.item_id[5] = -model.user_id_table[1]
    for mode in (model.train, model.eval):
        mode()
        logits = model(torch.tensor([1, 1]), torch.tensor([2, 5]))
        # Same direction: cosine 1, logit 50; opposite: -50. A sigmoid would give (0, 1).
        assert torch.allclose(logits, torch.tensor([50.0, -50.0]), atol=1e-4)


def test_the_written_out_cosine_gradient_is_the_gradient_of_normalise_then_dot():
    generator = torch.Generator().manual_seed(0)
    user = torch.randn(3, 4, dtype=torch.float64, generator=generator) * 2.0
    item = torch.randn(3, 5, 4, dtype=torch.float64, generator=generator)
    log_scale = torch.tensor(0.7, dtype=torch.float64)
    torch.autograd.gradcheck(
        ScaledCosine.apply,
        (user.requires_grad_(), item.requires_grad_(), log_scale.requires_grad_()),
    )
    # Against autograd through F.normalize, with a loss that weighs every logit differently.
    weights = torch.randn(3, 5, dtype=torch.float64, generator=generator)
    grads = []
    for logits in (
        lambda u, v, s: ScaledCosine.apply(u, v, s),
        lambda u, v, s: (
            s.exp() * (F.normalize(v, dim=-1) * F.normalize(u, dim=-1)[:, None]).sum(-1)
        ),
    ):
        u, v, s = (t.detach().clone().requires_grad_() for t in (user, item, log_scale))
        (logits(u, v, s) * weights).sum().backward()
        grads.append((u.grad, v.grad, s.grad))
    for ours, reference in zip(*grads, strict=True):
        assert torch.allclose(ours, reference, atol=1e-12)


def test_grouped_items_score_like_one_pair_at_a_time():
    model = make_model(**WITH_EVERYTHING).eval()
    users = torch.tensor([0, 4])
    items = torch.tensor([[1, 2, 3], [6, 0, 0]])
    window = (torch.tensor([[0, 5, 3], [2, 2, 6]]), torch.tensor([[False, True, True]] * 2))
    grouped = model(users, items, window)
    flat = model(
        users.repeat_interleave(3),
        items.reshape(-1),
        (window[0].repeat_interleave(3, 0), window[1].repeat_interleave(3, 0)),
    ).reshape(2, 3)
    assert grouped.shape == (2, 3)
    assert torch.allclose(grouped, flat, atol=1e-6)


def test_mean_pooling_averages_the_unmasked_history_rows_only():
    model = make_model(user_id=False, history_length=3, history_pooling="mean").eval()
    window = (torch.tensor([[6, 5, 3]]), torch.tensor([[False, True, True]]))
    expected = F.normalize((model.history_table[5] + model.history_table[3]) / 2, dim=-1)
    assert torch.allclose(model.user_vectors(torch.tensor([0]), window)[0], expected, atol=1e-6)


def test_scale_starts_at_logit_scale_and_is_clamped_at_its_maximum():
    model = make_model(logit_scale=1.0, max_logit_scale=20.0)
    assert model.logit_scale == pytest.approx(1.0)
    with torch.no_grad():
        model.log_scale.fill_(math.log(500.0))
    model.clamp_scale()
    assert model.logit_scale == pytest.approx(20.0)


def test_config_round_trips_through_a_dict_and_rejects_other_keys():
    config = make_config(**(WITH_EVERYTHING | {"hidden_dims": [8]}))
    assert TwoTowerConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=r"unknown \['dropout'\]"):
        TwoTowerConfig.from_dict(config.to_dict() | {"dropout": 0.1})
    without_history = {k: v for k, v in config.to_dict().items() if k != "history_length"}
    with pytest.raises(ValueError, match=r"missing \['history_length'\]"):
        TwoTowerConfig.from_dict(without_history)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"logit_scale": 200.0, "max_logit_scale": 100.0}, "logit_scale"),
        ({"n_items": 0}, "must be positive"),
        ({"history_pooling": "max"}, "history_pooling"),
        ({"item_id_dropout": 1.0}, "item_id_dropout"),
        ({"user_id_dropout": -0.1}, "user_id_dropout"),
        ({"user_id": False, "history_length": 0}, "the user tower has nothing to read"),
    ],
)
def test_config_rejects_impossible_settings(overrides, message):
    with pytest.raises(ValueError, match=message):
        make_config(**overrides)


def test_a_user_tower_of_features_alone_is_accepted():
    config = make_config(
        user_id=False, history_length=0, user_feature_vocab=3, user_feature_width=1
    )
    assert not config.user_id


def test_from_state_rebuilds_a_model_that_scores_identically():
    model = make_model(**(WITH_EVERYTHING | {"hidden_dims": [8]}))
    model.set_side_information(train_users=np.array([0, 1, 2]), train_items=np.array([0, 1, 2, 5]))
    model.eval()
    rebuilt = TwoTowerModel.from_state(model.config.to_dict(), model.state_dict())
    assert not rebuilt.training
    # The feature tokens and warm flags travel inside the state dict.
    assert torch.equal(rebuilt.item_tokens, ITEM_TOKENS)
    assert torch.equal(rebuilt.user_tokens, USER_TOKENS)
    assert rebuilt.item_warm.tolist() == [True, True, True, False, False, True, False]
    users = np.arange(N_USERS)
    expected = model.catalogue_scorer(known_log())(users)
    assert torch.equal(rebuilt.catalogue_scorer(known_log())(users), expected)


def test_a_cold_item_is_scored_from_its_features_alone_and_a_warm_one_from_its_id():
    model = make_model(**WITH_EVERYTHING)
    model.set_side_information(train_items=np.array([0, 1, 2, 3, 4, 5]))  # item 6 is cold
    model.eval()
    users = np.arange(N_USERS)
    before = model.catalogue_scorer(known_log())(users)
    with torch.no_grad():
        model.item_id[6] += 5.0
    assert torch.equal(model.catalogue_scorer(known_log())(users), before)
    with torch.no_grad():
        model.item_id[4] += 5.0
    after = model.catalogue_scorer(known_log())(users)
    assert not torch.allclose(after[:, 4], before[:, 4])
    assert torch.equal(after[:, :4], before[:, :4])


def test_a_user_unseen_in_training_is_scored_without_its_id_row():
    model = make_model(**WITH_EVERYTHING)
    model.set_side_information(train_users=np.array([0, 1, 2, 3]))  # user 4 is unseen
    model.eval()
    before = model.catalogue_scorer(known_log())(np.array([3, 4]))
    with torch.no_grad():
        model.user_id_table[3:5] += 5.0
    after = model.catalogue_scorer(known_log())(np.array([3, 4]))
    assert torch.equal(after[1], before[1])
    assert not torch.allclose(after[0], before[0])


def test_item_ids_are_dropped_in_training_mode_only():
    model = make_model(**(WITH_EVERYTHING | {"history_length": 0, "item_id_dropout": 0.5}))
    users, items = torch.zeros(200, dtype=torch.int64), torch.full((200,), 4)
    model.eval()
    with_id = model(users, items)
    assert torch.equal(with_id, with_id[:1].expand(200))  # eval: always the id
    model.item_warm[4] = False  # the same item, scored from its features alone
    features_only = model(users, items)[0]
    model.item_warm[4] = True

    model.train()
    torch.manual_seed(1)
    logits = model(users, items).detach()
    dropped = torch.isclose(logits, features_only, atol=1e-6)
    kept = torch.isclose(logits, with_id[0], atol=1e-6)
    assert (dropped | kept).all()  # each draw either keeps the id or stands on features
    assert 60 < int(dropped.sum()) < 140  # about half of 200 at dropout 0.5


def test_without_item_features_no_id_is_dropped_in_training():
    model = make_model(item_id_dropout=0.5).train()
    users, items = torch.zeros(50, dtype=torch.int64), torch.full((50,), 4)
    logits = model(users, items).detach()
    assert torch.equal(logits, logits[:1].expand(50))


def test_user_ids_are_dropped_in_training_when_features_carry_the_user():
    # User features, no history: a dropped id leaves the user's feature vector.
    model = make_model(**(WITH_EVERYTHING | {"history_length": 0, "user_id_dropout": 0.5}))
    users, items = torch.full((200,), 1), torch.full((200,), 4)
    model.eval()
    with_id = model(users, items)
    assert torch.equal(with_id, with_id[:1].expand(200))  # eval: always the id
    model.user_warm[1] = False  # the same user without its id row
    features_only = model(users, items)[0]
    model.user_warm[1] = True

    model.train()
    torch.manual_seed(1)
    logits = model(users, items).detach()
    dropped = torch.isclose(logits, features_only, atol=1e-6)
    kept = torch.isclose(logits, with_id[0], atol=1e-6)
    assert (dropped | kept).all()
    assert 60 < int(dropped.sum()) < 140  # about half of 200 at dropout 0.5


def test_a_user_tower_of_the_id_alone_never_drops_it():
    model = make_model(user_id_dropout=0.5).train()  # id-only towers
    users, items = torch.zeros(50, dtype=torch.int64), torch.full((50,), 4)
    logits = model(users, items).detach()
    assert torch.equal(logits, logits[:1].expand(50))


def test_catalogue_scorer_equals_pairwise_logits_with_the_same_histories():
    model = make_model(**WITH_EVERYTHING).eval()
    # Predicting user 0 at t=20: its history is item 5 alone (3 and 1 share that second).
    # User 1 is predicted at t=100: item 2. User 2 has no held-out row and no history.
    predict_at = pd.DataFrame({"user": [0, 1, 1], "timestamp": [20, 100, 200]})
    scores = model.catalogue_scorer(known_log(), predict_at)(np.array([0, 1, 2]))
    windows = torch.tensor([[0, 0, 5], [0, 0, 2], [0, 0, 0]])
    masks = torch.tensor([[False, False, True], [False, False, True], [False, False, False]])
    users = torch.tensor([0, 1, 2])
    pairwise = model(
        users.repeat_interleave(N_ITEMS),
        torch.arange(N_ITEMS).repeat(3),
        (windows.repeat_interleave(N_ITEMS, 0), masks.repeat_interleave(N_ITEMS, 0)),
    ).reshape(3, N_ITEMS)
    assert scores.shape == (3, N_ITEMS)
    assert torch.allclose(scores, pairwise, atol=1e-5)
    # Without predict_at the whole known history counts: user 0 now sees 5, 1 and 3.
    whole = model.catalogue_scorer(known_log())(np.array([0]))
    pairwise_whole = model(
        torch.zeros(N_ITEMS, dtype=torch.int64),
        torch.arange(N_ITEMS),
        (torch.tensor([[5, 1, 3]]).expand(N_ITEMS, 3), torch.ones(N_ITEMS, 3, dtype=torch.bool)),
    )
    assert torch.allclose(whole[0], pairwise_whole, atol=1e-5)


def test_the_id_only_scorer_needs_no_log_but_a_history_tower_does():
    model = make_model(logit_scale=3.0).eval()
    users = torch.tensor([0, 2])
    pairwise = model(users.repeat_interleave(N_ITEMS), torch.arange(N_ITEMS).repeat(2))
    assert torch.allclose(model.catalogue_scorer()(np.array([0, 2])), pairwise.reshape(2, -1))
    with pytest.raises(ValueError, match="known interactions"):
        make_model(**WITH_EVERYTHING).catalogue_scorer()


# --- an ensemble of towers ------------------------------------------------------------------
def make_ensemble() -> TowerEnsemble:
    """A history-of-3 model (scale 2) and a history-of-1 model with user ids (scale 5)."""
    first = make_model(**(WITH_EVERYTHING | {"user_id": False, "logit_scale": 2.0}))
    torch.manual_seed(1)
    second = TwoTowerModel(make_config(history_length=1, embedding_dim=6, logit_scale=5.0))
    return TowerEnsemble([first.eval(), second.eval()], ["first", "second"]).eval()


def test_an_ensemble_scores_the_mean_of_its_members_logits():
    ensemble = make_ensemble()
    predict_at = pd.DataFrame({"user": [0, 1], "timestamp": [20, 100]})
    users = np.arange(N_USERS)
    members = [m.catalogue_scorer(known_log(), predict_at)(users) for m in ensemble.members]
    mean = ensemble.catalogue_scorer(known_log(), predict_at)(users)
    assert torch.allclose(mean, (members[0] + members[1]) / 2, atol=1e-6)
    assert ensemble.logit_scale == pytest.approx(3.5)


def test_an_ensemble_is_one_two_tower_model_of_unit_vectors_at_the_summed_size():
    ensemble = make_ensemble()
    items = ensemble.all_item_vectors()
    # Windows of the longest member (3); the history-of-1 member reads the latest item only.
    window = (torch.tensor([[0, 0, 5], [0, 0, 2]]), torch.tensor([[0, 0, 1], [0, 0, 1]]).bool())
    users = ensemble.user_vectors(torch.tensor([0, 1]), window)
    assert items.shape == (N_ITEMS, DIM + 6) and users.shape == (2, DIM + 6)
    assert torch.allclose(items.norm(dim=1), torch.ones(N_ITEMS), atol=1e-6)
    assert torch.allclose(users.norm(dim=1), torch.ones(2), atol=1e-6)
    first, second = ensemble.members
    expected = 0.5 * sum(
        m.logit_scale * m.user_vectors(torch.tensor([0, 1]), w) @ m.all_item_vectors().T
        for m, w in ((first, window), (second, (window[0][:, -1:], window[1][:, -1:])))
    )
    assert torch.allclose(ensemble.logit_scale * users @ items.T, expected, atol=1e-5)


def test_an_ensemble_rebuilds_from_its_config_and_state_and_serves_new_users():
    ensemble = make_ensemble()
    config = ensemble.config.to_dict()
    assert config["names"] == ["first", "second"] and config["history_length"] == 3
    rebuilt = TwoTowerModel.from_state(config, ensemble.state_dict())
    assert isinstance(rebuilt, TowerEnsemble) and not rebuilt.training
    users = np.arange(N_USERS)
    expected = ensemble.catalogue_scorer(known_log())(users)
    assert torch.equal(rebuilt.catalogue_scorer(known_log())(users), expected)
    # A user the model never saw, known by a history of original ids.
    index = pd.DataFrame({"item": np.arange(N_ITEMS), "item_id": [f"i{i}" for i in range(N_ITEMS)]})
    top = recommend_from_histories(
        rebuilt, pd.DataFrame({"user_id": ["new", "new"], "item_id": ["i5", "i2"]}), index, 3
    )
    assert len(top) == 3 and not top["item_id"].isin(["i5", "i2"]).any()


# --- item biases ------------------------------------------------------------------------------
def biased_model() -> TwoTowerModel:
    model = make_model(**(WITH_EVERYTHING | {"item_bias": True, "logit_scale": 5.0}))
    with torch.no_grad():
        model.item_bias.copy_(torch.arange(N_ITEMS, dtype=torch.float32).unsqueeze(1) / 10)
    return model


def test_an_item_bias_is_added_to_the_scaled_cosine_and_starts_at_zero():
    fresh = make_model(item_bias=True)
    assert torch.equal(fresh.item_bias, torch.zeros(N_ITEMS, 1))
    model = biased_model().eval()
    users, items = torch.tensor([0, 0]), torch.tensor([2, 6])
    window = (torch.tensor([[0, 5, 3]] * 2), torch.tensor([[False, True, True]] * 2))
    user, item, bias = model.towers(users, items, window)
    cosine = F.cosine_similarity(user, item, dim=-1)
    expected = 5.0 * cosine + torch.tensor([0.2, 0.6])
    assert torch.allclose(model(users, items, window), expected, atol=1e-5)
    assert torch.allclose(bias, torch.tensor([0.2, 0.6]))


def test_biased_vectors_score_as_the_model_through_one_extra_coordinate():
    model = biased_model().eval()
    window = (torch.tensor([[0, 5, 3], [0, 0, 2]]), torch.tensor([[False, True, True]] * 2))
    users = torch.tensor([0, 4])
    items = model.all_item_vectors()
    vectors = model.user_vectors(users, window)
    assert items.shape == (N_ITEMS, DIM + 1) and vectors.shape == (2, DIM + 1)
    assert torch.equal(vectors[:, -1], torch.ones(2))
    from_vectors = model.logit_scale * vectors @ items.T
    direct = model(
        users.repeat_interleave(N_ITEMS),
        torch.arange(N_ITEMS).repeat(2),
        (window[0].repeat_interleave(N_ITEMS, 0), window[1].repeat_interleave(N_ITEMS, 0)),
    )
    assert torch.allclose(from_vectors, direct.view(2, N_ITEMS), atol=1e-5)


def test_a_cold_item_is_scored_with_the_lowest_bias_of_the_trained_items():
    model = biased_model()
    trained = np.array([1, 2, 3, 4, 6])  # items 0 and 5 have no training interaction
    model.set_side_information(train_users=np.arange(N_USERS), train_items=trained)
    model.eval()
    assert model.logit_bias(torch.tensor([0, 5, 6])).tolist() == pytest.approx([0.1, 0.1, 0.6])
    model.train()  # in training every row is its own
    assert model.logit_bias(torch.tensor([0, 5])).tolist() == pytest.approx([0.0, 0.5])


def test_the_in_batch_block_adds_each_column_positives_bias():
    model = biased_model().train()
    user = torch.randn(3, DIM)
    item = torch.randn(3, 2, DIM)
    bias = torch.tensor([[0.5, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    _, plain = model.group_scores(user, item)
    _, biased = model.group_scores(user, item, bias)
    assert torch.allclose(biased - plain, torch.tensor([[0.5, 1.0, -1.0]] * 3))


def test_a_model_saved_before_item_biases_existed_loads_without_one():
    values = make_config().to_dict()
    del values["item_bias"]
    assert TwoTowerConfig.from_dict(values).item_bias is False


def test_a_history_that_reads_the_item_tower_pools_the_items_vectors():
    model = make_model(
        **(WITH_EVERYTHING | {"history_pooling": "mean", "history_reads_item_tower": True})
    ).eval()
    assert model.history_table is None
    window = (torch.tensor([[0, 5, 3]]), torch.tensor([[False, True, True]]))
    user = model.user_vectors(torch.tensor([4]), window, anonymous=True)
    items = model._item_tower(torch.tensor([5, 3]), full_rows, drop_ids=False)
    assert torch.allclose(user[0], F.normalize(items.mean(0), dim=0), atol=1e-6)
