"""An ensemble of two-tower models trained apart and scored as one."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from twotower_pipeline.model.config import TwoTowerConfig
from twotower_pipeline.model.layers import Rows, full_rows
from twotower_pipeline.model.scoring import CatalogueScoring


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


class TowerEnsemble(CatalogueScoring, nn.Module):
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

    def __init__(self, members: list[nn.Module], names: list[str]) -> None:
        super().__init__()
        if len(members) < 2 or len(names) != len(members):
            raise ValueError("an ensemble needs two or more members, one name each")
        sizes = {(m.config.n_users, m.config.n_items) for m in members}
        if len(sizes) > 1:
            raise ValueError(f"ensemble members cover other users and items: {sorted(sizes)}")
        self.members = nn.ModuleList(members)
        self.config = EnsembleConfig([m.config for m in members], list(names))

    @classmethod
    def from_state(
        cls, model_config: dict, state_dict: dict, member: Callable[[TwoTowerConfig], nn.Module]
    ) -> TowerEnsemble:
        """Return the ensemble of a model_config JSON, members made by `member(config)`."""
        config = EnsembleConfig.from_dict(model_config)
        model = cls([member(c) for c in config.members], config.names)
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
