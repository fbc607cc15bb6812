"""Evaluation nodes: the model and its baselines under one protocol, and what to show for it.

The logic lives in evaluation/ and reporting/; a node unpacks its block and calls it.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from plotly.graph_objects import Figure as PlotlyFigure

from twotower_pipeline.evaluation import index as ann
from twotower_pipeline.evaluation.baselines import baseline_metrics
from twotower_pipeline.evaluation.health import HealthThresholds, RunFacts, health_report
from twotower_pipeline.evaluation.model_metrics import model_metrics
from twotower_pipeline.evaluation.retrieval import recommend_known_users
from twotower_pipeline.model.towers import TwoTowerModel
from twotower_pipeline.ranking.protocol import HeldOutSet, held_out_sets
from twotower_pipeline.reporting import markdown as reporting
from twotower_pipeline.reporting.report_sections import RunOutputs
from twotower_pipeline.training.selection import ENSEMBLE, sized_for_device

logger = logging.getLogger(__name__)


def _held_out(
    split: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame],
    n_items: int,
    evaluation: dict,
    seed: int,
) -> dict[str, HeldOutSet]:
    """Return the four evaluation sets, each a seeded sample of evaluation.max_users users.

    split: the split's train, validation, test and cold test tables, in that order.
    """
    return held_out_sets(*split, n_items, evaluation["max_users"], seed)


def evaluate_model(  # nine arguments: each is one dataset of the catalog
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
    split = (train_interactions, val_interactions, test_interactions, test_cold_interactions)
    sets = _held_out(split, n_items, evaluation, seed)
    return model_metrics(model, sets, n_users, n_items, evaluation, neg_ratio, seed)


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

    Every baseline is fitted on train only (evaluation.baselines.baseline_metrics).
    """
    n_users, n_items = len(user_index), len(item_index)
    split = (train_interactions, val_interactions, test_interactions, test_cold_interactions)
    sets = _held_out(split, n_items, evaluation, seed)
    return baseline_metrics(train_interactions, sets, n_users, n_items, evaluation, seed)


def recommend(  # nine arguments: each is one dataset of the catalog
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
    recs = recommend_known_users(
        model,
        interactions,
        item_ann_index,
        user_embeddings,
        evaluation["recommendations_k"],
        evaluation["chunk_size"],
        index["recommend_above_n_items"],
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
    training: dict,
    model_selection: dict | None = None,
) -> dict:
    """Return the health report: each of the seed's failure modes, raised or not, with numbers.

    Lift and baseline checks read the test figures; the one-class check reads
    the validation sample's sizes (the sample training's val_loss is on). The
    loss judged is the one the reported history trained with: a model_selection
    candidate may have its own.
    """
    # The batch the run trained with: larger on a CUDA device (training.cuda_batch_multiple).
    training = sized_for_device({**training, **history_candidate_training(model_selection)})
    model = evaluation_metrics["validation"]["model"]
    facts = RunFacts(
        float(model_config["max_logit_scale"]),
        neg_ratio,
        evaluation["headline_k"],
        model.get("val_sample_positives"),
        model.get("val_sample_negatives"),
        model_config.get("logit_scale"),
        training["loss"],
        training["batch_size"],
    )
    return health_report(
        training_history,
        direction_columns(np.stack(item_embeddings["embedding"].to_numpy()), model_config),
        evaluation_metrics,
        facts,
        HealthThresholds.from_params(evaluation["health"]),
    )


def direction_columns(vectors: np.ndarray, model_config: dict) -> np.ndarray:
    """Return the item vectors without their bias coordinates (model.item_bias).

    Each (member's) vector ends in bias / scale when the model has item biases:
    the collapse check asks whether the directions are parallel, not the biases.
    """
    members = model_config.get("members", [model_config])
    keep, start = [], 0
    for member in members:
        width = int(member["embedding_dim"])
        keep.extend(range(start, start + width))
        start += width + (1 if member.get("item_bias") else 0)
    return vectors[:, keep] if start == vectors.shape[1] else vectors


def history_candidate_training(model_selection: dict | None) -> dict:
    """Return the training overrides of the candidate whose history the run reports.

    The chosen candidate's; when the ensemble was chosen, the best single
    candidate's (the ensemble reports its history).
    """
    if not model_selection:
        return {}
    singles = [c for c in model_selection["candidates"] if c["name"] != ENSEMBLE]
    metric = next((key for key in singles[0] if key.startswith("validation_recall@")), None)
    chosen = model_selection.get("chosen")
    reported = next((c for c in singles if c["name"] == chosen), None)
    if reported is None and metric is not None:  # the ensemble: the first best single model
        reported = max(singles, key=lambda c: c[metric])
    return (reported or {}).get("model", {}).get("training", {})


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
    reports = ingestion_report, split_report, training_history, evaluation_metrics, training_health
    outputs = RunOutputs(*reports, model_selection)
    return reporting.build_report(outputs, neg_ratio, evaluation["ks"], k, plot_version=run_id)
