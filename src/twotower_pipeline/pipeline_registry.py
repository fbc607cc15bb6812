"""The project's registered pipelines (names as in the README's table)."""

from kedro.pipeline import Pipeline

from twotower_pipeline.pipelines import (
    evaluation,
    features,
    ingestion,
    negative_sampling,
    split,
    training,
)
from twotower_pipeline.spark_hooks import spark_env_active


def register_pipelines() -> dict[str, Pipeline]:
    """Return the stage pipelines and the two compositions users run."""
    stages = {
        "ingestion": ingestion.create_pipeline(),
        "split": split.create_pipeline(),
        "features": features.create_pipeline(),
        "negative_sampling": negative_sampling.create_pipeline(),
        "training": training.create_pipeline(),
        "evaluation": evaluation.create_pipeline(),
    }
    data_processing = stages["ingestion"] + stages["split"] + stages["features"]
    # Everything that depends on model parameters re-runs together, so a changed
    # neg_ratio can never meet stale negatives.
    train = stages["negative_sampling"] + stages["training"] + stages["evaluation"]
    registered = {
        **stages,
        "data_processing": data_processing,
        "train": train,
        "__default__": data_processing + train,
    }
    if spark_env_active():  # conf/<env>/spark.yml: ingestion and the split run on PySpark
        from twotower_pipeline.pipelines.spark_data_processing import for_spark_env

        return for_spark_env(registered)
    return registered
