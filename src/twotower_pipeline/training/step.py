"""One optimisation step on a batch's scores, and the epoch's running loss.

Both walks of an epoch (the pooled towers' positives, a sequence encoder's
windows) score a batch their own way and hand a `score(rows)` function here:
the step reads the tables through SparseRows, asks the train task for the loss,
stops on a NaN or infinite loss before any weight changes, and updates the
dense parameters and the touched rows.
"""

from __future__ import annotations

import torch

from twotower_pipeline.config.threads import THREADS
from twotower_pipeline.model.layers import full_rows
from twotower_pipeline.model.towers import TwoTowerModel
from twotower_pipeline.training.optimizers import Optimizers
from twotower_pipeline.training.shard import Shard
from twotower_pipeline.training.sparse_rows import SparseRows
from twotower_pipeline.training.spec import TrainingDivergedError
from twotower_pipeline.training.tasks import BceTask, SoftmaxTask


class Tally:
    """An epoch's loss, summed over the terms each step averages, and its examples."""

    def __init__(self, device: torch.device) -> None:
        self.total = torch.zeros((), dtype=torch.float64, device=device)
        self.terms = 0
        self.examples = 0

    def add(self, loss_sum: torch.Tensor, terms: int, examples: int) -> None:
        self.total += loss_sum
        self.terms += terms
        self.examples += examples

    def result(self, shard: Shard | None) -> tuple[float, int]:
        """Return (mean loss, examples), over every rank with a shard."""
        total, terms, examples = self.total, self.terms, self.examples
        if shard is not None:
            total, examples = shard.sum(total, examples)
            terms = examples  # BCE alone runs sharded: one term per example
        return float(total) / max(terms, 1), examples


def take_step(
    model: TwoTowerModel,
    optimizers: Optimizers,
    task: BceTask | SoftmaxTask,
    score,
    shard: Shard | None,
) -> tuple[torch.Tensor, int]:
    """Take one step; return its loss summed over the terms it averages (detached), and those."""
    THREADS.adjust()  # the cores other processes leave free, measured once a second
    sparse = SparseRows(optimizers.scratch) if optimizers.rowwise else None
    scores = score(sparse if sparse is not None else full_rows)
    if shard is None:
        loss, terms = task.loss(scores)
    else:
        labels = torch.zeros_like(scores.logits)
        labels[:, 0] = 1.0
        loss, terms = shard.step_loss(scores.logits, labels), scores.logits.numel()
    if not torch.isfinite(loss):
        raise TrainingDivergedError(f"loss is {loss.item()}")
    optimizers.dense.zero_grad(set_to_none=True)
    loss.backward()
    touched = sparse.touched if sparse is not None else None
    if shard is not None:
        touched = shard.reduce_gradients(optimizers.dense, touched)
    optimizers.dense.step()
    if touched is not None:
        optimizers.rows.step(touched)
    model.clamp_scale()
    optimizers.step_taken()
    if shard is None:
        return loss.detach() * terms, terms
    return loss.detach() * shard.batch_examples, terms  # the rank's part of the global mean
