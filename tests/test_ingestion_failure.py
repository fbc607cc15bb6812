"""Nothing lost: a run that fails on bad input leaves the previous good run's outputs intact.

A project copy ingests a user's CSV, the CSV is then corrupted and the run
repeated: the run must stop with an error naming the file, the column and
the count, and every data-preparation output of the good run must still be
there, byte for byte, and load. Saves themselves are atomic: a save that
fails half-way keeps the old file.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from kedro.io import DataCatalog, DatasetError
from kedro_datasets.pandas import CSVDataset

from conftest import run_on_a_full_tmpfs
from twotower_pipeline.config.errors import DiskFullError
from twotower_pipeline.data.synthetic import SyntheticLogSpec, generate_interactions
from twotower_pipeline.hooks.prepared_data import MissingPreparedDataError
from twotower_pipeline.hooks.readable_errors import ReadableError, ReadableErrorHooks
from twotower_pipeline.io.datasets import (
    AtomicJSONDataset,
    AtomicParquetDataset,
    replace_atomically,
)

OUTPUTS = [
    "data/user_csv/02_intermediate/clean_interactions.parquet",
    "data/user_csv/03_primary/interactions.parquet",
    "data/user_csv/03_primary/user_index.parquet",
    "data/user_csv/03_primary/item_index.parquet",
    "data/user_csv/05_model_input/train_interactions.parquet",
    "data/user_csv/05_model_input/val_interactions.parquet",
    "data/user_csv/08_reporting/ingestion_report.json",
    "data/user_csv/08_reporting/split_report.json",
]

# The shipped ingestion block (conf/base/parameters_ingestion.yml), as the schema takes it.
BASE_INGESTION = yaml.safe_load(
    (Path(__file__).resolve().parents[1] / "conf/base/parameters_ingestion.yml").read_text()
)["ingestion"]

SPLIT_DROPS = [("val", "items"), ("val", "users"), ("test", "items"), ("test", "users")]

# An environment that reads a user's CSV, as the docs tell users to set one up.
USER_CSV_ENV = {
    "globals.yml": "raw_interactions_path: data/01_raw/events.csv\n",
    "catalog.yml": "raw_interactions:\n  type: pandas.CSVDataset\n",
    "parameters.yml": "features:\n  item: null\n  user: null\n",  # no side-feature files
}


def prepare_from_a_user_csv(project: Path, kedro_run) -> tuple[Path, pd.DataFrame]:
    """Set up the user_csv environment with a good CSV, run data_processing; return (csv, log)."""
    env = project / "conf" / "user_csv"
    env.mkdir()
    for name, text in USER_CSV_ENV.items():
        (env / name).write_text(text)
    raw = project / "data" / "01_raw" / "events.csv"
    log = generate_interactions(
        SyntheticLogSpec(n_users=80, n_items=60, mean_interactions_per_user=8)
    )
    log.to_csv(raw, index=False)
    kedro_run(project, pipeline="data_processing", env="user_csv")
    return raw, log


@pytest.fixture(scope="module")
def project_after_a_failed_run(make_project_copy, kedro_run):
    """(project, outputs of the good run as bytes, the error of the failed run)."""
    project = make_project_copy("nothing_lost")
    raw, log = prepare_from_a_user_csv(project, kedro_run)
    before = {path: (project / path).read_bytes() for path in OUTPUTS}

    # Corrupt the raw file: three rows lose their user id.
    log.loc[[3, 10, 42], "user_id"] = None
    log.to_csv(raw, index=False)
    with pytest.raises(Exception) as failed:
        kedro_run(project, pipeline="data_processing", env="user_csv")
    return project, before, failed.value


def test_failed_run_names_the_file_the_column_and_the_count(project_after_a_failed_run):
    _, _, error = project_after_a_failed_run
    assert "data/01_raw/events.csv: column 'user_id' (user) has 3 null value(s)" in str(error)


def test_failed_run_leaves_every_output_of_the_good_run_byte_for_byte(project_after_a_failed_run):
    project, before, _ = project_after_a_failed_run
    for path, content in before.items():
        assert (project / path).read_bytes() == content, f"{path} changed"
    leftovers = [p.name for p in (project / "data").rglob("*.tmp")]
    assert leftovers == []


def test_outputs_of_the_good_run_still_load_and_agree(project_after_a_failed_run):
    project, _, _ = project_after_a_failed_run
    interactions = pd.read_parquet(project / OUTPUTS[1])
    train = pd.read_parquet(project / OUTPUTS[4])
    val = pd.read_parquet(project / OUTPUTS[5])
    report = json.loads((project / OUTPUTS[7]).read_text())
    # Every interaction is in one split, or counted as dropped from validation or test.
    held_out = report["test_interactions"] + report["test_cold_interactions"]
    dropped = sum(
        report[f"{s}_dropped_cold_{w}"] for s, w in SPLIT_DROPS if f"{s}_dropped_cold_{w}" in report
    )
    assert len(train) + len(val) + held_out + dropped == len(interactions)
    assert report["val_interactions"] == len(val)
    assert report["train_interactions"] == len(train)


def test_a_parquet_save_that_fails_half_way_keeps_the_old_file(tmp_path):
    path = tmp_path / "table.parquet"
    dataset = AtomicParquetDataset(filepath=str(path))
    good = pd.DataFrame({"user": [1, 2]})
    dataset.save(good)
    unconvertible = pd.DataFrame({"user": [1, "two"]})  # pyarrow cannot type this column
    with pytest.raises(Exception, match="two|convert|Conversion"):
        dataset.save(unconvertible)
    pd.testing.assert_frame_equal(dataset.load(), good)
    assert [p.name for p in tmp_path.iterdir()] == ["table.parquet"]


def test_a_json_save_that_fails_keeps_the_old_report(tmp_path):
    path = tmp_path / "report.json"
    dataset = AtomicJSONDataset(filepath=str(path))
    dataset.save({"rows": 3})
    with pytest.raises(DatasetError, match="not JSON serializable"):
        dataset.save({"rows": np.int64(3)})
    assert dataset.load() == {"rows": 3}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_the_plain_kedro_parquet_dataset_would_have_lost_the_old_file(tmp_path):
    """Why the project uses its own Parquet dataset: kedro-datasets' truncates first."""
    from kedro_datasets.pandas import ParquetDataset

    dataset = ParquetDataset(filepath=str(tmp_path / "table.parquet"))
    dataset.save(pd.DataFrame({"user": [1, 2]}))
    with pytest.raises(Exception):  # noqa: B017 - any serialisation error will do
        dataset.save(pd.DataFrame({"user": [1, "two"]}))
    assert Path(tmp_path / "table.parquet").stat().st_size == 0


