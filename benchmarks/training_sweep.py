"""Compare training settings on the default synthetic log and on MovieLens-100K.

Each named setting is a list of parameter overrides on top of conf/base. For
every setting and dataset the script trains with the project's own loop and
reports the learning-curve criteria the defaults must meet:

- epoch-1 train loss in [0.55, 0.75]; train loss falling every epoch and ending
  below 0.4506 (the constant predictor at neg_ratio 5); no loss below 0.05;
- final val loss at most 0.15 above the final train loss;
- learned scale ending in (1.3, max_logit_scale);
- on MovieLens-100K: HR@10 >= 0.090 and >= 1.8x popularity.

Prints a table and writes benchmarks/results/training_sweep.json.

    python benchmarks/training_sweep.py [--only NAME ...] [--datasets synthetic movielens]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from movielens_quality import (  # noqa: E402
    RESULTS,
    U_DATA,
    load_movielens,
    prepare,
    project_parameters,
    train_model,
)
from twotower_pipeline.baselines import popularity_scorer  # noqa: E402
from twotower_pipeline.metrics import ranking_metrics  # noqa: E402
from twotower_pipeline.synthetic import SyntheticLogSpec, generate_interactions  # noqa: E402

# name -> overrides of conf/base parameters. The first rows reproduce the
# reference loop's settings; later rows are the candidates compared for the defaults.
SETTINGS: dict[str, list[str]] = {
    "const lr 1e-2": ["training.lr_schedule=constant", "training.learning_rate=0.01"],
    "cosine lr 1e-2": ["training.lr_schedule=cosine", "training.learning_rate=0.01"],
    "cosine lr 5e-3": ["training.lr_schedule=cosine", "training.learning_rate=0.005"],
    "cosine lr 1e-2, cap 20": [
        "training.lr_schedule=cosine",
        "training.learning_rate=0.01",
        "model.max_logit_scale=20",
    ],
    "cosine lr 1e-2, d 32": [
        "training.lr_schedule=cosine",
        "training.learning_rate=0.01",
        "model.embedding_dim=32",
    ],
    "cosine lr 1e-2, wd 0.1": [
        "training.lr_schedule=cosine",
        "training.learning_rate=0.01",
        "training.weight_decay=0.1",
    ],
    "cosine lr 1e-2, scale lr x0.2": [
        "training.lr_schedule=cosine",
        "training.learning_rate=0.01",
        "training.scale_lr_ratio=0.2",
    ],
    "cosine lr 1e-2, scale lr x0.2, wd 0.1": [
        "training.lr_schedule=cosine",
        "training.learning_rate=0.01",
        "training.scale_lr_ratio=0.2",
        "training.weight_decay=0.1",
    ],
    "cosine lr 7e-3": ["training.lr_schedule=cosine", "training.learning_rate=0.007"],
    "cosine lr 5e-3, batch 2048": [
        "training.lr_schedule=cosine",
        "training.learning_rate=0.005",
        "training.batch_size=2048",
    ],
    "cosine lr 1e-2, wd 0.1, d 16": [
        "training.lr_schedule=cosine",
        "training.learning_rate=0.01",
        "training.weight_decay=0.1",
        "model.embedding_dim=16",
    ],
    "cosine lr 1e-2, wd 0.1, init 0.3": [
        "training.lr_schedule=cosine",
        "training.learning_rate=0.01",
        "training.weight_decay=0.1",
        "model.init_std=0.3",
    ],
    "cosine lr 1e-2, wd 0.1, cap 20": [
        "training.lr_schedule=cosine",
        "training.learning_rate=0.01",
        "training.weight_decay=0.1",
        "model.max_logit_scale=20",
    ],
    "cosine lr 1e-2, wd 0.1, d 32": [
        "training.lr_schedule=cosine",
        "training.learning_rate=0.01",
        "training.weight_decay=0.1",
        "model.embedding_dim=32",
    ],
    "cosine lr 8e-3, wd 0.1": [
        "training.lr_schedule=cosine",
        "training.learning_rate=0.008",
        "training.weight_decay=0.1",
    ],
    "cosine lr 1e-2, wd 0.1, d 16, batch 2048": [
        "training.lr_schedule=cosine",
        "training.learning_rate=0.01",
        "training.weight_decay=0.1",
        "model.embedding_dim=16",
        "training.batch_size=2048",
    ],
    "cosine lr 8e-3, wd 0.1, d 16, batch 2048": [
        "training.lr_schedule=cosine",
        "training.learning_rate=0.008",
        "training.weight_decay=0.1",
        "model.embedding_dim=16",
        "training.batch_size=2048",
    ],
    "cosine lr 7e-3, wd 0.1, d 16, batch 2048": [
        "training.lr_schedule=cosine",
        "training.learning_rate=0.007",
        "training.weight_decay=0.1",
        "model.embedding_dim=16",
        "training.batch_size=2048",
    ],
    "defaults + MLP [64]": [
        "training.lr_schedule=cosine",
        "training.learning_rate=0.007",
        "training.weight_decay=0.1",
        "model.embedding_dim=16",
        "training.batch_size=2048",
        "model.hidden_dims=[64]",
    ],
    "defaults + MLP [64], d 64": [
        "training.lr_schedule=cosine",
        "training.learning_rate=0.007",
        "training.weight_decay=0.1",
        "model.embedding_dim=64",
        "training.batch_size=2048",
        "model.hidden_dims=[64]",
    ],
    "defaults (conf/base)": [],
}
# Settings are read on top of these, so a row means the same whatever conf/base says.
NEUTRAL = [
    "training.weight_decay=0",
    "training.scale_lr_ratio=1.0",
    "training.batch_size=4096",
    "model.embedding_dim=64",
    "model.max_logit_scale=100",
    "model.init_std=0.1",
]
BASE_RATE_LOSS = 0.4506


def curve_checks(history: pd.DataFrame, max_scale: float) -> dict[str, bool]:
    """Return each learning-curve criterion and whether the history meets it."""
    train, val = history["train_loss"], history["val_loss"]
    final_scale = history["logit_scale"].iloc[-1]
    return {
        "epoch1_loss_in_[0.55,0.75]": bool(0.55 <= train.iloc[0] <= 0.75),
        "train_loss_falls_every_epoch": bool((train.diff().dropna() < 0).all()),
        "final_train_below_0.4506": bool(train.iloc[-1] < BASE_RATE_LOSS),
        "no_loss_below_0.05": bool(min(train.min(), val.min()) >= 0.05),
        "val_within_0.15_of_train": bool(val.iloc[-1] <= train.iloc[-1] + 0.15),
        "scale_in_(1.3,clamp)": bool(1.3 < final_scale < max_scale * 0.999),
    }


def datasets(names: list[str], params: dict) -> dict[str, tuple]:
    prepared = {}
    if "synthetic" in names:
        raw = generate_interactions(SyntheticLogSpec())
        prepared["synthetic"] = prepare(raw, "synthetic log", params)
    if "movielens" in names:
        if U_DATA.exists():
            prepared["movielens"] = prepare(load_movielens(U_DATA), str(U_DATA), params)
        else:
            print(f"skipping MovieLens-100K: {U_DATA} not found")
    return prepared


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="setting names to run")
    parser.add_argument("--datasets", nargs="*", default=["synthetic", "movielens"])
    parser.add_argument("--output", type=Path, default=RESULTS / "training_sweep.json")
    args = parser.parse_args()

    base = project_parameters()
    prepared = datasets(args.datasets, base)
    popularity = {
        name: ranking_metrics(
            popularity_scorer(train, n_items), train, val, n_users, n_items, [10], seed=base["seed"]
        )["hit_rate@10"]
        for name, (train, val, n_users, n_items) in prepared.items()
    }
    previous = json.loads(args.output.read_text()) if args.output.exists() else {"runs": []}
    runs = [r for r in previous["runs"] if args.only is None or r["setting"] not in args.only]
    for setting, overrides in SETTINGS.items():
        if args.only is not None and setting not in args.only:
            continue
        for data_name, (train, val, n_users, n_items) in prepared.items():
            params = project_parameters(NEUTRAL + overrides if overrides else [])
            started = time.perf_counter()
            with tempfile.TemporaryDirectory() as checkpoints:
                model, history = train_model(
                    train, val, n_users, n_items, copy.deepcopy(params), checkpoints
                )
            model.eval()
            hr10 = ranking_metrics(
                model.catalogue_scorer(),
                train,
                val,
                n_users,
                n_items,
                [10],
                seed=params["seed"],
            )["hit_rate@10"]
            checks = curve_checks(history, params["model"]["max_logit_scale"])
            if data_name == "movielens":
                checks["hr@10>=0.090_and_1.8x_popularity"] = bool(
                    hr10 >= 0.090 and hr10 >= 1.8 * popularity[data_name]
                )
            runs = [r for r in runs if not (r["setting"] == setting and r["data"] == data_name)]
            runs.append(
                {
                    "setting": setting,
                    "data": data_name,
                    "overrides": overrides,
                    "epoch1_train_loss": history["train_loss"].iloc[0],
                    "final_train_loss": history["train_loss"].iloc[-1],
                    "final_val_loss": history["val_loss"].iloc[-1],
                    "min_val_loss": history["val_loss"].min(),
                    "final_scale": history["logit_scale"].iloc[-1],
                    "hr@10": hr10,
                    "best_recall@10": history["recall@10"].max(),
                    "popularity_hr@10": popularity[data_name],
                    "all_checks_pass": all(checks.values()),
                    "checks": checks,
                    "seconds": time.perf_counter() - started,
                    "history": history.to_dict(orient="records"),
                }
            )
            write(args.output, base, runs)
            print(
                f"{setting:28s} {data_name:9s} HR@10 {hr10:.4f}  pass={all(checks.values())}  "
                f"{[k for k, v in checks.items() if not v]}",
                flush=True,
            )

    table = pd.DataFrame(runs)[
        [
            "setting",
            "data",
            "epoch1_train_loss",
            "final_train_loss",
            "final_val_loss",
            "min_val_loss",
            "final_scale",
            "hr@10",
            "popularity_hr@10",
            "all_checks_pass",
        ]
    ]
    pd.set_option("display.width", 250)
    print(table.round(4).to_string(index=False))
    write(args.output, base, runs)
    print(f"wrote {args.output}")


def write(output: Path, base: dict, runs: list[dict]) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(
        json.dumps(
            {"base_parameters": base["training"] | base["model"], "runs": runs},
            indent=2,
            default=float,
        )
    )


if __name__ == "__main__":
    main()
