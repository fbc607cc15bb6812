"""Full-catalogue evaluation speed and memory on synthetic random embeddings.

For each size (users x items, d=64) a fresh subprocess builds random unit
embeddings, gives each user 20 training items and one validation item, and
runs metrics.ranking_metrics with K = 10, 50, 100. It reports validation
users per second, the process's peak resident memory (ru_maxrss, which sees
torch's allocations; tracemalloc does not), and the evaluation time as a
split between scoring (the user x item matmuls, timed inside the run) and
ranking (masking, counting, top-K): the split is steadier than seconds on a
shared machine.

    python benchmarks/evaluation.py                # 150k x 50k and 160k x 60k
    python benchmarks/evaluation.py --quick        # 20k x 10k, a few seconds
    python benchmarks/evaluation.py --counting     # ways of counting ranks, side by side
    python benchmarks/evaluation.py --sizes 2000x1000000,10000x1000000   # a 10^6-item catalogue

Writes benchmarks/results/evaluation.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "evaluation.json"


def measure(n_users: int, n_items: int, dim: int, chunk_size: int) -> dict:
    """Return timing and peak memory of one full-catalogue evaluation (run in a subprocess)."""
    import numpy as np
    import pandas as pd
    import torch

    from twotower_pipeline.ranking.metrics import ranking_metrics

    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    users = torch.nn.functional.normalize(torch.randn(n_users, dim), dim=1)
    items = torch.nn.functional.normalize(torch.randn(n_items, dim), dim=1)
    per_user = 20
    train = pd.DataFrame(
        {
            "user": np.repeat(np.arange(n_users), per_user),
            "item": rng.integers(0, n_items, n_users * per_user),
        }
    )
    # One held-out item per user, never one of its training items.
    shift = 1 + rng.integers(0, 1000, n_users)
    val_items = (train["item"].to_numpy()[::per_user] + shift) % n_items
    val = pd.DataFrame({"user": np.arange(n_users), "item": val_items})
    seen = train.set_index(["user", "item"]).index
    val = val[~val.set_index(["user", "item"]).index.isin(seen)]

    scoring_seconds = 0.0

    def score(ids: np.ndarray) -> torch.Tensor:
        # Timed inside the evaluation, so the split between scoring and ranking is
        # measured under the same machine load.
        nonlocal scoring_seconds
        started = time.perf_counter()
        scores = users[torch.from_numpy(ids)] @ items.T
        scoring_seconds += time.perf_counter() - started
        return scores

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    result = ranking_metrics(
        score,
        train,
        val,
        n_users,
        n_items,
        [10, 50, 100],
        chunk_size=chunk_size,
        seed=0,
    )
    seconds = time.perf_counter() - started
    return {
        "users": n_users,
        "items": n_items,
        "dim": dim,
        "chunk_size": chunk_size,
        "validation_users": result["users"],
        "seconds": round(seconds, 2),
        "scoring_seconds": round(scoring_seconds, 2),
        "ranking_seconds": round(seconds - scoring_seconds, 2),
        "users_per_second": round(result["users"] / seconds),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "rss_before_evaluation_mib": round(rss_before),
        "recall@10": round(result["recall@10"], 5),
        "torch_threads": torch.get_num_threads(),
    }


def counting(n_items: int = 60_000, rows: int = 1024, repeats: int = 5) -> dict:
    """Return seconds per chunk of three ways to count, per row, the scores above a target."""
    import numpy as np
    import torch

    from twotower_pipeline.ranking.metrics import _count_above

    torch.manual_seed(0)
    scores = torch.randn(rows, n_items)
    targets = scores[:, 7].clone()
    order = torch.arange(rows)

    def torch_whole_chunk():  # the previous implementation: one comparison of the whole chunk
        return (scores > targets[:, None]).sum(1), (scores == targets[:, None]).sum(1)

    def numpy_blocked_one_thread():
        s, t = scores.numpy(), targets.numpy()
        for b in range(0, rows, 32):
            np.count_nonzero(s[b : b + 32] > t[b : b + 32, None], axis=1)
            np.count_nonzero(s[b : b + 32] >= t[b : b + 32, None], axis=1)

    variants = {
        "torch, whole chunk": torch_whole_chunk,
        "numpy, 32-row blocks, 1 thread": numpy_blocked_one_thread,
        "metrics._count_above (blocks, threads)": lambda: _count_above(
            scores, order, targets, torch.get_num_threads()
        ),
    }
    timings = {name: [] for name in variants}
    for _ in range(repeats):  # interleaved, so machine load hits every variant alike
        for name, run in variants.items():
            started = time.perf_counter()
            run()
            timings[name].append(time.perf_counter() - started)
    return {name: round(min(values), 4) for name, values in timings.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small size only")
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument(
        "--counting",
        action="store_true",
        help="only compare ways of counting ranks on one 1024 x 60k chunk",
    )
    parser.add_argument(
        "--sizes",
        default=None,
        help="users x items to measure, e.g. 2000x1000000,10000x1000000 (written to "
        "evaluation_sizes.json)",
    )
    parser.add_argument("--child", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.counting:
        result = counting()
        fastest = min(result.values())
        for name, seconds in result.items():
            print(f"{name:<42} {seconds * 1000:8.1f} ms  x{seconds / fastest:.1f}")
        RESULTS.with_name("evaluation_counting.json").write_text(
            json.dumps({"chunk": "1024 x 60000 float32", "best_of_5_seconds": result}, indent=2)
            + "\n"
        )
        return
    if args.child:
        print(json.dumps(measure(*args.child, chunk_size=args.chunk_size)))
        return

    sizes = [(20_000, 10_000)] if args.quick else [(150_000, 50_000), (160_000, 60_000)]
    if args.sizes:
        sizes = [tuple(int(n) for n in size.split("x")) for size in args.sizes.split(",")]
    rows = []
    for n_users, n_items in sizes:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                str(n_users),
                str(n_items),
                "64",
                "--chunk-size",
                str(args.chunk_size),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))

    print(
        f"{'users':>8} {'items':>7} {'seconds':>8} {'scoring':>8} {'ranking':>8} "
        f"{'users/s':>9} {'peak RSS MiB':>13}"
    )
    for row in rows:
        print(
            f"{row['users']:>8} {row['items']:>7} {row['seconds']:>8} "
            f"{row['scoring_seconds']:>8} {row['ranking_seconds']:>8} "
            f"{row['users_per_second']:>9} {row['peak_rss_mib']:>13}"
        )
    if not args.quick:
        target = RESULTS.with_name("evaluation_sizes.json") if args.sizes else RESULTS
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(
            json.dumps(
                {
                    "machine": f"{platform.processor() or platform.machine()}, "
                    f"{rows[0]['torch_threads']} torch threads",
                    "runs": rows,
                },
                indent=2,
            )
            + "\n"
        )
        print(f"wrote {target.name}")


if __name__ == "__main__":
    main()
