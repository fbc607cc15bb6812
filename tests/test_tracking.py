"""Experiment tracking: what a run logs to MLflow, and that it reads back.

The unit tests drive MlflowTrackingHooks against a throw-away SQLite store; the
integration test reads the run that the shared smoke run (conftest.smoke_project)
wrote through kedro-mlflow. All skip without the optional extra `[mlflow]`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from twotower_pipeline.hooks.mlflow import MlflowTrackingHooks
from twotower_pipeline.io import tracking

mlflow = pytest.importorskip("mlflow", reason="the optional extra [mlflow] is not installed")


def test_metric_names_are_ones_mlflow_accepts():
    assert tracking.metric_name("model.recall@10") == "model.recall_at_10"
    assert tracking.metric_name("lift (x)") == "lift _x_"


def test_numeric_leaves_flatten_nested_metrics_and_skip_the_rest():
    tree = {"model": {"recall@10": 0.3, "n": 5, "ok": True}, "als": {"skipped": "no"}, "x": None}
    assert tracking.numeric_leaves(tree, "eval") == {
        "eval.model.recall_at_10": 0.3,
        "eval.model.n": 5.0,
        "eval.model.ok": 1.0,
    }


def test_history_metrics_are_stepped_by_epoch():
    history = pd.DataFrame(
        {"epoch": [1, 2], "train_loss": [0.6, 0.4], "val_loss": [0.7, np.nan], "chosen": [0, 1]}
    )
    rows = tracking.history_metrics(history)
    assert ("epoch.train_loss", 0.6, 1) in rows and ("epoch.train_loss", 0.4, 2) in rows
    assert [r for r in rows if r[0] == "epoch.val_loss"] == [("epoch.val_loss", 0.7, 1)]


@pytest.fixture
def tracking_store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
    yield uri, experiment
    if mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(previous)  # later sessions track where their own settings say


def test_hooks_log_history_metrics_health_and_the_model_state(tracking_store):
    import torch

    uri, experiment = tracking_store
    torch.manual_seed(0)
    state = torch.nn.Linear(3, 2).state_dict()
    config = {"n_items": 2, "hidden_dims": []}
    hooks = MlflowTrackingHooks()
    with mlflow.start_run(experiment_id=experiment) as run:
        hooks.before_pipeline_run()
        history = pd.DataFrame(
            {"epoch": [1, 2, 3], "train_loss": [0.6, 0.5, 0.4], "chosen": [False, True, False]}
        )
        hooks.after_dataset_saved("training_history", history)
        metrics = {"model": {"recall@10": 0.25}, "popularity": {"recall@10": 0.1}}
        hooks.after_dataset_saved("evaluation_metrics", metrics)
        health = {
            "verdict": "1 flag(s) raised: no_lift",
            "raised": ["no_lift"],
            "flags": [{"name": "no_lift", "raised": True}, {"name": "nan_loss", "raised": False}],
        }
        hooks.after_dataset_saved("training_health", health)
        hooks.after_dataset_saved("run_report", "# Report\n")
        hooks.after_dataset_saved("model_config", config)
        hooks.after_dataset_saved("two_tower_model", state)

    client = mlflow.MlflowClient(tracking_uri=uri)
    steps = client.get_metric_history(run.info.run_id, "epoch.train_loss")
    assert [(m.step, m.value) for m in steps] == [(1, 0.6), (2, 0.5), (3, 0.4)]
    logged = client.get_run(run.info.run_id).data
    assert logged.metrics["eval.model.recall_at_10"] == 0.25
    assert logged.metrics["health.no_lift"] == 1.0 and logged.metrics["health.nan_loss"] == 0.0
    assert logged.tags["chosen_epoch"] == "2"
    loaded_state, loaded_config = tracking.load_logged_state(run.info.run_id, uri)
    assert loaded_config == config
    assert all(torch.equal(loaded_state[name], state[name]) for name in state)


def test_without_an_active_run_nothing_is_logged(tracking_store):
    # kedro-mlflow absent or tracking disabled: the hook must be a no-op, not an error.
    MlflowTrackingHooks().after_dataset_saved("training_history", "not even a frame")


@pytest.mark.integration
def test_a_kedro_run_is_tracked_and_its_model_loads(smoke_project):
    pytest.importorskip("kedro_mlflow", reason="kedro-mlflow is not installed")
    uri = f"sqlite:///{smoke_project / 'mlruns' / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("twotower_pipeline")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    # Parameters after overrides: conf/smoke sets num_epochs 8 over base's 20.
    assert run.data.params["num_epochs"] == "8"
    assert run.data.params["neg_ratio"] == "5"
    steps = client.get_metric_history(run.info.run_id, "epoch.train_loss")
    assert [m.step for m in steps] == list(range(1, 9))
    assert any(name.startswith("eval.") and "popularity" in name for name in run.data.metrics)
    assert any(name.startswith("health.") for name in run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "reports")}
    assert {"reports/report.md", "reports/training_health.json"} <= artifacts
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert "plots/learning_curve.png" in plots
    model = tracking.load_logged_model(run.info.run_id, uri)
    assert model.config.n_items > 0
    # The run also logs the served model: MLflow's own folder with its input example.
    served = {a.path for a in client.list_artifacts(run.info.run_id, "recommender")}
    assert {"recommender/MLmodel", "recommender/serving_input_example.json"} <= served
