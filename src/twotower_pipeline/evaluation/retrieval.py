"""Recommendations for users the model was never trained with, from their histories alone.

The user tower reads a user's latest items, so a new user with a known history
(a session, a sign-up questionnaire, another system's log) gets a vector
without retraining: pool the items' history embeddings, score the catalogue,
leave out what the user has already seen.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch

from twotower_pipeline.data.user_histories import HistoryTable
from twotower_pipeline.evaluation import index as ann
from twotower_pipeline.model.towers import TwoTowerModel
from twotower_pipeline.ranking.metrics import top_k_unseen

logger = logging.getLogger(__name__)


def _known_histories(
    histories: pd.DataFrame, item_index: pd.DataFrame
) -> tuple[np.ndarray, pd.DataFrame]:
    """Return the users' original ids and their histories in model indices (known items only)."""
    item_of = pd.Series(item_index["item"].to_numpy(np.int64), index=item_index["item_id"])
    items = histories["item_id"].map(item_of)
    unknown = int(items.isna().sum())
    if unknown:
        logger.warning("%d history row(s) name items the model does not know: left out", unknown)
    rows = histories.loc[items.notna()]
    user_ids, local_users = np.unique(rows["user_id"].to_numpy(), return_inverse=True)
    timestamps = (
        rows["timestamp"].to_numpy(np.int64)
        if "timestamp" in rows
        else np.arange(len(rows), dtype=np.int64)
    )
    known = pd.DataFrame(
        {
            "user": local_users.astype(np.int64),
            "item": items[items.notna()].to_numpy(np.int64),
            "timestamp": timestamps,
        }
    )
    return user_ids, known


def recommend_from_histories(
    model: TwoTowerModel,
    histories: pd.DataFrame,
    item_index: pd.DataFrame,
    k: int,
    chunk_size: int = 1024,
) -> pd.DataFrame:
    """Return the top-k unseen items of each user in `histories`: user_id, rank, item_id, score.

    `histories` has columns user_id and item_id (original ids), and timestamp
    when the order of the rows is not already oldest first. Items the model
    does not know are left out and counted in the log; a user none of whose
    items is known gets no rows.
    """
    if model.config.history_length == 0:
        raise ValueError(
            "this model has no history tower (model.history_length 0): it cannot "
            "score users it was not trained with"
        )
    user_ids, known = _known_histories(histories, item_index)
    table = HistoryTable.from_interactions(known, len(user_ids))
    ends = table.ends_before(np.arange(len(user_ids)), None)
    item_vectors = model.all_item_vectors()
    scale = model.log_scale.detach().exp()

    @torch.no_grad()
    def score(users: np.ndarray) -> torch.Tensor:
        ids = torch.from_numpy(np.asarray(users, dtype=np.int64))
        window = table.window(ids, ends[ids], model.config.history_length)
        return scale * model.user_vectors(ids, window, anonymous=True) @ item_vectors.T

    top = top_k_unseen(
        score,
        known,
        np.arange(len(user_ids)),
        len(user_ids),
        model.config.n_items,
        k,
        chunk_size,
    )
    item_ids = item_index.set_index("item")["item_id"]
    return pd.DataFrame(
        {
            "user_id": user_ids[top["user"].to_numpy()],
            "rank": top["rank"].to_numpy(),
            "item_id": item_ids.loc[top["item"].to_numpy()].to_numpy(),
            "score": top["score"].to_numpy(),
        }
    )


def recommend_known_users(
    model: TwoTowerModel,
    interactions: pd.DataFrame,
    item_ann_index: ann.ItemIndex,
    user_embeddings: pd.DataFrame,
    k: int,
    chunk_size: int,
    above_n_items: int,
) -> pd.DataFrame:
    """Return the top-k unseen items of every trained user (user, rank, item, score indices).

    Above above_n_items items the retrieval index answers (the persisted user
    embeddings as queries); below it, or without faiss, exact
    search. Every interaction given is known: masked, and the history the model reads.
    """
    n_users, n_items = model.config.n_users, model.config.n_items
    use_index = n_items > above_n_items
    if use_index and item_ann_index.index is None:
        logger.warning("recommendations use exact search: %s", item_ann_index.skipped)
    if use_index and item_ann_index.index is not None:
        return ann.top_k_unseen(
            item_ann_index,
            ann.vectors_of(user_embeddings),
            np.arange(n_users),
            interactions,
            k,
            model.logit_scale,
            chunk_size,
        )
    scorer = model.catalogue_scorer(interactions)
    return top_k_unseen(scorer, interactions, np.arange(n_users), n_users, n_items, k, chunk_size)
