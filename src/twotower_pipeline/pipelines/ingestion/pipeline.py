from kedro.pipeline import Node, Pipeline

from .nodes import encode, validate


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                validate,
                inputs=["raw_interactions", "params:ingestion"],
                outputs=["clean_interactions", "ingestion_report"],
                name="validate_interactions",
            ),
            Node(
                encode,
                inputs="clean_interactions",
                outputs=["interactions", "user_index", "item_index"],
                name="encode_ids",
            ),
        ]
    )
