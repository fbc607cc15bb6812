"""Evaluation on test (validation and the cold sets beside it): metrics, health, plots, report."""

from kedro.pipeline import Node, Pipeline

from twotower_pipeline.evaluation.comparison import compare_with_baselines
from twotower_pipeline.pipelines.split.pipeline import SPLIT_TABLES

from .index_nodes import build_item_index, evaluate_item_index
from .nodes import (
    diagnose_training,
    evaluate_baselines,
    evaluate_model,
    plot_learning_curve,
    plot_model_vs_baselines,
    plot_ranking_curve,
    recommend,
    write_report,
)
from .report_nodes import write_html_report


def _scoring() -> Pipeline:
    """The model and the baselines scored under one protocol, side by side."""
    return Pipeline(
        [
            Node(
                evaluate_model,
                inputs=[
                    "two_tower_model",
                    "model_config",
                    *SPLIT_TABLES,
                    "params:seed",
                    "params:neg_ratio",
                    "params:evaluation",
                ],
                outputs="model_metrics",
                name="evaluate_model",
            ),
            Node(
                evaluate_baselines,
                inputs=[
                    *SPLIT_TABLES,
                    "user_index",
                    "item_index",
                    "params:seed",
                    "params:evaluation",
                ],
                outputs="baseline_metrics",
                name="evaluate_baselines",
            ),
            Node(
                compare_with_baselines,
                inputs=["model_metrics", "baseline_metrics", "ann_metrics"],
                outputs="evaluation_metrics",
                name="compare_with_baselines",
            ),
        ]
    )


def _retrieval() -> Pipeline:
    """The item index, its recall against exact search, and the recommendations."""
    return Pipeline(
        [
            Node(
                build_item_index,
                inputs=["item_embeddings", "params:index", "params:seed"],
                outputs="item_ann_index",
                name="build_item_index",
            ),
            Node(
                evaluate_item_index,
                inputs=[
                    "item_ann_index",
                    "item_embeddings",
                    "user_embeddings",
                    "test_interactions",
                    "params:index",
                ],
                outputs="ann_metrics",
                name="evaluate_item_index",
            ),
            Node(
                recommend,
                inputs=[
                    "two_tower_model",
                    "model_config",
                    "interactions",
                    "user_index",
                    "item_index",
                    "params:evaluation",
                    "item_ann_index",
                    "user_embeddings",
                    "params:index",
                ],
                outputs="recommendations",
                name="recommend",
            ),
        ]
    )


def _diagnosis() -> Pipeline:
    """The health report and the plots."""
    return Pipeline(
        [
            Node(
                diagnose_training,
                inputs=[
                    "training_history",
                    "model_config",
                    "item_embeddings",
                    "evaluation_metrics",
                    "params:neg_ratio",
                    "params:evaluation",
                    "params:training",
                    "model_selection",
                ],
                outputs="training_health",
                name="diagnose_training",
            ),
            Node(
                plot_learning_curve,
                inputs=["training_history", "model_config", "params:neg_ratio"],
                outputs=["learning_curve_png", "learning_curve_plotly"],
                name="plot_learning_curve",
            ),
            Node(
                plot_ranking_curve,
                inputs=["training_history", "evaluation_metrics", "params:evaluation"],
                outputs=["ranking_curve_png", "ranking_curve_plotly"],
                name="plot_ranking_curve",
            ),
            Node(
                plot_model_vs_baselines,
                inputs=["evaluation_metrics", "params:evaluation"],
                outputs=["model_vs_baselines_png", "model_vs_baselines_plotly"],
                name="plot_model_vs_baselines",
            ),
        ]
    )


def _reports() -> Pipeline:
    """report.md and report.html."""
    return Pipeline(
        [
            # Depends on the health report, so it runs last and its summary ends the log.
            Node(
                write_report,
                inputs=[
                    "ingestion_report",
                    "split_report",
                    "training_history",
                    "evaluation_metrics",
                    "training_health",
                    "params:neg_ratio",
                    "params:evaluation",
                    "run_id",
                    "model_selection",
                ],
                outputs="run_report",
                name="write_report",
            ),
            Node(
                write_html_report,
                inputs=[
                    "ingestion_report",
                    "split_report",
                    "training_history",
                    "evaluation_metrics",
                    "training_health",
                    "model_config",
                    "params:neg_ratio",
                    "parameters",
                    "run_id",
                    "params:evaluation",
                    "model_selection",
                ],
                outputs="report_html",
                name="write_html_report",
            ),
        ]
    )


def create_pipeline(**kwargs) -> Pipeline:
    return _scoring() + _retrieval() + _diagnosis() + _reports()
