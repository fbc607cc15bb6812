"""Order-aware user towers: a causal self-attention encoder over a user's history (SASRec).

Input is a right-aligned window of history, as HistoryTable.window returns it:
(B, L) items and a mask, position L-1 the most recent item, masked positions
on the left (item 0 there). The encoder does not own an item table: the caller
gathers the window's item embeddings from its item-side table (its own
`rows(table, ids)`, so sparse row updates keep working) and hands over the
(B, L, d) block. The output is (B, L, d), the state at every position, each
having read only the positions at or before it; the user vector of a window is
the output at L-1 (`CausalSelfAttention.last`).

Positions are learned and counted from the right: the last column of any
window, however short, is position max_length - 1, so a window trimmed to its
longest history in a batch reads the same as the full-length one.

Masked positions give exactly zero at every layer and in the output, so a
window with no item gives the zero vector, never NaN: an all-masked attention
row has its weights zeroed after the softmax rather than a softmax over
nothing.

`CausalMeanPooling` is the same interface over the running mean of the items
seen so far (no parameters): the bag of items that SASRec is compared with,
trained and scored by the same code.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _causal_keys(mask: torch.Tensor) -> torch.Tensor:
    """Return (B, L, L) bool: query t may read key s (s <= t, s an item, t an item)."""
    length = mask.shape[-1]
    lower = torch.ones(length, length, dtype=torch.bool, device=mask.device).tril_()
    return lower & mask.unsqueeze(1) & mask.unsqueeze(2)


class _Block(nn.Module):
    """One pre-LN transformer block: x + attn(LN x), then x + FFN(LN x), dropout on both."""

    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"the encoder's width {dim} is not a multiple of n_heads {n_heads}")
        self.n_heads = n_heads
        self.attention_norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attention_out = nn.Linear(dim, dim)
        self.feed_forward_norm = nn.LayerNorm(dim)
        self.feed_forward = nn.Sequential(
            nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        heads = self.n_heads
        q, k, v = (
            self.qkv(self.attention_norm(x))
            .view(batch, length, 3, heads, dim // heads)
            .permute(2, 0, 3, 1, 4)
        )
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(dim // heads)
        fill = torch.finfo(scores.dtype).min
        weights = torch.softmax(scores.masked_fill(~allowed.unsqueeze(1), fill), dim=-1)
        # A row with no key to read (a masked query) got a uniform softmax over the
        # fill value; zeroing its weights makes it read nothing, and keeps it finite.
        weights = self.dropout(weights * allowed.unsqueeze(1))
        attended = (weights @ v).transpose(1, 2).reshape(batch, length, dim)
        x = (x + self.dropout(self.attention_out(attended))) * keep
        x = x + self.dropout(self.feed_forward(self.feed_forward_norm(x)))
        return x * keep


class CausalSelfAttention(nn.Module):
    """SASRec's encoder: learned positions, pre-LN causal self-attention blocks, a final LN."""

    def __init__(
        self, dim: int, max_length: int, n_blocks: int, n_heads: int, dropout: float
    ) -> None:
        super().__init__()
        if max_length < 1 or n_blocks < 1:
            raise ValueError(
                f"the encoder needs max_length >= 1 and n_blocks >= 1, got {max_length}, {n_blocks}"
            )
        self.max_length = max_length
        self.positions = nn.Parameter(torch.randn(max_length, dim) * 0.02)
        self.input_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(_Block(dim, n_heads, dropout) for _ in range(n_blocks))
        self.final_norm = nn.LayerNorm(dim)

    def forward(self, item_embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Return (B, L, d): at each position, the encoding of the items at or before it.

        item_embeddings (B, L, d) are the window's items from the caller's table;
        mask (B, L) is True where there is an item. L may be shorter than
        max_length (the latest positions are used); masked positions give zeros.
        """
        length = item_embeddings.shape[1]
        if length > self.max_length:
            raise ValueError(
                f"a window of {length} items is longer than max_length {self.max_length}"
            )
        keep = mask.unsqueeze(-1).to(item_embeddings.dtype)
        x = self.input_dropout(item_embeddings + self.positions[self.max_length - length :]) * keep
        allowed = _causal_keys(mask)
        for block in self.blocks:
            x = block(x, allowed, keep)
        return self.final_norm(x) * keep

    @staticmethod
    def last(encoded: torch.Tensor) -> torch.Tensor:
        """Return the user vectors (B, d) of right-aligned windows: the output at L-1."""
        return encoded[:, -1]


class CausalMeanPooling(nn.Module):
    """The running mean of a window's items: at each position, the mean of those at or before it."""

    def forward(self, item_embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Return (B, L, d); masked positions, and positions with no item before them, are zeros."""
        keep = mask.unsqueeze(-1).to(item_embeddings.dtype)
        sums = (item_embeddings * keep).cumsum(1)
        counts = keep.cumsum(1).clamp(min=1.0)
        return sums / counts * keep

    last = staticmethod(CausalSelfAttention.last)


def sequence_encoder(
    kind: str, dim: int, max_length: int, n_blocks: int, n_heads: int, dropout: float
) -> CausalSelfAttention | CausalMeanPooling:
    """Return the encoder of a `history_pooling` choice: attention or mean."""
    if kind == "attention":
        return CausalSelfAttention(dim, max_length, n_blocks, n_heads, dropout)
    if kind == "mean":
        return CausalMeanPooling()
    raise ValueError(
        f"history_pooling for a sequence encoder must be attention or mean, not {kind!r}"
    )
