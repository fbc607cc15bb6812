"""Tower sweep: which user/item tower settings win on validation, and what test then reports.

For each dataset (the embedded synthetic default, MovieLens-100K when
ML100K_PATH or ../shared/data/ml-100k exists, and more with --dataset) and each
named setting (overrides of conf/base), trains with the project's own
ingestion, leave-last-out split (latest interaction -> test, the one before ->
validation), sampler and training loop, keeps the best validation epoch, and
scores validation and test over the full catalogue next to popularity and
implicit ALS fitted on the same train split. Choices are made on validation;
test is printed beside them only to report. Prints a table and writes
benchmarks/results/tower_sweep.json.

    python benchmarks/tower_sweep.py [--settings id_only,history_mean,...] [--dataset ml100k]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from kedro.config import OmegaConfigLoader

from twotower_pipeline.baselines import als_scorer, popularity_scorer
from twotower_pipeline.interactions import IngestionSpec, encode_ids, validate_interactions
from twotower_pipeline.metrics import ranking_metrics
from twotower_pipeline.pipelines.training.nodes import train_two_tower
from twotower_pipeline.sampling import build_training_examples, item_distribution

ROOT = Path(__file__).resolve().parents[1]
ML100K = Path(os.environ.get("ML100K_PATH", ROOT.parent / "shared" / "data" / "ml-100k" / "u.data"))
RESULTS = ROOT / "benchmarks" / "results"

SETTINGS: dict[str, dict] = {
    "id_only": {"model.user_id": True, "model.history_length": 0, "model.item_id_dropout": 0.0},
    "history_mean": {"model.history_length": 20, "model.history_pooling": "mean"},
    "history_recency": {"model.history_length": 20, "model.history_pooling": "recency"},
    "history_recency_pop": {
        "model.history_length": 20,
        "model.history_pooling": "recency",
        "negative_sampling.distribution": "popularity",
    },
    "history_recency_id": {
        "model.history_length": 20,
        "model.history_pooling": "recency",
        "model.user_id": True,
    },
    "history_recency_50": {"model.history_length": 50, "model.history_pooling": "recency"},
    "history_recency_10": {"model.history_length": 10, "model.history_pooling": "recency"},
}


def project_parameters(overrides: dict) -> dict:
    """Return conf/base parameters with dotted overrides applied."""
    loader = OmegaConfigLoader(str(ROOT / "conf"), base_env="base", default_run_env="base")
    params = json.loads(json.dumps(dict(loader["parameters"])))
    for key, value in overrides.items():
        *path, leaf = key.split(".")
        node = params
        for part in path:
            node = node[part]
        node[leaf] = yaml.safe_load(value) if isinstance(value, str) and "=" in value else value
    return params


def load_dataset(name: str) -> tuple[pd.DataFrame, str]:
    """Return a raw log (user_id, item_id, timestamp) and its source name."""
    if name == "synthetic":
        from twotower_pipeline.synthetic import SyntheticLogSpec, generate_interactions

        return generate_interactions(SyntheticLogSpec()), "synthetic"
    if name == "ml100k":
        frame = pd.read_csv(
            ML100K, sep="\t", header=None, names=["user_id", "item_id", "rating", "timestamp"]
        )
        return frame, str(ML100K)
    raise SystemExit(f"unknown dataset {name!r}")


def three_way_split(interactions: pd.DataFrame, params: dict, source: str):
    """Return (train, validation, test): latest per user -> test, the one before -> validation.

    The project's leave-last-out rule (ties broken by the larger item index), users
    with fewer than 4 interactions kept in train; held-out rows with an item or user
    unseen in train are dropped, as the split does.
    """
    frame = interactions.sort_values(["user", "timestamp", "item"], kind="stable")
    from_latest = frame.groupby("user").cumcount(ascending=False).to_numpy()
    size = frame.groupby("user")["item"].transform("size").to_numpy()
    eligible = size >= 4
    test = frame[eligible & (from_latest == 0)]
    val = frame[eligible & (from_latest == 1)]
    train = frame[~(eligible & (from_latest <= 1))]
    warm = set(train["item"].unique())
    keep = lambda held: held[held["item"].isin(warm)].reset_index(drop=True)  # noqa: E731
    return train.reset_index(drop=True), keep(val), keep(test)


def run_setting(train, val, test, n_users, n_items, params, workdir) -> dict:
    seed = params["seed"]
    sampling = params["negative_sampling"]
    probabilities = item_distribution(
        train["item"].to_numpy(), n_items, sampling["distribution"], sampling["popularity_alpha"]
    )
    examples = build_training_examples(
        train, n_items, params["neg_ratio"], np.random.default_rng([seed, 0]), probabilities
    )
    training = {**params["training"], "checkpoint_dir": workdir, "progress_bar": False}
    user_index = pd.DataFrame({"user_id": np.arange(n_users)})
    item_index = pd.DataFrame({"item_id": np.arange(n_items)})
    started = time.perf_counter()
    model, _, history, _, _ = train_two_tower(
        examples,
        train,
        val,
        user_index,
        item_index,
        seed,
        params["neg_ratio"],
        params["logit_scale"],
        params["num_epochs"],
        params["model"],
        training,
        sampling,
        params["evaluation"],
    )
    seconds = time.perf_counter() - started
    model.eval()
    known_test = pd.concat([train, val], ignore_index=True)
    ks = [10]
    val_m = ranking_metrics(
        model.catalogue_scorer(train, val), train, val, n_users, n_items, ks, 1024, seed
    )
    test_m = ranking_metrics(
        model.catalogue_scorer(known_test, test), known_test, test, n_users, n_items, ks, 1024, seed
    )
    chosen = history.loc[history["chosen"]].iloc[0]
    return {
        "val_hr10": val_m["hit_rate@10"],
        "test_hr10": test_m["hit_rate@10"],
        "test_ndcg10": test_m["ndcg@10"],
        "test_users": test_m["users"],
        "chosen_epoch": int(chosen["epoch"]),
        "epoch1_loss": float(history["train_loss"].iloc[0]),
        "final_train_loss": float(history["train_loss"].iloc[-1]),
        "final_val_loss": float(history["val_loss"].iloc[-1]),
        "final_scale": float(history["logit_scale"].iloc[-1]),
        "seconds": seconds,
    }


def baselines(train, val, test, n_users, n_items, params) -> dict:
    seed = params["seed"]
    known_test = pd.concat([train, val], ignore_index=True)
    out = {}
    scorers = {"popularity": popularity_scorer(train, n_items)}
    als = als_scorer(train, n_users, n_items, params["evaluation"]["als"], seed)
    if als is not None:
        scorers["als"] = als
    for name, scorer in scorers.items():
        v = ranking_metrics(scorer, train, val, n_users, n_items, [10], 1024, seed)
        t = ranking_metrics(scorer, known_test, test, n_users, n_items, [10], 1024, seed)
        out[name] = {"val_hr10": v["hit_rate@10"], "test_hr10": t["hit_rate@10"]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--datasets", default="synthetic,ml100k")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--output", type=Path, default=RESULTS / "tower_sweep.json")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    extra = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.extra)}
    results = json.loads(args.output.read_text()) if args.output.exists() else {}
    for dataset in args.datasets.split(","):
        raw, source = load_dataset(dataset)
        base = project_parameters({})
        spec = IngestionSpec(
            source=source, columns={"user": "user_id", "item": "item_id", "timestamp": "timestamp"}
        )
        clean, _ = validate_interactions(raw, spec)
        interactions, user_index, item_index = encode_ids(clean)
        train, val, test = three_way_split(interactions, base, source)
        n_users, n_items = len(user_index), len(item_index)
        entry = results.setdefault(dataset, {})
        entry["baselines"] = baselines(train, val, test, n_users, n_items, base)
        print(f"{dataset}: {entry['baselines']}", flush=True)
        for name in args.settings.split(","):
            params = project_parameters({**SETTINGS[name], **extra})
            with tempfile.TemporaryDirectory() as workdir:
                row = run_setting(train, val, test, n_users, n_items, params, workdir)
            p = row["test_hr10"]
            row["test_hr10_se"] = math.sqrt(p * (1 - p) / max(row["test_users"], 1))
            key = name + "".join(f" {k}={v}" for k, v in extra.items())
            entry.setdefault("settings", {})[key] = row
            print(
                f"{dataset:10s} {key:50s} val {row['val_hr10']:.4f}  test {row['test_hr10']:.4f}"
                f" ±{row['test_hr10_se']:.4f}  epoch {row['chosen_epoch']:2d}  "
                f"loss1 {row['epoch1_loss']:.3f}  {row['seconds']:.0f}s",
                flush=True,
            )
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
