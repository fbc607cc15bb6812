"""The real pipelines, end to end, through a KedroSession on the tiny smoke data.

Each test works in its own copy of the project, so the repository's data/ is
never touched and every run starts from a clean slate.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

PUBLIC_DATASETS = {
    "raw_interactions": "data/01_raw/synthetic_interactions_smoke.parquet",
    "interactions": "data/smoke/03_primary/interactions.parquet",
    "user_index": "data/smoke/03_primary/user_index.parquet",
    "item_index": "data/smoke/03_primary/item_index.parquet",
    "train_interactions": "data/smoke/05_model_input/train_interactions.parquet",
    "val_interactions": "data/smoke/05_model_input/val_interactions.parquet",
    "test_interactions": "data/smoke/05_model_input/test_interactions.parquet",
    "test_cold_interactions": "data/smoke/05_model_input/test_cold_interactions.parquet",
    "split_report": "data/smoke/08_reporting/split_report.json",
    "train_examples": "data/smoke/05_model_input/train_examples.parquet",
    "two_tower_model": "data/smoke/06_models/two_tower_model.pt",
    "training_history": "data/smoke/08_reporting/training_history.parquet",
    "model_selection": "data/smoke/08_reporting/model_selection.json",
    "model_config": "data/smoke/06_models/model_config.json",
    "evaluation_metrics": "data/smoke/08_reporting/evaluation_metrics.json",
    "training_health": "data/smoke/08_reporting/training_health.json",
    "run_report": "data/smoke/08_reporting/report.md",
    "recommendations": "data/smoke/07_model_output/recommendations.parquet",
    "user_embeddings": "data/smoke/07_model_output/user_embeddings.parquet",
    "item_embeddings": "data/smoke/07_model_output/item_embeddings.parquet",
}

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smoke_run(make_project_copy, kedro_run) -> Path:
    """A project copy of its own, smoke-run once (these tests run more pipelines in it)."""
    project = make_project_copy("integration")
    kedro_run(project)
    return project


def test_full_run_writes_a_file_for_every_public_dataset(smoke_run):
    for name, relative in PUBLIC_DATASETS.items():
        assert (smoke_run / relative).exists(), f"{name} was not written to {relative}"


def test_validation_chose_the_towers_and_the_persisted_model_is_the_chosen_one(smoke_run):
    selection = json.loads((smoke_run / PUBLIC_DATASETS["model_selection"]).read_text())
    config = json.loads((smoke_run / PUBLIC_DATASETS["model_config"]).read_text())
    history = pd.read_parquet(smoke_run / PUBLIC_DATASETS["training_history"])
    candidates = {c["name"]: c for c in selection["candidates"]}
    # conf/base's one alternative, and both scored together
    assert set(candidates) == {"configured", "user_id", "ensemble"}
    best = max(c["validation_recall@10"] for c in candidates.values())
    chosen = candidates[selection["chosen"]]
    assert chosen["chosen"] and chosen["validation_recall@10"] == best
    singles = [c for name, c in candidates.items() if name != "ensemble"]
    best_single = max(singles, key=lambda c: c["validation_recall@10"])
    if selection["chosen"] == "ensemble":
        assert config["names"] == ["configured", "user_id"]
        assert [m["user_id"] for m in config["members"]] == [False, True]
    else:
        assert config["user_id"] == (selection["chosen"] == "user_id")
    # The curve is the chosen single model's, or the ensemble's best member's.
    kept = history.loc[history["chosen"]].iloc[0]
    assert (kept["epoch"], kept["recall@10"]) == (
        best_single["kept_epoch"],
        pytest.approx(best_single["validation_recall@10"]),
    )


def latest_metrics(project: Path) -> dict:
    versions = sorted((project / PUBLIC_DATASETS["evaluation_metrics"]).iterdir())
    return json.loads((versions[-1] / "evaluation_metrics.json").read_text())


def read(project: Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(project / PUBLIC_DATASETS[name])


def pairs(frame: pd.DataFrame) -> set[tuple[int, int]]:
    return set(zip(frame["user"].tolist(), frame["item"].tolist(), strict=True))


def test_split_holds_out_validation_and_test_positives_never_seen_in_train(smoke_run):
    train, val, test, cold = (
        read(smoke_run, name)
        for name in (
            "train_interactions",
            "val_interactions",
            "test_interactions",
            "test_cold_interactions",
        )
    )
    assert len(val) and len(test)
    assert not pairs(train) & (pairs(val) | pairs(test) | pairs(cold))
    assert not pairs(val) & pairs(test)
    # leave_last_out: one test row (warm or cold) and one validation row per held-out user,
    # the test row no earlier than the validation one.
    held = pd.concat([test, cold]).set_index("user")["timestamp"]
    assert held.index.is_unique and val["user"].is_unique
    common = val.set_index("user")["timestamp"].align(held, join="inner")
    assert (common[0] <= common[1]).all()
    assert set(cold["item"]).isdisjoint(set(train["item"]))
    report = json.loads((smoke_run / PUBLIC_DATASETS["split_report"]).read_text())
    assert report["test_interactions"] == len(test)
    assert report["test_cold_interactions"] == len(cold)


def test_evaluation_metrics_report_test_at_the_top_and_validation_and_cold_sets_beside(
    smoke_run,
):
    metrics = latest_metrics(smoke_run)
    test = read(smoke_run, "test_interactions")
    val = read(smoke_run, "val_interactions")
    # Test figures at the top level, every scorer on the same test users.
    assert metrics["model"]["users"] == metrics["popularity"]["users"] == test["user"].nunique()
    assert metrics["random"]["users"] == test["user"].nunique()
    assert 0.0 <= metrics["model"]["recall@10"] <= 1.0
    assert 0.0 < metrics["model"]["hit_rate_se@10"] < 0.5
    assert "test_log_loss" in metrics["model"]
    validation = metrics["validation"]
    assert validation["model"]["users"] == validation["popularity"]["users"]
    assert validation["model"]["users"] == val["user"].nunique()
    assert "val_log_loss" in validation["model"]
    for section in ("cold_items", "cold_items_full"):
        assert set(metrics[section]) >= {"model", "popularity", "random"}
    cold = read(smoke_run, "test_cold_interactions")
    if len(cold):
        assert metrics["cold_items"]["model"]["users"] == cold["user"].nunique()
        assert metrics["cold_items_full"]["model"]["users"] == cold["user"].nunique()


def test_report_and_summary_are_on_test(smoke_run):
    report = (smoke_run / PUBLIC_DATASETS["run_report"]).read_text()
    assert report.splitlines()[2].startswith("**test (")
    assert "## Model vs baselines (test)" in report
    assert "## Validation (what chose the epoch)" in report


def test_training_history_has_one_row_per_epoch_of_the_smoke_env(smoke_run):
    history = pd.read_parquet(smoke_run / PUBLIC_DATASETS["training_history"])
    assert history["epoch"].tolist() == list(range(1, 9))
    assert history[["train_loss", "val_loss"]].gt(0.05).all().all()
    assert history["chosen"].sum() == 1  # the persisted model is one epoch's, chosen on validation


def test_smoke_run_beats_popularity_and_its_health_report_is_clean(smoke_run):
    health = json.loads((smoke_run / PUBLIC_DATASETS["training_health"]).read_text())
    assert health["verdict"] == "healthy", health["raised"]
    metrics = latest_metrics(smoke_run)
    assert metrics["model"]["hit_rate@10"] > metrics["popularity"]["hit_rate@10"]


def test_train_pipeline_reruns_sampling_with_the_neg_ratio_given_at_run_time(smoke_run, kedro_run):
    kedro_run(smoke_run, pipeline="train", params={"neg_ratio": 2})
    examples = pd.read_parquet(smoke_run / PUBLIC_DATASETS["train_examples"])
    train = pd.read_parquet(smoke_run / PUBLIC_DATASETS["train_interactions"])
    assert len(examples) == 3 * len(train)
    assert examples["label"].sum() == len(train)
    negatives_per_positive = (examples["label"] == 0).sum() / (examples["label"] == 1).sum()
    assert negatives_per_positive == 2


def kedro_cli(project: Path, *args: str) -> subprocess.CompletedProcess:
    """Run the `kedro` command of this environment in `project`, as a user would."""
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "COLUMNS": "200"}
    kedro = Path(sys.executable).with_name("kedro")
    return subprocess.run(
        [str(kedro), *args], cwd=project, env=env, capture_output=True, text=True, timeout=300
    )


def test_train_pipeline_without_prepared_data_says_which_command_to_run(make_project_copy):
    project = make_project_copy("unprepared")
    result = kedro_cli(project, "run", "--pipeline=train")
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert "kedro run --pipeline=data_processing" in last_line
    assert "Traceback" not in result.stderr


def test_bad_input_ends_kedro_run_with_the_message_alone(make_project_copy):
    project = make_project_copy("bad_input")
    env_dir = project / "conf" / "user_csv"
    env_dir.mkdir()
    (env_dir / "globals.yml").write_text("raw_interactions_path: data/01_raw/events.csv\n")
    (env_dir / "catalog.yml").write_text("raw_interactions:\n  type: pandas.CSVDataset\n")
    # A log with no side features says so (or the start-up check names the missing table).
    (env_dir / "parameters.yml").write_text("features: {item: null, user: null}\n")
    (project / "data" / "01_raw" / "events.csv").write_text(
        "user_id,item_id,when\nu1,i1,2024-01-01\nu1,i2,2024-01-02\n"
    )
    result = kedro_cli(project, "run", "--env=user_csv")
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("Error: data/01_raw/events.csv: missing column(s) 'timestamp'")
    assert "Traceback" not in result.stdout + result.stderr


def test_the_model_config_names_the_run_whose_model_and_manifest_it_belongs_to(smoke_run):
    config = json.loads((smoke_run / "data/smoke/06_models/model_config.json").read_text())
    versions = sorted(p.name for p in (smoke_run / PUBLIC_DATASETS["two_tower_model"]).iterdir())
    manifests = smoke_run / "data/smoke/08_reporting/run_manifest.json"
    assert config["run_id"] == versions[-1]  # the latest model is the one this config describes
    assert (manifests / config["run_id"]).is_dir()  # the manifest of that run


def test_towers_scored_together_are_persisted_served_and_evaluated_like_one_model(
    make_project_copy, kedro_run, monkeypatch
):
    # Validation's figure for the ensemble is set high, so the run keeps it; everything after
    # the choice (saving, reloading, evaluation, the index, recommendations, reports) is real.
    import numpy as np
    import torch

    from twotower_pipeline.model.ensemble import TowerEnsemble
    from twotower_pipeline.model.towers import TwoTowerModel
    from twotower_pipeline.training import selection as training_selection

    monkeypatch.setattr(
        training_selection, "validation_ranking", lambda *args, **kwargs: {"recall@10": 1.0}
    )
    project = make_project_copy("ensemble")
    kedro_run(project)

    def newest(relative: str) -> Path:
        path = project / relative
        return sorted(path.rglob(path.name))[-1] if path.is_dir() else path

    selection = json.loads(newest(PUBLIC_DATASETS["model_selection"]).read_text())
    config = json.loads(newest(PUBLIC_DATASETS["model_config"]).read_text())
    assert selection["chosen"] == "ensemble" and config["names"] == ["configured", "user_id"]
    state = torch.load(newest(PUBLIC_DATASETS["two_tower_model"]), weights_only=True)
    model = TwoTowerModel.from_state(config, state)
    assert isinstance(model, TowerEnsemble)
    items = read(project, "item_embeddings")
    vectors = np.stack(items["embedding"].to_numpy())
    assert vectors.shape[1] == 2 * config["members"][0]["embedding_dim"]
    assert np.allclose(vectors, model.all_item_vectors().numpy(), atol=1e-6)
    metrics = latest_metrics(project)
    assert 0 < metrics["model"]["hit_rate@10"] <= 1 and "cold_items" in metrics
    recommendations = read(project, "recommendations")
    assert recommendations.groupby("user_id").size().eq(10).all()
    report = newest(PUBLIC_DATASETS["run_report"]).read_text()
    assert "| ensemble | members: configured + user_id | each member's | 1.0000 | ✓ |" in report
