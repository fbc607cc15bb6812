"""`kedro run --pipeline=recommend`: a file of new users' histories -> their top-K, no training.

One project copy is trained once on the smoke data (two epochs, one candidate),
then the recommend pipeline reads histories written in the raw log's layout.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from twotower_pipeline.evaluation.retrieval import recommend_from_histories
from twotower_pipeline.hooks.readable_errors import ReadableError
from twotower_pipeline.model.towers import TwoTowerModel
from twotower_pipeline.pipeline_registry import register_pipelines

pytestmark = pytest.mark.integration

# A run of seconds: the towers need not be good, only persisted.
FAST = {
    "model_selection": {"enabled": False},
    "num_epochs": 2,
    "evaluation": {"als": {"enabled": False}},
}
HISTORIES = "data/01_raw/recommend_histories.csv"
ANSWER = "data/smoke/07_model_output/history_recommendations.parquet"


def persisted(project) -> tuple[TwoTowerModel, pd.DataFrame, pd.DataFrame]:
    """Return the latest persisted model, item_index and train_interactions of a smoke project."""
    import json

    import torch

    models = sorted((project / "data/smoke/06_models/two_tower_model.pt").iterdir())
    state = torch.load(models[-1] / "two_tower_model.pt", weights_only=True)
    config = json.loads((project / "data/smoke/06_models/model_config.json").read_text())
    item_index = pd.read_parquet(project / "data/smoke/03_primary/item_index.parquet")
    train = pd.read_parquet(project / "data/smoke/05_model_input/train_interactions.parquet")
    return TwoTowerModel.from_state(config, state).eval(), item_index, train


def new_histories(item_index: pd.DataFrame, train: pd.DataFrame) -> pd.DataFrame:
    """Return histories in the raw log's layout: a training user's, a new user's, unknown ids."""
    ids = item_index.set_index("item")["item_id"]
    first = train[train["user"] == train["user"].iloc[0]].sort_values("timestamp")
    rows = [
        ("known-user", ids[i], int(t))
        for i, t in zip(first["item"], first["timestamp"], strict=True)
    ]
    rows += [("new-user", ids[i], 1_700_000_000 + n) for n, i in enumerate([3, 1, 4, 1, 5])]
    rows += [
        ("with-unknown", ids[2], 1_700_000_000),
        ("with-unknown", "no-such-item", 1_700_000_001),
    ]
    rows += [("with-unknown", ids[7], 1_700_000_002), ("with-unknown", "nor-this", 1_700_000_003)]
    rows += [("only-unknown", "no-such-item", 1_700_000_000)]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


@pytest.fixture(scope="module")
def trained(make_project_copy, kedro_run):
    project = make_project_copy("recommend")
    kedro_run(project, params=FAST)
    return project


@pytest.fixture(scope="module")
def answered(trained, kedro_run):
    model, item_index, train = persisted(trained)
    histories = new_histories(item_index, train)
    histories.to_csv(trained / HISTORIES, index=False)
    kedro_run(trained, "recommend", params=FAST)
    return pd.read_parquet(trained / ANSWER), histories, model, item_index, train


def test_the_pipeline_answers_what_recommend_from_histories_answers(answered):
    answer, histories, model, item_index, _ = answered
    expected = recommend_from_histories(model, histories, item_index, k=10)
    served = answer[~answer["from_popularity"]].reset_index(drop=True)
    expected = expected.sort_values(["user_id", "rank"], ignore_index=True)
    pd.testing.assert_frame_equal(
        served[["user_id", "rank", "item_id", "score"]], expected, check_dtype=False
    )
    assert set(served["user_id"]) == {"known-user", "new-user", "with-unknown"}
    assert (answer.groupby("user_id").size() == 10).all()


def test_no_answer_holds_an_item_of_the_users_own_history(answered):
    answer, histories, *_ = answered
    seen = set(zip(histories["user_id"], histories["item_id"], strict=True))
    assert not any(pair in seen for pair in zip(answer["user_id"], answer["item_id"], strict=True))


def test_unknown_items_are_counted_and_a_history_of_none_known_gets_popularity(answered):
    answer, _, _, item_index, train = answered
    per_user = answer.drop_duplicates("user_id").set_index("user_id")
    assert per_user["unknown_items"].to_dict() == {
        "known-user": 0,
        "new-user": 0,
        "only-unknown": 1,
        "with-unknown": 2,
    }
    assert per_user["from_popularity"].to_dict()["only-unknown"]
    popular = answer[answer["user_id"] == "only-unknown"]
    counts = np.bincount(train["item"], minlength=len(item_index))
    top = np.argsort(-counts, kind="stable")[:10]
    assert popular["item_id"].tolist() == item_index.set_index("item")["item_id"][top].tolist()
    assert popular["score"].tolist() == counts[top].astype(float).tolist()


def test_a_bad_histories_file_stops_the_run_with_one_line(trained, kedro_run):
    (trained / HISTORIES).write_text("user_id,timestamp\nnew-user,1700000000\n")
    with pytest.raises(ReadableError) as error:  # `kedro run` prints it alone, exit code 1
        kedro_run(trained, "recommend", params=FAST)
    assert error.value.exit_code == 1
    assert error.value.format_message() == (
        "recommend_histories: the request has no column 'item_id' "
        "(columns: ['user_id', 'timestamp'])"
    )


def test_recommend_is_registered_and_not_part_of_the_default_run():
    pipelines = register_pipelines()
    assert [n.name for n in pipelines["recommend"].nodes] == ["recommend.recommend_for_histories"]
    assert "history_recommendations" not in pipelines["__default__"].all_outputs()
