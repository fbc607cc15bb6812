"""A model built from its parameter block and the data's ids and feature vocabularies."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from twotower_pipeline.data.features import padded_tokens
from twotower_pipeline.model.config import TwoTowerConfig
from twotower_pipeline.model.towers import TwoTowerModel


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
