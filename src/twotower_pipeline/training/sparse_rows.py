"""The rows a training step touches: gathered as small leaf tensors, found without a sort."""

from __future__ import annotations

import torch

from twotower_pipeline.training.memory import huge_page_zeros

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
        # F.embedding's, which sorts the lookups.
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
