"""Training node: unpacks the parameter blocks and data, selects and trains the model."""

from __future__ import annotations

import numpy as np
import pandas as pd

from twotower_pipeline.model.scoring import learned_vectors
from twotower_pipeline.model.towers import TwoTowerModel
from twotower_pipeline.training.selection import TrainingBlocks, TrainingData, select_model


# One parameter per pipeline input: Kedro binds them so, and provenance reads the params: ones.
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
    model_selection: dict | None = None,
    split: dict | None = None,
    run_environment: str | None = None,
) -> tuple[TwoTowerModel, dict, pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """Return the chosen model, its config, its per-epoch history, both embeddings, the choice.

    The model is training.selection's choice on validation; the config names the run
    that made it (run_id). The split block and the run's environment (from
    hooks/provenance.py) go into each checkpoint's fingerprint (training/selection.py).
    """
    data = TrainingData(
        train_examples,
        train_interactions,
        val_interactions,
        len(user_index),
        len(item_index),
        item_feature_tokens,
        user_feature_tokens,
        feature_encoders,
    )
    selection = model_selection or {"enabled": False, "alternatives": {}}
    blocks = TrainingBlocks(
        *(seed, neg_ratio, logit_scale, num_epochs, model, training, negative_sampling),
        *(evaluation, selection, split or {}, run_environment),
    )
    chosen = select_model(data, blocks)
    known = pd.concat([train_interactions, val_interactions], ignore_index=True)
    user_vectors, item_vectors = learned_vectors(chosen.model, known)
    return (
        chosen.model,
        {**chosen.model.config.to_dict(), **({"run_id": run_id} if run_id else {})},
        chosen.history,
        _embedding_table(user_index, "user_id", user_vectors),
        _embedding_table(item_index, "item_id", item_vectors),
        {
            "metric": f"validation recall@{evaluation['headline_k']}",
            "chosen": chosen.name,
            "candidates": chosen.candidates,
        },
    )


def _embedding_table(index: pd.DataFrame, id_column: str, vectors: np.ndarray) -> pd.DataFrame:
    """Return one row per original id with its L2-normalised embedding as a list column."""
    return pd.DataFrame({id_column: index[id_column].to_numpy(), "embedding": list(vectors)})
