"""Hooks: a clear stop when prepared data is missing; no half-replaced outputs after a failure."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import click
from kedro.framework.hooks import hook_impl

from twotower_pipeline.datasets import AtomicJSONDataset, AtomicParquetDataset

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
        wanted = run_params.get("pipeline_names") or ["__default__"]
        message = (
            f"Pipeline {', '.join(wanted)} needs data that does not exist yet: "
            f"{', '.join(missing)}. Run `kedro run --pipeline=data_processing` first "
            "(or plain `kedro run` for everything)."
        )
        raise MissingPreparedDataError(message)


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
            elif path.exists() and os.path.samefile(kept, path):
                kept.unlink()  # never rewritten (rename would do nothing between two links)
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


def _local_unversioned_file(dataset) -> Path | None:
    """Return the local file a dataset writes in place, or None (memory, versioned, remote)."""
    filepath = getattr(dataset, "_filepath", None)
    if filepath is None or getattr(dataset, "_version", None) is not None:
        return None
    if getattr(dataset, "_protocol", "file") not in ("file", None):
        return None
    path = Path(str(filepath))
    return None if path.is_dir() else path
