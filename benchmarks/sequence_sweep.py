"""Sequence sweep: pooled or attention user tower, BCE or sampled softmax, against in-run ALS.

A self-contained harness (pandas, torch, implicit and the package's three
sequence modules: model.sequence_encoder, training.losses,
training.sequence_task) with the project's protocol:

- the log as ingestion makes it: a repeated (user, item) pair is one positive
  at its latest time;
- leave-last-out by timestamp per user (ties broken by the larger item): the
  latest row tests, the one before validates, for users with at least 4 rows
  (2 + min_train_interactions); validation rows whose item has no training
  row are dropped, as the split drops them; test keeps every eligible user and
  one whose item is cold counts as a miss;
- the full catalogue ranked, the user's known items masked (train for
  validation, train + validation for test), ties broken at random; a user's
  history is its known items strictly before the held-out moment;
- HR@10 and NDCG@10 over the held-out users, with one standard error.

Four towers, trained by the one-pass sequence task (every target of a user's
window in one pass, each from its causal prefix, ties as sets): (i) mean
pooling + BCE with 5 negatives (today's shape), (ii) attention + BCE, (iii)
mean + sampled softmax, (iv) attention + sampled softmax; and implicit ALS (64
factors, the project's settings) fitted on the same train split. The three
fixed values hold: neg_ratio 5, logit scale starting at 1.0 (a log-parameter,
clamped at 100), 20 epochs; each run keeps its best validation epoch
(validation HR@10 on a seeded sample of users), as the training loop does.
Settings are chosen on validation; test is reported beside them.

    python benchmarks/sequence_sweep.py --dataset ml100k --configs attention_softmax
    python benchmarks/sequence_sweep.py --dataset yelp --sweep learning_rate=0.001,0.003
    python benchmarks/sequence_sweep.py --table                 # print the results file

Data from ../shared/data (or ML100K_PATH / YELP2019_PATH). Each finished run is
merged into benchmarks/results/sequence_sweep.json (keyed by dataset and run
name), so sweeps can run in the background, one process a dataset; each epoch
is checkpointed in the temporary directory, so a killed sweep rerun with
--skip-done continues where it stopped:

    until python benchmarks/sequence_sweep.py --dataset yelp --skip-done; do sleep 5; done
"""

from __future__ import annotations

import argparse
import copy
import fcntl
import hashlib
import itertools
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from twotower_pipeline.model.sequence_encoder import sequence_encoder
from twotower_pipeline.training.losses import (
    bce_loss,
    no_skill,
    sampled_softmax_loss,
    sampler_log_q,
)
from twotower_pipeline.training.sequence_task import epoch_batches, sequence_windows

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
PATHS = {
    "ml100k": Path(os.environ.get("ML100K_PATH", DATA / "ml-100k" / "u.data")),
    "yelp": Path(os.environ.get("YELP2019_PATH", DATA / "yelp2019" / "interactions.csv")),
}
RESULTS = ROOT / "benchmarks" / "results" / "sequence_sweep.json"
CHECKPOINTS = Path(tempfile.gettempdir()) / "sequence_sweep_checkpoints"
K = 10
NEG_RATIO = 5
NUM_EPOCHS = 20
LOGIT_SCALE = 1.0


@dataclass(frozen=True)
class RunConfig:
    """One tower and its training settings."""

    encoder: str  # mean | attention
    loss: str  # bce | softmax
    dim: int = 64
    learning_rate: float = 0.001
    scale_lr_ratio: float = 1.0  # the logit scale learns at learning_rate x this
    max_logit_scale: float = 100.0  # the scale's clamp (model.max_logit_scale)
    weight_decay: float = 0.0
    dropout: float = 0.2
    n_blocks: int = 2
    n_heads: int = 1
    history_length: int = 50
    stride: int | None = None  # None: windows do not overlap
    batch_size: int = 2048  # targets per step
    pool: int = 16  # batches' worth of windows sorted by length together (sequence_task)
    warmup_epochs: float = 2.0
    lr_schedule: str = "cosine"
    shared_tables: bool = False  # the history reads the item tower's vectors (before norm)
    item_features: bool = False  # the item tower adds the mean of its category tokens
    item_id_dropout: float = 0.0  # share of item ids left out in training (with features)
    # A learned logit bias per item, beside the scaled cosine: a cosine cannot carry an
    # item's popularity in its norm, as a dot product (ALS) does.
    item_bias: bool = False
    sampler: str = "uniform"  # uniform | popularity (count^0.75)
    # expected_count: the package's correction (each candidate's logit less the log of its
    # expected count among the row's candidates); per_source: the in-batch frequency for
    # in-batch candidates and the sampler's q for sampled ones; none.
    log_q: str = "expected_count"
    seed: int = 42


