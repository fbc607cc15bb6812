"""Environments never share outputs; every run leaves a manifest; mismatched prepared data stops.

The config loader is checked on the shipped conf/ (no run); one project copy
is then smoke-run and used for the cross-configuration cases, each of which
must stop before any node runs and leave every file as it was.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from twotower_pipeline.config.loader import EnvironmentConfigLoader, relocate_path
from twotower_pipeline.hooks.prepared_data import MissingPreparedDataError
from twotower_pipeline.hooks.readable_errors import ReadableError
from twotower_pipeline.io.manifest import provenance_differences

ROOT = Path(__file__).resolve().parents[1]


def loader(env: str | None) -> EnvironmentConfigLoader:
    return EnvironmentConfigLoader(
        conf_source=str(ROOT / "conf"),
        env=env,
        base_env="base",
        default_run_env="local",
        merge_strategy={"parameters": "soft", "catalog": "soft", "globals": "soft"},
    )


def test_the_default_environment_keeps_the_documented_paths():
    catalog = loader(None)["catalog"]
    assert catalog["interactions"]["filepath"] == "data/03_primary/interactions.parquet"
    assert catalog["two_tower_model"]["filepath"] == "data/06_models/two_tower_model.pt"


def test_another_environment_writes_under_its_own_folder_and_reads_raw_files_where_they_are():
    catalog = loader("smoke")["catalog"]
    assert catalog["interactions"]["filepath"] == "data/smoke/03_primary/interactions.parquet"
    assert catalog["two_tower_model"]["filepath"] == "data/smoke/06_models/two_tower_model.pt"
    assert catalog["raw_interactions"]["filepath"].startswith("data/01_raw/")
    parameters = loader("smoke")["parameters"]
    assert parameters["training"]["checkpoint_dir"].startswith("data/smoke/06_models/")
    assert parameters["ingestion"]["source"].startswith("data/01_raw/")


def test_the_mlflow_store_is_under_the_project_root_whatever_folder_the_session_starts_in(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # e.g. a notebook's folder
    mlflow = EnvironmentConfigLoader(
        conf_source=str(ROOT / "conf"),
        base_env="base",
        default_run_env="local",
        config_patterns={"mlflow": ["mlflow*", "mlflow*/**"]},
    )["mlflow"]
    assert (
        mlflow["server"]["mlflow_tracking_uri"] == f"sqlite:///{ROOT.as_posix()}/mlruns/mlflow.db"
    )


def test_paths_outside_data_and_already_moved_paths_are_left_alone():
    assert relocate_path("/abs/data/x.parquet", "smoke") == "/abs/data/x.parquet"
    assert relocate_path("data/smoke/03_primary/x", "smoke") == "data/smoke/03_primary/x"
    assert relocate_path("data/03_primary/x", "local") == "data/03_primary/x"


def snapshot(project: Path) -> dict[str, bytes]:
    data = project / "data"
    return {str(p.relative_to(data)): p.read_bytes() for p in data.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def smoke_run(make_project_copy, kedro_run) -> Path:
    project = make_project_copy("environments")
    kedro_run(project)
    return project


def test_a_run_writes_a_manifest_its_versioned_outputs_point_to(smoke_run):
    manifests = sorted((smoke_run / "data/smoke/08_reporting/run_manifest.json").iterdir())
    assert len(manifests) == 1
    manifest = json.loads((manifests[0] / "run_manifest.json").read_text())
    assert manifest["run_id"] == manifests[0].name
    assert manifest["env"] == "smoke"
    assert manifest["parameters"]["neg_ratio"] == 5
    assert manifest["parameters"]["num_epochs"] == 8  # after the environment's override
    assert manifest["started"] <= manifest["ended"]
    raw = manifest["raw_inputs"]["raw_interactions"]
    assert raw["path"] == "data/01_raw/synthetic_interactions_smoke.parquet"
    assert len(raw["sha256"]) == 64 and raw["bytes"] > 0
    model_folder = smoke_run / manifest["outputs"]["two_tower_model"]
    assert [p.name for p in model_folder.iterdir()] == [manifest["run_id"]]
    assert "project_version" in manifest and "git_commit" in manifest


def test_a_smoke_run_leaves_the_default_environment_without_prepared_data(smoke_run, kedro_run):
    before = snapshot(smoke_run)
    with pytest.raises(MissingPreparedDataError, match="kedro run --pipeline=data_processing"):
        kedro_run(smoke_run, pipeline="train", env="local")
    assert snapshot(smoke_run) == before


def test_evaluating_a_model_with_another_neg_ratio_stops_naming_it(smoke_run, kedro_run):
    before = snapshot(smoke_run)
    with pytest.raises(ReadableError) as failed:
        kedro_run(smoke_run, pipeline="evaluation", params={"neg_ratio": 2})
    message = failed.value.format_message()
    assert message.startswith("prepared data was made by another configuration than this run's")
    made = r"\btwo_tower_model\b[\w, ]* were made with neg_ratio=5 \(now 2\) by run "
    assert re.search(made, message)
    assert failed.value.exit_code == 1
    assert snapshot(smoke_run) == before


def test_training_on_data_split_with_other_settings_stops_naming_them(smoke_run, kedro_run):
    before = snapshot(smoke_run)
    with pytest.raises(ReadableError) as failed:
        kedro_run(smoke_run, pipeline="train", params={"split": {"min_train_interactions": 3}})
    message = failed.value.format_message()
    made = r"\btrain_interactions\b[\w, ]* were made with split\.min_train_interactions=2 \(now 3\)"
    assert re.search(made, message)
    assert snapshot(smoke_run) == before


def test_data_prepared_by_another_environment_is_refused(smoke_run, kedro_run):
    """An environment whose catalog points at the smoke run's files (absolute paths)."""
    other = smoke_run / "conf" / "other"
    other.mkdir()
    manifest_folder = smoke_run / "data/smoke/08_reporting/run_manifest.json"
    version = next(manifest_folder.iterdir())
    outputs = json.loads((version / "run_manifest.json").read_text())["outputs"]
    prepared = [name for name, path in outputs.items() if (smoke_run / path).is_file()]
    (other / "catalog.yml").write_text(
        "".join(f"{name}:\n  filepath: {smoke_run / outputs[name]}\n" for name in prepared)
    )
    (other / "parameters.yml").write_text("num_epochs: 6\n")
    before = snapshot(smoke_run)
    try:
        with pytest.raises(ReadableError, match=r"train_interactions[\w, ]* by environment 'smo"):
            kedro_run(smoke_run, pipeline="train", env="other")
    finally:
        for path in other.iterdir():
            path.unlink()
        other.rmdir()
    assert snapshot(smoke_run) == before


def test_evaluation_may_change_what_it_reports_but_not_what_chose_the_model():
    made = {"neg_ratio": 5, "evaluation": {"ks": [10], "headline_k": 10, "als": {"factors": 8}}}
    now = {"neg_ratio": 5, "evaluation": {"ks": [10, 50], "headline_k": 10, "als": {"factors": 4}}}
    assert provenance_differences(made, now, {"neg_ratio", "evaluation"}) == {}
    now["evaluation"]["headline_k"] = 50  # training keeps the best epoch by recall@headline_k
    assert provenance_differences(made, now, {"evaluation"}) == {"evaluation.headline_k": (10, 50)}
