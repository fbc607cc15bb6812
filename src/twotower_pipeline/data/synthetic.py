"""A deterministic synthetic interaction log with the shape of real implicit feedback.

Users and items live in a small latent taste space; an item's chance of being
chosen by a user is its popularity times exp(taste affinity). Part of each
taste vector comes from side features the generator also writes (an item's
genres and studio, a user's age and region), the rest is the entity's own, so
features carry some of the signal and ids the rest. User activity and item
popularity are long-tailed (log-normal), timestamps spread over two years.
A few items are new arrivals: released late, they can only be chosen by users
still active then, so some held-out items have no training interaction (cold).
The same arguments give the same frames, bit for bit, on any machine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

_START = 1_704_067_200  # 2024-01-01T00:00:00Z
_SPAN_SECONDS = 2 * 365 * 24 * 3600
GENRES = (
    "action",
    "adventure",
    "animation",
    "comedy",
    "crime",
    "documentary",
    "drama",
    "fantasy",
    "horror",
    "romance",
    "sci-fi",
    "thriller",
)
_AGE_MEAN, _AGE_STD = 36.0, 12.0
# Logit of an item that is not released yet when a user's window ends: never chosen.
_UNRELEASED = -1e9


@dataclass(frozen=True)
class SyntheticLogSpec:
    """Size and shape of the synthetic log and its side features."""

    n_users: int = 5000
    n_items: int = 2000
    mean_interactions_per_user: float = 40.0
    taste_dim: int = 8
    taste_strength: float = 2.5
    popularity_sigma: float = 1.2
    activity_sigma: float = 0.8
    min_interactions_per_user: int = 5
    seed: int = 20240101
    # Shares of taste variance that the side features explain (the rest is the id's own).
    genre_share: float = 0.45  # item: mean direction of its 1-3 genres
    studio_share: float = 0.15  # item: direction of its studio
    n_studios: int = 10
    age_share: float = 0.2  # user: a direction scaled by standardised age
    region_share: float = 0.15  # user: direction of its region
    n_regions: int = 6
    last_start: float = 0.9  # user windows start in the first last_start of the span
    # New arrivals: released in the last new_item_window of the span, met in a user's
    # last session (new_item_lag after its window), at most max_new_items_per_user each.
    new_item_fraction: float = 0.05
    new_item_window: float = 0.1
    new_item_lag: float = 0.003
    max_new_items_per_user: int = 2


@dataclass(frozen=True)
class SyntheticWorld:
    """The log, the side features and the generator's own taste model (the truth)."""

    interactions: pd.DataFrame  # user_id, item_id, timestamp
    item_features: pd.DataFrame  # item_id, genres (list of str), studio
    user_features: pd.DataFrame  # user_id, age, region
    item_taste: pd.DataFrame  # item_id, log_popularity, release, taste_0..taste_{d-1}
    user_taste: pd.DataFrame  # user_id, window_end, taste_0..taste_{d-1} (x taste_strength)


def _mix(
    rng: np.random.Generator, parts: list[tuple[float, np.ndarray]], shape: tuple
) -> np.ndarray:
    """Return sqrt(share)-weighted parts plus the rest as own noise: unit variance per dim."""
    own = 1.0 - sum(share for share, _ in parts)
    if own < 0:
        raise ValueError("feature shares of the synthetic spec add up to more than 1")
    mixed = np.sqrt(own) * rng.standard_normal(shape)
    for share, part in parts:
        mixed += np.sqrt(share) * part
    return mixed


