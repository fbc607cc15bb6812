"""Ranking metrics over the full catalogue, and pointwise metrics where they mean something.

Protocol: for every validation user, score all items, mask the user's
training items, rank the held-out positives among what is left. Ties are
broken at random (seeded), so a model that scores every item alike gets
exactly what random ranking gets in expectation, never better.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch


def _csr(users: np.ndarray, items: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (indptr, items sorted by user) for a set of (user, item) pairs."""
    order = np.argsort(users, kind="stable")
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(users, minlength=n_users), out=indptr[1:])
    return indptr, items[order].astype(np.int64)


def _rows_and_cols(chunk_users: np.ndarray, indptr: np.ndarray, cols: np.ndarray):
    """Return (row within chunk, item) for every pair of the chunk's users."""
    starts, stops = indptr[chunk_users], indptr[chunk_users + 1]
    lengths = stops - starts
    rows = np.repeat(np.arange(chunk_users.size), lengths)
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return rows, cols[np.repeat(starts, lengths) + offsets]


def rank_positives(
    score_users: Callable[[np.ndarray], torch.Tensor],
    train: pd.DataFrame,
    val: pd.DataFrame,
    n_users: int,
    n_items: int,
    top_k: int,
    chunk_size: int = 1024,
    seed: int = 0,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Return each validation positive's 0-based rank (user, item, rank) and each user's top-k.

    score_users maps an array of user indices to a (len, n_items) float tensor.
    Ranks count the unmasked items scored strictly higher, plus a random share
    of those scored equal.
    """
    generator = torch.Generator().manual_seed(seed)
    train_ptr, train_cols = _csr(train["user"].to_numpy(), train["item"].to_numpy(), n_users)
    val_users_all = val["user"].to_numpy()
    val_ptr, val_cols = _csr(val_users_all, val["item"].to_numpy(), n_users)
    val_users = np.unique(val_users_all)

    rank_parts, user_parts, item_parts, top_parts = [], [], [], []
    k = min(top_k, n_items)
    for start in range(0, val_users.size, chunk_size):
        chunk = val_users[start : start + chunk_size]
        scores = score_users(chunk).to(torch.float32)
        rows, cols = _rows_and_cols(chunk, train_ptr, train_cols)
        scores[torch.from_numpy(rows), torch.from_numpy(cols)] = -torch.inf

        pos_rows, pos_items = _rows_and_cols(chunk, val_ptr, val_cols)
        pos_rows_t = torch.from_numpy(pos_rows)
        pos_scores = scores[pos_rows_t, torch.from_numpy(pos_items)]
        # Positives are compared with their own user's row, a block of rows at a time.
        greater = torch.empty(pos_rows.size, dtype=torch.int64)
        equal = torch.empty(pos_rows.size, dtype=torch.int64)
        block = max(1, (1 << 24) // max(n_items, 1))
        for b in range(0, pos_rows.size, block):
            row_scores = scores[pos_rows_t[b : b + block]]
            target = pos_scores[b : b + block, None]
            greater[b : b + block] = (row_scores > target).sum(1)
            equal[b : b + block] = (row_scores == target).sum(1) - 1
        share = torch.rand(pos_rows.size, generator=generator)
        ranks = greater + torch.floor(share * (equal + 1).to(torch.float32)).to(torch.int64)

        rank_parts.append(ranks.numpy())
        user_parts.append(chunk[pos_rows])
        item_parts.append(pos_items)
        top_parts.append(torch.topk(scores, k, dim=1).indices.numpy())

    ranks = pd.DataFrame(
        {
            "user": np.concatenate(user_parts) if user_parts else np.empty(0, np.int64),
            "item": np.concatenate(item_parts) if item_parts else np.empty(0, np.int64),
            "rank": np.concatenate(rank_parts) if rank_parts else np.empty(0, np.int64),
        }
    )
    top = np.concatenate(top_parts) if top_parts else np.empty((0, k), np.int64)
    return ranks, top


def metrics_from_ranks(
    ranks: pd.DataFrame, top_items: np.ndarray, n_items: int, ks: Sequence[int]
) -> dict[str, float]:
    """Return Recall/NDCG/HitRate/coverage at each K and MRR, averaged over validation users."""
    users, inverse = np.unique(ranks["user"].to_numpy(), return_inverse=True)
    n_users = users.size
    rank = ranks["rank"].to_numpy()
    n_pos = np.bincount(inverse, minlength=n_users)
    best = np.full(n_users, np.iinfo(np.int64).max)
    np.minimum.at(best, inverse, rank)
    result: dict[str, float] = {"users": int(n_users), "mrr": float(np.mean(1.0 / (best + 1)))}
    discounts = 1.0 / np.log2(np.arange(max(ks) + 2) + 2)
    for k in ks:
        hit = rank < k
        hits = np.bincount(inverse, weights=hit, minlength=n_users)
        gain = np.bincount(inverse, weights=np.where(hit, discounts[np.minimum(rank, k)], 0.0),
                           minlength=n_users)
        ideal = np.cumsum(discounts)[np.minimum(n_pos, k) - 1]
        result[f"recall@{k}"] = float(np.mean(hits / n_pos))
        result[f"ndcg@{k}"] = float(np.mean(gain / ideal))
        result[f"hit_rate@{k}"] = float(np.mean(hits > 0))
        result[f"coverage@{k}"] = float(np.unique(top_items[:, :k]).size / n_items)
    return result


def ranking_metrics(
    score_users: Callable[[np.ndarray], torch.Tensor],
    train: pd.DataFrame,
    val: pd.DataFrame,
    n_users: int,
    n_items: int,
    ks: Sequence[int],
    chunk_size: int = 1024,
    seed: int = 0,
) -> dict[str, float]:
    """Return full-catalogue ranking metrics for a scoring function."""
    ranks, top = rank_positives(score_users, train, val, n_users, n_items, max(ks), chunk_size, seed)
    return metrics_from_ranks(ranks, top, n_items, ks)


def binary_log_loss(logits: np.ndarray, labels: np.ndarray) -> float:
    """Return mean BCE of sigmoid(logits) against 0/1 labels (both classes must be present)."""
    logits_t = torch.as_tensor(logits, dtype=torch.float64)
    labels_t = torch.as_tensor(labels, dtype=torch.float64)
    return float(torch.nn.functional.binary_cross_entropy_with_logits(logits_t, labels_t))


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Return ROC AUC (ties count one half), by the rank-sum formula."""
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both positives and negatives")
    ranks = pd.Series(np.asarray(scores)).rank(method="average").to_numpy()
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
