"""Row-wise optimizers of the embedding tables: AdamW and RMSprop on the rows a step touched."""

from __future__ import annotations

import logging
import math
from typing import NamedTuple

import torch

from twotower_pipeline.config.errors import RunFailedError
from twotower_pipeline.training.memory import huge_page_zeros

logger = logging.getLogger(__name__)

# The row optimizer updates touched rows this many at a time, so that the temporaries of a
# part stay in a core's cache (benchmarks/row_optimizers.py).
OPTIMIZER_CHUNK_ROWS = 2048


class RowStep(NamedTuple):
    """The scalars of one row-optimizer step, as its rule takes them."""

    lr: float
    weight_decay: float
    beta1: float
    beta2: float
    eps: float
    root_correction2: float  # sqrt(1 - beta2^t)
    correction1: float  # 1 - beta1^t


class RowOptimizer:
    """What the row optimizers share: a global step count, lazy decay, chunked row updates.

    Bias correction uses the global step count (as torch's SparseAdam does);
    weight decay is decoupled (AdamW's) and lazy: a row decays in the steps that
    touch it. A table handed over whole (ids None) is updated whole.

    A subclass gives `_new_state(table)` (its state tensor for one table) and
    `rule(state, values, grad, step)`: the update, in place, of some rows' state
    and weights. It is the one definition of the update: applied to the whole
    table in place, to the touched rows gathered and written back
    (`update_rows`, a few thousand at a time), and compiled.

    compiled: the touched rows of each table are updated by `update_rows`
    compiled (torch.compile, dynamic shapes) into one kernel: one pass that
    reads each row's state and values and writes them back, in place of a dozen
    eager ops each making its own pass. When compiling fails (no C++ compiler,
    say) it says so once and goes on eagerly.
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
        self.kernel = torch.compile(type(self).update_rows, dynamic=True) if compiled else None
        self.kernel_ran = False

    @staticmethod
    def rule(state: torch.Tensor, values: torch.Tensor, grad: torch.Tensor, step: RowStep) -> None:
        raise NotImplementedError

    @classmethod
    def update_rows(
        cls,
        table: torch.Tensor,
        state: torch.Tensor,
        ids: torch.Tensor,
        values: torch.Tensor,
        grad: torch.Tensor,
        step: RowStep,
    ) -> None:
        """Apply the rule to the distinct rows ids of table (values: their weights, updated)."""
        rows = state[ids]
        cls.rule(rows, values, grad, step)
        state[ids] = rows
        table[ids] = values

    @torch.no_grad()
    def step(self, touched: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]]) -> None:
        self.step_count += 1
        step = self._step()
        for table, ids, leaf in touched:
            if leaf.grad is None:
                continue
            state = self.state[self._index[id(table)]]
            if ids is None:  # the whole table was touched: update it in place
                self.rule(state, table.data, leaf.grad, step)
                continue
            values = leaf.detach()  # a gathered copy of the rows, updated in place
            if self.kernel is not None and self._run_kernel(table, state, ids, values, leaf.grad):
                continue
            for start in range(0, len(ids), OPTIMIZER_CHUNK_ROWS):
                part = slice(start, start + OPTIMIZER_CHUNK_ROWS)
                self.update_rows(table, state, ids[part], values[part], leaf.grad[part], step)

    def _step(self) -> RowStep:
        beta1, beta2 = self.betas
        return RowStep(
            self.lr,
            self.weight_decay,
            beta1,
            beta2,
            self.eps,
            math.sqrt(1 - beta2**self.step_count),
            1 - beta1**self.step_count,
        )

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
        try:
            self.kernel(table, state, ids, values, grad, self._step())
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

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "state": [s.clone() for s in self.state]}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step_count"])
        for mine, saved in zip(self.state, state["state"], strict=True):
            mine.copy_(saved)


class RowwiseAdamW(RowOptimizer):
    """AdamW on the rows a step touched: moments, decay and update of those rows only.

    State: both moments of every row, 2 x d values a row, side by side as
    (rows, 2, d) so a touched row's state is one gather and one scattered copy.
    """

    def _new_state(self, table: torch.Tensor) -> torch.Tensor:
        return huge_page_zeros((table.shape[0], 2, table.shape[1]), table)

    @staticmethod
    def rule(state: torch.Tensor, values: torch.Tensor, grad: torch.Tensor, step: RowStep) -> None:
        """AdamW, in place, on rows whose moments are state (rows, 2, d) and weights values."""
        mean, square = state[:, 0], state[:, 1]  # views (unbind's would fix the row count)
        mean.mul_(step.beta1).add_(grad, alpha=1 - step.beta1)
        square.mul_(step.beta2).addcmul_(grad, grad, value=1 - step.beta2)
        values.mul_(1 - step.lr * step.weight_decay)
        denominator = square.sqrt().div_(step.root_correction2).add_(step.eps)
        # addcdiv_'s arithmetic, self + value * t1 / t2, spelled out: a rate given as its
        # `value` would be a constant to torch.compile, compiled again for every rate.
        values.add_(-step.lr / step.correction1 * mean / denominator)

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


class RowwiseRMSProp(RowOptimizer):
    """RMSprop on the rows a step touched, with one second-moment value per row.

    A row's v is the running mean (beta2) of its gradient's mean square, bias
    corrected; the row moves by -lr x g / (sqrt(v) + eps), plus AdamW's
    decoupled, lazy decay. No first moment: Adam with beta1 = 0 and v shared
    by a row's d values. State: 1 value a row instead of AdamW's 2 x d, so a
    step reads and writes about a third of the bytes per touched row.
    """

    def _new_state(self, table: torch.Tensor) -> torch.Tensor:
        return huge_page_zeros((table.shape[0],), table)

    @staticmethod
    def rule(state: torch.Tensor, values: torch.Tensor, grad: torch.Tensor, step: RowStep) -> None:
        """RMSprop, in place, on rows whose second moments are state (rows,) and weights values."""
        state.mul_(step.beta2).add_(grad.square().mean(1), alpha=1 - step.beta2)
        denominator = state.sqrt().div_(step.root_correction2).add_(step.eps)
        values.mul_(1 - step.lr * step.weight_decay)
        values.add_(-step.lr * grad / denominator.unsqueeze(1))  # addcdiv_, as in AdamW's rule
