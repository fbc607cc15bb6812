"""Training node: builds the model from parameters and runs twotower_pipeline.training."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch

from twotower_pipeline.distributed import DistributedSettings, fit_distributed
from twotower_pipeline.features import padded_tokens
from twotower_pipeline.history import HistoryTable
from twotower_pipeline.model import TwoTowerConfig, TwoTowerModel
from twotower_pipeline.sampling import item_distribution
from twotower_pipeline.training import TrainingSpec, fit

logger = logging.getLogger(__name__)


def token_matrix(tokens: pd.DataFrame | None, key: str, n_rows: int) -> torch.Tensor:
    """Return an (n_rows, width) int64 matrix of feature tokens, 0-padded, from a token table."""
    if tokens is None or len(tokens) == 0:
        return torch.zeros(n_rows, 0, dtype=torch.int64)
    ordered = tokens.sort_values(key)
    if not np.array_equal(ordered[key].to_numpy(), np.arange(n_rows)):
        raise ValueError(
            f"{key}_feature_tokens does not hold one row per {key} index 0..{n_rows - 1}: "
            "re-run the features pipeline"
        )
    return torch.from_numpy(padded_tokens(ordered["tokens"], n_rows).astype(np.int64))


def build_model(
    model: dict,
    n_users: int,
    n_items: int,
    logit_scale: float,
    item_tokens: torch.Tensor,
    user_tokens: torch.Tensor,
    feature_encoders: dict | None,
) -> TwoTowerModel:
    """Return an untrained model whose config covers the data's ids and feature vocabularies."""
    encoders = feature_encoders or {}
    config = TwoTowerConfig(
        n_users=n_users,
        n_items=n_items,
        logit_scale=logit_scale,
        item_feature_vocab=int((encoders.get("item") or {}).get("vocab_size", 1)),
        item_feature_width=int(item_tokens.shape[1]),
        user_feature_vocab=int((encoders.get("user") or {}).get("vocab_size", 1)),
        user_feature_width=int(user_tokens.shape[1]),
        **model,
    )
    two_tower = TwoTowerModel(config)
    two_tower.set_side_information(item_tokens=item_tokens, user_tokens=user_tokens)
    return two_tower


def train_two_tower(
    train_examples: pd.DataFrame,
    train_interactions: pd.DataFrame,
    val_interactions: pd.DataFrame,
    user_index: pd.DataFrame,
    item_index: pd.DataFrame,
    seed: int,
    neg_ratio: int,
    logit_scale: float,
    num_epochs: int,
    model: dict,
    training: dict,
    negative_sampling: dict,
    evaluation: dict,
    item_feature_tokens: pd.DataFrame | None = None,
    user_feature_tokens: pd.DataFrame | None = None,
    feature_encoders: dict | None = None,
    run_id: str | None = None,
) -> tuple[dict, dict, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Return the trained model's state, its config, the per-epoch history and both embeddings.

    Recall/NDCG are tracked per epoch at evaluation.headline_k, the K the health
    report and the ranking curve read; the model kept is the best epoch's. The
    config names the run that made it (run_id: its run_manifest's version).
    """
    torch.manual_seed(seed)
    n_users, n_items = len(user_index), len(item_index)
    two_tower = build_model(
        model,
        n_users,
        n_items,
        logit_scale,
        token_matrix(item_feature_tokens, "item", n_items),
        token_matrix(user_feature_tokens, "user", n_users),
        feature_encoders,
    )
    two_tower.set_side_information(
        train_users=train_interactions["user"].to_numpy(np.int64),
        train_items=train_interactions["item"].to_numpy(np.int64),
    )
    training = dict(training)
    distributed = training.pop("distributed", None)
    spec = TrainingSpec(
        seed=seed,
        num_epochs=num_epochs,
        neg_ratio=neg_ratio,
        eval_k=evaluation["headline_k"],
        eval_chunk_size=evaluation["chunk_size"],
        eval_max_users=evaluation["max_users"],
        **training,
    )
    probabilities = item_distribution(
        train_interactions["item"].to_numpy(),
        n_items,
        negative_sampling["distribution"],
        negative_sampling["popularity_alpha"],
    )
    settings = DistributedSettings.from_params(distributed) if distributed else None
    with torch.random.fork_rng():
        if settings is None or settings.world_size == 1:
            history = fit(
                two_tower, train_interactions, val_interactions, train_examples, spec, probabilities
            )
        else:  # training.distributed: N processes under PyTorch's elastic launcher
            history = fit_distributed(
                two_tower,
                train_interactions,
                val_interactions,
                train_examples,
                spec,
                probabilities,
                settings,
            )
    two_tower.eval()
    scorer_users = np.arange(n_users)
    with torch.no_grad():
        user_vectors = two_tower.user_vectors_from(
            scorer_users, *_whole_histories(two_tower, train_interactions, val_interactions)
        ).numpy()
        item_vectors = two_tower.all_item_vectors().numpy()
    return (
        two_tower,
        {**two_tower.config.to_dict(), **({"run_id": run_id} if run_id else {})},
        history,
        _embedding_table(user_index, "user_id", user_vectors),
        _embedding_table(item_index, "item_id", item_vectors),
    )


def _whole_histories(model: TwoTowerModel, train: pd.DataFrame, val: pd.DataFrame):
    """Return (histories, ends) over everything known after training: train + validation."""
    if model.config.history_length == 0:
        return None, None
    known = pd.concat([train, val], ignore_index=True)
    histories = HistoryTable.from_interactions(known, model.config.n_users)
    return histories, histories.ends_before(np.arange(model.config.n_users), None)


def _embedding_table(index: pd.DataFrame, id_column: str, vectors: np.ndarray) -> pd.DataFrame:
    """Return one row per original id with its L2-normalised embedding as a list column."""
    return pd.DataFrame({id_column: index[id_column].to_numpy(), "embedding": list(vectors)})
