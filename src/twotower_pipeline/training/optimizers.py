"""The optimizers of a run: dense AdamW for the small parameters, a row optimizer for the tables."""

from __future__ import annotations

import logging

import torch

from twotower_pipeline.model.towers import TwoTowerModel
from twotower_pipeline.training.memory import on_huge_pages
from twotower_pipeline.training.row_optimizers import RowOptimizer, RowwiseAdamW, RowwiseRMSProp
from twotower_pipeline.training.sparse_rows import WHOLE_TABLE_VALUES
from twotower_pipeline.training.spec import TrainingSpec

logger = logging.getLogger(__name__)


# training.optimizer -> the row optimizer of the embedding tables (None: dense AdamW on them)
ROW_OPTIMIZERS: dict[str, type[RowOptimizer] | None] = {
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
# row-wise RMSprop's lighter state pays (docs/training.md, the catalogue sweep);
# so does updating them in one compiled pass (training.compile_rows: auto).
LARGE_TABLE_ROWS = 100_000


def compile_row_updates(model: TwoTowerModel, spec: TrainingSpec) -> bool:
    """Return whether the row optimizer's update runs compiled (training.compile_rows).

    auto: row-wise AdamW on the CPU, when a table of LARGE_TABLE_ROWS rows or more
    is updated by rows: there it pays (docs/training.md); row-wise RMSprop's
    lighter update gained nothing consistent, and smaller tables are updated
    whole, where a compile would only cost its seconds. true: whenever rows are
    updated; false: never.
    """
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
            "optimizer value a row instead of AdamW's 2 x %d, and trains faster with less "
            "memory on tables this large (docs/training.md); choose it on validation",
            largest,
            model.config.embedding_dim,
        )
    return Optimizers(model, spec)
