"""Why a dataset's file cannot be read, in one line naming the file (and, where known, the line)."""

from __future__ import annotations

from pathlib import Path

from kedro.io import DatasetError


def describe_load_failure(dataset, error: Exception) -> str:
    """Return one line saying why a dataset's file cannot be read, naming the file (and line)."""
    filepath = getattr(dataset, "_filepath", None)
    cause: BaseException = error
    while isinstance(cause, DatasetError) and (cause.__cause__ or cause.__context__):
        cause = cause.__cause__ or cause.__context__  # Kedro wraps the reader's error, twice
    if filepath is None:
        return f"{type(dataset).__name__} cannot be loaded: {_first_line(cause)}"
    path = Path(str(filepath))
    if path.is_absolute() and path.is_relative_to(Path.cwd()):
        path = path.relative_to(Path.cwd())  # as the catalog names it
    if path.is_file() and path.stat().st_size == 0:
        return f"{path}: the file is empty (0 bytes)"
    if isinstance(cause, UnicodeDecodeError):
        return _describe_decode_error(path, cause.encoding)
    if type(cause).__module__.startswith("pyarrow") or path.suffix == ".parquet":
        return (
            f"{path}: not a readable Parquet file ({_first_line(cause)}); "
            "it may be truncated: write it again"
        )
    return f"{path}: cannot be read ({type(cause).__name__}: {_first_line(cause)})"


def _describe_decode_error(path: Path, encoding: str) -> str:
    data = path.read_bytes()
    try:
        data.decode(encoding)
    except UnicodeDecodeError as error:
        start = error.start
        line = data.count(b"\n", 0, start) + 1
        column = start - (data.rfind(b"\n", 0, start) + 1) + 1
        return (
            f"{path}: line {line} is not valid {encoding} (byte 0x{data[start]:02x} at "
            f"column {column}); set ingestion.encoding to the file's encoding (e.g. latin-1)"
        )
    return f"{path}: is not valid {encoding}; set ingestion.encoding to the file's encoding"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
