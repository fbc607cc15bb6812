"""The training loop: fresh seeded negatives, determinism, resume, divergence, history."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from torch.nn import functional as F

from twotower_pipeline import training
from twotower_pipeline.model import TwoTowerConfig, TwoTowerModel
from twotower_pipeline.pipelines.training.nodes import train_two_tower
from twotower_pipeline.sampling import PositiveSet, build_training_examples
from twotower_pipeline.training import (
    TrainingDivergedError,
    TrainingSpec,
    draw_groups,
    fit,
    groups_from_examples,
    learning_rate_at,
    train_epoch,
)

N_USERS, N_ITEMS, NEG = 12, 10, 3


@pytest.fixture
def data() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two taste groups: users 0-5 like items 0-4, users 6-11 like items 5-9.

    Each user has 3 of their group's items in train and a 4th held out.
    """
    train_rows, val_rows = [], []
    for user in range(N_USERS):
        group = 0 if user < 6 else 5
        liked = [group + (user + j) % 5 for j in range(4)]
        train_rows += [(user, item) for item in liked[:3]]
        val_rows.append((user, liked[3]))
    train = pd.DataFrame(train_rows, columns=["user", "item"]).astype(np.int32)
    val = pd.DataFrame(val_rows, columns=["user", "item"]).astype(np.int32)
    return train, val


def make_spec(tmp_path, **overrides) -> TrainingSpec:
    values = dict(
        seed=7,
        num_epochs=4,
        neg_ratio=NEG,
        batch_size=8,
        learning_rate=0.05,
        weight_decay=0.01,
        scale_lr_ratio=1.0,
        lr_schedule="cosine",
        resample_each_epoch=True,
        eval_k=3,
        checkpoint_dir=str(tmp_path / "checkpoints"),
        resume=False,
        progress_bar=False,
    )
    return TrainingSpec(**(values | overrides))


def new_model() -> TwoTowerModel:
    torch.manual_seed(3)
    return TwoTowerModel(
        TwoTowerConfig(
            n_users=N_USERS,
            n_items=N_ITEMS,
            embedding_dim=8,
            hidden_dims=[],
            init_std=0.1,
            logit_scale=1.0,
            max_logit_scale=100.0,
        )
    )


def first_examples(train: pd.DataFrame, seed: int = 7) -> pd.DataFrame:
    return build_training_examples(train, N_ITEMS, NEG, np.random.default_rng([seed, 0]))


def timeless(history: pd.DataFrame) -> pd.DataFrame:
    return history.drop(columns=["examples_per_second", "seconds"])


def test_history_has_one_row_per_epoch_with_the_documented_columns(data, tmp_path):
    train, val = data
    history = fit(new_model(), train, val, first_examples(train), make_spec(tmp_path))
    assert list(history.columns) == [
        "epoch",
        "train_loss",
        "val_loss",
        "val_auc",
        "recall@3",
        "ndcg@3",
        "logit_scale",
        "learning_rate",
        "examples_per_second",
        "seconds",
    ]
    assert history["epoch"].tolist() == [1, 2, 3, 4]
    assert np.isfinite(history.to_numpy(dtype=float)).all()


def test_the_model_learns_the_two_taste_groups(data, tmp_path):
    train, val = data
    spec = make_spec(tmp_path, num_epochs=15, learning_rate=0.05, lr_schedule="constant")
    model = new_model()
    history = fit(model, train, val, first_examples(train), spec)
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    scores = model.score_all_items(torch.arange(N_USERS))
    own_group = scores[:6, :5].mean() - scores[:6, 5:].mean()
    assert own_group > 0


def test_same_seed_gives_identical_history_and_weights(data, tmp_path):
    train, val = data
    model_a, model_b = new_model(), new_model()
    a = fit(model_a, train, val, first_examples(train), make_spec(tmp_path / "a"))
    b = fit(model_b, train, val, first_examples(train), make_spec(tmp_path / "b"))
    pd.testing.assert_frame_equal(timeless(a), timeless(b))
    for (name, wa), wb in zip(
        model_a.state_dict().items(), model_b.state_dict().values(), strict=True
    ):
        assert torch.equal(wa, wb), name


def test_epoch_zero_trains_on_the_persisted_examples_and_later_epochs_draw_what_the_sampler_draws(
    data,
):
    train, _ = data
    examples = first_examples(train)
    groups = groups_from_examples(examples, NEG)
    assert groups.items.shape == (len(train), 1 + NEG)
    assert torch.equal(groups.items[:, 0], torch.from_numpy(train["item"].to_numpy(np.int64)))
    positives = PositiveSet(train["user"].to_numpy(), train["item"].to_numpy(), N_ITEMS)
    drawn = draw_groups(train, positives, NEG, np.random.default_rng([7, 2]), None)
    expected = groups_from_examples(
        build_training_examples(train, N_ITEMS, NEG, np.random.default_rng([7, 2])), NEG
    )
    assert torch.equal(drawn.items, expected.items) and torch.equal(drawn.users, expected.users)
    assert not torch.equal(drawn.items, groups.items)  # a fresh draw, not epoch 0's


