"""Evaluation nodes: the model and its baselines under one protocol, and what to show for it."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch

from twotower_pipeline.baselines import als_scorer, popularity_scorer, random_scorer
from twotower_pipeline.metrics import ranking_metrics
from twotower_pipeline.model import TwoTowerConfig, TwoTowerModel

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
    evaluation: dict,
) -> dict:
    """Return the model's full-catalogue ranking metrics."""
    model = load_model(two_tower_model, model_config)
    return ranking_metrics(
        lambda users: model.score_all_items(torch.from_numpy(users)),
        train_interactions, val_interactions, model.config.n_users, model.config.n_items,
        evaluation["ks"], evaluation["chunk_size"], seed,
    )


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
    als = None
    if evaluation["als"]["enabled"]:
        als = als_scorer(train_interactions, n_users, n_items, evaluation["als"], seed)
        if als is None:
            logger.warning("implicit is not installed: the ALS baseline is skipped "
                           "(pip install 'twotower_pipeline[baselines]')")
        else:
            scorers["als"] = als
    results = {
        name: ranking_metrics(scorer, train_interactions, val_interactions, n_users, n_items,
                              evaluation["ks"], evaluation["chunk_size"], seed)
        for name, scorer in scorers.items()
    }
    if als is None:
        results["als"] = {"skipped": "disabled" if not evaluation["als"]["enabled"]
                          else "the optional library implicit is not installed"}
    return results


def compare_with_baselines(model_metrics: dict, baseline_metrics: dict) -> dict:
    """Return model and baselines side by side, with the model's lift over popularity."""
    popularity = baseline_metrics["popularity"]
    lift = {
        name: (value / popularity[name] if popularity.get(name) else None)
        for name, value in model_metrics.items()
        if name != "users" and not name.startswith("coverage")
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
    k = evaluation["recommendations_k"]
    n_users, n_items = model.config.n_users, model.config.n_items
    train_users = train_interactions["user"].to_numpy()
    train_items = train_interactions["item"].to_numpy()
    order = np.argsort(train_users, kind="stable")
    bounds = np.searchsorted(train_users[order], np.arange(n_users + 1))
    parts = []
    chunk = evaluation["chunk_size"]
    for start in range(0, n_users, chunk):
        users = np.arange(start, min(start + chunk, n_users))
        scores = model.score_all_items(torch.from_numpy(users))
        lo, hi = bounds[users[0]], bounds[users[-1] + 1]
        rows = train_users[order[lo:hi]] - start
        scores[torch.from_numpy(rows), torch.from_numpy(train_items[order[lo:hi]])] = -torch.inf
        top = torch.topk(scores, min(k, n_items), dim=1)
        parts.append(pd.DataFrame({
            "user": np.repeat(users, top.indices.shape[1]),
            "rank": np.tile(np.arange(1, top.indices.shape[1] + 1), users.size),
            "item": top.indices.numpy().ravel(),
            "score": top.values.numpy().ravel(),
        }))
    recs = pd.concat(parts, ignore_index=True)
    recs = recs[np.isfinite(recs["score"])]
    return pd.DataFrame({
        "user_id": user_index["user_id"].to_numpy()[recs["user"].to_numpy()],
        "rank": recs["rank"].to_numpy(np.int32),
        "item_id": item_index["item_id"].to_numpy()[recs["item"].to_numpy()],
        "score": recs["score"].to_numpy(np.float32),
    })
