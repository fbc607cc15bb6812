"""Peak memory of one epoch's examples: drawn a chunk at a time vs materialised at once.

For P training positives over 1,000,000 users x 1,000,000 items, one fresh
process per measurement draws an epoch's negatives and walks its batches
without a model step (the training step's own memory does not depend on P):

- "chunked" (the project): a seeded permutation of the positives, negatives
  drawn per chunk of training.chunk_positives as train_epoch does;
- "materialised" (before): every positive's negatives drawn at once into one
  (P, 1 + neg_ratio) int64 array, as a whole-epoch draw does.

Prints a table of peak RSS and seconds; writes benchmarks/results/epoch_memory.json.

    python benchmarks/epoch_memory.py [--positives 1000000,10000000,30000000,100000000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from twotower_pipeline.data.sampling import PositiveSet, item_groups, sample_negatives
from untuned import write_json

RESULTS = Path(__file__).resolve().parent / "results"
N_USERS = N_ITEMS = 1_000_000
NEG_RATIO, BATCH, CHUNK = 5, 2048, 1 << 20


def log_of(n_positives: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (users grouped and sorted, items) of a random log."""
    rng = np.random.default_rng(0)
    users = np.sort(rng.integers(0, N_USERS, n_positives))
    return users, rng.integers(0, N_ITEMS, n_positives)


def one(method: str, n_positives: int) -> dict:
    users, items = log_of(n_positives)
    known = PositiveSet(users, items, N_ITEMS)
    started = time.perf_counter()
    checksum = 0
    if method == "chunked":
        order = torch.randperm(n_positives, generator=torch.Generator().manual_seed(0))
        for chunk, start in enumerate(range(0, n_positives, CHUNK)):
            rows = order[start : start + CHUNK].numpy()
            rng = np.random.default_rng([0, 1, chunk])
            negatives = sample_negatives(users[rows], known, NEG_RATIO, rng)
            for b in range(0, rows.size, BATCH):
                checksum += int(
                    negatives[b : b + BATCH, 0].sum() + items[rows[b : b + BATCH]].sum()
                )
    else:
        groups = item_groups(users, items, known, NEG_RATIO, np.random.default_rng([0, 1]))
        order = torch.randperm(n_positives, generator=torch.Generator().manual_seed(0)).numpy()
        for b in range(0, n_positives, BATCH):
            checksum += int(groups[order[b : b + BATCH], :2].sum())
    return {
        "method": method,
        "positives": n_positives,
        "n_users": N_USERS,
        "n_items": N_ITEMS,
        "seconds": time.perf_counter() - started,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "checksum": checksum,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positives", default="1000000,10000000,30000000")
    parser.add_argument(
        "--materialised-up-to",
        type=int,
        default=30_000_000,
        help="measure the whole-epoch draw only up to this many positives (it holds them all)",
    )
    parser.add_argument("--one", nargs=2, metavar=("METHOD", "P"), help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, default=RESULTS / "epoch_memory.json")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]))))
        return
    rows = []
    for n_positives in (int(p) for p in args.positives.split(",")):
        methods = ["chunked"] + (["materialised"] if n_positives <= args.materialised_up_to else [])
        for method in methods:
            done = subprocess.run(
                [sys.executable, __file__, "--one", method, str(n_positives)],
                capture_output=True,
                text=True,
            )
            if done.returncode:
                print(f"{method} {n_positives}: failed\n{done.stderr[-1500:]}")
                continue
            row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(
                f"{method:13s} {n_positives:>11,d} positives  peak RSS {row['peak_rss_mb']:8.0f} MB"
                f"  {row['seconds']:6.1f} s",
                flush=True,
            )
    write_json(args.output, {"rows": rows})


if __name__ == "__main__":
    main()
