"""Retrieval index against exact search: recall@10, one-user latency, batch throughput.

For each catalogue the index is built with conf/base/parameters_index.yml's
settings and compared with brute-force inner product (torch matmul + top-k,
what the pipeline does below `index.recommend_above_n_items`):

- recall@10 of the index against exact search, over `--queries` users;
- latency of one user's query (p50 and p99 over `--single` queries, one at a time);
- users per second when `--queries` users are searched in one batch.

Catalogues: the default data's item vectors (data/07_model_output/item_embeddings.parquet
after `kedro run`; 2000 clustered 16-d vectors stand in when it is absent) and
random Gaussian items at 10^5 and 10^6 (the hard case for an index: no
structure to exploit). Query vectors: the trained user vectors for the default
data, random Gaussian otherwise.

    python benchmarks/ann.py                     # default data, 1e5 and 1e6 items
    python benchmarks/ann.py --sizes 100000      # default data and one random size
    python benchmarks/ann.py --quick             # default data and 2e4 items, seconds

Writes benchmarks/results/ann.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "ann.json"
PARAMETERS = ROOT / "conf" / "base" / "parameters_index.yml"
EMBEDDINGS = ROOT / "data" / "07_model_output"


def default_catalogue(
    folder: Path, rng: np.random.Generator, dim: int
) -> tuple[str, np.ndarray, np.ndarray]:
    """Return (label, item vectors, user vectors) of the default data, or a stand-in."""
    items_path, users_path = folder / "item_embeddings.parquet", folder / "user_embeddings.parquet"
    if items_path.exists() and users_path.exists():
        items = np.stack(pd.read_parquet(items_path)["embedding"].to_numpy())
        users = np.stack(pd.read_parquet(users_path)["embedding"].to_numpy())
        return "default data (trained vectors)", items, users
    centres = rng.standard_normal((8, dim))
    items = centres[rng.integers(0, 8, 2000)] + 0.7 * rng.standard_normal((2000, dim))
    users = centres[rng.integers(0, 8, 5000)] + 0.7 * rng.standard_normal((5000, dim))
    return "default size (2000 clustered, no trained vectors found)", items, users


def latencies_ms(search, queries: np.ndarray) -> np.ndarray:
    """Return the milliseconds of each single-query call."""
    times = np.empty(len(queries))
    for row in range(len(queries)):
        started = time.perf_counter()
        search(queries[row : row + 1])
        times[row] = (time.perf_counter() - started) * 1000
    return times


def measure(
    label: str, items: np.ndarray, users: np.ndarray, params: dict, args: argparse.Namespace
) -> dict:
    """Return recall, latency and throughput of the index and of exact search on one catalogue."""
    from twotower_pipeline.evaluation import index as ann

    config = ann.IndexConfig.from_params(params, seed=0)
    started = time.perf_counter()
    index = ann.build_index(items, config)
    build_seconds = time.perf_counter() - started
    queries = users[: args.queries]
    single = users[: args.single]
    # Exact search of a large catalogue scores chunk x n_items floats at once.
    chunk = max(16, min(1024, int(2**27 // len(items))))

    brute_force = ann.ExactSearch(items, chunk_size=chunk)

    def exact(q: np.ndarray) -> np.ndarray:
        return brute_force.search(q, args.k)[1]

    def approximate(q: np.ndarray) -> np.ndarray:
        return index.search(q, args.k)[1]

    exact(single[:5])  # warm-up
    approximate(single[:5])
    started = time.perf_counter()
    exact_ids = exact(queries)
    exact_batch = time.perf_counter() - started
    started = time.perf_counter()
    index_ids = approximate(queries)
    index_batch = time.perf_counter() - started
    exact_ms = latencies_ms(exact, single)
    index_ms = latencies_ms(approximate, single)
    return {
        "catalogue": label,
        "n_items": int(len(items)),
        "dim": int(items.shape[1]),
        "index": config.kind,
        "config": config.to_dict(),
        "build_seconds": round(build_seconds, 2),
        f"recall@{args.k}": round(ann.recall_at_k(index_ids, exact_ids), 4),
        "queries": int(len(queries)),
        "index_p50_ms": round(float(np.percentile(index_ms, 50)), 3),
        "index_p99_ms": round(float(np.percentile(index_ms, 99)), 3),
        "exact_p50_ms": round(float(np.percentile(exact_ms, 50)), 3),
        "exact_p99_ms": round(float(np.percentile(exact_ms, 99)), 3),
        "index_users_per_s": round(len(queries) / index_batch),
        "exact_users_per_s": round(len(queries) / exact_batch),
    }


def table(runs: list[dict], k: int) -> str:
    """Return the runs as a Markdown table."""
    lines = [
        f"| items | index | recall@{k} | one user p50 / p99 ms (index) | (exact) "
        "| batch users/s (index) | (exact) | build s |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        lines.append(
            f"| {run['n_items']:,} | {run['index']} | {run[f'recall@{k}']:.4f} "
            f"| {run['index_p50_ms']:.3f} / {run['index_p99_ms']:.3f} "
            f"| {run['exact_p50_ms']:.3f} / {run['exact_p99_ms']:.3f} "
            f"| {run['index_users_per_s']:,} | {run['exact_users_per_s']:,} "
            f"| {run['build_seconds']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--quick", action="store_true", help="default data and 2e4 items only")
    parser.add_argument("--dim", type=int, default=16, help="of the random catalogues")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--queries", type=int, default=2000, help="users per batch / for recall")
    parser.add_argument("--single", type=int, default=300, help="one-user queries timed")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--embeddings", type=Path, default=EMBEDDINGS, help="folder of the trained embeddings"
    )
    args = parser.parse_args()
    from twotower_pipeline.evaluation import index as ann

    if ann.faiss_module() is None:
        sys.exit(ann.MISSING_FAISS)
    params = yaml.safe_load(PARAMETERS.read_text())["index"]
    sizes = [20_000] if args.quick else args.sizes
    rng = np.random.default_rng(0)
    runs = [measure(*default_catalogue(args.embeddings, rng, args.dim), params, args)]
    for size in sizes:
        items = rng.standard_normal((size, args.dim)).astype(np.float32)
        users = rng.standard_normal((max(args.queries, args.single), args.dim))
        runs.append(measure(f"random {size:,}", items, users, params, args))
        print(table(runs[-1:], args.k).splitlines()[-1], flush=True)
    print(table(runs, args.k))
    result = {
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} CPU cores, "
            f"{torch.get_num_threads()} torch threads"
        ),
        "faiss": ann.faiss_module().__version__,
        "runs": runs,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
