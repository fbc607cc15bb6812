"""One rank's side of distributed training: its share of each batch and the collectives.

What `training.fit` and `train_epoch` call back into on each rank of
`distributed.fit_distributed`: the rank steps on its contiguous share of each
global batch, its loss is its part of the global batch's mean loss, dense
gradients are all-reduced and the touched rows of every rank merged, so the
replicas stay bitwise equal.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch.nn import functional as F

from twotower_pipeline.model.towers import TwoTowerModel


class Shard:
    """This rank's share of each global batch and the collectives that keep replicas equal."""

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank = rank
        self.world_size = world_size
        self.batch_examples = 0  # examples (positives x group) in the current global batch

    @property
    def writes(self) -> bool:
        """Whether this rank evaluates, logs and writes checkpoints (rank 0)."""
        return self.rank == 0

    def split(
        self, batch: torch.Tensor, negatives: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return this rank's contiguous share of a global batch's positives and negatives."""
        self.batch_examples = batch.numel() * (1 + negatives.shape[1])
        part = torch.tensor_split(torch.arange(batch.numel()), self.world_size)[self.rank]
        first, last = (int(part[0]), int(part[-1]) + 1) if part.numel() else (0, 0)
        return batch[first:last], negatives[first:last]

    def step_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Return this rank's part of the global batch's mean loss (0 for an empty share)."""
        total = F.binary_cross_entropy_with_logits(logits, labels, reduction="sum")
        return total / self.batch_examples

    def reduce_gradients(self, dense: torch.optim.Optimizer, touched: list | None) -> list | None:
        """Sum dense gradients over ranks in place; return the merged touched rows (or None)."""
        params = [p for group in dense.param_groups for p in group["params"]]
        if params:
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            offset = 0
            for p in params:
                p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
                offset += p.numel()
        if touched is None:
            return None
        return [self._merge_rows(table, ids, leaf) for table, ids, leaf in touched]

    def _merge_rows(self, table: torch.Tensor, ids: torch.Tensor | None, leaf: torch.Tensor):
        """Return (table, ids, leaf) for the union of every rank's touched rows, grads summed."""
        device = table.device
        if ids is None:  # this rank took the whole (small) table
            ids = torch.arange(table.shape[0], device=device)
        grad = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
        count = torch.tensor([ids.numel()], device=device)
        counts = [torch.zeros_like(count) for _ in range(self.world_size)]
        dist.all_gather(counts, count)
        counts = [int(c) for c in counts]
        width = max(counts)
        # gloo's all_gather needs the same size on every rank: pad, then cut each rank's part.
        padded_ids = torch.zeros(width, dtype=ids.dtype, device=device)
        padded_ids[: ids.numel()] = ids
        padded_grad = torch.zeros(width, table.shape[1], dtype=grad.dtype, device=device)
        padded_grad[: ids.numel()] = grad
        all_ids = [torch.empty_like(padded_ids) for _ in range(self.world_size)]
        all_grads = [torch.empty_like(padded_grad) for _ in range(self.world_size)]
        dist.all_gather(all_ids, padded_ids)
        dist.all_gather(all_grads, padded_grad)
        gathered_ids = torch.cat([i[:n] for i, n in zip(all_ids, counts, strict=True)])
        gathered = torch.cat([g[:n] for g, n in zip(all_grads, counts, strict=True)])
        union, inverse = torch.unique(gathered_ids, return_inverse=True)
        merged = torch.zeros(union.numel(), table.shape[1], dtype=grad.dtype, device=device)
        # Every rank sums the same rows in the same order, so the replicas stay bitwise equal
        # (on CUDA, index_add_ adds atomically in any order unless told to be deterministic).
        with _deterministic(device):
            merged.index_add_(0, inverse, gathered)
        if union.numel() == table.shape[0]:  # every row touched: update the table in place
            merged_leaf = table.detach().requires_grad_()
            merged_leaf.grad = merged
            return table, None, merged_leaf
        merged_leaf = table.detach().index_select(0, union).requires_grad_()
        merged_leaf.grad = merged
        return table, union, merged_leaf

    def sum(self, total: torch.Tensor, n_examples: int) -> tuple[torch.Tensor, int]:
        """Return the epoch's loss sum and example count over all ranks."""
        both = torch.tensor([float(total), n_examples], dtype=torch.float64, device=total.device)
        dist.all_reduce(both)
        return both[0], int(both[1])

    def broadcast(self, value):
        """Return rank 0's value (any picklable object) on every rank; the others wait for it."""
        box = [value if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]


@contextmanager
def _deterministic(device: torch.device) -> Iterator[None]:
    if device.type != "cuda" or torch.are_deterministic_algorithms_enabled():
        yield
        return
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(False)


def state_digest(model: TwoTowerModel) -> str:
    """Return a SHA-256 of the model's state dict, equal only for bitwise-equal replicas."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
