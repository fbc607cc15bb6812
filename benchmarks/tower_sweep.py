"""Tower sweep: which user/item tower settings win on validation, and what test then reports.

For each environment (base: the embedded synthetic default; movielens:
MovieLens-100K with its genres, release years and user demographics, read from
the folder of ML100K_PATH, by default ../shared/data/ml-100k) the project's own
data_processing pipeline prepares the data once in a temporary copy of the
project (ingestion, leave-last-out split: latest interaction -> test, the one
before -> validation, feature encoders fitted on train). Then each named
setting (overrides of conf/base) is trained by the training node's own code,
keeping its best validation epoch, and scored on validation and test over the
full catalogue, next to popularity and implicit ALS fitted on the same train
split. Choices are made on validation; test is printed beside them only to
report. Prints a line per setting and writes benchmarks/results/tower_sweep.json.

    python benchmarks/tower_sweep.py [--envs base,movielens] [--settings default,user_id,...]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from kedro.config import OmegaConfigLoader

from twotower_pipeline.data.sampling import build_training_examples, item_distribution
from twotower_pipeline.evaluation.baselines import als_scorer, popularity_scorer
from twotower_pipeline.pipelines.training.nodes import train_two_tower
from twotower_pipeline.ranking.metrics import ranking_metrics

ROOT = Path(__file__).resolve().parents[1]
ML100K = Path(os.environ.get("ML100K_PATH", ROOT.parent / "shared" / "data" / "ml-100k" / "u.data"))
RESULTS = ROOT / "benchmarks" / "results"

SETTINGS: dict[str, dict] = {
    "id_only": {
        "model.user_id": True,
        "model.history_length": 0,
        "model.item_id_dropout": 0.0,
        "use_features": False,
    },
    "history_mean_nofeat": {"model.history_pooling": "mean", "use_features": False},
    "history_recency_nofeat": {"model.history_pooling": "recency", "use_features": False},
    "default": {},
    "mean": {"model.history_pooling": "mean"},
    "popularity_negatives": {"negative_sampling.distribution": "popularity"},
    "user_id": {"model.user_id": True},
    "history_10": {"model.history_length": 10},
    "history_50": {"model.history_length": 50},
    "no_id_dropout": {"model.item_id_dropout": 0.0},
    "id_dropout_0.5": {"model.item_id_dropout": 0.5},
    "lr_0.005": {"training.learning_rate": 0.005},
    "d_32": {"model.embedding_dim": 32},
    "history_50_user_id": {"model.history_length": 50, "model.user_id": True},
    "history_100": {"model.history_length": 100},
    "no_warmup": {"training.warmup_epochs": 0.0},
    "warmup_2": {"training.warmup_epochs": 2.0},
    "user_id_warmup_2": {"model.user_id": True, "training.warmup_epochs": 2.0},
    "history_50_warmup_2": {"model.history_length": 50, "training.warmup_epochs": 2.0},
    "h50_w2_d32": {
        "model.history_length": 50,
        "training.warmup_epochs": 2.0,
        "model.embedding_dim": 32,
    },
    "h50_w2_wd0.3": {
        "model.history_length": 50,
        "training.warmup_epochs": 2.0,
        "training.weight_decay": 0.3,
    },
    "h50_w2_lr0.01": {
        "model.history_length": 50,
        "training.warmup_epochs": 2.0,
        "training.learning_rate": 0.01,
    },
    "h50_w2_no_id_dropout": {
        "model.history_length": 50,
        "training.warmup_epochs": 2.0,
        "model.item_id_dropout": 0.0,
    },
    "h50_w2_no_features": {
        "model.history_length": 50,
        "training.warmup_epochs": 2.0,
        "use_features": False,
    },
    "id_only_w2": {
        "model.user_id": True,
        "model.history_length": 0,
        "model.item_id_dropout": 0.0,
        "training.warmup_epochs": 2.0,
        "use_features": False,
    },
    "history_50_user_id_warmup_2": {
        "model.history_length": 50,
        "model.user_id": True,
        "training.warmup_epochs": 2.0,
    },
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


def prepare(env: str, workdir: Path) -> dict:
    """Return the prepared datasets of `env`, made by the project's data_processing pipeline.

    Runs in a copy of the project under workdir (MovieLens files linked in from
    ML100K_PATH's folder), so nothing in the repository is written.
    """
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    project = workdir / env
    if not project.exists():
        shutil.copytree(
            ROOT,
            project,
            ignore=shutil.ignore_patterns(".venv", ".git", "data", "build", "mlruns", ".viz"),
        )
        for layer in ("01_raw", "02_intermediate", "03_primary", "04_feature", "05_model_input"):
            (project / "data" / layer).mkdir(parents=True, exist_ok=True)
        if env.startswith("movielens"):
            (project / "data" / "01_raw" / "ml-100k").symlink_to(ML100K.parent.resolve())
        environment = dict(os.environ, KEDRO_DISABLE_TELEMETRY="true")
        subprocess.run(
            ["kedro", "run", "--pipeline=data_processing", f"--env={env}"],
            cwd=project,
            env=environment,
            check=True,
            capture_output=True,
        )
    bootstrap_project(project)
    with KedroSession.create(project_path=project, env=env) as session:
        catalog = session.load_context().catalog
        names = [
            "train_interactions",
            "val_interactions",
            "test_interactions",
            "user_index",
            "item_index",
            "item_feature_tokens",
            "user_feature_tokens",
            "feature_encoders",
        ]
        return {name: catalog.load(name) for name in names}


def run_setting(data: dict, params: dict, workdir: str) -> dict:
    train, val, test = (
        data["train_interactions"],
        data["val_interactions"],
        data["test_interactions"],
    )
    n_users, n_items = len(data["user_index"]), len(data["item_index"])
    seed = params["seed"]
    sampling = params["negative_sampling"]
    probabilities = item_distribution(
        train["item"].to_numpy(), n_items, sampling["distribution"], sampling["popularity_alpha"]
    )
    examples = build_training_examples(
        train, n_items, params["neg_ratio"], np.random.default_rng([seed, 0]), probabilities
    )
    training = {**params["training"], "checkpoint_dir": workdir, "progress_bar": False}
    started = time.perf_counter()
    model, _, history, _, _, _ = train_two_tower(
        examples,
        train,
        val,
        data["user_index"],
        data["item_index"],
        seed,
        params["neg_ratio"],
        params["logit_scale"],
        params["num_epochs"],
        params["model"],
        training,
        sampling,
        params["evaluation"],
        data["item_feature_tokens"] if params["use_features"] else None,
        data["user_feature_tokens"] if params["use_features"] else None,
        data["feature_encoders"] if params["use_features"] else None,
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
        "epoch2_loss": float(history["train_loss"].iloc[1]),
        "final_train_loss": float(history["train_loss"].iloc[-1]),
        "final_val_loss": float(history["val_loss"].iloc[-1]),
        "final_scale": float(history["logit_scale"].iloc[-1]),
        "seconds": seconds,
    }


def baselines(data: dict, params: dict) -> dict:
    train, val, test = (
        data["train_interactions"],
        data["val_interactions"],
        data["test_interactions"],
    )
    n_users, n_items = len(data["user_index"]), len(data["item_index"])
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
    parser.add_argument("--envs", default="base,movielens")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--output", type=Path, default=RESULTS / "tower_sweep.json")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    extra = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.extra)}
    results = json.loads(args.output.read_text()) if args.output.exists() else {}
    workdir = Path(tempfile.mkdtemp(prefix="tower_sweep_"))
    for env in args.envs.split(","):
        data = prepare(env, workdir)
        base = project_parameters({})
        entry = results.setdefault(env, {})
        entry["baselines"] = baselines(data, base)
        print(f"{env}: {entry['baselines']}", flush=True)
        for name in args.settings.split(","):
            params = project_parameters({"use_features": True, **SETTINGS[name], **extra})
            with tempfile.TemporaryDirectory() as checkpoints:
                row = run_setting(data, params, checkpoints)
            p = row["test_hr10"]
            row["test_hr10_se"] = math.sqrt(p * (1 - p) / max(row["test_users"], 1))
            key = name + "".join(f" {k}={v}" for k, v in extra.items())
            entry.setdefault("settings", {})[key] = row
            print(
                f"{env:10s} {key:50s} val {row['val_hr10']:.4f}  test {row['test_hr10']:.4f}"
                f" ±{row['test_hr10_se']:.4f}  epoch {row['chosen_epoch']:2d}  "
                f"loss1 {row['epoch1_loss']:.3f} loss2 {row['epoch2_loss']:.3f}  "
                f"{row['seconds']:.0f}s",
                flush=True,
            )
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
