"""Ranking metrics over the full catalogue, and pointwise metrics where they mean something.

Protocol: for every user with held-out positives (validation or test), score
all items, mask the items the user is known to have (train for validation;
train + validation for test), rank the held-out positives among what is left.
With `candidates`, only those items compete (the cold-start protocol: a cold
item ranked among the cold items only). A positive's
0-based rank is the number of unmasked items scored strictly higher, plus the
number of items scored equal that a random order puts before it. The random
order is one seeded permutation per user, so a user's tied positives get
distinct ranks and a model that scores every item alike gets exactly what
random ranking gets in expectation, never better.

Users are scored a chunk at a time, so memory is bounded by chunk_size x
n_items scores whatever the number of users. Ranks are counted by comparing
each positive's score with its own row, a few rows at a time so the
comparison stays in cache; no row is ever sorted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

Scorer = Callable[[np.ndarray], torch.Tensor]

# Rows compared at once when counting ranks: 32 rows of 10^5 float32 scores and
# their comparison masks stay in cache, which makes counting faster than comparing
# a whole chunk in one go (benchmarks/evaluation.py measures it).
_ROW_BLOCK = 32


def _csr(users: np.ndarray, items: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (indptr, items sorted by user) for a set of (user, item) pairs."""
    users = np.asarray(users, dtype=np.int64)
    order = np.argsort(users, kind="stable")
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(users, minlength=n_users), out=indptr[1:])
    return indptr, np.asarray(items, dtype=np.int64)[order]


