"""The served model: `mlflow models serve` answers what the pipeline and the library answer.

Unit tests check the request logic (evaluation/serving.py) on a hand-made model;
the server test trains a smoke project once, saves the pyfunc model from its
persisted artefacts, serves it on a free port of 127.0.0.1 and posts to it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from test_recommend_pipeline import ANSWER, FAST, HISTORIES, new_histories, persisted
from twotower_pipeline.evaluation.retrieval import recommend_from_histories
from twotower_pipeline.evaluation.serving import (
    HistoryLayout,
    Recommender,
    RequestError,
    item_popularity,
)
from twotower_pipeline.model.config import TwoTowerConfig
from twotower_pipeline.model.towers import TwoTowerModel

LAYOUT = HistoryLayout("user_id", "item_id", "timestamp", "auto")
INGESTION = {
    "columns": {"user": "user_id", "item": "item_id", "timestamp": "timestamp"},
    "timestamp_unit": "auto",
}


def tiny_recommender(n_items: int = 6) -> Recommender:
    """A random 6-item model; item ids 100..105, item 103 the most popular, then 101."""
    torch.manual_seed(0)
    config = TwoTowerConfig.from_dict(
        dict(
            n_users=3,
            n_items=n_items,
            embedding_dim=4,
            hidden_dims=[],
            init_std=0.1,
            logit_scale=1.0,
            max_logit_scale=100.0,
            user_id=False,
            user_id_dropout=0.0,
            history_length=3,
            history_pooling="mean",
            item_id_dropout=0.0,
            item_feature_vocab=1,
            item_feature_width=1,
            user_feature_vocab=1,
            user_feature_width=1,
        )
    )
    item_index = pd.DataFrame({"item": np.arange(n_items), "item_id": 100 + np.arange(n_items)})
    train = pd.DataFrame({"item": [3, 3, 3, 1, 1, 0]})
    return Recommender(
        TwoTowerModel(config).eval(),
        item_index,
        item_popularity(train, n_items),
        LAYOUT,
        default_k=2,
        chunk_size=8,
    )


def test_an_answer_is_recommend_from_histories_with_unknown_ids_counted():
    recommender = tiny_recommender()
    request = pd.DataFrame({"user_id": [7, 7, 7, 8], "item_id": [100, 999, 102, 105]})
    answer = recommender.answer(request, k=3)
    expected = recommend_from_histories(recommender.model, request, recommender.item_index, 3)
    pd.testing.assert_frame_equal(
        answer[["user_id", "rank", "item_id", "score"]], expected, check_dtype=False
    )
    assert answer.groupby("user_id")["unknown_items"].first().to_dict() == {7: 1, 8: 0}
    assert not answer["from_popularity"].any()


def test_a_history_of_unknown_items_is_answered_from_popularity_and_flagged():
    answer = tiny_recommender().answer(pd.DataFrame({"user_id": ["x"], "item_id": [999]}))
    assert answer["item_id"].tolist() == [103, 101]
    assert answer["score"].tolist() == [3.0, 2.0]
    assert answer["from_popularity"].all() and (answer["unknown_items"] == 1).all()


@pytest.mark.parametrize(
    ("request_rows", "k", "message"),
    [
        ({"user_id": [1]}, None, "the request has no column 'item_id' (columns: ['user_id'])"),
        ({"user_id": [1], "item_id": ["abc"]}, None, "row 0 has 'abc'"),
        ({"user_id": [1], "item_id": [None]}, None, "column 'item_id' has 1 null(s), first row 0"),
        ({"user_id": [1], "item_id": [100]}, 0, "k=0 is outside 1..6 (the catalogue's size)"),
        ({"user_id": [1], "item_id": [100]}, 7, "k=7 is outside 1..6 (the catalogue's size)"),
        ({"user_id": [1], "item_id": [100]}, "3", "k must be a whole number from 1 to 6"),
        ({"user_id": [1], "item_id": [100], "timestamp": ["soon"]}, None, "unreadable"),
        ({"user_id": [], "item_id": []}, None, "the request has no history rows"),
    ],
)
def test_a_malformed_request_is_one_line_that_says_what_is_wrong(request_rows, k, message):
    with pytest.raises(RequestError) as error:
        tiny_recommender().answer(pd.DataFrame(request_rows), k)
    assert message in str(error.value) and "\n" not in str(error.value)


# --- the server ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def post(port: int, body: bytes) -> tuple[int, str]:
    """Return (status, body) of a POST to /invocations."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def serve(model: Path, port: int) -> subprocess.Popen:
    """Start `mlflow models serve` on 127.0.0.1:port; return once /ping answers (at most 120 s)."""
    command = [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", str(model)]
    command += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its workers share the group, stopped together
        env={**os.environ, "MLFLOW_LOGGING_LEVEL": "WARNING"},
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                return server
        except OSError:
            time.sleep(0.5)
    stop(server)
    raise AssertionError(f"mlflow models serve did not answer on port {port} within 120 s")


def stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=20)


