"""The HTML report node: the run's outputs laid out in one self-contained page."""

from __future__ import annotations

import pandas as pd

from twotower_pipeline.reporting import markdown as reporting
from twotower_pipeline.reporting.html import build_html_report
from twotower_pipeline.reporting.report_sections import RunOutputs

from .nodes import plot_learning_curve, plot_model_vs_baselines, plot_ranking_curve


def write_html_report(  # eleven arguments: each is one dataset of the catalog
    ingestion_report: dict,
    split_report: dict,
    training_history: pd.DataFrame,
    evaluation_metrics: dict,
    training_health: dict,
    model_config: dict,
    neg_ratio: int,
    parameters: dict,
    run_id: str,
    evaluation: dict,
    model_selection: dict | None = None,
) -> str:
    """Return report.html: health with advice, metrics tables, embedded plots, the run's settings.

    The plots are drawn again by the plot nodes' own functions (a saved PNG
    cannot be loaded back through its dataset). The run manifest is written once
    the run has succeeded, after this node, in a version folder named after the
    run id: the page links to where it will be.
    """
    k = evaluation["headline_k"]
    learning_curve, _ = plot_learning_curve(training_history, model_config, neg_ratio)
    ranking_curve, _ = plot_ranking_curve(training_history, evaluation_metrics, evaluation)
    model_vs_baselines, _ = plot_model_vs_baselines(evaluation_metrics, evaluation)
    reports = ingestion_report, split_report, training_history, evaluation_metrics, training_health
    outputs = RunOutputs(*reports, model_selection)
    return build_html_report(
        reporting.headline(evaluation_metrics, training_health, k),
        outputs,
        {
            "Learning curve": learning_curve,
            f"Validation recall and NDCG@{k} per epoch": ranking_curve,
            "Model against the baselines (test)": model_vs_baselines,
        },
        evaluation["ks"],
        {
            "run id": run_id,
            "manifest": f"run_manifest.json/{run_id}/run_manifest.json",
            "parameters": parameters,
        },
    )
