"""Approximate nearest-neighbour retrieval over the item vectors (faiss), beside exact search.

The model's score is scale x the inner product of its user and item vectors
(unit length, or with item biases one coordinate more: model.towers), so the
inner-product neighbours of a user vector are its best items. The vectors are
searched as they are: scaling them to unit length would change a biased
model's ranking.
An index trades a little recall for query time that grows far slower than the
catalogue: exact search costs n_items x dim per user. faiss-cpu is an optional
extra (`pip install -e ".[ann]"`); without it `ItemIndex.index` is None and
callers fall back to exact search.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

MISSING_FAISS = (
    "faiss-cpu is not installed: no retrieval index, exact search is used (pip install -e '.[ann]')"
)
KINDS = ("hnsw", "ivf")


def faiss_module() -> Any | None:
    """Return the faiss module, or None when the optional extra is not installed."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


@dataclass(frozen=True)
class IndexConfig:
    """How the index is built and searched (conf/base/parameters_index.yml, `index`)."""

    kind: str
    hnsw_m: int
    hnsw_ef_construction: int
    hnsw_ef_search: int
    ivf_nlist: int
    ivf_nprobe: int
    seed: int

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"index.kind must be one of {KINDS}, got {self.kind!r}")
        for name in ("hnsw_m", "hnsw_ef_construction", "hnsw_ef_search", "ivf_nlist", "ivf_nprobe"):
            if getattr(self, name) < 1:
                raise ValueError(f"index: {name} must be positive, got {getattr(self, name)}")

    @classmethod
    def from_params(cls, index: dict, seed: int) -> IndexConfig:
        """Return the config of the `index` parameter block."""
        return cls(
            kind=index["kind"],
            hnsw_m=int(index["hnsw"]["m"]),
            hnsw_ef_construction=int(index["hnsw"]["ef_construction"]),
            hnsw_ef_search=int(index["hnsw"]["ef_search"]),
            ivf_nlist=int(index["ivf"]["nlist"]),
            ivf_nprobe=int(index["ivf"]["nprobe"]),
            seed=int(seed),
        )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ItemIndex:
    """A faiss index over the item vectors with what built it; `index` None when skipped."""

    index: Any | None
    config: IndexConfig
    n_items: int
    dim: int
    skipped: str | None = None

    def describe(self) -> dict:
        """Return the JSON-able description persisted beside the index."""
        return {
            "config": self.config.to_dict(),
            "n_items": self.n_items,
            "dim": self.dim,
            "metric": "inner_product",
            "skipped": self.skipped,
        }

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return (inner products, item indices) of each query's k approximate neighbours."""
        if self.index is None:
            raise ValueError(f"the item index was not built: {self.skipped}")
        k = min(k, self.n_items)
        scores, items = self.index.search(faiss_ready(queries), k)
        return scores, items.astype(np.int64)


def faiss_ready(vectors: np.ndarray) -> np.ndarray:
    """Return the rows as float32 and C-contiguous (what faiss reads), values unchanged."""
    return np.ascontiguousarray(vectors, dtype=np.float32)


def vectors_of(embeddings: pd.DataFrame) -> np.ndarray:
    """Return the `embedding` list column of an embeddings table as a (rows, dim) array."""
    if embeddings.empty:
        raise ValueError("the embeddings table is empty: no vectors to index")
    return np.stack(embeddings["embedding"].to_numpy()).astype(np.float32)


