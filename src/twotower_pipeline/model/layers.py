"""The parts the towers are built of: table reads, pooled rows, the scaled cosine, the MLP.

Every table is read through a `rows(table, ids)` function: the full tables in
evaluation, or only the rows a training step touches (training.SparseRows).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from twotower_pipeline.model.config import TwoTowerConfig

Rows = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def full_rows(table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Return table[ids], differentiable through the whole table."""
    return F.embedding(ids, table)


def mlp(config: TwoTowerConfig) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = config.embedding_dim
    for hidden in config.hidden_dims:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    if config.hidden_dims:
        layers.append(nn.Linear(width, config.embedding_dim))
    return nn.Sequential(*layers)


class ScaledCosine(torch.autograd.Function):
    """exp(log_scale) x cos(user_b, item_bk) for a (B, d) user block and a (B, k, d) item block.

    The same values and gradients as normalising both sides and taking dot
    products, in five passes over the item block instead of autograd's twenty
    or so: the backward pass is written out. With u = |u| û, v = |v| v̂,
    c = û·v̂ and h = dL/dc:
        dL/du = (sum_k h_k v̂_k - (sum_k h_k c_k) û) / |u|
        dL/dv_k = h_k (û - c_k v̂_k) / |v_k|
    Norms are clamped at 1e-12, as F.normalize does.
    """

    @staticmethod
    def forward(ctx, user: torch.Tensor, item: torch.Tensor, log_scale: torch.Tensor):
        user_norm = torch.linalg.vector_norm(user, dim=-1).clamp_(min=1e-12)
        item_norm = torch.linalg.vector_norm(item, dim=-1).clamp_(min=1e-12)
        cosine = (item * user.unsqueeze(1)).sum(-1).div_(item_norm * user_norm.unsqueeze(-1))
        scale = log_scale.exp()
        ctx.save_for_backward(user, item, user_norm, item_norm, cosine, scale)
        return cosine * scale

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        user, item, user_norm, item_norm, cosine, scale = ctx.saved_tensors
        h = grad * scale  # dL/dcosine
        per_item = h / item_norm  # (B, k)
        user_unit = user / user_norm.unsqueeze(-1)
        grad_user = (per_item.unsqueeze(-1) * item).sum(1)
        grad_user.addcmul_((h * cosine).sum(-1, keepdim=True), user_unit, value=-1.0)
        grad_user.div_(user_norm.unsqueeze(-1))
        grad_item = per_item.unsqueeze(-1) * user_unit.unsqueeze(1)
        grad_item.addcmul_((per_item * cosine / item_norm).unsqueeze(-1), item, value=-1.0)
        grad_scale = (grad * cosine).sum() * scale  # d logit / d log_scale = logit
        return grad_user, grad_item, grad_scale


def embedding_table(rows: int, config: TwoTowerConfig, padded: bool = False) -> nn.Parameter:
    weight = torch.randn(rows, config.embedding_dim) * config.init_std
    if padded:
        weight[0] = 0.0  # token 0 is padding / unknown: it adds nothing
    return nn.Parameter(weight)


def weighted_rows(
    rows: Rows, table: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Return sum_l weights[..., l] * table[ids[..., l]], shape ids.shape[:-1] + (d,).

    One fused gather-and-sum, forward and backward (F.embedding_bag with
    per-sample weights), instead of gathering every row, scaling and summing
    (one pass over the rows instead of three).
    A `rows` function with a `local` method (training.SparseRows) hands over
    the small leaf of touched rows and the ids' positions in it.
    """
    local = getattr(rows, "local", None)
    leaf, index = local(table, ids) if local is not None else (table, ids)
    length = ids.shape[-1]
    pooled = F.embedding_bag(
        index.reshape(-1, length),
        leaf,
        per_sample_weights=weights.expand(ids.shape).reshape(-1, length),
        mode="sum",
    )
    return pooled.view(*ids.shape[:-1], leaf.shape[1])


def token_mean(rows: Rows, table: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Return the mean embedding of the non-zero tokens, shape tokens.shape[:-1] + (d,)."""
    weights = (tokens > 0).to(table.dtype)
    count = weights.sum(-1, keepdim=True).clamp(min=1.0)
    return weighted_rows(rows, table, tokens, weights / count)
