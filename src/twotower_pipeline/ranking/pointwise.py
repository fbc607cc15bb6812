"""Pointwise metrics, where they mean something: log loss and AUC on positives and negatives.

A pointwise figure needs both classes: labels of one class are refused
(docs/evaluation.md says why).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from twotower_pipeline.ranking.metrics import Scorer


def pair_scores(
    score_users: Scorer, users: np.ndarray, items: np.ndarray, *, chunk_size: int
) -> np.ndarray:
    """Return the scorer's float32 score of each (user, item) pair, scoring each user once."""
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    unique, inverse = np.unique(users, return_inverse=True)
    out = np.empty(users.size, dtype=np.float32)
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(0, unique.size + chunk_size, chunk_size))
    for c, start in enumerate(range(0, unique.size, chunk_size)):
        rows = order[bounds[c] : bounds[c + 1]]
        scores = score_users(unique[start : start + chunk_size]).to(torch.float32).numpy()
        out[rows] = scores[inverse[rows] - start, items[rows]]
    return out


def _check_binary(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == labels.size:
        # A pointwise loss on one class says nothing: a model scoring everything
        # high gets ~0 on positives alone. That was the seed's "val loss 0.0001".
        raise ValueError(
            f"labels hold one class only ({n_pos} positives of {labels.size}); pointwise "
            "metrics need positives and sampled negatives"
        )
    return labels


def binary_log_loss(logits: np.ndarray, labels: np.ndarray) -> float:
    """Return mean BCE of sigmoid(logits) against 0/1 labels; raises if one class only."""
    labels = _check_binary(labels)
    logits_t = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    labels_t = torch.as_tensor(labels, dtype=torch.float64)
    return float(torch.nn.functional.binary_cross_entropy_with_logits(logits_t, labels_t))


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Return ROC AUC (ties count one half), by the rank-sum formula; raises if one class only."""
    labels = _check_binary(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    ranks = pd.Series(np.asarray(scores, dtype=np.float64)).rank(method="average").to_numpy()
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