def test_a_run_that_fails_after_ingestion_restores_the_outputs_it_had_replaced(
    make_project_copy, kedro_run
):
    """The log itself is valid, but no user has enough interactions to hold one out:
    ingestion succeeds and writes its outputs, then the split fails. The failed run
    must not leave a new `interactions` beside an old `train_interactions`."""
    project = make_project_copy("rollback")
    raw, _ = prepare_from_a_user_csv(project, kedro_run)
    before = {path: (project / path).read_bytes() for path in OUTPUTS}

    # Two interactions per user: valid input, but holdout 1 + min_train 2 leaves
    # no user with a validation row.
    pd.DataFrame(
        {
            "user_id": ["a", "a", "b", "b"],
            "item_id": ["x", "y", "x", "z"],
            "timestamp": [1_700_000_001, 1_700_000_002, 1_700_000_003, 1_700_000_004],
        }
    ).to_csv(raw, index=False)
    with pytest.raises(Exception, match="leaves validation empty"):
        kedro_run(project, pipeline="data_processing", env="user_csv")

    for path, content in before.items():
        assert (project / path).read_bytes() == content, f"{path} was left replaced"
    leftovers = [p.name for p in (project / "data").rglob(".*.keep")]
    assert leftovers == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "data/01_raw/events.csv: the file is empty (0 bytes)"),
        (
            "user_id,item_id,timestamp\nu1,i1,1700000000\nJosé,i2,1700000001\n".encode("latin-1"),
            "data/01_raw/events.csv: line 3 is not valid utf-8 (byte 0xe9 at column 4); "
            "set ingestion.encoding to the file's encoding (e.g. latin-1)",
        ),
        (
            b"user_id,item_id,timestamp\n1,7,1700000000\n2,bob,1700000001\n3,8,1700000002\n",
            "data/01_raw/events.csv: column 'item_id' (item) has 2 numeric and 1 text id(s) "
            "(first number '7' at line 2, first text 'bob' at line 3); "
            "set ingestion.id_type: text if the ids are names",
        ),
        (
            b"user_id,item_id,timestamp\n1,7,1700000000\n2,8,1700000001\n3,8,0\n",
            "data/01_raw/events.csv: column 'timestamp' (timestamp) has 1 timestamp(s) outside",
        ),
    ],
    ids=["zero_bytes", "not_utf8", "mixed_ids", "timestamp_1970"],
)
def test_an_unreadable_raw_file_is_one_line_and_the_outputs_stay(
    content, message, make_project_copy, kedro_run
):
    project = make_project_copy("unreadable")
    raw, _ = prepare_from_a_user_csv(project, kedro_run)
    before = {path: (project / path).read_bytes() for path in OUTPUTS}
    raw.write_bytes(content)
    with pytest.raises(ReadableError) as failed:
        kedro_run(project, pipeline="data_processing", env="user_csv")
    assert failed.value.format_message().startswith(message)
    assert "\n" not in failed.value.format_message()
    assert failed.value.exit_code == 1
    for path, saved in before.items():
        assert (project / path).read_bytes() == saved, f"{path} changed"


