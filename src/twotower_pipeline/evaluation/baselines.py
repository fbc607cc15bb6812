"""Baseline scorers, judged by exactly the same protocol as the model."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import contextmanager

import numpy as np
import pandas as pd
import torch

from twotower_pipeline.config.errors import RunFailedError

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
