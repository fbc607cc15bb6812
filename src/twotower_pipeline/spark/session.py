"""Starting the SparkSession of a Spark environment, with one clear line when it cannot start.

No Kedro here: the hook in spark/hooks.py reads `conf/<env>/spark.yml` and
calls start_spark_session with its keys.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from twotower_pipeline.config.errors import RunFailedError

INSTALL_PYSPARK = 'pip install -e ".[spark]"'


class SparkUnavailableError(RunFailedError):
    """The Spark environment was asked for, but PySpark or Java is missing."""


def java_executable() -> str | None:
    """Return the java that PySpark will launch (JAVA_HOME first, then PATH), or None."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = os.path.join(java_home, "bin", "java")
        return candidate if os.access(candidate, os.X_OK) else None
    return shutil.which("java")


def start_spark_session(conf: dict[str, Any]) -> Any:
    """Return the SparkSession built from `conf` (spark.yml's keys), started if none runs.

    Raises SparkUnavailableError, whose message is one line saying what to
    install, when PySpark is not installed or no Java runtime can be found.
    """
    try:
        from pyspark import SparkConf
        from pyspark.sql import SparkSession
    except ImportError as error:
        raise SparkUnavailableError(
            f"this is a Spark environment and PySpark is not installed: run {INSTALL_PYSPARK} "
            "(Java 17 or later must be installed too)"
        ) from error
    if java_executable() is None:
        raise SparkUnavailableError(
            "this is a Spark environment and no Java runtime was found (JAVA_HOME or java on "
            "PATH): install Java 17 or later, e.g. `apt-get install openjdk-17-jre-headless`"
        )
    spark_conf = SparkConf().setAll([(key, str(value)) for key, value in conf.items()])
    try:
        session = SparkSession.builder.config(conf=spark_conf).getOrCreate()
    except Exception as error:  # the JVM did not start: PySpark's own error is pages long
        raise SparkUnavailableError(
            f"the SparkSession did not start ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); PySpark 4 needs Java 17 or "
            "later (`java -version`)"
        ) from error
    session.sparkContext.setLogLevel("WARN")
    return session
