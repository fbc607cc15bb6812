"""The training loop: BCE-with-logits on positives and freshly drawn negatives.

Examples are kept as groups: one positive and its neg_ratio negatives, so a
step takes B users and a (B, 1 + neg_ratio) block of items and computes each
user vector once. An epoch is a seeded permutation of the training positives,
walked a chunk at a time: each chunk's negatives are drawn when it is reached
(seeded by seed, epoch and chunk), so memory holds one chunk of examples, not
the epoch's. Every random choice of epoch e is seeded by (seed, e), so a run
resumed from the checkpoint of epoch e ends with the same weights as a run
that was never interrupted.

Embedding tables are updated row-wise: a step gathers the rows it touches as
small leaf tensors (SparseRows), and RowwiseAdamW updates those rows and their
moments only, so a step costs the same with 10^3 or 10^6 items. Weight decay
is applied lazily, to the rows a step touches. The small dense parameters
(MLP, recency weights) and the logit scale use torch's AdamW. The persisted
model is the epoch with the best validation ranking metric; the history keeps
every epoch and marks that one `chosen`.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from twotower_pipeline.config.threads import THREADS
from twotower_pipeline.model.towers import TwoTowerModel
from twotower_pipeline.training.checkpoints import (
    checkpoint_path,
    load_checkpoint,
    resumable_settings,
    save_checkpoint,
)
from twotower_pipeline.training.examples import (
    EpochNegatives,
    Positives,
    ValidationSample,
    training_positives,
    validation_sample,
)
from twotower_pipeline.training.memory import keep_freed_memory
from twotower_pipeline.training.optimizers import Optimizers, make_optimizer
from twotower_pipeline.training.sequence_loop import train_sequence_epoch
from twotower_pipeline.training.sequence_task import SequenceWindows, sequence_windows
from twotower_pipeline.training.shard import Shard
from twotower_pipeline.training.spec import (
    TrainingDivergedError,
    TrainingSpec,
    learning_rate_at,
    resolve_device,
)
from twotower_pipeline.training.step import Tally, take_step
from twotower_pipeline.training.tasks import BatchScores, BceTask, SoftmaxTask, make_task
from twotower_pipeline.training.validation import evaluate_epoch

logger = logging.getLogger(__name__)

HISTORY_COLUMNS = [
    "epoch",
    "train_loss",
    "val_loss",
    "val_auc",
    "no_skill_loss",
    "recall@{k}",
    "ndcg@{k}",
    "logit_scale",
    "learning_rate",
    "examples_per_second",
    "threads",
    "seconds",
    "chosen",
]


def _show_progress(spec: TrainingSpec) -> bool:
    return spec.progress_bar and sys.stderr.isatty() and not os.environ.get("CI")


@dataclass
class EpochPass:
    """How one pass walks the positives: their negatives, batches, chunks, order and display."""

    negatives_of: Callable[[int, torch.Tensor], torch.Tensor]  # (chunk, rows) -> negatives
    batch_size: int
    chunk_positives: int
    generator: torch.Generator  # draws the order of the positives
    description: str = ""
    progress: bool = False


def train_epoch(
    model: TwoTowerModel,
    optimizers: Optimizers,
    positives: Positives,
    walk: EpochPass,
    shard: Shard | None = None,
    task: BceTask | SoftmaxTask | None = None,
) -> tuple[float, int]:
    """Run one pass over the positives in a seeded random order; return (mean loss, examples).

    `walk.negatives_of(chunk_index, rows)` returns the (len(rows), neg_ratio)
    negatives of the positives at `rows` (a CPU int64 tensor), so only one chunk
    of examples exists at a time. Raises TrainingDivergedError at the first step
    whose loss is NaN or infinite, before that step changes any weight. With a
    shard (shard.Shard), this rank steps on its share of each batch, the
    gradients are summed over ranks, and loss and examples are those of all ranks.
    The task (train task, BCE when None) turns each batch's scores into its loss.
    """
    task = task if task is not None else BceTask(0, walk.batch_size)
    device = positives.users.device
    n_positives = positives.users.numel()
    order = torch.randperm(n_positives, generator=walk.generator)
    tally = Tally(device)
    steps = tqdm(
        total=-(-n_positives // walk.batch_size),
        desc=walk.description,
        leave=False,
        disable=not walk.progress,
    )
    length = model.config.history_length
    for chunk_index, chunk_start in enumerate(range(0, n_positives, walk.chunk_positives)):
        rows_cpu = order[chunk_start : chunk_start + walk.chunk_positives]
        negatives = walk.negatives_of(chunk_index, rows_cpu).to(device)
        rows = rows_cpu.to(device)
        for start in range(0, rows.numel(), walk.batch_size):
            batch = rows[start : start + walk.batch_size]
            batch_negatives = negatives[start : start + walk.batch_size]
            if shard is not None:
                batch, batch_negatives = shard.split(batch, batch_negatives)
            items = torch.cat([positives.items[batch].unsqueeze(1), batch_negatives], 1)
            users, window = positives.users[batch], positives.window(batch, length)

            def score(table_rows, users=users, items=items, window=window) -> BatchScores:
                return score_positives(model, task, users, items, window, table_rows)

            try:
                tally.add(*take_step(model, optimizers, task, score, shard), items.numel())
            except TrainingDivergedError as error:
                raise TrainingDivergedError(
                    f"{error} at the step starting at positive {chunk_start + start}"
                ) from None
            steps.update()
    steps.close()
    return tally.result(shard)


def score_positives(
    model: TwoTowerModel,
    task: BceTask | SoftmaxTask,
    users: torch.Tensor,
    items: torch.Tensor,
    window: tuple[torch.Tensor, torch.Tensor] | None,
    table_rows,
    states: torch.Tensor | None = None,
) -> BatchScores:
    """Return a batch's scores: (B, 1 + k) logits, and the in-batch block if the task wants it."""
    if not task.wants_in_batch and states is None:
        return BatchScores(users, items, model(users, items, window, table_rows))
    logits, in_batch = model.group_scores(*model.towers(users, items, window, table_rows, states))
    return BatchScores(users, items, logits, in_batch if task.wants_in_batch else None)


