"""A checkpoint records what it was trained on; a resume of anything else is refused by name.

The fingerprint (config/fingerprint.py) is checked on small hand-made tables:
the same rows and settings agree, and every kind of difference (the train
split's rows, the split, sampling, environment, model block, candidate) is
named in the one-line refusal. Then the training node on a tiny log with two
candidates: a resume after a kill continues each candidate from its own
checkpoint (or trains one whose file is another run's), another split is
refused by name, and every defect of a checkpoint file (empty, truncated, not
a checkpoint) or a full disk while writing one is one line naming the file.
"""

from __future__ import annotations

import errno
import logging
import os

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import run_on_a_full_tmpfs
from twotower_pipeline.config.errors import DiskFullError, PipelineInputError
from twotower_pipeline.config.fingerprint import (
    fingerprint_differences,
    frame_digest,
    resume_refusal,
    training_fingerprint,
)
from twotower_pipeline.data.sampling import build_training_examples
from twotower_pipeline.pipelines.training.nodes import train_two_tower
from twotower_pipeline.training import checkpoints
from twotower_pipeline.training import loop as training_loop

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


# --- the training node: resume candidate by candidate, defects in one line ------------------

N_USERS, N_ITEMS, NEG = 8, 8, 2
MODEL = {
    "embedding_dim": 4,
    "hidden_dims": [],
    "init_std": 0.1,
    "max_logit_scale": 100.0,
    "user_id": True,
    "user_id_dropout": 0.0,
    "history_length": 0,
    "history_pooling": "mean",
    "item_id_dropout": 0.0,
}
TRAINING = {
    "batch_size": 8,
    "learning_rate": 0.05,
    "weight_decay": 0.0,
    "scale_lr_ratio": 1.0,
    "lr_schedule": "constant",
    "warmup_epochs": 0.0,
    "resample_each_epoch": True,
    "chunk_positives": 64,
    "optimizer": "rowwise",
    "compile_rows": False,
    "device": "cpu",
    "resume": False,
    "progress_bar": False,
    "loss": "bce",
    "log_q": True,
}
SELECTION = {"enabled": True, "alternatives": {"wide": {"embedding_dim": 8}}}
SPLIT = {"strategy": "leave_last_out", "min_train_interactions": 2}


def tiny_log() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Users 0-3 like items 0-3, users 4-7 items 4-7: three in train, one held out."""
    train_rows, val_rows = [], []
    for user in range(N_USERS):
        group = 0 if user < 4 else 4
        liked = [group + (user + j) % 4 for j in range(4)]
        train_rows += [(user, item, 10 * (j + 1)) for j, item in enumerate(liked[:3])]
        val_rows.append((user, liked[3], 40))
    columns = ["user", "item", "timestamp"]
    return (
        pd.DataFrame(train_rows, columns=columns).astype(np.int64),
        pd.DataFrame(val_rows, columns=columns).astype(np.int64),
    )


def train_node(folder, *, train=None, split=SPLIT, environment="smoke", **training):
    """Run the training node on the tiny log with two candidates; return its outputs."""
    own_train, val = tiny_log()
    train = own_train if train is None else train
    return train_two_tower(
        build_training_examples(train, N_ITEMS, NEG, np.random.default_rng([7, 0])),
        train,
        val,
        pd.DataFrame({"user": np.arange(N_USERS), "user_id": np.arange(N_USERS)}),
        pd.DataFrame({"item": np.arange(N_ITEMS), "item_id": np.arange(N_ITEMS)}),
        7,
        NEG,
        1.0,
        2,
        MODEL,
        {**TRAINING, "checkpoint_dir": str(folder), **training},
        {"distribution": "uniform", "popularity_alpha": 0.75},
        {"headline_k": 3, "chunk_size": 4, "max_users": None},
        model_selection=SELECTION,
        split=split,
        run_environment=environment,
    )


def kill_at_epoch(monkeypatch, nth: int) -> None:
    """Make the nth epoch trained (counting across candidates) die as a killed run would."""
    real, calls = training_loop.train_epoch, {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == nth:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(training_loop, "train_epoch", dying)


def figures(outputs) -> list:
    """The candidates' figures and the chosen history, without timings."""
    history = outputs[2].drop(columns=["examples_per_second", "threads", "seconds"])
    return [outputs[5]["candidates"], history.to_dict("list")]


def refusal(folder, **settings) -> str:
    with pytest.raises(PipelineInputError) as refused:
        train_node(folder, resume=True, **settings)
    message = str(refused.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("killed_at", "resumed"),
    [(3, "wide from epoch 1"), (4, "wide from its epoch 1")],
    ids=["killed_in_the_second_candidates_first_epoch", "killed_in_its_second_epoch"],
)
def test_resume_after_a_kill_with_new_settings_continues_each_candidate(
    tmp_path, monkeypatch, caplog, killed_at, resumed
):
    folder = tmp_path / "checkpoints"
    train_node(folder)  # an earlier run, other settings: both candidates' checkpoints are its
    uninterrupted = train_node(tmp_path / "reference", learning_rate=0.02)
    with monkeypatch.context() as patch:
        kill_at_epoch(patch, killed_at)
        with pytest.raises(KeyboardInterrupt):
            train_node(folder, learning_rate=0.02)
    with caplog.at_level(logging.WARNING):
        again = train_node(folder, learning_rate=0.02, resume=True)
    assert figures(again) == figures(uninterrupted)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if killed_at == 3:  # wide's checkpoint was the earlier run's: trained afresh, said so
        (warning,) = warned
        assert warning.startswith("training.resume: candidate 'wide' trains from epoch 1: its ")
        assert "training.learning_rate 0.05 -> now 0.02" in warning
    else:
        assert warned == []


