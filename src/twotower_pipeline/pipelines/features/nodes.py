"""Feature nodes: thin wrappers over twotower_pipeline.data.features and the synthetic oracle."""

from __future__ import annotations

import logging

import pandas as pd

from twotower_pipeline.data.features import FeatureSpec, build_side
from twotower_pipeline.data.synthetic import oracle_scorer
from twotower_pipeline.ranking.protocol import held_out_sets, score_sets

logger = logging.getLogger(__name__)


def encode_features(
    train_interactions: pd.DataFrame,
    item_index: pd.DataFrame,
    user_index: pd.DataFrame,
    item_features: pd.DataFrame | None,
    user_features: pd.DataFrame | None,
    features: dict,
) -> tuple[pd.DataFrame, pd.DataFrame, dict, dict]:
    """Return item and user token tables, the encoders (fitted on train) and a report."""
    tables, encoders, report = {}, {}, {}
    for side, raw, index in (
        ("item", item_features, item_index),
        ("user", user_features, user_index),
    ):
        spec = FeatureSpec.from_params(side, features.get(side))
        tables[side], encoders[side], report[side] = build_side(
            raw, spec, index[f"{side}_id"], train_interactions[side].to_numpy(), side
        )
        if spec is None:
            logger.info("%s features: none configured (features.%s is null)", side, side)
        else:
            logger.info(
                "%s features from %s: %d fields, %d tokens; %d of %d %ss have tokens "
                "(%d cold ones); %d unknown id(s) dropped; left out as unseen in training: %s",
                side,
                spec.source,
                len(encoders[side]["fields"]),
                encoders[side]["vocab_size"],
                report[side][f"{side}s_with_tokens"],
                len(index),
                side,
                report[side][f"cold_{side}s_with_features"],
                report[side]["unknown_ids_dropped"],
                report[side]["unseen_values_left_out"],
            )
    return tables["item"], tables["user"], encoders, report


def score_oracle(  # eleven arguments: each is one dataset of the catalog
    synthetic_item_taste: pd.DataFrame | None,
    synthetic_user_taste: pd.DataFrame | None,
    user_index: pd.DataFrame,
    item_index: pd.DataFrame,
    train_interactions: pd.DataFrame,
    val_interactions: pd.DataFrame,
    test_interactions: pd.DataFrame,
    test_cold_interactions: pd.DataFrame,
    oracle: dict,
    evaluation: dict,
    seed: int,
) -> dict:
    """Return the generator's own ranking metrics, in evaluation_metrics' sections.

    The best a model can do on the synthetic data (test, validation, cold_items,
    cold_items_full, each masked as the evaluation masks it); on other data, or
    with oracle.enabled false, {"available": false, "reason": ...}.
    """
    if not oracle["enabled"]:
        return {"available": False, "reason": "oracle.enabled is false"}
    # A diagnostic, not an input to anything: data that is not the generator's
    # (your own log) gets a reason, not a failed run.
    if synthetic_item_taste is None or synthetic_user_taste is None:
        reason = "the raw data has no generator taste model (not the synthetic data)"
        logger.warning("no oracle: %s", reason)
        return {"available": False, "reason": reason}
    try:
        scorer = oracle_scorer(synthetic_user_taste, synthetic_item_taste, user_index, item_index)
    except ValueError as error:
        logger.warning("no oracle: %s", error)
        return {"available": False, "reason": str(error)}
    n_users, n_items = len(user_index), len(item_index)
    # The same users as every other scorer: the seeded sample of evaluation.max_users.
    sets = held_out_sets(
        train_interactions,
        val_interactions,
        test_interactions,
        test_cold_interactions,
        n_items,
        evaluation["max_users"],
        seed,
    )
    metrics = score_sets(
        lambda known, positives: scorer,
        sets,
        n_users,
        n_items,
        evaluation["ks"],
        evaluation["chunk_size"],
        seed,
    )
    k = evaluation["headline_k"]
    logger.info(
        "oracle (the generator's own taste model): test HR@%d %.4f, NDCG@%d %.4f (%d users)",
        k,
        metrics["test"][f"hit_rate@{k}"],
        k,
        metrics["test"][f"ndcg@{k}"],
        metrics["test"]["users"],
    )
    return {"available": True, **metrics}
