"""Does scoring the candidates together beat the best single candidate, whatever the seed?

For each dataset (the embedded default and MovieLens-100K, read from the folder
of ML100K_PATH) and each seed, a plain `kedro run --env=<env> --params=seed=<s>`
runs in a temporary copy of the project. Then every candidate's kept epoch (its
checkpoint) and their ensemble (`model.TowerEnsemble`, what model selection
scores) are ranked on validation and test with the evaluation's own protocol
(`protocol.held_out_sets` / `score_sets`: full catalogue, known items masked).
Validation is what chooses; test is printed beside it. Prints a line per run
and writes benchmarks/results/ensemble_seeds.json.

    python benchmarks/ensemble_seeds.py [--envs base,movielens] [--seeds 42,1,2,3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import pandas as pd
import torch

from twotower_pipeline.model.ensemble import TowerEnsemble
from twotower_pipeline.model.towers import TwoTowerModel
from twotower_pipeline.ranking.protocol import held_out_sets, score_sets
from untuned import kedro_run, make_project, write_json

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def data_folder(project: Path, env: str) -> Path:
    return project / "data" if env == "base" else project / "data" / env


def kept_models(folder: Path) -> dict[str, TwoTowerModel]:
    """Return each candidate's kept epoch, read from its checkpoint (configured first)."""
    checkpoints = folder / "06_models" / "checkpoints"
    paths = {"configured": checkpoints / "last.pt"}
    paths |= {p.parent.name: p for p in sorted(checkpoints.glob("*/last.pt"))}
    models = {}
    for name, path in paths.items():
        state = torch.load(path, weights_only=True)
        models[name] = TwoTowerModel.from_state(state["model_config"], state["best"]["model"])
    return models


def score(folder: Path, models: dict, seed: int) -> dict[str, dict[str, float]]:
    """Return {ranker: {validation, test}} HR@10 for each candidate and their ensemble."""
    split = {
        name: pd.read_parquet(folder / "05_model_input" / f"{name}_interactions.parquet")
        for name in ("train", "val", "test", "test_cold")
    }
    first = next(iter(models.values())).config
    sets = held_out_sets(
        split["train"], split["val"], split["test"], split["test_cold"], first.n_items, None, seed
    )
    rankers = dict(models)
    rankers["ensemble"] = TowerEnsemble(list(models.values()), list(models)).eval()
    figures = {}
    for name, model in rankers.items():
        cache = {}

        def scorer_for(known, positives, model=model, cache=cache):
            key = (id(known), id(positives))
            if key not in cache:
                cache[key] = model.catalogue_scorer(known, positives)
            return cache[key]

        result = score_sets(scorer_for, sets, first.n_users, first.n_items, [10], 4096, seed)
        figures[name] = {
            "validation": result["validation"]["hit_rate@10"],
            "test": result["test"]["hit_rate@10"],
            "test_se": result["test"]["hit_rate_se@10"],
        }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", default="base,movielens")
    parser.add_argument("--seeds", default="42,1,2,3")
    parser.add_argument("--output", type=Path, default=RESULTS / "ensemble_seeds.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="ensemble_seeds_") as workdir:
        project = make_project(Path(workdir))
        for env in args.envs.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                arguments = [f"--params=seed={seed}"]
                if env != "base":
                    arguments.append(f"--env={env}")
                kedro_run(project, *arguments)
                folder = data_folder(project, env)
                selection = json.loads(
                    (folder / "08_reporting" / "model_selection.json").read_text()
                )
                figures = score(folder, kept_models(folder), seed)
                rows.append(
                    {"env": env, "seed": seed, "chosen": selection["chosen"], "rankers": figures}
                )
                print(
                    f"{env:10s} seed {seed:>3}: "
                    + "  ".join(
                        f"{name} val {f['validation']:.4f} test {f['test']:.4f}"
                        for name, f in figures.items()
                    )
                    + f"  -> {selection['chosen']}",
                    flush=True,
                )
    summary = {}
    for env in args.envs.split(","):
        runs = [r for r in rows if r["env"] == env]
        for split in ("validation", "test"):
            best_single = [
                max(
                    (f for n, f in r["rankers"].items() if n != "ensemble"),
                    key=lambda f: f["validation"],
                )[split]
                for r in runs
            ]
            ensemble = [r["rankers"]["ensemble"][split] for r in runs]
            summary[f"{env}_{split}_best_single_mean"] = sum(best_single) / len(runs)
            summary[f"{env}_{split}_ensemble_mean"] = sum(ensemble) / len(runs)
    print(json.dumps(summary, indent=2))
    write_json(args.output, {"rows": rows, "summary": summary})


if __name__ == "__main__":
    main()