BASE = {
    "mean_bce": RunConfig("mean", "bce"),
    "attention_bce": RunConfig("attention", "bce"),
    "mean_softmax": RunConfig("mean", "softmax"),
    "attention_softmax": RunConfig("attention", "softmax"),
}


# --- data and split ---------------------------------------------------------------------------
@dataclass
class Split:
    name: str
    n_users: int
    n_items: int
    train: pd.DataFrame
    val: pd.DataFrame  # warm items only
    test: pd.DataFrame  # every eligible user
    rows_in_log: int
    item_tokens: torch.Tensor  # (n_items, width) feature tokens from 1, 0 padding


def item_tokens(dataset: str, item_ids: np.ndarray) -> torch.Tensor:
    """Return the items' category tokens: ML-100K's genre flags, yelp2019's business categories."""
    if dataset == "ml100k":
        table = pd.read_csv(
            PATHS[dataset].with_name("u.item"), sep="|", header=None, encoding="latin-1"
        )
        flags = table.set_index(0).iloc[:, -19:].reindex(item_ids).fillna(0).to_numpy() > 0
        lists = [np.flatnonzero(row) + 1 for row in flags]
    else:
        table = pd.read_csv(PATHS[dataset].with_name("items.csv")).set_index("item_id")
        genres = table["genres"].reindex(item_ids).fillna("")
        codes: dict[str, int] = {}
        lists = [
            [codes.setdefault(g, len(codes) + 1) for g in cell.split("|") if g] for cell in genres
        ]
    width = max(1, max(len(tokens) for tokens in lists))
    tokens = np.zeros((len(lists), width), dtype=np.int64)
    for row, values in enumerate(lists):
        tokens[row, : len(values)] = values
    return torch.from_numpy(tokens)


def load_log(dataset: str) -> tuple[pd.DataFrame, int, np.ndarray]:
    """Return (user, item, timestamp) codes, one row per distinct pair at its latest time,
    the number of rows in the raw log and the item id of each item code."""
    path = PATHS[dataset]
    if dataset == "ml100k":
        raw = pd.read_csv(path, sep="\t", names=["user_id", "item_id", "rating", "timestamp"])
    else:
        raw = pd.read_csv(path)
    # Integer ids are coded by rank, as ingestion codes them (ties on time go to the larger).
    item_codes, item_ids = pd.factorize(raw["item_id"], sort=True)
    log = pd.DataFrame(
        {
            "user": pd.factorize(raw["user_id"], sort=True)[0],
            "item": item_codes,
            "timestamp": raw["timestamp"].to_numpy(np.int64),
        }
    )
    log = log.sort_values("timestamp", kind="stable").drop_duplicates(["user", "item"], keep="last")
    return log, len(raw), np.asarray(item_ids)


