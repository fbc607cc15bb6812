"""One schema for every parameter, checked before any node runs (hooks/settings.py).

Types, ranges, allowed values and rules across fields are declared here with
pydantic; every block forbids keys it does not know, and an unknown key is
reported with the closest valid name. The values themselves live in
conf/base/parameters*.yml only: no field has a default here, so a key that
disappears from the yml is reported as missing rather than filled in
silently.

`check_parameters` returns the parameters as the schema's object or raises
SettingsError with every problem on one line; `parameter_block` does the same
for one block (`params:training`), the typed object code receives in place of
the raw dict; `check_neg_ratio` is the one rule that needs the data (the
number of items), checked when the negatives are about to be drawn.
"""

from __future__ import annotations

import difflib
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from twotower_pipeline.config.errors import SettingsError

PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
OpenFraction = Annotated[float, Field(gt=0, lt=1)]


def _auto_or_bool(value: Any) -> Any:
    """Let auto, true and false through; anything else is one clear error."""
    if value == "auto" or isinstance(value, bool):
        return value
    raise ValueError(f"should be auto, true or false, not {value!r}")


AutoOrBool = Annotated[Literal["auto"] | bool, BeforeValidator(_auto_or_bool)]


class Block(BaseModel):
    """A parameter block: strict types, every key required, no unknown key."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# --- ingestion ---------------------------------------------------------------------


class Columns(Block):
    user: str
    item: str
    timestamp: str
    rating: str | None = None  # optional roles: a log may have no rating or weight column
    weight: str | None = None


class TimestampWindow(Block):
    earliest: str | None
    latest: str | None


class Ingestion(Block):
    source: str
    columns: Columns
    encoding: str
    id_type: Literal["auto", "int", "text"]
    timestamp_unit: Literal["auto", "s", "ms", "iso"]
    timestamp_window: TimestampWindow
    rating_threshold: float | None
    rating_range: list[float] | None

    @model_validator(mode="after")
    def _rules(self) -> Ingestion:
        import codecs

        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise ValueError(f"encoding {self.encoding!r} is not one Python knows") from None
        if self.rating_range is not None:
            if len(self.rating_range) != 2 or self.rating_range[0] >= self.rating_range[1]:
                raise ValueError(f"rating_range must be [low, high], not {self.rating_range}")
        return self


# --- features ----------------------------------------------------------------------


class SideFeatures(Block):
    source: str
    id: str
    categorical: list[str]
    multi_valued: list[str]
    delimiter: str | None
    multi_hot: dict[str, list[str]]
    numeric: list[str]
    buckets: Annotated[int, Field(ge=2)]
    missing_values: Literal["error", "unknown"]


class Features(Block):
    item: SideFeatures | None
    user: SideFeatures | None


class Oracle(Block):
    enabled: bool


# --- split and sampling ------------------------------------------------------------


class Split(Block):
    strategy: Literal["leave_last_out", "global_temporal"]
    min_train_interactions: NonNegativeInt
    temporal_quantiles: list[OpenFraction]
    cold_item_fraction: Annotated[float, Field(ge=0, lt=1)]

    @model_validator(mode="after")
    def _rules(self) -> Split:
        quantiles = self.temporal_quantiles
        if len(quantiles) != 2 or not quantiles[0] < quantiles[1]:
            raise ValueError(
                f"temporal_quantiles must be [validation, test] with validation < test, "
                f"not {quantiles}"
            )
        return self


class NegativeSampling(Block):
    distribution: Literal["uniform", "popularity"]
    popularity_alpha: NonNegativeFloat


# --- model and training ------------------------------------------------------------


class Model(Block):
    embedding_dim: PositiveInt
    hidden_dims: list[PositiveInt]
    init_std: PositiveFloat
    max_logit_scale: PositiveFloat
    user_id: bool
    user_id_dropout: Annotated[float, Field(ge=0, lt=1)]
    history_length: NonNegativeInt
    history_pooling: Literal["mean", "recency", "attention"]
    attention_blocks: PositiveInt
    attention_heads: PositiveInt
    attention_dropout: Annotated[float, Field(ge=0, lt=1)]
    item_id_dropout: Annotated[float, Field(ge=0, lt=1)]
    history_reads_item_tower: bool
    item_bias: bool

    @model_validator(mode="after")
    def _heads_divide_width(self) -> Model:
        if self.history_pooling == "attention" and self.embedding_dim % self.attention_heads:
            raise ValueError(
                f"attention_heads {self.attention_heads} must divide embedding_dim "
                f"{self.embedding_dim}"
            )
        return self


class ModelSelection(Block):
    enabled: bool
    alternatives: dict[str, dict[str, Any]]
    ensemble: bool


class Distributed(Block):
    nproc_per_node: PositiveInt
    backend: Literal["auto", "gloo", "nccl"]
    nnodes: PositiveInt
    rdzv_endpoint: str | None
    rdzv_id: str
    timeout_minutes: PositiveFloat

    @model_validator(mode="after")
    def _rules(self) -> Distributed:
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError("nnodes > 1 needs rdzv_endpoint (host:port of the rendezvous)")
        return self


class Training(Block):
    batch_size: PositiveInt
    learning_rate: PositiveFloat
    weight_decay: NonNegativeFloat
    scale_lr_ratio: NonNegativeFloat
    lr_schedule: Literal["constant", "cosine"]
    warmup_epochs: NonNegativeFloat
    resample_each_epoch: bool
    checkpoint_dir: str
    resume: bool
    progress_bar: bool
    chunk_positives: PositiveInt
    optimizer: Literal["rowwise", "rowwise_rmsprop", "dense"]
    compile_rows: AutoOrBool
    device: Literal["auto", "cpu", "cuda"]
    cuda_batch_multiple: PositiveInt
    loss: Literal["bce", "softmax"]
    log_q: bool
    distributed: Distributed


# --- evaluation and index ----------------------------------------------------------


class Als(Block):
    enabled: bool
    factors: PositiveInt
    regularization: NonNegativeFloat
    alpha: PositiveFloat
    iterations: PositiveInt


class Health(Block):
    collapse_loss: PositiveFloat
    early_epochs: PositiveInt
    clamp_fraction: Annotated[float, Field(gt=0, le=1)]
    frozen_relative_change: PositiveFloat
    parallel_cosine: Annotated[float, Field(gt=0, le=1)]
    min_lift: PositiveFloat
    overfit_epochs: PositiveInt
    overfit_min_rise: PositiveFloat
    overfit_ranking_drop: Fraction
    still_improving_gain: Fraction
    scale_drop_ratio: Annotated[float, Field(gt=0, le=1)]


class Evaluation(Block):
    ks: Annotated[list[PositiveInt], Field(min_length=1)]
    headline_k: PositiveInt
    chunk_size: PositiveInt
    max_users: PositiveInt | None
    recommendations_k: PositiveInt
    als: Als
    health: Health

    @model_validator(mode="after")
    def _rules(self) -> Evaluation:
        if self.headline_k not in self.ks:
            raise ValueError(f"headline_k={self.headline_k} must be one of ks={self.ks}")
        if len(set(self.ks)) != len(self.ks):
            raise ValueError(f"ks={self.ks} repeats a value")
        return self


class Hnsw(Block):
    m: PositiveInt
    ef_construction: PositiveInt
    ef_search: PositiveInt


class Ivf(Block):
    nlist: PositiveInt
    nprobe: PositiveInt


class Index(Block):
    kind: Literal["hnsw", "ivf"]
    hnsw: Hnsw
    ivf: Ivf
    recall_k: PositiveInt
    recommend_above_n_items: NonNegativeInt


class Recommend(Block):
    k: PositiveInt
    chunk_size: PositiveInt


# --- the whole -----------------------------------------------------------------------


# What a model_selection candidate may change of the training block besides its model keys:
# how it learns, not where it runs or checkpoints.
CANDIDATE_TRAINING_KEYS = (
    "batch_size",
    "learning_rate",
    "weight_decay",
    "scale_lr_ratio",
    "lr_schedule",
    "warmup_epochs",
    "loss",
    "log_q",
)


class Parameters(Block):
    """Every parameter of conf/base/parameters*.yml, after environment and run overrides."""

    neg_ratio: PositiveInt
    logit_scale: PositiveFloat
    num_epochs: PositiveInt
    seed: NonNegativeInt
    ingestion: Ingestion
    features: Features
    oracle: Oracle
    split: Split
    negative_sampling: NegativeSampling
    model: Model
    model_selection: ModelSelection
    training: Training
    evaluation: Evaluation
    index: Index
    recommend: Recommend

    @model_validator(mode="after")
    def _rules(self) -> Parameters:
        if self.logit_scale > self.model.max_logit_scale:
            raise ValueError(
                f"logit_scale={self.logit_scale} is above its clamp "
                f"model.max_logit_scale={self.model.max_logit_scale}"
            )
        for name, overrides in self.model_selection.alternatives.items():
            if name in ("configured", "ensemble") or not re.fullmatch(r"[A-Za-z0-9_-]+", name):
                raise ValueError(
                    f"model_selection.alternatives.{name}: a name of letters, digits, _ or - "
                    "(it names a checkpoint folder), other than 'configured' and 'ensemble'"
                )
            overrides = dict(overrides)
            training = overrides.pop("training", None) or {}
            unknown = sorted(set(overrides) - set(Model.model_fields))
            if unknown:
                raise ValueError(
                    f"model_selection.alternatives.{name} sets {unknown}, which are not model "
                    "keys (training keys go under its `training:`)"
                )
            unknown = sorted(set(training) - set(CANDIDATE_TRAINING_KEYS))
            if unknown:
                raise ValueError(
                    f"model_selection.alternatives.{name}.training sets {unknown}: a candidate "
                    f"may set {', '.join(CANDIDATE_TRAINING_KEYS)}"
                )
            checks = (
                (Model, self.model, overrides, ""),
                (Training, self.training, training, "training."),
            )
            for schema, base, changes, prefix in checks:
                try:
                    schema.model_validate({**base.model_dump(), **changes})
                except ValidationError as error:
                    first = error.errors(include_url=False)[0]
                    where = prefix + ".".join(str(part) for part in first["loc"])
                    message = first["msg"]
                    raise ValueError(
                        f"model_selection.alternatives.{name}.{where}={first.get('input')!r}: "
                        f"{message[0].lower()}{message[1:]}"
                    ) from None
        return self


def _model_at(path: tuple) -> type[BaseModel] | None:
    """Return the schema block at a location of an error (None when it is not a block)."""
    model: Any = Parameters
    for part in path:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if isinstance(model, type) else None
        if field is None:
            return None
        candidates = [field.annotation, *getattr(field.annotation, "__args__", ())]
        model = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
        if model is None:
            return None
    return model


def _describe(error: dict) -> str:
    location = tuple(error["loc"])
    dotted = ".".join(str(part) for part in location) or "parameters"
    kind = error["type"]
    if kind == "extra_forbidden":
        parent = _model_at(location[:-1])
        valid = list(parent.model_fields) if parent is not None else []
        close = difflib.get_close_matches(str(location[-1]), valid, n=1)
        hint = f" (did you mean {'.'.join([*map(str, location[:-1]), close[0]])}?)" if close else ""
        return f"unknown parameter {dotted}{hint}"
    if kind == "missing":
        return f"missing parameter {dotted}"
    message = error["msg"].removeprefix("Value error, ")
    if kind.startswith("value_error") or kind == "assertion_error":
        where = f"{dotted}: " if location else ""
        return f"{where}{message}"
    return f"{dotted}={error.get('input')!r}: {message[0].lower()}{message[1:]}"


def check_parameters(parameters: dict) -> Parameters:
    """Return the parameters as the schema's object; raise SettingsError listing every problem."""
    try:
        return Parameters.model_validate(parameters)
    except ValidationError as error:
        raise _settings_error(error) from None


