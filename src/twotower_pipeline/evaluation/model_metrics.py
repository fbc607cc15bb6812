"""The model's figures on each evaluation set: ranking metrics, then log loss and AUC."""

from __future__ import annotations

import numpy as np
import pandas as pd

from twotower_pipeline.model.towers import TwoTowerModel
from twotower_pipeline.ranking.metrics import Scorer
from twotower_pipeline.ranking.pointwise import binary_log_loss, pair_scores, roc_auc
from twotower_pipeline.ranking.protocol import HeldOutSet, score_sets
from twotower_pipeline.training.examples import validation_sample


def pointwise_metrics(
    scorer: Scorer, held_out: HeldOutSet, n_items: int, neg_ratio: int, seed: int, chunk: int
) -> dict:
    """Return log loss and AUC of the scorer's logits on positives + neg_ratio negatives each.

    The sample is drawn as training's validation sample (a user's negatives
    exclude its known and held-out positives), so the figures compare with
    the history's val_loss / val_auc.
    """
    sample = validation_sample(held_out.known, held_out.positives, n_items, neg_ratio, seed)
    items = sample.items.numpy()
    labels = sample.labels.numpy().ravel()
    # One row per positive and its negatives (users (P,), items (P, 1 + neg_ratio)), or flat.
    users = np.repeat(sample.users.numpy(), items.size // sample.users.numel())
    logits = pair_scores(scorer, users, items.ravel(), chunk_size=chunk)
    positives = int(labels.sum())
    return {
        "log_loss": binary_log_loss(logits, labels),
        "auc": roc_auc(logits, labels),
        "sample_positives": positives,
        "sample_negatives": int(labels.size - positives),
    }


def model_metrics(
    model: TwoTowerModel,
    sets: dict[str, HeldOutSet],
    n_users: int,
    n_items: int,
    evaluation: dict,
    neg_ratio: int,
    seed: int,
) -> dict:
    """Return the model's ranking metrics on each set; test and validation add log loss and AUC.

    The pointwise figures are on each set's positives plus neg_ratio sampled
    negatives each (keys test_* and val_*). The model builds one scorer per
    distinct (known, positives) pair of frames and reuses it.
    """
    chunk = evaluation["chunk_size"]
    scorers: dict[tuple[int, int], Scorer] = {}

    def scorer_for(known: pd.DataFrame, positives: pd.DataFrame) -> Scorer:
        key = (id(known), id(positives))
        if key not in scorers:
            scorers[key] = model.catalogue_scorer(known, positives)
        return scorers[key]

    results = score_sets(scorer_for, sets, n_users, n_items, evaluation["ks"], chunk, seed)
    for section, prefix in (("test", "test"), ("validation", "val")):
        held_out = sets[section]
        scorer = scorer_for(held_out.known, held_out.positives)
        pointwise = pointwise_metrics(scorer, held_out, n_items, neg_ratio, seed, chunk)
        results[section].update({f"{prefix}_{name}": v for name, v in pointwise.items()})
    return results
