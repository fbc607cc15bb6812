from kedro.pipeline import Node, Pipeline

from .nodes import train_two_tower


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                train_two_tower,
                inputs=[
                    "train_examples",
                    "train_interactions",
                    "val_interactions",
                    "user_index",
                    "item_index",
                    "params:seed",
                    "params:neg_ratio",
                    "params:logit_scale",
                    "params:num_epochs",
                    "params:model",
                    "params:training",
                    "params:negative_sampling",
                    "params:evaluation",
                    "item_feature_tokens",
                    "user_feature_tokens",
                    "feature_encoders",
                    "run_id",
                    "params:model_selection",
                    "params:split",
                    "run_environment",
                ],
                outputs=[
                    "two_tower_model",
                    "model_config",
                    "training_history",
                    "user_embeddings",
                    "item_embeddings",
                    "model_selection",
                ],
                name="train_two_tower",
            ),
        ]
    )
