"""The Spark path prepares the same data as the pandas path: rows, id maps, reports, messages.

One local[2] SparkSession for the module. Each case writes a small hand-made
log to Parquet, runs the pandas functions on it and the Spark ones on the same
file, writes the Spark tables as Parquet folders and reads them back with
pandas (as the `@pandas` loaders of `kedro run --env=spark` do).
"""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import yaml

from twotower_pipeline.data.interactions import IngestionSpec, encode_ids, validate_interactions
from twotower_pipeline.data.splitting import SplitSpec, split_interactions
from twotower_pipeline.spark import hooks as spark_hooks
from twotower_pipeline.spark.session import java_executable

pyspark = pytest.importorskip(
    "pyspark", reason='PySpark is not installed (pip install -e ".[spark]")'
)
if java_executable() is None:
    pytest.skip("no Java runtime (PySpark needs Java 17 or later)", allow_module_level=True)

from twotower_pipeline.spark.ingestion import (  # noqa: E402
    encode_ids_spark,
    validate_interactions_spark,
)
from twotower_pipeline.spark.split import split_interactions_spark  # noqa: E402

SPLIT_TABLES = ("train", "val", "test", "test_cold")


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]")
        .appName("spark-parity-test")
        # Tiny data: one shuffle partition, and no code generation or adaptive re-planning,
        # whose fixed costs would dominate every query.
        .config("spark.sql.shuffle.partitions", "1")
        .config("spark.sql.adaptive.enabled", "false")
        .config("spark.sql.codegen.wholeStage", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def _spec(source: str, **params) -> IngestionSpec:
    columns = params.pop("columns", {"user": "u", "item": "i", "timestamp": "t"})
    base = {
        "encoding": "utf-8",
        "id_type": "auto",
        "timestamp_unit": "auto",
        "timestamp_window": None,  # small synthetic times; the window is tested on pandas
        "rating_threshold": None,
        "rating_range": None,
    }
    return IngestionSpec.from_params({**base, "source": source, "columns": columns, **params})


def _split_spec(**params) -> SplitSpec:
    defaults = {
        "strategy": "leave_last_out",
        "min_train_interactions": 2,
        "temporal_quantiles": [0.6, 0.8],
        "cold_item_fraction": 0.0,
    }
    return SplitSpec.from_params({**defaults, **params})


def _raw_file(frame: pd.DataFrame, tmp_path, name: str = "raw.parquet") -> str:
    path = tmp_path / name
    frame.to_parquet(path, index=False)
    return str(path)


def _roundtrip(frame, tmp_path, name: str) -> pd.DataFrame:
    """Return a Spark table as the pandas loader of its Parquet folder reads it."""
    folder = tmp_path / f"{name}.parquet"
    shutil.rmtree(folder, ignore_errors=True)
    frame.write.mode("overwrite").parquet(str(folder))
    return pd.read_parquet(folder)


def _rows(frame: pd.DataFrame) -> list[tuple]:
    return sorted(map(tuple, frame.itertuples(index=False)))


def _assert_same_table(pandas_frame: pd.DataFrame, spark_frame: pd.DataFrame, name: str) -> None:
    assert list(spark_frame.columns) == list(pandas_frame.columns), name
    for column in pandas_frame.columns:
        assert spark_frame[column].dtype == pandas_frame[column].dtype, (name, column)
    assert _rows(spark_frame) == _rows(pandas_frame), name


def _both_paths(spark, tmp_path, spec: IngestionSpec, split_spec: SplitSpec, seed: int = 7):
    """Return ({table: frame}, reports) of the pandas path and of the Spark path."""
    clean, ingestion_report = validate_interactions(pd.read_parquet(spec.source), spec)
    interactions, user_index, item_index = encode_ids(clean)
    split = split_interactions(interactions, split_spec, seed)
    pandas_tables = {
        "interactions": interactions,
        "user_index": user_index,
        "item_index": item_index,
        **{name: getattr(split, name) for name in SPLIT_TABLES},
    }

    raw_spark = spark.read.parquet(spec.source)
    clean_s, ingestion_report_s = validate_interactions_spark(raw_spark, spec)
    interactions_s, user_index_s, item_index_s = encode_ids_spark(clean_s)
    # The split reads what encode wrote, as the pipeline does.
    interactions_read_back = _roundtrip(interactions_s, tmp_path, "interactions")
    interactions_s = spark.read.parquet(str(tmp_path / "interactions.parquet"))
    *split_s, split_report_s = split_interactions_spark(interactions_s, split_spec, seed)
    spark_tables = {
        "interactions": interactions_read_back,
        "user_index": _roundtrip(user_index_s, tmp_path, "user_index"),
        "item_index": _roundtrip(item_index_s, tmp_path, "item_index"),
        **{
            name: _roundtrip(frame, tmp_path, name)
            for name, frame in zip(SPLIT_TABLES, split_s, strict=True)
        },
    }
    return (
        (pandas_tables, ingestion_report, split.report),
        (spark_tables, ingestion_report_s, split_report_s),
    )


def _assert_parity(pandas_side, spark_side) -> None:
    tables, ingestion_report, split_report = pandas_side
    tables_s, ingestion_report_s, split_report_s = spark_side
    for name, frame in tables.items():
        _assert_same_table(frame, tables_s[name], name)
    weight_total = ingestion_report.pop("weight_total", None)
    weight_total_s = ingestion_report_s.pop("weight_total", None)
    # Summed in another order: equal to float64 rounding, not bit for bit.
    assert weight_total_s == (None if weight_total is None else pytest.approx(weight_total))
    assert ingestion_report_s == ingestion_report
    assert split_report_s == split_report


def _log_with_duplicates_and_ties() -> pd.DataFrame:
    """Ids with gaps, a repeated pair (weights summed, latest time kept), ties on time."""
    rows = [
        # user 30: a tie at t=400 between items 7 and 9 (the larger item is "later")
        (30, 5, 100, 1.0, 4.0),
        (30, 7, 400, 2.0, 5.0),
        (30, 9, 400, 1.0, 3.0),
        (30, 11, 200, 1.0, 4.0),
        (30, 5, 300, 0.5, 4.0),  # repeat of (30, 5): one positive at t=300, weight 1.5
        # user 10: five interactions
        (10, 5, 50, 1.0, 5.0),
        (10, 7, 60, 1.0, 2.0),
        (10, 11, 70, 1.0, 5.0),
        (10, 13, 80, 1.0, 4.0),
        (10, 15, 90, 1.0, 5.0),
        # user 20: too few to hold anything out
        (20, 5, 10, 1.0, 5.0),
        (20, 9, 20, 1.0, 4.0),
        # user 40: its held-out items are unseen in train (15 only at user 10's latest...)
        (40, 17, 500, 1.0, 5.0),
        (40, 5, 510, 1.0, 5.0),
        (40, 7, 520, 1.0, 5.0),
        (40, 19, 530, 1.0, 5.0),
        (40, 21, 540, 1.0, 5.0),
    ]
    frame = pd.DataFrame(rows, columns=["u", "i", "t", "w", "r"])
    # A raw export is not sorted.
    return frame.sample(frac=1.0, random_state=3).reset_index(drop=True)


def test_leave_last_out_gives_the_same_tables_and_reports(spark, tmp_path):
    source = _raw_file(_log_with_duplicates_and_ties(), tmp_path)
    spec = _spec(source, columns={"user": "u", "item": "i", "timestamp": "t", "weight": "w"})
    pandas_side, spark_side = _both_paths(spark, tmp_path, spec, _split_spec())
    assert pandas_side[2]["val_dropped_cold_items"] + pandas_side[2]["test_cold_interactions"] > 0
    assert pandas_side[1]["rows_dropped"]["duplicates_collapsed"] == 1
    _assert_parity(pandas_side, spark_side)
    # Part files read back in name order give the (user, timestamp, item) order.
    for name in ("interactions", *SPLIT_TABLES):
        read_back = spark_side[0][name].reset_index(drop=True)
        in_order = read_back.sort_values(["user", "timestamp", "item"]).reset_index(drop=True)
        pd.testing.assert_frame_equal(read_back, in_order, obj=name)


def _random_log(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """Return a log of about `n` rows: 30 users, 40 items, ids with gaps, ratings 1-5."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "u": rng.integers(0, 30, n) * 3 + 1,
            "i": rng.integers(0, 40, n) * 2,
            "t": rng.integers(0, 60, n) * 1000 + 1_600_000_000,
            "r": rng.integers(1, 6, n).astype(float),
        }
    )


def test_cold_items_rating_threshold_and_milliseconds_give_the_same_split(spark, tmp_path):
    log = _random_log()
    log["t"] = log["t"] * 1000 + 123  # epoch milliseconds
    source = _raw_file(log, tmp_path)
    spec = _spec(
        source,
        columns={"user": "u", "item": "i", "timestamp": "t", "rating": "r"},
        rating_threshold=3.0,
    )
    split_spec = _split_spec(cold_item_fraction=0.2)
    pandas_side, spark_side = _both_paths(spark, tmp_path, spec, split_spec, seed=11)
    assert pandas_side[2]["test_cold_interactions"] > 0
    assert pandas_side[1]["rows_dropped"]["below_rating_threshold"] > 0
    assert pandas_side[1]["timestamp_unit"] == "ms"
    _assert_parity(pandas_side, spark_side)


def test_global_temporal_cutoffs_are_the_same(spark, tmp_path):
    # 400 rows over 60 distinct times: each cutoff rank lands inside a tie.
    source = _raw_file(_random_log(), tmp_path)
    split_spec = _split_spec(strategy="global_temporal", temporal_quantiles=[0.55, 0.85])
    pandas_side, spark_side = _both_paths(spark, tmp_path, _spec(source), split_spec)
    _assert_parity(pandas_side, spark_side)


def test_text_ids_and_iso_times_are_encoded_in_the_same_sorted_order(spark, tmp_path):
    frame = pd.DataFrame(
        {
            "u": ["bob", "alice", "bob", "carol", "alice", "bob", "alice", "carol", "carol"] * 2,
            "i": ["x", "y", "z", "x", "w", "w", "x", "y", "z"] * 2,
            "t": [f"2021-03-{d:02d}T10:00:00Z" for d in range(1, 19)],
        }
    )
    source = _raw_file(frame, tmp_path)
    split_spec = _split_spec(min_train_interactions=1)
    pandas_side, spark_side = _both_paths(spark, tmp_path, _spec(source), split_spec)
    assert pandas_side[0]["user_index"]["user_id"].tolist() == ["alice", "bob", "carol"]
    assert pandas_side[1]["timestamp_unit"] == "iso"
    _assert_parity(pandas_side, spark_side)


def _errors(spark, frame: pd.DataFrame, tmp_path, **spec_params) -> tuple[str, str]:
    source = _raw_file(frame, tmp_path)
    spec = _spec(source, **spec_params)
    messages = []
    for run in (
        lambda: validate_interactions(pd.read_parquet(source), spec),
        lambda: validate_interactions_spark(spark.read.parquet(source), spec),
    ):
        with pytest.raises(ValueError) as error:
            run()
        messages.append(str(error.value))
    return messages[0], messages[1]


def test_a_null_user_id_is_reported_alike(spark, tmp_path):
    frame = pd.DataFrame({"u": [1.0, None, 3.0, None], "i": [1, 2, 3, 4], "t": [1, 2, 3, 4]})
    pandas_message, spark_message = _errors(spark, frame, tmp_path)
    assert "2 null value(s)" in pandas_message
    assert spark_message == pandas_message


def test_an_unparsable_timestamp_is_reported_alike(spark, tmp_path):
    frame = pd.DataFrame(
        {"u": [1, 2, 3], "i": [1, 2, 3], "t": ["2021-01-01", "yesterday", "2021-01-03"]}
    )
    pandas_message, spark_message = _errors(spark, frame, tmp_path)
    assert "'yesterday'" in pandas_message
    assert spark_message == pandas_message


def test_a_missing_column_is_reported_alike(spark, tmp_path):
    frame = pd.DataFrame({"u": [1, 2], "item": [1, 2], "t": [1, 2]})
    pandas_message, spark_message = _errors(spark, frame, tmp_path)
    assert "'i' (item)" in pandas_message
    assert spark_message == pandas_message


def test_ids_mixing_numbers_and_text_and_ratings_out_of_range_are_reported_alike(spark, tmp_path):
    mixed = pd.DataFrame({"u": ["12", "bob", "7"], "i": [1, 2, 3], "t": [1, 2, 3]})
    pandas_message, spark_message = _errors(spark, mixed, tmp_path)
    assert "2 numeric and 1 text id(s)" in pandas_message
    assert spark_message == pandas_message
    ratings = pd.DataFrame({"u": [1, 2, 3], "i": [1, 2, 3], "t": [1, 2, 3], "r": [1.0, 7.0, 9.0]})
    columns = {"user": "u", "item": "i", "timestamp": "t", "rating": "r"}
    pandas_message, spark_message = _errors(
        spark, ratings, tmp_path, columns=columns, rating_range=[1, 5]
    )
    assert "2 rating(s) outside" in pandas_message
    assert spark_message == pandas_message


def test_an_empty_validation_set_is_reported_alike(spark, tmp_path):
    frame = pd.DataFrame({"u": [1, 1, 2], "i": [1, 2, 3], "t": [1, 2, 3]})
    source = _raw_file(frame, tmp_path)
    spec = _spec(source)
    clean, _ = validate_interactions(pd.read_parquet(source), spec)
    interactions, _, _ = encode_ids(clean)
    with pytest.raises(ValueError) as pandas_error:
        split_interactions(interactions, _split_spec(), 7)
    clean_s, _ = validate_interactions_spark(spark.read.parquet(source), spec)
    interactions_s, _, _ = encode_ids_spark(clean_s)
    with pytest.raises(ValueError) as spark_error:
        split_interactions_spark(interactions_s, _split_spec(), 7)
    assert str(spark_error.value) == str(pandas_error.value)


@pytest.mark.integration
def test_kedro_run_in_a_spark_environment_writes_what_the_pandas_path_writes(
    spark, make_project_copy, kedro_run
):
    """`data_processing` in a Spark environment (the smoke log), in a project copy."""
    project = make_project_copy("spark_env")
    env = project / "conf" / "spark_smoke"
    shutil.copytree(project / "conf" / "spark", env)
    for name in ("globals.yml", "parameters.yml"):
        shutil.copy(project / "conf" / "smoke" / name, env / name)
    catalog = yaml.safe_load((env / "catalog.yml").read_text())
    smoke_catalog = yaml.safe_load((project / "conf" / "smoke" / "catalog.yml").read_text())
    catalog["raw_interactions"]["spec"] = smoke_catalog["raw_interactions"]["spec"]
    (env / "catalog.yml").write_text(yaml.safe_dump(catalog))

    try:
        kedro_run(project, pipeline="data_processing", env="spark_smoke")
    finally:
        # Later tests of this process that build pipelines without a session get pandas ones.
        spark_hooks._set_active(False)

    def written(name: str) -> pd.DataFrame:
        (folder,) = project.glob(f"data/**/spark/{name}.parquet")
        return pd.read_parquet(folder)

    raw = pd.read_parquet(project / "data" / "01_raw" / "synthetic_interactions_smoke.parquet")
    params = yaml.safe_load((project / "conf" / "base" / "parameters_ingestion.yml").read_text())
    spec = IngestionSpec.from_params({**params["ingestion"], "source": "raw"})
    clean, _ = validate_interactions(raw, spec)
    interactions, user_index, item_index = encode_ids(clean)
    expected = {"interactions": interactions, "user_index": user_index, "item_index": item_index}
    for name, frame in expected.items():
        _assert_same_table(frame, written(name), name)
    assert len(written("train_interactions")) + len(written("val_interactions")) <= len(
        interactions
    )
    # The pandas nodes after the split ran on what Spark wrote.
    assert list(project.glob("data/**/item_feature_tokens.parquet"))
