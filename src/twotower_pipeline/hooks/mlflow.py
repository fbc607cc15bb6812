"""Logs a run's outputs to the MLflow run kedro-mlflow opened (io/tracking.py says what).

Does nothing when mlflow is not installed or no MLflow run is active (kedro-mlflow
absent, or tracking disabled for the pipeline): tracking is an optional extra.
kedro-mlflow ends its run in its own after_pipeline_run, which pluggy calls
before this project's hooks, so the run id is kept from the first save and the
run manifest (written after the run) is logged to that id.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import Any

from kedro.framework.hooks import hook_impl

from twotower_pipeline.io import serving, tracking

logger = logging.getLogger(__name__)

# mlflow configures its own loggers when imported (after conf/logging.yml is read);
# like the other libraries there, it speaks only when something is wrong. Set
# before kedro-mlflow imports mlflow: settings.py imports this module first.
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
# kedro-mlflow sets its logger to INFO when it is imported, over conf/logging.yml:
# import it first, here, and put it back to WARNING.
if importlib.util.find_spec("kedro_mlflow") is not None:
    import kedro_mlflow  # noqa: F401

    logging.getLogger("kedro_mlflow").setLevel(logging.WARNING)

PLOTS = ("learning_curve_png", "ranking_curve_png", "model_vs_baselines_png")
JSON_REPORTS = ("ingestion_report", "split_report", "ann_metrics")


# Runs that a session of this process opened through kedro-mlflow. kedro-mlflow
# leaves its run open when a check stops the session before the pipeline starts
# (Kedro calls no error hook then), and the next session of the same process (a
# notebook, a test) would log into it; such a leftover is ended when the next
# session starts. A run the user opened before the session is never touched.
_SESSION_RUNS: set[str] = set()


def _end_leftover_run() -> None:
    tracking.end_active_runs(_SESSION_RUNS)


class MlflowTrackingHooks:
    """Sends the history, metrics, health, reports, plots and model to the active MLflow run."""

    def __init__(self) -> None:
        self._run_id: str | None = None
        self._model: dict[str, Any] = {}

    @hook_impl(tryfirst=True)
    def after_context_created(self) -> None:
        _end_leftover_run()

    @hook_impl(hookwrapper=True)
    def before_pipeline_run(self):
        """Remember the run kedro-mlflow opens; end it when a check stops the run first."""
        self._run_id, self._model = None, {}
        before = tracking.active_run_id()
        outcome = yield
        opened = tracking.active_run_id()
        if opened is None or opened == before:
            return
        _SESSION_RUNS.add(opened)
        if outcome.excinfo is not None:  # Kedro calls no error hook for this: close it here
            _end_leftover_run()

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any) -> None:
        run_id = tracking.active_run_id()
        if run_id is None:
            return
        self._run_id = run_id
        try:
            self._log(run_id, dataset_name, data)
        except Exception as error:  # tracking must never fail the run it tracks
            logger.warning("MLflow: could not log %s (%s)", dataset_name, error)

    def _log(self, run_id: str, name: str, data: Any) -> None:
        if name == "training_history":
            tracking.log_history(run_id, data)
        elif name == "evaluation_metrics":
            tracking.log_numbers(run_id, data, "eval")
            tracking.log_json(run_id, data, "reports/evaluation_metrics.json")
        elif name == "training_health":
            tracking.log_health(run_id, data)
        elif name == "run_report":
            tracking.log_text(run_id, data, "reports/report.md")
        elif name == "report_html":
            tracking.log_text(run_id, data, "reports/report.html")
        elif name in PLOTS:
            tracking.log_figure(run_id, data, f"plots/{name.removesuffix('_png')}.png")
        elif name in JSON_REPORTS:
            tracking.log_json(run_id, data, f"reports/{name}.json")
        elif name in ("two_tower_model", "model_config"):
            # Logged once both halves are saved, whichever comes first.
            self._model[name] = data.state_dict() if hasattr(data, "state_dict") else data
            if len(self._model) == 2:
                tracking.log_model(
                    run_id, self._model["two_tower_model"], self._model["model_config"]
                )

    @hook_impl
    def after_pipeline_run(self, catalog) -> None:
        if self._run_id is None or "run_manifest" not in catalog:
            return
        try:
            manifest = catalog.load("run_manifest")
            tracking.log_json(self._run_id, manifest, "reports/run_manifest.json")
        except Exception as error:  # the manifest is written by another hook; it may be absent
            logger.warning("MLflow: could not log the run manifest (%s)", error)
        if len(self._model) == 2:  # this run trained a model: log it as a served model too
            try:
                serving.log_recommender_from_catalog(self._run_id, catalog)
            except Exception as error:  # tracking must never fail the run it tracks
                logger.warning("MLflow: could not log the served model (%s)", error)
        self._run_id = None
