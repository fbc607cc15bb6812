"""Row-wise optimizers of the embedding tables: AdamW and RMSprop on the rows a step touched."""

from __future__ import annotations

import logging
import math
from typing import NamedTuple

import torch

from twotower_pipeline.config.errors import RunFailedError
from twotower_pipeline.training.memory import huge_page_zeros

logger = logging.getLogger(__name__)

# The row optimizer updates touched rows this many at a time (measured: 2,048 of d 64 ~20%
# faster than all ~12k rows at once, whose temporaries spill out of a core's cache).
OPTIMIZER_CHUNK_ROWS = 2048


class RowStep(NamedTuple):
    """The scalars of one row-optimizer step, as its compiled rule takes them."""

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


class RowwiseAdamW(RowOptimizer):
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
