"""The two row optimizers side by side: row-wise AdamW against row-wise RMSprop.

`training.optimizer: rowwise` (the default) keeps AdamW's two moments for every
embedding value; `rowwise_rmsprop` keeps one second-moment value a row and no
momentum, so a step moves about a third of the bytes per touched row. This
benchmark runs the unchanged pipeline with each, as a plain `kedro run
--env=<env> --params=training.optimizer=<optimizer>` in a temporary copy of the
project, on:

- default: the embedded synthetic data (tables under 2^18 values: every row is
  updated each step, so the two differ by the rule, not by laziness);
- movielens: MovieLens-100K (the same: its tables are small);
- scale_10x: the synthetic world at 10x the users and items (50,000 x 20,000,
  2M interactions), where a step touches a fraction of the item tables and
  the row path acts. One candidate (model selection off) to keep it in minutes.

With --rmsprop-learning-rates (e.g. 0.005,0.01), row-wise RMSprop also runs at
those rates (the rate re-checked for it, chosen on validation like any other).

Reads validation and test HR@10 from each run's evaluation_metrics, the epoch
rate from training_history and the run's peak memory from the kernel. Prints a
table and writes benchmarks/results/row_optimizers.json.

    python benchmarks/row_optimizers.py [--datasets default,movielens,scale_10x]
        [--rmsprop-learning-rates 0.005,0.01] [--output PATH]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

from untuned import kedro_run, latest, make_project, synthetic_env, write_json

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
OPTIMIZERS = ("rowwise", "rowwise_rmsprop")
# dataset -> (environment or None for the default run, extra --params, conf files to write)
DATASETS = {
    "default": (None, "", None),
    "movielens": ("movielens", "", None),
    "scale_10x": (
        "scale_10x",
        ",model_selection.enabled=false",
        synthetic_env("scale_10x", {"n_users": 50_000, "n_items": 20_000}),
    ),
}


def run(project: Path, dataset: str, optimizer: str, learning_rate: str | None = None) -> dict:
    env, extra, files = DATASETS[dataset]
    if files is not None and not (project / "conf" / env).exists():
        (project / "conf" / env).mkdir()
        for file, content in files.items():
            (project / "conf" / env / file).write_text(yaml.safe_dump(content, sort_keys=False))
    started = time.perf_counter()
    environment = [f"--env={env}"] if env else []
    rate = f",training.learning_rate={learning_rate}" if learning_rate else ""
    _, peak_mb = kedro_run(
        project, *environment, f"--params=training.optimizer={optimizer}{rate}{extra}"
    )
    seconds = time.perf_counter() - started
    # Every environment but the default writes under data/<env>/.
    reporting = project / "data" / (env or "") / "08_reporting"
    metrics = latest(reporting / "evaluation_metrics.json")
    selection = latest(reporting / "model_selection.json")
    history = pd.read_parquet(reporting / "training_history.parquet")
    model, validation = metrics["model"], metrics["validation"]["model"]
    return {
        "dataset": dataset,
        "optimizer": optimizer,
        "learning_rate": float(learning_rate) if learning_rate else "default",
        "seconds": seconds,
        "peak_rss_mb": peak_mb,
        "test_hr10": model["hit_rate@10"],
        "test_hr10_se": model["hit_rate_se@10"],
        "test_ndcg10": model["ndcg@10"],
        "val_hr10": validation["hit_rate@10"],
        "chosen": selection["chosen"],
        "median_examples_per_s": float(history["examples_per_second"].median()),
        "epoch1_loss": float(history["train_loss"].iloc[0]),
        "epoch2_loss": float(history["train_loss"].iloc[1]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--rmsprop-learning-rates", default="")
    parser.add_argument("--only-rates", action="store_true", help="skip the default-rate runs")
    parser.add_argument("--output", type=Path, default=RESULTS / "row_optimizers.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="row_optimizers_") as workdir:
        project = make_project(Path(workdir))
        plan = [] if args.only_rates else [(o, None) for o in OPTIMIZERS]
        plan += [("rowwise_rmsprop", r) for r in args.rmsprop_learning_rates.split(",") if r]
        for dataset in args.datasets.split(","):
            for optimizer, learning_rate in plan:
                row = run(project, dataset, optimizer, learning_rate)
                rows.append(row)
                print(
                    f"{dataset:10s} {optimizer:16s} lr {row['learning_rate']!s:8s} "
                    f"val {row['val_hr10']:.4f}  test "
                    f"{row['test_hr10']:.4f} ± {row['test_hr10_se']:.4f} ({row['chosen']})  "
                    f"{row['median_examples_per_s'] / 1e6:.2f}M ex/s  "
                    f"peak {row['peak_rss_mb']:6.0f} MB  {row['seconds']:5.0f} s",
                    flush=True,
                )
    write_json(args.output, {"rows": rows})


if __name__ == "__main__":
    main()
