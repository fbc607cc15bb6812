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

import ctypes
import logging
import math
import mmap
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F
from tqdm import tqdm

from twotower_pipeline.config.errors import PipelineInputError, RunFailedError
from twotower_pipeline.data.sampling import PositiveSet, item_groups, sample_negatives
from twotower_pipeline.data.user_histories import HistoryTable, training_history_ends
from twotower_pipeline.model.towers import TowerEnsemble, TwoTowerModel, full_rows
from twotower_pipeline.ranking.metrics import binary_log_loss, ranking_metrics, roc_auc
from twotower_pipeline.ranking.protocol import sample_users

if TYPE_CHECKING:
    from twotower_pipeline.training.distributed import Shard

logger = logging.getLogger(__name__)

HISTORY_COLUMNS = [
    "epoch",
    "train_loss",
    "val_loss",
    "val_auc",
    "recall@{k}",
    "ndcg@{k}",
    "logit_scale",
    "learning_rate",
    "examples_per_second",
    "seconds",
    "chosen",
]


class TrainingDivergedError(RunFailedError, RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class TrainingSpec:
    """The knobs of one training run (values come from parameters; no defaults here)."""

    seed: int
    num_epochs: int
    neg_ratio: int
    batch_size: int  # positives per step; each brings its neg_ratio negatives
    learning_rate: float
    weight_decay: float  # decoupled (AdamW) decay of the tower weights, not of the scale
    scale_lr_ratio: float  # the logit scale learns at learning_rate x this
    lr_schedule: str  # constant | cosine
    warmup_epochs: float  # the rate grows linearly from ~0 over this many epochs' steps
    resample_each_epoch: bool
    eval_k: int
    eval_chunk_size: int  # users scored at once by the per-epoch ranking metric
    eval_max_users: int | None  # a seeded sample of validation users ranked per epoch (None: all)
    chunk_positives: int  # positives whose negatives are drawn at once
    optimizer: str  # rowwise | rowwise_rmsprop (sparse rows) | dense (AdamW over whole tables)
    compile_rows: str | bool  # auto | true | false: a row optimizer's update compiled
    device: str  # auto | cpu | cuda
    checkpoint_dir: str
    resume: bool
    progress_bar: bool


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


def learning_rate_at(spec: TrainingSpec, epoch: int) -> float:
    """Return the learning rate of 0-based epoch `epoch` (constant within an epoch)."""
    if spec.lr_schedule == "constant":
        return spec.learning_rate
    if spec.lr_schedule == "cosine":
        return spec.learning_rate * 0.5 * (1 + math.cos(math.pi * epoch / spec.num_epochs))
    raise ValueError(f"training.lr_schedule must be constant or cosine, not {spec.lr_schedule!r}")


# --- row-wise updates -------------------------------------------------------------------------
# Tables of at most this many values are updated whole (2^18 float32: 1 MiB).
WHOLE_TABLE_VALUES = 2**18


class SparseRows:
    """A `rows` function for the model that gathers only the rows a step touches.

    Each call takes the distinct ids of one table, copies their rows into a small
    leaf tensor and records it; after backward, the leaf's gradient is the
    gradient of exactly those rows. Each table is read once per step. A table
    with fewer rows than the step's lookups, or of at most WHOLE_TABLE_VALUES
    values, is taken whole (all rows touched).
    """

    def __init__(self, scratch: dict[int, torch.Tensor] | None = None) -> None:
        self.touched: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]] = []
        # Per table, one int64 per row, reused step after step to find distinct ids.
        self.scratch = {} if scratch is None else scratch

    def __call__(self, table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        leaf, index = self.local(table, ids)
        # index_select's backward is a scattered add into the small leaf: cheaper than
        # F.embedding's, which sorts the lookups (measured).
        return leaf.index_select(0, index.reshape(-1)).view(*ids.shape, table.shape[1])

    def local(self, table: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (leaf, index): leaf[index] are the rows table[ids], leaf records the gradient.

        Each table is read once per step (a second call on the same table is an error).
        """
        if any(touched is table for touched, _, _ in self.touched):
            raise ValueError("SparseRows reads each table once per step")
        if ids.numel() >= table.shape[0] or table.numel() <= WHOLE_TABLE_VALUES:
            # A small table, or more lookups than rows: every row counts as touched and the
            # table itself is the leaf; updating it whole costs less than finding the rows.
            leaf = table.detach().requires_grad_()
            self.touched.append((table, None, leaf))
            return leaf, ids
        scratch = self.scratch.get(id(table))
        if scratch is None:
            scratch = self.scratch[id(table)] = huge_page_zeros(
                (table.shape[0],), table.new_empty((), dtype=torch.int64)
            )
        distinct, inverse = distinct_ids(ids.reshape(-1), scratch)
        leaf = table.detach().index_select(0, distinct).requires_grad_()
        self.touched.append((table, distinct, leaf))
        return leaf, inverse.view(ids.shape)


def distinct_ids(ids: torch.Tensor, scratch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (distinct ids, inverse) with distinct[inverse] == ids, in O(len(ids)).

    scratch has one slot per possible id; each id's slot receives the last position
    it occurs at (a max, so the result does not depend on thread order), which
    names one representative per id. No sort, unlike torch.unique.
    """
    positions = torch.arange(ids.numel(), device=ids.device)
    scratch.scatter_reduce_(0, ids, positions, reduce="amax", include_self=False)
    representative = scratch[ids]
    is_representative = representative == positions
    compact = torch.cumsum(is_representative, 0) - 1
    return ids[is_representative], compact[representative]


# The row optimizer updates touched rows this many at a time (measured: 2,048 of d 64 ~20%
# faster than all ~12k rows at once, whose temporaries spill out of a core's cache).
OPTIMIZER_CHUNK_ROWS = 2048
# Tables of at least this many bytes live on 2 MiB pages (when the kernel offers them).
HUGE_PAGE_MIN_BYTES = 8 << 20
_HUGE_PAGE = 2 << 20


def on_huge_pages(tensor: torch.Tensor) -> torch.Tensor:
    """Return a copy of a large CPU tensor in memory the kernel may back with 2 MiB pages.

    A step reads and updates ~10^4 rows scattered over tables of hundreds of MB; with
    4 KiB pages nearly every row costs a TLB miss and a page walk. The copy starts on a
    2 MiB boundary of an anonymous mapping advised MADV_HUGEPAGE (Linux transparent
    huge pages in `always` or `madvise` mode). Small tensors, other devices and systems
    without madvise get the tensor back unchanged; the values are the same either way.
    """
    region = _huge_page_region(tensor.shape, tensor.dtype, tensor.device)
    return tensor if region is None else region.copy_(tensor)


def huge_page_zeros(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """Return zeros of like's dtype and device, on 2 MiB pages where on_huge_pages would be.

    Written once here (not copied from a table of zeros, which would hold both at
    once), so training's first steps do not pay a page fault per row they touch.
    """
    region = _huge_page_region(torch.Size(shape), like.dtype, like.device)
    return like.new_zeros(shape) if region is None else region.zero_()


def _huge_page_region(
    shape: torch.Size, dtype: torch.dtype, device: torch.device
) -> torch.Tensor | None:
    """Return an uninitialised (zero) tensor on advised huge pages, or None where not worth it."""
    count = shape.numel()
    nbytes = count * torch.empty((), dtype=dtype).element_size()
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if device.type != "cpu" or nbytes < HUGE_PAGE_MIN_BYTES or advice is None:
        return None
    region = mmap.mmap(-1, nbytes + _HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    start = -torch.frombuffer(region, dtype=torch.uint8, count=1).data_ptr() % _HUGE_PAGE
    try:
        region.madvise(advice, start, nbytes // _HUGE_PAGE * _HUGE_PAGE)
    except OSError:  # huge pages switched off ("never"): plain pages, same values
        pass
    return torch.frombuffer(region, dtype=dtype, count=count, offset=start).view(shape)


class RowStep(NamedTuple):
    """The scalars of one row-optimizer step, as its compiled rule takes them."""

    lr: float
    weight_decay: float
    beta1: float
    beta2: float
    eps: float
    root_correction2: float  # sqrt(1 - beta2^t)
    correction1: float  # 1 - beta1^t


class _RowOptimizer:
    """What the row optimizers share: a global step count, lazy decay, chunked row updates.

    Bias correction uses the global step count (as torch's SparseAdam does);
    weight decay is decoupled (AdamW's) and lazy: a row decays in the steps that
    touch it. A table handed over whole (ids None) is updated whole.

    A subclass gives `_new_state(table)` (its state tensor for one table),
    `_update_table(table, state, grad)` (every row), `_update_rows(table,
    state, ids, values, grad)` (the distinct rows ids, their values and
    gradients, in eager torch ops) and `rows_rule` (the same rule as one
    function of tensors and scalars, written for torch.compile).

    compiled: the touched rows of each table are updated by `rows_rule` compiled
    (torch.compile, dynamic shapes) into one kernel: one pass that reads each
    row's state and values and writes them back, in place of a dozen eager ops
    each making its own pass. When compiling fails (no C++ compiler, say) it
    says so once and goes on eagerly.
    """

    def __init__(
        self,
        tables: list[torch.Tensor],
        lr: float,
        weight_decay: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        compiled: bool = False,
    ) -> None:
        self.tables = tables
        self.lr = lr
        self.weight_decay = weight_decay
        self.betas = betas
        self.eps = eps
        self.step_count = 0
        self.state = [self._new_state(t) for t in tables]
        self._index = {id(t): i for i, t in enumerate(tables)}
        self.kernel = torch.compile(type(self).rows_rule, dynamic=True) if compiled else None
        self.kernel_ran = False

    @torch.no_grad()
    def step(self, touched: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]]) -> None:
        self.step_count += 1
        for table, ids, leaf in touched:
            if leaf.grad is None:
                continue
            state = self.state[self._index[id(table)]]
            if ids is None:  # the whole table was touched: update it in place
                self._update_table(table, state, leaf.grad)
                continue
            values = leaf.detach()
            if self.kernel is not None and self._run_kernel(table, state, ids, values, leaf.grad):
                continue
            # A few thousand rows at a time: the temporaries stay in the core's cache.
            for start in range(0, len(ids), OPTIMIZER_CHUNK_ROWS):
                part = slice(start, start + OPTIMIZER_CHUNK_ROWS)
                self._update_rows(table, state, ids[part], values[part], leaf.grad[part])

    def _run_kernel(
        self,
        table: torch.Tensor,
        state: torch.Tensor,
        ids: torch.Tensor,
        values: torch.Tensor,
        grad: torch.Tensor,
    ) -> bool:
        """Update the rows with the compiled rule; False (and eager from now on) if it fails.

        The first call compiles (seconds; torch caches the kernel on disk). Only a failure
        of that first call falls back (compiling fails before the kernel writes anything);
        once the kernel has run, an error is raised as it is, and so is a stop of the run
        (an interrupt) at any time.
        """
        beta1, beta2 = self.betas
        step = RowStep(
            self.lr,
            self.weight_decay,
            beta1,
            beta2,
            self.eps,
            self._root_correction2(),
            1 - beta1**self.step_count,
        )
        try:
            self.kernel(table, state, ids, values, grad, step)
        except RunFailedError:
            raise
        except Exception as error:  # noqa: BLE001 - any compiler failure: go on eagerly
            if self.kernel_ran:
                raise
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            logger.warning(
                "training.compile_rows: the row update could not be compiled (%s: %s); "
                "row updates run eagerly (the same rule, slower on large tables)",
                type(error).__name__,
                first_line[:200],
            )
            self.kernel = None
            return False
        self.kernel_ran = True
        return True

    def _root_correction2(self) -> float:
        return math.sqrt(1 - self.betas[1] ** self.step_count)

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "state": [s.clone() for s in self.state]}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step_count"])
        for mine, saved in zip(self.state, state["state"], strict=True):
            mine.copy_(saved)


class RowwiseAdamW(_RowOptimizer):
    """AdamW on the rows a step touched: moments, decay and update of those rows only.

    State: both moments of every row, 2 x d values a row, side by side as
    (rows, 2, d) so a touched row's state is one gather and one scattered add.
    """

    def _new_state(self, table: torch.Tensor) -> torch.Tensor:
        return huge_page_zeros((table.shape[0], 2, table.shape[1]), table)

    def _update_table(self, table: torch.Tensor, state: torch.Tensor, grad: torch.Tensor) -> None:
        beta1, beta2 = self.betas
        mean, square = state.unbind(1)
        mean.mul_(beta1).add_(grad, alpha=1 - beta1)
        square.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        table.data.mul_(1 - self.lr * self.weight_decay)
        denominator = square.sqrt().div_(self._root_correction2()).add_(self.eps)
        table.data.addcdiv_(mean, denominator, value=-self.lr / (1 - beta1**self.step_count))

    def _update_rows(
        self,
        table: torch.Tensor,
        state: torch.Tensor,
        ids: torch.Tensor,
        values: torch.Tensor,
        grad: torch.Tensor,
    ) -> None:
        """AdamW on the distinct rows ids of table, whose values and gradients are given."""
        beta1, beta2 = self.betas
        # The touched rows change by deltas added in place (ids are distinct): on the
        # CPU a scattered add costs about half a scattered copy (measured).
        rows = state.index_select(0, ids)
        # (g, g^2) - (m, v), times (1 - beta1, 1 - beta2): both moments' steps side by side.
        steps = torch.stack((grad, grad * grad), 1).sub_(rows)
        steps[:, 0].mul_(1 - beta1)
        steps[:, 1].mul_(1 - beta2)
        rows.add_(steps)
        denominator = rows[:, 1].sqrt().div_(self._root_correction2()).add_(self.eps)
        weight_step = torch.addcdiv(
            values * (-self.lr * self.weight_decay),
            rows[:, 0],
            denominator,
            value=-self.lr / (1 - beta1**self.step_count),
        )
        state.index_add_(0, ids, steps)
        table.index_add_(0, ids, weight_step)

    @staticmethod
    def rows_rule(
        table: torch.Tensor,
        state: torch.Tensor,
        ids: torch.Tensor,
        values: torch.Tensor,
        grad: torch.Tensor,
        step: RowStep,
    ) -> None:
        """AdamW on the distinct rows ids (values: their weights), as one compilable function."""
        rows = state[ids]
        mean = rows[:, 0] * step.beta1 + grad * (1 - step.beta1)
        square = rows[:, 1] * step.beta2 + grad * grad * (1 - step.beta2)
        state[ids] = torch.stack((mean, square), 1)
        denominator = square.sqrt() / step.root_correction2 + step.eps
        decayed = values * (1 - step.lr * step.weight_decay)
        table[ids] = decayed - (step.lr / step.correction1) * mean / denominator

    def state_dict(self) -> dict:
        return {
            "step_count": self.step_count,
            "moments": [s[:, j].clone() for s in self.state for j in (0, 1)],
        }

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step_count"])
        flat = state["moments"]
        for i, moments in enumerate(self.state):
            moments[:, 0].copy_(flat[2 * i])
            moments[:, 1].copy_(flat[2 * i + 1])


class RowwiseRMSProp(_RowOptimizer):
    """RMSprop on the rows a step touched, with one second-moment value per row.

    A row's v is the running mean (beta2) of its gradient's mean square, bias
    corrected; the row moves by -lr x g / (sqrt(v) + eps), plus AdamW's
    decoupled, lazy decay. No first moment: Adam with beta1 = 0 and v shared
    by a row's d values. State: 1 value a row instead of AdamW's 2 x d, so a
    step reads and writes about a third of the bytes per touched row.
    """

    def _new_state(self, table: torch.Tensor) -> torch.Tensor:
        return huge_page_zeros((table.shape[0],), table)

    def _update_table(self, table: torch.Tensor, state: torch.Tensor, grad: torch.Tensor) -> None:
        state.mul_(self.betas[1]).add_(grad.square().mean(1), alpha=1 - self.betas[1])
        denominator = state.sqrt().div_(self._root_correction2()).add_(self.eps)
        table.data.mul_(1 - self.lr * self.weight_decay)
        table.data.addcdiv_(grad, denominator.unsqueeze(1), value=-self.lr)

    def _update_rows(
        self,
        table: torch.Tensor,
        state: torch.Tensor,
        ids: torch.Tensor,
        values: torch.Tensor,
        grad: torch.Tensor,
    ) -> None:
        """RMSprop on the distinct rows ids of table, whose values and gradients are given."""
        rows = state.index_select(0, ids)
        steps = grad.square().mean(1).sub_(rows).mul_(1 - self.betas[1])
        denominator = rows.add_(steps).sqrt_().div_(self._root_correction2()).add_(self.eps)
        weight_step = torch.addcdiv(
            values * (-self.lr * self.weight_decay), grad, denominator.unsqueeze(1), value=-self.lr
        )
        state.index_add_(0, ids, steps)
        table.index_add_(0, ids, weight_step)

    @staticmethod
    def rows_rule(
        table: torch.Tensor,
        state: torch.Tensor,
        ids: torch.Tensor,
        values: torch.Tensor,
        grad: torch.Tensor,
        step: RowStep,
    ) -> None:
        """RMSprop on the distinct rows ids (values: their weights), as one compilable function."""
        rows = state[ids]
        square = rows + ((grad * grad).mean(1) - rows) * (1 - step.beta2)
        state[ids] = square
        denominator = (square.sqrt() / step.root_correction2 + step.eps).unsqueeze(1)
        table[ids] = values * (1 - step.lr * step.weight_decay) - step.lr * grad / denominator


# training.optimizer -> the row optimizer of the embedding tables (None: dense AdamW on them)
ROW_OPTIMIZERS: dict[str, type[_RowOptimizer] | None] = {
    "rowwise": RowwiseAdamW,
    "rowwise_rmsprop": RowwiseRMSProp,
    "dense": None,
}


class Optimizers:
    """The dense AdamW (small parameters, the scale) and, when row-wise, the row optimizer."""

    def __init__(self, model: TwoTowerModel, spec: TrainingSpec) -> None:
        if spec.optimizer not in ROW_OPTIMIZERS:
            raise ValueError(
                f"training.optimizer must be one of {', '.join(ROW_OPTIMIZERS)}, "
                f"not {spec.optimizer!r}"
            )
        row_optimizer = ROW_OPTIMIZERS[spec.optimizer]
        self.rowwise = row_optimizer is not None
        decayed = model.dense_parameters()
        if not self.rowwise:
            decayed = decayed + model.sparse_tables()
        groups = [
            {"params": [model.log_scale], "weight_decay": 0.0, "lr_ratio": spec.scale_lr_ratio}
        ]
        if decayed:
            groups.append({"params": decayed, "weight_decay": spec.weight_decay, "lr_ratio": 1.0})
        self.dense = torch.optim.AdamW(groups, lr=spec.learning_rate)
        if self.rowwise:
            for table in model.sparse_tables():
                table.requires_grad_(False)
                # Rows are read and updated at random: large tables go on huge pages. One
                # table at a time, before the moments exist, so the copy adds one table's
                # size to the peak at most (as building the table did).
                table.data = on_huge_pages(table.data)
        self.rows = (
            row_optimizer(
                model.sparse_tables(),
                spec.learning_rate,
                spec.weight_decay,
                compiled=compile_row_updates(model, spec),
            )
            if row_optimizer is not None
            else None
        )
        self.scratch: dict[int, torch.Tensor] = {}  # SparseRows' per-table scratch
        self.base_lr = spec.learning_rate
        self.warmup_steps = 0  # set by fit from training.warmup_epochs
        self.steps_taken = 0

    def set_lr(self, lr: float) -> None:
        """Set the epoch's learning rate (scaled down while the warm-up lasts)."""
        self.base_lr = lr
        self._apply_lr()

    def _apply_lr(self) -> None:
        lr = self.base_lr
        if self.steps_taken < self.warmup_steps:
            lr *= (self.steps_taken + 1) / self.warmup_steps
        for group in self.dense.param_groups:
            group["lr"] = lr * group["lr_ratio"]
        if self.rows is not None:
            self.rows.lr = lr

    def step_taken(self) -> None:
        """Count a finished step; during the warm-up the next step's rate grows linearly."""
        self.steps_taken += 1
        if self.steps_taken <= self.warmup_steps:
            self._apply_lr()

    def state_dict(self) -> dict:
        state = {"dense": self.dense.state_dict(), "steps_taken": self.steps_taken}
        if self.rows is not None:
            state["rows"] = self.rows.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.dense.load_state_dict(state["dense"])
        self.steps_taken = int(state["steps_taken"])
        if self.rows is not None:
            self.rows.load_state_dict(state["rows"])


# From about this many rows a table's touched rows are trips to memory, not to cache, and
# row-wise RMSprop's lighter state pays (measured: docs/training.md, the catalogue sweep);
# so does updating them in one compiled pass (training.compile_rows: auto).
LARGE_TABLE_ROWS = 100_000


def compile_row_updates(model: TwoTowerModel, spec: TrainingSpec) -> bool:
    """Return whether the row optimizer's update runs compiled (training.compile_rows).

    auto: row-wise AdamW on the CPU, when a table of LARGE_TABLE_ROWS rows or more
    is updated by rows: there it was measured to pay (~1.4x the step at 10^5 to
    5 x 10^6 rows); row-wise RMSprop's lighter update gained nothing consistent
    (-12% to +33%), and smaller tables are updated whole, where a compile would
    only cost its seconds. true: whenever rows are updated; false: never.
    """
    if spec.compile_rows not in ("auto", True, False):
        raise ValueError(
            f"training.compile_rows must be auto, true or false, not {spec.compile_rows!r}"
        )
    if spec.optimizer == "dense" or spec.compile_rows is False:
        return False
    tables = model.sparse_tables()
    large = any(t.shape[0] >= LARGE_TABLE_ROWS and t.numel() > WHOLE_TABLE_VALUES for t in tables)
    on = spec.compile_rows is True or (
        spec.optimizer == "rowwise" and large and all(t.device.type == "cpu" for t in tables)
    )
    if on:
        logger.info(
            "training.compile_rows=%s: row updates run as one compiled kernel (the first "
            "step compiles it: seconds, cached on disk after)",
            str(spec.compile_rows).lower(),
        )
    return on


def make_optimizer(model: TwoTowerModel, spec: TrainingSpec) -> Optimizers:
    """Return the optimizers: tables row-wise (or dense AdamW), the scale undecayed at its rate.

    With row-wise AdamW over a table of LARGE_TABLE_ROWS rows or more, says once
    that row-wise RMSprop is the lighter choice there.
    """
    largest = max((table.shape[0] for table in model.sparse_tables()), default=0)
    if spec.optimizer == "rowwise" and largest >= LARGE_TABLE_ROWS:
        logger.info(
            "embedding tables of up to %d rows: training.optimizer=rowwise_rmsprop keeps one "
            "optimizer value a row instead of AdamW's 2 x %d, and trained 1.1-1.25x faster "
            "(against AdamW rows compiled) with 26-45%% less memory at 10^5-10^6 rows "
            "(docs/training.md); choose it on validation",
            largest,
            model.config.embedding_dim,
        )
    return Optimizers(model, spec)


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> bool:
    """Let glibc's malloc reuse freed blocks of a few MB instead of mapping them afresh.

    A training step allocates and frees the same temporaries (a few MB each) every
    step. By default glibc maps blocks that large freshly and unmaps them on free,
    so each step pays page faults on memory it just gave back; raising the mmap
    threshold to 32 MB and the trim threshold to 256 MB keeps them in the heap
    (measured: the default shape's step 35% faster on one thread, see README).
    Returns whether it applied: only on Linux with glibc; elsewhere nothing changes.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(
            libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20) and libc.mallopt(_M_TRIM_THRESHOLD, 256 << 20)
        )
    except (OSError, AttributeError):
        return False


def resolve_device(name: str) -> torch.device:
    """Return the torch device for training.device (auto: CUDA when present)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("training.device is cuda but no CUDA device is available: use auto or cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"training.device must be auto, cpu or cuda, not {name!r}")
    return torch.device(name)


def _show_progress(spec: TrainingSpec) -> bool:
    return spec.progress_bar and sys.stderr.isatty() and not os.environ.get("CI")


def checkpoint_path(spec: TrainingSpec) -> Path:
    return Path(spec.checkpoint_dir) / "last.pt"


def _save_checkpoint(spec: TrainingSpec, state: dict) -> None:
    path = checkpoint_path(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a kill mid-write leaves the previous checkpoint whole


def _resumable_settings(spec: TrainingSpec) -> dict:
    """Return the settings a resumed run must share with the run it continues."""
    skip = {
        "resume",
        "progress_bar",
        "checkpoint_dir",
        "device",
        "compile_rows",  # compiled or eager: the same rule, to float rounding
        "eval_chunk_size",
        "eval_max_users",
    }
    return {key: value for key, value in vars(spec).items() if key not in skip}


def _load_checkpoint(
    spec: TrainingSpec, model: TwoTowerModel, optimizers: Optimizers, shard: Shard | None = None
) -> tuple[list[dict], dict | None]:
    """Restore model and optimizers from the last checkpoint; return (history, best state).

    With a shard, rank 0 reads the file and every rank receives its content.
    """
    path = checkpoint_path(spec)
    state = None
    if shard is None or shard.writes:
        if not path.exists():
            raise PipelineInputError(
                f"training.resume is true but there is no checkpoint at {path}: "
                "set training.resume=false to start from epoch 1"
            )
        state = torch.load(path, weights_only=True, map_location="cpu")
    if shard is not None:
        state = shard.broadcast(state)
    if state["model_config"] != model.config.to_dict() or state["seed"] != spec.seed:
        raise ValueError(
            f"{path} was written for another model or seed ({state['model_config']}, seed "
            f"{state['seed']}); delete it or set training.resume=false"
        )
    changed = {
        key: (value, _resumable_settings(spec).get(key))
        for key, value in state["training"].items()
        if _resumable_settings(spec).get(key) != value
    }
    if changed:
        # Resuming under other settings would mix two runs in one model.
        raise ValueError(
            f"{path} was written with other training settings "
            f"({', '.join(f'{k}: {a} -> now {b}' for k, (a, b) in changed.items())}); "
            "resume with the same parameters, or set training.resume=false"
        )
    model.load_state_dict(state["model"])
    optimizers.load_state_dict(state["optimizer"])
    logger.info("resuming from %s after epoch %d", path, len(state["history"]))
    return list(state["history"]), state.get("best")


@torch.no_grad()
def sample_logits(
    model: TwoTowerModel, sample: ValidationSample, known: pd.DataFrame, held_out: pd.DataFrame
) -> np.ndarray:
    """Return the model's logits (V, 1 + neg_ratio) on a validation sample of `held_out` rows.

    Each user's history is its `known` interactions before the held-out row's moment.
    """
    device = model.item_id.device
    window = None
    if model.config.history_length > 0:
        histories = HistoryTable.from_interactions(known, model.config.n_users).to(device)
        moments = held_out["timestamp"].to_numpy(np.int64)
        ends = histories.ends_before(held_out["user"].to_numpy(np.int64), moments).to(device)
        window = histories.window(sample.users.to(device), ends, model.config.history_length)
    return model(sample.users.to(device), sample.items.to(device), window).cpu().numpy()


@torch.no_grad()
def evaluate_epoch(
    model: TwoTowerModel,
    train: pd.DataFrame,
    val: pd.DataFrame,
    sample: ValidationSample,
    k: int,
    seed: int,
    chunk_size: int,
    max_users: int | None = None,
) -> dict[str, float]:
    """Return validation loss/AUC on the fixed sample and Recall/NDCG@k on the full catalogue."""
    model.eval()
    logits = sample_logits(model, sample, train, val)
    labels = sample.labels.numpy()
    ranking = validation_ranking(model, train, val, k, seed, chunk_size, max_users)
    model.train()
    return {
        "val_loss": binary_log_loss(logits.ravel(), labels.ravel()),
        "val_auc": roc_auc(logits.ravel(), labels.ravel()),
        f"recall@{k}": ranking[f"recall@{k}"],
        f"ndcg@{k}": ranking[f"ndcg@{k}"],
    }


def validation_ranking(
    model: TwoTowerModel | TowerEnsemble,
    train: pd.DataFrame,
    val: pd.DataFrame,
    k: int,
    seed: int,
    chunk_size: int,
    max_users: int | None = None,
) -> dict[str, float]:
    """Return Recall@k and NDCG@k on the full catalogue (training items masked).

    With max_users, a seeded sample of the validation users is ranked: the same
    users for every model given the same seed.
    """
    ranked = sample_users(val, max_users, seed)
    return ranking_metrics(
        model.catalogue_scorer(train, ranked),
        train,
        ranked,
        model.config.n_users,
        model.config.n_items,
        [k],
        chunk_size,
        seed,
    )


def train_epoch(
    model: TwoTowerModel,
    optimizers: Optimizers,
    positives: Positives,
    negatives_of,
    batch_size: int,
    chunk_positives: int,
    generator: torch.Generator,
    description: str = "",
    progress: bool = False,
    shard: Shard | None = None,
) -> tuple[float, int]:
    """Run one pass over the positives in a seeded random order; return (mean loss, examples).

    `negatives_of(chunk_index, rows)` returns the (len(rows), neg_ratio) negatives
    of the positives at `rows` (a CPU int64 tensor), so only one chunk of
    examples exists at a time. Raises TrainingDivergedError at the first step
    whose loss is NaN or infinite, before that step changes any weight. With a
    shard (distributed.Shard), this rank steps on its share of each batch, the
    gradients are summed over ranks, and loss and examples are those of all ranks.
    """
    device = positives.users.device
    n_positives = positives.users.numel()
    order = torch.randperm(n_positives, generator=generator)
    length = model.config.history_length
    total = torch.zeros((), dtype=torch.float64, device=device)
    n_examples = 0
    labels = None
    steps = tqdm(
        total=-(-n_positives // batch_size), desc=description, leave=False, disable=not progress
    )
    for chunk_index, chunk_start in enumerate(range(0, n_positives, chunk_positives)):
        rows_cpu = order[chunk_start : chunk_start + chunk_positives]
        negatives = negatives_of(chunk_index, rows_cpu).to(device)
        rows = rows_cpu.to(device)
        for start in range(0, rows.numel(), batch_size):
            batch = rows[start : start + batch_size]
            batch_negatives = negatives[start : start + batch_size]
            if shard is not None:
                batch, batch_negatives = shard.split(batch, batch_negatives)
            items = torch.cat([positives.items[batch].unsqueeze(1), batch_negatives], 1)
            if labels is None or labels.shape != items.shape:
                labels = torch.zeros(items.shape, device=device)
                labels[:, 0] = 1.0
            sparse = SparseRows(optimizers.scratch) if optimizers.rowwise else None
            logits = model(
                positives.users[batch],
                items,
                positives.window(batch, length),
                sparse if sparse is not None else full_rows,
            )
            if shard is None:
                loss = F.binary_cross_entropy_with_logits(logits, labels)
            else:
                loss = shard.step_loss(logits, labels)
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"loss is {loss.item()} at the step starting at positive {chunk_start + start}"
                )
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
                total += loss.detach() * logits.numel()
            else:  # the rank's loss is its part of the global mean: this is its sum
                total += loss.detach() * shard.batch_examples
            n_examples += logits.numel()
            steps.update()
    steps.close()
    if shard is not None:
        total, n_examples = shard.sum(total, n_examples)
    return float(total) / max(n_examples, 1), n_examples


def _copy_state(model: TwoTowerModel) -> dict:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


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
    writes = shard is None or shard.writes
    device = resolve_device(spec.device)
    if device.type == "cpu":
        keep_freed_memory()
    model.to(device)
    n_items = model.config.n_items
    optimizers = make_optimizer(model, spec)
    optimizers.warmup_steps = round(spec.warmup_epochs * -(-len(train) // spec.batch_size))
    best = None
    if spec.resume:
        history, best = _load_checkpoint(spec, model, optimizers, shard)
    else:
        # A fresh run: an earlier checkpoint stays until this run writes a newer one.
        history = []
    sample = validation_sample(train, val, n_items, spec.neg_ratio, spec.seed)
    negatives = EpochNegatives(train, first_examples, n_items, spec, probabilities)
    positives = training_positives(train, model.config.n_users, model.config.history_length, device)
    k = spec.eval_k

    for epoch in range(len(history), spec.num_epochs):
        started = time.perf_counter()
        lr = learning_rate_at(spec, epoch)
        optimizers.set_lr(lr)
        # Item-id dropout draws from torch's global generator: seed it by (seed, epoch) too,
        # so a resumed run draws what an uninterrupted one would, whatever ran before it.
        torch.manual_seed(int(np.random.SeedSequence([spec.seed, epoch]).generate_state(1)[0]))
        step_started = time.perf_counter()
        try:
            train_loss, n_examples = train_epoch(
                model,
                optimizers,
                positives,
                negatives.of_epoch(epoch),
                spec.batch_size,
                spec.chunk_positives,
                torch.Generator().manual_seed(spec.seed * 100_003 + epoch),
                f"epoch {epoch + 1}/{spec.num_epochs}",
                _show_progress(spec) and writes,
                shard,
            )
        except TrainingDivergedError as error:
            raise _diverged(error, epoch, len(history), spec) from error
        step_seconds = time.perf_counter() - step_started

        row = None
        if writes:
            row = {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                **evaluate_epoch(
                    model,
                    train,
                    val,
                    sample,
                    k,
                    spec.seed,
                    spec.eval_chunk_size,
                    spec.eval_max_users,
                ),
                "logit_scale": model.logit_scale,
                "learning_rate": lr,
                "examples_per_second": n_examples / step_seconds,
                "seconds": time.perf_counter() - started,
            }
        if shard is not None:  # the other ranks wait here while rank 0 evaluates
            row = shard.broadcast(row)
        history.append(row)
        if best is None or row[f"recall@{k}"] > best["recall"]:
            best = {
                "epoch": row["epoch"],
                "recall": row[f"recall@{k}"],
                "model": _copy_state(model),
            }
        if not writes:
            continue
        _log_epoch(row, spec.num_epochs, k, lr)
        _save_checkpoint(
            spec,
            {
                "model": model.state_dict(),
                "optimizer": optimizers.state_dict(),
                "model_config": model.config.to_dict(),
                "seed": spec.seed,
                "training": _resumable_settings(spec),
                "history": history,
                "best": best,
            },
        )
    if best is not None:
        model.load_state_dict(best["model"])
        logger.info(
            "keeping epoch %d, the best validation recall@%d (%.4f)",
            best["epoch"],
            k,
            best["recall"],
        )
    model.to("cpu")
    frame = pd.DataFrame(history, columns=[c.format(k=k) for c in HISTORY_COLUMNS[:-1]])
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
