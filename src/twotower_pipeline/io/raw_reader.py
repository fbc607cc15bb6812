"""The raw CSV reader: the encoding and id type parameters set, and the line its rows start on."""

from __future__ import annotations

import codecs

from kedro_datasets.pandas import CSVDataset

from twotower_pipeline.config.errors import SettingsError


def configure_raw_reader(dataset, encoding: str, text_columns: tuple[str, ...] = ()) -> None:
    """Give a CSV raw reader the file's encoding, and read `text_columns` as text."""
    if not isinstance(dataset, CSVDataset):
        return
    load_args = dataset._load_args
    declared = load_args.get("encoding")
    if declared and codecs.lookup(declared) != codecs.lookup(encoding):
        raise SettingsError(
            f"raw_interactions: the catalog reads it as {declared} but ingestion.encoding is "
            f"{encoding}; set the encoding in parameters only"
        )
    load_args["encoding"] = encoding
    if text_columns:
        load_args["dtype"] = {**(load_args.get("dtype") or {}), **dict.fromkeys(text_columns, str)}


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
