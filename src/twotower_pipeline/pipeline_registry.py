"""The project's registered pipelines (names as in the README's table)."""

from kedro.pipeline import Pipeline, pipeline

from twotower_pipeline.pipelines import (
    evaluation,
    features,
    ingestion,
    negative_sampling,
    recommend,
    split,
    training,
)
from twotower_pipeline.spark.hooks import spark_env_active


def as_stage(stage: Pipeline, namespace: str) -> Pipeline:
    """Return the stage as a modular pipeline: its node names get the namespace, nothing else.

    kedro-viz draws each namespace as one node that expands on click, so the
    overview reads as the stages. Every dataset and parameter is mapped to
    itself: catalog names, `--params` keys and `--from-inputs` stay as they were;
    node names become `<stage>.<node>` (`kedro run --nodes=training.train_two_tower`).
    """
    params = {name for name in stage.inputs() if name.startswith("params:")}
    return pipeline(
        stage,
        namespace=namespace,
        inputs=stage.inputs() - params - {"parameters"},
        outputs=stage.all_outputs(),
        parameters=params,
    )


def register_pipelines() -> dict[str, Pipeline]:
    """Return the stage pipelines and the two compositions users run."""
    stages = {
        "ingestion": as_stage(ingestion.create_pipeline(), "ingestion"),
        "split": as_stage(split.create_pipeline(), "split"),
        "features": as_stage(features.create_pipeline(), "features"),
        "negative_sampling": as_stage(negative_sampling.create_pipeline(), "negative_sampling"),
        "training": as_stage(training.create_pipeline(), "training"),
        "evaluation": as_stage(evaluation.create_pipeline(), "evaluation"),
    }
    data_processing = stages["ingestion"] + stages["split"] + stages["features"]
    # Everything that depends on model parameters re-runs together, so a changed
    # neg_ratio can never meet stale negatives.
    train = stages["negative_sampling"] + stages["training"] + stages["evaluation"]
    registered = {
        **stages,
        "data_processing": data_processing,
        "train": train,
        "recommend": as_stage(recommend.create_pipeline(), "recommend"),  # not in __default__
        "__default__": data_processing + train,
    }
    if spark_env_active():  # conf/<env>/spark.yml: ingestion and the split run on PySpark
        from twotower_pipeline.pipelines.spark_data_processing import for_spark_env

        return for_spark_env(registered)
    return registered
