"""Answers for users the model was never trained with: rows of histories in, each user's top-K out.

One request is a table in the raw log's layout (its user, item and optional
timestamp columns, as `ingestion.columns` names them) and a K. The served
MLflow model (io/serving.py) and the `recommend` pipeline both answer through
`Recommender.answer`, which checks the request once, at this boundary, and
hands the histories to `retrieval.recommend_from_histories`; the three answers
are therefore the same for the same histories.

Item ids the model does not know are dropped and counted per user
(`unknown_items`); a user none of whose items is known is answered from
training popularity, flagged `from_popularity` (its score is then the item's
number of training interactions, not a logit). A malformed request raises
RequestError, one line that says what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from twotower_pipeline.data.interactions import parse_timestamps
from twotower_pipeline.evaluation.retrieval import recommend_from_histories

ANSWER_COLUMNS = ("user_id", "rank", "item_id", "score", "from_popularity", "unknown_items")


class RequestError(ValueError):
    """A request that cannot be answered; the message is one line."""


@dataclass(frozen=True)
class HistoryLayout:
    """The raw log's layout: its column names, and how its timestamps are written."""

    user: str
    item: str
    timestamp: str
    timestamp_unit: str  # auto | s | ms | iso, as ingestion.timestamp_unit

    @classmethod
    def from_ingestion(cls, ingestion: Any) -> HistoryLayout:
        """Return the layout of the `ingestion` parameter block (a dict or the schema's object)."""
        block = ingestion if isinstance(ingestion, dict) else ingestion.model_dump()
        columns = block["columns"]
        return cls(columns["user"], columns["item"], columns["timestamp"], block["timestamp_unit"])

    def to_dict(self) -> dict:
        return {
            "user": self.user,
            "item": self.item,
            "timestamp": self.timestamp,
            "timestamp_unit": self.timestamp_unit,
        }


def item_popularity(train_interactions: pd.DataFrame, n_items: int) -> np.ndarray:
    """Return each item index's number of training interactions (int64, length n_items)."""
    return np.bincount(train_interactions["item"].to_numpy(np.int64), minlength=n_items)


def check_k(k: Any, n_items: int) -> int:
    """Return K as an int, or raise RequestError when it is not a whole number in 1..n_items."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise RequestError(f"k must be a whole number from 1 to {n_items}, not {k!r}")
    if not 1 <= k <= n_items:
        raise RequestError(f"k={k} is outside 1..{n_items} (the catalogue's size)")
    return int(k)


def _ids(values: pd.Series, column: str, as_text: bool) -> np.ndarray:
    """Return ids as int64 or as text; raise RequestError naming the first bad row."""
    if values.isna().any():
        row = int(np.flatnonzero(values.isna().to_numpy())[0])
        raise RequestError(
            f"column {column!r} has {int(values.isna().sum())} null(s), first row {row}"
        )
    if as_text:
        return values.astype(str).to_numpy(dtype=object)
    if pd.api.types.is_integer_dtype(values.dtype):
        return values.to_numpy(np.int64)
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(np.float64, na_value=np.nan)
    bad = ~np.isfinite(numbers) | (numbers != np.floor(numbers))
    if pd.api.types.is_bool_dtype(values.dtype):
        bad[:] = True
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise RequestError(
            f"column {column!r} must hold whole-number ids, as the training log does; "
            f"row {row} has {values.iloc[row]!r}"
        )
    return numbers.astype(np.int64)


def read_histories(
    request: pd.DataFrame, layout: HistoryLayout, item_ids_are_text: bool
) -> pd.DataFrame:
    """Return the request as user_id, item_id[, timestamp (epoch s)], or raise RequestError.

    User ids stay integers when they all are and become text otherwise (new users
    may be named anyhow); item ids must have the training log's type.
    """
    if not isinstance(request, pd.DataFrame):
        raise RequestError(f"a request is a table of history rows, not {type(request).__name__}")
    missing = [c for c in (layout.user, layout.item) if c not in request.columns]
    if missing:
        raise RequestError(
            f"the request has no column {missing[0]!r} (columns: {list(map(str, request.columns))})"
        )
    if request.empty:
        raise RequestError("the request has no history rows")
    users = request[layout.user]
    user_ids = _ids(users, layout.user, as_text=not pd.api.types.is_integer_dtype(users.dtype))
    histories = pd.DataFrame(
        {"user_id": user_ids, "item_id": _ids(request[layout.item], layout.item, item_ids_are_text)}
    )
    if layout.timestamp in request.columns:
        values = request[layout.timestamp]
        seconds, bad, _ = parse_timestamps(values.reset_index(drop=True), layout.timestamp_unit)
        bad = bad | values.isna().to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise RequestError(
                f"column {layout.timestamp!r} has {int(bad.sum())} unreadable timestamp(s) "
                f"(unit {layout.timestamp_unit}), first row {row}: {values.iloc[row]!r}"
            )
        histories["timestamp"] = seconds
    return histories


class FrozenItemVectors:
    """The model with its catalogue's vectors computed once: a served model never changes.

    recommend_from_histories asks for every item's vector on each call; at 10^6
    items that is most of a request's time.
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self.item_vectors = model.all_item_vectors()

    def all_item_vectors(self) -> Any:
        return self.item_vectors

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)