def build_index(item_vectors: np.ndarray, config: IndexConfig) -> ItemIndex:
    """Return an inner-product index over the item vectors.

    HNSW (a graph, no training) is the default; IVF clusters the vectors with
    k-means (seeded) and searches the nprobe nearest lists. nlist is capped at
    n_items / 39, the fewest points per centroid faiss' k-means accepts quietly.
    """
    n_items, dim = item_vectors.shape
    faiss = faiss_module()
    if faiss is None:
        return ItemIndex(None, config, n_items, dim, skipped=MISSING_FAISS)
    vectors = faiss_ready(item_vectors)
    if config.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = config.hnsw_ef_construction
        index.hnsw.efSearch = config.hnsw_ef_search
    else:
        nlist = max(1, min(config.ivf_nlist, n_items // 39))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = config.seed
        index.train(vectors)
        index.nprobe = min(config.ivf_nprobe, nlist)
    index.add(vectors)
    return ItemIndex(index, config, n_items, dim)


class ExactSearch:
    """Brute-force inner-product search over the item vectors."""

    def __init__(self, item_vectors: np.ndarray, chunk_size: int = 1024) -> None:
        self.items = torch.from_numpy(faiss_ready(item_vectors))
        # Memory per chunk: chunk_size x n_items float32 scores.
        self.chunk_size = chunk_size

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return (inner products, item indices) of each query's k nearest items."""
        queries = faiss_ready(queries)
        k = min(k, self.items.shape[0])
        scores = np.empty((len(queries), k), dtype=np.float32)
        ids = np.empty((len(queries), k), dtype=np.int64)
        for start in range(0, len(queries), self.chunk_size):
            chunk = torch.from_numpy(queries[start : start + self.chunk_size]) @ self.items.T
            top = torch.topk(chunk, k, dim=1)
            scores[start : start + self.chunk_size] = top.values.numpy()
            ids[start : start + self.chunk_size] = top.indices.numpy()
        return scores, ids


def exact_search(
    item_vectors: np.ndarray, queries: np.ndarray, k: int, chunk_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Return (inner products, item indices) of each query's k nearest items, by brute force."""
    return ExactSearch(item_vectors, chunk_size).search(queries, k)


def recall_at_k(approximate: np.ndarray, exact: np.ndarray) -> float:
    """Return the mean fraction of each row's exact neighbours that the approximate row holds."""
    if approximate.shape != exact.shape:
        raise ValueError(f"shapes differ: approximate {approximate.shape}, exact {exact.shape}")
    if exact.size == 0:
        raise ValueError("no queries: recall is undefined")
    hits = (approximate[:, :, None] == exact[:, None, :]).any(axis=1)
    return float(hits.mean())


def recall_with_ties(
    approximate_scores: np.ndarray, exact_scores: np.ndarray, tolerance: float = 1e-5
) -> float:
    """Return recall@k where any item scoring as high as the exact k-th counts as found.

    Items with equal vectors (cold items sharing features, items never trained)
    tie; exact search keeps an arbitrary k of them and the index another, equally
    good k. Counting by score rather than by id does not call that a miss.
    `tolerance` absorbs float32 rounding between the two searches.
    """
    if approximate_scores.shape != exact_scores.shape:
        raise ValueError(
            f"shapes differ: approximate {approximate_scores.shape}, exact {exact_scores.shape}"
        )
    if exact_scores.size == 0:
        raise ValueError("no queries: recall is undefined")
    threshold = exact_scores[:, -1:] - tolerance
    return float((approximate_scores >= threshold).mean())


def index_recall(
    item_index: ItemIndex,
    item_vectors: np.ndarray,
    queries: np.ndarray,
    k: int,
) -> dict:
    """Return the index's recall@k against exact search for these queries, or why it is absent.

    Ties count as found (recall_with_ties): the index is judged on the scores it
    returns, not on which of several equal items it picked.
    """
    if item_index.index is None:
        return {"skipped": item_index.skipped}
    if len(queries) == 0:
        raise ValueError("no query users: the index recall needs at least one test user")
    approximate_scores, _ = item_index.search(queries, k)
    exact_scores, _ = exact_search(item_vectors, queries, k)
    return {
        f"recall@{k}": recall_with_ties(approximate_scores, exact_scores),
        "queries": int(len(queries)),
        "n_items": item_index.n_items,
        "kind": item_index.config.kind,
    }


def top_k_unseen(
    item_index: ItemIndex,
    user_vectors: np.ndarray,
    users: np.ndarray,
    seen: pd.DataFrame,
    k: int,
    score_scale: float,
    chunk_size: int,
) -> pd.DataFrame:
    """Return each user's k best unseen items from the index: columns user, rank, item, score.

    The index knows nothing of what a user has seen, so each chunk of users asks
    for k plus the most items any of them has seen, then drops the seen ones;
    score is score_scale x cosine (the model's logit when given its scale).
    Same columns as metrics.top_k_unseen; users with fewer than k unseen items
    found get fewer rows.
    """
    users = np.asarray(users, dtype=np.int64)
    n_items = item_index.n_items
    seen_codes = np.unique(
        seen["user"].to_numpy(np.int64) * n_items + seen["item"].to_numpy(np.int64)
    )
    seen_per_user = np.bincount(seen["user"].to_numpy(np.int64), minlength=users.max(initial=0) + 1)
    parts = []
    for start in range(0, users.size, chunk_size):
        chunk = users[start : start + chunk_size]
        fetch = min(n_items, k + int(seen_per_user[chunk].max(initial=0)))
        scores, items = item_index.search(user_vectors[chunk], fetch)
        # faiss pads with -1 when it finds fewer neighbours than asked.
        drop = (items < 0) | np.isin(chunk[:, None] * n_items + items, seen_codes)
        # Stable: kept items stay in score order, dropped ones move behind them.
        order = np.argsort(drop, axis=1, kind="stable")[:, :k]
        items = np.take_along_axis(items, order, axis=1)
        scores = np.take_along_axis(scores, order, axis=1)
        kept = ~np.take_along_axis(drop, order, axis=1)
        width = items.shape[1]
        part = pd.DataFrame(
            {
                "user": np.repeat(chunk, width),
                "rank": np.tile(np.arange(1, width + 1, dtype=np.int32), chunk.size),
                "item": items.ravel(),
                "score": (score_scale * scores).ravel().astype(np.float32),
            }
        )
        parts.append(part[kept.ravel()])
    if not parts:
        return pd.DataFrame({"user": [], "rank": [], "item": [], "score": []})
    return pd.concat(parts, ignore_index=True)
