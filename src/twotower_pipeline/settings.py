"""Project settings: config loading and hooks."""

from twotower_pipeline.config.loader import EnvironmentConfigLoader
from twotower_pipeline.hooks.mlflow import MlflowTrackingHooks
from twotower_pipeline.hooks.node_logging import NodeSummaryHooks
from twotower_pipeline.hooks.prepared_data import PreparedDataHooks
from twotower_pipeline.hooks.provenance import RunManifestHooks
from twotower_pipeline.hooks.readable_errors import ReadableErrorHooks
from twotower_pipeline.hooks.rollback import OutputRollbackHooks
from twotower_pipeline.hooks.run_lock import RunLockHooks
from twotower_pipeline.hooks.settings import SettingsHooks
from twotower_pipeline.hooks.threads import ThreadHooks
from twotower_pipeline.spark.hooks import SparkHooks

# pluggy calls the last registered first: the missing-data check runs before
# anything is kept aside for a rollback, and a failed run's outputs are restored
# before its error is turned into a one-line message.
HOOKS = (
    # First registered, so called last: logs the run manifest once it is written.
    MlflowTrackingHooks(),  # only when kedro-mlflow has an MLflow run open (conf/base/mlflow.yml)
    ReadableErrorHooks(),
    # A hook wrapper, so wherever it is listed: the environment's lock is taken before every
    # other before_pipeline_run hook and released after every end-of-run hook (the rollback's).
    RunLockHooks(),
    OutputRollbackHooks(),
    RunManifestHooks(),  # provenance checked before anything is kept aside
    PreparedDataHooks(),
    NodeSummaryHooks(),
    ThreadHooks(),  # torch's threads: the cores other processes leave free
    SparkHooks(),  # a SparkSession, only in an environment with a spark.yml (conf/spark)
    # Last registered, so called first: no SparkSession, MLflow run or kept file for a
    # run whose parameters are wrong (config/schema.py).
    SettingsHooks(),
)

# Every environment but the default writes under data/<env>/ (config/loader.py).
CONFIG_LOADER_CLASS = EnvironmentConfigLoader
# Environments override base key by key ("soft" merge), so conf/smoke can change
# one entry of a block without restating the rest of it.
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    "merge_strategy": {"parameters": "soft", "catalog": "soft", "globals": "soft"},
    # conf/<env>/spark.yml configures the SparkSession of a Spark environment (spark/hooks.py).
    "config_patterns": {"spark": ["spark*", "spark*/**"]},
    # ${project_root:} (config/loader.py) names the MLflow store by the project's absolute
    # path: MLflow caches a store per URI string, so a relative sqlite URI would send a
    # second project's runs in the same process to the first one's, and a session started
    # from notebooks/ would open a store there.
}