def test_the_encoding_parameter_reads_a_latin1_log(make_project_copy, kedro_run):
    project = make_project_copy("latin1")
    raw, log = prepare_from_a_user_csv(project, kedro_run)
    log["user_id"] = "José-" + log["user_id"].astype(str)
    raw.write_bytes(log.to_csv(index=False).encode("latin-1"))
    kedro_run(
        project,
        pipeline="data_processing",
        env="user_csv",
        params={"ingestion": {"encoding": "latin-1"}},
    )
    users = pd.read_parquet(project / "data/user_csv/03_primary/user_index.parquet")
    assert users["user_id"].str.startswith("José-").all()


def test_a_missing_raw_file_is_named_before_anything_runs(make_project_copy, kedro_run):
    project = make_project_copy("missing_raw")
    env = project / "conf" / "user_csv"
    env.mkdir()
    for name, text in USER_CSV_ENV.items():
        (env / name).write_text(text)
    with pytest.raises(MissingPreparedDataError) as failed:
        kedro_run(project, pipeline="data_processing", env="user_csv")
    message = failed.value.format_message()
    assert message.startswith("The raw data does not exist: raw_interactions (")
    assert "data/01_raw/events.csv" in message and failed.value.exit_code == 1
    assert not any((project / "data" / "user_csv").rglob("*.*"))


def test_a_catalog_file_other_than_the_one_errors_would_name_stops_before_anything_runs(
    make_project_copy, kedro_run
):
    # The catalog is pointed at the user's file, globals.yml (what ingestion.source and so
    # every error names) is not: errors would name the wrong file, so the run does not start.
    project = make_project_copy("source_mismatch")
    env = project / "conf" / "user_csv"
    env.mkdir()
    files = dict(USER_CSV_ENV, **{"globals.yml": "raw_interactions_path: data/01_raw/old.csv\n"})
    files["catalog.yml"] += "  filepath: data/01_raw/events.csv\n"
    for name, text in files.items():
        (env / name).write_text(text)
    with pytest.raises(ReadableError) as failed:
        kedro_run(project, pipeline="data_processing", env="user_csv")
    message = failed.value.format_message()
    assert message.startswith(
        "raw_interactions: the catalog reads data/01_raw/events.csv but ingestion.source "
        "names data/01_raw/old.csv"
    )
    assert "raw_interactions_path" in message and failed.value.exit_code == 2
    assert not any((project / "data" / "user_csv").rglob("*.*"))


def test_text_ids_reach_the_csv_reader_so_leading_zeros_stay(tmp_path):
    raw = tmp_path / "events.csv"
    raw.write_text("who,what,when\n007,010,1\n")
    ingestion = {
        **BASE_INGESTION,
        "source": str(raw),
        "columns": {"user": "who", "item": "what", "timestamp": "when"},
        "id_type": "text",
    }
    catalog = DataCatalog({"raw_interactions": CSVDataset(filepath=str(raw))})
    catalog["params:ingestion"] = ingestion
    ReadableErrorHooks().after_catalog_created(catalog)
    loaded = catalog.load("raw_interactions")
    assert loaded["who"].tolist() == ["007"] and loaded["what"].tolist() == ["010"]


def test_text_ids_named_na_none_or_null_are_ids_not_missing_values(tmp_path):
    raw = tmp_path / "events.csv"
    raw.write_text("user_id,item_id,timestamp,rating\nNA,None,1,NA\nnull,7,2,4\n")
    ingestion = {
        **BASE_INGESTION,
        "source": str(raw),
        "columns": {**BASE_INGESTION["columns"], "rating": "rating"},
        "id_type": "text",
    }
    catalog = DataCatalog({"raw_interactions": CSVDataset(filepath=str(raw))})
    catalog["params:ingestion"] = ingestion
    ReadableErrorHooks().after_catalog_created(catalog)
    loaded = catalog.load("raw_interactions")
    assert loaded["user_id"].tolist() == ["NA", "null"]
    assert loaded["item_id"].tolist() == ["None", "7"]
    assert loaded["rating"].isna().tolist() == [True, False]  # a rating of NA is still missing


