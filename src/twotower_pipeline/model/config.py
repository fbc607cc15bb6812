"""The configuration of one two-tower model: everything needed to rebuild it from its weights."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

HISTORY_POOLINGS = ("mean", "recency", "attention")
# A model saved before the attention pooling existed has no attention keys; they are
# read only by that pooling, so such a model loads with them unset.
UNUSED_ATTENTION = {"attention_blocks": 0, "attention_heads": 1, "attention_dropout": 0.0}
OPTIONAL = {"history_reads_item_tower": False, "item_bias": False}


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
    history_pooling: str  # mean | recency (a learned weight per position) | attention
    item_id_dropout: float  # probability that an item's id is left out in a training step
    item_feature_vocab: int  # size of the item feature token space (1: no features)
    item_feature_width: int  # tokens per item (padded with 0)
    user_feature_vocab: int
    user_feature_width: int
    # Read by the attention pooling only (model.attention_*; 0 blocks: no encoder).
    attention_blocks: int = 0
    attention_heads: int = 1
    attention_dropout: float = 0.0
    # The history reads the item tower's own vectors (ids and features, before the
    # norm) instead of a table of its own, as SASRec shares one item table.
    history_reads_item_tower: bool = False
    # A learned logit per item beside the scaled cosine: a unit vector cannot carry an
    # item's popularity in its length, as a dot product (ALS) does.
    item_bias: bool = False

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
        if self.history_pooling not in HISTORY_POOLINGS:
            raise ValueError(
                f"model.history_pooling must be one of {', '.join(HISTORY_POOLINGS)}, "
                f"not {self.history_pooling!r}"
            )
        if self.history_pooling == "attention" and self.history_length > 0:
            if self.attention_blocks < 1:
                raise ValueError("model.history_pooling attention needs attention_blocks >= 1")
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
        if values.get("history_pooling") != "attention":
            values = {**UNUSED_ATTENTION, **values}
        values = {**OPTIONAL, **values}  # models saved before these options existed
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        missing = sorted(known - set(values))
        if unknown or missing:
            raise ValueError(
                f"model config keys do not match this version: unknown {unknown}, "
                f"missing {missing}; retrain the model"
            )
        return cls(**values)
