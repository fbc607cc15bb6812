"""Recommend: a file of histories in the raw log's layout -> their top-K, from the saved model."""

from kedro.pipeline import Node, Pipeline

from .nodes import recommend_for_histories


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                recommend_for_histories,
                inputs=[
                    "recommend_histories",
                    "two_tower_model",
                    "model_config",
                    "item_index",
                    "train_interactions",
                    "params:ingestion",
                    "params:recommend",
                ],
                outputs="history_recommendations",
                name="recommend_for_histories",
            )
        ]
    )
