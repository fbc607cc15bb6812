"""Baseline scorers, judged by exactly the same protocol as the model."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import contextmanager

import numpy as np
import pandas as pd
import torch

from twotower_pipeline.config.errors import RunFailedError
from twotower_pipeline.ranking.protocol import COLD_SECTIONS, HeldOutSet, score_sets

logger = logging.getLogger(__name__)

Scorer = Callable[[np.ndarray], torch.Tensor]


def popularity_scorer(train: pd.DataFrame, n_items: int) -> Scorer:
    """Score every item by its number of training interactions, the same for every user."""
    counts = torch.from_numpy(np.bincount(train["item"].to_numpy(), minlength=n_items)).float()
    return lambda users: counts.expand(len(users), n_items).clone()


def random_scorer(n_items: int, seed: int) -> Scorer:
    """Score items at random (seeded): the floor any model must clear."""
    generator = torch.Generator().manual_seed(seed)
    return lambda users: torch.rand(len(users), n_items, generator=generator)


@contextmanager
def _single_threaded_blas():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(1, "blas"):
        yield


def _broken_implicit(error: ImportError) -> RunFailedError:
    return RunFailedError(
        f"the ALS baseline cannot import implicit, which is installed: {error}; reinstall it "
        "(pip install --force-reinstall -e '.[baselines]') or set "
        "evaluation.als.enabled: false"
    )


def als_scorer(
    train: pd.DataFrame, n_users: int, n_items: int, params: dict, seed: int
) -> Scorer | None:
    """Fit implicit's ALS on the training split; None when the optional library is absent.

    The confidence of a positive is alpha, times its event weight where the log has one.
    """
    try:
        from implicit.cpu.als import AlternatingLeastSquares
        from scipy.sparse import csr_matrix
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] in ("implicit", "scipy"):
            return None  # the optional extra is not installed
        raise _broken_implicit(error) from error
    except ImportError as error:  # installed, but broken: say so, not "not installed"
        raise _broken_implicit(error) from error
    confidence = np.full(len(train), params["alpha"], dtype=np.float32)
    if "weight" in train.columns:
        confidence *= train["weight"].to_numpy(np.float32)
    matrix = csr_matrix(
        (
            confidence,
            (train["user"].to_numpy(), train["item"].to_numpy()),
        ),
        shape=(n_users, n_items),
    )
    # implicit's own loop is parallel; a second thread pool inside BLAS only slows it
    # down (and makes implicit warn when the model is built), so BLAS runs
    # single-threaded while the model is built and fitted.
    with _single_threaded_blas():
        model = AlternatingLeastSquares(
            factors=params["factors"],
            regularization=params["regularization"],
            iterations=params["iterations"],
            random_state=seed,
            num_threads=0,
        )
        model.fit(matrix, show_progress=False)
    users = torch.from_numpy(np.asarray(model.user_factors, dtype=np.float32))
    items = torch.from_numpy(np.asarray(model.item_factors, dtype=np.float32))
    return lambda ids: users[torch.from_numpy(np.asarray(ids))] @ items.T


def baseline_scorers(
    train: pd.DataFrame, n_users: int, n_items: int, als: dict, seed: int
) -> tuple[dict[str, Scorer], str | None]:
    """Return the baselines fitted on train by name, and why ALS is skipped (None if it is not)."""
    scorers = {
        "popularity": popularity_scorer(train, n_items),
        "random": random_scorer(n_items, seed),
    }
    if not als["enabled"]:
        return scorers, "disabled in parameters (evaluation.als.enabled)"
    fitted = als_scorer(train, n_users, n_items, als, seed)
    if fitted is None:
        logger.warning(
            "implicit is not installed: the ALS baseline is skipped (pip install -e '.[baselines]')"
        )
        return scorers, "the optional library implicit is not installed"
    scorers["als"] = fitted
    return scorers, None


def baseline_metrics(
    train: pd.DataFrame,
    sets: dict[str, HeldOutSet],
    n_users: int,
    n_items: int,
    evaluation: dict,
    seed: int,
) -> dict:
    """Return, per evaluation set, the metrics of popularity, random and implicit ALS.

    Every baseline is fitted on train only. ALS (when installed and enabled)
    is scored on test and validation; the cold sets get popularity and random.
    """
    scorers, skipped = baseline_scorers(train, n_users, n_items, evaluation["als"], seed)
    results: dict[str, dict] = {section: {} for section in sets}
    for name, scorer in scorers.items():
        scored = {s: held for s, held in sets.items() if name != "als" or s not in COLD_SECTIONS}
        by_section = score_sets(
            lambda known, positives, scorer=scorer: scorer,
            scored,
            n_users,
            n_items,
            evaluation["ks"],
            evaluation["chunk_size"],
            seed,
        )
        for section, metrics in by_section.items():
            results[section][name] = metrics
    if skipped:
        for section in ("test", "validation"):
            results[section]["als"] = {"skipped": skipped}
    return results
