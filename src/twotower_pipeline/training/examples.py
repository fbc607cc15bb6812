"""Training examples: the positives in a fixed order, each epoch's negatives, the validation sample.

Examples are kept as groups: one positive and its neg_ratio negatives, so a
step takes B users and a (B, 1 + neg_ratio) block of items. An epoch's
negatives are drawn a chunk at a time when the chunk is reached (seeded by
seed, epoch and chunk), so memory holds one chunk of examples, not the epoch's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from twotower_pipeline.data.sampling import PositiveSet, item_groups, sample_negatives
from twotower_pipeline.data.user_histories import HistoryTable, training_history_ends
from twotower_pipeline.training.spec import TrainingSpec


@dataclass
class ExampleGroups:
    """One epoch's examples: users (P,) and items (P, 1 + neg_ratio), the positive first."""

    users: torch.Tensor
    items: torch.Tensor

    @property
    def n_examples(self) -> int:
        return self.items.numel()


@dataclass
class Positives:
    """The training positives in a fixed order, each with where its user's history ends."""

    users: torch.Tensor  # (P,) int64
    items: torch.Tensor  # (P,) int64
    history_ends: torch.Tensor  # (P,) int64 positions in `histories`
    histories: HistoryTable | None

    def window(self, rows: torch.Tensor, length: int):
        """Return the (items, mask) history window of the given positives, or None."""
        if self.histories is None or length == 0:
            return None
        return self.histories.window(self.users[rows], self.history_ends[rows], length)


@dataclass
class ValidationSample:
    """Validation positives plus neg_ratio sampled negatives each, drawn once."""

    users: torch.Tensor
    items: torch.Tensor
    labels: torch.Tensor


def groups_from_examples(examples: pd.DataFrame, neg_ratio: int) -> ExampleGroups:
    """Return the persisted examples (positive-then-negatives rows) as groups.

    Raises ValueError when the rows are not in that layout, e.g. when they were
    made with another neg_ratio.
    """
    group = 1 + neg_ratio
    users = examples["user"].to_numpy(np.int64)
    labels = examples["label"].to_numpy()
    if users.size % group:
        raise ValueError(
            f"train_examples has {users.size} rows, not a multiple of 1 + neg_ratio = {group}; "
            "it was made with another neg_ratio: re-run the negative_sampling pipeline"
        )
    users = users.reshape(-1, group)
    labels = labels.reshape(-1, group)
    if not (
        (labels[:, 0] == 1).all() and (labels[:, 1:] == 0).all() and (users == users[:, :1]).all()
    ):
        raise ValueError(
            f"train_examples is not laid out as one positive followed by its {neg_ratio} "
            "negatives for the same user: re-run the negative_sampling pipeline"
        )
    items = examples["item"].to_numpy(np.int64).reshape(-1, group)
    return ExampleGroups(torch.from_numpy(users[:, 0].copy()), torch.from_numpy(items.copy()))


def draw_groups(
    train: pd.DataFrame,
    positives: PositiveSet,
    neg_ratio: int,
    rng: np.random.Generator,
    probabilities: np.ndarray | None,
) -> ExampleGroups:
    """Return every training positive with freshly drawn negatives, as arrays.

    The same draw as sampling.build_training_examples with the same rng.
    """
    users = train["user"].to_numpy(np.int64)
    items = item_groups(users, train["item"].to_numpy(), positives, neg_ratio, rng, probabilities)
    return ExampleGroups(torch.from_numpy(users.copy()), torch.from_numpy(items))


def validation_sample(
    train: pd.DataFrame, val: pd.DataFrame, n_items: int, neg_ratio: int, seed: int
) -> ValidationSample:
    """Return the fixed sample on which validation loss and AUC are computed.

    Its negatives exclude the user's training and validation positives, so the
    validation loss is on two classes, comparable with the training loss.
    """
    known = PositiveSet(
        np.concatenate([train["user"].to_numpy(), val["user"].to_numpy()]),
        np.concatenate([train["item"].to_numpy(), val["item"].to_numpy()]),
        n_items,
    )
    users = val["user"].to_numpy(np.int64)
    rng = np.random.default_rng([seed, 1_000_003])
    items = item_groups(users, val["item"].to_numpy(), known, neg_ratio, rng)
    group = 1 + neg_ratio
    labels = np.zeros((users.size, group), dtype=np.float32)
    labels[:, 0] = 1
    return ValidationSample(
        users=torch.from_numpy(users.copy()),
        items=torch.from_numpy(items),
        labels=torch.from_numpy(labels),
    )


def training_positives(
    train: pd.DataFrame, n_users: int, history_length: int, device: torch.device
) -> Positives:
    """Return the training positives in train's order, with their history ends."""
    histories = None
    ends = torch.zeros(len(train), dtype=torch.int64)
    if history_length > 0:
        histories = HistoryTable.from_interactions(train, n_users).to(device)
        ends = torch.from_numpy(training_history_ends(train))
    return Positives(
        users=torch.tensor(train["user"].to_numpy(np.int64), device=device),
        items=torch.tensor(train["item"].to_numpy(np.int64), device=device),
        history_ends=ends.to(device),
        histories=histories,
    )


class EpochNegatives:
    """Each epoch's negatives, a chunk at a time: epoch 0's are the persisted examples'."""

    def __init__(
        self,
        train: pd.DataFrame,
        first_examples: pd.DataFrame,
        n_items: int,
        spec: TrainingSpec,
        probabilities: np.ndarray | None,
    ) -> None:
        self.first = groups_from_examples(first_examples, spec.neg_ratio)
        if self.first.users.numel() != len(train) or not torch.equal(
            self.first.items[:, 0], torch.as_tensor(train["item"].to_numpy(np.int64).copy())
        ):
            raise ValueError(
                "train_examples do not match train_interactions (other positives or another "
                "order): re-run the negative_sampling pipeline"
            )
        self.users = train["user"].to_numpy(np.int64)
        self.known = PositiveSet(train["user"].to_numpy(), train["item"].to_numpy(), n_items)
        self.spec = spec
        self.probabilities = probabilities

    def of_epoch(self, epoch: int):
        """Return negatives_of(chunk, rows) for train_epoch, seeded by (seed, epoch, chunk)."""
        spec = self.spec
        if epoch == 0 or not spec.resample_each_epoch:
            return lambda chunk, rows: self.first.items[rows, 1:]

        def negatives_of(chunk: int, rows: torch.Tensor) -> torch.Tensor:
            rng = np.random.default_rng([spec.seed, epoch, chunk])
            drawn = sample_negatives(
                self.users[rows.numpy()], self.known, spec.neg_ratio, rng, self.probabilities
            )
            return torch.from_numpy(drawn)

        return negatives_of
