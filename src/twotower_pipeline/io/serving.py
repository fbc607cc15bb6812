"""The served model: histories in, top-K out, as one MLflow pyfunc model with its artefacts.

The model folder holds the persisted artefacts, nothing pickled but the small
wrapper class: the state dict (loaded with weights_only=True) and model_config
that rebuild the towers (feature tokens are buffers of the state dict, so no
encoder is needed to score), item_index (original id <-> index), each item's
training popularity (the answer for a history of unknown items) and the raw
log's layout with the default K. `evaluation/serving.py` answers; this module
only loads, saves and turns a RequestError into MLflow's INVALID_PARAMETER_VALUE,
which the scoring server answers with 400 (a 5xx never comes from a bad request).

    mlflow models serve -m runs:/<run id>/recommender --env-manager local --port 5001

mlflow is the optional extra `[mlflow]`; without it this module still imports
(the wrapper's base class is then a plain object) and nothing here can run.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from twotower_pipeline.evaluation.serving import (
    HistoryLayout,
    Recommender,
    RequestError,
    item_popularity,
)
from twotower_pipeline.model.towers import TwoTowerModel

try:
    from mlflow.pyfunc import PythonModel
except ImportError:  # the optional extra is absent: nothing is served, the package still imports
    PythonModel = object

MODEL_NAME = "recommender"  # the artefact folder of a run: runs:/<run id>/recommender
ARTEFACTS = "recommender_files"  # the key of the folder among the pyfunc model's artifacts
STATE_FILE = "two_tower_model.pt"
CONFIG_FILE = "model_config.json"
ITEM_INDEX_FILE = "item_index.parquet"
POPULARITY_FILE = "item_popularity.npy"
SERVING_FILE = "serving.json"
MODEL_CODE = """\
from mlflow.models import set_model

from twotower_pipeline.io.serving import RecommenderModel

set_model(RecommenderModel())
"""
EXAMPLE_USERS = 2  # users in the input example (serving_input_example.json)
EXAMPLE_ITEMS = 5  # latest training items of each


def write_artefacts(
    folder: Path,
    state_dict: dict,
    model_config: dict,
    item_index: pd.DataFrame,
    train_interactions: pd.DataFrame,
    layout: HistoryLayout,
    recommend: dict,
) -> None:
    """Write everything the served model reads into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state_dict, folder / STATE_FILE)
    (folder / CONFIG_FILE).write_text(json.dumps(model_config, indent=2))
    item_index.loc[:, ["item", "item_id"]].to_parquet(folder / ITEM_INDEX_FILE, index=False)
    np.save(folder / POPULARITY_FILE, item_popularity(train_interactions, len(item_index)))
    settings = {
        "layout": layout.to_dict(),
        "k": recommend["k"],
        "chunk_size": recommend["chunk_size"],
    }
    (folder / SERVING_FILE).write_text(json.dumps(settings, indent=2))


def read_recommender(folder: Path) -> Recommender:
    """Return the Recommender of an artefact folder written by write_artefacts."""
    folder = Path(folder)
    config = json.loads((folder / CONFIG_FILE).read_text())
    state = torch.load(folder / STATE_FILE, weights_only=True)
    settings = json.loads((folder / SERVING_FILE).read_text())
    return Recommender(
        model=TwoTowerModel.from_state(config, state).eval(),
        item_index=pd.read_parquet(folder / ITEM_INDEX_FILE),
        popularity=np.load(folder / POPULARITY_FILE),
        layout=HistoryLayout(**settings["layout"]),
        default_k=int(settings["k"]),
        chunk_size=int(settings["chunk_size"]),
    )


class RecommenderModel(PythonModel):
    """MLflow pyfunc: a table of history rows (and params {"k": K}) in, ANSWER_COLUMNS out."""

    def load_context(self, context) -> None:
        self.recommender = read_recommender(Path(context.artifacts[ARTEFACTS]))

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None):
        from mlflow.exceptions import MlflowException

        try:
            return self.recommender.answer(model_input, (params or {}).get("k"))
        except RequestError as error:
            raise MlflowException.invalid_parameter_value(str(error)) from None


