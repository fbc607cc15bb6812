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
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from twotower_pipeline.data.user_histories import HistoryTable

Rows = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def full_rows(table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Return table[ids], differentiable through the whole table."""
    return F.embedding(ids, table)


@dataclass
class TwoTowerConfig:
    """Everything needed to rebuild the model from its state dict."""

    # No defaults: the values come from conf/base (parameters.yml, parameters_training.yml).
    n_users: int
    n_items: int
    embedding_dim: int
    hidden_dims: list[int]
    init_std: float
    logit_scale: float
    max_logit_scale: float
    user_id: bool  # a user-id embedding in the user tower
    user_id_dropout: float  # probability that a user's id is left out in a training step
    history_length: int  # items pooled into the user vector; 0: no history
    history_pooling: str  # mean | recency (a learned weight per position)
    item_id_dropout: float  # probability that an item's id is left out in a training step
    item_feature_vocab: int  # size of the item feature token space (1: no features)
    item_feature_width: int  # tokens per item (padded with 0)
    user_feature_vocab: int
    user_feature_width: int

    def __post_init__(self) -> None:
        if self.n_users < 1 or self.n_items < 1 or self.embedding_dim < 1:
            raise ValueError(
                f"n_users, n_items and embedding_dim must be positive, got {self.n_users}, "
                f"{self.n_items}, {self.embedding_dim}"
            )
        if not 0 < self.logit_scale <= self.max_logit_scale:
            raise ValueError(
                f"logit_scale must be in (0, max_logit_scale={self.max_logit_scale}], "
                f"got {self.logit_scale}"
            )
        if not self.user_id and self.history_length < 1 and self.user_feature_vocab <= 1:
            raise ValueError(
                "the user tower has nothing to read: set model.user_id true, "
                "model.history_length >= 1, or give user features"
            )
        if self.history_pooling not in ("mean", "recency"):
            raise ValueError(
                f"model.history_pooling must be mean or recency, not {self.history_pooling!r}"
            )
        for name in ("item_id_dropout", "user_id_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"model.{name} must be in [0, 1), not {getattr(self, name)}")
        self.hidden_dims = [int(width) for width in self.hidden_dims]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TwoTowerConfig:
        """Return the config of a model_config JSON (its `run_id`, the run that made it, aside)."""
        values = {key: value for key, value in values.items() if key != "run_id"}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        missing = sorted(known - set(values))
        if unknown or missing:
            raise ValueError(
                f"model config keys do not match this version: unknown {unknown}, "
                f"missing {missing}; retrain the model"
            )
        return cls(**values)


def _mlp(config: TwoTowerConfig) -> nn.Sequential:
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


def _table(rows: int, config: TwoTowerConfig, padded: bool = False) -> nn.Parameter:
    weight = torch.randn(rows, config.embedding_dim) * config.init_std
    if padded:
        weight[0] = 0.0  # token 0 is padding / unknown: it adds nothing
    return nn.Parameter(weight)


def weighted_rows(
    rows: Rows, table: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Return sum_l weights[..., l] * table[ids[..., l]], shape ids.shape[:-1] + (d,).

    One fused gather-and-sum, forward and backward (F.embedding_bag with
    per-sample weights), instead of gathering every row, scaling and summing:
    at d 64 a 50-item history pools in less than half the time (measured).
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


def _token_mean(rows: Rows, table: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Return the mean embedding of the non-zero tokens, shape tokens.shape[:-1] + (d,)."""
    weights = (tokens > 0).to(table.dtype)
    count = weights.sum(-1, keepdim=True).clamp(min=1.0)
    return weighted_rows(rows, table, tokens, weights / count)


class TwoTowerModel(nn.Module):
    """User tower x item tower; forward returns raw logits (no sigmoid).

    Embedding tables are plain Parameters (`sparse_tables()` lists them); the
    feature tokens of every user and item, and which ids were seen in training,
    are buffers, so the state dict alone rebuilds a model that scores anyone.
    """

    def __init__(self, config: TwoTowerConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.item_id = _table(c.n_items, c)
        self.user_id_table = _table(c.n_users, c) if c.user_id else None
        self.history_table = _table(c.n_items, c) if c.history_length > 0 else None
        self.item_feature_table = (
            _table(c.item_feature_vocab, c, padded=True) if c.item_feature_vocab > 1 else None
        )
        self.user_feature_table = (
            _table(c.user_feature_vocab, c, padded=True) if c.user_feature_vocab > 1 else None
        )
        self.recency = (
            nn.Parameter(torch.ones(c.history_length))
            if c.history_length > 0 and c.history_pooling == "recency"
            else None
        )
        self.user_mlp = _mlp(c)
        self.item_mlp = _mlp(c)
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
    def item_vectors(
        self, items: torch.Tensor, rows: Rows = full_rows, drop_ids: bool = False
    ) -> torch.Tensor:
        """Return normalised item vectors, shape items.shape + (d,)."""
        return F.normalize(self._item_tower(items, rows, drop_ids), dim=-1)

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
            vector = vector + _token_mean(rows, self.item_feature_table, self.item_tokens[items])
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
        """
        return F.normalize(self._user_tower(users, history, rows, anonymous), dim=-1)

    def _user_tower(
        self,
        users: torch.Tensor,
        history: tuple[torch.Tensor, torch.Tensor] | None,
        rows: Rows,
        anonymous: bool,
    ) -> torch.Tensor:
        """Return the user tower's vectors before normalisation."""
        vector = torch.zeros((), device=users.device)
        if anonymous:
            if history is None or self.history_table is None:
                raise ValueError(
                    "this model has no history tower (model.history_length 0): it cannot "
                    "score users it was not trained with"
                )
        elif self.user_id_table is not None:
            vector = rows(self.user_id_table, users)
            if not self.training:  # a user unseen in training has an untrained id row
                vector = vector * self.user_warm[users].unsqueeze(-1)
            elif self.config.user_id_dropout > 0 and self._user_has_more_than_an_id(history):
                # Training: ids are left out at random, so the rest of the tower carries
                # the user on its own and the id only refines it.
                kept = torch.rand(users.shape, device=users.device) >= self.config.user_id_dropout
                vector = vector * kept.unsqueeze(-1)
        if self.history_table is not None and history is not None:
            items, mask = history
            weights = mask.to(vector.dtype)
            count = weights.sum(-1, keepdim=True).clamp(min=1.0)
            weights = weights / count
            if self.recency is not None:
                weights = weights * self.recency
            vector = vector + weighted_rows(rows, self.history_table, items, weights)
        if self.user_feature_table is not None and not anonymous:
            vector = vector + _token_mean(rows, self.user_feature_table, self.user_tokens[users])
        vector = vector.expand(users.numel(), self.config.embedding_dim)
        return self.user_mlp(vector)

    def _user_has_more_than_an_id(self, history) -> bool:
        return (self.history_table is not None and history is not None) or (
            self.user_feature_table is not None
        )

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
        user = self._user_tower(users, history, rows, anonymous=False)
        item = self._item_tower(items, rows, drop_ids=self.training)
        if items.dim() == users.dim() + 1:
            return ScaledCosine.apply(user, item, self.log_scale)
        return ScaledCosine.apply(user, item.unsqueeze(1), self.log_scale).squeeze(1)

    # --- scoring ------------------------------------------------------------------------------
    @classmethod
    def from_state(cls, model_config: dict, state_dict: dict) -> TwoTowerModel | TowerEnsemble:
        """Return the model rebuilt from its JSON config and state dict, in eval mode.

        A config with `members` is a TowerEnsemble's, and an ensemble is returned.
        """
        if "members" in model_config:
            return TowerEnsemble.from_state(model_config, state_dict)
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

    @torch.no_grad()
    def user_vectors_from(
        self, users: np.ndarray, histories: HistoryTable | None, ends: torch.Tensor | None
    ) -> torch.Tensor:
        """Return user vectors for indices `users`, with histories ending at `ends`."""
        ids = torch.as_tensor(np.asarray(users, dtype=np.int64), device=self.device)
        window = None
        if self.config.history_length > 0 and histories is not None:
            window = histories.window(ids, ends.to(ids.device), self.config.history_length)
        return self.user_vectors(ids, window)

    def catalogue_scorer(
        self, known: pd.DataFrame | None = None, predict_at: pd.DataFrame | None = None
    ) -> Callable[[np.ndarray], torch.Tensor]:
        """Return a function of user indices -> logits against every item.

        `known` holds the interactions visible at prediction time (train for
        validation, train + validation for test); the history tower reads each
        user's latest items from it. With `predict_at` (held-out rows: user,
        timestamp), a user's history stops before the earliest of its held-out
        timestamps, so an item of the same second is never in it. The item
        vectors are computed once, not once per chunk of users scored.
        """
        items = self.all_item_vectors()
        scale = self.log_scale.detach().exp()
        histories = None
        moments = None
        if self.config.history_length > 0:
            if known is None:
                raise ValueError("a history tower needs the known interactions to score users")
            histories = HistoryTable.from_interactions(known, self.config.n_users).to(self.device)
            if predict_at is not None:
                moments = np.full(self.config.n_users, np.iinfo(np.int64).max // 4)
                np.minimum.at(
                    moments,
                    predict_at["user"].to_numpy(np.int64),
                    predict_at["timestamp"].to_numpy(np.int64),
                )

        @torch.no_grad()
        def score(users: np.ndarray) -> torch.Tensor:
            ends = None
            if histories is not None:
                at = None if moments is None else moments[np.asarray(users, dtype=np.int64)]
                ends = histories.ends_before(users, at)
            return ((scale * self.user_vectors_from(users, histories, ends)) @ items.T).cpu()

        return score


@dataclass
class EnsembleConfig:
    """The members' configs and names; sizes and the scale's settings are theirs (shared)."""

    members: list[TwoTowerConfig]
    names: list[str]

    @property
    def n_users(self) -> int:
        return self.members[0].n_users

    @property
    def n_items(self) -> int:
        return self.members[0].n_items

    @property
    def history_length(self) -> int:
        """The longest member history: each member reads the latest items it takes."""
        return max(m.history_length for m in self.members)

    def to_dict(self) -> dict:
        first = self.members[0]
        return {
            "members": [m.to_dict() for m in self.members],
            "names": list(self.names),
            "n_users": first.n_users,
            "n_items": first.n_items,
            "history_length": self.history_length,
            "logit_scale": first.logit_scale,
            "max_logit_scale": first.max_logit_scale,
        }

    @classmethod
    def from_dict(cls, values: dict) -> EnsembleConfig:
        members = [TwoTowerConfig.from_dict(m) for m in values["members"]]
        return cls(members, list(values["names"]))


class TowerEnsemble(nn.Module):
    """Two-tower models trained apart and scored as one: the mean of their logits.

    The mean of scale_c x cos_c over n members is itself a two-tower score:
    concatenate each member's unit vectors, each times sqrt(scale_c / sum of
    scales), on both sides (so both stay unit length) and take (sum of scales) / n
    as the scale. A mean, not a sum, keeps the logits on the members' footing, so
    log loss and the health checks read as for one model. So the ensemble offers the
    single model's scoring interface (unit user and item vectors, `log_scale`,
    `catalogue_scorer`) and its vectors serve from one index, at d = the sum of
    the members' d. It is built from trained members; it is not trained itself.
    """

    def __init__(self, members: list[TwoTowerModel], names: list[str]) -> None:
        super().__init__()
        if len(members) < 2 or len(names) != len(members):
            raise ValueError("an ensemble needs two or more members, one name each")
        sizes = {(m.config.n_users, m.config.n_items) for m in members}
        if len(sizes) > 1:
            raise ValueError(f"ensemble members cover other users and items: {sorted(sizes)}")
        self.members = nn.ModuleList(members)
        self.config = EnsembleConfig([m.config for m in members], list(names))

    @classmethod
    def from_state(cls, model_config: dict, state_dict: dict) -> TowerEnsemble:
        config = EnsembleConfig.from_dict(model_config)
        model = cls([TwoTowerModel(c) for c in config.members], config.names)
        model.load_state_dict(state_dict)
        return model.eval()

    @property
    def log_scale(self) -> torch.Tensor:
        """log of the mean scale: logit = exp(log_scale) x (user vector . item vector)."""
        scales = torch.stack([m.log_scale.detach() for m in self.members])
        return torch.logsumexp(scales, 0) - math.log(len(self.members))

    @property
    def logit_scale(self) -> float:
        return float(self.log_scale.exp())

    def _shares(self) -> torch.Tensor:
        """Return sqrt(scale_c / total) per member: the weight of its part of each vector."""
        scales = torch.stack([m.log_scale.detach().exp() for m in self.members])
        return (scales / scales.sum()).sqrt()

    @torch.no_grad()
    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        parts = zip(self._shares(), self.members, strict=True)
        return torch.cat([share * m.item_vectors(items) for share, m in parts], dim=-1)

    @torch.no_grad()
    def all_item_vectors(self, chunk: int = 65_536) -> torch.Tensor:
        parts = zip(self._shares(), self.members, strict=True)
        return torch.cat([share * m.all_item_vectors(chunk) for share, m in parts], dim=-1)

    @torch.no_grad()
    def user_vectors(
        self,
        users: torch.Tensor,
        history: tuple[torch.Tensor, torch.Tensor] | None,
        rows: Rows = full_rows,
        anonymous: bool = False,
    ) -> torch.Tensor:
        """Return unit user vectors; history is (items, mask) of the longest member's length."""
        parts = []
        for share, member in zip(self._shares(), self.members, strict=True):
            length, window = member.config.history_length, None
            if history is not None and length > 0:
                items, mask = history
                window = (items[..., -length:], mask[..., -length:])  # the latest `length`
            parts.append(share * member.user_vectors(users, window, rows, anonymous))
        return torch.cat(parts, dim=-1)

    @property
    def device(self) -> torch.device:
        return self.members[0].device

    # The same as one model's: windows of the longest member's length, read by user_vectors,
    # and one scorer over the concatenated vectors (one history table for all members), whose
    # logits are the mean of the members' logits.
    user_vectors_from = TwoTowerModel.user_vectors_from
    catalogue_scorer = TwoTowerModel.catalogue_scorer
