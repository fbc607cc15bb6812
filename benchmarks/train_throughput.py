"""Training-step throughput: the project's grouped loop against the usual per-sample loop.

For embedding sizes d in {16, 32, 64, 128}, with and without an MLP, the same
model and optimizer are trained on the same random examples three ways, side
by side in one run:

- grouped (the project's `training.train_epoch`): a step takes B users and a
  (B, 1 + neg_ratio) block of items, batches sliced from a shuffled permutation;
- flat slicing: (user, item, label) rows sliced from a shuffled permutation;
- per-sample DataLoader: a `torch.utils.data.Dataset` whose `__getitem__`
  returns one example, batched by `DataLoader(shuffle=True)`, what most user
  code does.

Prints examples/s and writes benchmarks/results/train_throughput.json.

    python benchmarks/train_throughput.py [--positives 100000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from twotower_pipeline.model import TwoTowerConfig, TwoTowerModel
from twotower_pipeline.training import ExampleGroups, train_epoch

RESULTS = Path(__file__).resolve().parent / "results"
N_USERS, N_ITEMS, NEG_RATIO, BATCH_POSITIVES = 5000, 2000, 5, 4096


class PerSampleExamples(Dataset):
    """One (user, item, label) example per index."""

    def __init__(self, users: torch.Tensor, items: torch.Tensor, labels: torch.Tensor) -> None:
        self.users, self.items, self.labels = users, items, labels

    def __len__(self) -> int:
        return self.users.numel()

    def __getitem__(self, index: int):
        return self.users[index], self.items[index], self.labels[index]


def make_model(dim: int, hidden: list[int]) -> tuple[TwoTowerModel, torch.optim.Optimizer]:
    torch.manual_seed(0)
    config = TwoTowerConfig(
        n_users=N_USERS,
        n_items=N_ITEMS,
        embedding_dim=dim,
        hidden_dims=hidden,
        init_std=0.1,
        logit_scale=1.0,
        max_logit_scale=100.0,
    )
    model = TwoTowerModel(config)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)


def flat_step(model, optimizer, users, items, labels) -> None:
    loss = F.binary_cross_entropy_with_logits(model(users, items), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    model.clamp_scale()


def grouped_rate(groups: ExampleGroups, dim: int, hidden: list[int]) -> float:
    model, optimizer = make_model(dim, hidden)
    started = time.perf_counter()
    train_epoch(model, optimizer, groups, BATCH_POSITIVES, torch.Generator().manual_seed(0))
    return groups.n_examples / (time.perf_counter() - started)


def flat_rate(groups: ExampleGroups, dim: int, hidden: list[int]) -> float:
    model, optimizer = make_model(dim, hidden)
    users = groups.users.repeat_interleave(groups.items.shape[1])
    items = groups.items.reshape(-1)
    labels = torch.zeros(groups.items.shape)
    labels[:, 0] = 1
    labels = labels.reshape(-1)
    batch = BATCH_POSITIVES * groups.items.shape[1]
    started = time.perf_counter()
    order = torch.randperm(users.numel(), generator=torch.Generator().manual_seed(0))
    for start in range(0, users.numel(), batch):
        rows = order[start : start + batch]
        flat_step(model, optimizer, users[rows], items[rows], labels[rows])
    return users.numel() / (time.perf_counter() - started)


def per_sample_rate(groups: ExampleGroups, dim: int, hidden: list[int], n_examples: int) -> float:
    model, optimizer = make_model(dim, hidden)
    users = groups.users.repeat_interleave(groups.items.shape[1])[:n_examples]
    items = groups.items.reshape(-1)[:n_examples]
    labels = torch.zeros(groups.items.shape)
    labels[:, 0] = 1
    dataset = PerSampleExamples(users, items, labels.reshape(-1)[:n_examples])
    loader = DataLoader(
        dataset,
        batch_size=BATCH_POSITIVES * groups.items.shape[1],
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )
    started = time.perf_counter()
    for batch_users, batch_items, batch_labels in loader:
        flat_step(model, optimizer, batch_users, batch_items, batch_labels)
    return n_examples / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positives", type=int, default=100_000, help="positives per timed pass")
    parser.add_argument("--per-sample-examples", type=int, default=49_152)
    parser.add_argument("--repeats", type=int, default=3, help="passes per measurement (median)")
    parser.add_argument("--output", type=Path, default=RESULTS / "train_throughput.json")
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(0)
    groups = ExampleGroups(
        users=torch.randint(0, N_USERS, (args.positives,), generator=generator),
        items=torch.randint(0, N_ITEMS, (args.positives, 1 + NEG_RATIO), generator=generator),
    )
    rows = []
    for hidden in ([], [128]):
        for dim in (16, 32, 64, 128):  # 16 is the default model
            grouped_rate(groups, dim, hidden)  # warm-up
            grouped = statistics.median(
                grouped_rate(groups, dim, hidden) for _ in range(args.repeats)
            )
            flat = statistics.median(flat_rate(groups, dim, hidden) for _ in range(args.repeats))
            per_sample = per_sample_rate(groups, dim, hidden, args.per_sample_examples)
            rows.append(
                {
                    "embedding_dim": dim,
                    "mlp": str(hidden) if hidden else "none",
                    "grouped_examples_per_s": grouped,
                    "flat_slicing_examples_per_s": flat,
                    "per_sample_dataloader_examples_per_s": per_sample,
                    "grouped_vs_per_sample": grouped / per_sample,
                    "grouped_vs_flat": grouped / flat,
                }
            )
            r = rows[-1]
            print(
                f"d={dim:<4d} mlp={r['mlp']:<6s} grouped {grouped / 1e6:6.2f}M/s  "
                f"flat {flat / 1e6:6.2f}M/s  per-sample {per_sample / 1e6:6.3f}M/s  "
                f"x{r['grouped_vs_per_sample']:.0f} vs per-sample, "
                f"x{r['grouped_vs_flat']:.1f} vs flat",
                flush=True,
            )

    meta = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "users": N_USERS,
        "items": N_ITEMS,
        "neg_ratio": NEG_RATIO,
        "batch_positives": BATCH_POSITIVES,
        "positives_per_pass": args.positives,
        "repeats": args.repeats,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"setup": meta, "rows": rows}, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
