"""Defaults on data they were never tuned on: the model against ALS, by plain `kedro run`.

Every default (learning rate, decay, warm-up, embedding size, history length,
id dropout, batch size) was chosen on the validation split of two datasets:
the embedded synthetic default and MovieLens-100K with every rating a positive
(benchmarks/tower_sweep.py). This benchmark runs the unchanged defaults on
three datasets that played no part in those choices and were fixed before any
of them was run, each of another shape:

- sparse_catalogue: a synthetic world with 4x the users and items of the
  default, half the activity per user, stronger popularity and a 12-d taste;
- feature_poor: a synthetic world where side features explain almost nothing,
  with more items than users and heavy users (60 interactions on average);
- movielens_liked: MovieLens-100K with only ratings >= 4 as positives (55k of
  the 100k ratings: the users and items thin out).

Each is a real `kedro run --env=<name>` in a temporary copy of the project
(an environment written there, nothing in the repository touched); the test
figures are read from its evaluation_metrics. Prints a table and writes
benchmarks/results/untuned.json.

With --seeds, each dataset runs once per seed (`--params seed=N`: the split
and the data stay, negatives, initialisation, shuffling and ALS change) and
the rows go to untuned_seeds.json: how much of a gap to ALS is the seed's.

    python benchmarks/untuned.py [--datasets sparse_catalogue,feature_poor,movielens_liked]
                                 [--seeds 42,1,2,3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
ML100K = Path(os.environ.get("ML100K_PATH", ROOT.parent / "shared" / "data" / "ml-100k" / "u.data"))
RESULTS = ROOT / "benchmarks" / "results"


def synthetic_env(name: str, spec: dict) -> dict[str, dict]:
    """Return the conf files of a synthetic environment with its own generator spec."""
    stem = f"data/01_raw/untuned_{name}"
    return {
        "catalog.yml": {"raw_interactions": {"spec": spec}},
        "globals.yml": {
            "raw_interactions_path": f"{stem}.parquet",
            "item_features_path": f"{stem}_item_features.parquet",
            "user_features_path": f"{stem}_user_features.parquet",
            "synthetic_item_taste_path": f"{stem}_item_taste.parquet",
            "synthetic_user_taste_path": f"{stem}_user_taste.parquet",
        },
    }


def movielens_env(overrides: dict) -> dict[str, dict]:
    """Return conf/movielens's files with parameter overrides merged in."""
    files = {
        name: yaml.safe_load((ROOT / "conf" / "movielens" / name).read_text())
        for name in ("catalog.yml", "globals.yml", "parameters.yml")
    }
    for key, value in overrides.items():
        *path, leaf = key.split(".")
        node = files["parameters.yml"]
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    return files


DATASETS = {
    "sparse_catalogue": synthetic_env(
        "sparse_catalogue",
        {
            "n_users": 20_000,
            "n_items": 8_000,
            "mean_interactions_per_user": 20.0,
            "taste_dim": 12,
            "popularity_sigma": 1.5,
            "seed": 7,
        },
    ),
    "feature_poor": synthetic_env(
        "feature_poor",
        {
            "n_users": 3_000,
            "n_items": 5_000,
            "mean_interactions_per_user": 60.0,
            "taste_strength": 3.0,
            "genre_share": 0.1,
            "studio_share": 0.05,
            "age_share": 0.05,
            "region_share": 0.05,
            "seed": 11,
        },
    ),
    "movielens_liked": movielens_env({"ingestion.rating_threshold": 4}),
}


def make_project(workdir: Path) -> Path:
    project = workdir / "project"
    top_level = {".venv", ".git", "data", "build", "mlruns", ".viz"}

    def ignore(folder: str, names: list[str]) -> set[str]:
        # Only the project's own top-level folders: src/twotower_pipeline/data is code.
        return top_level & set(names) if Path(folder) == ROOT else {"__pycache__"} & set(names)

    shutil.copytree(ROOT, project, ignore=ignore)
    (project / "data" / "01_raw").mkdir(parents=True)
    (project / "data" / "01_raw" / "ml-100k").symlink_to(ML100K.parent.resolve())
    return project


