"""`kedro run` ends a failed run with one line, not a stack trace; raw files are read right."""

from __future__ import annotations

import errno
from pathlib import Path

import click
import pandas as pd
from kedro.framework.hooks import hook_impl
from kedro.io import DatasetError
from kedro.io.core import get_protocol_and_path

from twotower_pipeline.config.errors import RunFailedError, SettingsError
from twotower_pipeline.config.project import describe_missing_extra
from twotower_pipeline.config.schema import parameter_block
from twotower_pipeline.io.datasets import describe_disk_full
from twotower_pipeline.io.load_failures import describe_load_failure
from twotower_pipeline.io.raw_reader import configure_raw_reader, first_data_line


class ReadableError(click.ClickException):
    """A one-line error for `kedro run` (no stack trace) with the exit code of its family."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ReadableErrorHooks:
    """`kedro run` ends a failed run with one line, not a stack trace; raw files read right.

    Registered first, so pluggy calls it after every other on_pipeline_error hook
    (the rollback among them) has run. Besides the project's own errors it
    explains a dataset that cannot be loaded (an empty file, bytes that are not
    in the declared encoding, a truncated Parquet file): one line naming the
    file and, where it can be known, the line.

    It also hands the raw CSV reader what parameters say about the file
    (ingestion.encoding; ids read as text under id_type text or auto), so the
    encoding is set in one place, and tells the ingestion node where the
    file's data rows start, so its messages name the file's own line numbers.
    """

    def __init__(self) -> None:
        self._loading: str | None = None
        self._saving: str | None = None
        self._catalog = None
        self._project: Path | None = None

    @hook_impl
    def after_context_created(self, context) -> None:
        self._project = Path(context.project_path)

    @hook_impl
    def after_catalog_created(self, catalog) -> None:
        # Before any before_pipeline_run hook: nothing is kept aside or started yet.
        self._catalog, self._loading = catalog, None
        try:
            check_sources(catalog, self._project)
            if "raw_interactions" in catalog and "params:ingestion" in catalog:
                _configure_raw_interactions(catalog)
        except SettingsError as error:
            raise ReadableError(str(error), error.exit_code) from None

    @hook_impl
    def before_dataset_loaded(self, dataset_name: str) -> None:
        self._loading = dataset_name

    @hook_impl
    def after_dataset_loaded(self, dataset_name: str, data) -> None:
        self._loading = None
        if dataset_name == "raw_interactions" and isinstance(data, pd.DataFrame):
            data.attrs["first_line"] = first_data_line(self._catalog.get(dataset_name))

    @hook_impl
    def before_dataset_saved(self, dataset_name: str) -> None:
        self._saving = dataset_name

    @hook_impl
    def after_dataset_saved(self) -> None:
        self._saving = None

    @hook_impl
    def on_pipeline_error(self, error: Exception) -> None:
        # Kedro wraps what a dataset's save raises (a full disk: DiskFullError) in DatasetError.
        failure = _cause(error, RunFailedError)
        if failure is not None:
            raise ReadableError(str(failure), failure.exit_code) from error
        full = _cause(error, OSError)
        if full is not None and full.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ReadableError(self._disk_full(full)) from error
        if isinstance(error, ModuleNotFoundError) and (missing := describe_missing_extra(error)):
            raise ReadableError(missing, SettingsError.exit_code) from error
        if isinstance(error, DatasetError) and self._loading and self._catalog is not None:
            dataset = self._catalog.get(self._loading)
            raise ReadableError(describe_load_failure(dataset, error)) from error

    def _disk_full(self, error: OSError) -> str:
        """Return the one line for a save that filled the disk (a dataset not of this project)."""
        dataset = self._catalog.get(self._saving) if self._saving and self._catalog else None
        filepath = getattr(dataset, "_filepath", None) or error.filename
        if filepath is None:
            return f"no space left on the disk ({error.strerror}); free some space and run again"
        return describe_disk_full(Path(str(filepath)), 0)


def _configure_raw_interactions(catalog) -> None:
    """Give the raw CSV reader the encoding, and its id columns as text under text or auto."""
    ingestion = parameter_block("ingestion", catalog.load("params:ingestion"))
    columns = ingestion.columns
    # Under auto too: leading zeros survive the reading, and typed_ids
    # (data/interactions.py) makes ids that are all integers integers.
    text_ids = (columns.user, columns.item) if ingestion.id_type in ("text", "auto") else ()
    others = tuple(c for c in (columns.timestamp, columns.rating, columns.weight) if c)
    raw = catalog.get("raw_interactions")
    load_args = getattr(raw, "_load_args", None)
    if text_ids and isinstance(load_args, dict) and load_args.get("engine") == "pyarrow":
        # pandas' pyarrow engine takes no NA strings per column: its ids are read as
        # text with pandas' own NA strings (an id `NA` is a missing id there).
        load_args.setdefault("keep_default_na", True)
    configure_raw_reader(raw, ingestion.encoding, text_ids, others)


def _cause(error: BaseException, kind: type) -> BaseException | None:
    """Return the first exception of `kind` in `error`'s chain of causes, or None."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kind):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


# Each raw input, the parameter that names its file in error messages, its globals.yml key.
_SOURCES = (
    ("raw_interactions", "ingestion.source", "raw_interactions_path"),
    ("item_features", "features.item.source", "item_features_path"),
    ("user_features", "features.user.source", "user_features_path"),
)


def check_sources(catalog, project: Path | None = None) -> None:
    """Raise SettingsError when a raw input's catalog file is not the one parameters name.

    Every error about a raw file names the parameter's path (ingestion.source,
    features.item.source, features.user.source); a catalog entry pointed at
    another file would make those errors name the wrong one.
    """
    for name, where, global_key in _SOURCES:
        if name not in catalog:
            continue
        source = _named_file(catalog, where)
        read = getattr(catalog.get(name), "_filepath", None)
        if source is None or read is None or _same_file(str(read), source):
            continue
        raise SettingsError(
            f"{name}: the catalog reads {_shown(str(read), project)} but {where} names {source}, "
            f"the file its errors would name; set {global_key} in globals.yml and use "
            f"${{globals:{global_key}}} in both (README, 'Your own data')"
        )


def _named_file(catalog, where: str) -> str | None:
    """Return the file a parameter (`features.item.source`) names; None when it names none."""
    block, *path = where.split(".")
    if f"params:{block}" not in catalog:
        return None
    value = parameter_block(block, catalog.load(f"params:{block}"))
    for key in path:
        value = getattr(value, key) if value is not None else None  # features.item may be null
    return value


def _shown(path: str, project: Path | None) -> str:
    """Return a path under the project folder relative to it (as the settings write it)."""
    try:
        return Path(path).relative_to(project or Path.cwd()).as_posix()
    except ValueError:
        return path


def _same_file(read: str, source: str) -> bool:
    """Whether a dataset's path (protocol stripped, as datasets keep it) is the source's file."""
    protocol, path = get_protocol_and_path(source)
    if protocol not in ("file", ""):
        return read == path
    return Path(read).expanduser().resolve() == Path(path).expanduser().resolve()
