"""The evaluation protocol: which held-out positives are ranked, against what, knowing what.

Four sets, each scored the same way (metrics.ranking_metrics):

- validation: validation positives; the user's training items are known
  (masked, and the history a model may read). Validation chooses.
- test: test positives; training and validation items are known. Test reports.
- cold_items: test rows whose item has no training interaction, ranked among
  the items without training interactions only (what a "new arrivals" slot
  shows); training and validation items are known.
- cold_items_full: the same rows ranked against the whole catalogue.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from twotower_pipeline.ranking.metrics import Scorer, ranking_metrics

logger = logging.getLogger(__name__)

SECTIONS = ("test", "validation", "cold_items", "cold_items_full")
COLD_SECTIONS = ("cold_items", "cold_items_full")
NO_COLD_ROWS = "no test row has an item without training interactions"


@dataclass(frozen=True)
class HeldOutSet:
    """Held-out positives, the interactions known when predicting them, the items that compete."""

    positives: pd.DataFrame
    known: pd.DataFrame
    candidates: np.ndarray | None  # bool (n_items,) of the items that compete; None: all


def known_for_test(train: pd.DataFrame, val: pd.DataFrame) -> pd.DataFrame:
    """Return the interactions known when predicting test: train and validation, in one frame."""
    return pd.concat([train, val], ignore_index=True)


def items_without_training(train: pd.DataFrame, n_items: int) -> np.ndarray:
    """Return a bool mask (n_items,) of the items no training interaction has: the cold items."""
    return np.bincount(train["item"].to_numpy(), minlength=n_items) == 0


def sample_users(positives: pd.DataFrame, max_users: int | None, seed: int) -> pd.DataFrame:
    """Return the held-out rows of at most max_users users, drawn with the seed (all if None).

    On a large log, ranking the full catalogue for a seeded sample of users
    keeps evaluation's time in proportion to the sample, not to the log.
    """
    if max_users is None:
        return positives
    users = np.unique(positives["user"].to_numpy())
    if users.size <= max_users:
        return positives
    rng = np.random.default_rng([seed, 4_099])
    chosen = np.sort(rng.choice(users, size=max_users, replace=False))
    logger.info(
        "ranking a seeded sample of %s of %s users (evaluation.max_users)",
        f"{max_users:,}",
        f"{users.size:,}",
    )
    return positives[np.isin(positives["user"].to_numpy(), chosen)].reset_index(drop=True)


def held_out_sets(
    train: pd.DataFrame,
    val: pd.DataFrame,
    test: pd.DataFrame,
    test_cold: pd.DataFrame,
    n_items: int,
    max_users: int | None = None,
    seed: int = 0,
) -> dict[str, HeldOutSet]:
    """Return the four evaluation sets by name (SECTIONS).

    With max_users, each set keeps a seeded sample of that many users (the
    same users for every scorer that passes the same seed).
    """
    known = known_for_test(train, val)  # every validation row is known at test time
    val = sample_users(val, max_users, seed)
    test = sample_users(test, max_users, seed)
    test_cold = sample_users(test_cold, max_users, seed)
    cold = items_without_training(train, n_items)
    return {
        "test": HeldOutSet(test, known, None),
        "validation": HeldOutSet(val, train, None),
        "cold_items": HeldOutSet(test_cold, known, cold),
        "cold_items_full": HeldOutSet(test_cold, known, None),
    }


def score_sets(
    scorer_for: Callable[[pd.DataFrame, pd.DataFrame], Scorer],
    sets: dict[str, HeldOutSet],
    n_users: int,
    n_items: int,
    ks: Sequence[int],
    chunk_size: int,
    seed: int,
) -> dict[str, dict]:
    """Return each set's ranking metrics for one scorer, {"skipped": why} where a set is empty.

    scorer_for(known, positives) returns the scorer to use when `known` is
    what is known and `positives` are being predicted (a model builds user
    histories from them; a baseline ignores both). It is called once per
    distinct pair.
    """
    scorers: dict[tuple[int, int], Scorer] = {}
    results: dict[str, dict] = {}
    for name, held_out in sets.items():
        if held_out.positives.empty:
            results[name] = {"skipped": NO_COLD_ROWS if name in COLD_SECTIONS else "no rows"}
            continue
        key = (id(held_out.known), id(held_out.positives))
        if key not in scorers:
            scorers[key] = scorer_for(held_out.known, held_out.positives)
        results[name] = ranking_metrics(
            scorers[key],
            held_out.known,
            held_out.positives,
            n_users,
            n_items,
            ks,
            chunk_size,
            seed,
            candidates=held_out.candidates,
        )
    return results