def test_negatives_drawn_for_an_epoch_are_never_the_users_training_positives(data):
    train, _ = data
    positives = PositiveSet(train["user"].to_numpy(), train["item"].to_numpy(), N_ITEMS)
    drawn = draw_groups(train, positives, NEG, np.random.default_rng([7, 5]), None)
    users = drawn.users.numpy().repeat(NEG)
    assert not positives.contains(users, drawn.items[:, 1:].numpy().ravel()).any()


def test_examples_in_another_layout_are_rejected(data):
    train, _ = data
    examples = first_examples(train)
    with pytest.raises(ValueError, match="another neg_ratio"):
        groups_from_examples(examples, NEG + 1)
    with pytest.raises(ValueError, match="one positive followed by"):
        groups_from_examples(examples.sample(frac=1.0, random_state=0), NEG)


def test_training_loss_is_bce_with_logits_on_the_raw_logits(data):
    train, _ = data
    groups = groups_from_examples(first_examples(train), NEG)
    model = new_model()
    with torch.no_grad():
        model.log_scale.fill_(np.log(30.0))  # large logits: a second sigmoid would be obvious
        logits = model(groups.users, groups.items)
    labels = torch.zeros_like(logits)
    labels[:, 0] = 1
    expected = F.binary_cross_entropy_with_logits(logits, labels).item()
    frozen = torch.optim.SGD(model.parameters(), lr=0.0)
    loss = train_epoch(
        model, frozen, groups, batch_size=len(train), generator=torch.Generator().manual_seed(0)
    )
    assert loss == pytest.approx(expected, rel=1e-6)
    assert (
        loss > 1.0
    )  # saturated raw logits give a large BCE; sigmoid(sigmoid(x)) would stay below 1


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_run(data, tmp_path, monkeypatch):
    train, val = data
    uninterrupted = new_model()
    full = fit(uninterrupted, train, val, first_examples(train), make_spec(tmp_path / "full"))

    spec = make_spec(tmp_path / "cut")
    real_train_epoch = training.train_epoch
    calls = {"n": 0}

    def killed_in_epoch_3(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the process dies after two finished epochs
        return real_train_epoch(*args, **kwargs)

    monkeypatch.setattr(training, "train_epoch", killed_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        fit(new_model(), train, val, first_examples(train), spec)
    monkeypatch.setattr(training, "train_epoch", real_train_epoch)

    resumed = new_model()  # a fresh process: weights come from the checkpoint
    history = fit(resumed, train, val, first_examples(train), replace(spec, resume=True))
    pd.testing.assert_frame_equal(timeless(history), timeless(full))
    for (name, wa), wb in zip(
        resumed.state_dict().items(), uninterrupted.state_dict().values(), strict=True
    ):
        assert torch.equal(wa, wb), name


def test_a_fresh_run_ignores_a_checkpoint_left_by_an_earlier_run(data, tmp_path):
    train, val = data
    spec = make_spec(tmp_path, num_epochs=2)
    fit(new_model(), train, val, first_examples(train), spec)
    history = fit(new_model(), train, val, first_examples(train), spec)
    assert history["epoch"].tolist() == [1, 2]


def test_resume_refuses_a_checkpoint_written_with_other_training_settings(data, tmp_path):
    train, val = data
    fit(new_model(), train, val, first_examples(train), make_spec(tmp_path, num_epochs=1))
    other = make_spec(tmp_path, num_epochs=2, learning_rate=0.01, resume=True)
    with pytest.raises(ValueError, match="learning_rate: 0.05 -> now 0.01"):
        fit(new_model(), train, val, first_examples(train), other)


def test_resume_refuses_a_checkpoint_of_another_seed(data, tmp_path):
    train, val = data
    fit(new_model(), train, val, first_examples(train), make_spec(tmp_path, num_epochs=1))
    with pytest.raises(ValueError, match="another model or seed"):
        fit(
            new_model(), train, val, first_examples(train), make_spec(tmp_path, seed=8, resume=True)
        )


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(data, tmp_path, monkeypatch):
    train, val = data
    spec = make_spec(tmp_path)
    model = new_model()
    real_forward = TwoTowerModel.forward
    steps = {"n": 0}
    steps_per_epoch = -(-len(train) // spec.batch_size)

    def poisoned_in_epoch_3(self, users, items):
        logits = real_forward(self, users, items)
        if self.training:
            steps["n"] += 1
            if steps["n"] > 2 * steps_per_epoch:
                return logits * float("nan")
        return logits

    monkeypatch.setattr(TwoTowerModel, "forward", poisoned_in_epoch_3)
    with pytest.raises(TrainingDivergedError, match=r"epoch 3.*last good checkpoint \(epoch 2\)"):
        fit(model, train, val, first_examples(train), spec)
    state = torch.load(training.checkpoint_path(spec), weights_only=True)
    assert len(state["history"]) == 2
    assert all(torch.isfinite(tensor).all() for tensor in state["model"].values())


def test_cosine_schedule_starts_at_the_learning_rate_and_decays(tmp_path):
    spec = make_spec(tmp_path, num_epochs=4, learning_rate=0.1)
    assert [learning_rate_at(spec, e) for e in range(4)] == pytest.approx(
        [0.1, 0.08536, 0.05, 0.01464], abs=1e-5
    )
    assert learning_rate_at(replace(spec, lr_schedule="constant"), 3) == 0.1
    with pytest.raises(ValueError, match="lr_schedule"):
        learning_rate_at(replace(spec, lr_schedule="linear"), 0)


def test_the_logit_scale_is_not_weight_decayed(tmp_path):
    optimizer = training.make_optimizer(new_model(), make_spec(tmp_path, weight_decay=0.5))
    decays = {
        id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]
    }
    model_params = dict(new_model().named_parameters())
    assert len(decays) == len(model_params)
    scale_group = [g for g in optimizer.param_groups if g["weight_decay"] == 0.0]
    assert len(scale_group) == 1 and len(scale_group[0]["params"]) == 1


def test_the_scale_learns_at_its_own_ratio_of_the_learning_rate(data, tmp_path):
    train, val = data
    frozen, learning = new_model(), new_model()
    fit(
        frozen,
        train,
        val,
        first_examples(train),
        make_spec(tmp_path / "a", num_epochs=2, learning_rate=0.04, scale_lr_ratio=0.0),
    )
    fit(
        learning,
        train,
        val,
        first_examples(train),
        make_spec(tmp_path / "b", num_epochs=2, learning_rate=0.04, scale_lr_ratio=1.0),
    )
    assert frozen.logit_scale == pytest.approx(1.0, abs=1e-6)
    assert abs(learning.logit_scale - 1.0) > 0.02


def test_one_log_line_per_epoch_and_no_progress_bar_off_a_terminal(
    data, tmp_path, caplog, monkeypatch
):
    train, val = data
    monkeypatch.setenv("CI", "true")
    spec = make_spec(tmp_path, num_epochs=3, progress_bar=True)
    assert not training._show_progress(spec)
    with caplog.at_level(logging.INFO, logger="twotower_pipeline.training"):
        fit(new_model(), train, val, first_examples(train), spec)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert len(lines) == 3 and "train_loss" in lines[0] and "val_loss" in lines[0]


def test_training_node_returns_embeddings_keyed_by_original_ids(data, tmp_path):
    train, val = data
    user_index = pd.DataFrame(
        {"user": np.arange(N_USERS), "user_id": [f"u{i}" for i in range(N_USERS)]}
    )
    item_index = pd.DataFrame(
        {"item": np.arange(N_ITEMS), "item_id": [f"i{i}" for i in range(N_ITEMS)]}
    )
    spec = make_spec(tmp_path, num_epochs=2)
    training_params = {
        k: v
        for k, v in vars(spec).items()
        if k not in {"seed", "num_epochs", "neg_ratio", "eval_k"}
    }
    model, config, history, users, items = train_two_tower(
        first_examples(train, seed=1),
        train,
        val,
        user_index,
        item_index,
        seed=1,
        neg_ratio=NEG,
        logit_scale=1.0,
        num_epochs=2,
        model={"embedding_dim": 8, "hidden_dims": [], "init_std": 0.1, "max_logit_scale": 100.0},
        training=training_params,
        negative_sampling={"distribution": "uniform", "popularity_alpha": 0.75},
        headline_k=3,
    )
    assert config["n_users"] == N_USERS and len(history) == 2
    assert "recall@3" in history.columns
    assert users["user_id"].tolist() == user_index["user_id"].tolist()
    assert items["item_id"].tolist() == item_index["item_id"].tolist()
    vectors = np.stack(items["embedding"].to_numpy())
    assert vectors.shape == (N_ITEMS, 8)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(vectors, model.item_tower.all().detach().numpy())