@dataclass
class Recommender:
    """A model with what it needs to answer requests in original ids."""

    model: Any  # TwoTowerModel or TowerEnsemble, in eval mode
    item_index: pd.DataFrame  # item (index) <-> item_id (original)
    popularity: np.ndarray  # training interactions per item index
    layout: HistoryLayout
    default_k: int
    chunk_size: int

    def __post_init__(self) -> None:
        if not isinstance(self.model, FrozenItemVectors):
            self.model = FrozenItemVectors(self.model)
        # Plain numpy ids: lookups in pandas' Arrow-backed text columns are slow per request.
        item_ids = self.item_index["item_id"].to_numpy()
        self.item_index = pd.DataFrame(
            {"item": self.item_index["item"].to_numpy(), "item_id": item_ids}
        )
        self.catalogue = pd.Index(item_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_index)

    def answer(self, request: pd.DataFrame, k: Any = None) -> pd.DataFrame:
        """Return the top-k of every user in the request: one row per (user, rank), ANSWER_COLUMNS.

        Rows are ordered by user id, then rank.
        """
        k = check_k(self.default_k if k is None else k, self.n_items)
        item_ids_are_text = not pd.api.types.is_integer_dtype(self.item_index["item_id"].dtype)
        histories = read_histories(request, self.layout, item_ids_are_text)
        known = pd.Series(self.catalogue.get_indexer(histories["item_id"]) >= 0)
        unknown_items = (~known).groupby(histories["user_id"]).sum()
        cold_users = unknown_items.index[~known.groupby(histories["user_id"]).any()].to_numpy()
        parts = [self._popular(cold_users, k)] if cold_users.size else []
        if known.any():
            served = recommend_from_histories(
                self.model, histories.loc[known], self.item_index, k, self.chunk_size
            )
            parts.insert(0, served.assign(from_popularity=False))
        answer = pd.concat(parts, ignore_index=True)
        answer["unknown_items"] = unknown_items.loc[answer["user_id"]].to_numpy(np.int64)
        answer = answer.sort_values(["user_id", "rank"], kind="stable", ignore_index=True)
        return answer.loc[:, list(ANSWER_COLUMNS)]

    def _popular(self, user_ids: np.ndarray, k: int) -> pd.DataFrame:
        """Return the k most popular items (ties: the lower item index) for each of the users."""
        order = np.argsort(-self.popularity, kind="stable")[:k]
        item_ids = self.item_index.set_index("item")["item_id"].loc[order].to_numpy()
        return pd.DataFrame(
            {
                "user_id": np.repeat(user_ids, k),
                "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), user_ids.size),
                "item_id": np.tile(item_ids, user_ids.size),
                "score": np.tile(self.popularity[order].astype(np.float32), user_ids.size),
                "from_popularity": True,
            }
        )
