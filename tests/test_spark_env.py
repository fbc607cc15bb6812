"""The Spark environment: its wiring, its catalog, and its one-line errors when Spark is missing.

No SparkSession is started here (tests/test_spark_parity.py does that).
"""

from __future__ import annotations

import builtins
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from kedro.config import MissingConfigException

from twotower_pipeline.spark import hooks as spark_hooks
from twotower_pipeline.spark import session as spark_session
from twotower_pipeline.spark.session import SparkUnavailableError, start_spark_session

ROOT = Path(__file__).resolve().parents[1]


def test_without_pyspark_the_error_is_one_line_saying_what_to_install(monkeypatch):
    real_import = builtins.__import__

    def no_pyspark(name, *args, **kwargs):
        if name == "pyspark" or name.startswith("pyspark."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyspark)
    with pytest.raises(SparkUnavailableError) as error:
        start_spark_session({"spark.master": "local[1]"})
    message = str(error.value)
    assert "\n" not in message
    assert 'pip install -e ".[spark]"' in message


def test_without_java_the_error_is_one_line_saying_what_to_install(monkeypatch):
    pytest.importorskip("pyspark")
    monkeypatch.setattr(spark_session, "java_executable", lambda: None)
    with pytest.raises(SparkUnavailableError) as error:
        start_spark_session({"spark.master": "local[1]"})
    message = str(error.value)
    assert "\n" not in message
    assert "Java 17" in message


def test_java_home_without_a_java_binary_counts_as_no_java(monkeypatch, tmp_path):
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    assert spark_session.java_executable() is None


class _Config(dict):
    def __getitem__(self, key):
        if key not in self:
            raise MissingConfigException(f"no {key} config")
        return super().__getitem__(key)


def test_an_environment_without_spark_yml_starts_no_spark(monkeypatch):
    started = []
    monkeypatch.setattr(spark_hooks, "start_spark_session", started.append)
    monkeypatch.setattr(spark_hooks, "_active", False)
    context = SimpleNamespace(config_loader=_Config(), env="smoke")
    spark_hooks.SparkHooks().after_context_created(context)
    assert started == []
    assert not spark_hooks.spark_env_active()


def test_a_spark_environment_without_spark_installed_ends_with_its_one_line(monkeypatch):
    import click

    def unavailable(conf):
        raise SparkUnavailableError("install it")

    monkeypatch.setattr(spark_hooks, "start_spark_session", unavailable)
    monkeypatch.setattr(spark_hooks, "_set_active", lambda active: None)
    context = SimpleNamespace(config_loader=_Config(spark={"spark.master": "local[1]"}), env="x")
    with pytest.raises(click.ClickException, match="^install it$"):
        spark_hooks.SparkHooks().after_context_created(context)


def _spark_catalog() -> dict:
    return yaml.safe_load((ROOT / "conf" / "spark" / "catalog.yml").read_text())


def test_each_prepared_table_is_a_spark_and_pandas_pair_over_the_same_folder():
    pytest.importorskip("pyspark")
    from twotower_pipeline.pipelines.spark_data_processing import PREPARED_ON_SPARK

    catalog = _spark_catalog()
    for name in PREPARED_ON_SPARK:
        spark_entry, pandas_entry = catalog[f"{name}@spark"], catalog[f"{name}@pandas"]
        assert spark_entry["type"] == "spark.SparkDatasetV2", name
        assert pandas_entry["type"] == "pandas.ParquetDataset", name
        assert spark_entry["filepath"] == pandas_entry["filepath"], name


def test_the_spark_default_pipeline_prepares_on_spark_and_continues_on_pandas():
    pytest.importorskip("pyspark")
    from twotower_pipeline.pipeline_registry import register_pipelines
    from twotower_pipeline.pipelines.spark_data_processing import (
        PREPARED_ON_SPARK,
        create_pipeline,
        for_spark_env,
    )

    registered = register_pipelines()
    on_spark = for_spark_env(registered)
    default = on_spark["__default__"]
    spark_nodes = {node.name for node in create_pipeline().nodes}
    names = {node.name for node in default.nodes}
    assert spark_nodes <= names
    # Every pandas node that wrote a prepared table is gone; every other node stays.
    replaced = {
        node.name
        for node in registered["__default__"].nodes
        if {o.split("@")[0] for o in node.outputs} & {*PREPARED_ON_SPARK, "clean_interactions"}
    }
    assert names == (({n.name for n in registered["__default__"].nodes} - replaced) | spark_nodes)
    # Pandas nodes read the prepared tables through their @pandas loaders, Spark nodes @spark.
    for node in default.nodes:
        for name in node.inputs:
            if name.split("@")[0] in PREPARED_ON_SPARK:
                wanted = "@spark" if node.name in spark_nodes else "@pandas"
                assert name.endswith(wanted), (node.name, name)
    catalog = _spark_catalog()
    for name in default.datasets():
        if "@" in name:
            assert name in catalog, name
    # The training pipeline alone reads what the Spark preparation wrote.
    assert "train_interactions@pandas" in on_spark["train"].inputs()