def latest(folder: Path) -> dict:
    """Return the newest version of a versioned JSON dataset (or the plain file)."""
    if folder.is_file():
        return json.loads(folder.read_text())
    newest = sorted(folder.iterdir())[-1]
    return json.loads((newest / folder.name).read_text())


def kedro_run(project: Path, *arguments: str) -> tuple[str, float]:
    """Run `kedro run <arguments>` in the project copy; return (its log, its peak RSS in MB).

    The peak is the run's own, from the kernel (wait4). Raises with the end of
    the log when the run fails.
    """
    child = subprocess.Popen(
        ["kedro", "run", *arguments],
        cwd=project,
        # A wide terminal: each log record stays on one line.
        env=dict(os.environ, KEDRO_DISABLE_TELEMETRY="true", COLUMNS="400"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    log = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"kedro run {' '.join(arguments)} failed:\n{log[-3000:]}")
    return log, usage.ru_maxrss / 1024


def write_json(path: Path, body: dict) -> None:
    """Write a benchmark's results and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body, indent=2))
    print(f"wrote {path}")


def run(project: Path, name: str, files: dict[str, dict], seed: int | None = None) -> dict:
    conf = project / "conf" / f"untuned_{name}"
    conf.mkdir(exist_ok=True)
    for file, content in files.items():
        (conf / file).write_text(yaml.safe_dump(content, sort_keys=False))
    env = f"untuned_{name}"
    started = time.perf_counter()
    kedro_run(project, f"--env={env}", *(["--params", f"seed={seed}"] if seed is not None else []))
    seconds = time.perf_counter() - started
    reporting = project / "data" / env / "08_reporting"
    metrics = latest(reporting / "evaluation_metrics.json")
    oracle = latest(reporting / "oracle_metrics.json")
    health = latest(reporting / "training_health.json")
    selection = latest(reporting / "model_selection.json")
    row = {"dataset": name, "seconds": seconds, "users": metrics["model"]["users"]}
    if seed is not None:
        row["seed"] = seed
    for scorer in ("model", "als", "popularity", "random"):
        test, validation = metrics[scorer], metrics["validation"][scorer]
        if "skipped" in test:
            continue
        row[scorer] = {
            "test_hr10": test["hit_rate@10"],
            "test_hr10_se": test["hit_rate_se@10"],
            "test_ndcg10": test["ndcg@10"],
            "val_hr10": validation["hit_rate@10"],
        }
    if oracle.get("available", True) and "test" in oracle:
        row["oracle"] = {"test_hr10": oracle["test"]["hit_rate@10"]}
    row["health"] = health["verdict"]
    row["model_selection"] = {
        c["name"]: c[next(key for key in c if key.startswith("validation_"))]
        for c in selection["candidates"]
    } | {"chosen": selection["chosen"]}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--seeds", help="comma-separated training seeds, one run each")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    seeds = [int(seed) for seed in args.seeds.split(",")] if args.seeds else [None]
    output = args.output or RESULTS / ("untuned_seeds.json" if args.seeds else "untuned.json")
    rows = []
    with tempfile.TemporaryDirectory(prefix="untuned_") as workdir:
        project = make_project(Path(workdir))
        for name, seed in ((name, seed) for name in args.datasets.split(",") for seed in seeds):
            row = run(project, name, DATASETS[name], seed)
            rows.append(row)
            model, als = row["model"], row.get("als", {})
            oracle = row.get("oracle", {}).get("test_hr10")
            print(
                f"{name:18s}"
                + (f" seed {seed:<4d}" if seed is not None else "")
                + f" test HR@10 model {model['test_hr10']:.4f} ±{model['test_hr10_se']:.4f}"
                f"  ALS {als.get('test_hr10', float('nan')):.4f}"
                f"  popularity {row['popularity']['test_hr10']:.4f}"
                + (f"  oracle {oracle:.4f}" if oracle else "")
                + f"  ({row['users']} users, {row['seconds']:.0f}s)  {row['health']}"
                + f"  towers: {row['model_selection']['chosen']}",
                flush=True,
            )
    write_json(output, {"rows": rows})


if __name__ == "__main__":
    main()
