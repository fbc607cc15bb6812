"""Scoring against the whole catalogue, shared by one model and an ensemble of them."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

from twotower_pipeline.data.user_histories import HistoryTable


class CatalogueScoring:
    """User vectors from histories and a scorer of users against every item.

    For a model that offers `config` (n_users, history_length), `device`,
    `log_scale`, `user_vectors(ids, window)` and `all_item_vectors()`.
    """

    @torch.no_grad()
    def user_vectors_from(
        self, users: np.ndarray, histories: HistoryTable | None, ends: torch.Tensor | None
    ) -> torch.Tensor:
        """Return user vectors for indices `users`, with histories ending at `ends`."""
        ids = torch.as_tensor(np.asarray(users, dtype=np.int64), device=self.device)
        window = None
        if self.config.history_length > 0 and histories is not None:
            window = histories.window(ids, ends.to(ids.device), self.config.history_length)
        return self.user_vectors(ids, window)

    def catalogue_scorer(
        self, known: pd.DataFrame | None = None, predict_at: pd.DataFrame | None = None
    ) -> Callable[[np.ndarray], torch.Tensor]:
        """Return a function of user indices -> logits against every item.

        `known` holds the interactions visible at prediction time (train for
        validation, train + validation for test); the history tower reads each
        user's latest items from it. With `predict_at` (held-out rows: user,
        timestamp), a user's history stops before the earliest of its held-out
        timestamps, so an item of the same second is never in it. The item
        vectors are computed once, not once per chunk of users scored.
        """
        items = self.all_item_vectors()
        scale = self.log_scale.detach().exp()
        histories = None
        moments = None
        if self.config.history_length > 0:
            if known is None:
                raise ValueError("a history tower needs the known interactions to score users")
            histories = HistoryTable.from_interactions(known, self.config.n_users).to(self.device)
            if predict_at is not None:
                moments = np.full(self.config.n_users, np.iinfo(np.int64).max // 4)
                np.minimum.at(
                    moments,
                    predict_at["user"].to_numpy(np.int64),
                    predict_at["timestamp"].to_numpy(np.int64),
                )

        @torch.no_grad()
        def score(users: np.ndarray) -> torch.Tensor:
            ends = None
            if histories is not None:
                at = None if moments is None else moments[np.asarray(users, dtype=np.int64)]
                ends = histories.ends_before(users, at)
            return ((scale * self.user_vectors_from(users, histories, ends)) @ items.T).cpu()

        return score


@torch.no_grad()
def learned_vectors(model, known: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Return (user vectors, item vectors) of every user and item, histories from `known`.

    A user's vector reads everything in `known` (train and validation after training).
    """
    model.eval()
    n_users = model.config.n_users
    histories, ends = None, None
    if model.config.history_length > 0:
        histories = HistoryTable.from_interactions(known, n_users)
        ends = histories.ends_before(np.arange(n_users), None)
    users = model.user_vectors_from(np.arange(n_users), histories, ends).numpy()
    return users, model.all_item_vectors().numpy()