def split(dataset: str) -> Split:
    """Return leave-last-out train / validation / test of a dataset."""
    log, raw_rows, item_ids = load_log(dataset)
    log = log.sort_values(["user", "timestamp", "item"]).reset_index(drop=True)
    users = log["user"].to_numpy()
    size = np.bincount(users)
    end = np.cumsum(size)[users]
    from_latest = end - 1 - np.arange(len(log))
    eligible = size[users] >= 4
    is_test = eligible & (from_latest == 0)
    is_val = eligible & (from_latest == 1)
    train = log[~is_test & ~is_val].reset_index(drop=True)
    warm = np.bincount(train["item"], minlength=log["item"].max() + 1) > 0
    val = log[is_val]
    val = val[warm[val["item"].to_numpy()]].reset_index(drop=True)
    test = log[is_test].reset_index(drop=True)
    return Split(
        dataset,
        int(users.max()) + 1,
        int(log["item"].max()) + 1,
        train,
        val,
        test,
        raw_rows,
        item_tokens(dataset, item_ids),
    )


# --- the model --------------------------------------------------------------------------------
class SequenceTwoTower(torch.nn.Module):
    """Item tower x (history items -> causal encoder), scored by exp(log_scale) x cosine.

    The item tower is an id embedding plus, with features, the mean of the item's
    category tokens; the history reads its own id table, or with shared_tables the
    item tower's own (unnormalised) vectors, as SASRec shares one table.
    """

    def __init__(self, n_items: int, config: RunConfig, tokens: torch.Tensor) -> None:
        super().__init__()
        self.config = config
        self.item_table = torch.nn.Parameter(torch.randn(n_items, config.dim) * 0.1)
        self.history_table = (
            None
            if config.shared_tables
            else torch.nn.Parameter(torch.randn(n_items, config.dim) * 0.1)
        )
        self.token_table = None
        if config.item_features:
            table = torch.randn(int(tokens.max()) + 1, config.dim) * 0.1
            table[0] = 0.0
            self.token_table = torch.nn.Parameter(table)
        self.register_buffer("tokens", tokens)
        self.register_buffer("warm", torch.ones(n_items, dtype=torch.bool))
        self.encoder = sequence_encoder(
            config.encoder,
            config.dim,
            config.history_length,
            config.n_blocks,
            config.n_heads,
            config.dropout,
        )
        self.log_scale = torch.nn.Parameter(torch.tensor(math.log(LOGIT_SCALE)))
        self.item_bias = torch.nn.Parameter(torch.zeros(n_items)) if config.item_bias else None

    def bias(self, items: torch.Tensor) -> torch.Tensor | float:
        """Return the items' logit biases (0 without them; a cold item gets the lowest)."""
        if self.item_bias is None:
            return 0.0
        if self.training:
            return self.item_bias[items]
        lowest = self.item_bias[self.warm].min() if self.warm.any() else 0.0
        return torch.where(self.warm[items], self.item_bias[items], lowest)

    def item_representation(self, items: torch.Tensor) -> torch.Tensor:
        """Return the item tower's vectors before normalisation."""
        vector = F.embedding(items, self.item_table)
        if self.training and self.config.item_id_dropout > 0:
            kept = torch.rand(items.shape) >= self.config.item_id_dropout
            vector = vector * kept.unsqueeze(-1)
        elif not self.training:
            vector = vector * self.warm[items].unsqueeze(-1)  # cold: features only
        if self.token_table is not None:
            tokens = self.tokens[items]
            weights = (tokens > 0).to(vector.dtype)
            weights = weights / weights.sum(-1, keepdim=True).clamp(min=1.0)
            vector = vector + (F.embedding(tokens, self.token_table) * weights.unsqueeze(-1)).sum(
                -2
            )
        return vector

    def encode(self, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.history_table is None:
            return self.encoder(self.item_representation(items), mask)
        return self.encoder(F.embedding(items, self.history_table), mask)

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.item_representation(items), dim=-1)


