"""Data preparation at MovieLens-25M scale: ingestion -> split -> negative sampling.

Generates an ML-25M-shaped log with numpy (25M interactions, 162k users,
59k items, long-tailed activity and popularity, integer ids with gaps like
MovieLens' movieId, epoch-second timestamps), writes it as Parquet, then runs
the project's own node functions on it, timing each stage and sampling the
process's resident memory to get each stage's peak. Finally it runs the
classic per-user rejection-sampling loop (as in the NCF reference code) and
the project's sampler on the same subset of positives and prints the ratio.

    python benchmarks/data_prep.py                      # the 25M log (several GB of RAM)
    python benchmarks/data_prep.py --interactions 2000000 --users 20000 --items 8000

Prints a table and writes benchmarks/results/data_prep.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from twotower_pipeline.data.sampling import PositiveSet, sample_negatives
from twotower_pipeline.pipelines.ingestion.nodes import encode, validate
from twotower_pipeline.pipelines.negative_sampling.nodes import sample_training_examples
from twotower_pipeline.pipelines.split.nodes import split

RESULTS = Path(__file__).resolve().parent / "results" / "data_prep.json"
_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """Return this process's resident memory now."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE


class PeakMemory:
    """Samples resident memory every few milliseconds in a background thread."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def reset(self) -> None:
        self.peak = rss_bytes()

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def ml25m_shaped_log(n: int, n_users: int, n_items: int, seed: int = 0) -> pd.DataFrame:
    """Return a log of about `n` rows shaped like MovieLens-25M (ids, skew, time span)."""
    rng = np.random.default_rng(seed)
    # Activity: log-normal per user, at least 20 ratings (as in MovieLens), capped.
    activity = rng.lognormal(0.0, 1.1, n_users)
    extra = np.floor(activity / activity.sum() * (n - 20 * n_users)).astype(np.int64)
    counts = np.minimum(20 + extra, n_items // 4)
    counts[np.argsort(-activity)[: n - counts.sum()]] += 1  # the rounding remainder
    users = np.repeat(np.arange(n_users), counts)
    # Popularity: Zipf-like over items.
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.9
    items = np.searchsorted(np.cumsum(popularity / popularity.sum()), rng.random(users.size))
    items = np.minimum(items, n_items - 1)
    # MovieLens holds each (user, movie) once: redraw repeats uniformly until none is left.
    for _ in range(50):
        repeated = pd.Series(users * n_items + items).duplicated().to_numpy()
        if not repeated.any():
            break
        items[repeated] = rng.integers(0, n_items, int(repeated.sum()))
    # Each user rates over a window of 1995-2019; rows are shuffled as in a raw export.
    start = rng.uniform(789_000_000, 1_560_000_000, n_users)
    length = rng.uniform(0, 2 * 365 * 86400, n_users)
    timestamps = (start[users] + rng.random(users.size) * length[users]).astype(np.int64)
    user_ids = rng.permutation(n_users * 2)[:n_users] + 1  # ids with gaps
    item_ids = np.sort(rng.choice(4 * n_items, n_items, replace=False)) + 1
    order = rng.permutation(users.size)
    return pd.DataFrame(
        {
            "userId": user_ids[users[order]],
            "movieId": item_ids[rng.permutation(n_items)][items[order]],
            "timestamp": timestamps[order],
        }
    )


def ncf_style_negatives(
    users: np.ndarray, train_pairs: set[tuple[int, int]], n_items: int, neg_ratio: int, seed: int
) -> list[int]:
    """The classic sampler of the NCF reference code: one Python draw per negative,
    re-drawn while it is a positive (a set here, kinder than its dok_matrix)."""
    np.random.seed(seed)
    negatives = []
    for user in users.tolist():
        for _ in range(neg_ratio):
            item = np.random.randint(n_items)
            while (user, item) in train_pairs:
                item = np.random.randint(n_items)
            negatives.append(item)
    return negatives


@contextmanager
def stage(name: str, rows: list, memory: PeakMemory):
    memory.reset()
    start = time.perf_counter()
    yield
    seconds = time.perf_counter() - start
    rows.append({"stage": name, "seconds": round(seconds, 2), "peak_gb": memory.peak / 2**30})
    print(f"  {name:<22} {seconds:8.2f} s   peak {memory.peak / 2**30:6.2f} GB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interactions", type=int, default=25_000_000)
    parser.add_argument("--users", type=int, default=162_000)
    parser.add_argument("--items", type=int, default=59_000)
    parser.add_argument("--neg-ratio", type=int, default=5)
    parser.add_argument("--loop-positives", type=int, default=200_000)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    print(f"generating an ML-25M-shaped log: {args.interactions:,} rows ...", flush=True)
    generated = ml25m_shaped_log(args.interactions, args.users, args.items)
    tmp = Path(tempfile.mkdtemp(prefix="data_prep_"))
    raw_path = tmp / "ratings.parquet"
    generated.to_parquet(raw_path, index=False)
    del generated

    params = {
        "source": str(raw_path),
        "columns": {"user": "userId", "item": "movieId", "timestamp": "timestamp"},
        "timestamp_unit": "auto",
    }
    split_params = {
        "strategy": "leave_last_out",
        "min_train_interactions": 2,
        "temporal_quantiles": [0.8, 0.9],
        "cold_item_fraction": 0.0,
    }
    rows: list[dict] = []
    with PeakMemory() as memory:
        total_start = time.perf_counter()
        with stage("read raw (Parquet)", rows, memory):
            raw = pd.read_parquet(raw_path)
        with stage("validate", rows, memory):
            clean, ingestion_report = validate(raw, params)
        del raw
        with stage("encode ids", rows, memory):
            interactions, user_index, item_index = encode(clean)
        del clean
        with stage("split", rows, memory):
            train, _, _, _, split_report = split(interactions, split_params, 42)
        del interactions
        with stage("negative sampling", rows, memory):
            examples = sample_training_examples(
                train,
                item_index,
                args.neg_ratio,
                42,
                {"distribution": "uniform", "popularity_alpha": 0.75},
            )
        total = time.perf_counter() - total_start
        overall_peak = max(r["peak_gb"] for r in rows)
        print(f"  {'whole preparation':<22} {total:8.2f} s   peak {overall_peak:6.2f} GB")
        n_examples = len(examples)
        del examples

    # Sampler against the classic loop, on the same positives (the first users' rows).
    subset = train.iloc[: args.loop_positives]
    users = subset["user"].to_numpy(np.int64)
    train_pairs = set(zip(users.tolist(), subset["item"].tolist(), strict=True))
    positives = PositiveSet(users, subset["item"].to_numpy(np.int64), len(item_index))
    start = time.perf_counter()
    ncf_style_negatives(users, train_pairs, len(item_index), args.neg_ratio, seed=0)
    loop_seconds = time.perf_counter() - start
    repeats = 5
    start = time.perf_counter()
    for seed in range(repeats):
        sample_negatives(users, positives, args.neg_ratio, np.random.default_rng(seed))
    vector_seconds = (time.perf_counter() - start) / repeats
    ratio = loop_seconds / vector_seconds
    print(
        f"sampler on {users.size:,} positives x {args.neg_ratio}: loop {loop_seconds:.2f} s, "
        f"vectorised {vector_seconds:.4f} s -> {ratio:.0f}x"
    )

    result = {
        "log": {
            "rows_read": ingestion_report["rows_read"],
            "interactions": ingestion_report["interactions"],
            "duplicates_collapsed": ingestion_report["rows_dropped"]["duplicates_collapsed"],
            "users": ingestion_report["users"],
            "items": ingestion_report["items"],
            "train_interactions": split_report["train_interactions"],
            "val_interactions": split_report["val_interactions"],
            "test_interactions": split_report["test_interactions"],
            "train_examples": n_examples,
        },
        "stages": rows,
        "whole_preparation_seconds": round(total, 2),
        "peak_gb": round(overall_peak, 2),
        "sampler_vs_loop": {
            "positives": int(users.size),
            "neg_ratio": args.neg_ratio,
            "loop_seconds": round(loop_seconds, 3),
            "vectorised_seconds": round(vector_seconds, 4),
            "ratio": round(ratio, 1),
        },
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    raw_path.unlink()
    tmp.rmdir()


if __name__ == "__main__":
    main()