def test_a_missing_feature_file_is_named_before_anything_runs(make_project_copy, kedro_run):
    """A user's CSV whose environment forgot `features: {item: null, user: null}`."""
    project = make_project_copy("missing_features")
    env = project / "conf" / "user_csv"
    env.mkdir()
    for name, text in USER_CSV_ENV.items():
        if name != "parameters.yml":
            (env / name).write_text(text)
    generate_interactions(SyntheticLogSpec(n_users=20, n_items=10)).to_csv(
        project / "data" / "01_raw" / "events.csv", index=False
    )
    with pytest.raises(MissingPreparedDataError) as failed:
        kedro_run(project, pipeline="data_processing", env="user_csv")
    message = failed.value.format_message()
    assert message.startswith(
        "item_features: the file data/01_raw/synthetic_interactions_item_features.parquet "
        "does not exist, but features.item maps its columns."
    )
    assert "features: {item: null, user: null}" in message and "\n" not in message
    assert failed.value.exit_code == 1
    assert not any(p.is_file() for p in (project / "data" / "user_csv").rglob("*"))


@pytest.mark.parametrize("dataset_class", [AtomicParquetDataset, AtomicJSONDataset])
def test_saves_are_written_with_the_process_umask(tmp_path, dataset_class):
    previous = os.umask(0o002)  # a group-shared project folder
    try:
        path = tmp_path / "out"
        data = pd.DataFrame({"user": [1]}) if dataset_class is AtomicParquetDataset else {"a": 1}
        dataset_class(filepath=str(path)).save(data)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o664


def test_the_temporary_file_of_a_save_is_this_process_own(tmp_path, monkeypatch):
    seen = []
    replace_atomically(tmp_path / "last.pt", lambda tmp: seen.append(Path(tmp).name))
    assert seen[0].startswith(f".last.pt.{os.getpid()}.") and seen[0].endswith(".tmp")
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_save_that_fills_the_disk_is_one_line_naming_the_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "report.json"
    dataset = AtomicJSONDataset(filepath=str(path))
    dataset.save({"rows": 3})

    def fill_the_disk(tmp: str) -> None:
        Path(tmp).write_bytes(b"x" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError) as full:
        replace_atomically(path, fill_the_disk, lambda: 4096)
    message = str(full.value)
    assert message.startswith(f"no space left on the disk while writing {path.as_posix()}")
    assert "it needs 4.0 KiB" in message and "free there" in message and "\n" not in message
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
    assert dataset.load() == {"rows": 3}


def test_a_run_whose_save_fills_the_disk_ends_with_that_one_line():
    """Kedro wraps what a save raises in DatasetError; the message is still the one line."""
    try:
        try:
            raise DiskFullError("no space left on the disk while writing data/x.parquet: ...")
        except DiskFullError as error:
            raise DatasetError("Failed while saving data to dataset ...") from error
    except DatasetError as wrapped:
        with pytest.raises(ReadableError) as failed:
            ReadableErrorHooks().on_pipeline_error(wrapped)
    assert failed.value.format_message().startswith("no space left on the disk while writing ")
    assert failed.value.exit_code == 1


_FILL_A_TMPFS = """
import os, subprocess, sys
import pandas as pd
from twotower_pipeline.config.errors import DiskFullError
from twotower_pipeline.io.datasets import AtomicParquetDataset
folder = sys.argv[1]
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", folder], check=True)
dataset = AtomicParquetDataset(filepath=os.path.join(folder, "table.parquet"))
dataset.save(pd.DataFrame({"a": [1, 2]}))
try:
    dataset.save(pd.DataFrame({"a": [str(i) * 50 for i in range(20000)]}))
except Exception as error:  # Kedro wraps what a save raises in its DatasetError
    assert isinstance(error.__cause__, DiskFullError), error
    print(error.__cause__)
print(sorted(os.listdir(folder)), dataset.load()["a"].tolist())
"""


def test_a_save_on_a_full_tmpfs_names_the_file_and_keeps_the_old_one(tmp_path):
    folder, (message, listing) = run_on_a_full_tmpfs(tmp_path, _FILL_A_TMPFS)
    assert message.startswith(f"no space left on the disk while writing {folder}/table.parquet")
    assert "it needs " in message
    assert listing == "['table.parquet'] [1, 2]"
