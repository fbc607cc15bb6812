"""Each health flag is raised by the failure it names and stays down on a healthy run."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from twotower_pipeline.evaluation.health import (
    HealthThresholds,
    RunFacts,
    constant_predictor_loss,
    health_report,
    mean_pairwise_cosine,
)

THRESHOLDS = HealthThresholds(
    collapse_loss=0.01,
    early_epochs=3,
    clamp_fraction=0.99,
    frozen_relative_change=1e-4,
    parallel_cosine=0.9,
    min_lift=1.0,
    overfit_epochs=3,
    overfit_min_rise=0.10,
    overfit_ranking_drop=0.05,
    still_improving_gain=0.02,
    scale_drop_ratio=0.67,
)
# A healthy run: both losses fall, the scale grows, the model beats popularity.
HEALTHY = pd.DataFrame(
    {
        "epoch": [1, 2, 3, 4, 5, 6],
        "train_loss": [0.64, 0.45, 0.38, 0.33, 0.30, 0.28],
        "val_loss": [0.65, 0.47, 0.40, 0.36, 0.34, 0.33],
        "val_auc": [0.60, 0.75, 0.82, 0.86, 0.88, 0.89],
        "recall@10": [0.05, 0.09, 0.11, 0.12, 0.125, 0.126],
        "logit_scale": [1.2, 1.8, 2.5, 3.1, 3.6, 4.0],
    }
)
COMPARISON = {
    "model": {"hit_rate@10": 0.20, "ndcg@10": 0.10},
    "popularity": {"hit_rate@10": 0.10, "ndcg@10": 0.05},
    "als": {"hit_rate@10": 0.18, "ndcg@10": 0.09},
    "random": {"hit_rate@10": 0.01, "ndcg@10": 0.004},
}
SPREAD_ITEMS = np.random.default_rng(0).standard_normal((200, 16))


def report(
    history=HEALTHY,
    items=SPREAD_ITEMS,
    comparison=COMPARISON,
    neg_ratio=5,
    max_scale=100.0,
    positives=100,
    negatives=500,
    initial_scale=1.0,
):
    facts = RunFacts(max_scale, neg_ratio, 10, positives, negatives, initial_scale)
    return health_report(history, items, comparison, facts, THRESHOLDS)


def raised(result) -> set[str]:
    return {f["name"] for f in result["flags"] if f["raised"]}


def numbers(result, name):
    return next(f for f in result["flags"] if f["name"] == name)["numbers"]


def with_column(name, values):
    history = HEALTHY.copy()
    history[name] = values
    return history


def test_a_healthy_run_raises_no_flag():
    result = report()
    assert raised(result) == set()
    assert result["verdict"] == "healthy"


def test_every_flag_says_what_to_do():
    assert all(f["advice"] for f in report()["flags"])


def test_nan_loss_is_flagged_with_its_epoch():
    result = report(with_column("train_loss", [0.64, 0.45, math.nan, 0.33, 0.30, 0.28]))
    assert "non_finite" in raised(result)
    assert numbers(result, "non_finite")["epochs_by_column"] == {"train_loss": [3]}


def test_infinite_item_embedding_is_flagged():
    items = SPREAD_ITEMS.copy()
    items[7, 0] = np.inf
    assert "non_finite" in raised(report(items=items))


def test_train_loss_near_zero_early_is_a_collapse():
    # The seed's "train loss 0.0001".
    result = report(with_column("train_loss", [0.2, 0.001, 0.0001, 0.0001, 0.0001, 0.0001]))
    assert "loss_collapse" in raised(result)
    assert numbers(result, "loss_collapse")["lowest_early_train_loss"] == 0.0001


def test_a_low_loss_late_in_a_long_run_is_not_a_collapse():
    history = with_column("train_loss", [0.6, 0.4, 0.3, 0.1, 0.02, 0.005])
    assert "loss_collapse" not in raised(report(history))


def test_tiny_validation_loss_with_a_mediocre_auc_means_one_class():
    # The seed's "val loss 0.0001": a loss on positives only.
    history = with_column("val_loss", [0.3, 0.01, 0.001, 0.0005, 0.0002, 0.0001])
    result = report(history)
    assert "one_class_validation" in raised(result)
    assert numbers(result, "one_class_validation")["final_val_loss"] == 0.0001


def test_a_validation_sample_without_negatives_is_flagged():
    assert "one_class_validation" in raised(report(negatives=0))


def test_an_undefined_validation_auc_is_flagged():
    history = with_column("val_auc", [math.nan] * 6)
    assert "one_class_validation" in raised(report(history))


def test_a_loss_that_never_beats_the_base_rate_is_not_learning():
    history = with_column("train_loss", [0.693, 0.692, 0.691, 0.691, 0.691, 0.691])
    result = report(history)
    assert "not_learning" in raised(result)
    assert numbers(result, "not_learning")["constant_predictor_loss"] == pytest.approx(0.4506, 1e-3)


def test_constant_predictor_loss_matches_the_known_values():
    assert constant_predictor_loss(5) == pytest.approx(0.4506, abs=1e-4)
    assert constant_predictor_loss(1) == pytest.approx(math.log(2))


def test_scale_at_its_clamp_is_flagged():
    history = with_column("logit_scale", [10, 40, 80, 100, 100, 100])
    result = report(history)
    assert "scale_at_clamp" in raised(result)
    assert numbers(result, "scale_at_clamp")["final_logit_scale"] == 100


def test_a_scale_that_never_moves_is_frozen():
    assert "scale_frozen" in raised(report(with_column("logit_scale", [1.0] * 6)))


def test_nearly_parallel_item_embeddings_are_a_collapse():
    direction = np.ones(16)
    items = direction + 0.05 * np.random.default_rng(1).standard_normal((200, 16))
    result = report(items=items)
    assert "embedding_collapse" in raised(result)
    assert numbers(result, "embedding_collapse")["mean_pairwise_cosine"] > 0.9


def test_mean_pairwise_cosine_matches_the_pairwise_average():
    vectors = np.random.default_rng(2).standard_normal((30, 5))
    units = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cosines = units @ units.T
    expected = (cosines.sum() - np.trace(cosines)) / (30 * 29)
    assert mean_pairwise_cosine(vectors) == pytest.approx(expected)


def test_a_model_no_better_than_popularity_is_flagged():
    comparison = {
        "model": {"hit_rate@10": 0.10, "ndcg@10": 0.06},
        "popularity": {"hit_rate@10": 0.10, "ndcg@10": 0.05},
    }
    result = report(comparison=comparison)
    assert "no_lift" in raised(result)
    assert numbers(result, "no_lift")["lift_hit_rate@10"] == 1.0


def test_val_loss_rising_while_train_loss_falls_is_overfitting():
    history = with_column("val_loss", [0.65, 0.47, 0.40, 0.42, 0.45, 0.50])
    result = report(history)
    assert "overfitting" in raised(result)
    assert numbers(result, "overfitting")["best_epoch"] == 3
    assert numbers(result, "overfitting")["rising_from_epoch"] == 3


def test_a_small_val_loss_drift_while_ranking_improves_is_not_overfitting():
    # A growing scale makes the model a little over-confident; ranking still improves.
    history = with_column("val_loss", [0.65, 0.47, 0.40, 0.405, 0.41, 0.42])
    result = report(history)
    assert "overfitting" not in raised(result)
    assert (
        "not flagged" in next(f for f in result["flags"] if f["name"] == "overfitting")["message"]
    )


def test_a_small_val_loss_rise_with_falling_ranking_is_overfitting():
    history = with_column("val_loss", [0.65, 0.47, 0.40, 0.405, 0.41, 0.42])
    history["recall@10"] = [0.05, 0.09, 0.12, 0.115, 0.11, 0.10]
    assert "overfitting" in raised(report(history))


def test_a_short_wobble_in_val_loss_is_not_overfitting():
    history = with_column("val_loss", [0.65, 0.47, 0.48, 0.40, 0.41, 0.38])
    assert "overfitting" not in raised(report(history))


def test_a_ranking_metric_still_climbing_at_the_end_means_stopped_too_early():
    # The seed's five epochs: recall@10 still up 10% in the last one.
    history = with_column("recall@10", [0.01, 0.03, 0.06, 0.09, 0.09, 0.099])
    result = report(history)
    assert "still_improving" in raised(result)
    assert numbers(result, "still_improving")["last_epoch_gain"] == pytest.approx(0.1)


def test_a_scale_the_model_had_to_shrink_means_an_over_confident_start():
    # The seed's initial scale 10, which training pulled down to ~4.8.
    history = with_column("logit_scale", [5.7, 4.6, 4.6, 4.7, 4.8, 4.8])
    result = report(history, initial_scale=10.0)
    assert "scale_overconfident_start" in raised(result)
    assert numbers(result, "scale_overconfident_start")["ratio"] == pytest.approx(0.48)


def test_a_first_epoch_worse_than_saying_one_half_means_an_over_confident_start():
    # The seed's scale 10 with a warm-up: the scale barely moves (10 -> 8.7), but the first
    # epoch's loss, 0.914, is above the 0.693 of logits at 0.
    history = with_column("logit_scale", [9.0, 8.7, 8.6, 8.7, 8.7, 8.7])
    history["train_loss"] = [0.914, 0.535, 0.479, 0.451, 0.437, 0.43]
    result = report(history, initial_scale=10.0)
    assert "scale_overconfident_start" in raised(result)
    assert numbers(result, "scale_overconfident_start")["first_epoch_loss"] == 0.914
    # The default's start, 0.64 in the first epoch, is not.
    assert "scale_overconfident_start" not in raised(report(initial_scale=1.0))


def test_a_model_below_another_baseline_is_flagged_even_with_lift_over_popularity():
    comparison = {**COMPARISON, "als": {"hit_rate@10": 0.27, "ndcg@10": 0.16}}
    result = report(comparison=comparison)
    assert raised(result) == {"behind_baseline"}
    assert numbers(result, "behind_baseline")["baselines"]["als"] == 0.27


def test_verdict_names_the_raised_flags():
    history = with_column("logit_scale", [1.0] * 6)
    assert report(history)["verdict"] == "1 flag(s) raised: scale_frozen"


def test_a_model_scoring_zero_is_flagged_even_when_popularity_scores_zero():
    zero = {"hit_rate@10": 0.0, "ndcg@10": 0.0}
    comparison = {**COMPARISON, "model": zero, "popularity": zero}
    assert "no_lift" in raised(report(comparison=comparison))


def test_only_the_test_figures_of_the_baselines_count_not_validation_or_cold_sets():
    # A baseline ahead of the model on validation or on the cold items does not flag:
    # the verdict is on test, the figures every headline reports.
    ahead = {"model": {"hit_rate@10": 0.1}, "als": {"hit_rate@10": 0.9}}
    comparison = {**COMPARISON, "validation": ahead, "cold_items": ahead}
    result = report(comparison=comparison)
    assert "behind_baseline" not in raised(result)
    assert set(numbers(result, "behind_baseline")["baselines"]) == {"als", "random"}


def test_overfitting_names_the_epoch_whose_model_was_persisted():
    history = with_column("val_loss", [0.65, 0.47, 0.40, 0.42, 0.45, 0.50])
    history["chosen"] = [False, False, True, False, False, False]
    result = report(history)
    assert numbers(result, "overfitting")["chosen_epoch"] == 3
    flag = next(f for f in result["flags"] if f["name"] == "overfitting")
    assert "the persisted model keeps epoch 3 (the best on validation)" in flag["message"]


def test_a_softmax_is_judged_against_its_own_measured_no_skill_loss():
    from twotower_pipeline.evaluation.health import RunFacts, check_not_learning

    facts = RunFacts(100.0, 5, 10, loss="softmax", batch_size=2048)
    # With logQ a model without skill scores 9.0 on these candidates, not log(2053) = 7.63.
    learning = pd.DataFrame({"train_loss": [8.9, 8.5], "no_skill_loss": [9.0, 9.0]})
    stuck = pd.DataFrame({"train_loss": [9.4, 9.1], "no_skill_loss": [9.0, 9.0]})
    assert not check_not_learning(learning, facts)["raised"]
    assert check_not_learning(stuck, facts)["raised"]
    # BCE keeps the constant guess at the base rate, 0.4506 at neg_ratio 5.
    bce = RunFacts(100.0, 5, 10)
    flag = check_not_learning(pd.DataFrame({"train_loss": [0.46]}), bce)
    assert flag["raised"]
    assert flag["numbers"]["constant_predictor_loss"] == pytest.approx(0.4506, abs=1e-4)


def test_the_collapse_check_reads_directions_not_the_bias_coordinates():
    from twotower_pipeline.pipelines.evaluation.nodes import direction_columns

    vectors = np.arange(14, dtype=float).reshape(2, 7)
    single = {"embedding_dim": 3, "item_bias": True}
    assert direction_columns(vectors[:, :4], single).tolist() == [[0, 1, 2], [7, 8, 9]]
    ensemble = {"members": [single, {"embedding_dim": 2, "item_bias": False}]}
    assert direction_columns(vectors[:, :6], ensemble).tolist() == [
        [0, 1, 2, 4, 5],
        [7, 8, 9, 11, 12],
    ]
    assert direction_columns(vectors, {"embedding_dim": 7}).shape == (2, 7)


def test_health_judges_the_loss_of_the_candidate_whose_history_is_reported():
    from twotower_pipeline.pipelines.evaluation.nodes import history_candidate_training

    softmax = {"loss": "softmax", "learning_rate": 0.001}
    candidates = [
        {"name": "configured", "model": {}, "validation_recall@10": 0.20},
        {"name": "soft", "model": {"training": softmax}, "validation_recall@10": 0.25},
        {"name": "ensemble", "model": {}, "validation_recall@10": 0.27},
    ]
    assert history_candidate_training({"chosen": "soft", "candidates": candidates}) == softmax
    assert history_candidate_training({"chosen": "configured", "candidates": candidates}) == {}
    assert history_candidate_training({"chosen": "ensemble", "candidates": candidates}) == softmax
    assert history_candidate_training(None) == {}
