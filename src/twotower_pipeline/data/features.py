"""Item and user side features: checked at the boundary, encoded as integer tokens.

A side (items or users) maps the columns of its raw feature table to roles in
parameters: the id, categorical columns, multi-valued columns (lists, or text
split on a delimiter), groups of 0/1 flag columns read as one multi-valued
field, and numeric columns cut into quantile buckets. Every field's values
get a contiguous range of one token space per side; token 0 is reserved for
padding and for values never seen in training, which are left out of a
token list. Encoders (vocabularies, bucket edges) are fitted on the entities
that appear in the training interactions only, so nothing about held-out
rows or cold items leaks into them.

Problems in a feature file are reported once, naming the file, the column and
the count, as data/interactions.py does for the log. All work is vectorised
(pandas explode / categorical codes, numpy searchsorted): no Python loop per row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from twotower_pipeline.config.errors import PipelineInputError

SIDES = ("item", "user")
KINDS = ("categorical", "multi_valued", "multi_hot", "numeric")
MISSING_VALUES = ("error", "unknown")
_KEYS = {
    "source",
    "id",
    "categorical",
    "multi_valued",
    "delimiter",
    "multi_hot",
    "numeric",
    "buckets",
    "missing_values",
}


class InvalidFeaturesError(PipelineInputError, ValueError):
    """A raw feature table cannot be used as it is."""


@dataclass(frozen=True)
class FeatureSpec:
    """How to read one side's feature table: which column plays which role."""

    side: str  # item | user
    source: str  # the file, named in every error
    id: str
    buckets: int  # at most this many quantile buckets per numeric field
    missing_values: str  # error | unknown
    categorical: tuple[str, ...] = ()
    multi_valued: tuple[str, ...] = ()
    delimiter: str | None = None  # None: multi-valued columns hold lists
    multi_hot: dict[str, tuple[str, ...]] = field(default_factory=dict)
    numeric: tuple[str, ...] = ()

    @classmethod
    def from_params(cls, side: str, params: dict | None) -> FeatureSpec | None:
        """Return the spec of features.<side>, or None when that side has no features."""
        if params is None:
            return None
        where = f"features.{side}"
        unknown = set(params) - _KEYS
        if unknown:
            raise ValueError(f"unknown {where} parameter(s): {sorted(unknown)}")
        # Roles left out map no column; these four have no default (the yaml is the truth).
        for key in ("source", "id", "buckets", "missing_values"):
            if params.get(key) is None:
                raise ValueError(f"{where}.{key} must be set (or set {where}: null)")
        missing = params["missing_values"]
        if missing not in MISSING_VALUES:
            raise ValueError(f"{where}.missing_values must be one of {MISSING_VALUES}")
        buckets = int(params["buckets"])
        if buckets < 1:
            raise ValueError(f"{where}.buckets must be at least 1, not {buckets}")
        spec = cls(
            side=side,
            source=str(params["source"]),
            id=str(params["id"]),
            categorical=tuple(params.get("categorical") or ()),
            multi_valued=tuple(params.get("multi_valued") or ()),
            delimiter=params.get("delimiter"),
            multi_hot={k: tuple(v) for k, v in (params.get("multi_hot") or {}).items()},
            numeric=tuple(params.get("numeric") or ()),
            buckets=buckets,
            missing_values=missing,
        )
        names = spec.field_names()
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"{where} names field(s) {repeated} more than once")
        return spec

    def fields(self) -> list[tuple[str, str]]:
        """Return (name, kind) of each field, in token order (the order of KINDS)."""
        return (
            [(name, "categorical") for name in self.categorical]
            + [(name, "multi_valued") for name in self.multi_valued]
            + [(name, "multi_hot") for name in self.multi_hot]
            + [(name, "numeric") for name in self.numeric]
        )

    def field_names(self) -> list[str]:
        """Return the names of all fields."""
        return [name for name, _ in self.fields()]

    def columns(self) -> list[str]:
        """Return every raw column the spec reads (id first)."""
        flags = [c for group in self.multi_hot.values() for c in group]
        return [self.id, *self.categorical, *self.multi_valued, *flags, *self.numeric]


@dataclass
class FieldValues:
    """One field's values as (row of the table, value) pairs; rows without a value are absent."""

    rows: np.ndarray  # int64 positions in the validated table
    values: np.ndarray  # object (str) for vocabularies, float64 for numeric fields


@dataclass
class FeatureTable:
    """A validated feature table: the entity index of each row and each field's values."""

    entity: np.ndarray  # int64 index (item or user) per row
    fields: dict[str, FieldValues]


