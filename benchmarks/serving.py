"""The served model and the recommend pipeline: one request's latency, users/s in batch.

For each catalogue size a model is saved as the MLflow pyfunc model the
training run logs (io/serving.py), served by `mlflow models serve
--env-manager local` on a free port of 127.0.0.1, and measured:

- latency of one request (one new user, a history of `--history` items, K 10),
  p50 and p99 over `--requests` requests sent one at a time, HTTP included;
- users per second of the `recommend` pipeline's node (the same Recommender,
  no HTTP, no Kedro session start-up) on `--batch-users` users at once.

Sizes: the default data's shape (1,975 items, the conf/base model block:
16-d, history 50, recency pooling), with the trained model of the checkout when
`kedro run` has written one, random weights otherwise; and random models of
`--sizes` items (10^6 by default). Weights do not change the cost: every
request pools a history and scores the whole catalogue.

    python benchmarks/serving.py                   # default shape and 10^6 items
    python benchmarks/serving.py --sizes           # default shape only
    python benchmarks/serving.py --requests 50     # quicker

Writes benchmarks/results/serving.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from twotower_pipeline.io.serving import ARTEFACTS, read_recommender, save_recommender
from twotower_pipeline.model.config import TwoTowerConfig
from twotower_pipeline.model.towers import TwoTowerModel

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "serving.json"
DEFAULT_ITEMS, DEFAULT_USERS = 1_975, 5_000  # the default data after ingestion
INGESTION = {
    "columns": {"user": "user_id", "item": "item_id", "timestamp": "timestamp"},
    "timestamp_unit": "auto",
}


def model_block() -> dict:
    return yaml.safe_load((ROOT / "conf/base/parameters_training.yml").read_text())["model"]


def random_model(n_items: int, seed: int) -> tuple[dict, dict]:
    """Return (state dict, model config) of an untrained model of conf/base's model block."""
    block = model_block()
    config = TwoTowerConfig.from_dict(
        {
            **{k: block[k] for k in ("embedding_dim", "hidden_dims", "init_std", "user_id")},
            **{k: block[k] for k in ("user_id_dropout", "history_length", "history_pooling")},
            **{k: block[k] for k in ("max_logit_scale", "item_id_dropout")},
            "n_users": DEFAULT_USERS,
            "n_items": n_items,
            "logit_scale": 1.0,
            "item_feature_vocab": 1,
            "item_feature_width": 1,
            "user_feature_vocab": 1,
            "user_feature_width": 1,
        }
    )
    torch.manual_seed(seed)
    return TwoTowerModel(config).state_dict(), config.to_dict()


def trained_model() -> tuple[dict, dict, pd.DataFrame, pd.DataFrame] | None:
    """Return the checkout's latest trained model, item_index and train split, if any."""
    models = ROOT / "data/06_models/two_tower_model.pt"
    if not models.is_dir() or not any(models.iterdir()):
        return None
    state = torch.load(sorted(models.iterdir())[-1] / "two_tower_model.pt", weights_only=True)
    config = json.loads((ROOT / "data/06_models/model_config.json").read_text())
    item_index = pd.read_parquet(ROOT / "data/03_primary/item_index.parquet")
    train = pd.read_parquet(ROOT / "data/05_model_input/train_interactions.parquet")
    return state, config, item_index, train


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve(model: Path, port: int) -> subprocess.Popen:
    command = [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", str(model)]
    command += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                return server
        except OSError:
            time.sleep(0.5)
    stop(server)
    raise SystemExit(f"mlflow models serve did not answer on port {port}")


def stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def histories(
    item_ids: np.ndarray, users: int, length: int, rng: np.random.Generator
) -> pd.DataFrame:
    """Return `users` new users' histories of `length` random catalogue items each."""
    return pd.DataFrame(
        {
            "user_id": np.repeat([f"new-{u}" for u in range(users)], length),
            "item_id": item_ids[rng.integers(0, item_ids.size, users * length)],
            "timestamp": np.tile(1_700_000_000 + np.arange(length), users),
        }
    )


def measure(label: str, n_items: int, args: argparse.Namespace) -> dict:
    rng = np.random.default_rng(args.seed)
    found = trained_model() if n_items == DEFAULT_ITEMS else None
    if found is not None:
        state, config, item_index, train = found
        n_items, weights = len(item_index), "trained"
    else:
        state, config = random_model(n_items, args.seed)
        ids = np.array([f"i{i:07d}" for i in range(n_items)], dtype=object)
        item_index = pd.DataFrame({"item": np.arange(n_items), "item_id": ids})
        # Long-tailed popularity: the fallback's ranking, irrelevant to the cost.
        train = pd.DataFrame({"item": rng.zipf(1.3, 200_000) % n_items, "user": 0, "timestamp": 0})
        weights = "random"
    chunk = min(1024, max(16, 2**28 // (4 * n_items)))  # a chunk's scores stay near 256 MB
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        saved = save_recommender(
            Path(scratch) / "recommender",
            state,
            config,
            item_index,
            train,
            INGESTION,
            {"k": 10, "chunk_size": chunk},
        )
        save_s = time.perf_counter() - started
        port = free_port()
        started = time.perf_counter()
        server = serve(saved, port)
        start_s = time.perf_counter() - started
        item_ids = item_index["item_id"].to_numpy()
        try:
            latencies = []
            for n in range(args.warmup + args.requests):
                request = histories(item_ids, 1, args.history, rng)
                body = json.dumps(
                    {"dataframe_split": request.to_dict(orient="split", index=False)}
                ).encode()
                post = urllib.request.Request(
                    f"http://127.0.0.1:{port}/invocations",
                    data=body,
                    headers={"Content-Type": "application/json"},
                )
                began = time.perf_counter()
                with urllib.request.urlopen(post, timeout=120) as response:
                    assert response.status == 200
                    response.read()
                if n >= args.warmup:
                    latencies.append(time.perf_counter() - began)
        finally:
            stop(server)
        recommender = read_recommender(saved / "artifacts" / ARTEFACTS)
    batch = histories(item_ids, args.batch_users, args.history, rng)
    started = time.perf_counter()
    answer = recommender.answer(batch, 10)
    batch_s = time.perf_counter() - started
    assert answer["user_id"].nunique() == args.batch_users
    ms = np.array(latencies) * 1000
    return {
        "catalogue": label,
        "items": n_items,
        "weights": weights,
        "request_p50_ms": round(float(np.percentile(ms, 50)), 2),
        "request_p99_ms": round(float(np.percentile(ms, 99)), 2),
        "requests": args.requests,
        "batch_users": args.batch_users,
        "batch_users_per_s": round(args.batch_users / batch_s, 1),
        "chunk_size": chunk,
        "history_items": args.history,
        "save_s": round(save_s, 1),
        "server_start_s": round(start_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1_000_000])
    parser.add_argument("--requests", type=int, default=200, help="single requests timed")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--history", type=int, default=20, help="items per user's history")
    parser.add_argument("--batch-users", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows = [measure("default data's shape", DEFAULT_ITEMS, args)]
    rows += [measure(f"random, {n:,} items", n, args) for n in args.sizes]
    header = "| catalogue | weights | request p50 / p99 | batch users/s | chunk | server start |"
    print(header + "\n|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['items']:,} ({r['catalogue']}) | {r['weights']} | {r['request_p50_ms']} / "
            f"{r['request_p99_ms']} ms | {r['batch_users_per_s']:,.0f} | {r['chunk_size']} | "
            f"{r['server_start_s']} s |"
        )
    machine = {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.output.name}")


if __name__ == "__main__":
    main()
