"""The two-tower model: a user tower and an item tower scored by scaled cosine.

logit(u, i) = exp(log_scale) * cos(user_tower(u), item_tower(i)). The scale is
learned as a log-parameter initialised at log(logit_scale) and clamped at
max_logit_scale after every step, as CLIP does: cosines live in [-1, 1], so
without a scale the sigmoid can never leave (0.27, 0.73). The model returns raw
logits; the only sigmoid is the one inside the BCE-with-logits loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


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
        self.hidden_dims = [int(width) for width in self.hidden_dims]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TwoTowerConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown model config key(s) {unknown}; expected some of {sorted(known)}"
            )
        return cls(**values)


class Tower(nn.Module):
    """An id embedding, optionally followed by an MLP; outputs are L2-normalised."""

    def __init__(self, n_ids: int, config: TwoTowerConfig) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_ids, config.embedding_dim)
        nn.init.normal_(self.embedding.weight, std=config.init_std)
        layers: list[nn.Module] = []
        width = config.embedding_dim
        for hidden in config.hidden_dims:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        if config.hidden_dims:
            layers.append(nn.Linear(width, config.embedding_dim))
        self.mlp = nn.Sequential(*layers)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Return the normalised vectors of ids, shape ids.shape + (embedding_dim,)."""
        if ids.numel() >= self.embedding.num_embeddings:
            # A batch that looks up more rows than the table has: transform every row
            # once and gather, instead of running the tower on each repeated lookup.
            return self.all()[ids]
        return F.normalize(self.mlp(self.embedding(ids)), dim=-1)

    def all(self) -> torch.Tensor:
        """Return the normalised vectors of every id, shape (n_ids, embedding_dim)."""
        return F.normalize(self.mlp(self.embedding.weight), dim=-1)


class TwoTowerModel(nn.Module):
    """User tower x item tower; forward returns raw logits (no sigmoid)."""

    def __init__(self, config: TwoTowerConfig) -> None:
        super().__init__()
        self.config = config
        self.user_tower = Tower(config.n_users, config)
        self.item_tower = Tower(config.n_items, config)
        self.log_scale = nn.Parameter(torch.tensor(math.log(config.logit_scale)))

    @property
    def logit_scale(self) -> float:
        return float(self.log_scale.detach().exp())

    def clamp_scale(self) -> None:
        """Keep the learned scale at or below max_logit_scale."""
        with torch.no_grad():
            self.log_scale.clamp_(max=math.log(self.config.max_logit_scale))

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Return logits for (user, item) pairs.

        users has shape (B,); items (B,) for one item per user, or (B, k) for a
        group of k items per user (a positive and its negatives), in which case
        each user vector is computed once and the result has shape (B, k).
        """
        user_vectors = self.user_tower(users)
        item_vectors = self.item_tower(items)
        if items.dim() == users.dim() + 1:
            cosine = torch.bmm(item_vectors, user_vectors.unsqueeze(-1)).squeeze(-1)
        else:
            cosine = (user_vectors * item_vectors).sum(-1)
        return self.log_scale.exp() * cosine

    @classmethod
    def from_state(cls, model_config: dict, state_dict: dict) -> TwoTowerModel:
        """Return the model rebuilt from its JSON config and state dict, in eval mode."""
        model = cls(TwoTowerConfig.from_dict(model_config))
        model.load_state_dict(state_dict)
        return model.eval()

    def catalogue_scorer(self, known=None) -> Callable[[np.ndarray], torch.Tensor]:
        """Return a function of user indices -> logits against every item.

        `known` holds the interactions visible at prediction time (train for
        validation, train + validation for test); a history tower reads it.
        The item vectors are computed once, not once per chunk of users scored.
        """
        with torch.no_grad():
            items = self.item_tower.all()
            scale = self.log_scale.exp()

        @torch.no_grad()
        def score(users: np.ndarray) -> torch.Tensor:
            return (scale * self.user_tower(torch.from_numpy(users))) @ items.T

        return score

    @torch.no_grad()
    def score_all_items(self, users: torch.Tensor) -> torch.Tensor:
        """Return logits of the given users against every item, shape (len(users), n_items)."""
        return self.log_scale.exp() * self.user_tower(users) @ self.item_tower.all().T
