"""The raw CSV reader: the encoding and id type parameters set, and the line its rows start on."""

from __future__ import annotations

import codecs

from kedro_datasets.pandas import CSVDataset

from twotower_pipeline.config.errors import SettingsError


def configure_raw_reader(dataset, ingestion: dict) -> None:
    """Give a CSV raw reader the parameters' encoding (and text ids when asked)."""
    if not isinstance(dataset, CSVDataset):
        return
    load_args = dataset._load_args
    encoding = ingestion.get("encoding")
    declared = load_args.get("encoding")
    if encoding and declared and codecs.lookup(declared) != codecs.lookup(encoding):
        raise SettingsError(
            f"raw_interactions: the catalog reads it as {declared} but ingestion.encoding is "
            f"{encoding}; set the encoding in parameters only"
        )
    if encoding:
        load_args["encoding"] = encoding
    if ingestion.get("id_type") == "text":
        columns = ingestion.get("columns") or {}
        dtype = dict(load_args.get("dtype") or {})
        for role, default in (("user", "user_id"), ("item", "item_id")):
            dtype[columns.get(role) or default] = str
        load_args["dtype"] = dtype


def first_data_line(dataset) -> int | None:
    """Return the file line of a CSV reader's first data row, or None when rows are not lines."""
    if not isinstance(dataset, CSVDataset):
        return None
    load_args = dataset._load_args
    header = load_args.get("header", "infer")
    if header == "infer":
        header = None if load_args.get("names") is not None else 0
    header_lines = (
        0 if header is None else (max(header) if isinstance(header, list) else header) + 1
    )
    skiprows = load_args.get("skiprows")
    skipped = skiprows if isinstance(skiprows, int) else 0
    return 1 + header_lines + skipped
