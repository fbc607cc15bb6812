from kedro.pipeline import Node, Pipeline

from .nodes import split


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                split,
                inputs=["interactions", "params:split"],
                outputs=["train_interactions", "val_interactions", "split_report"],
                name="split_train_validation",
            ),
        ]
    )
