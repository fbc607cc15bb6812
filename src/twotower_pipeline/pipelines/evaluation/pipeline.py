from kedro.pipeline import Node, Pipeline

from .nodes import compare_with_baselines, evaluate_baselines, evaluate_model, recommend


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                evaluate_model,
                inputs=["two_tower_model", "model_config", "train_interactions",
                        "val_interactions", "params:seed", "params:evaluation"],
                outputs="model_metrics",
                name="evaluate_model",
            ),
            Node(
                evaluate_baselines,
                inputs=["train_interactions", "val_interactions", "user_index", "item_index",
                        "params:seed", "params:evaluation"],
                outputs="baseline_metrics",
                name="evaluate_baselines",
            ),
            Node(
                compare_with_baselines,
                inputs=["model_metrics", "baseline_metrics"],
                outputs="evaluation_metrics",
                name="compare_with_baselines",
            ),
            Node(
                recommend,
                inputs=["two_tower_model", "model_config", "train_interactions", "user_index",
                        "item_index", "params:evaluation"],
                outputs="recommendations",
                name="recommend",
            ),
        ]
    )
