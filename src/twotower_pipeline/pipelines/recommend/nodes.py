"""Recommend node: a thin wrapper over twotower_pipeline.evaluation.serving."""

from __future__ import annotations

import logging

import pandas as pd

from twotower_pipeline.config.errors import PipelineInputError
from twotower_pipeline.config.schema import parameter_block
from twotower_pipeline.evaluation.serving import (
    HistoryLayout,
    Recommender,
    RequestError,
    item_popularity,
)
from twotower_pipeline.model.towers import TwoTowerModel

logger = logging.getLogger(__name__)


def recommend_for_histories(  # seven arguments: each is one dataset or block of the catalog
    recommend_histories: pd.DataFrame,
    two_tower_model: dict,
    model_config: dict,
    item_index: pd.DataFrame,
    train_interactions: pd.DataFrame,
    ingestion: dict,
    recommend: dict,
) -> pd.DataFrame:
    """Return each history's top-k items (evaluation.serving.ANSWER_COLUMNS), from the saved model.

    The same answer as the served model's for the same rows: one Recommender answers both.
    """
    block = parameter_block("recommend", recommend)
    recommender = Recommender(
        model=TwoTowerModel.from_state(model_config, two_tower_model).eval(),
        item_index=item_index,
        popularity=item_popularity(train_interactions, len(item_index)),
        layout=HistoryLayout.from_ingestion(ingestion),
        default_k=block.k,
        chunk_size=block.chunk_size,
    )
    try:
        answer = recommender.answer(recommend_histories)
    except RequestError as error:
        raise PipelineInputError(f"recommend_histories: {error}") from None
    users = answer.drop_duplicates("user_id")
    logger.info(
        "recommend: top-%d for %d user(s); %d answered from popularity (no item the model "
        "knows); %d history row(s) with an unknown item dropped",
        block.k,
        len(users),
        int(users["from_popularity"].sum()),
        int(users["unknown_items"].sum()),
    )
    return answer