@pytest.fixture(scope="module")
def served(make_project_copy, kedro_run, tmp_path_factory):
    """A trained smoke project, its recommend pipeline's answer, and its model being served."""
    pytest.importorskip("mlflow")
    from twotower_pipeline.io.serving import save_recommender

    project = make_project_copy("serving")
    kedro_run(project, params=FAST)
    model, item_index, train = persisted(project)
    histories = new_histories(item_index, train)
    histories.to_csv(project / HISTORIES, index=False)
    kedro_run(project, "recommend", params=FAST)
    saved = save_recommender(
        tmp_path_factory.mktemp("served") / "recommender",
        model.state_dict(),
        json.loads((project / "data/smoke/06_models/model_config.json").read_text()),
        item_index,
        train,
        INGESTION,
        {"k": 10, "chunk_size": 1024},
    )
    port = free_port()
    server = serve(saved, port)
    try:
        yield port, saved, histories, pd.read_parquet(project / ANSWER), model, item_index
    finally:
        stop(server)


@pytest.mark.integration
def test_the_server_the_pipeline_and_the_library_give_one_answer(served):
    port, _, histories, pipeline_answer, model, item_index = served
    body = {"dataframe_split": histories.to_dict(orient="split", index=False)}
    status, text = post(port, json.dumps({**body, "params": {"k": 10}}).encode())
    assert status == 200, text
    answer = pd.DataFrame(json.loads(text)["predictions"])
    answer["score"] = answer["score"].astype(np.float32)
    pd.testing.assert_frame_equal(answer, pipeline_answer, check_dtype=False)
    library = recommend_from_histories(model, histories, item_index, k=10)
    library = library.sort_values(["user_id", "rank"], ignore_index=True)
    from_model = answer[~answer["from_popularity"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(
        from_model[["user_id", "rank", "item_id", "score"]], library, check_dtype=False
    )
    per_user = answer.drop_duplicates("user_id").set_index("user_id")
    assert per_user.loc["with-unknown", "unknown_items"] == 2
    assert per_user.loc["only-unknown", "from_popularity"]


@pytest.mark.integration
def test_the_input_example_mlflow_wrote_is_a_request_the_server_answers(served):
    port, saved, *_ = served
    status, text = post(port, (saved / "serving_input_example.json").read_bytes())
    assert status == 200, text
    assert len(json.loads(text)["predictions"]) == 2 * 10  # two example users, the default K


@pytest.mark.integration
@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"dataframe_split": {"columns": ["user_id"], "data": [["u"]]}}, "no column 'item_id'"),
        (
            {"dataframe_split": {"columns": ["user_id", "item_id"], "data": [["u", None]]}},
            "column 'item_id' has 1 null(s)",
        ),
        (
            {"dataframe_records": [{"user_id": "u", "item_id": "i00001"}], "params": {"k": 0}},
            "k=0 is outside",
        ),
        (
            {"dataframe_records": [{"user_id": "u", "item_id": "i00001"}], "params": {"k": 10**6}},
            "the catalogue's size",
        ),
        ({"dataframe_records": [{"user_id": "u"}], "params": {"k": "ten"}}, "'k'"),
        ({"histories": []}, "exactly one of the input fields"),
        ("not json", "valid JSON"),
    ],
)
def test_a_malformed_request_gets_a_4xx_and_one_line(served, body, reason):
    port, *_ = served
    payload = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    status, text = post(port, payload)
    assert 400 <= status < 500, (status, text)
    assert "\n" not in text.strip()
    assert reason in json.loads(text)["message"]


def test_a_logged_model_loads_back_from_its_run(tmp_path):
    mlflow = pytest.importorskip("mlflow")
    from twotower_pipeline.io.serving import log_recommender

    recommender = tiny_recommender()
    train = pd.DataFrame({"user": [0, 0, 1], "item": [3, 1, 3], "timestamp": [1, 2, 3]})
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        run = mlflow.MlflowClient().create_run(
            mlflow.MlflowClient().create_experiment("serving", str(tmp_path / "artifacts"))
        )
        uri = log_recommender(
            run.info.run_id,
            recommender.model.state_dict(),
            recommender.model.config.to_dict(),
            recommender.item_index,
            train,
            INGESTION,
            {"k": 2, "chunk_size": 8},
        )
        loaded = mlflow.pyfunc.load_model(uri)
    finally:
        mlflow.set_tracking_uri(previous)
    request = pd.DataFrame({"user_id": [7, 7], "item_id": [100, 102]})
    pd.testing.assert_frame_equal(
        loaded.predict(request, params={"k": 3}), recommender.answer(request, 3)
    )