def input_example(
    train_interactions: pd.DataFrame, item_index: pd.DataFrame, layout: HistoryLayout
) -> pd.DataFrame:
    """Return a request of a few training users' latest items, in the raw log's layout."""
    train = train_interactions.sort_values(["user", "timestamp", "item"], kind="stable")
    users = train["user"].drop_duplicates().to_numpy()[:EXAMPLE_USERS]
    rows = train[train["user"].isin(users)].groupby("user").tail(EXAMPLE_ITEMS)
    seconds = rows["timestamp"].to_numpy(np.int64)
    if layout.timestamp_unit == "iso":
        timestamps: Any = pd.to_datetime(seconds, unit="s", utc=True).strftime("%Y-%m-%dT%H:%M:%SZ")
    elif layout.timestamp_unit == "ms":
        timestamps = seconds * 1000
    else:
        timestamps = seconds
    item_ids = item_index.set_index("item")["item_id"]
    return pd.DataFrame(
        {
            # An example of a new user's history: its name says it is not a training user.
            layout.user: [f"example-{u}" for u in rows["user"]],
            layout.item: item_ids.loc[rows["item"].to_numpy()].to_numpy(),
            layout.timestamp: np.asarray(timestamps),
        }
    )


def save_recommender(
    path: Path,
    state_dict: dict,
    model_config: dict,
    item_index: pd.DataFrame,
    train_interactions: pd.DataFrame,
    ingestion: Any,
    recommend: dict,
) -> Path:
    """Write the pyfunc model (MLmodel, artefacts, serving_input_example.json) to `path`."""
    import mlflow.pyfunc
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec

    layout = HistoryLayout.from_ingestion(ingestion)
    # No input schema: the request is checked by evaluation/serving.py, whose messages
    # name the column and the row; MLflow's own enforcement would answer first and
    # otherwise. K is a param with the configured default.
    signature = ModelSignature(
        inputs=None, params=ParamSchema([ParamSpec("k", "long", int(recommend["k"]))])
    )
    with tempfile.TemporaryDirectory() as scratch:
        files = Path(scratch) / ARTEFACTS
        write_artefacts(
            files, state_dict, model_config, item_index, train_interactions, layout, recommend
        )
        # Models from code: MLflow runs this file to get the model, so nothing is pickled.
        code = Path(scratch) / "recommender_model.py"
        code.write_text(MODEL_CODE)
        mlflow.pyfunc.save_model(
            path=str(path),
            python_model=str(code),
            artifacts={ARTEFACTS: str(files)},
            signature=signature,
            input_example=(
                input_example(train_interactions, item_index, layout),
                {"k": int(recommend["k"])},
            ),
        )
    return Path(path)


def log_recommender(run_id: str, *artefacts: Any) -> str:
    """Log the served model to a run under recommender/; return its URI (runs:/<id>/recommender).

    `artefacts` are save_recommender's after its path: the state dict, model_config,
    item_index, train_interactions, the ingestion block and the recommend block.
    Saved, then logged as the run's artefacts, so it works on a run that is
    already ended (kedro-mlflow ends its run before the project's hooks).
    """
    from mlflow import MlflowClient

    with tempfile.TemporaryDirectory() as scratch:
        saved = save_recommender(Path(scratch) / MODEL_NAME, *artefacts)
        MlflowClient().log_artifacts(run_id, str(saved), MODEL_NAME)
        shutil.rmtree(saved, ignore_errors=True)
    return f"runs:/{run_id}/{MODEL_NAME}"


CATALOG_INPUTS = ("two_tower_model", "model_config", "item_index", "train_interactions")


def log_recommender_from_catalog(run_id: str, catalog: Any) -> str:
    """Log the served model of a finished run from its catalog (the persisted, latest versions)."""
    state = catalog.load("two_tower_model")
    return log_recommender(
        run_id,
        state.state_dict() if hasattr(state, "state_dict") else state,
        catalog.load("model_config"),
        catalog.load("item_index"),
        catalog.load("train_interactions"),
        catalog.load("params:ingestion"),
        catalog.load("params:recommend"),
    )
