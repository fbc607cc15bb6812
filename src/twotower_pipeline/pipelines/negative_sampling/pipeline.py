from kedro.pipeline import Node, Pipeline

from .nodes import sample_training_examples


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                sample_training_examples,
                inputs=[
                    "train_interactions",
                    "item_index",
                    "params:neg_ratio",
                    "params:seed",
                    "params:negative_sampling",
                ],
                outputs="train_examples",
                name="sample_negatives",
            ),
        ]
    )
