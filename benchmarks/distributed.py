"""Training throughput on 1 vs N local processes (PyTorch's elastic launcher, gloo on CPU).

Trains the default model (conf/base parameters) on the default data's shape
(the synthetic log: 5,000 users x 2,000 items) for a few epochs, once per
process count, through the training node (`training.distributed.nproc_per_node`),
and reports training examples/s (the epochs' training steps, evaluation
excluded, median over epochs), the whole call's wall time (process start-up
included) and the test HR@10 of the kept model with its standard error.
Writes benchmarks/results/distributed.json.

    python benchmarks/distributed.py [--nprocs 1 2] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from twotower_pipeline.data.sampling import build_training_examples
from twotower_pipeline.data.splitting import SplitSpec, split_interactions
from twotower_pipeline.data.synthetic import SyntheticLogSpec, generate_interactions
from twotower_pipeline.pipelines.training.nodes import train_two_tower
from twotower_pipeline.ranking.metrics import ranking_metrics

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
K = 10


def _parameters(name: str) -> dict:
    return yaml.safe_load((ROOT / "conf" / "base" / name).read_text())


def default_data() -> dict:
    """Return the default synthetic log, split as the default run splits it, with examples."""
    base = _parameters("parameters.yml")
    log = generate_interactions(SyntheticLogSpec())
    users, items = np.unique(log["user_id"]), np.unique(log["item_id"])
    interactions = pd.DataFrame(
        {
            "user": np.searchsorted(users, log["user_id"]).astype(np.int32),
            "item": np.searchsorted(items, log["item_id"]).astype(np.int32),
            "timestamp": log["timestamp"].to_numpy(np.int64),
        }
    )
    split_params = _parameters("parameters_split.yml")["split"]
    split = split_interactions(interactions, SplitSpec.from_params(split_params), base["seed"])
    rng = np.random.default_rng([base["seed"], 0])
    examples = build_training_examples(split.train, items.size, base["neg_ratio"], rng)
    return {
        "split": split,
        "examples": examples,
        "user_index": pd.DataFrame({"user": np.arange(users.size), "user_id": users}),
        "item_index": pd.DataFrame({"item": np.arange(items.size), "item_id": items}),
        "seed": base["seed"],
        "neg_ratio": base["neg_ratio"],
        "logit_scale": base["logit_scale"],
    }


def measure(data: dict, nproc: int, epochs: int, checkpoints: Path, threads: int) -> dict:
    """Return throughput, wall time and test HR@K of one training run on nproc processes.

    One process trains in this process with `threads` torch threads; N processes
    take cores / N threads each (distributed._train_rank).
    """
    torch.set_num_threads(threads)
    conf = _parameters("parameters_training.yml")
    sampling = _parameters("parameters_negative_sampling.yml")["negative_sampling"]
    training = conf["training"] | {
        "checkpoint_dir": str(checkpoints / str(nproc)),
        "progress_bar": False,
        "device": "cpu",
        "resume": False,
    }
    training["distributed"] = training["distributed"] | {"nproc_per_node": nproc}
    split = data["split"]
    started = time.perf_counter()
    model, _, history, _, _, _ = train_two_tower(
        data["examples"],
        split.train,
        split.val,
        data["user_index"],
        data["item_index"],
        seed=data["seed"],
        neg_ratio=data["neg_ratio"],
        logit_scale=data["logit_scale"],
        num_epochs=epochs,
        model=conf["model"],
        training=training,
        negative_sampling=sampling,
        evaluation=_parameters("parameters_evaluation.yml")["evaluation"]
        | {"headline_k": K, "chunk_size": 4096},
    )
    wall = time.perf_counter() - started
    known = pd.concat([split.train, split.val], ignore_index=True)
    metrics = ranking_metrics(
        model.catalogue_scorer(known, split.test),
        known,
        split.test,
        len(data["user_index"]),
        len(data["item_index"]),
        [K],
        4096,
        data["seed"],
    )
    return {
        "nproc_per_node": nproc,
        "torch_threads_per_process": threads if nproc == 1 else max(1, _cores() // nproc),
        "epochs": epochs,
        "examples_per_second": float(history["examples_per_second"].median()),
        "examples_per_second_by_epoch": history["examples_per_second"].round(0).tolist(),
        "train_loss_last": float(history["train_loss"].iloc[-1]),
        "wall_seconds": round(wall, 2),
        f"test_hit_rate@{K}": metrics[f"hit_rate@{K}"],
        f"test_hit_rate_se@{K}": metrics[f"hit_rate_se@{K}"],
        "load_average_1min_after": os.getloadavg()[0],
    }


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nprocs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--single-threads",
        type=int,
        nargs="+",
        default=[_cores(), 1],
        help="torch threads of the one-process runs (all cores, and one as each rank of two has)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "distributed.json")
    args = parser.parse_args()

    data = default_data()
    print(f"train positives: {len(data['split'].train):,}; cores: {os.cpu_count()}")
    runs = []
    with tempfile.TemporaryDirectory() as checkpoints:
        plan = [(n, t) for n in args.nprocs for t in (args.single_threads if n == 1 else [0])]
        for nproc, threads in plan:
            run = measure(data, nproc, args.epochs, Path(checkpoints), threads or _cores())
            runs.append(run)
            print(
                f"{nproc} process(es) x {run['torch_threads_per_process']} thread(s): "
                f"{run['examples_per_second']:>10,.0f} ex/s  "
                f"wall {run['wall_seconds']:6.1f} s  test HR@{K} {run[f'test_hit_rate@{K}']:.4f} "
                f"± {run[f'test_hit_rate_se@{K}']:.4f}"
            )
    result = {
        "benchmark": "distributed training, 1 vs N local processes (gloo, CPU)",
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
        "train_positives": len(data["split"].train),
        "runs": runs,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