def test_resume_with_another_split_is_refused_naming_the_split(tmp_path):
    folder = tmp_path / "checkpoints"
    train_node(folder)
    message = refusal(folder, split={**SPLIT, "strategy": "global_temporal"})
    assert message.startswith(f"training.resume is true but {folder}/last.pt was trained on ")
    assert "split.strategy 'leave_last_out' -> now 'global_temporal'" in message
    assert message.endswith("or set training.resume=false to start from epoch 1")


def test_resume_on_other_train_rows_or_in_another_environment_is_refused(tmp_path):
    folder = tmp_path / "checkpoints"
    train_node(folder)
    train, _ = tiny_log()
    assert "the train split's rows (24 rows, sha256 " in refusal(folder, train=train.iloc[:-1])
    assert "environment 'smoke' -> now 'local'" in refusal(folder, environment=None)


def test_resume_with_no_checkpoint_of_any_candidate_names_the_configured_one(tmp_path):
    message = refusal(tmp_path / "none")
    assert message == (
        f"training.resume is true but there is no checkpoint at {tmp_path}/none/last.pt: "
        "set training.resume=false to start from epoch 1"
    )


def test_a_candidate_without_a_checkpoint_trains_from_epoch_1_beside_one_that_resumes(
    tmp_path, caplog
):
    folder = tmp_path / "checkpoints"
    first = train_node(folder)
    os.unlink(folder / "wide" / "last.pt")
    with caplog.at_level(logging.WARNING):
        again = train_node(folder, resume=True)
    assert figures(again) == figures(first)
    assert any("candidate 'wide' has no checkpoint at " in r.getMessage() for r in caplog.records)


def broken(path, content: bytes | None = None, state=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if state is not None:
        torch.save(state, path)
    else:
        path.write_bytes(content)


@pytest.mark.parametrize(
    ("defect", "said"),
    [
        ("zero_bytes", "is empty (0 bytes), so training.resume cannot continue from it: "),
        ("truncated", " cannot be read ("),
        ("foreign_dict", " is not a checkpoint of this project: it lacks model, optimizer, "),
        ("not_a_dict", " is not a checkpoint of this project: it lacks model, "),
    ],
)
def test_a_defective_checkpoint_is_one_line_naming_the_file_and_what_to_do(tmp_path, defect, said):
    folder = tmp_path / "checkpoints"
    train_node(folder)
    path = folder / "last.pt"
    whole = path.read_bytes()
    if defect == "zero_bytes":
        broken(path, b"")
    elif defect == "truncated":
        broken(path, whole[: len(whole) // 2])
    elif defect == "foreign_dict":
        broken(path, state={"weights": torch.zeros(2), "epoch": 3})
    else:
        broken(path, state=[1, 2, 3])
    message = refusal(folder)
    assert str(path) in message and said in message
    assert message.endswith("delete it, or set training.resume=false to start from epoch 1")
    if defect == "truncated":
        assert "it may be truncated" in message


def test_checkpoint_temp_files_are_the_process_own_and_always_removed(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    train_node(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["last.pt", "wide"]
    names = []
    real = torch.save

    def watching(state, handle):
        names.append(os.path.basename(handle.name))
        real(state, handle)
        raise KeyboardInterrupt  # killed between the write and the rename

    monkeypatch.setattr(checkpoints.torch, "save", watching)
    before = (folder / "last.pt").read_bytes()
    with pytest.raises(KeyboardInterrupt):
        train_node(folder)
    (name,) = names
    assert name.startswith(f".last.pt.{os.getpid()}.") and name.endswith(".tmp")
    assert sorted(p.name for p in folder.iterdir()) == ["last.pt", "wide"]
    assert (folder / "last.pt").read_bytes() == before


def test_a_checkpoint_that_fills_the_disk_is_one_line_naming_the_file_and_the_size(
    tmp_path, monkeypatch
):
    folder = tmp_path / "checkpoints"
    train_node(folder)
    before = (folder / "last.pt").read_bytes()
    real = torch.save

    def filling(state, handle):
        if not hasattr(handle, "name"):  # counting the size the checkpoint needs
            return real(state, handle)
        handle.write(b"x" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoints.torch, "save", filling)
    with pytest.raises(DiskFullError) as full:
        train_node(folder)
    message = str(full.value)
    assert message.startswith(
        f"no space left on the disk while writing the checkpoint {folder}/last.pt: it needs "
    )
    assert " is free there; free some space (the previous checkpoint is unchanged)" in message
    assert sorted(p.name for p in folder.iterdir()) == ["last.pt", "wide"]
    assert (folder / "last.pt").read_bytes() == before


_FILL_A_TMPFS = """
import os, subprocess, sys
import torch
from twotower_pipeline.config.errors import DiskFullError
from twotower_pipeline.training.checkpoints import CheckpointedSpec, save_checkpoint
folder = sys.argv[1]
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", folder], check=True)
fields = dict.fromkeys(CheckpointedSpec.__dataclass_fields__)
spec = CheckpointedSpec(**{**fields, "checkpoint_dir": folder})
save_checkpoint(spec, {"model": torch.zeros(10)})
try:
    save_checkpoint(spec, {"model": torch.zeros(100_000)})
except DiskFullError as error:
    print(error)
print(sorted(os.listdir(folder)), torch.load(folder + "/last.pt")["model"].shape[0])
"""


def test_a_checkpoint_on_a_full_tmpfs_names_the_file_and_keeps_the_old_one(tmp_path):
    folder, (message, listing) = run_on_a_full_tmpfs(tmp_path, _FILL_A_TMPFS)
    assert message.startswith(f"no space left on the disk while writing the checkpoint {folder}/")
    assert "it needs 39" in message  # 100,000 float32 and the archive's own bytes
    assert listing == "['last.pt'] 10"
