"""Towers and losses by plain `kedro run` on the development logs: validation chooses, test reports.

Each configuration is a `--params` override of the defaults, run as
`kedro run --env=<dataset>` in a temporary copy of the project with
`model_selection.enabled=false` (one block per run), so every figure is the
pipeline's own: its split, its ALS and popularity in the same run, its
protocol (leave-last-out, full catalogue, seen items masked, cold test users
counted as misses). The datasets:

- `default`: the embedded synthetic log (no conf needed);
- `movielens`: ML-100K with genres, year and user features (conf/movielens),
  read from ../shared/data/ml-100k;
- `yelp2019`: ../shared/data/yelp2019, the README's own-data route, business
  categories as a multi-valued item feature (`|`-joined), no user features;
- `sparse_synthetic`: a synthetic log fixed in advance as the held-out check
  (40k users x 30k items, ~8 interactions a user, at least 4, stronger popularity).

    python benchmarks/sparse_logs.py --datasets yelp2019,movielens \\
        --configs recency_bce,attention_softmax [--epochs 20]

Prints a table (validation HR@10 chooses; test HR@10 ± 1 s.e., NDCG@10, ALS,
popularity, seconds) and writes benchmarks/results/sparse_logs.json (merged
with earlier runs of other datasets or configurations).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import yaml

from untuned import kedro_run, latest, make_project, synthetic_env, write_json

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results" / "sparse_logs.json"

# Each configuration: the --params overrides that make it (model_selection off: one block).
# The sparse-log block of README "Your own data".
SPARSE_BLOCK = {
    "model.item_bias": True,
    "model.history_reads_item_tower": True,
    "training.loss": "softmax",
    "model.embedding_dim": 64,
    "training.learning_rate": 0.002,
    "training.weight_decay": 0.0,
}
CONFIGS: dict[str, dict[str, object]] = {
    "recency_bce": {},
    "recency_softmax": {"training.loss": "softmax"},
    "attention_bce": {"model.history_pooling": "attention"},
    "attention_softmax": {"model.history_pooling": "attention", "training.loss": "softmax"},
    "attention_softmax_noq": {
        "model.history_pooling": "attention",
        "training.loss": "softmax",
        "training.log_q": False,
    },
    "recency_softmax_noq": {"training.loss": "softmax", "training.log_q": False},
    "recency_softmax_lr2": {"training.loss": "softmax", "training.learning_rate": 0.002},
    "recency_softmax_wd1": {"training.loss": "softmax", "training.weight_decay": 1.0},
    "attention_softmax_d32": {
        "model.history_pooling": "attention",
        "training.loss": "softmax",
        "model.embedding_dim": 32,
    },
    "attention_softmax_d64": {
        "model.history_pooling": "attention",
        "training.loss": "softmax",
        "model.embedding_dim": 64,
    },
    "attention_softmax_lr3": {
        "model.history_pooling": "attention",
        "training.loss": "softmax",
        "training.learning_rate": 0.003,
    },
    "attention_softmax_lr2": {
        "model.history_pooling": "attention",
        "training.loss": "softmax",
        "training.learning_rate": 0.002,
    },
    "attention_bce_lr2": {"model.history_pooling": "attention", "training.learning_rate": 0.002},
    # The standalone harness's best on ML-100K validation (benchmarks/sequence_sweep.py).
    "attention_softmax_d64_fast_scale": {
        "model.history_pooling": "attention",
        "training.loss": "softmax",
        "model.embedding_dim": 64,
        "training.learning_rate": 0.003,
        "training.scale_lr_ratio": 10.0,
        "training.weight_decay": 0.0,
    },
    "attention_softmax_wd0": {
        "model.history_pooling": "attention",
        "training.loss": "softmax",
        "training.weight_decay": 0.0,
    },
    "attention_softmax_userid": {
        "model.history_pooling": "attention",
        "training.loss": "softmax",
        "model.user_id": True,
    },
    # A learned logit per item beside the cosine (model.item_bias).
    "recency_bce_bias": {"model.item_bias": True},
    "recency_bce_bias_d64": {"model.item_bias": True, "model.embedding_dim": 64},
    "recency_softmax_bias_d64": {
        "model.item_bias": True,
        "training.loss": "softmax",
        "model.embedding_dim": 64,
        "training.learning_rate": 0.001,
        "training.weight_decay": 0.0,
    },
    # ... and the history reading the item tower (model.history_reads_item_tower).
    "recency_bce_shared_bias": {"model.item_bias": True, "model.history_reads_item_tower": True},
    "recency_softmax_shared_bias_d64": SPARSE_BLOCK | {"training.learning_rate": 0.001},
    "recency_softmax_shared_bias_d64_lr2": SPARSE_BLOCK,
    "attention_softmax_shared_bias_d64": SPARSE_BLOCK
    | {"model.history_pooling": "attention", "training.learning_rate": 0.001},
}


def yelp_env() -> dict[str, dict]:
    """Return the conf files of yelp2019 through the own-data route, categories as features."""
    return {
        "globals.yml": {
            "raw_interactions_path": "data/01_raw/yelp2019/interactions.csv",
            "item_features_path": "data/01_raw/yelp2019/items.csv",
        },
        "catalog.yml": {
            "raw_interactions": {
                "type": "pandas.CSVDataset",
                "filepath": "${globals:raw_interactions_path}",
            },
            "item_features": {"dataset": {"type": "pandas.CSVDataset"}},
        },
        "parameters.yml": {
            "ingestion": {"timestamp_unit": "s"},
            "features": {
                "item": {
                    "source": "${globals:item_features_path}",
                    "id": "item_id",
                    "categorical": [],
                    "multi_valued": ["genres"],
                    "delimiter": "|",
                    "multi_hot": {},
                    "numeric": [],
                    "buckets": 10,
                    "missing_values": "unknown",
                },
                "user": None,
            },
            "oracle": {"enabled": False},
        },
    }


def sparse_synthetic_env() -> dict[str, dict]:
    """Return the held-out synthetic log: far sparser than the default, stronger popularity."""
    return synthetic_env(
        "sparse",
        {
            "n_users": 40_000,
            "n_items": 30_000,
            "mean_interactions_per_user": 8.0,
            "min_interactions_per_user": 4,
            "popularity_sigma": 1.6,
            "seed": 23,
        },
    )


def prepare(project: Path, dataset: str) -> str:
    """Write the dataset's environment into the project copy; return its --env value."""
    raw = project / "data" / "01_raw"
    if dataset == "default":
        return "local"
    if dataset == "movielens":
        return "movielens"  # make_project links ml-100k into data/01_raw
    files = {"yelp2019": yelp_env, "sparse_synthetic": sparse_synthetic_env}[dataset]()
    if dataset == "yelp2019" and not (raw / "yelp2019").exists():
        (raw / "yelp2019").symlink_to((SHARED / "yelp2019").resolve())
    conf = project / "conf" / f"bench_{dataset}"
    conf.mkdir(exist_ok=True)
    for name, content in files.items():
        (conf / name).write_text(yaml.safe_dump(content, sort_keys=False))
    return f"bench_{dataset}"


