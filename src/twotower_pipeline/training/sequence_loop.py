"""One epoch of a causal history encoder, every position of a sequence trained in one pass.

The pooled towers build one history window per training positive; a causal
encoder (model.history_pooling attention) reads each window of a user's
sequence once and gives every position's state, so each positive's user
vector is the state at the end of its own causal prefix (ties as sets:
training/sequence_task.py). The epoch walks whole windows in a seeded order,
batches of about batch_size positives, each positive with the neg_ratio
negatives the epoch drew for its row; the step, the optimizers and the train
task are the pooled towers' own.
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from twotower_pipeline.model.towers import TwoTowerModel
from twotower_pipeline.training.optimizers import Optimizers
from twotower_pipeline.training.sequence_task import SequenceBatch, SequenceWindows, epoch_batches
from twotower_pipeline.training.spec import TrainingDivergedError
from twotower_pipeline.training.step import Tally, take_step
from twotower_pipeline.training.tasks import BatchScores, BceTask, SoftmaxTask

# Batches' worth of windows sorted by history length together: little padding per batch.
LENGTH_POOL = 16


def train_sequence_epoch(
    model: TwoTowerModel,
    optimizers: Optimizers,
    windows: SequenceWindows,
    walk,
    task: BceTask | SoftmaxTask,
) -> tuple[float, int]:
    """Run one pass over every window in a seeded order; return (mean loss, examples).

    `walk` is the loop's EpochPass: its negatives_of(batch number, rows) gives the
    negatives of the training rows a batch's targets are, its generator the order.
    """
    device = model.device
    tally = Tally(device)
    steps = tqdm(desc=walk.description, leave=False, disable=not walk.progress)
    batches = epoch_batches(windows, walk.batch_size, walk.generator, LENGTH_POOL)
    for number, batch in enumerate(batches):
        negatives = walk.negatives_of(number, batch.target_rows)
        on_device = _to(batch, device)
        items = torch.cat([on_device.target_items.unsqueeze(1), negatives.to(device)], 1)

        def score(table_rows, batch=on_device, items=items) -> BatchScores:
            return score_targets(model, task, batch, items, table_rows)

        try:
            tally.add(*take_step(model, optimizers, task, score, None), items.numel())
        except TrainingDivergedError as error:
            raise TrainingDivergedError(f"{error} at batch {number} of windows") from None
        steps.update()
    steps.close()
    return tally.result(None)


def score_targets(
    model: TwoTowerModel,
    task: BceTask | SoftmaxTask,
    batch: SequenceBatch,
    items: torch.Tensor,
    table_rows,
) -> BatchScores:
    """Return the scores of a batch's targets, each user vector its prefix end's state."""
    encoded, item = model.encode_and_read(batch.items, batch.mask, items, table_rows)
    users = batch.target_users
    towers = model.towers(users, items, None, table_rows, batch.user_states(encoded), item)
    logits, in_batch = model.group_scores(*towers)
    return BatchScores(users, items, logits, in_batch if task.wants_in_batch else None)


def _to(batch: SequenceBatch, device: torch.device) -> SequenceBatch:
    if device.type == "cpu":
        return batch
    return SequenceBatch(*(getattr(batch, name).to(device) for name in batch.__dataclass_fields__))
