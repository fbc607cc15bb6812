"""Train tasks: how a batch's scores become a loss (`training.loss`), apart from the loop.

A step scores each positive and its neg_ratio sampled negatives, (B, 1 + k)
logits, and, for a task that wants them, every row's user against every row's
positive, (B, B): the batch's other items as shared negatives. The loop walks
the data, the towers make vectors, a task only says how scores are compared,
so a new loss is a new task, not a branch inside the loop.

- `bce`: binary cross-entropy, labels 1 for the positive and 0 for its
  negatives; no skill is the constant guess (0.4506 at neg_ratio 5).
- `softmax`: a softmax over each positive, its sampled negatives and the
  batch's other positives' items, with the logQ correction and a user's own
  positives masked (training/losses.py); no skill is log of the candidates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from twotower_pipeline.training.losses import (
    bce_loss,
    bce_no_skill,
    sampled_softmax_loss,
    sampler_log_q,
    softmax_no_skill,
)

TRAIN_TASKS = ("bce", "softmax")


@dataclass
class BatchScores:
    """A batch's scores: the positive and its negatives, and the in-batch block where wanted."""

    users: torch.Tensor  # (B,) whose rows these are
    items: torch.Tensor  # (B, 1 + k): each row's positive, then its negatives
    logits: torch.Tensor  # (B, 1 + k)
    in_batch: torch.Tensor | None = None  # (B, B): row b's user against row j's positive


class BceTask:
    """Binary cross-entropy on each positive and its sampled negatives (the seed's loss)."""

    name = "bce"
    wants_in_batch = False

    def __init__(self, neg_ratio: int, batch_size: int) -> None:
        self.neg_ratio, self.batch_size = neg_ratio, batch_size

    def loss(self, scores: BatchScores) -> tuple[torch.Tensor, int]:
        """Return (the mean loss, the number of terms it averages)."""
        return bce_loss(scores.logits), scores.logits.numel()

    @property
    def no_skill(self) -> float:
        return bce_no_skill(self.neg_ratio)

    def start_epoch(self) -> None:
        return None

    def epoch_no_skill(self) -> float:
        return self.no_skill


class SoftmaxTask:
    """A sampled softmax over each positive, its negatives and the batch's other positives."""

    name = "softmax"
    wants_in_batch = True

    def __init__(
        self,
        neg_ratio: int,
        batch_size: int,
        n_items: int,
        log_q: bool,
        probabilities: np.ndarray | None,
    ) -> None:
        self.neg_ratio, self.batch_size = neg_ratio, batch_size
        self.n_items, self.log_q = n_items, log_q
        self.probabilities = (
            None if probabilities is None else torch.as_tensor(probabilities, dtype=torch.float32)
        )
        # The loss all-zero logits would have on this epoch's own batches (with logQ it
        # is not log of the candidates: uniform negatives stand for the whole catalogue,
        # so it is nearer log(batch + n_items)): the no-skill value the train loss is
        # judged by, measured on the epoch's first NO_SKILL_BATCHES batches.
        self._zero_sum, self._zero_terms = 0.0, 0

    def start_epoch(self) -> None:
        self._zero_sum, self._zero_terms = 0.0, 0

    def epoch_no_skill(self) -> float:
        """Return the mean loss of all-zero logits over the batches since start_epoch."""
        return self._zero_sum / self._zero_terms if self._zero_terms else self.no_skill

    def loss(self, scores: BatchScores) -> tuple[torch.Tensor, int]:
        """Return (the mean loss over the batch's positives, the number of positives)."""
        negatives = scores.items[:, 1:]
        log_q = None
        if self.log_q:
            probabilities = self.probabilities
            if probabilities is not None and probabilities.device != negatives.device:
                self.probabilities = probabilities = probabilities.to(negatives.device)
            log_q = (
                sampler_log_q(scores.items[:, 0], self.n_items, probabilities),
                sampler_log_q(negatives, self.n_items, probabilities),
            )
        loss = sampled_softmax_loss(
            scores.in_batch,
            scores.logits[:, 1:],
            scores.users,
            scores.items[:, 0],
            negatives,
            log_q,
        )
        if self._zero_terms < NO_SKILL_BATCHES:
            with torch.no_grad():
                zero = sampled_softmax_loss(
                    torch.zeros_like(scores.in_batch),
                    torch.zeros_like(scores.logits[:, 1:]),
                    scores.users,
                    scores.items[:, 0],
                    negatives,
                    log_q,
                )
            self._zero_sum += float(zero)
            self._zero_terms += 1
        return loss, scores.items.shape[0]

    @property
    def no_skill(self) -> float:
        return softmax_no_skill(self.neg_ratio, self.batch_size)


NO_SKILL_BATCHES = 16


def make_task(
    loss: str,
    neg_ratio: int,
    batch_size: int,
    n_items: int,
    log_q: bool,
    probabilities: np.ndarray | None,
) -> BceTask | SoftmaxTask:
    """Return the train task of a `training.loss` choice."""
    if loss == "bce":
        return BceTask(neg_ratio, batch_size)
    if loss == "softmax":
        return SoftmaxTask(neg_ratio, batch_size, n_items, log_q, probabilities)
    raise ValueError(f"training.loss must be one of {', '.join(TRAIN_TASKS)}, not {loss!r}")
