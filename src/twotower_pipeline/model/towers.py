"""The two-tower model: a user tower and an item tower scored by scaled cosine.

logit(u, i) = exp(log_scale) * cos(user_vector, item_vector). The scale is
learned as a log-parameter initialised at log(logit_scale) and clamped at
max_logit_scale after every step, as CLIP does: cosines live in [-1, 1], so
without a scale the sigmoid can never leave (0.27, 0.73). The model returns raw
logits; the only sigmoid is the one inside the BCE-with-logits loss.

Towers (every part optional by configuration, summed, then an optional MLP,
then L2-normalised):

- user: a pooled history of the user's most recent items before the moment
  predicted (its own item-side table, mean or learned recency weights over
  the positions), a user-id embedding, the mean of the user's feature tokens;
- item: an item-id embedding and the mean of the item's feature tokens.

With history_length 0 and a user id, the model is matrix factorisation (the
id-only towers). Item ids are dropped at random in training (item_id_dropout)
so the item tower also learns to stand on its features, and so are user ids
(user_id_dropout) when the user tower has a history or features to stand on; items with no
training interaction (cold) are always scored through their features only,
and users with no training interaction through their history and features.

Every table is read through a `rows(table, ids)` function: the full tables in
evaluation, or only the rows a training step touches (training.SparseRows),
so the cost of a step follows its batch, not the catalogue.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from twotower_pipeline.model.config import TwoTowerConfig
from twotower_pipeline.model.ensemble import TowerEnsemble
from twotower_pipeline.model.layers import (
    Rows,
    ScaledCosine,
    embedding_table,
    full_rows,
    mlp,
    token_mean,
    weighted_rows,
)
from twotower_pipeline.model.scoring import CatalogueScoring
from twotower_pipeline.model.sequence_encoder import CausalSelfAttention


class TwoTowerModel(CatalogueScoring, nn.Module):
    """User tower x item tower; forward returns raw logits (no sigmoid).

    Embedding tables are plain Parameters (`sparse_tables()` lists them); the
    feature tokens of every user and item, and which ids were seen in training,
    are buffers, so the state dict alone rebuilds a model that scores anyone.
    """

    def __init__(self, config: TwoTowerConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.item_id = embedding_table(c.n_items, c)
        self.user_id_table = embedding_table(c.n_users, c) if c.user_id else None
        self.history_table = (
            embedding_table(c.n_items, c)
            if c.history_length > 0 and not c.history_reads_item_tower
            else None
        )
        # (n_items, 1): a table like the others, so a training step touches only its rows.
        self.item_bias = nn.Parameter(torch.zeros(c.n_items, 1)) if c.item_bias else None
        self.item_feature_table = (
            embedding_table(c.item_feature_vocab, c, padded=True)
            if c.item_feature_vocab > 1
            else None
        )
        self.user_feature_table = (
            embedding_table(c.user_feature_vocab, c, padded=True)
            if c.user_feature_vocab > 1
            else None
        )
        self.recency = (
            nn.Parameter(torch.ones(c.history_length))
            if c.history_length > 0 and c.history_pooling == "recency"
            else None
        )
        self.history_encoder = (
            CausalSelfAttention(
                c.embedding_dim,
                c.history_length,
                c.attention_blocks,
                c.attention_heads,
                c.attention_dropout,
            )
            if c.history_length > 0 and c.history_pooling == "attention"
            else None
        )
        self.user_mlp = mlp(c)
        self.item_mlp = mlp(c)
        self.log_scale = nn.Parameter(torch.tensor(math.log(c.logit_scale)))
        self.register_buffer(
            "item_tokens", torch.zeros(c.n_items, c.item_feature_width, dtype=torch.int64)
        )
        self.register_buffer(
            "user_tokens", torch.zeros(c.n_users, c.user_feature_width, dtype=torch.int64)
        )
        # Ids seen in training: an unseen id's embedding was never trained, so it is left out.
        self.register_buffer("item_warm", torch.ones(c.n_items, dtype=torch.bool))
        self.register_buffer("user_warm", torch.ones(c.n_users, dtype=torch.bool))

    # --- parameters ---------------------------------------------------------------------------
    def sparse_tables(self) -> list[nn.Parameter]:
        """Return the embedding tables, updated row-wise in training."""
        tables = [
            self.item_id,
            self.user_id_table,
            self.history_table,
            self.item_feature_table,
            self.user_feature_table,
            self.item_bias,
        ]
        return [t for t in tables if t is not None]

    def dense_parameters(self) -> list[nn.Parameter]:
        """Return the small parameters updated every step (MLPs, recency weights), not the scale."""
        sparse = {id(t) for t in self.sparse_tables()}
        return [
            p for name, p in self.named_parameters() if id(p) not in sparse and name != "log_scale"
        ]

    @property
    def logit_scale(self) -> float:
        return float(self.log_scale.detach().exp())

    def clamp_scale(self) -> None:
        """Keep the learned scale at or below max_logit_scale."""
        with torch.no_grad():
            self.log_scale.clamp_(max=math.log(self.config.max_logit_scale))

    def set_side_information(
        self,
        item_tokens: torch.Tensor | None = None,
        user_tokens: torch.Tensor | None = None,
        train_users: np.ndarray | None = None,
        train_items: np.ndarray | None = None,
    ) -> None:
        """Store feature tokens and which users and items occur in training."""
        if item_tokens is not None:
            self.item_tokens.copy_(item_tokens)
        if user_tokens is not None:
            self.user_tokens.copy_(user_tokens)
        if train_items is not None:
            warm = np.bincount(train_items, minlength=self.config.n_items) > 0
            self.item_warm.copy_(torch.from_numpy(warm))
        if train_users is not None:
            warm = np.bincount(train_users, minlength=self.config.n_users) > 0
            self.user_warm.copy_(torch.from_numpy(warm))

    # --- towers -------------------------------------------------------------------------------
    @property
    def has_history(self) -> bool:
        return self.config.history_length > 0

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        """Return item vectors, shape items.shape + (d,): unit length, scored by scale x dot.

        With item biases each vector gains one last coordinate, bias / scale, and each
        user vector a 1 there: scale x (user . item) is then scale x cosine + bias, so
        every scorer and index of vectors ranks as the model does.
        """
        unit = F.normalize(self._item_tower(items, full_rows, drop_ids=False), dim=-1)
        if self.item_bias is None:
            return unit
        scale = self.log_scale.detach().exp()
        return torch.cat([unit, (self.logit_bias(items) / scale).unsqueeze(-1)], dim=-1)

    def logit_bias(self, items: torch.Tensor, rows: Rows = full_rows) -> torch.Tensor | None:
        """Return the items' learned logit biases (None without them), shape items.shape.

        In scoring an item with no training interaction gets the lowest bias of the
        items that had one: its own row was never trained.
        """
        if self.item_bias is None:
            return None
        bias = rows(self.item_bias, items).squeeze(-1)
        if self.training:
            return bias
        warm = self.item_bias.squeeze(-1)[self.item_warm]
        lowest = warm.min() if warm.numel() else torch.zeros((), device=bias.device)
        return torch.where(self.item_warm[items], bias, lowest)

    def _item_tower(self, items: torch.Tensor, rows: Rows, drop_ids: bool) -> torch.Tensor:
        """Return the item tower's vectors before normalisation."""
        vector = rows(self.item_id, items)
        if drop_ids:
            # Training: ids are left out at random when there are features to stand on;
            # an item never seen in training only appears as a negative.
            if self.config.item_id_dropout > 0 and self.item_feature_table is not None:
                kept = torch.rand(items.shape, device=items.device) >= self.config.item_id_dropout
                vector = vector * kept.unsqueeze(-1)
        else:
            # Scoring: an item with no training interaction stands on its features alone.
            vector = vector * self.item_warm[items].unsqueeze(-1)
        if self.item_feature_table is not None:
            vector = vector + token_mean(rows, self.item_feature_table, self.item_tokens[items])
        return self.item_mlp(vector)

    def user_vectors(
        self,
        users: torch.Tensor,
        history: tuple[torch.Tensor, torch.Tensor] | None,
        rows: Rows = full_rows,
        anonymous: bool = False,
    ) -> torch.Tensor:
        """Return normalised user vectors (B, d) from ids, (history items, mask) and features.

        An anonymous user (one the model was not trained with) is its history alone.
        With item biases each vector ends in a 1 (see item_vectors).
        """
        unit = F.normalize(self._user_tower(users, history, rows, anonymous), dim=-1)
        if self.item_bias is None:
            return unit
        return torch.cat([unit, unit.new_ones(unit.shape[:-1] + (1,))], dim=-1)

    def _user_tower(
        self,
        users: torch.Tensor,
        history: tuple[torch.Tensor, torch.Tensor] | None,
        rows: Rows,
        anonymous: bool,
        states: torch.Tensor | None = None,
        read: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return the user tower's vectors before normalisation.

        `states` (B, d), when given, are the history encoder's outputs at each row's
        prefix end, computed by the caller over whole sequences (the sequence task);
        they stand in for the history window. `read` (B, L, d), when given, are the
        history items' vectors, read by the caller (towers).
        """
        vector = torch.zeros((), device=users.device)
        if anonymous:
            if history is None or not self.has_history:
                raise ValueError(
                    "this model has no history tower (model.history_length 0): it cannot "
                    "score users it was not trained with"
                )
        elif self.user_id_table is not None:
            vector = rows(self.user_id_table, users)
            if not self.training:  # a user unseen in training has an untrained id row
                vector = vector * self.user_warm[users].unsqueeze(-1)
            elif self.config.user_id_dropout > 0 and self._user_has_more_than_an_id(
                history if states is None else states
            ):
                # Training: ids are left out at random, so the rest of the tower carries
                # the user on its own and the id only refines it.
                kept = torch.rand(users.shape, device=users.device) >= self.config.user_id_dropout
                vector = vector * kept.unsqueeze(-1)
        if states is not None:
            vector = vector + states
        elif self.history_encoder is not None and history is not None:
            items, mask = history
            read = self._history_rows(items, mask, rows, read)
            encoded = self.history_encoder(read, mask)
            vector = vector + self.history_encoder.last(encoded)
        elif self.has_history and history is not None:
            items, mask = history
            weights = mask.to(vector.dtype)
            count = weights.sum(-1, keepdim=True).clamp(min=1.0)
            weights = weights / count
            if self.recency is not None:
                weights = weights * self.recency
            if self.history_table is not None:
                vector = vector + weighted_rows(rows, self.history_table, items, weights)
            else:
                read = self._history_rows(items, mask, rows, read)
                vector = vector + (read * weights.unsqueeze(-1)).sum(-2)
        if self.user_feature_table is not None and not anonymous:
            vector = vector + token_mean(rows, self.user_feature_table, self.user_tokens[users])
        vector = vector.expand(users.numel(), self.config.embedding_dim)
        return self.user_mlp(vector)

    def _user_has_more_than_an_id(self, history) -> bool:
        return (self.has_history and history is not None) or (self.user_feature_table is not None)

    def _history_rows(
        self,
        items: torch.Tensor,
        mask: torch.Tensor,
        rows: Rows,
        read: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return the (..., L, d) vectors the history reads: its own table or the item tower's.

        The item tower runs on the window's real items only (`read`, (n, d) for
        items[mask], when the caller read them); padding stays zero. On a sparse
        log most of a window is padding.
        """
        if self.history_table is not None:
            return rows(self.history_table, items)
        if read is None:
            read = self._item_tower(items[mask], rows, drop_ids=self.training)
        dense = read.new_zeros(*items.shape, read.shape[-1])
        dense[mask] = read
        return dense

    def _item_reads(self, groups: list[torch.Tensor], rows: Rows) -> list[torch.Tensor]:
        """Return the item tower's vectors (before the norm) of each id tensor, in one read.

        A training step reads each table once (training.SparseRows): when the history
        reads the item tower, its items and the scored ones are one lookup.
        """
        flat = torch.cat([group.reshape(-1) for group in groups])
        vectors = self._item_tower(flat, rows, drop_ids=self.training)
        parts = vectors.split([group.numel() for group in groups])
        return [part.view(*group.shape, -1) for group, part in zip(groups, parts, strict=True)]

    def encode_sequences(
        self, items: torch.Tensor, mask: torch.Tensor, rows: Rows = full_rows
    ) -> torch.Tensor:
        """Return the history encoder's (W, L, d) outputs over right-aligned windows of items."""
        return self.encode_and_read(items, mask, None, rows)[0]

    def encode_and_read(
        self,
        items: torch.Tensor,
        mask: torch.Tensor,
        targets: torch.Tensor | None,
        rows: Rows = full_rows,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return encode_sequences' outputs and the item tower's vectors of `targets`.

        One read of the item tables serves both when the history reads the item tower.
        """
        if self.history_encoder is None:
            raise ValueError("only model.history_pooling attention encodes whole sequences")
        read, target_vectors = None, None
        if targets is not None and self.history_table is None:
            read, target_vectors = self._item_reads([items[mask], targets], rows)
        elif targets is not None:
            target_vectors = self._item_tower(targets, rows, self.training)
        return self.history_encoder(self._history_rows(items, mask, rows, read), mask), (
            target_vectors
        )

    def towers(self, users, items, history, rows: Rows = full_rows, states=None, item=None):
        """Return (user vectors, item vectors, item biases or None), vectors before the norm.

        Ids are dropped in training. `states` (B, d), when given, stand in for the
        history window: the history encoder's outputs at each row's prefix end, and
        `item` the items' vectors, both from encode_and_read.
        """
        if item is None and states is None and history is not None and self.history_table is None:
            item, read = self._item_reads([items, history[0][history[1]]], rows)
            user = self._user_tower(users, history, rows, anonymous=False, read=read)
        else:
            user = self._user_tower(users, history, rows, anonymous=False, states=states)
            if item is None:
                item = self._item_tower(items, rows, drop_ids=self.training)
        return user, item, self.logit_bias(items, rows)

    def forward(
        self,
        users: torch.Tensor,
        items: torch.Tensor,
        history: tuple[torch.Tensor, torch.Tensor] | None = None,
        rows: Rows = full_rows,
    ) -> torch.Tensor:
        """Return logits for (user, item) pairs.

        users has shape (B,); items (B,) for one item per user, or (B, k) for a
        group of k items per user (a positive and its negatives), in which case
        each user vector is computed once and the result has shape (B, k).
        history is (items, mask), each (B, history_length), or None.
        """
        user, item, bias = self.towers(users, items, history, rows)
        grouped = items.dim() == users.dim() + 1
        if not grouped:
            item = item.unsqueeze(1)
            bias = None if bias is None else bias.unsqueeze(1)
        logits = ScaledCosine.apply(user, item, self.log_scale)
        if bias is not None:
            logits = logits + bias
        return logits if grouped else logits.squeeze(1)

    def group_scores(
        self, user: torch.Tensor, item: torch.Tensor, bias: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the (B, k) logits of towers' outputs and the (B, B) in-batch logits.

        user (B, d), item (B, k, d) and bias (B, k) or None are `towers` outputs. The
        in-batch block scores row b's user against row j's first item (its positive)
        with the same scale and bias: the batch's other positives as shared negatives.
        """
        logits = ScaledCosine.apply(user, item, self.log_scale)
        unit_user = F.normalize(user, dim=-1)
        unit_positive = F.normalize(item[:, 0], dim=-1)
        in_batch = (unit_user @ unit_positive.T) * self.log_scale.exp()
        if bias is not None:
            logits = logits + bias
            in_batch = in_batch + bias[:, 0].unsqueeze(0)
        return logits, in_batch

    # --- scoring ------------------------------------------------------------------------------
    @classmethod
    def from_state(cls, model_config: dict, state_dict: dict) -> TwoTowerModel | TowerEnsemble:
        """Return the model rebuilt from its JSON config and state dict, in eval mode.

        A config with `members` is a TowerEnsemble's, and an ensemble is returned.
        """
        if "members" in model_config:
            return TowerEnsemble.from_state(model_config, state_dict, cls)
        model = cls(TwoTowerConfig.from_dict(model_config))
        model.load_state_dict(state_dict)
        return model.eval()

    @property
    def device(self) -> torch.device:
        return self.item_id.device

    @torch.no_grad()
    def all_item_vectors(self, chunk: int = 65_536) -> torch.Tensor:
        """Return the normalised vectors of every item, (n_items, d)."""
        ids = torch.arange(self.config.n_items, device=self.device)
        return torch.cat([self.item_vectors(part) for part in ids.split(chunk)])
