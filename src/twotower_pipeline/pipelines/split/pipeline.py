from kedro.pipeline import Node, Pipeline

from .nodes import split

# The split's four tables, in the order the split writes them and the later nodes read them.
SPLIT_TABLES = (
    "train_interactions",
    "val_interactions",
    "test_interactions",
    "test_cold_interactions",
)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                split,
                inputs=["interactions", "params:split", "params:seed"],
                outputs=[*SPLIT_TABLES, "split_report"],
                name="split_train_validation_test",
            ),
        ]
    )
