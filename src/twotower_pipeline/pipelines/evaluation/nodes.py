"""Evaluation nodes: the model and its baselines under one protocol, and what to show for it."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from plotly.graph_objects import Figure as PlotlyFigure

from twotower_pipeline.evaluation import index as ann
from twotower_pipeline.evaluation.baselines import als_scorer, popularity_scorer, random_scorer
from twotower_pipeline.evaluation.health import HealthThresholds, health_report
from twotower_pipeline.model.towers import TwoTowerModel
from twotower_pipeline.ranking.metrics import Scorer, top_k_unseen
from twotower_pipeline.ranking.pointwise import binary_log_loss, pair_scores, roc_auc
from twotower_pipeline.ranking.protocol import COLD_SECTIONS, HeldOutSet, held_out_sets, score_sets
from twotower_pipeline.reporting import markdown as reporting
from twotower_pipeline.reporting.report_sections import RunOutputs
from twotower_pipeline.training.examples import validation_sample

logger = logging.getLogger(__name__)


def _pointwise(
    scorer: Scorer, held_out: HeldOutSet, n_items: int, neg_ratio: int, seed: int, chunk: int
) -> dict:
    """Return log loss and AUC of the scorer's logits on positives + neg_ratio negatives each.

    The sample is drawn as training's validation sample (a user's negatives
    exclude its known and held-out positives), so the figures compare with
    the history's val_loss / val_auc.
    """
    sample = validation_sample(held_out.known, held_out.positives, n_items, neg_ratio, seed)
    items = sample.items.numpy()
    labels = sample.labels.numpy().ravel()
    # One row per positive and its negatives (users (P,), items (P, 1 + neg_ratio)), or flat.
    users = np.repeat(sample.users.numpy(), items.size // sample.users.numel())
    logits = pair_scores(scorer, users, items.ravel(), chunk_size=chunk)
    positives = int(labels.sum())
    return {
        "log_loss": binary_log_loss(logits, labels),
        "auc": roc_auc(logits, labels),
        "sample_positives": positives,
        "sample_negatives": int(labels.size - positives),
    }


def evaluate_model(
    two_tower_model: dict,
    model_config: dict,
    train_interactions: pd.DataFrame,
    val_interactions: pd.DataFrame,
    test_interactions: pd.DataFrame,
    test_cold_interactions: pd.DataFrame,
    seed: int,
    neg_ratio: int,
    evaluation: dict,
) -> dict:
    """Return the model's metrics on each evaluation set (protocol.SECTIONS).

    For test the model reads train + validation as what a user is known to
    have, for validation train only (protocol.held_out_sets). Test and
    validation also get log loss and AUC on their positives plus neg_ratio
    sampled negatives each (keys test_* and val_*).
    """
    model = TwoTowerModel.from_state(model_config, two_tower_model)
    n_users, n_items = int(model_config["n_users"]), int(model_config["n_items"])
    sets = held_out_sets(
        train_interactions,
        val_interactions,
        test_interactions,
        test_cold_interactions,
        n_items,
        evaluation["max_users"],
        seed,
    )
    scorers: dict[tuple[int, int], Scorer] = {}

    def scorer_for(known: pd.DataFrame, positives: pd.DataFrame) -> Scorer:
        key = (id(known), id(positives))
        if key not in scorers:
            scorers[key] = model.catalogue_scorer(known, positives)
        return scorers[key]

    chunk = evaluation["chunk_size"]
    results = score_sets(scorer_for, sets, n_users, n_items, evaluation["ks"], chunk, seed)
    for section, prefix in (("test", "test"), ("validation", "val")):
        held_out = sets[section]
        pointwise = _pointwise(
            scorer_for(held_out.known, held_out.positives),
            held_out,
            n_items,
            neg_ratio,
            seed,
            chunk,
        )
        results[section].update({f"{prefix}_{name}": v for name, v in pointwise.items()})
    return results


def evaluate_baselines(
    train_interactions: pd.DataFrame,
    val_interactions: pd.DataFrame,
    test_interactions: pd.DataFrame,
    test_cold_interactions: pd.DataFrame,
    user_index: pd.DataFrame,
    item_index: pd.DataFrame,
    seed: int,
    evaluation: dict,
) -> dict:
    """Return, per evaluation set, the metrics of popularity, random and implicit ALS.

    Every baseline is fitted on train only. ALS (when installed and enabled)
    is scored on test and validation; the cold sets get popularity and random.
    """
    n_users, n_items = len(user_index), len(item_index)
    sets = held_out_sets(
        train_interactions,
        val_interactions,
        test_interactions,
        test_cold_interactions,
        n_items,
        evaluation["max_users"],
        seed,
    )
    scorers = {
        "popularity": popularity_scorer(train_interactions, n_items),
        "random": random_scorer(n_items, seed),
    }
    skipped = None
    if not evaluation["als"]["enabled"]:
        skipped = "disabled in parameters (evaluation.als.enabled)"
    else:
        als = als_scorer(train_interactions, n_users, n_items, evaluation["als"], seed)
        if als is None:
            skipped = "the optional library implicit is not installed"
            logger.warning(
                "implicit is not installed: the ALS baseline is skipped "
                "(pip install -e '.[baselines]')"
            )
        else:
            scorers["als"] = als
    results: dict[str, dict] = {section: {} for section in sets}
    for name, scorer in scorers.items():
        scored = {s: held for s, held in sets.items() if name != "als" or s not in COLD_SECTIONS}
        by_section = score_sets(
            lambda known, positives, scorer=scorer: scorer,
            scored,
            n_users,
            n_items,
            evaluation["ks"],
            evaluation["chunk_size"],
            seed,
        )
        for section, metrics in by_section.items():
            results[section][name] = metrics
    if skipped:
        for section in ("test", "validation"):
            results[section]["als"] = {"skipped": skipped}
    return results


def _lift(model: dict, baseline: dict) -> dict:
    """Return model / baseline for each ranking metric (not coverage, not standard errors)."""
    return {
        name: (value / baseline[name] if baseline.get(name) else None)
        for name, value in model.items()
        if name == "mrr" or ("@" in name and not name.startswith(("coverage", "hit_rate_se")))
    }


def _side_by_side(model: dict, baselines: dict, reference: str) -> dict:
    """Return {"model": ..., baselines..., "lift_over_<reference>": ...} (no lift if skipped)."""
    comparison = {"model": model, **baselines}
    if "skipped" not in model and "skipped" not in baselines[reference]:
        comparison[f"lift_over_{reference}"] = _lift(model, baselines[reference])
    return comparison


def compare_with_baselines(model_metrics: dict, baseline_metrics: dict, ann_metrics: dict) -> dict:
    """Return evaluation_metrics: test figures at the top, then validation and the cold sets.

    Top level (test) and "validation": model, popularity, random, als and the
    model's lift over popularity. "cold_items" and "cold_items_full": model,
    popularity and random, with the lift over random. The retrieval index's
    recall against exact search rides along under "ann".
    """
    comparison = _side_by_side(model_metrics["test"], baseline_metrics["test"], "popularity")
    comparison["ann"] = ann_metrics
    comparison["validation"] = _side_by_side(
        model_metrics["validation"], baseline_metrics["validation"], "popularity"
    )
    for section in COLD_SECTIONS:
        comparison[section] = _side_by_side(
            model_metrics[section], baseline_metrics[section], "random"
        )
    return comparison


def recommend(
    two_tower_model: dict,
    model_config: dict,
    interactions: pd.DataFrame,
    user_index: pd.DataFrame,
    item_index: pd.DataFrame,
    evaluation: dict,
    item_ann_index: ann.ItemIndex,
    user_embeddings: pd.DataFrame,
    index: dict,
) -> pd.DataFrame:
    """Return the top-k unseen items per user with their scores, in original ids.

    Above index.recommend_above_n_items items the retrieval index answers (the
    persisted user vectors as queries); below it, or without faiss, exact search.
    Every interaction in the log is known, as when serving: it is masked, and
    it is the history the model reads.
    """
    model = TwoTowerModel.from_state(model_config, two_tower_model)
    n_users, n_items = model.config.n_users, model.config.n_items
    use_index = n_items > index["recommend_above_n_items"]
    if use_index and item_ann_index.index is None:
        logger.warning("recommendations use exact search: %s", item_ann_index.skipped)
    if use_index and item_ann_index.index is not None:
        recs = ann.top_k_unseen(
            item_ann_index,
            ann.vectors_of(user_embeddings),
            np.arange(n_users),
            interactions,
            evaluation["recommendations_k"],
            model.logit_scale,
            evaluation["chunk_size"],
        )
    else:
        recs = top_k_unseen(
            model.catalogue_scorer(interactions),
            interactions,
            np.arange(n_users),
            n_users,
            n_items,
            evaluation["recommendations_k"],
            evaluation["chunk_size"],
        )
    return pd.DataFrame(
        {
            "user_id": user_index["user_id"].to_numpy()[recs["user"].to_numpy()],
            "rank": recs["rank"].to_numpy(np.int32),
            "item_id": item_index["item_id"].to_numpy()[recs["item"].to_numpy()],
            "score": recs["score"].to_numpy(np.float32),
        }
    )


def diagnose_training(
    training_history: pd.DataFrame,
    model_config: dict,
    item_embeddings: pd.DataFrame,
    evaluation_metrics: dict,
    neg_ratio: int,
    evaluation: dict,
) -> dict:
    """Return the health report: each of the seed's failure modes, raised or not, with numbers.

    Lift and baseline checks read the test figures; the one-class check reads
    the validation sample's sizes (the sample training's val_loss is on).
    """
    k = evaluation["headline_k"]
    if k not in evaluation["ks"]:
        raise ValueError(
            f"evaluation.headline_k={k} must be one of evaluation.ks={evaluation['ks']}"
        )
    model = evaluation_metrics["validation"]["model"]
    return health_report(
        training_history,
        np.stack(item_embeddings["embedding"].to_numpy()),
        float(model_config["max_logit_scale"]),
        evaluation_metrics,
        neg_ratio,
        HealthThresholds.from_params(evaluation["health"]),
        k,
        model.get("val_sample_positives"),
        model.get("val_sample_negatives"),
        model_config.get("logit_scale"),
    )


def plot_learning_curve(
    training_history: pd.DataFrame, model_config: dict, neg_ratio: int
) -> tuple[Figure, PlotlyFigure]:
    """Return the learning curve (train/val loss, logit scale) as PNG and plotly figures."""
    return reporting.learning_curve(training_history, neg_ratio, model_config.get("logit_scale"))


def plot_ranking_curve(
    training_history: pd.DataFrame, evaluation_metrics: dict, evaluation: dict
) -> tuple[Figure, PlotlyFigure]:
    """Return validation Recall/NDCG per epoch against popularity's, as PNG and plotly figures."""
    return reporting.ranking_curve(
        training_history, evaluation_metrics["validation"], evaluation["headline_k"]
    )


def plot_model_vs_baselines(
    evaluation_metrics: dict, evaluation: dict
) -> tuple[Figure, PlotlyFigure]:
    """Return test HitRate/NDCG at each K for the model and every baseline."""
    return reporting.model_vs_baselines(evaluation_metrics, evaluation["ks"])


def write_report(  # nine arguments: each is one dataset of the catalog
    ingestion_report: dict,
    split_report: dict,
    training_history: pd.DataFrame,
    evaluation_metrics: dict,
    training_health: dict,
    neg_ratio: int,
    evaluation: dict,
    run_id: str,
    model_selection: dict | None = None,
) -> str:
    """Return report.md, and log the run's one-line summary (the pipeline's last node).

    The plots are embedded from this run's version folders, which are named after run_id.
    """
    k = evaluation["headline_k"]
    summary = reporting.headline(evaluation_metrics, training_health, k)
    if training_health["raised"]:
        logger.warning("run summary: %s", summary)
    else:
        logger.info("run summary: %s", summary)
    outputs = RunOutputs(
        ingestion_report,
        split_report,
        training_history,
        evaluation_metrics,
        training_health,
        model_selection,
    )
    return reporting.build_report(outputs, neg_ratio, evaluation["ks"], k, plot_version=run_id)
