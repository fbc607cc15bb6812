from kedro.pipeline import Node, Pipeline

from .nodes import split


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                split,
                inputs=["interactions", "params:split", "params:seed"],
                outputs=[
                    "train_interactions",
                    "val_interactions",
                    "test_interactions",
                    "test_cold_interactions",
                    "split_report",
                ],
                name="split_train_validation_test",
            ),
        ]
    )
