"""The raw CSV reader: the encoding and id type parameters set, and the line its rows start on."""

from __future__ import annotations

import codecs

from kedro_datasets.pandas import CSVDataset

try:
    from pandas._libs.parsers import STR_NA_VALUES as _PANDAS_NA_STRINGS
except ImportError:  # pandas' default list, as of pandas 2
    _PANDAS_NA_STRINGS = {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan",
                          "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a",
                          "nan", "null"}  # fmt: skip

from twotower_pipeline.config.errors import SettingsError


def configure_raw_reader(
    dataset, encoding: str, text_columns: tuple[str, ...] = (), other_columns: tuple[str, ...] = ()
) -> None:
    """Give a CSV raw reader the file's encoding, and read `text_columns` as text.

    A text column is read with no NA strings but the empty cell: `NA`, `None` or
    `null` is an id like any other. `other_columns` (the timestamp, the rating)
    keep pandas' NA strings, so a `NA` rating is still a missing one.
    """
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
        if "na_values" in load_args or "keep_default_na" in load_args:
            return  # the catalog says which strings are missing values: its word stands
        load_args["keep_default_na"] = False
        load_args["na_values"] = {
            **dict.fromkeys(other_columns, sorted(_PANDAS_NA_STRINGS)),
            **{column: [""] for column in text_columns},
        }


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
