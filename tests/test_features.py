"""Side features: checked at the boundary, encoded on training entities only, one token space."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kedro.config import OmegaConfigLoader
from kedro.io import AbstractDataset

from twotower_pipeline.config.loader import data_root
from twotower_pipeline.data.features import (
    FeatureSpec,
    InvalidFeaturesError,
    build_side,
    padded_tokens,
)
from twotower_pipeline.io.datasets import OptionalDataset

ROOT = Path(__file__).resolve().parents[1]
# MovieLens 100K is never part of the repository: ML100K_PATH, or the shared data beside it.
ML_100K_DIR = Path(
    os.environ.get("ML100K_PATH", ROOT.parent / "shared" / "data" / "ml-100k" / "u.data")
).parent

ITEM_IDS = pd.Series(["a", "b", "c", "d"])  # item_index.item_id: index 0..3


def spec(side: str = "item", **params) -> FeatureSpec:
    base = {
        "source": "items.csv",
        "id": f"{side}_id",
        "buckets": 10,
        "missing_values": "error",
        **params,
    }
    return FeatureSpec.from_params(side, base)


def items_frame(**columns) -> pd.DataFrame:
    return pd.DataFrame({"item_id": ["a", "b", "c", "d"], **columns})


def tokens_of(frame: pd.DataFrame) -> list[list[int]]:
    return [list(map(int, t)) for t in frame["tokens"]]


def test_tokens_follow_one_space_per_side_with_0_reserved():
    raw = items_frame(
        studio=["x", "y", "x", "y"],
        genres=[["drama"], ["comedy", "drama"], [], ["comedy"]],
        year=[1990, 2000, 2010, 2020],
    )
    feature_spec = spec(
        categorical=["studio"], multi_valued=["genres"], numeric=["year"], buckets=2
    )
    tokens, encoder, _ = build_side(raw, feature_spec, ITEM_IDS, np.array([0, 1, 2, 3]), "item")

    # studio: x=1, y=2; genres: comedy=3, drama=4; year: 2 buckets split at the median 2005 -> 5, 6
    assert [f["offset"] for f in encoder["fields"]] == [1, 3, 5]
    assert encoder["vocab_size"] == 7
    assert encoder["fields"][2]["edges"] == [2005.0]
    assert tokens_of(tokens) == [[1, 4, 5], [2, 3, 4, 5], [1, 6], [2, 3, 6]]
    assert list(tokens.columns) == ["item", "tokens"]
    assert tokens["item"].tolist() == [0, 1, 2, 3]


def test_encoders_are_fitted_on_training_entities_and_unseen_values_are_left_out():
    raw = items_frame(studio=["x", "y", "z", "x"], year=[1.0, 2.0, 100.0, 3.0])
    feature_spec = spec(categorical=["studio"], numeric=["year"], buckets=2)
    # Item c (index 2) has no training interaction: a cold item.
    tokens, encoder, report = build_side(raw, feature_spec, ITEM_IDS, np.array([0, 1, 3]), "item")

    assert encoder["fields"][0]["values"] == ["x", "y"]  # z only on the cold item
    assert encoder["fields"][1]["edges"] == [2.0]  # median of 1, 2, 3: 100 never seen
    # c's studio z is unknown (token 0, left out); its year still falls in the top bucket.
    assert tokens_of(tokens) == [[1, 3], [2, 4], [4], [1, 4]]
    assert report["unseen_values_left_out"] == {"studio": 1, "year": 0}
    assert report["cold_items_with_features"] == 1


def test_no_features_still_gives_one_empty_list_per_index_and_vocab_size_1():
    tokens, encoder, report = build_side(None, None, ITEM_IDS, np.array([0]), "item")
    assert encoder == {"vocab_size": 1, "fields": []}
    assert tokens_of(tokens) == [[], [], [], []]
    assert padded_tokens(tokens["tokens"]).shape == (4, 1)
    assert report == {"features": None}


def test_ids_unknown_to_the_interactions_are_dropped_and_counted_and_missing_ones_get_no_token():
    raw = pd.DataFrame({"item_id": ["a", "zz", "c"], "studio": ["x", "y", "x"]})
    tokens, _, report = build_side(
        raw, spec(categorical=["studio"]), ITEM_IDS, np.array([0, 1, 2, 3]), "item"
    )
    assert report["unknown_ids_dropped"] == 1
    assert report["items_without_features"] == 2
    assert tokens_of(tokens) == [[1], [], [1], []]


def test_text_split_on_a_delimiter_and_flag_columns_read_as_multi_valued_fields():
    raw = items_frame(
        genres=["drama| comedy", "comedy", "horror", "drama"],
        Action=[1, 0, 0, 1],
        War=[0, 0, 1, 1],
    )
    feature_spec = spec(
        multi_valued=["genres"], delimiter="|", multi_hot={"flags": ["Action", "War"]}
    )
    tokens, encoder, _ = build_side(raw, feature_spec, ITEM_IDS, np.arange(4), "item")
    assert encoder["fields"][0]["values"] == ["comedy", "drama", "horror"]
    assert encoder["fields"][1]["values"] == ["Action", "War"]
    assert tokens_of(tokens) == [[1, 2, 4], [1], [3, 5], [2, 4, 5]]


def test_a_date_column_is_bucketed_by_its_year():
    dates = pd.to_datetime(["01-Jan-1995", "15-Mar-1960", "01-Jan-1995", "01-Jan-1997"])
    _, encoder, _ = build_side(
        items_frame(released=dates),
        spec(numeric=["released"], buckets=2),
        ITEM_IDS,
        np.arange(4),
        "item",
    )
    assert encoder["fields"][0]["edges"] == [1995.0]


def test_missing_values_can_be_read_as_unknown_and_are_counted():
    raw = items_frame(studio=["x", None, "y", "x"])
    tokens, _, report = build_side(
        raw, spec(categorical=["studio"], missing_values="unknown"), ITEM_IDS, np.arange(4), "item"
    )
    assert report["missing_values"] == {"studio": 1}
    assert tokens_of(tokens) == [[1], [], [2], [1]]


@pytest.mark.parametrize(
    ("raw", "params", "message"),
    [
        (None, {}, r"items\.csv: the file does not exist.*features\.item: null"),
        (items_frame().iloc[:0], {}, r"items\.csv: the file holds no rows"),
        (
            items_frame(),
            {"categorical": ["studio"]},
            r"items\.csv: missing column\(s\) \['studio'\]",
        ),
        (
            pd.DataFrame({"item_id": ["a", None, None]}),
            {},
            r"items\.csv: column 'item_id' \(item id\) has 2 null value\(s\) of 3 rows",
        ),
        (
            pd.DataFrame({"item_id": ["a", "b", "a", "a"]}),
            {},
            r"items\.csv: column 'item_id' \(item id\) has 2 repeated id\(s\) \(first: 'a'",
        ),
        (
            pd.DataFrame({"item_id": [1, 2]}),
            {},
            r"items\.csv: none of the 2 id\(s\) in column 'item_id' is a item of the interactions",
        ),
        (
            items_frame(studio=["x", None, None, "y"]),
            {"categorical": ["studio"]},
            r"items\.csv: column 'studio' \(categorical\) has 2 null value\(s\) of 4 rows",
        ),
        (
            items_frame(genres=[["a"], "b|c", ["d"], "e"]),
            {"multi_valued": ["genres"]},
            r"items\.csv: column 'genres' \(multi_valued\) has 2 value\(s\) that are not lists",
        ),
        (
            items_frame(genres=["a", ["b"], "c", "d"]),
            {"multi_valued": ["genres"], "delimiter": "|"},
            r"items\.csv: column 'genres' \(multi_valued\) has 1 value\(s\) that are not text",
        ),
        (
            items_frame(Action=[0, 2, 1, "x"]),
            {"multi_hot": {"genres": ["Action"]}},
            r"items\.csv: column 'Action' \(flag of multi_hot field 'genres'\).* 2 value\(s\)",
        ),
        (
            items_frame(year=["1990", "soon", "2000", "?"]),
            {"numeric": ["year"]},
            r"items\.csv: column 'year' \(numeric\) has 2 value\(s\) that are not numbers",
        ),
    ],
    ids=[
        "absent",
        "empty",
        "missing-column",
        "null-ids",
        "duplicate-ids",
        "no-known-id",
        "null-values",
        "not-a-list",
        "not-text",
        "not-a-flag",
        "not-a-number",
    ],
)
def test_bad_feature_tables_give_one_line_naming_file_column_and_count(raw, params, message):
    with pytest.raises(InvalidFeaturesError, match=message) as caught:
        build_side(raw, spec(**params), ITEM_IDS, np.arange(4), "item")
    assert "\n" not in str(caught.value)


def test_feature_parameters_are_checked():
    assert FeatureSpec.from_params("item", None) is None
    with pytest.raises(ValueError, match=r"unknown features\.item parameter\(s\): \['genre'\]"):
        FeatureSpec.from_params("item", {"source": "f", "id": "i", "genre": ["x"]})
    with pytest.raises(ValueError, match=r"features\.user\.id must be set"):
        FeatureSpec.from_params("user", {"source": "f"})
    with pytest.raises(ValueError, match=r"features\.item\.buckets must be set"):
        FeatureSpec.from_params("item", {"source": "f", "id": "i", "missing_values": "error"})
    with pytest.raises(ValueError, match=r"names field\(s\) \['age'\] more than once"):
        spec("user", categorical=["age"], numeric=["age"])


def test_padded_tokens_right_pad_each_list_with_0():
    padded = padded_tokens(pd.Series([[3, 5], [], [1, 2, 4]]))
    assert padded.dtype == np.int32
    assert padded.tolist() == [[3, 5, 0], [0, 0, 0], [1, 2, 4]]


def test_an_optional_dataset_loads_none_when_its_file_is_absent(tmp_path):
    path = tmp_path / "items.parquet"
    dataset = OptionalDataset(dataset={"type": "pandas.ParquetDataset", "filepath": str(path)})
    assert dataset.exists() and dataset.load() is None
    items_frame(studio=["x"] * 4).to_parquet(path)
    assert dataset.load()["studio"].tolist() == ["x"] * 4


def _env_config(env: str) -> tuple[dict, dict]:
    """Return (catalog, parameters) of conf/<env> merged over base, as kedro resolves them."""
    loader = OmegaConfigLoader(
        conf_source=str(ROOT / "conf"),
        env=env,
        base_env="base",
        default_run_env="local",
        merge_strategy={"parameters": "soft", "catalog": "soft", "globals": "soft"},
    )
    return loader["catalog"], loader["parameters"]


@pytest.mark.skipif(
    not (ML_100K_DIR / "u.item").exists(), reason="MovieLens 100K not found (set ML100K_PATH)"
)
@pytest.mark.parametrize(("side", "file"), [("item", "u.item"), ("user", "u.user")])
def test_movielens_env_reads_ml100k_features_through_its_catalog(side, file):
    catalog, parameters = _env_config("movielens")
    config = dict(catalog[f"{side}_features"])
    config["dataset"] = {**config["dataset"], "filepath": str(ML_100K_DIR / file)}
    raw = AbstractDataset.from_config(f"{side}_features", config).load()
    ids = pd.Series(np.arange(1, 1683 if side == "item" else 944))  # every id of ML-100K
    tokens, encoder, report = build_side(
        raw, FeatureSpec.from_params(side, parameters["features"][side]), ids, ids.index, side
    )
    fields = {f["name"]: f for f in encoder["fields"]}
    if side == "item":
        assert len(fields["genres"]["values"]) == 19  # u.genre's 19 flags, "unknown" included
        assert fields["release_date"]["edges"][0] > 1900  # bucketed by year
        assert report["missing_values"] == {"release_date": 1}  # item 267 has no date
        toy_story = tokens["tokens"].iloc[0]
        genres = {
            fields["genres"]["values"][t - fields["genres"]["offset"]]
            for t in toy_story
            if fields["genres"]["offset"] <= t < fields["release_date"]["offset"]
        }
        assert genres == {"Animation", "Children's", "Comedy"}
    else:
        assert set(fields) == {"gender", "occupation", "age"}
        assert len(fields["occupation"]["values"]) == 21
        assert (tokens["tokens"].map(len) == 3).all()
    assert not parameters["oracle"]["enabled"]


def test_movielens_cold_is_movielens_with_a_tenth_of_the_items_held_out():
    _, movielens = _env_config("movielens")
    catalog, cold = _env_config("movielens_cold")
    assert cold["split"]["cold_item_fraction"] == 0.1
    assert {k: v for k, v in cold.items() if k != "split"} == {
        k: v for k, v in movielens.items() if k != "split"
    }
    assert catalog["item_features"] == _env_config("movielens")[0]["item_features"]


def test_movielens_csv_reads_genres_split_on_a_bar(tmp_path):
    catalog, parameters = _env_config("movielens_csv")
    movies = tmp_path / "movies.csv"
    movies.write_text(
        "movieId,title,genres\n1,Toy Story (1995),Adventure|Animation|Children\n"
        '2,"Jumanji, The (1995)",Adventure|Fantasy\n3,Heat (1995),(no genres listed)\n'
    )
    config = dict(catalog["item_features"])
    config["dataset"] = {**config["dataset"], "filepath": str(movies)}
    raw = AbstractDataset.from_config("item_features", config).load()
    feature_spec = FeatureSpec.from_params("item", parameters["features"]["item"])
    tokens, encoder, _ = build_side(raw, feature_spec, pd.Series([1, 2, 3]), np.arange(3), "item")
    assert encoder["fields"][0]["values"] == [
        "(no genres listed)",
        "Adventure",
        "Animation",
        "Children",
        "Fantasy",
    ]
    assert tokens_of(tokens) == [[2, 3, 4], [2, 5], [1]]
    assert parameters["features"]["user"] is None


def _tokens_in_range(path: Path, vocab_size: int, n_rows: int) -> bool:
    table = pd.read_parquet(path)
    flat = np.concatenate([np.asarray(t, dtype=np.int64) for t in table["tokens"]] or [[]])
    return len(table) == n_rows and bool(((flat >= 1) & (flat < vocab_size)).all())


@pytest.mark.integration
def test_data_processing_writes_token_tables_encoders_and_the_oracle(smoke_project):
    data = smoke_project / data_root("smoke")
    encoders = json.loads((data / "04_feature" / "feature_encoders.json").read_text())
    n_items = len(pd.read_parquet(data / "03_primary" / "item_index.parquet"))
    n_users = len(pd.read_parquet(data / "03_primary" / "user_index.parquet"))
    item_tokens = data / "04_feature" / "item_feature_tokens.parquet"
    user_tokens = data / "04_feature" / "user_feature_tokens.parquet"
    assert _tokens_in_range(item_tokens, encoders["item"]["vocab_size"], n_items)
    assert _tokens_in_range(user_tokens, encoders["user"]["vocab_size"], n_users)
    assert [f["name"] for f in encoders["item"]["fields"]] == ["studio", "genres"]
    oracle = json.loads((data / "08_reporting" / "oracle_metrics.json").read_text())
    assert oracle["available"] and 0.0 < oracle["test"]["hit_rate@10"] <= 1.0


def test_the_oracle_ranks_the_same_seeded_sample_of_users_as_every_scorer(smoke_project):
    from twotower_pipeline.pipelines.features.nodes import score_oracle

    data = smoke_project / data_root("smoke")
    raw = smoke_project / "data" / "01_raw"

    def table(path: Path) -> pd.DataFrame:
        return pd.read_parquet(path)

    inputs = [
        table(raw / "synthetic_interactions_smoke_item_taste.parquet"),
        table(raw / "synthetic_interactions_smoke_user_taste.parquet"),
        table(data / "03_primary" / "user_index.parquet"),
        table(data / "03_primary" / "item_index.parquet"),
        *(
            table(data / "05_model_input" / f"{name}_interactions.parquet")
            for name in ("train", "val", "test", "test_cold")
        ),
    ]
    evaluation = {"ks": [10], "headline_k": 10, "chunk_size": 64, "max_users": 40}
    oracle = score_oracle(*inputs, {"enabled": True}, evaluation, 42)
    assert oracle["test"]["users"] == 40 and oracle["validation"]["users"] == 40


# A user's own log, as the README sets one up, first without features, then with a
# mapping whose file is not there.
OWN_LOG_ENV = {
    "globals.yml": "raw_interactions_path: data/01_raw/events.csv\n",
    "catalog.yml": "raw_interactions:\n  type: pandas.CSVDataset\n",
    "parameters.yml": "features:\n  item: null\n  user: null\n",
}


def kedro_cli(project: Path, *args: str) -> subprocess.CompletedProcess:
    """Run the `kedro` command of this environment in `project`, as a user would."""
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "COLUMNS": "200"}
    kedro = Path(sys.executable).with_name("kedro")
    return subprocess.run(
        [str(kedro), *args], cwd=project, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.integration
def test_own_log_without_features_needs_no_feature_file_and_gets_empty_tokens(make_project_copy):
    from twotower_pipeline.data.synthetic import SyntheticLogSpec, generate_interactions

    project = make_project_copy("own_log")
    env = project / "conf" / "own_log"
    env.mkdir()
    for name, text in OWN_LOG_ENV.items():
        (env / name).write_text(text)
    log = generate_interactions(SyntheticLogSpec(n_users=60, n_items=40, seed=5))
    log.to_csv(project / "data" / "01_raw" / "events.csv", index=False)
    result = kedro_cli(project, "run", "--env=own_log", "--pipeline=data_processing")
    assert result.returncode == 0, result.stderr[-3000:]

    data = project / data_root("own_log")
    encoders = json.loads((data / "04_feature" / "feature_encoders.json").read_text())
    assert encoders == {side: {"vocab_size": 1, "fields": []} for side in ("item", "user")}
    tokens = pd.read_parquet(data / "04_feature" / "item_feature_tokens.parquet")
    assert len(tokens) == log["item_id"].nunique() and (tokens["tokens"].map(len) == 0).all()
    oracle = json.loads((data / "08_reporting" / "oracle_metrics.json").read_text())
    assert oracle["available"] is False

    # A mapping whose file is not there: the run stops, before any node, in one line naming
    # the dataset, the file and what to do.
    (env / "globals.yml").write_text(
        "raw_interactions_path: data/01_raw/events.csv\nitem_features_path: data/01_raw/items.csv\n"
    )
    (env / "parameters.yml").write_text(
        "features:\n  item:\n    source: ${globals:item_features_path}\n  user: null\n"
    )
    result = kedro_cli(project, "run", "--env=own_log", "--pipeline=data_processing")
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert "item_features: the file data/01_raw/items.csv does not exist" in last_line
    assert "features: {item: null" in last_line


def test_movielens_1m_reads_movies_and_users_dat(tmp_path):
    catalog, parameters = _env_config("movielens_1m")
    files = {
        "item": "1::Toy Story (1995)::Animation|Children's|Comedy\n2::Jumanji (1995)::Adventure\n",
        "user": "1::F::1::10::48067\n2::M::56::16::70072\n",
    }
    for side, text in files.items():
        path = tmp_path / f"{side}.dat"
        path.write_text(text, encoding="latin-1")
        config = dict(catalog[f"{side}_features"])
        config["dataset"] = {**config["dataset"], "filepath": str(path)}
        raw = AbstractDataset.from_config(f"{side}_features", config).load()
        feature_spec = FeatureSpec.from_params(side, parameters["features"][side])
        tokens, encoder, _ = build_side(raw, feature_spec, pd.Series([1, 2]), np.arange(2), side)
        if side == "item":
            assert encoder["fields"][0]["values"] == [
                "Adventure",
                "Animation",
                "Children's",
                "Comedy",
            ]
            assert tokens_of(tokens) == [[2, 3, 4], [1]]
        else:
            assert [f["values"] for f in encoder["fields"]] == [
                ["F", "M"],
                ["1", "56"],
                ["10", "16"],
            ]
            assert tokens_of(tokens) == [[1, 3, 5], [2, 4, 6]]


def test_token_tables_preview_in_kedro_viz_as_json_lists(tmp_path):
    from twotower_pipeline.io.datasets import AtomicParquetDataset

    dataset = AtomicParquetDataset(filepath=str(tmp_path / "tokens.parquet"))
    dataset.save(pd.DataFrame({"item": [0, 1], "tokens": [np.array([1, 4], np.int32), []]}))
    preview = dataset.preview(nrows=2)
    assert json.loads(json.dumps(preview))["data"] == [[0, [1, 4]], [1, []]]


def test_features_pipeline_is_wired_on_an_in_memory_catalog():
    from kedro.io import DataCatalog, MemoryDataset
    from kedro.runner import SequentialRunner

    from twotower_pipeline.pipelines.features import create_pipeline

    index = pd.DataFrame({"item": np.arange(4, dtype=np.int32), "item_id": ITEM_IDS})
    users = pd.DataFrame({"user": np.arange(2, dtype=np.int32), "user_id": ["u", "v"]})
    train = pd.DataFrame({"user": [0, 0, 1], "item": [0, 1, 2], "timestamp": [1, 2, 3]})
    held_out = pd.DataFrame({"user": [1], "item": [3], "timestamp": [4]})
    inputs = {
        "train_interactions": train,
        "val_interactions": held_out.iloc[:0],
        "test_interactions": held_out.iloc[:0],
        "test_cold_interactions": held_out,
        "item_index": index,
        "user_index": users,
        "item_features": items_frame(studio=["x", "y", "x", "z"]),
        "user_features": None,
        "synthetic_item_taste": None,
        "synthetic_user_taste": None,
        "params:features": {
            "item": {
                "source": "items.csv",
                "id": "item_id",
                "categorical": ["studio"],
                "buckets": 10,
                "missing_values": "error",
            },
            "user": None,
        },
        "params:oracle": {"enabled": True},
        "params:evaluation": {"ks": [10], "chunk_size": 16, "headline_k": 10},
        "params:seed": 0,
    }
    catalog = DataCatalog({name: MemoryDataset(value) for name, value in inputs.items()})
    SequentialRunner().run(create_pipeline(), catalog)
    assert tokens_of(catalog.load("item_feature_tokens")) == [[1], [2], [1], []]
    assert tokens_of(catalog.load("user_feature_tokens")) == [[], []]
    assert catalog.load("feature_encoders")["user"] == {"vocab_size": 1, "fields": []}
    assert catalog.load("oracle_metrics")["available"] is False


def test_rows_in_messages_are_rows_of_the_file_even_after_unknown_ids_are_dropped():
    raw = pd.DataFrame({"item_id": ["zz", "a", "b"], "studio": ["x", "x", None]})
    with pytest.raises(InvalidFeaturesError, match=r"first at data row 2\)"):
        build_side(raw, spec(categorical=["studio"]), ITEM_IDS, np.arange(4), "item")
    raw = pd.DataFrame({"item_id": ["zz", "a", "b"], "genres": [["x"], ["x"], "y"]})
    with pytest.raises(InvalidFeaturesError, match=r"\(first: 'y' at data row 2\)"):
        build_side(raw, spec(multi_valued=["genres"]), ITEM_IDS, np.arange(4), "item")