def _copy_state(model: TwoTowerModel) -> dict:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def _diverged(
    error: TrainingDivergedError, epoch: int, finished: int, spec: TrainingSpec
) -> TrainingDivergedError:
    """Return the error naming the epoch and what became of the checkpoint."""
    kept = (
        f"the last good checkpoint (epoch {finished}) is kept at {checkpoint_path(spec)}"
        if finished
        else "no epoch of this run finished, so it wrote no checkpoint"
    )
    return TrainingDivergedError(
        f"training diverged in epoch {epoch + 1}: {error}; {kept}. "
        "Lower training.learning_rate or model.max_logit_scale."
    )


@dataclass
class _Run:
    """What fit holds across epochs."""

    spec: TrainingSpec
    train: pd.DataFrame
    val: pd.DataFrame
    shard: Shard | None
    optimizers: Optimizers
    positives: Positives
    negatives: EpochNegatives
    sample: ValidationSample
    history: list[dict]
    best: dict | None
    task: BceTask | SoftmaxTask
    windows: SequenceWindows | None  # a causal encoder's sequences; None: pooled towers

    @property
    def writes(self) -> bool:
        return self.shard is None or self.shard.writes


def fit(
    model: TwoTowerModel,
    train: pd.DataFrame,
    val: pd.DataFrame,
    first_examples: pd.DataFrame,
    spec: TrainingSpec,
    probabilities: np.ndarray | None = None,
    shard: Shard | None = None,
) -> pd.DataFrame:
    """Train the model in place; return one history row per epoch (columns HISTORY_COLUMNS).

    The model ends with the weights of the epoch whose validation Recall@k was
    best (the row marked `chosen`); later epochs stay in the history. With a
    shard (one rank of distributed.fit_distributed), only rank 0 evaluates,
    logs and writes checkpoints; the other ranks receive its epoch row.
    """
    run = _start(model, train, val, first_examples, spec, probabilities, shard)
    k = spec.eval_k
    for epoch in range(len(run.history), spec.num_epochs):
        row = _train_and_evaluate(model, run, epoch)
        if shard is not None:  # the other ranks wait here while rank 0 evaluates
            row = shard.broadcast(row)
        run.history.append(row)
        if run.best is None or row[f"recall@{k}"] > run.best["recall"]:
            run.best = {
                "epoch": row["epoch"],
                "recall": row[f"recall@{k}"],
                "model": _copy_state(model),
            }
        if run.writes:
            _log_epoch(row, spec.num_epochs, k, row["learning_rate"])
            _save(model, run)
    return _finish(model, run)


