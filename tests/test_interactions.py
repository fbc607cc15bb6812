"""Ingestion: every supported format, the column mapping, and one clear error per bad input.

Raw files are small, hand-made and written in tmp_path; the MovieLens formats
are read with the catalog entries the project ships in conf/movielens*.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from kedro.io import DatasetError
from kedro_datasets.pandas import CSVDataset, ParquetDataset

from twotower_pipeline.config.errors import SettingsError
from twotower_pipeline.config.schema import check_parameters
from twotower_pipeline.data.ingestion_report import InvalidInteractionsError
from twotower_pipeline.data.interactions import (
    IngestionSpec,
    encode_ids,
    parse_timestamps,
    validate_interactions,
)
from twotower_pipeline.io.load_failures import describe_load_failure
from twotower_pipeline.io.raw_reader import configure_raw_reader as _configure_raw_reader

ROOT = Path(__file__).resolve().parents[1]
# MovieLens 100K is never part of the repository: ML100K_PATH, or the shared data beside it.
ML_100K = Path(
    os.environ.get("ML100K_PATH", ROOT.parent / "shared" / "data" / "ml-100k" / "u.data")
)


# conf/base's ingestion settings, without the time window (these logs use small times;
# the window has tests of its own).
BASE_INGESTION = {
    "columns": {"user": "user_id", "item": "item_id", "timestamp": "timestamp"},
    "encoding": "utf-8",
    "id_type": "auto",
    "timestamp_unit": "auto",
    "timestamp_window": None,
    "rating_threshold": None,
    "rating_range": None,
}


def spec(source: str = "log.csv", **params) -> IngestionSpec:
    return IngestionSpec.from_params({**BASE_INGESTION, "source": source, **params})


def env_conf(env: str, name: str) -> dict:
    return yaml.safe_load((ROOT / "conf" / env / f"{name}.yml").read_text())


def env_raw_dataset(env: str, filepath: Path) -> CSVDataset:
    """The raw_interactions entry of a shipped environment, pointed at `filepath`."""
    entry = env_conf(env, "catalog")["raw_interactions"]
    return CSVDataset(filepath=str(filepath), load_args=entry.get("load_args"))


def ingest(raw: pd.DataFrame, ingestion: IngestionSpec):
    clean, report = validate_interactions(raw, ingestion)
    interactions, user_index, item_index = encode_ids(clean)
    return clean, report, interactions, user_index, item_index


# --- formats ------------------------------------------------------------------


def test_csv_with_a_column_mapping_is_read_with_original_ids_kept(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("who,what,when\nalice,book,100\nbob,book,200\nalice,pen,300\n")
    raw = CSVDataset(filepath=str(path)).load()
    clean, report, interactions, users, items = ingest(
        raw, spec(str(path), columns={"user": "who", "item": "what", "timestamp": "when"})
    )
    assert report["rows_read"] == 3 and report["users"] == 2 and report["items"] == 2
    assert users["user_id"].tolist() == ["alice", "bob"]
    assert items["item_id"].tolist() == ["book", "pen"]
    # alice (0): book@100, pen@300; bob (1): book@200 -- in (user, time) order.
    assert interactions[["user", "item", "timestamp"]].values.tolist() == [
        [0, 0, 100],
        [0, 1, 300],
        [1, 0, 200],
    ]
    assert interactions.dtypes.to_dict() == {
        "user": np.int32,
        "item": np.int32,
        "timestamp": np.int64,
    }


def test_tsv_without_header_is_read_through_load_args(tmp_path):
    path = tmp_path / "events.tsv"
    path.write_text("1\t10\t5\n2\t10\t6\n")
    raw = CSVDataset(
        filepath=str(path), load_args={"sep": "\t", "header": None, "names": ["u", "i", "t"]}
    ).load()
    _, report, interactions, _, _ = ingest(
        raw, spec(str(path), columns={"user": "u", "item": "i", "timestamp": "t"})
    )
    assert report["interactions"] == 2
    assert interactions["timestamp"].tolist() == [5, 6]


def test_parquet_with_default_column_names_needs_no_mapping(tmp_path):
    path = tmp_path / "events.parquet"
    frame = pd.DataFrame({"user_id": [7, 7, 3], "item_id": [1, 2, 1], "timestamp": [3, 2, 1]})
    ParquetDataset(filepath=str(path)).save(frame)
    _, report, interactions, users, _ = ingest(ParquetDataset(filepath=str(path)).load(), spec())
    assert users["user_id"].tolist() == [3, 7]
    assert interactions[["user", "item", "timestamp"]].values.tolist() == [
        [0, 0, 1],
        [1, 1, 2],
        [1, 0, 3],
    ]


def test_movielens_100k_u_data_is_read_by_the_movielens_env(tmp_path):
    path = tmp_path / "u.data"
    path.write_text("196\t242\t3\t881250949\n186\t302\t3\t891717742\n196\t302\t1\t878887116\n")
    raw = env_raw_dataset("movielens", path).load()
    ingestion = spec(
        str(path), **{k: v for k, v in env_conf("movielens", "parameters")["ingestion"].items()}
    )
    _, report, interactions, users, _ = ingest(raw, ingestion)
    assert report["rows_read"] == 3 and report["users"] == 2 and report["timestamp_unit"] == "s"
    assert users["user_id"].tolist() == [186, 196]
    assert interactions["timestamp"].tolist() == [891717742, 878887116, 881250949]


def test_movielens_1m_ratings_dat_with_double_colons_is_read_by_its_env(tmp_path):
    path = tmp_path / "ratings.dat"
    path.write_text("1::1193::5::978300760\n1::661::3::978302109\n2::1357::5::978298709\n")
    raw = env_raw_dataset("movielens_1m", path).load()
    params = env_conf("movielens_1m", "parameters")["ingestion"]
    _, report, interactions, _, items = ingest(raw, spec(str(path), **params))
    assert report["interactions"] == 3
    assert items["item_id"].tolist() == [661, 1193, 1357]
    assert interactions["timestamp"].tolist() == [978300760, 978302109, 978298709]


def test_movielens_ratings_csv_with_half_stars_is_read_by_its_env(tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_text(
        "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,0.5,964981247\n2,6,4.5,964982224\n"
    )
    raw = env_raw_dataset("movielens_csv", path).load()
    params = env_conf("movielens_csv", "parameters")["ingestion"]
    _, report, _, _, _ = ingest(raw, spec(str(path), **params))
    assert report["interactions"] == 3 and report["users"] == 2 and report["items"] == 3


@pytest.mark.skipif(not ML_100K.exists(), reason="MovieLens 100K not found (set ML100K_PATH)")
def test_real_movielens_100k_is_ingested_completely():
    raw = env_raw_dataset("movielens", ML_100K).load()
    params = env_conf("movielens", "parameters")["ingestion"]
    _, report, interactions, users, items = ingest(raw, spec(str(ML_100K), **params))
    assert (report["rows_read"], report["users"], report["items"]) == (100_000, 943, 1682)
    assert report["rows_dropped"] == {"duplicates_collapsed": 0}
    assert len(interactions) == 100_000 and len(users) == 943 and len(items) == 1682


# --- timestamps, ratings, weights, duplicates ------------------------------------


def test_epoch_seconds_milliseconds_and_iso_strings_give_the_same_seconds():
    seconds = pd.Series([0, 1_700_000_000])
    millis = pd.Series([0, 1_700_000_000_123])
    iso = pd.Series(["1970-01-01T00:00:00Z", "2023-11-14T22:13:20.5+00:00"])
    naive = pd.Series(["1970-01-01 00:00:00", "2023-11-14 23:13:20+01:00"])
    for values, unit in [(seconds, "s"), (millis, "ms"), (iso, "iso"), (naive, "iso")]:
        parsed, bad, used = parse_timestamps(values, "auto")
        assert parsed.tolist() == [0, 1_700_000_000] and not bad.any() and used == unit


def test_numbers_stored_as_text_are_read_as_epoch_seconds():
    parsed, bad, unit = parse_timestamps(pd.Series(["100", "200", "oops"]), "auto")
    assert unit == "s" and parsed[:2].tolist() == [100, 200] and bad.tolist() == [0, 0, 1]


def test_rating_threshold_keeps_liked_items_and_counts_the_rest():
    raw = pd.DataFrame(
        {
            "user_id": [1, 1, 2, 2],
            "item_id": [1, 2, 1, 2],
            "timestamp": [1, 2, 3, 4],
            "r": [5, 2, 4, 3],
        }
    )
    clean, report = validate_interactions(
        raw, spec(columns={"rating": "r"}, rating_threshold=4, rating_range=[1, 5])
    )
    assert clean[["user_id", "item_id"]].values.tolist() == [[1, 1], [2, 1]]
    assert report["rows_dropped"] == {"below_rating_threshold": 2, "duplicates_collapsed": 0}


def test_repeated_pairs_become_one_positive_at_the_latest_time_with_summed_weight():
    raw = pd.DataFrame(
        {
            "user_id": ["a", "b", "a", "a"],
            "item_id": ["x", "x", "x", "y"],
            "timestamp": [10, 5, 30, 20],
            "clicks": [1.0, 2.0, 3.0, 4.0],
        }
    )
    clean, report = validate_interactions(raw, spec(columns={"weight": "clicks"}))
    assert clean.values.tolist() == [["a", "x", 30, 4.0], ["b", "x", 5, 2.0], ["a", "y", 20, 4.0]]
    assert report["rows_dropped"]["duplicates_collapsed"] == 1
    assert report["interactions"] == 3 and report["weight_total"] == 10.0


def test_ingestion_report_states_density_and_time_span():
    raw = pd.DataFrame({"user_id": [1, 2], "item_id": [1, 1], "timestamp": [0, 86400]})
    _, report = validate_interactions(raw, spec())
    assert report["density"] == 2 / (2 * 1)
    assert report["time_span"] == ["1970-01-01T00:00:00+00:00", "1970-01-02T00:00:00+00:00"]


# --- errors: one message naming the file, the column and the count ------------------


def error_of(raw: pd.DataFrame, ingestion: IngestionSpec) -> str:
    with pytest.raises(InvalidInteractionsError) as caught:
        validate_interactions(raw, ingestion)
    return str(caught.value)


def test_missing_column_error_names_file_column_and_what_the_file_has():
    raw = pd.DataFrame({"user": [1], "item_id": [2], "timestamp": [3]})
    message = error_of(raw, spec("data/01_raw/mine.csv"))
    assert "data/01_raw/mine.csv" in message and "'user_id' (user)" in message
    assert "['user', 'item_id', 'timestamp']" in message


def test_null_ids_error_names_file_column_and_count():
    raw = pd.DataFrame({"user_id": [1, None, None], "item_id": [1, 2, 3], "timestamp": [1, 2, 3]})
    message = error_of(raw, spec("mine.csv"))
    assert message.startswith("mine.csv: column 'user_id' (user) has 2 null value(s) of 3 rows")


def test_unparsable_timestamps_error_names_column_count_and_first_bad_value():
    raw = pd.DataFrame(
        {"user_id": [1, 2, 3], "item_id": [1, 2, 3], "timestamp": ["2024-01-01", "soon", "later"]}
    )
    message = error_of(raw, spec("mine.csv"))
    assert "column 'timestamp' (timestamp) has 2 unparsable timestamp(s) of 3 rows" in message
    assert "'soon'" in message and message.startswith("mine.csv: ")


def test_a_file_with_a_header_and_no_rows_is_an_error(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("user_id,item_id,timestamp\n")
    message = error_of(CSVDataset(filepath=str(path)).load(), spec(str(path)))
    assert message == f"{path}: the file holds no rows"


def test_ratings_outside_the_declared_range_are_an_error():
    raw = pd.DataFrame(
        {"user_id": [1, 2, 3], "item_id": [1, 2, 3], "timestamp": [1, 2, 3], "rating": [5, 6, 0]}
    )
    message = error_of(raw, spec("r.csv", columns={"rating": "rating"}, rating_range=[1, 5]))
    assert "column 'rating' (rating) has 2 rating(s) outside the declared range [1, 5]" in message


def test_a_threshold_that_drops_every_row_is_an_error():
    raw = pd.DataFrame({"user_id": [1], "item_id": [1], "timestamp": [1], "rating": [1]})
    message = error_of(raw, spec(columns={"rating": "rating"}, rating_threshold=4))
    assert "no interaction is left" in message and "below_rating_threshold" in message


def base_parameters() -> dict:
    parameters = {}
    for path in sorted((ROOT / "conf" / "base").glob("parameters*.yml")):
        parameters.update(yaml.safe_load(path.read_text()))
    return parameters


def schema_message(ingestion: dict) -> str:
    """The one line the parameter schema gives for conf/base with this ingestion block."""
    with pytest.raises(SettingsError) as caught:
        check_parameters({**base_parameters(), "ingestion": ingestion})
    return str(caught.value)


def test_unknown_parameters_and_roles_are_rejected():
    # The schema (config/schema.py) checks the block before any node builds a spec from it.
    base = base_parameters()["ingestion"]
    message = schema_message({**base, "colums": {}})
    assert "bad settings (1): unknown parameter ingestion.colums (did you mean" in message
    without_encoding = {key: value for key, value in base.items() if key != "encoding"}
    assert "bad settings (1): missing parameter ingestion.encoding" in schema_message(
        without_encoding
    )  # no code defaults
    customer = {**base, "columns": {**base["columns"], "customer": "c"}}
    assert "bad settings (1): unknown parameter ingestion.columns.customer" in schema_message(
        customer
    )


# --- encoding -----------------------------------------------------------------------


def test_id_maps_round_trip_to_the_original_pairs():
    raw = pd.DataFrame(
        {
            "user_id": ["u9", "u1", "u5", "u1"],
            "item_id": [30, 10, 10, 20],
            "timestamp": [4, 3, 2, 1],
        }
    )
    clean, _, interactions, users, items = ingest(raw, spec())
    decoded = interactions.merge(users, on="user").merge(items, on="item")
    columns = ["user_id", "item_id", "timestamp"]
    assert set(map(tuple, decoded[columns].values.tolist())) == set(
        map(tuple, raw[columns].values.tolist())
    )
    assert users["user"].tolist() == list(range(3)) and items["item"].tolist() == list(range(3))


@pytest.mark.integration
@pytest.mark.skipif(not ML_100K.exists(), reason="MovieLens 100K not found (set ML100K_PATH)")
def test_movielens_env_prepares_real_ml_100k_end_to_end(make_project_copy, kedro_run):
    project = make_project_copy("movielens")
    folder = project / "data" / "01_raw" / "ml-100k"
    folder.mkdir()
    for name in ("u.data", "u.item", "u.user"):  # linked, never copied
        (folder / name).symlink_to(ML_100K.parent / name)
    kedro_run(project, pipeline="data_processing", env="movielens")
    reports = project / "data/movielens/08_reporting"
    ingestion = yaml.safe_load((reports / "ingestion_report.json").read_text())
    split = yaml.safe_load((reports / "split_report.json").read_text())
    assert ingestion["source"] == "data/01_raw/ml-100k/u.data"
    assert (ingestion["interactions"], ingestion["users"], ingestion["items"]) == (
        100_000,
        943,
        1682,
    )
    # Every ML-100K user has at least 20 ratings: each holds out a test and a validation one.
    assert split["val_candidates"] == split["test_candidates"] == 943
    assert split["val_interactions"] + split["val_dropped_cold_items"] == 943
    held_out = split["test_interactions"] + split["test_cold_interactions"]
    assert held_out + split["test_dropped_cold_users"] == 943
    assert split["train_interactions"] == 100_000 - 2 * 943


def test_a_rating_threshold_without_a_rating_column_is_an_error():
    raw = pd.DataFrame({"user_id": [1], "item_id": [1], "timestamp": [1]})
    assert "no rating column is mapped" in error_of(raw, spec(rating_threshold=4))


def test_iso_timestamps_in_a_csv_file_are_stored_as_epoch_seconds(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text(
        "user_id,item_id,timestamp\na,x,2024-01-01T00:00:00Z\nb,x,2024-01-01T01:00:00+01:00\n"
    )
    _, report, interactions, _, _ = ingest(CSVDataset(filepath=str(path)).load(), spec(str(path)))
    assert report["timestamp_unit"] == "iso"
    assert interactions["timestamp"].tolist() == [1_704_067_200, 1_704_067_200]


# --- no silent change of meaning: timestamps -------------------------------------

WINDOW = {"earliest": "1990-01-01", "latest": "2030-01-01"}


def log(timestamps, users=(1, 2, 3), items=(1, 2, 3)) -> pd.DataFrame:
    return pd.DataFrame({"user_id": list(users), "item_id": list(items), "timestamp": timestamps})


def test_one_far_future_value_does_not_turn_a_log_in_seconds_into_milliseconds():
    seconds = [1_700_000_000, 1_700_000_100, 1_700_000_200, 1_700_000_300]
    timestamps, _, unit = parse_timestamps(pd.Series([*seconds, 32_503_680_000_000]))
    assert unit == "s"
    assert timestamps[:4].tolist() == seconds


def test_a_log_in_milliseconds_is_recognised_and_the_report_says_how():
    raw = log([1_700_000_000_000, 1_700_000_100_000, 1_700_000_200_000])
    _, report = validate_interactions(raw, spec(timestamp_window=WINDOW))
    assert report["timestamp_unit"] == "ms"
    assert "inferred from the median" in report["timestamp_unit_from"]


@pytest.mark.parametrize(
    ("bad", "shown"),
    [(0, "0"), (-5, "-5"), (32_503_680_000, "32503680000")],  # 1970, before 1970, year 3000
)
def test_timestamps_outside_the_plausible_window_are_an_error_with_count_and_line(bad, shown):
    raw = log([1_700_000_000, bad, bad], users=(1, 2, 3))
    ingestion = replace(spec("mine.csv", timestamp_window=WINDOW), first_line=2)
    message = error_of(raw, ingestion)
    assert message.startswith(
        "mine.csv: column 'timestamp' (timestamp) has 2 timestamp(s) outside "
        "[1990-01-01 00:00, 2030-01-01 00:00] UTC"
    )
    assert f"(first: {shown} at line 3," in message


def test_the_default_window_ends_a_day_after_the_run_clock():
    tomorrow_and_a_bit = int(time.time()) + 2 * 86_400
    raw = log([1_700_000_000, 1_700_000_001, tomorrow_and_a_bit])
    message = error_of(raw, spec(timestamp_window={"earliest": "1990-01-01", "latest": None}))
    assert "has 1 timestamp(s) outside" in message and "row 3" in message


# --- no silent change of meaning: ids -------------------------------------------


def csv_log(tmp_path, text: str) -> tuple[pd.DataFrame, IngestionSpec]:
    """Read `text` as the raw CSV the way a run does (lines counted from the header)."""
    path = tmp_path / "events.csv"
    path.write_text(text)
    return CSVDataset(filepath=str(path)).load(), replace(spec(str(path)), first_line=2)


def test_ids_mixing_numbers_and_text_are_an_error_naming_the_lines(tmp_path):
    raw, ingestion = csv_log(tmp_path, "user_id,item_id,timestamp\n1,a,1\nbob,a,2\n3,b,3\n")
    message = error_of(raw, ingestion)
    assert "column 'user_id' (user) has 2 numeric and 1 text id(s)" in message
    assert "first text 'bob' at line 3)" in message and "id_type: text" in message


def test_one_fractional_id_is_an_error_not_a_float_column(tmp_path):
    raw, ingestion = csv_log(tmp_path, "user_id,item_id,timestamp\n1,7,1\n2,1.5,2\n")
    message = error_of(raw, ingestion)
    assert "column 'item_id' (item) has 1 fractional id(s) (first 1.5 at line 3)" in message


def test_whole_numbers_stored_as_floats_stay_integers():
    clean, _ = validate_interactions(log([1, 2, 3], items=(2.0, 3.0, 4.0)), spec())
    assert clean["item_id"].tolist() == [2, 3, 4]
    assert clean["item_id"].dtype == np.int64


def test_id_type_text_keeps_every_id_as_text_and_int_refuses_names():
    raw = log([1, 2, 3], users=(1, "bob", 3))
    clean, _ = validate_interactions(raw, spec(id_type="text"))
    assert clean["user_id"].tolist() == ["1", "bob", "3"]
    message = error_of(log([1, 2, 3], users=("1", "bob", "3")), spec(id_type="int"))
    assert "has 1 id(s) that are not numbers (first text 'bob' at row 2)" in message


def test_ids_stored_as_text_stay_text_even_when_they_look_like_numbers():
    clean, _ = validate_interactions(log([1, 2, 3], users=("007", "10", "9")), spec())
    assert sorted(clean["user_id"].tolist()) == ["007", "10", "9"]


def auto_csv_log(tmp_path, text: str, env: str | None = None) -> tuple[pd.DataFrame, IngestionSpec]:
    """Read `text` as a run reads the raw CSV under id_type auto (ids as text, then typed).

    With `env`, through that environment's raw_interactions entry.
    """
    from kedro.io import DataCatalog

    from twotower_pipeline.hooks.readable_errors import ReadableErrorHooks

    path = tmp_path / "events.csv"
    path.write_text(text)
    reader = CSVDataset(filepath=str(path)) if env is None else env_raw_dataset(env, path)
    catalog = DataCatalog({"raw_interactions": reader})
    window = {"earliest": "1990-01-01", "latest": None}  # the hook reads a whole block
    catalog["params:ingestion"] = {
        **BASE_INGESTION,
        "source": str(path),
        "timestamp_window": window,
    }
    ReadableErrorHooks().after_catalog_created(catalog)
    return catalog.load("raw_interactions"), replace(spec(str(path)), first_line=2)


def test_ids_with_leading_zeros_stay_distinct_under_auto(tmp_path):
    raw, ingestion = auto_csv_log(
        tmp_path, "user_id,item_id,timestamp\n1,007,1\n1,7,2\n2,00007,3\n2,7,4\n"
    )
    _, report, interactions, users, items = ingest(raw, ingestion)
    assert sorted(items["item_id"].tolist()) == ["00007", "007", "7"]  # three items, as written
    assert report["items"] == 3 and len(interactions) == 4
    assert users["user_id"].dtype == np.int64  # ids written as plain integers stay integers


def test_ids_that_are_all_plain_integers_are_integers_under_auto(tmp_path):
    text = "user_id,item_id,timestamp\n10,3,1\n9,-2,2\n10,0,3\n"
    raw, ingestion = auto_csv_log(tmp_path, text)
    assert raw["user_id"].tolist() == ["10", "9", "10"]  # read as written
    clean, _, _, users, items = ingest(raw, ingestion)
    plain, _ = csv_log(tmp_path, text)
    expected, _ = validate_interactions(plain, ingestion)
    pd.testing.assert_frame_equal(clean, expected)  # what the default reading made
    assert clean["item_id"].dtype == np.int64 and sorted(users["user_id"]) == [9, 10]


def test_ids_read_as_text_under_auto_keep_their_errors(tmp_path):
    raw, ingestion = auto_csv_log(tmp_path, "user_id,item_id,timestamp\n1,7,1\n2,1.5,2\n")
    message = error_of(raw, ingestion)
    assert "column 'item_id' (item) has 1 fractional id(s) (first '1.5' at line 3)" in message
    raw, ingestion = auto_csv_log(tmp_path, "user_id,item_id,timestamp\n007,7,1\nbob,7,2\n")
    message = error_of(raw, ingestion)
    assert "column 'user_id' (user) has 1 numeric and 1 text id(s)" in message
    assert "first text 'bob' at line 3)" in message


def test_the_pyarrow_engine_reads_ids_as_text_under_auto_too(tmp_path):
    text = "user_id,item_id,timestamp,rating\n1,007,1,4.0\n1,7,2,NA\n"
    raw, ingestion = auto_csv_log(tmp_path, text, env="movielens_csv")  # engine: pyarrow
    assert raw["item_id"].tolist() == ["007", "7"] and raw["rating"].isna().tolist() == [
        False,
        True,
    ]
    clean, _ = validate_interactions(raw, ingestion)
    assert clean["item_id"].tolist() == ["007", "7"] and clean["user_id"].tolist() == [1, 1]


def test_integers_too_large_for_int64_stay_text_as_written():
    big = "99999999999999999999"
    clean, _ = validate_interactions(log([1, 2, 3], users=(big, "1", "2")), spec())
    assert clean["user_id"].tolist()[0] == big


# --- load failures: one line naming the file and the line --------------------------


def load_failure(dataset) -> str:
    with pytest.raises(DatasetError) as caught:
        dataset.load()
    return describe_load_failure(dataset, caught.value)


def test_a_zero_byte_raw_file_is_one_line_naming_it(tmp_path):
    path = tmp_path / "zero.csv"
    path.write_text("")
    assert load_failure(CSVDataset(filepath=str(path))) == f"{path}: the file is empty (0 bytes)"


def test_bytes_that_are_not_utf8_are_named_by_line(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("user_id,item_id,timestamp\nu1,i1,1\nJosé,i2,2\n".encode("latin-1"))
    message = load_failure(CSVDataset(filepath=str(path), load_args={"encoding": "utf-8"}))
    assert message == (
        f"{path}: line 3 is not valid utf-8 (byte 0xe9 at column 4); set ingestion.encoding "
        "to the file's encoding (e.g. latin-1)"
    )


def test_the_encoding_parameter_reaches_the_csv_reader(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("user_id,item_id,timestamp\nJosé,i2,2\n".encode("latin-1"))
    dataset = CSVDataset(filepath=str(path))
    _configure_raw_reader(dataset, "latin-1")
    assert dataset.load()["user_id"].tolist() == ["José"]


def test_a_truncated_parquet_file_is_one_line_naming_it(tmp_path):
    path = tmp_path / "log.parquet"
    log([1, 2, 3]).to_parquet(path)
    path.write_bytes(path.read_bytes()[:-20])
    message = load_failure(ParquetDataset(filepath=str(path)))
    assert message.startswith(f"{path}: not a readable Parquet file (")
    assert message.endswith("it may be truncated: write it again") and "\n" not in message