def params_flag(overrides: dict[str, object], epochs: int) -> str:
    values = {"model_selection.enabled": False, "num_epochs": epochs, **overrides}
    return ",".join(
        f"{key}={str(value).lower() if isinstance(value, bool) else value}"
        for key, value in values.items()
    )


def run_one(project: Path, env: str, config: str, epochs: int) -> dict:
    """Return one configuration's validation and test figures, ALS and popularity beside."""
    started = time.perf_counter()
    log, peak_mb = kedro_run(
        project, f"--env={env}", "--params", params_flag(CONFIGS[config], epochs)
    )
    seconds = time.perf_counter() - started
    folder = project / "data" / ("" if env == "local" else env) / "08_reporting"
    metrics = latest(folder / "evaluation_metrics.json")
    health = latest(folder / "training_health.json")
    history = folder / "training_history.parquet"
    row = {
        "config": config,
        "overrides": CONFIGS[config],
        "epochs": epochs,
        "seconds": seconds,
        "peak_rss_mb": peak_mb,
        "health": health["verdict"],
    }
    for scorer in ("model", "als", "popularity"):
        test, validation = metrics[scorer], metrics["validation"][scorer]
        row[scorer] = {
            "validation_hr@10": validation["hit_rate@10"],
            "test_hr@10": test["hit_rate@10"],
            "test_hr@10_se": test.get("hit_rate_se@10"),
            "test_ndcg@10": test["ndcg@10"],
            "test_users": test["users"],
        }
    if history.exists():
        import pandas as pd

        frame = pd.read_parquet(history)
        row["examples_per_second"] = float(frame["examples_per_second"].median())
        row["chosen_epoch"] = int(frame.loc[frame["chosen"], "epoch"].iloc[0])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="yelp2019")
    parser.add_argument("--configs", default="recency_bce,attention_softmax")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the project copy here")
    parser.add_argument("--tag", default="", help="a suffix for the results' keys")
    args = parser.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    workdir = args.workdir or Path(os.environ.get("TMPDIR", "/tmp")) / "sparse_logs_bench"
    workdir.mkdir(parents=True, exist_ok=True)
    project = workdir / "project"
    if not project.exists():
        project = make_project(workdir)
    else:  # a kept copy: its prepared data stays, its code and configuration are this checkout's
        for part in ("src", "conf/base"):
            shutil.rmtree(project / part)
            shutil.copytree(ROOT / part, project / part)
    for dataset in args.datasets.split(","):
        env = prepare(project, dataset)
        for config in args.configs.split(","):
            row = run_one(project, env, config, args.epochs)
            results.setdefault(dataset, {})[config + args.tag] = row
            model, als = row["model"], row["als"]
            print(
                f"{dataset:<17} {config:<26} val {model['validation_hr@10']:.4f} "
                f"test {model['test_hr@10']:.4f} ±{model['test_hr@10_se'] or 0:.4f} "
                f"ndcg {model['test_ndcg@10']:.4f} | als val {als['validation_hr@10']:.4f} "
                f"test {als['test_hr@10']:.4f} | {row['seconds']:.0f} s "
                f"{row.get('examples_per_second', 0) / 1e6:.2f}M ex/s | {row['health']}",
                flush=True,
            )
            write_json(RESULTS, results)


if __name__ == "__main__":
    main()
