"""What a run logs to MLflow beyond its parameters, and how to read a logged model back.

kedro-mlflow (the optional extra `[mlflow]`) starts and ends one MLflow run per
`kedro run` and logs the parameters after overrides; the project's
MlflowTrackingHooks (hooks/mlflow.py) call the functions here as the run's
outputs are saved: the per-epoch history as metrics with steps, the metrics of
the model and every baseline, the health flags, the reports and plots as
artefacts, and the model as its state dict and JSON config (no pickle).
mlflow is imported only when these functions run.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from twotower_pipeline.evaluation.health import chosen_epoch

MODEL_ARTIFACT_DIR = "model"
STATE_FILE = "two_tower_model.pt"
CONFIG_FILE = "model_config.json"
# Characters MLflow accepts in a metric name; "@" (recall@10) is not one of them.
_UNSAFE = re.compile(r"[^0-9A-Za-z_\-. /]")


def metric_name(name: str) -> str:
    """Return the name MLflow accepts: recall@10 -> recall_at_10, other odd characters -> _."""
    return _UNSAFE.sub("_", name.replace("@", "_at_"))


def numeric_leaves(tree: Any, prefix: str = "") -> dict[str, float]:
    """Return every finite number (booleans as 0/1) in a nested dict, keyed by dotted path."""
    leaves: dict[str, float] = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            leaves.update(numeric_leaves(value, path))
    elif isinstance(tree, bool | int | float) and math.isfinite(float(tree)):
        leaves[metric_name(prefix)] = float(tree)
    return leaves


def history_metrics(history: pd.DataFrame, prefix: str = "epoch") -> list[tuple[str, float, int]]:
    """Return (name, value, step) for every numeric history column, step = the epoch."""
    if "epoch" not in history.columns:
        raise ValueError(f"training_history has no 'epoch' column (columns: {list(history)})")
    steps = history["epoch"].to_numpy(int)
    rows = []
    for column in history.columns:
        if column == "epoch" or not pd.api.types.is_numeric_dtype(history[column]):
            continue
        name = metric_name(f"{prefix}.{column}")
        values = history[column].to_numpy(float)
        rows += [(name, v, int(s)) for v, s in zip(values, steps, strict=True) if math.isfinite(v)]
    return rows


def active_run_id() -> str | None:
    """Return the id of the MLflow run open in this process, or None (none, or no mlflow)."""
    try:
        import mlflow
    except ImportError:
        return None
    run = mlflow.active_run()
    return run.info.run_id if run is not None else None


def end_active_runs(run_ids: set[str]) -> None:
    """End, as FAILED, the open MLflow runs among `run_ids`, innermost first."""
    try:
        import mlflow
    except ImportError:
        return
    run = mlflow.active_run()
    while run is not None and run.info.run_id in run_ids:
        mlflow.end_run("FAILED")
        run = mlflow.active_run()


def log_history(run_id: str, history: pd.DataFrame) -> None:
    """Log the per-epoch history as metrics with steps, and the chosen epoch as a tag."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(name, value, now, step) for name, value, step in history_metrics(history)]
    client = MlflowClient()
    # log_batch takes at most 1000 metrics per call.
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start : start + 1000])
    chosen = chosen_epoch(history)
    if chosen is not None:
        client.set_tag(run_id, "chosen_epoch", str(chosen))


def log_numbers(run_id: str, tree: dict, prefix: str) -> None:
    """Log the numbers of a nested dict (metrics, ANN recall) as metrics under prefix."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in numeric_leaves(tree, prefix).items()]
    client = MlflowClient()
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start : start + 1000])


def log_health(run_id: str, health: dict) -> None:
    """Log each health flag as a 0/1 metric, the verdict as a tag and the report as JSON."""
    from mlflow import MlflowClient

    client = MlflowClient()
    flags = {f"health.{flag['name']}": float(flag["raised"]) for flag in health.get("flags", [])}
    log_numbers(run_id, flags, "")
    client.set_tag(run_id, "health", health.get("verdict", ""))
    client.log_dict(run_id, health, "reports/training_health.json")


def log_json(run_id: str, data: Any, artifact_file: str) -> None:
    """Log a JSON-able object as an artefact."""
    from mlflow import MlflowClient

    MlflowClient().log_dict(run_id, json.loads(json.dumps(data, default=str)), artifact_file)


def log_text(run_id: str, text: str, artifact_file: str) -> None:
    """Log a text (report.md, report.html) as an artefact."""
    from mlflow import MlflowClient

    MlflowClient().log_text(run_id, text, artifact_file)


def log_figure(run_id: str, figure: Any, artifact_file: str) -> None:
    """Log a matplotlib figure as a PNG artefact."""
    from mlflow import MlflowClient

    MlflowClient().log_figure(run_id, figure, artifact_file)


def log_model(run_id: str, state_dict: dict, model_config: dict) -> None:
    """Log the model as its state dict and JSON config under model/ (loads without pickle)."""
    from mlflow import MlflowClient

    with tempfile.TemporaryDirectory() as folder:
        torch.save(state_dict, Path(folder) / STATE_FILE)
        (Path(folder) / CONFIG_FILE).write_text(json.dumps(model_config, indent=2))
        MlflowClient().log_artifacts(run_id, folder, MODEL_ARTIFACT_DIR)


def load_logged_state(run_id: str, tracking_uri: str | None = None) -> tuple[dict, dict]:
    """Return (state dict, model config) logged by a run, read with weights_only=True."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    with tempfile.TemporaryDirectory() as folder:
        local = Path(client.download_artifacts(run_id, MODEL_ARTIFACT_DIR, folder))
        config = json.loads((local / CONFIG_FILE).read_text())
        state = torch.load(local / STATE_FILE, weights_only=True)
    return state, config


def load_logged_model(run_id: str, tracking_uri: str | None = None):
    """Return the TwoTowerModel logged by a run, rebuilt from its state dict and config."""
    from twotower_pipeline.model.towers import TwoTowerModel

    state, config = load_logged_state(run_id, tracking_uri)
    return TwoTowerModel.from_state(config, state)