def _pairs_of(
    chunk_users: np.ndarray, indptr: np.ndarray, cols: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (row within chunk, item, position within the user's list) for the chunk's pairs."""
    starts, stops = indptr[chunk_users], indptr[chunk_users + 1]
    lengths = stops - starts
    rows = np.repeat(np.arange(chunk_users.size), lengths)
    slot = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return rows, cols[np.repeat(starts, lengths) + slot], slot


def _score_chunk(
    score_users: Scorer,
    chunk: np.ndarray,
    n_items: int,
    known_ptr: np.ndarray,
    known_cols: np.ndarray,
    outside: torch.Tensor | None = None,
) -> torch.Tensor:
    """Return the chunk's (len, n_items) float32 scores, known and outside items set to -inf."""
    scores = score_users(chunk).to(torch.float32)
    if tuple(scores.shape) != (chunk.size, n_items):
        raise ValueError(
            f"the scorer returned shape {tuple(scores.shape)} for {chunk.size} users; "
            f"expected ({chunk.size}, {n_items})"
        )
    rows, cols, _ = _pairs_of(chunk, known_ptr, known_cols)
    scores[torch.from_numpy(rows), torch.from_numpy(cols)] = -torch.inf
    if outside is not None:
        scores[:, outside] = -torch.inf
    return scores


def _count_block_range(
    scores: np.ndarray,
    rows: np.ndarray,
    targets: np.ndarray,
    in_order: bool,
    greater: np.ndarray,
    at_least: np.ndarray,
    lo: int,
    hi: int,
) -> None:
    for b in range(lo, hi, _ROW_BLOCK):
        e = min(b + _ROW_BLOCK, hi)
        part = scores[b:e] if in_order else scores[rows[b:e]]
        target = targets[b:e, None]
        greater[b:e] = np.count_nonzero(part > target, axis=1)
        at_least[b:e] = np.count_nonzero(part >= target, axis=1)


def _count_above(
    scores: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor, max_threads: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return, per target, how many scores of its row are > it and how many are >= it."""
    # numpy on blocks of rows, one contiguous share of the rows per thread (numpy
    # releases the GIL): no per-operation thread barriers, which made torch's
    # comparisons of small blocks slow on a busy machine, and each block
    # stays in cache between its two passes.
    scores_np, rows_np, targets_np = scores.numpy(), rows.numpy(), targets.numpy()
    greater = np.empty(rows_np.size, dtype=np.int64)
    at_least = np.empty(rows_np.size, dtype=np.int64)
    # Each chunk user's first positive sits in the row of the same index: no gather needed.
    in_order = rows_np.size == scores_np.shape[0] and bool(
        (rows_np == np.arange(rows_np.size)).all()
    )
    args = (scores_np, rows_np, targets_np, in_order, greater, at_least)
    threads = max(1, min(max_threads, rows_np.size // _ROW_BLOCK))
    if threads == 1:
        _count_block_range(*args, 0, rows_np.size)
    else:
        share = -(-rows_np.size // threads)
        with ThreadPoolExecutor(threads) as pool:
            list(
                pool.map(
                    lambda lo: _count_block_range(*args, lo, min(lo + share, rows_np.size)),
                    range(0, rows_np.size, share),
                )
            )
    return torch.from_numpy(greater), torch.from_numpy(at_least)


def _tied_before(
    scores: torch.Tensor,
    rows: torch.Tensor,
    items: torch.Tensor,
    targets: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """Return, per tied positive, how many items with its score a random order puts first.

    One random order per row (user), shared by that row's positives, so tied
    positives of one user land on distinct ranks.
    """
    tie_rows, row_of = torch.unique(rows, return_inverse=True)
    before = torch.empty(rows.numel(), dtype=torch.int64)
    # The random keys are drawn for a block of rows at a time, so memory stays at
    # _ROW_BLOCK x n_items however many positives tie (popularity ties on most items).
    for lo in range(0, tie_rows.numel(), _ROW_BLOCK):
        keys = torch.rand(
            min(_ROW_BLOCK, tie_rows.numel() - lo),
            scores.shape[1],
            generator=generator,
            dtype=torch.float64,
        )
        mine = torch.nonzero((row_of >= lo) & (row_of < lo + _ROW_BLOCK)).squeeze(1)
        row_keys = keys[row_of[mine] - lo]
        own_key = row_keys.gather(1, items[mine, None])
        tied = scores[rows[mine]] == targets[mine, None]
        before[mine] = (tied & (row_keys < own_key)).sum(1)
    return before


def _random_tie_positions(
    scores: torch.Tensor,
    rows: torch.Tensor,
    items: torch.Tensor,
    targets: torch.Tensor,
    ties: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """Return, per positive, how many items with exactly its score a random order puts first.

    A positive alone among its ties sits at a uniform position among them,
    drawn directly: O(1), where drawing a whole random order costs n_items
    (popularity ties most of the catalogue for every user). Positives of one
    user that share a score need one order between them, so they go through
    _tied_before.
    """
    before = torch.zeros(ties.numel(), dtype=torch.int64)
    tied = torch.nonzero(ties > 1).squeeze(1)
    if tied.numel() == 0:
        return before
    # Positives of one row with one score share a random order.
    key = torch.stack([rows[tied].to(torch.float64), targets[tied].to(torch.float64)], 1)
    _, group, counts = torch.unique(key, dim=0, return_inverse=True, return_counts=True)
    shared = counts[group] > 1
    alone = tied[~shared]
    draws = torch.rand(alone.numel(), generator=generator, dtype=torch.float64)
    before[alone] = (draws * ties[alone]).long()
    if shared.any():
        where = tied[shared]
        before[where] = _tied_before(scores, rows[where], items[where], targets[where], generator)
    return before


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Run torch single-threaded inside, then restore the caller's thread count.

    A chunk's bookkeeping is many small operations, and per-operation thread
    barriers cost more than they save on a busy machine (benchmarks/evaluation.py).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass(frozen=True)
class _ChunkRanking:
    """What ranking each chunk of users shares: the held-out pairs, the Ks, the tie-breaks."""

    held_ptr: np.ndarray
    held_cols: np.ndarray
    ks: Sequence[int]
    k_max: int
    recommended: dict[int, np.ndarray]  # K -> bool (n_items,), filled in chunk by chunk
    threads: int  # the caller's torch threads, for counting ranks
    generator: torch.Generator


def _rank_chunk(
    scores: torch.Tensor, chunk: np.ndarray, shared: _ChunkRanking
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Return (ranks, row within chunk, item) of the chunk's held-out positives.

    Marks each K's top-K items in `shared.recommended` on the way.
    """
    top_scores, top_items = torch.topk(scores, shared.k_max, dim=1)
    if torch.isnan(top_scores).any():  # topk puts NaN first, so this sees any NaN
        raise ValueError(f"the scorer returned NaN scores for users {chunk[:5].tolist()}...")
    finite = torch.isfinite(top_scores)
    for k in shared.ks:
        shared.recommended[k][top_items[:, :k][finite[:, :k]].numpy()] = True

    pos_rows, pos_items, slot = _pairs_of(chunk, shared.held_ptr, shared.held_cols)
    rows_t, items_t = torch.from_numpy(pos_rows), torch.from_numpy(pos_items)
    targets = scores[rows_t, items_t]
    ranks = torch.empty(pos_rows.size, dtype=torch.int64)
    ties = torch.zeros(pos_rows.size, dtype=torch.int64)  # items sharing the score, itself too
    for s in range(int(slot.max()) + 1 if slot.size else 0):
        in_slot = torch.from_numpy(np.flatnonzero(slot == s))
        greater, at_least = _count_above(scores, rows_t[in_slot], targets[in_slot], shared.threads)
        ranks[in_slot] = greater
        ties[in_slot] = at_least - greater
    ranks += _random_tie_positions(scores, rows_t, items_t, targets, ties, shared.generator)
    return ranks, pos_rows, pos_items


@dataclass
class Rankings:
    """Every held-out positive's 0-based rank, and which items each top-K reached."""

    ranks: pd.DataFrame  # columns user, item, rank
    recommended: dict[int, np.ndarray]  # K -> bool (n_items,): in some user's top-K
    n_items: int  # items that could be ranked: the catalogue, or the candidates


def _candidate_mask(candidates: np.ndarray | None, n_items: int) -> torch.Tensor | None:
    """Return the bool mask of items outside the candidates, or None when every item competes."""
    if candidates is None:
        return None
    candidates = np.asarray(candidates)
    if candidates.dtype != bool or candidates.shape != (n_items,):
        raise ValueError(f"candidates must be a bool mask of shape ({n_items},)")
    return torch.from_numpy(~candidates)


@dataclass(frozen=True)
class RankingTask:
    """Which held-out positives to rank, against what, and how (see rank_positives)."""

    known: pd.DataFrame  # (user, item) pairs masked out: what each user is known to have
    held_out: pd.DataFrame  # (user, item) positives to rank
    n_users: int
    n_items: int
    ks: Sequence[int]
    chunk_size: int  # users scored at once (evaluation.chunk_size)
    seed: int  # drives the tie-breaks
    candidates: np.ndarray | None = None  # bool mask of the items that compete; None: all


def rank_positives(score_users: Scorer, task: RankingTask) -> Rankings:
    """Return the rank of each held-out positive among the user's unmasked items.

    score_users maps an array of user indices to a (len, n_items) float tensor;
    it is called once per chunk of task.chunk_size users that have held-out
    positives. A held-out item outside task.candidates is an error. Raises
    ValueError when a score that matters is NaN.
    """
    n_users, n_items, known, held_out = task.n_users, task.n_items, task.known, task.held_out
    generator = torch.Generator().manual_seed(task.seed)
    outside = _candidate_mask(task.candidates, n_items)
    if outside is not None and outside.numpy()[held_out["item"].to_numpy()].any():
        raise ValueError("a held-out item is not among the candidates it is ranked against")
    known_ptr, known_cols = _csr(known["user"].to_numpy(), known["item"].to_numpy(), n_users)
    held_ptr, held_cols = _csr(held_out["user"].to_numpy(), held_out["item"].to_numpy(), n_users)
    held_users = np.flatnonzero(np.diff(held_ptr))
    n_ranked = n_items if outside is None else int(n_items - outside.sum())
    recommended = {k: np.zeros(n_items, dtype=bool) for k in task.ks}
    shared = _ChunkRanking(
        held_ptr,
        held_cols,
        task.ks,
        min(max(task.ks), n_items),
        recommended,
        torch.get_num_threads(),
        generator,
    )

    user_parts, item_parts, rank_parts = [], [], []
    for start in range(0, held_users.size, task.chunk_size):
        chunk = held_users[start : start + task.chunk_size]
        scores = _score_chunk(score_users, chunk, n_items, known_ptr, known_cols, outside)
        with _one_torch_thread():
            ranks, pos_rows, pos_items = _rank_chunk(scores, chunk, shared)
        user_parts.append(chunk[pos_rows])
        item_parts.append(pos_items)
        rank_parts.append(ranks.numpy())

    empty = np.empty(0, np.int64)
    ranks = pd.DataFrame(
        {
            "user": np.concatenate(user_parts) if user_parts else empty,
            "item": np.concatenate(item_parts) if item_parts else empty,
            "rank": np.concatenate(rank_parts) if rank_parts else empty,
        }
    )
    return Rankings(ranks, recommended, n_ranked)


def metrics_from_ranks(rankings: Rankings, ks: Sequence[int]) -> dict[str, float]:
    """Return Recall/NDCG/HitRate/coverage at each K and MRR, averaged over held-out users.

    recall@K: share of the user's positives in the top K. ndcg@K: DCG of the
    positives in the top K over the best DCG possible with that many positives.
    hit_rate@K: 1 when any positive is in the top K; hit_rate_se@K its standard
    error over users, sqrt(p(1-p)/n). mrr: 1 / (1 + rank of the best-ranked
    positive), over everything ranked. coverage@K: share of the ranked items
    (the catalogue, or the candidates) in at least one user's top K.
    """
    users, inverse = np.unique(rankings.ranks["user"].to_numpy(), return_inverse=True)
    n_users = users.size
    if n_users == 0:
        raise ValueError("no held-out users to evaluate")
    rank = rankings.ranks["rank"].to_numpy()
    n_pos = np.bincount(inverse, minlength=n_users)
    best = np.full(n_users, np.iinfo(np.int64).max)
    np.minimum.at(best, inverse, rank)
    result: dict[str, float] = {"users": int(n_users), "mrr": float(np.mean(1.0 / (best + 1)))}
    discounts = 1.0 / np.log2(np.arange(max(ks) + 1) + 2)
    ideal_dcg = np.cumsum(discounts)
    for k in ks:
        hit = rank < k
        hits = np.bincount(inverse, weights=hit, minlength=n_users)
        gains = np.where(hit, discounts[np.minimum(rank, k)], 0.0)
        dcg = np.bincount(inverse, weights=gains, minlength=n_users)
        ideal = ideal_dcg[np.minimum(n_pos, k) - 1]
        result[f"recall@{k}"] = float(np.mean(hits / n_pos))
        result[f"ndcg@{k}"] = float(np.mean(dcg / ideal))
        hit_rate = float(np.mean(hits > 0))
        result[f"hit_rate@{k}"] = hit_rate
        result[f"hit_rate_se@{k}"] = math.sqrt(hit_rate * (1 - hit_rate) / n_users)
        result[f"coverage@{k}"] = float(rankings.recommended[k].sum() / rankings.n_items)
    return result


def ranking_metrics(  # nine arguments: its many callers pass the terms loose; see RankingTask
    score_users: Scorer,
    known: pd.DataFrame,
    held_out: pd.DataFrame,
    n_users: int,
    n_items: int,
    ks: Sequence[int],
    chunk_size: int,
    seed: int,
    *,
    candidates: np.ndarray | None = None,
) -> dict[str, float]:
    """Return ranking metrics of held-out positives for a scoring function.

    known is masked (train when ranking validation, train + validation when
    ranking test); chunk_size users are scored at once (evaluation.chunk_size);
    seed drives the tie-breaks; candidates limits the items that compete (see
    RankingTask). The metrics are metrics_from_ranks'.
    """
    ks = sorted({int(k) for k in ks})
    task = RankingTask(known, held_out, n_users, n_items, ks, chunk_size, seed, candidates)
    return metrics_from_ranks(rank_positives(score_users, task), ks)


def top_k_unseen(
    score_users: Scorer,
    known: pd.DataFrame,
    users: np.ndarray,
    n_users: int,
    n_items: int,
    k: int,
    chunk_size: int,
) -> pd.DataFrame:
    """Return each user's k best items not in known: columns user, rank (1-based), item, score.

    Users with fewer than k unseen items get fewer rows.
    """
    known_ptr, known_cols = _csr(known["user"].to_numpy(), known["item"].to_numpy(), n_users)
    users = np.asarray(users, dtype=np.int64)
    k = min(k, n_items)
    parts = []
    for start in range(0, users.size, chunk_size):
        chunk = users[start : start + chunk_size]
        scores = _score_chunk(score_users, chunk, n_items, known_ptr, known_cols)
        top = torch.topk(scores, k, dim=1)
        parts.append(
            pd.DataFrame(
                {
                    "user": np.repeat(chunk, k),
                    "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), chunk.size),
                    "item": top.indices.numpy().ravel(),
                    "score": top.values.numpy().ravel(),
                }
            )
        )
    if not parts:
        return pd.DataFrame({"user": [], "rank": [], "item": [], "score": []})
    recs = pd.concat(parts, ignore_index=True)
    return recs[np.isfinite(recs["score"].to_numpy())].reset_index(drop=True)
