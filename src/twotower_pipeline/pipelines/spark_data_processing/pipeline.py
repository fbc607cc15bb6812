"""Spark data preparation, and how a Spark environment's pipelines are composed from it.

The Spark nodes write the prepared tables as `<name>@spark` (partitioned
Parquet through kedro-datasets' Spark dataset); the pandas nodes that read
them get `<name>@pandas`, a pandas loader of the same files (Kedro's
transcoding, conf/spark/catalog.yml).
"""

from kedro.pipeline import Node, Pipeline, pipeline

from twotower_pipeline.pipelines.split.pipeline import SPLIT_TABLES

from .nodes import encode_on_spark, split_on_spark, validate_on_spark

# Written by Spark, read back by pandas nodes: a transcoded pair each in conf/spark/catalog.yml.
PREPARED_ON_SPARK = ("interactions", "user_index", "item_index", *SPLIT_TABLES)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                validate_on_spark,
                inputs=["raw_interactions", "params:ingestion"],
                outputs=["clean_interactions", "ingestion_report"],
                name="validate_interactions_on_spark",
            ),
            Node(
                encode_on_spark,
                inputs="clean_interactions",
                outputs=["interactions@spark", "user_index@spark", "item_index@spark"],
                name="encode_ids_on_spark",
            ),
            Node(
                split_on_spark,
                inputs=["interactions@spark", "params:split", "params:seed"],
                outputs=[
                    "train_interactions@spark",
                    "val_interactions@spark",
                    "test_interactions@spark",
                    "test_cold_interactions@spark",
                    "split_report",
                ],
                name="split_on_spark",
            ),
        ]
    )


def _plain(name: str) -> str:
    return name.split("@", 1)[0]


def on_spark(registered: Pipeline, spark_nodes: Pipeline) -> Pipeline:
    """Return `registered` with its preparation nodes run on Spark and the rest fed by pandas.

    A node whose outputs the Spark nodes also write is replaced by them; the
    other nodes read the prepared tables through their `@pandas` loaders.
    """
    on_spark_outputs = {_plain(name) for name in spark_nodes.all_outputs()}
    replaced = {o for n in registered.nodes if set(n.outputs) & on_spark_outputs for o in n.outputs}
    kept = Pipeline([n for n in registered.nodes if not set(n.outputs) & on_spark_outputs])
    chosen = Pipeline([n for n in spark_nodes.nodes if {_plain(o) for o in n.outputs} & replaced])
    to_pandas = {name: f"{name}@pandas" for name in kept.inputs() if name in PREPARED_ON_SPARK}
    return chosen + pipeline(kept, inputs=to_pandas)


def for_spark_env(registered: dict[str, Pipeline]) -> dict[str, Pipeline]:
    """Return every registered pipeline with its data preparation on Spark (on_spark)."""
    spark_nodes = create_pipeline()
    return {name: on_spark(pipe, spark_nodes) for name, pipe in registered.items()}