def _item_genres(rng: np.random.Generator, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (genre membership (n_items, n_genres) bool, genres per item)."""
    n_genres = len(GENRES)
    prevalence = np.log(rng.dirichlet(np.full(n_genres, 2.0)))
    per_item = rng.choice([1, 2, 3], size=n_items, p=[0.5, 0.35, 0.15])
    # Gumbel top-k: per_item distinct genres, drawn by prevalence, all items at once.
    order = np.argsort(-(prevalence + rng.gumbel(size=(n_items, n_genres))), axis=1)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(n_genres)[None, :], axis=1)
    return rank < per_item[:, None], per_item


@dataclass(frozen=True)
class _Catalogue:
    """The items' side of the world: genres, studio, taste, popularity and release."""

    membership: np.ndarray  # bool (n_items, n_genres)
    studio: np.ndarray
    taste: np.ndarray
    log_popularity: np.ndarray
    release: np.ndarray  # seconds after _START; 0 for items there from the start
    new_items: np.ndarray  # the indices of the new arrivals


def _item_side(rng: np.random.Generator, spec: SyntheticLogSpec) -> tuple:
    """Return the items' genres, studio, taste and log popularity, drawn in this order."""
    n_items, dim = spec.n_items, spec.taste_dim
    membership, per_item = _item_genres(rng, n_items)
    genre_taste = rng.standard_normal((len(GENRES), dim))
    # The mean of k unit-variance directions has variance 1/k: scale it back to 1.
    genre_part = (membership @ genre_taste) / np.sqrt(per_item)[:, None]
    studio = rng.integers(0, spec.n_studios, n_items)
    studio_part = rng.standard_normal((spec.n_studios, dim))[studio]
    item_taste = _mix(
        rng,
        [(spec.genre_share, genre_part), (spec.studio_share, studio_part)],
        (n_items, dim),
    )
    item_log_popularity = rng.normal(0.0, spec.popularity_sigma, n_items)
    return membership, studio, item_taste, item_log_popularity


def _user_side(rng: np.random.Generator, spec: SyntheticLogSpec) -> tuple:
    """Return the users' age, region, taste and interaction counts, drawn in this order."""
    n_users, dim = spec.n_users, spec.taste_dim
    age = np.clip(np.round(rng.normal(_AGE_MEAN, _AGE_STD, n_users)), 16, 80).astype(np.int64)
    age_part = ((age - _AGE_MEAN) / _AGE_STD)[:, None] * rng.standard_normal(dim)[None, :]
    region = rng.integers(0, spec.n_regions, n_users)
    region_part = rng.standard_normal((spec.n_regions, dim))[region]
    user_taste = _mix(
        rng, [(spec.age_share, age_part), (spec.region_share, region_part)], (n_users, dim)
    ) / np.sqrt(dim)

    activity = rng.lognormal(0.0, spec.activity_sigma, n_users)
    activity *= spec.mean_interactions_per_user / activity.mean()
    max_per_user = spec.n_items // 2
    counts = np.clip(np.round(activity), spec.min_interactions_per_user, max_per_user)
    return age, region, user_taste, counts.astype(np.int64)


def _windows_and_releases(rng: np.random.Generator, spec: SyntheticLogSpec) -> tuple:
    """Return each user's active window (start, end) and the new arrivals with their release.

    Each user is active over a window of the two years; new arrivals are released
    near the end, so only users still active then can choose them.
    """
    n_users, n_items = spec.n_users, spec.n_items
    window_start = rng.uniform(0.0, spec.last_start, n_users) * _SPAN_SECONDS
    last_end = (1.0 - spec.new_item_lag) * _SPAN_SECONDS
    window_end = np.minimum(
        window_start + rng.uniform(0.05, 0.2, n_users) * _SPAN_SECONDS, last_end
    )
    release = np.zeros(n_items)
    n_new = int(round(spec.new_item_fraction * n_items))
    new_items = rng.choice(n_items, size=n_new, replace=False)
    release[new_items] = rng.uniform(1.0 - spec.new_item_window, 1.0 - spec.new_item_lag, n_new)
    release *= _SPAN_SECONDS
    return window_start, window_end, release, new_items


def _choose_items(
    rng: np.random.Generator,
    spec: SyntheticLogSpec,
    user_vectors: np.ndarray,
    window_end: np.ndarray,
    counts: np.ndarray,
    catalogue: _Catalogue,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (user, item) index pairs: each user's counts[user] distinct items, by taste."""
    users, items = [], []
    n_users, n_items, new_items = spec.n_users, spec.n_items, catalogue.new_items
    chunk = max(1, 2_000_000 // n_items)
    for start in range(0, n_users, chunk):
        stop = min(start + chunk, n_users)
        logits = true_logits(
            user_vectors[start:stop],
            window_end[start:stop],
            catalogue.taste,
            catalogue.log_popularity,
            catalogue.release,
        )
        # Sampling without replacement: the Gumbel top-k trick draws k distinct
        # items with probability proportional to exp(logit), a chunk of users at once.
        keys = logits + rng.gumbel(size=logits.shape)
        # Each user takes at most max_new_items_per_user new arrivals (its most wanted).
        keys[:, new_items] = _keep_largest(keys[:, new_items], spec.max_new_items_per_user)
        available = (keys > _UNRELEASED / 2).sum(axis=1)
        order = _largest_first(keys, int(counts[start:stop].max(initial=0)))
        for row, user in enumerate(range(start, stop)):
            # A copy: a slice would keep the chunk's whole order alive.
            chosen = order[row, : min(counts[user], available[row])].copy()
            users.append(np.full(chosen.size, user, dtype=np.int64))
            items.append(chosen)
    return np.concatenate(users), np.concatenate(items)


def _keep_largest(keys: np.ndarray, keep: int) -> np.ndarray:
    """Return keys with all but each row's `keep` largest set to -inf, in O(columns) a row."""
    if keys.shape[1] <= keep:
        return keys
    if keep == 0:
        return np.full_like(keys, -np.inf)
    threshold = -np.partition(-keys, keep - 1, axis=1)[:, keep - 1 : keep]
    return np.where(keys < threshold, -np.inf, keys)


def _largest_first(keys: np.ndarray, k: int) -> np.ndarray:
    """Return each row's k largest keys' columns, largest first (ties by column).

    A partial sort: O(columns + k log k) a row instead of a full argsort's
    O(columns log columns); the same columns in the same order.
    """
    k = min(k, keys.shape[1])
    if k == 0:
        return np.empty((keys.shape[0], 0), dtype=np.int64)
    top = np.argpartition(-keys, k - 1, axis=1)[:, :k] if k < keys.shape[1] else None
    if top is None:
        return np.argsort(-keys, axis=1, kind="stable")
    top.sort(axis=1)  # column order first, so the stable sort breaks ties by column
    ranked = np.argsort(-np.take_along_axis(keys, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, ranked, axis=1)


def _labelled_log(
    rng: np.random.Generator,
    spec: SyntheticLogSpec,
    user_idx: np.ndarray,
    item_idx: np.ndarray,
    timestamp: np.ndarray,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Return the shuffled log in original ids, and the users' and items' ids by index."""
    # Original ids look like real ones: strings that are not row positions.
    user_labels = np.array([f"u{u:05d}" for u in rng.permutation(spec.n_users)])
    item_labels = np.array([f"i{i:05d}" for i in rng.permutation(spec.n_items)])
    frame = pd.DataFrame(
        {
            "user_id": user_labels[user_idx],
            "item_id": item_labels[item_idx],
            "timestamp": timestamp.astype(np.int64),
        }
    )
    interactions = frame.iloc[rng.permutation(len(frame))].reset_index(drop=True)
    return interactions, user_labels, item_labels


def _item_features(
    spec: SyntheticLogSpec, catalogue: _Catalogue, item_labels: np.ndarray
) -> pd.DataFrame:
    """Return the items' side features: genres (a list each) and studio."""
    genre_names = np.array(GENRES, dtype=object)
    item_rows, genre_cols = np.nonzero(catalogue.membership)
    genres = np.split(
        genre_names[genre_cols], np.cumsum(np.bincount(item_rows, minlength=spec.n_items))[:-1]
    )
    return pd.DataFrame(
        {
            "item_id": item_labels,
            "genres": [list(g) for g in genres],
            "studio": np.array([f"studio_{s:02d}" for s in range(spec.n_studios)])[
                catalogue.studio
            ],
        }
    )


def generate_world(spec: SyntheticLogSpec) -> SyntheticWorld:
    """Return the log with its side features and taste model, all from spec.seed."""
    rng = np.random.default_rng(spec.seed)
    membership, studio, item_taste, item_log_popularity = _item_side(rng, spec)
    age, region, user_taste, counts = _user_side(rng, spec)
    window_start, window_end, release, new_items = _windows_and_releases(rng, spec)
    catalogue = _Catalogue(membership, studio, item_taste, item_log_popularity, release, new_items)
    user_vectors = spec.taste_strength * user_taste
    user_idx, item_idx = _choose_items(rng, spec, user_vectors, window_end, counts, catalogue)

    # Events fall in the user's window in random order (the taste, not the time,
    # carries the signal); new arrivals are met in the user's last session, just
    # after the window (so they are held out more often than not).
    offsets = rng.uniform(0.0, 1.0, user_idx.size)
    is_new = release[item_idx] > 0
    first = np.where(is_new, window_end[user_idx], window_start[user_idx])
    length = np.where(
        is_new, spec.new_item_lag * _SPAN_SECONDS, window_end[user_idx] - window_start[user_idx]
    )
    timestamp = _START + first + offsets * length
    interactions, user_labels, item_labels = _labelled_log(rng, spec, user_idx, item_idx, timestamp)

    user_features = pd.DataFrame(
        {
            "user_id": user_labels,
            "age": age,
            "region": np.array([f"region_{r}" for r in range(spec.n_regions)])[region],
        }
    )
    taste_columns = [f"taste_{k}" for k in range(spec.taste_dim)]
    item_truth = pd.DataFrame(item_taste, columns=taste_columns)
    item_truth.insert(0, "item_id", item_labels)
    item_truth.insert(1, "log_popularity", item_log_popularity)
    item_truth.insert(2, "release", (_START + release).astype(np.int64))
    user_truth = pd.DataFrame(user_vectors, columns=taste_columns)
    user_truth.insert(0, "user_id", user_labels)
    user_truth.insert(1, "window_end", (_START + window_end).astype(np.int64))
    item_features = _item_features(spec, catalogue, item_labels)
    return SyntheticWorld(interactions, item_features, user_features, item_truth, user_truth)


def generate_interactions(spec: SyntheticLogSpec) -> pd.DataFrame:
    """Return a log with columns user_id, item_id (strings) and timestamp (epoch seconds)."""
    return generate_world(spec).interactions


def true_logits(
    user_vectors: np.ndarray,
    window_end: np.ndarray,
    item_taste: np.ndarray,
    item_log_popularity: np.ndarray,
    release: np.ndarray,
) -> np.ndarray:
    """Return the generator's choice logits (users x items); unreleased items get _UNRELEASED.

    `release` and `window_end` are in the same time unit and origin.
    """
    logits = item_log_popularity[None, :] + user_vectors @ item_taste.T
    return np.where(release[None, :] > window_end[:, None], _UNRELEASED, logits)


def oracle_scorer(
    user_taste: pd.DataFrame,
    item_taste: pd.DataFrame,
    user_index: pd.DataFrame,
    item_index: pd.DataFrame,
) -> Callable[[np.ndarray], torch.Tensor]:
    """Return user indices -> the generator's own logits against every item (the best ranker).

    The taste tables are the generator's (SyntheticWorld.user_taste / item_taste);
    user_index / item_index map the pipeline's integer indices to original ids.
    Raises ValueError when an indexed user or item has no taste row (not this
    generator's data).
    """
    users = user_taste.set_index("user_id").reindex(user_index["user_id"].to_numpy())
    items = item_taste.set_index("item_id").reindex(item_index["item_id"].to_numpy())
    missing_users, missing_items = (
        int(users.isna().any(axis=1).sum()),
        int(items.isna().any(axis=1).sum()),
    )
    if missing_users or missing_items:
        raise ValueError(
            f"{missing_users} user(s) and {missing_items} item(s) of the index are not in the "
            "generator's taste tables: the interactions are not this synthetic data"
        )
    taste_columns = [c for c in user_taste.columns if c.startswith("taste_")]
    user_vectors = users[taste_columns].to_numpy(np.float64)
    window_end = users["window_end"].to_numpy(np.float64)
    item_vectors = items[taste_columns].to_numpy(np.float64)
    popularity = items["log_popularity"].to_numpy(np.float64)
    release = items["release"].to_numpy(np.float64)

    def score(user_indices: np.ndarray) -> torch.Tensor:
        rows = np.asarray(user_indices, dtype=np.int64)
        logits = true_logits(
            user_vectors[rows], window_end[rows], item_vectors, popularity, release
        )
        return torch.from_numpy(logits.astype(np.float32))

    return score
