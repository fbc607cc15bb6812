"""Hooks: a clear stop when prepared data is missing; no half-replaced outputs after a failure."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import click
from kedro.framework.hooks import hook_impl

from twotower_pipeline.datasets import AtomicJSONDataset, AtomicParquetDataset
from twotower_pipeline.errors import PipelineInputError

logger = logging.getLogger(__name__)


class MissingPreparedDataError(click.ClickException):
    """Raised before a run starts when its inputs have never been produced.

    A ClickException, so `kedro run` ends with the message alone, not a stack trace.
    """


class PreparedDataHooks:
    """Checks, before any node runs, that every input the pipeline reads exists."""

    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        missing = []
        for name in sorted(pipeline.inputs()):
            if name == "parameters" or name.startswith("params:"):
                continue
            if name in catalog and not catalog.exists(name):
                missing.append(name)
        if not missing:
            return
        from kedro.framework.project import pipelines

        prepared = pipelines["__default__"].all_outputs()
        raw = [name for name in missing if name not in prepared]
        if raw:
            files = ", ".join(f"{name} ({_describe_path(catalog.get(name))})" for name in raw)
            message = (
                f"The raw data does not exist: {files}. Put the file there, or point the "
                "catalog at yours (README: 'Your own data'; docs/data.md for MovieLens)."
            )
        else:
            wanted = run_params.get("pipeline_names") or ["__default__"]
            message = (
                f"Pipeline {', '.join(wanted)} needs data that does not exist yet: "
                f"{', '.join(missing)}. Run `kedro run --pipeline=data_processing` first "
                "(or plain `kedro run` for everything)."
            )
        raise MissingPreparedDataError(message)


def _describe_path(dataset) -> str:
    filepath = getattr(dataset, "_filepath", None)
    return str(filepath) if filepath is not None else type(dataset).__name__


class ReadableErrorHooks:
    """`kedro run` ends a run stopped by bad input with its message, not a stack trace.

    Registered first, so pluggy calls it after every other on_pipeline_error hook
    (the rollback among them) has run.
    """

    @hook_impl
    def on_pipeline_error(self, error: Exception) -> None:
        if isinstance(error, PipelineInputError):
            raise click.ClickException(str(error)) from error


class OutputRollbackHooks:
    """A failed run leaves the outputs of the previous good run as they were.

    Kedro saves each node's outputs as soon as the node ends, so a run that
    fails in its third node has already replaced the first two nodes' files.
    Before a run, every existing local, unversioned output file is kept aside
    (a hard link where the dataset replaces files atomically, a copy
    otherwise). If the run fails, the kept files are put back and files the
    run created are removed; if it succeeds, the kept files are deleted.
    Versioned datasets need none of this: a run only adds a version.
    """

    def __init__(self) -> None:
        self._kept: dict[Path, Path | None] = {}

    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        self._kept = {}
        suffix = f".{run_params.get('run_id') or os.getpid()}.keep"
        for name in sorted(pipeline.all_outputs()):
            dataset = catalog.get(name) if name in catalog else None
            path = _local_unversioned_file(dataset)
            if path is None:
                continue
            # Left by a run that was killed (no error hook ran): the file itself is whole.
            for stale in path.parent.glob(f".{path.name}.*.keep"):
                stale.unlink()
            if not path.is_file():
                self._kept[path] = None
                continue
            kept = path.with_name(f".{path.name}{suffix}")
            if isinstance(dataset, AtomicParquetDataset | AtomicJSONDataset):
                os.link(path, kept)
            else:
                shutil.copy2(path, kept)
            self._kept[path] = kept

    @hook_impl
    def on_pipeline_error(self) -> None:
        restored = 0
        for path, kept in self._kept.items():
            if kept is None:
                path.unlink(missing_ok=True)
            elif path.exists() and _unchanged(kept, path):
                kept.unlink()  # never rewritten (and a rename between two links does nothing)
            else:
                os.replace(kept, path)
                restored += 1
        if restored:
            logger.warning("run failed: %d output file(s) restored to the previous run's", restored)
        self._kept = {}

    @hook_impl
    def after_pipeline_run(self) -> None:
        for kept in self._kept.values():
            if kept is not None:
                kept.unlink(missing_ok=True)
        self._kept = {}


def _unchanged(kept: Path, path: Path) -> bool:
    """True when `path` was not rewritten since `kept` was set aside (link, or copy with mtime)."""
    if os.path.samefile(kept, path):
        return True
    a, b = kept.stat(), path.stat()
    return a.st_mtime_ns == b.st_mtime_ns and a.st_size == b.st_size


def _local_unversioned_file(dataset) -> Path | None:
    """Return the local file a dataset writes in place, or None (memory, versioned, remote)."""
    filepath = getattr(dataset, "_filepath", None)
    if filepath is None or getattr(dataset, "_version", None) is not None:
        return None
    if getattr(dataset, "_protocol", "file") not in ("file", None):
        return None
    path = Path(str(filepath))
    return None if path.is_dir() else path