def _fail(spec: FeatureSpec, message: str) -> None:
    raise InvalidFeaturesError(f"{spec.source}: {message}")


def _first_row(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _text(values: pd.Series) -> np.ndarray:
    """Return values as str, so vocabularies are the same after a JSON round trip."""
    return values.astype(str).to_numpy(dtype=object)


def _check_file(raw: pd.DataFrame | None, spec: FeatureSpec, role: str) -> None:
    """Raise InvalidFeaturesError for a missing file, no rows, or a mapped column not there."""
    if raw is None:
        _fail(
            spec,
            f"the file does not exist, but {role} maps its columns. Put the file there, "
            f"point the catalog's {spec.side}_features at yours, or set {role}: null",
        )
    if len(raw) == 0:
        _fail(spec, "the file holds no rows")
    missing = [c for c in spec.columns() if c not in raw.columns]
    if missing:
        _fail(
            spec,
            f"missing column(s) {missing}; the file has {list(map(str, raw.columns))}. "
            f"Map your columns with {role} in parameters.",
        )


def _known_ids(
    raw: pd.DataFrame, spec: FeatureSpec, index_ids: pd.Series, role: str
) -> tuple[np.ndarray, np.ndarray]:
    """Return each row's index (-1: unknown) and which rows are known; raise on bad ids."""
    rows_read = len(raw)
    ids = raw[spec.id]
    null_ids = ids.isna().to_numpy()
    if null_ids.any():
        _fail(
            spec,
            f"column {spec.id!r} ({spec.side} id) has {int(null_ids.sum())} null value(s) of "
            f"{rows_read} rows (first at data row {_first_row(null_ids)})",
        )
    duplicated = ids.duplicated().to_numpy()
    if duplicated.any():
        _fail(
            spec,
            f"column {spec.id!r} ({spec.side} id) has {int(duplicated.sum())} repeated id(s) "
            f"(first: {ids.iloc[_first_row(duplicated)]!r} at data row "
            f"{_first_row(duplicated)}); give each {spec.side} one row",
        )
    entity = pd.Index(index_ids.to_numpy()).get_indexer(ids.to_numpy())
    known = entity >= 0
    if not known.any():
        _fail(
            spec,
            f"none of the {rows_read} id(s) in column {spec.id!r} is a {spec.side} of the "
            f"interactions (e.g. {ids.iloc[0]!r} vs {index_ids.iloc[0]!r}); is it the feature "
            f"file of this log? Set {role}: null to run without {spec.side} features",
        )
    return entity, known


def _read_fields(
    table: pd.DataFrame, spec: FeatureSpec, file_rows: np.ndarray, missing_values: dict
) -> dict[str, FieldValues]:
    """Return each field's values; nulls are counted into missing_values, or raise."""
    role = f"features.{spec.side}"
    fields: dict[str, FieldValues] = {}
    for name, kind in spec.fields():
        if kind == "multi_hot":
            fields[name] = _multi_hot(table, spec, name)
            continue
        column = table[name]
        nulls = column.isna().to_numpy()
        if nulls.any():
            if spec.missing_values == "error":
                _fail(
                    spec,
                    f"column {name!r} ({kind}) has {int(nulls.sum())} null value(s) of "
                    f"{len(table)} rows (first at data row {file_rows[_first_row(nulls)]}); set "
                    f"{role}.missing_values: unknown to read them as unknown",
                )
            missing_values[name] = int(nulls.sum())
        rows = np.flatnonzero(~nulls)
        present = column.iloc[rows]
        if kind == "categorical":
            fields[name] = FieldValues(rows, _text(present))
        elif kind == "multi_valued":
            fields[name] = _multi_valued(present, rows, file_rows, spec, name)
        else:
            fields[name] = FieldValues(rows, _numbers(present, spec, name))
    return fields


def validate_features(
    raw: pd.DataFrame | None, spec: FeatureSpec, index_ids: pd.Series
) -> tuple[FeatureTable, dict]:
    """Return the checked table (rows of known ids only) and a report of what was dropped.

    index_ids holds the original id of each index (item_index.item_id or
    user_index.user_id). Raises InvalidFeaturesError naming the file, column and
    count for: a missing file or column, null or duplicate ids, no id shared
    with the interactions, null values (unless missing_values is "unknown"), a
    multi-valued cell that is not a list (or not text, with a delimiter), a
    flag that is not 0/1, a numeric value that is not a number or a date.
    Ids unknown to the interactions are dropped and counted: a catalogue file
    usually lists items nobody interacted with.
    """
    role = f"features.{spec.side}"
    _check_file(raw, spec, role)
    entity, known = _known_ids(raw, spec, index_ids, role)
    table = raw.loc[known].reset_index(drop=True)
    file_rows = np.flatnonzero(known)  # table row -> data row of the file, for messages
    report = {
        "source": spec.source,
        "rows_read": len(raw),
        "unknown_ids_dropped": int((~known).sum()),
        "missing_values": {},
    }
    fields = _read_fields(table, spec, file_rows, report["missing_values"])
    return FeatureTable(entity[known].astype(np.int64), fields), report


def _multi_valued(
    present: pd.Series, rows: np.ndarray, file_rows: np.ndarray, spec: FeatureSpec, name: str
) -> FieldValues:
    """Return the (row, value) pairs of a list column, or of text split on the delimiter."""
    if spec.delimiter is None:
        is_list = present.map(lambda v: isinstance(v, list | tuple | np.ndarray)).to_numpy(bool)
        expected = f"lists (or set features.{spec.side}.delimiter to split text)"
    else:
        is_list = present.map(lambda v: isinstance(v, str)).to_numpy(bool)
        expected = f"text to split on {spec.delimiter!r}"
    if not is_list.all():
        bad = ~is_list
        _fail(
            spec,
            f"column {name!r} (multi_valued) has {int(bad.sum())} value(s) that are not "
            f"{expected} (first: {present.iloc[_first_row(bad)]!r} at data row "
            f"{int(file_rows[rows[_first_row(bad)]])})",
        )
    lists = present if spec.delimiter is None else present.str.split(spec.delimiter, regex=False)
    exploded = pd.Series(lists.to_numpy(), index=rows).explode()
    exploded = exploded[exploded.notna()]
    values = _text(exploded)
    if spec.delimiter is not None:
        values = np.char.strip(values.astype(str)).astype(object)
    keep = values != ""
    return FieldValues(exploded.index.to_numpy(np.int64)[keep], values[keep])


def _multi_hot(table: pd.DataFrame, spec: FeatureSpec, name: str) -> FieldValues:
    """Return (row, flag column name) for every flag set to 1 in the field's columns."""
    columns = list(spec.multi_hot[name])
    flags = table[columns].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    bad = ~np.isin(flags, (0.0, 1.0))
    if bad.any():
        column = columns[int(np.flatnonzero(bad.any(axis=0))[0])]
        _fail(
            spec,
            f"column {column!r} (flag of multi_hot field {name!r}) and its group have "
            f"{int(bad.sum())} value(s) that are not 0 or 1",
        )
    rows, cols = np.nonzero(flags == 1.0)
    return FieldValues(rows.astype(np.int64), np.array(columns, dtype=object)[cols])


def _numbers(present: pd.Series, spec: FeatureSpec, name: str) -> np.ndarray:
    """Return a numeric column as float64; a date or time column gives its (calendar) year."""
    if pd.api.types.is_datetime64_any_dtype(present):
        return present.dt.year.to_numpy(np.float64)
    values = pd.to_numeric(present, errors="coerce").to_numpy(np.float64, na_value=np.nan)
    bad = ~np.isfinite(values)
    if bad.any():
        _fail(
            spec,
            f"column {name!r} (numeric) has {int(bad.sum())} value(s) that are not numbers "
            f"(first: {present.iloc[_first_row(bad)]!r})",
        )
    return values


def fit_encoder(table: FeatureTable, spec: FeatureSpec, train_entities: np.ndarray) -> dict:
    """Return the side's encoder fitted on rows of training entities only (JSON-ready).

    {"vocab_size": V, "fields": [{"name", "kind", "offset", "size", "values" | "edges"}]}:
    a field's tokens are offset .. offset + size - 1; token 0 is padding / unknown.
    Vocabularies are sorted; numeric edges are the training entities' quantiles
    (repeated edges merged), so a field has at most `buckets` buckets.
    """
    train_row = np.isin(table.entity, train_entities)
    fields, offset = [], 1
    for name, kind in spec.fields():
        column = table.fields[name]
        values = column.values[train_row[column.rows]]
        entry: dict = {"name": name, "kind": kind, "offset": offset}
        if kind == "numeric":
            quantiles = np.linspace(0.0, 1.0, spec.buckets + 1)[1:-1]
            edges = np.unique(np.quantile(values, quantiles)) if values.size else np.empty(0)
            entry["edges"] = edges.tolist()
            entry["size"] = int(edges.size + 1)
        else:
            vocabulary = sorted(set(values.tolist()))
            entry["values"] = vocabulary
            entry["size"] = len(vocabulary)
        offset += entry["size"]
        fields.append(entry)
    return {"vocab_size": offset, "fields": fields}


def empty_encoder() -> dict:
    """Return the encoder of a side without features: only token 0."""
    return {"vocab_size": 1, "fields": []}


def encode_tokens(
    table: FeatureTable | None, encoder: dict, n_entities: int, side: str
) -> tuple[pd.DataFrame, dict]:
    """Return one row per index (columns side, tokens: sorted int32 list) and token counts.

    Values outside a field's vocabulary (seen only outside training) are left
    out: they are token 0, which a model treats as padding.
    """
    entity_parts, token_parts, unseen = [], [], {}
    for entry in encoder["fields"]:
        column = table.fields[entry["name"]]
        if entry["kind"] == "numeric":
            codes = np.searchsorted(np.asarray(entry["edges"], np.float64), column.values, "right")
        else:
            codes = pd.Index(entry["values"], dtype=object).get_indexer(column.values)
        known = codes >= 0
        unseen[entry["name"]] = int((~known).sum())
        entity_parts.append(table.entity[column.rows[known]])
        token_parts.append(entry["offset"] + codes[known])
    entity = np.concatenate(entity_parts) if entity_parts else np.empty(0, np.int64)
    tokens = np.concatenate(token_parts) if token_parts else np.empty(0, np.int64)
    keys = np.unique(entity * encoder["vocab_size"] + tokens)  # sorted, duplicates merged
    entity, tokens = keys // encoder["vocab_size"], keys % encoder["vocab_size"]
    offsets = np.zeros(n_entities + 1, dtype=np.int32)
    np.cumsum(np.bincount(entity, minlength=n_entities), out=offsets[1:])
    lists = pa.ListArray.from_arrays(pa.array(offsets), pa.array(tokens.astype(np.int32)))
    frame = pd.DataFrame(
        {
            side: np.arange(n_entities, dtype=np.int32),
            "tokens": lists.to_numpy(zero_copy_only=False),
        }
    )
    with_tokens = int(np.count_nonzero(np.diff(offsets)))
    return frame, {"unseen_values_left_out": unseen, f"{side}s_with_tokens": with_tokens}


def build_side(
    raw: pd.DataFrame | None,
    spec: FeatureSpec | None,
    index_ids: pd.Series,
    train_entities: np.ndarray,
    side: str,
) -> tuple[pd.DataFrame, dict, dict]:
    """Return (token table, encoder, report) for one side; empty lists when it has no features."""
    n_entities = len(index_ids)
    if spec is None:
        encoder = empty_encoder()
        tokens, _ = encode_tokens(None, encoder, n_entities, side)
        return tokens, encoder, {"features": None}
    table, report = validate_features(raw, spec, index_ids)
    encoder = fit_encoder(table, spec, np.unique(train_entities))
    tokens, counts = encode_tokens(table, encoder, n_entities, side)
    in_table = np.zeros(n_entities, dtype=bool)
    in_table[table.entity] = True
    in_train = np.zeros(n_entities, dtype=bool)
    in_train[train_entities] = True
    report.update(counts)
    report[f"{side}s_without_features"] = int((~in_table).sum())
    # Cold entities: no training interaction, so only their features describe them.
    report[f"cold_{side}s_with_features"] = int((in_table & ~in_train).sum())
    report["vocab_size"] = encoder["vocab_size"]
    return tokens, encoder, report


def padded_tokens(tokens: pd.Series, n_entities: int | None = None) -> np.ndarray:
    """Return a (n_entities, max tokens) int32 array of the token lists, right-padded with 0.

    The form a model keeps as a buffer and feeds to an EmbeddingBag or a masked
    mean (padding_idx=0). A table without any token gives shape (n, 1) of zeros.
    """
    lists = pa.array(tokens, type=pa.list_(pa.int32()))
    offsets = lists.offsets.to_numpy()
    values = lists.flatten().to_numpy()
    lengths = np.diff(offsets)
    n = len(lists) if n_entities is None else n_entities
    width = max(1, int(lengths.max()) if lengths.size else 1)
    padded = np.zeros((n, width), dtype=np.int32)
    row = np.repeat(np.arange(len(lists)), lengths)
    col = np.arange(values.size) - np.repeat(offsets[:-1], lengths)
    padded[row, col] = values
    return padded