class NegativeSampler:
    """Negatives drawn from uniform or popularity, redrawn while one is the user's train item."""

    def __init__(self, train: pd.DataFrame, n_items: int, kind: str, seed: int) -> None:
        self.n_items = n_items
        keys = train["user"].to_numpy(np.int64) * n_items + train["item"].to_numpy(np.int64)
        self.keys = torch.from_numpy(np.unique(keys))
        self.probabilities = None
        if kind == "popularity":
            counts = np.bincount(train["item"], minlength=n_items).astype(np.float64) ** 0.75
            self.probabilities = counts / counts.sum()
            self.cdf = torch.from_numpy(np.cumsum(self.probabilities))
        self.generator = torch.Generator().manual_seed(seed)

    def _draw(self, shape: tuple[int, ...]) -> torch.Tensor:
        if self.probabilities is None:
            return torch.randint(0, self.n_items, shape, generator=self.generator)
        u = torch.rand(shape, generator=self.generator, dtype=torch.float64)
        return torch.searchsorted(self.cdf, u).clamp_(max=self.n_items - 1)

    def draw(self, users: torch.Tensor, k: int) -> torch.Tensor:
        items = self._draw((users.numel(), k))
        for _ in range(20):
            keys = users.unsqueeze(1) * self.n_items + items
            where = torch.searchsorted(self.keys, keys).clamp_(max=self.keys.numel() - 1)
            known = self.keys[where] == keys
            if not known.any():
                break
            items[known] = self._draw((int(known.sum()),))
        return items


