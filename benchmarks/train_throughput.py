"""Training-step throughput: the project's training step against dense references.

Default mode (the embedded default's shape, 5,000 users x 2,000 items): for
embedding sizes d in {16, 32, 64, 128} the project's `training.train_epoch`
(row-wise updates, id-only towers and the default history tower) against the
same step with dense AdamW over whole tables, and against the per-sample
DataLoader loop most user code writes. Writes
benchmarks/results/train_throughput.json.

--catalogue-sweep: users = items in {2,000; 100,000; 1,000,000} at d=64
(batch 2048 positives, 5 negatives each), one fresh process per measurement so
its peak RSS is its own; `method` is "project" (the project's step, id-only
towers, row-wise AdamW, the default `training.compile_rows: auto`: tables of
10^5 rows or more updated by one compiled kernel), "project_history" (the
default towers: 20 pooled history items with recency weights, no user id),
"project_rmsprop" (the id-only towers with `training.optimizer:
rowwise_rmsprop`: one second-moment value a row, no momentum; eager under
auto), "project_eager" (row-wise AdamW with `compile_rows: false`: the row
update in eager torch ops), "project_rmsprop_compiled" (RMSprop rows with
`compile_rows: true`; at 2,000 rows, where tables are updated whole, these two
are not run) and "dense_adamw" (the same id-only model
with AdamW over the whole tables: the loop before row-wise updates).
5,000,000 users x 1,000,000 items for the id-only project methods alone. The
first step of a compiled method compiles (from torch's on-disk cache after the
first process) in the untimed warm-up pass. The whole plan runs
--rounds times (3), interleaved, and each row holds the median rate of its
rounds (and the rounds themselves). Writes
benchmarks/results/catalogue_scaling.json (or --output).

    python benchmarks/train_throughput.py [--catalogue-sweep] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from twotower_pipeline.data.user_histories import HistoryTable
from twotower_pipeline.model.config import TwoTowerConfig
from twotower_pipeline.model.towers import TwoTowerModel
from twotower_pipeline.training.examples import Positives
from twotower_pipeline.training.loop import EpochPass, train_epoch
from twotower_pipeline.training.memory import keep_freed_memory
from twotower_pipeline.training.optimizers import Optimizers
from twotower_pipeline.training.spec import TrainingSpec

RESULTS = Path(__file__).resolve().parent / "results"
NEG_RATIO, BATCH_POSITIVES = 5, 2048
METHODS = {
    # method -> (history_length, optimizer, compile_rows)
    "project": (0, "rowwise", "auto"),
    "project_history": (20, "rowwise", "auto"),
    "project_rmsprop": (0, "rowwise_rmsprop", "auto"),
    "project_eager": (0, "rowwise", False),
    "project_rmsprop_compiled": (0, "rowwise_rmsprop", True),
    "dense_adamw": (0, "dense", False),
}
# At the default shape every table is updated whole: the _eager methods would repeat these.
DEFAULT_SHAPE_METHODS = ("project", "project_history", "project_rmsprop", "dense_adamw")


def make_spec(optimizer: str, device: str, compile_rows: str | bool = "auto") -> TrainingSpec:
    return TrainingSpec(
        seed=0,
        num_epochs=1,
        neg_ratio=NEG_RATIO,
        batch_size=BATCH_POSITIVES,
        learning_rate=1e-3,
        weight_decay=0.1,
        scale_lr_ratio=1.0,
        lr_schedule="constant",
        warmup_epochs=0.0,
        eval_max_users=None,
        resample_each_epoch=True,
        eval_k=10,
        eval_chunk_size=1024,
        chunk_positives=1 << 20,
        optimizer=optimizer,
        compile_rows=compile_rows,
        device=device,
        checkpoint_dir="unused",
        resume=False,
        progress_bar=False,
        loss="bce",
        log_q=True,
    )


def make_model(n_users: int, n_items: int, dim: int, history: int) -> TwoTowerModel:
    torch.manual_seed(0)
    config = TwoTowerConfig(
        n_users=n_users,
        n_items=n_items,
        embedding_dim=dim,
        hidden_dims=[],
        init_std=0.1,
        logit_scale=1.0,
        max_logit_scale=100.0,
        user_id=history == 0,
        user_id_dropout=0.0,
        history_length=history,
        history_pooling="recency" if history else "mean",
        item_id_dropout=0.0,
        item_feature_vocab=1,
        item_feature_width=0,
        user_feature_vocab=1,
        user_feature_width=0,
    )
    return TwoTowerModel(config)


def random_positives(
    n_users: int, n_items: int, n_positives: int, history: int, device: torch.device
) -> tuple[Positives, torch.Tensor]:
    """Return random positives (grouped by user, as a log is) and their negatives."""
    generator = torch.Generator().manual_seed(0)
    users = torch.randint(0, n_users, (n_positives,), generator=generator).sort().values
    items = torch.randint(0, n_items, (n_positives,), generator=generator)
    negatives = torch.randint(0, n_items, (n_positives, NEG_RATIO), generator=generator)
    histories, ends = None, torch.zeros(n_positives, dtype=torch.int64)
    if history:
        log = pd.DataFrame(
            {"user": users.numpy(), "item": items.numpy(), "timestamp": np.arange(n_positives)}
        )
        histories = HistoryTable.from_interactions(log, n_users).to(device)
        ends = torch.arange(n_positives)  # each positive sees everything before it
    positives = Positives(users.to(device), items.to(device), ends.to(device), histories)
    return positives, negatives


def project_rate(
    n_users: int, n_items: int, dim: int, method: str, n_positives: int, device: str
) -> tuple[float, bool]:
    """Return (examples/s of one pass of the project's train_epoch, whether it compiled).

    The second is whether the row update ran as the compiled kernel (False where it
    was eager, by setting or after a failed compile).
    """
    history, optimizer, compile_rows = METHODS[method]
    spec = make_spec(optimizer, device, compile_rows)
    target = torch.device(device)
    if target.type == "cpu":
        keep_freed_memory()  # as training.fit does on the CPU
    model = make_model(n_users, n_items, dim, history).to(target)
    optimizers = Optimizers(model, spec)
    positives, negatives = random_positives(n_users, n_items, n_positives, history, target)

    def negatives_of(chunk: int, rows: torch.Tensor) -> torch.Tensor:
        return negatives[rows]

    def one_pass(count: int) -> float:
        if target.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        _, examples = train_epoch(
            model,
            optimizers,
            Positives(
                positives.users[:count],
                positives.items[:count],
                positives.history_ends[:count],
                positives.histories,
            ),
            EpochPass(
                negatives_of,
                BATCH_POSITIVES,
                spec.chunk_positives,
                torch.Generator().manual_seed(1),
            ),
        )
        if target.type == "cuda":
            torch.cuda.synchronize()
        return examples / (time.perf_counter() - started)

    one_pass(min(n_positives, 8 * BATCH_POSITIVES))  # warm-up
    rate = one_pass(n_positives)
    return rate, optimizers.rows is not None and optimizers.rows.kernel_ran


# --- the default shape: against a per-sample DataLoader loop ---------------------------------
class PerSampleExamples(Dataset):
    """One (user, item, label) example per index."""

    def __init__(self, users: torch.Tensor, items: torch.Tensor, labels: torch.Tensor) -> None:
        self.users, self.items, self.labels = users, items, labels

    def __len__(self) -> int:
        return self.users.numel()

    def __getitem__(self, index: int):
        return self.users[index], self.items[index], self.labels[index]


def per_sample_rate(n_users: int, n_items: int, dim: int, n_examples: int) -> float:
    model = make_model(n_users, n_items, dim, 0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    users = torch.randint(0, n_users, (n_examples,), generator=generator)
    items = torch.randint(0, n_items, (n_examples,), generator=generator)
    labels = (torch.arange(n_examples) % (1 + NEG_RATIO) == 0).float()
    loader = DataLoader(
        PerSampleExamples(users, items, labels),
        batch_size=BATCH_POSITIVES * (1 + NEG_RATIO),
        shuffle=True,
        generator=generator,
    )
    started = time.perf_counter()
    for batch_users, batch_items, batch_labels in loader:
        loss = F.binary_cross_entropy_with_logits(model(batch_users, batch_items), batch_labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return n_examples / (time.perf_counter() - started)


def default_shape(args: argparse.Namespace) -> None:
    n_users, n_items = 5000, 2000
    rows = []
    for dim in (16, 32, 64, 128):  # 16 is the default model
        rates = {
            method: statistics.median(
                project_rate(n_users, n_items, dim, method, args.positives, args.device)[0]
                for _ in range(args.repeats)
            )
            for method in DEFAULT_SHAPE_METHODS
        }
        per_sample = per_sample_rate(n_users, n_items, dim, args.per_sample_examples)
        rows.append(
            {
                "embedding_dim": dim,
                **{f"{m}_examples_per_s": r for m, r in rates.items()},
                "per_sample_dataloader_examples_per_s": per_sample,
                "project_vs_per_sample": rates["project"] / per_sample,
                "project_vs_dense_adamw": rates["project"] / rates["dense_adamw"],
            }
        )
        print(
            f"d={dim:<4d} "
            + "  ".join(f"{m} {r / 1e6:6.2f}M/s" for m, r in rates.items())
            + f"  per-sample {per_sample / 1e6:6.3f}M/s",
            flush=True,
        )
    write(args.output or RESULTS / "train_throughput.json", setup(args, n_users, n_items), rows)


# --- catalogue sweep ----------------------------------------------------------------------
def one_measurement(args: argparse.Namespace) -> None:
    """Measure one (method, n_users, n_items) in this process; print one JSON row."""
    rate, compiled = project_rate(
        args.n_users, args.n_items, args.dim, args.method, args.positives, args.device
    )
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    row = {
        "method": args.method,
        "n_users": args.n_users,
        "n_items": args.n_items,
        "embedding_dim": args.dim,
        "device": args.device,
        "positives": args.positives,
        "examples_per_s": rate,
        "compiled_row_update": compiled,
        "peak_rss_mb": peak_kb / 1024,
    }
    if args.device == "cuda":
        row["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(row))


def measure(args: argparse.Namespace, method: str, n_users: int, n_items: int) -> dict | None:
    """Run one measurement in a fresh process (its peak RSS its own); None if it failed."""
    # The dense reference is slow on large tables: fewer positives keep it to seconds.
    positives = args.positives if method != "dense_adamw" or n_items <= 2_000 else 20_480
    command = [
        sys.executable,
        __file__,
        "--one",
        "--method",
        method,
        "--n-users",
        str(n_users),
        "--n-items",
        str(n_items),
        "--dim",
        str(args.dim),
        "--positives",
        str(positives),
        "--device",
        args.device,
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"{method} {n_users}x{n_items}: failed\n{done.stderr[-2000:]}", flush=True)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def catalogue_sweep(args: argparse.Namespace) -> None:
    sizes = [(2_000, 2_000), (100_000, 100_000), (1_000_000, 1_000_000)]
    # At 2,000 rows every table is updated whole: these methods would repeat the others.
    variants = ("_eager", "_compiled")
    plan = [(m, u, i) for u, i in sizes for m in METHODS if u > 2_000 or not m.endswith(variants)]
    if not args.skip_largest:
        plan += [
            (m, 5_000_000, 1_000_000)
            for m in ("project", "project_rmsprop", "project_eager", "project_rmsprop_compiled")
        ]
    # The whole plan runs `rounds` times, interleaved, and each cell reports its median:
    # this machine's rates drift between minutes, and a drift then touches every method.
    measured: dict[tuple[str, int, int], list[dict]] = {}
    for round_index in range(args.rounds):
        for method, n_users, n_items in plan:
            row = measure(args, method, n_users, n_items)
            if row is None:
                continue
            measured.setdefault((method, n_users, n_items), []).append(row)
            print(
                f"round {round_index + 1}/{args.rounds}  {method:16s} users {n_users:>9,d} "
                f"items {n_items:>9,d} d={args.dim}  {row['examples_per_s'] / 1e6:6.2f}M ex/s  "
                f"peak RSS {row['peak_rss_mb']:8.0f} MB",
                flush=True,
            )
    rows = []
    for cell, runs in measured.items():
        rates = [r["examples_per_s"] for r in runs]
        row = runs[0] | {
            "examples_per_s": statistics.median(rates),
            "examples_per_s_rounds": rates,
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        }
        rows.append(row)
        print(
            f"median  {cell[0]:16s} users {cell[1]:>9,d} items {cell[2]:>9,d}  "
            f"{row['examples_per_s'] / 1e6:6.2f}M ex/s  (rounds: "
            + ", ".join(f"{r / 1e6:.2f}" for r in rates)
            + f")  peak RSS {row['peak_rss_mb']:8.0f} MB"
        )
    by = {(r["method"], r["n_items"], r["n_users"]): r["examples_per_s"] for r in rows}
    small, large = (2_000, 2_000), (1_000_000, 1_000_000)
    summary = {}
    if ("project", *small) in by and ("project", *large) in by:
        summary["project_1m_over_2k"] = by[("project", *large)] / by[("project", *small)]
    if ("project", *large) in by and ("dense_adamw", *large) in by:
        summary["project_over_dense_at_1m"] = by[("project", *large)] / by[("dense_adamw", *large)]
    if ("project_rmsprop", *small) in by and ("project_rmsprop", *large) in by:
        summary["project_rmsprop_1m_over_2k"] = (
            by[("project_rmsprop", *large)] / by[("project_rmsprop", *small)]
        )
    print(json.dumps(summary))
    write(
        args.output or RESULTS / "catalogue_scaling.json",
        setup(args, None, None),
        rows,
        summary,
    )


def setup(args: argparse.Namespace, n_users, n_items) -> dict:
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": args.device,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "n_users": n_users,
        "n_items": n_items,
        "neg_ratio": NEG_RATIO,
        "batch_positives": BATCH_POSITIVES,
        "positives_per_pass": args.positives,
        "rounds": args.rounds if args.catalogue_sweep else None,
    }


def write(path: Path, meta: dict, rows: list[dict], summary: dict | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"setup": meta, "rows": rows}
    if summary is not None:
        body["summary"] = summary
    path.write_text(json.dumps(body, indent=2))
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalogue-sweep", action="store_true")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", choices=sorted(METHODS), default="project")
    parser.add_argument("--n-users", type=int, default=2000)
    parser.add_argument("--n-items", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--positives", type=int, default=200_000, help="positives per timed pass")
    parser.add_argument("--per-sample-examples", type=int, default=49_152)
    parser.add_argument("--repeats", type=int, default=3, help="passes per measurement (median)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="catalogue sweep: runs of the whole plan (median)"
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--skip-largest", action="store_true", help="no 5M x 1M measurement")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    if args.one:
        one_measurement(args)
    elif args.catalogue_sweep:
        catalogue_sweep(args)
    else:
        default_shape(args)


if __name__ == "__main__":
    main()
