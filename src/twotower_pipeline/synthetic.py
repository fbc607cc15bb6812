"""A deterministic synthetic interaction log with the shape of real implicit feedback.

Users and items live in a small latent taste space; an item's chance of being
chosen by a user is its popularity times exp(taste affinity). User activity
and item popularity are long-tailed (log-normal), timestamps spread over two
years. The same arguments give the same frame, bit for bit, on any machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

_START = 1_704_067_200  # 2024-01-01T00:00:00Z
_SPAN_SECONDS = 2 * 365 * 24 * 3600


@dataclass(frozen=True)
class SyntheticLogSpec:
    """Size and shape of the synthetic log."""

    n_users: int = 5000
    n_items: int = 2000
    mean_interactions_per_user: float = 40.0
    taste_dim: int = 8
    taste_strength: float = 2.5
    popularity_sigma: float = 1.2
    activity_sigma: float = 0.8
    min_interactions_per_user: int = 5
    seed: int = 20240101


def generate_interactions(spec: SyntheticLogSpec) -> pd.DataFrame:
    """Return a log with columns user_id, item_id (strings) and timestamp (epoch seconds)."""
    rng = np.random.default_rng(spec.seed)
    n_users, n_items = spec.n_users, spec.n_items

    user_taste = rng.standard_normal((n_users, spec.taste_dim)) / np.sqrt(spec.taste_dim)
    item_taste = rng.standard_normal((n_items, spec.taste_dim))
    item_log_popularity = rng.normal(0.0, spec.popularity_sigma, n_items)

    activity = rng.lognormal(0.0, spec.activity_sigma, n_users)
    activity *= spec.mean_interactions_per_user / activity.mean()
    max_per_user = n_items // 2
    counts = np.clip(np.round(activity), spec.min_interactions_per_user, max_per_user)
    counts = counts.astype(np.int64)

    # Sampling without replacement, one user at a time in chunks: the Gumbel
    # top-k trick draws k distinct items with probability proportional to
    # exp(logit), all users of a chunk at once.
    users, items = [], []
    chunk = max(1, 2_000_000 // n_items)
    for start in range(0, n_users, chunk):
        stop = min(start + chunk, n_users)
        logits = item_log_popularity + spec.taste_strength * (user_taste[start:stop] @ item_taste.T)
        keys = logits + rng.gumbel(size=logits.shape)
        order = np.argsort(-keys, axis=1, kind="stable")
        for row, user in enumerate(range(start, stop)):
            chosen = order[row, : counts[user]]
            users.append(np.full(chosen.size, user, dtype=np.int64))
            items.append(chosen)
    user_idx = np.concatenate(users)
    item_idx = np.concatenate(items)

    # Each user is active over a window of the two years; their events fall in
    # it in random order (the taste, not the time, carries the signal).
    window_start = rng.uniform(0.0, 0.8, n_users) * _SPAN_SECONDS
    window_length = rng.uniform(0.05, 0.2, n_users) * _SPAN_SECONDS
    offsets = rng.uniform(0.0, 1.0, user_idx.size)
    timestamp = _START + window_start[user_idx] + offsets * window_length[user_idx]

    # Original ids look like real ones: strings that are not row positions.
    user_labels = np.array([f"u{u:05d}" for u in rng.permutation(n_users)])
    item_labels = np.array([f"i{i:05d}" for i in rng.permutation(n_items)])
    frame = pd.DataFrame(
        {
            "user_id": user_labels[user_idx],
            "item_id": item_labels[item_idx],
            "timestamp": timestamp.astype(np.int64),
        }
    )
    shuffled = rng.permutation(len(frame))
    return frame.iloc[shuffled].reset_index(drop=True)
