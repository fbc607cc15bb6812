"""The SparkSession of a Spark environment, created as Kedro documents (after_context_created).

An environment is a Spark environment when its configuration holds a
`spark.yml` (conf/spark has one; conf/base has none, so a plain `kedro run`
never imports PySpark). In a Spark environment the registered pipelines
prepare the data on Spark (pipeline_registry.py asks spark_env_active()).
"""

from __future__ import annotations

import logging

import click
from kedro.config import MissingConfigException
from kedro.framework.hooks import hook_impl

from twotower_pipeline.spark.session import SparkUnavailableError, start_spark_session

logger = logging.getLogger(__name__)

_active = False


def spark_env_active() -> bool:
    """Return whether the current Kedro context runs a Spark environment."""
    return _active


def _set_active(active: bool) -> None:
    """Record the engine; pipelines registered for the other one are registered again."""
    global _active
    if active == _active:
        return
    _active = active
    from kedro.framework.project import PACKAGE_NAME, pipelines

    if PACKAGE_NAME:
        # Kedro loads the registry once per process; a session of the other
        # engine in the same process (tests, notebooks) must not reuse it.
        pipelines.configure(f"{PACKAGE_NAME}.pipeline_registry")


class SparkHooks:
    """Starts the SparkSession from conf/<env>/spark.yml, only in a Spark environment."""

    @hook_impl
    def after_context_created(self, context) -> None:
        try:
            conf = context.config_loader["spark"]
        except MissingConfigException:
            conf = {}
        _set_active(bool(conf))
        if not conf:
            return
        try:
            session = start_spark_session(conf)
        except SparkUnavailableError as error:
            # Raised before any pipeline runs, so no error hook turns it into one line.
            raise click.ClickException(str(error)) from error
        logger.info(
            "Spark %s session on %s for environment %r",
            session.version,
            session.sparkContext.master,
            context.env,
        )
