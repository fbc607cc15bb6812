"""Train the two-tower model on MovieLens-100K with the project's defaults; compare with baselines.

Reads ML100K_PATH, by default ../shared/data/ml-100k/u.data (tab-separated user, item, rating,
timestamp; every rating is a positive), runs the project's own ingestion,
leave-last-out split, negative sampling, training loop and full-catalogue
ranking metrics with the parameters in conf/base, and scores the popularity
baseline by the same protocol. Prints a table and writes
benchmarks/results/movielens_quality.json. Skips (exit 0) when u.data is absent.

    python benchmarks/movielens_quality.py [--u-data PATH] [--set training.learning_rate=0.005 ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from kedro.config import OmegaConfigLoader

from twotower_pipeline.baselines import popularity_scorer
from twotower_pipeline.interactions import IngestionSpec, encode_ids, validate_interactions
from twotower_pipeline.metrics import ranking_metrics
from twotower_pipeline.model import TwoTowerConfig, TwoTowerModel
from twotower_pipeline.sampling import build_training_examples, item_distribution
from twotower_pipeline.splitting import SplitSpec, split_interactions
from twotower_pipeline.training import TrainingSpec, fit

ROOT = Path(__file__).resolve().parents[1]
U_DATA = Path(os.environ.get("ML100K_PATH", ROOT.parent / "shared" / "data" / "ml-100k" / "u.data"))
RESULTS = ROOT / "benchmarks" / "results"
KS = [10, 50, 100]


def project_parameters(overrides: list[str] | None = None) -> dict:
    """Return conf/base parameters with dotted `key=value` overrides applied (values as YAML)."""
    loader = OmegaConfigLoader(str(ROOT / "conf"), base_env="base", default_run_env="base")
    params = dict(loader["parameters"])
    for item in overrides or []:
        key, value = item.split("=", 1)
        *path, leaf = key.split(".")
        node = params
        for part in path:
            node = node[part]
        node[leaf] = yaml.safe_load(value)
    return params


def prepare(
    raw: pd.DataFrame, source: str, params: dict
) -> tuple[pd.DataFrame, pd.DataFrame, int, int]:
    """Return (train, validation positives, n_users, n_items) through ingestion and split."""
    spec = IngestionSpec(
        source=source, columns={"user": "user_id", "item": "item_id", "timestamp": "timestamp"}
    )
    clean, _ = validate_interactions(raw, spec)
    interactions, user_index, item_index = encode_ids(clean)
    split = split_interactions(
        interactions, SplitSpec.from_params(params["split"]), params["seed"], source
    )
    return split.train, split.val, len(user_index), len(item_index)


def load_movielens(path: Path) -> pd.DataFrame:
    """Return u.data as user_id, item_id, rating, timestamp."""
    return pd.read_csv(
        path, sep="\t", header=None, names=["user_id", "item_id", "rating", "timestamp"]
    )


def train_model(
    train: pd.DataFrame,
    val: pd.DataFrame,
    n_users: int,
    n_items: int,
    params: dict,
    checkpoint_dir: str,
) -> tuple[TwoTowerModel, pd.DataFrame]:
    """Return the model trained as the training node trains it, and its history."""
    seed, neg_ratio = params["seed"], params["neg_ratio"]
    sampling = params["negative_sampling"]
    probabilities = item_distribution(
        train["item"].to_numpy(), n_items, sampling["distribution"], sampling["popularity_alpha"]
    )
    examples = build_training_examples(
        train, n_items, neg_ratio, np.random.default_rng([seed, 0]), probabilities
    )
    torch.manual_seed(seed)
    model = TwoTowerModel(
        TwoTowerConfig(
            n_users=n_users, n_items=n_items, logit_scale=params["logit_scale"], **params["model"]
        )
    )
    training = {
        **params["training"],
        "checkpoint_dir": checkpoint_dir,
        "resume": False,
        "progress_bar": False,
        "eval_k": params["evaluation"]["headline_k"],
    }
    spec = TrainingSpec(seed=seed, num_epochs=params["num_epochs"], neg_ratio=neg_ratio, **training)
    history = fit(model, train, val, examples, spec, probabilities)
    return model, history


def evaluate(model_scorer, train, val, n_users, n_items, seed) -> dict[str, float]:
    return ranking_metrics(model_scorer, train, val, n_users, n_items, KS, 1024, seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--u-data", type=Path, default=U_DATA)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--output", type=Path, default=RESULTS / "movielens_quality.json")
    args = parser.parse_args()
    if not args.u_data.exists():
        print(f"SKIPPED: {args.u_data} not found (MovieLens-100K u.data); nothing measured")
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    params = project_parameters(args.overrides)
    train, val, n_users, n_items = prepare(load_movielens(args.u_data), str(args.u_data), params)
    started = time.perf_counter()
    model, history = train_model(
        train,
        val,
        n_users,
        n_items,
        params,
        str(ROOT / "benchmarks" / "results" / "checkpoints_movielens"),
    )
    seconds = time.perf_counter() - started
    model.eval()
    seed = params["seed"]
    rows = {
        "two-tower": evaluate(model.catalogue_scorer(), train, val, n_users, n_items, seed),
        "popularity": evaluate(
            popularity_scorer(train, n_items), train, val, n_users, n_items, seed
        ),
    }
    pd.set_option("display.width", 200)
    print(history.round(4).to_string(index=False))
    table = pd.DataFrame(rows).T[["hit_rate@10", "ndcg@10", "recall@50", "mrr", "coverage@10"]]
    print(table.round(4).to_string())
    lift = rows["two-tower"]["hit_rate@10"] / rows["popularity"]["hit_rate@10"]
    print(
        f"HR@10 lift over popularity: {lift:.2f}x "
        f"({len(train)} train, {len(val)} val users, {seconds:.0f} s)"
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "data": "MovieLens-100K u.data, leave-last-out, all ratings positive",
                "train_interactions": len(train),
                "val_users": int(val["user"].nunique()),
                "overrides": args.overrides,
                "training_seconds": seconds,
                "lift_hr@10": lift,
                "metrics": rows,
                "history": history.to_dict(orient="records"),
            },
            indent=2,
        )
    )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
