"""A checkpoint records what it was trained on; a resume of anything else is refused by name.

The fingerprint (config/fingerprint.py) is checked on small hand-made tables:
the same rows and settings agree, and every kind of difference (the train
split's rows, the split, sampling, environment, model block, candidate) is
named in the one-line refusal.
"""

from __future__ import annotations

import pandas as pd
import pytest

from twotower_pipeline.config.fingerprint import (
    fingerprint_differences,
    frame_digest,
    resume_refusal,
    training_fingerprint,
)

TRAIN = pd.DataFrame({"user": [0, 0, 1], "item": [3, 4, 3], "timestamp": [10, 20, 30]})


def fingerprint(**changes):
    arguments = {
        "split": {"strategy": "leave_last_out", "min_train_interactions": 2},
        "sampling": {"neg_ratio": 5},
        "environment": "smoke",
        "model": {"embedding_dim": 16},
        "candidate": "configured",
        **changes,
    }
    return training_fingerprint(changes.pop("train", TRAIN), **arguments)


def test_the_same_rows_and_settings_agree():
    assert fingerprint_differences(fingerprint(), fingerprint()) == []
    assert frame_digest(TRAIN.copy()) == frame_digest(TRAIN)


def test_the_rows_are_what_counts_not_the_index():
    assert frame_digest(TRAIN.set_axis([7, 8, 9])) == frame_digest(TRAIN)
    moved = TRAIN.assign(timestamp=[10, 20, 31])
    assert frame_digest(moved) != frame_digest(TRAIN)


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"split": {"strategy": "global_temporal", "min_train_interactions": 2}},
         "split.strategy 'leave_last_out' -> now 'global_temporal'"),
        ({"sampling": {"neg_ratio": 2}}, "sampling.neg_ratio 5 -> now 2"),
        ({"environment": None}, "environment 'smoke' -> now 'local'"),
        ({"model": {"embedding_dim": 32}}, "model.embedding_dim 16 -> now 32"),
        ({"candidate": "wide"}, "candidate 'configured' -> now 'wide'"),
    ],
    ids=["split", "sampling", "environment", "model", "candidate"],
)  # fmt: skip
def test_each_difference_is_named(changes, named):
    assert fingerprint_differences(fingerprint(), fingerprint(**changes)) == [named]


def test_other_train_rows_are_named_with_their_counts():
    now = training_fingerprint(
        TRAIN.iloc[:2],
        split={},
        sampling={},
        environment="smoke",
        model={},
        candidate="configured",
    )
    written = {**now, "train_interactions": frame_digest(TRAIN)}
    (difference,) = fingerprint_differences(written, now)
    assert difference.startswith("the train split's rows (3 rows, sha256 ")
    assert " -> now 2 rows, " in difference


def test_a_checkpoint_without_a_fingerprint_is_not_resumed_silently():
    assert fingerprint_differences(None, fingerprint()) == [
        "it records no fingerprint of its data (written by an older version)"
    ]


def test_the_refusal_is_one_line_naming_the_file_and_what_to_do():
    message = resume_refusal(
        "data/smoke/06_models/checkpoints_smoke/last.pt",
        fingerprint_differences(fingerprint(), fingerprint(sampling={"neg_ratio": 2})),
    )
    assert message == (
        "training.resume is true but data/smoke/06_models/checkpoints_smoke/last.pt was trained "
        "on other data or settings: sampling.neg_ratio 5 -> now 2. Resume with the settings it "
        "was written with, or set training.resume=false to start from epoch 1"
    )
