"""Ingestion and the split on PySpark, for Spark environments (`kedro run --env=spark`)."""

from .pipeline import PREPARED_ON_SPARK, create_pipeline, for_spark_env, on_spark

__all__ = ["PREPARED_ON_SPARK", "create_pipeline", "for_spark_env", "on_spark"]
