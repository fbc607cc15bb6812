"""Evaluation nodes: the model and its baselines under one protocol, and what to show for it."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from plotly.graph_objects import Figure as PlotlyFigure

from twotower_pipeline import reporting
from twotower_pipeline.baselines import als_scorer, popularity_scorer, random_scorer
from twotower_pipeline.health import HealthThresholds, health_report
from twotower_pipeline.metrics import binary_log_loss, ranking_metrics, roc_auc, top_k_unseen
from twotower_pipeline.model import TwoTowerConfig, TwoTowerModel
from twotower_pipeline.training import validation_sample

logger = logging.getLogger(__name__)


def load_model(state_dict: dict, model_config: dict) -> TwoTowerModel:
    """Return the two-tower model rebuilt from its JSON config and state dict."""
    model = TwoTowerModel(TwoTowerConfig.from_dict(model_config))
    model.load_state_dict(state_dict)
    return model.eval()


def evaluate_model(
    two_tower_model: dict,
    model_config: dict,
    train_interactions: pd.DataFrame,
    val_interactions: pd.DataFrame,
    seed: int,
    neg_ratio: int,
    evaluation: dict,
) -> dict:
    """Return the model's full-catalogue ranking metrics, and log loss/AUC on a two-class sample.

    The pointwise metrics use the same fixed validation sample as training's
    validation loss: every validation positive plus neg_ratio sampled negatives.
    """
    model = load_model(two_tower_model, model_config)
    n_users, n_items = model.config.n_users, model.config.n_items
    metrics = ranking_metrics(
        model.catalogue_scorer(),
        train_interactions,
        val_interactions,
        n_users,
        n_items,
        evaluation["ks"],
        evaluation["chunk_size"],
        seed,
    )
    sample = validation_sample(train_interactions, val_interactions, n_items, neg_ratio, seed)
    with torch.no_grad():
        logits = model(sample.users, sample.items).numpy()
    labels = sample.labels.numpy()
    positives = int(labels.sum())
    metrics.update(
        val_log_loss=binary_log_loss(logits, labels),
        val_auc=roc_auc(logits, labels),
        val_sample_positives=positives,
        val_sample_negatives=int(labels.size - positives),
    )
    return metrics


def evaluate_baselines(
    train_interactions: pd.DataFrame,
    val_interactions: pd.DataFrame,
    user_index: pd.DataFrame,
    item_index: pd.DataFrame,
    seed: int,
    evaluation: dict,
) -> dict:
    """Return the same metrics for popularity, random and (when installed) implicit ALS."""
    n_users, n_items = len(user_index), len(item_index)
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
                "(pip install 'twotower_pipeline[baselines]')"
            )
        else:
            scorers["als"] = als
    results = {
        name: ranking_metrics(
            scorer,
            train_interactions,
            val_interactions,
            n_users,
            n_items,
            evaluation["ks"],
            evaluation["chunk_size"],
            seed,
        )
        for name, scorer in scorers.items()
    }
    if skipped:
        results["als"] = {"skipped": skipped}
    return results


def compare_with_baselines(model_metrics: dict, baseline_metrics: dict) -> dict:
    """Return model and baselines side by side, with the model's ranking lift over popularity."""
    popularity = baseline_metrics["popularity"]
    lift = {
        name: (value / popularity[name] if popularity.get(name) else None)
        for name, value in model_metrics.items()
        if name == "mrr" or ("@" in name and not name.startswith("coverage"))
    }
    return {"model": model_metrics, **baseline_metrics, "lift_over_popularity": lift}


def recommend(
    two_tower_model: dict,
    model_config: dict,
    train_interactions: pd.DataFrame,
    user_index: pd.DataFrame,
    item_index: pd.DataFrame,
    evaluation: dict,
) -> pd.DataFrame:
    """Return the top-k unseen items per user with their scores, in original ids."""
    model = load_model(two_tower_model, model_config)
    n_users, n_items = model.config.n_users, model.config.n_items
    recs = top_k_unseen(
        model.catalogue_scorer(),
        train_interactions,
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
    """Return the health report: each of the seed's failure modes, raised or not, with numbers."""
    k = evaluation["headline_k"]
    if k not in evaluation["ks"]:
        raise ValueError(
            f"evaluation.headline_k={k} must be one of evaluation.ks={evaluation['ks']}"
        )
    model = evaluation_metrics["model"]
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
    """Return Recall/NDCG per epoch against popularity, as PNG and plotly figures."""
    return reporting.ranking_curve(training_history, evaluation_metrics, evaluation["headline_k"])


def plot_model_vs_baselines(
    evaluation_metrics: dict, evaluation: dict
) -> tuple[Figure, PlotlyFigure]:
    """Return HitRate/NDCG at each K for the model and every baseline."""
    return reporting.model_vs_baselines(evaluation_metrics, evaluation["ks"])


def write_report(
    ingestion_report: dict,
    split_report: dict,
    training_history: pd.DataFrame,
    evaluation_metrics: dict,
    training_health: dict,
    neg_ratio: int,
    evaluation: dict,
) -> str:
    """Return report.md, and log the run's one-line summary (the pipeline's last node)."""
    k = evaluation["headline_k"]
    summary = reporting.headline(evaluation_metrics, training_health, k)
    if training_health["raised"]:
        logger.warning("run summary: %s", summary)
    else:
        logger.info("run summary: %s", summary)
    return reporting.build_report(
        ingestion_report,
        split_report,
        training_history,
        evaluation_metrics,
        training_health,
        neg_ratio,
        evaluation["ks"],
        k,
    )