def _start(model, train, val, first_examples, spec, probabilities, shard) -> _Run:
    """Return the run set up from fit's arguments: model on its device, optimizers, state."""
    device = resolve_device(spec.device)
    if device.type == "cpu":
        keep_freed_memory()
    model.to(device)
    n_items = model.config.n_items
    optimizers = make_optimizer(model, spec)
    optimizers.warmup_steps = round(spec.warmup_epochs * -(-len(train) // spec.batch_size))
    best = None
    if spec.resume:
        history, best = load_checkpoint(spec, model, optimizers, shard)
    else:
        # A fresh run: an earlier checkpoint stays until this run writes a newer one.
        history = []
    sample = validation_sample(train, val, n_items, spec.neg_ratio, spec.seed)
    negatives = EpochNegatives(train, first_examples, n_items, spec, probabilities)
    positives = training_positives(train, model.config.n_users, model.config.history_length, device)
    task = make_task(spec.loss, spec.neg_ratio, spec.batch_size, n_items, spec.log_q, probabilities)
    windows = None
    if model.history_encoder is not None:
        if shard is not None:
            raise ValueError(
                "model.history_pooling attention trains on one process: set "
                "training.distributed.nproc_per_node 1"
            )
        windows = sequence_windows(train, model.config.history_length)
    elif shard is not None and task.wants_in_batch:
        raise ValueError(
            "training.loss softmax trains on one process: set "
            "training.distributed.nproc_per_node 1 or training.loss bce"
        )
    return _Run(
        spec,
        train,
        val,
        shard,
        optimizers,
        positives,
        negatives,
        sample,
        history,
        best,
        task,
        windows,
    )


def _train_and_evaluate(model: TwoTowerModel, run: _Run, epoch: int) -> dict | None:
    """Train one epoch; return its history row (None on a rank that does not evaluate)."""
    spec = run.spec
    started = time.perf_counter()
    lr = learning_rate_at(spec, epoch)
    run.optimizers.set_lr(lr)
    # Item-id dropout draws from torch's global generator: seed it by (seed, epoch) too,
    # so a resumed run draws what an uninterrupted one would, whatever ran before it.
    torch.manual_seed(int(np.random.SeedSequence([spec.seed, epoch]).generate_state(1)[0]))
    step_started = time.perf_counter()
    walk = EpochPass(
        run.negatives.of_epoch(epoch),
        spec.batch_size,
        spec.chunk_positives,
        torch.Generator().manual_seed(spec.seed * 100_003 + epoch),
        f"epoch {epoch + 1}/{spec.num_epochs}",
        _show_progress(spec) and run.writes,
    )
    run.task.start_epoch()
    THREADS.start_count()
    try:
        if run.windows is not None:
            train_loss, n_examples = train_sequence_epoch(
                model, run.optimizers, run.windows, walk, run.task
            )
        else:
            train_loss, n_examples = train_epoch(
                model, run.optimizers, run.positives, walk, run.shard, run.task
            )
    except TrainingDivergedError as error:
        raise _diverged(error, epoch, len(run.history), spec) from error
    step_seconds = time.perf_counter() - step_started
    if not run.writes:
        return None
    return {
        "epoch": epoch + 1,
        "train_loss": train_loss,
        **evaluate_epoch(model, run.train, run.val, run.sample, spec, run.task),
        "no_skill_loss": run.task.epoch_no_skill(),
        "logit_scale": model.logit_scale,
        "learning_rate": lr,
        "examples_per_second": n_examples / step_seconds,
        "threads": THREADS.fewest_threads(),  # fewer than the cores beside busy processes
        "seconds": time.perf_counter() - started,
    }


def _save(model: TwoTowerModel, run: _Run) -> None:
    save_checkpoint(
        run.spec,
        {
            "model": model.state_dict(),
            "optimizer": run.optimizers.state_dict(),
            "model_config": model.config.to_dict(),
            "seed": run.spec.seed,
            "training": resumable_settings(run.spec),
            "history": run.history,
            "best": run.best,
        },
    )


def _finish(model: TwoTowerModel, run: _Run) -> pd.DataFrame:
    """Return the history as a frame, the model set to its best epoch and back on the CPU."""
    k, best = run.spec.eval_k, run.best
    if best is not None:
        model.load_state_dict(best["model"])
        logger.info(
            "keeping epoch %d, the best validation recall@%d (%.4f)",
            best["epoch"],
            k,
            best["recall"],
        )
    model.to("cpu")
    frame = pd.DataFrame(run.history, columns=[c.format(k=k) for c in HISTORY_COLUMNS[:-1]])
    frame["chosen"] = frame["epoch"] == (best["epoch"] if best is not None else -1)
    return frame


def _log_epoch(row: dict, num_epochs: int, k: int, lr: float) -> None:
    logger.info(
        "epoch %2d/%d  train_loss %.4f  val_loss %.4f  val_auc %.3f  recall@%d %.4f  "
        "ndcg@%d %.4f  scale %.2f  lr %.2g  %.2fM ex/s",
        row["epoch"],
        num_epochs,
        row["train_loss"],
        row["val_loss"],
        row["val_auc"],
        k,
        row[f"recall@{k}"],
        k,
        row[f"ndcg@{k}"],
        row["logit_scale"],
        lr,
        row["examples_per_second"] / 1e6,
    )