def parameter_block(name: str, values: Any) -> Block:
    """Return the block `params:<name>` as the schema's object, checked as check_parameters does.

    A problem is named by its full path (training.batch_size), as in the check of
    the whole; the rules across blocks (logit_scale below model.max_logit_scale)
    are the whole's own.
    """
    field = Parameters.model_fields.get(name)
    block = field.annotation if field is not None else None
    if not (isinstance(block, type) and issubclass(block, Block)):
        raise KeyError(f"{name!r} is not a parameter block of the schema")
    try:
        return block.model_validate(values)
    except ValidationError as error:
        raise _settings_error(error, (name,)) from None


def _settings_error(error: ValidationError, block: tuple[str, ...] = ()) -> SettingsError:
    problems = [
        _describe({**e, "loc": (*block, *e["loc"])}) for e in error.errors(include_url=False)
    ]
    return SettingsError(
        f"bad settings ({len(problems)}): " + "; ".join(problems) + " (conf/*/parameters*.yml "
        "or --params)"
    )


def check_neg_ratio(neg_ratio: int, n_items: int) -> None:
    """Raise SettingsError when neg_ratio negatives cannot be drawn from n_items items."""
    if neg_ratio >= n_items:
        raise SettingsError(
            f"bad settings (1): neg_ratio={neg_ratio} must be below the number of items "
            f"({n_items}): each positive needs neg_ratio other items as negatives"
        )
