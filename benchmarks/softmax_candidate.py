"""The sparse-log softmax block as a default model_selection candidate: what it would cost.

Runs the default `kedro run` and `kedro run --env=movielens` in a temporary copy
of the project whose conf/base adds the softmax block of README "Your own data"
to model_selection.alternatives (beside `user_id`, with the ensemble), and
records each run's seconds, which candidate validation chose, every
candidate's validation HR@10, and test HR@10 / NDCG@10 against ALS. It is why
that block is not a default candidate (docs/training.md).

    python benchmarks/softmax_candidate.py

Prints one line per run and writes benchmarks/results/softmax_candidate.json.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import yaml

from untuned import kedro_run, latest, make_project, write_json

ROOT = Path(__file__).resolve().parents[1]
SOFTMAX = {
    "embedding_dim": 64,
    "history_reads_item_tower": True,
    "item_bias": True,
    "training": {"loss": "softmax", "learning_rate": 0.002, "weight_decay": 0.0},
}


def add_candidate(project: Path) -> None:
    path = project / "conf" / "base" / "parameters_training.yml"
    parameters = yaml.safe_load(path.read_text())
    parameters["model_selection"]["alternatives"]["softmax"] = SOFTMAX
    path.write_text(yaml.safe_dump(parameters, sort_keys=False))


def run(project: Path, env: str | None) -> dict:
    started = time.perf_counter()
    _, peak_mb = kedro_run(project, *([f"--env={env}"] if env else []))
    seconds = time.perf_counter() - started
    folder = project / "data" / (env or "") / "08_reporting"
    metrics = latest(folder / "evaluation_metrics.json")
    selection = json.loads((folder / "model_selection.json").read_text())
    return {
        "seconds": seconds,
        "peak_rss_mb": peak_mb,
        "health": latest(folder / "training_health.json")["verdict"],
        "chosen": selection["chosen"],
        "validation_hr@10": {c["name"]: c["validation_recall@10"] for c in selection["candidates"]},
        "test_hr@10": metrics["model"]["hit_rate@10"],
        "test_hr@10_se": metrics["model"].get("hit_rate_se@10"),
        "test_ndcg@10": metrics["model"]["ndcg@10"],
        "als_test_hr@10": metrics["als"]["hit_rate@10"],
    }


def main() -> None:
    results = {"candidate": SOFTMAX}
    with tempfile.TemporaryDirectory() as workdir:
        project = make_project(Path(workdir))
        add_candidate(project)
        for name, env in (("default", None), ("movielens", "movielens")):
            row = results[name] = run(project, env)
            print(
                f"{name:<10} {row['seconds']:.0f} s, chose {row['chosen']}, "
                f"validation {row['validation_hr@10']}, test HR@10 {row['test_hr@10']:.4f} "
                f"(ALS {row['als_test_hr@10']:.4f})",
                flush=True,
            )
    write_json(ROOT / "benchmarks" / "results" / "softmax_candidate.json", results)


if __name__ == "__main__":
    main()