# --- evaluation -------------------------------------------------------------------------------
def _windows_before(
    known: pd.DataFrame, users: np.ndarray, moments: np.ndarray, length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return right-aligned (items, mask) of each user's latest known items before its moment."""
    known = known.sort_values(["user", "timestamp", "item"])
    k_users = known["user"].to_numpy(np.int64)
    span = int(max(known["timestamp"].max(), moments.max())) + 2
    keys = k_users * span + known["timestamp"].to_numpy(np.int64)
    ends = np.searchsorted(keys, users * span + moments, "left")
    starts = np.searchsorted(keys, users * span, "left")
    positions = ends[:, None] + np.arange(-length, 0)
    mask = positions >= starts[:, None]
    items = known["item"].to_numpy(np.int64)[np.clip(positions, 0, None)]
    return torch.from_numpy(np.where(mask, items, 0)), torch.from_numpy(mask)


def _ranks(
    score_users,
    users: np.ndarray,
    targets: np.ndarray,
    known: pd.DataFrame,
    n_items: int,
    cold: np.ndarray,
    seed: int,
    chunk: int = 1024,
) -> np.ndarray:
    """Return each held-out target's 0-based rank among the user's unknown items (ties random)."""
    known_keys = np.unique(
        known["user"].to_numpy(np.int64) * n_items + known["item"].to_numpy(np.int64)
    )
    generator = torch.Generator().manual_seed(seed)
    ranks = np.empty(users.size, dtype=np.int64)
    for start in range(0, users.size, chunk):
        part = slice(start, start + chunk)
        scores = score_users(np.arange(users.size)[part]).float()
        lo = np.searchsorted(known_keys, users[part] * n_items)
        hi = np.searchsorted(known_keys, (users[part] + 1) * n_items)
        rows = np.repeat(np.arange(hi.size), hi - lo)
        cols = known_keys[np.concatenate([np.arange(a, b) for a, b in zip(lo, hi, strict=True)])]
        scores[
            torch.from_numpy(rows), torch.from_numpy(cols - users[part][rows] * n_items)
        ] = -torch.inf
        target = scores[torch.arange(hi.size), torch.from_numpy(targets[part].copy())].unsqueeze(1)
        greater = (scores > target).sum(1)
        ties = (scores == target).sum(1)
        draw = (torch.rand(hi.size, generator=generator, dtype=torch.float64) * ties).long()
        ranks[part] = (greater + draw).numpy()
    ranks[cold[targets]] = n_items  # a cold item is never ranked: a miss
    return ranks


def _metrics(ranks: np.ndarray) -> dict:
    hit = ranks < K
    gain = np.where(hit, 1.0 / np.log2(np.minimum(ranks, K) + 2.0), 0.0)
    n = ranks.size
    return {
        "users": int(n),
        "hr@10": float(hit.mean()),
        "hr@10_se": float(math.sqrt(hit.mean() * (1 - hit.mean()) / n)),
        "ndcg@10": float(gain.mean()),
        "ndcg@10_se": float(gain.std(ddof=1) / math.sqrt(n)),
    }


def model_scorer(model: SequenceTwoTower, known: pd.DataFrame, held: pd.DataFrame, cold, length):
    """Return scores(rows of held) -> (len, n_items) logits, histories before each moment."""
    items, mask = _windows_before(
        known, held["user"].to_numpy(np.int64), held["timestamp"].to_numpy(np.int64), length
    )
    with torch.no_grad():
        model.warm.copy_(torch.from_numpy(~cold))  # a cold item stands on its features alone
        item_vectors = model.item_vectors(torch.arange(len(cold)))

        # Encoded once, in chunks of like-length histories cut to their longest (the encoder
        # counts positions from the right), then scored a chunk of users at a time.
        users = torch.zeros(len(held), item_vectors.shape[1])
        order = torch.argsort(mask.sum(1))
        for part in order.split(1024):
            longest = max(int(mask[part].sum(1).max()), 1)
            encoded = model.encode(items[part, -longest:], mask[part, -longest:])
            users[part] = F.normalize(model.encoder.last(encoded), dim=-1)

        bias = model.bias(torch.arange(len(cold)))
        scale = model.log_scale.exp()

    return lambda rows: scale * users[torch.from_numpy(rows)] @ item_vectors.T + bias


def evaluate(model, data: Split, which: str, length: int, max_users: int | None = None) -> dict:
    """Return HR@10 / NDCG@10 of a model on validation or test (a seeded user sample if asked)."""
    held = data.val if which == "validation" else data.test
    known = data.train if which == "validation" else pd.concat([data.train, data.val])
    if max_users is not None and len(held) > max_users:
        rng = np.random.default_rng([7, 4_099])
        held = held.iloc[np.sort(rng.choice(len(held), max_users, replace=False))]
    cold = np.bincount(data.train["item"], minlength=data.n_items) == 0
    model.eval()
    scorer = model_scorer(model, known, held, cold, length)
    ranks = _ranks(
        scorer,
        held["user"].to_numpy(np.int64),
        held["item"].to_numpy(np.int64),
        known,
        data.n_items,
        cold,
        seed=11,
    )
    model.train()
    return _metrics(ranks)


def als_metrics(data: Split, seed: int) -> dict:
    """Return implicit ALS (the project's settings) on validation and test."""
    from implicit.cpu.als import AlternatingLeastSquares
    from scipy.sparse import csr_matrix
    from threadpoolctl import threadpool_limits

    matrix = csr_matrix(
        (np.full(len(data.train), 10.0, np.float32), (data.train["user"], data.train["item"])),
        shape=(data.n_users, data.n_items),
    )
    started = time.perf_counter()
    with threadpool_limits(1, "blas"):
        als = AlternatingLeastSquares(
            factors=64, regularization=0.05, iterations=15, random_state=seed, num_threads=1
        )
        als.fit(matrix, show_progress=False)
    seconds = time.perf_counter() - started
    user_f = torch.from_numpy(np.asarray(als.user_factors, np.float32))
    item_f = torch.from_numpy(np.asarray(als.item_factors, np.float32))
    cold = np.bincount(data.train["item"], minlength=data.n_items) == 0
    result = {"fit_seconds": seconds}
    for which in ("validation", "test"):
        held = data.val if which == "validation" else data.test
        known = data.train if which == "validation" else pd.concat([data.train, data.val])
        users = held["user"].to_numpy(np.int64)
        result[which] = _metrics(
            _ranks(
                lambda rows, users=users: user_f[torch.from_numpy(users[rows])] @ item_f.T,
                users,
                held["item"].to_numpy(np.int64),
                known,
                data.n_items,
                cold,
                seed=11,
            )
        )
    return result


# --- training ---------------------------------------------------------------------------------
def softmax_loss(
    log_q: str,
    in_batch: torch.Tensor,
    sampled: torch.Tensor,
    users: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor,
    n_items: int,
    probabilities: np.ndarray | None,
) -> torch.Tensor:
    """Return the sampled softmax with one of three logQ corrections (RunConfig.log_q)."""
    if log_q == "expected_count":
        q = (
            sampler_log_q(positives, n_items, probabilities),
            sampler_log_q(negatives, n_items, probabilities),
        )
        return sampled_softmax_loss(in_batch, sampled, users, positives, negatives, q)
    if log_q == "per_source":
        _, inverse, counts = torch.unique(positives, return_inverse=True, return_counts=True)
        in_batch = in_batch - (counts[inverse].float() / positives.numel()).log().unsqueeze(0)
        sampled = sampled - sampler_log_q(negatives, n_items, probabilities)
    elif log_q != "none":
        raise ValueError(f"log_q must be expected_count, per_source or none, not {log_q!r}")
    return sampled_softmax_loss(in_batch, sampled, users, positives, negatives, None)


def learning_rate_at(config: RunConfig, epoch: int, step: int, steps_per_epoch: int) -> float:
    rate = config.learning_rate
    if config.lr_schedule == "cosine":
        rate *= 0.5 * (1 + math.cos(math.pi * epoch / NUM_EPOCHS))
    warmup_steps = config.warmup_epochs * steps_per_epoch
    done = epoch * steps_per_epoch + step + 1
    return rate * min(1.0, done / warmup_steps) if warmup_steps > 0 else rate


def _checkpoint_path(data: Split, config: RunConfig) -> Path:
    key = hashlib.sha1(json.dumps([data.name, asdict(config)], sort_keys=True).encode())
    return CHECKPOINTS / f"{data.name}-{key.hexdigest()[:16]}.pt"


def train_and_score(data: Split, config: RunConfig, log=print, eval_users: int = 5000) -> dict:
    """Return the run: per-epoch history, the best validation epoch's val and test metrics.

    Each finished epoch is checkpointed (model, optimizer, every random state), so a
    run whose process was killed continues where it stopped, with the same result.
    """
    torch.manual_seed(config.seed)
    model = SequenceTwoTower(data.n_items, config, data.item_tokens)
    windows = sequence_windows(data.train, config.history_length, config.stride)
    sampler = NegativeSampler(data.train, data.n_items, config.sampler, config.seed)
    scale_params = [model.log_scale]
    undecayed = [p for name, p in model.named_parameters() if name == "item_bias"]
    others = [p for name, p in model.named_parameters() if name not in ("log_scale", "item_bias")]
    optimizer = torch.optim.AdamW(
        [
            {"params": others, "weight_decay": config.weight_decay},
            {"params": scale_params, "weight_decay": 0.0},
            {"params": undecayed, "weight_decay": 0.0},
        ],
        lr=config.learning_rate,
    )
    generator = torch.Generator().manual_seed(config.seed)
    steps_per_epoch = len(
        list(
            epoch_batches(windows, config.batch_size, torch.Generator().manual_seed(0), config.pool)
        )
    )
    history, best, best_state = [], -1.0, None
    train_seconds = 0.0
    n_targets = windows.n_targets
    checkpoint = _checkpoint_path(data, config)
    first_epoch = 0
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        sampler.generator.set_state(state["sampler"])
        torch.set_rng_state(state["torch"])
        history, best, best_state = state["history"], state["best"], state["best_state"]
        train_seconds, first_epoch = state["train_seconds"], len(state["history"])
        log(f"  resumed after epoch {first_epoch} from {checkpoint.name}")
    for epoch in range(first_epoch, NUM_EPOCHS):
        started = time.perf_counter()
        total, seen = 0.0, 0
        for step, batch in enumerate(
            epoch_batches(windows, config.batch_size, generator, config.pool)
        ):
            rate = learning_rate_at(config, epoch, step, steps_per_epoch)
            optimizer.param_groups[0]["lr"] = rate
            optimizer.param_groups[1]["lr"] = rate * config.scale_lr_ratio
            optimizer.param_groups[2]["lr"] = rate
            users = batch.target_users
            states = batch.user_states(model.encode(batch.items, batch.mask))
            user_vectors = F.normalize(states, dim=-1)
            negatives = sampler.draw(users, NEG_RATIO)
            positive_vectors = model.item_vectors(batch.target_items)
            negative_vectors = model.item_vectors(negatives)
            scale = model.log_scale.exp()
            sampled = scale * torch.einsum("td,tkd->tk", user_vectors, negative_vectors)
            sampled = sampled + model.bias(negatives)
            if config.loss == "bce":
                positive = scale * (user_vectors * positive_vectors).sum(-1, keepdim=True)
                positive = positive + model.bias(batch.target_items.unsqueeze(-1))
                loss = bce_loss(torch.cat([positive, sampled], 1))
            else:
                in_batch = scale * user_vectors @ positive_vectors.T
                in_batch = in_batch + model.bias(batch.target_items)
                loss = softmax_loss(
                    config.log_q,
                    in_batch,
                    sampled,
                    users,
                    batch.target_items,
                    negatives,
                    data.n_items,
                    sampler.probabilities,
                )
            if not torch.isfinite(loss):
                raise RuntimeError(f"loss {loss.item()} in epoch {epoch + 1}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                model.log_scale.clamp_(max=math.log(config.max_logit_scale))
            total += loss.item() * users.numel()
            seen += users.numel()
        seconds = time.perf_counter() - started
        train_seconds += seconds
        val = evaluate(model, data, "validation", config.history_length, eval_users)
        row = {
            "epoch": epoch + 1,
            "train_loss": total / seen,
            "val_hr@10_sample": val["hr@10"],
            "logit_scale": model.log_scale.exp().item(),
            "seconds": seconds,
        }
        history.append(row)
        log(
            f"  epoch {epoch + 1:2d} loss {row['train_loss']:.4f} val HR@10 {val['hr@10']:.4f} "
            f"scale {row['logit_scale']:.2f} {seconds:.1f}s"
        )
        if val["hr@10"] > best:
            best, best_state = val["hr@10"], copy.deepcopy(model.state_dict())
        CHECKPOINTS.mkdir(parents=True, exist_ok=True)
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(),
            "sampler": sampler.generator.get_state(),
            "torch": torch.get_rng_state(),
            "history": history,
            "best": best,
            "best_state": best_state,
            "train_seconds": train_seconds,
        }
        torch.save(state, checkpoint.with_suffix(".tmp"))
        checkpoint.with_suffix(".tmp").replace(checkpoint)
    model.load_state_dict(best_state)
    chosen = max(history, key=lambda r: r["val_hr@10_sample"])["epoch"]
    return {
        "config": asdict(config),
        "chosen_epoch": chosen,
        "no_skill": no_skill(config.loss, NEG_RATIO, config.batch_size),
        "positives_per_second": n_targets * NUM_EPOCHS / train_seconds,
        "examples_per_second": n_targets * (1 + NEG_RATIO) * NUM_EPOCHS / train_seconds,
        "train_seconds": train_seconds,
        "validation": evaluate(model, data, "validation", config.history_length),
        "test": evaluate(model, data, "test", config.history_length),
        "history": history,
    }


# --- results file -----------------------------------------------------------------------------
def merge_result(dataset: str, name: str, result: dict) -> None:
    """Merge one run into the results JSON under a lock (runs of two datasets may overlap)."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(Path(tempfile.gettempdir()) / "sequence_sweep.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        results.setdefault(dataset, {})[name] = result
        RESULTS.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")


def chosen_runs(results: dict) -> dict:
    """Return, per dataset, ALS and each tower's run with the best full validation HR@10."""
    chosen: dict = {}
    for dataset, runs in results.items():
        best: dict = {}
        for name, run in runs.items():
            tower = name.split(" ")[0]
            if (
                tower not in best
                or run["validation"]["hr@10"] > best[tower][1]["validation"]["hr@10"]
            ):
                best[tower] = (name, run)
        chosen[dataset] = dict(best.values())
    return chosen


def print_table(results: dict) -> None:
    def cell(m: dict, key: str) -> str:
        return f"{m[key]:.4f} ± {m[key + '_se']:.4f}"

    print(
        f"{'dataset':8} {'run':38} {'val HR@10':>17} {'val NDCG@10':>17} "
        f"{'test HR@10':>17} {'test NDCG@10':>17} {'ep':>3} {'pos/s':>7}"
    )
    for dataset, runs in results.items():
        for name, run in sorted(runs.items(), key=lambda kv: -kv[1]["validation"]["hr@10"]):
            speed = f"{run['positives_per_second']:7.0f}" if "positives_per_second" in run else ""
            print(
                f"{dataset:8} {name:38} {cell(run['validation'], 'hr@10'):>17} "
                f"{cell(run['validation'], 'ndcg@10'):>17} {cell(run['test'], 'hr@10'):>17} "
                f"{cell(run['test'], 'ndcg@10'):>17} {run.get('chosen_epoch', ''):>3} {speed}"
            )


def run_name(base: str, config: RunConfig) -> str:
    default = BASE[base]
    changed = {k: v for k, v in asdict(config).items() if asdict(default)[k] != v and k not in ()}
    return base + "".join(f" {k}={v}" for k, v in sorted(changed.items()))


def _parse(field: str, value: str):
    kind = type(getattr(BASE["mean_bce"], field))
    if field == "stride":
        return None if value == "None" else int(value)
    return (value.lower() == "true") if kind is bool else kind(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(PATHS))
    parser.add_argument("--configs", default=",".join(BASE))
    parser.add_argument("--set", action="append", default=[], help="field=value, e.g. dim=32")
    parser.add_argument(
        "--sweep", action="append", default=[], help="field=v1,v2: every combination is run"
    )
    parser.add_argument("--als", action="store_true", help="fit and score ALS too")
    parser.add_argument("--table", action="store_true", help="print every run in the results")
    parser.add_argument("--chosen", action="store_true", help="print each tower's best run")
    parser.add_argument(
        "--skip-done", action="store_true", help="skip runs already in the results file"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.table or args.chosen:
        results = json.loads(RESULTS.read_text())
        print_table(chosen_runs(results) if args.chosen else results)
        return
    data = split(args.dataset)
    print(
        f"{args.dataset}: {data.rows_in_log} rows, {len(data.train)} train, {len(data.val)} "
        f"validation, {len(data.test)} test users, {data.n_users} users, {data.n_items} items",
        flush=True,
    )
    if args.als:
        als = als_metrics(data, seed=42)
        merge_result(args.dataset, "als", als)
        print(f"ALS: val {als['validation']['hr@10']:.4f} test {als['test']['hr@10']:.4f}")
    overrides = dict(
        (key, _parse(key, value)) for key, value in (i.split("=", 1) for i in args.set)
    )
    sweep = {
        key: [_parse(key, v) for v in values.split(",")]
        for key, values in (i.split("=", 1) for i in args.sweep)
    }
    for base in args.configs.split(","):
        configs = [
            replace(BASE[base], **overrides, **dict(zip(sweep, values, strict=True)))
            for values in itertools.product(*sweep.values())
        ]
        for config in configs:
            name = run_name(base, config)
            done = json.loads(RESULTS.read_text()).get(args.dataset, {}) if RESULTS.exists() else {}
            if args.skip_done and name in done:
                continue
            print(f"{args.dataset} {name}", flush=True)
            result = train_and_score(data, config, log=lambda s: print(s, flush=True))
            merge_result(args.dataset, name, result)
            _checkpoint_path(data, config).unlink(missing_ok=True)
            v, t = result["validation"], result["test"]
            print(
                f"  -> val HR@10 {v['hr@10']:.4f} NDCG@10 {v['ndcg@10']:.4f} | test HR@10 "
                f"{t['hr@10']:.4f} NDCG@10 {t['ndcg@10']:.4f} | "
                f"{result['positives_per_second']:.0f} positives/s",
                flush=True,
            )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
