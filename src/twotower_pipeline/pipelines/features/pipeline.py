from kedro.pipeline import Node, Pipeline

from twotower_pipeline.pipelines.split.pipeline import SPLIT_TABLES

from .nodes import encode_features, score_oracle


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                encode_features,
                inputs=[
                    "train_interactions",
                    "item_index",
                    "user_index",
                    "item_features",
                    "user_features",
                    "params:features",
                ],
                outputs=[
                    "item_feature_tokens",
                    "user_feature_tokens",
                    "feature_encoders",
                    "features_report",
                ],
                name="encode_features",
            ),
            Node(
                score_oracle,
                inputs=[
                    "synthetic_item_taste",
                    "synthetic_user_taste",
                    "user_index",
                    "item_index",
                    *SPLIT_TABLES,
                    "params:oracle",
                    "params:evaluation",
                    "params:seed",
                ],
                outputs="oracle_metrics",
                name="score_oracle",
            ),
        ]
    )
