"""A failed or interrupted run publishes nothing: its outputs are rolled back (io/rollback.py)."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

from kedro.framework.hooks import hook_impl

from twotower_pipeline.config.errors import RunInterruptedError
from twotower_pipeline.hooks.run_lock import environment_lock_path, run_environment
from twotower_pipeline.io.datasets import AtomicJSONDataset, AtomicParquetDataset
from twotower_pipeline.io.rollback import (
    journal_path,
    journal_run_ids,
    keep_aside,
    keep_name,
    local_unversioned_file,
    new_version_folder,
    recover_killed_runs,
    roll_back,
    write_journal,
)

logger = logging.getLogger(__name__)


def _interruption(signum: int) -> RunInterruptedError:
    name = signal.Signals(signum).name
    return RunInterruptedError(
        f"run interrupted by {name}: nothing of this run was published; every output "
        "is the last successful run's (training can continue with training.resume=true)",
        128 + signum,
    )


class OutputRollbackHooks:
    """A failed run publishes nothing: every output loads what the last good run wrote.

    Kedro saves each node's outputs as soon as the node ends, so a run that
    fails in its third node has already replaced the first two nodes' files.
    Before a run, every existing local, unversioned output file is kept aside
    (a hard link where the dataset replaces files atomically, a copy
    otherwise). If the run fails, the kept files are put back, files the run
    created are removed, and so are the version folders it added to versioned
    datasets (the model, the metrics, the plots): Kedro names them all after
    the run id, so they are known before the run starts. Rolling back, rather
    than staging every save until the end, keeps Kedro's own datasets and
    their loads within the run unchanged. If the run succeeds, the kept files
    are deleted.

    SIGINT (Ctrl-C) and SIGTERM are turned into RunInterruptedError while the
    pipeline runs, so an interrupted run is rolled back like any other failure
    (Kedro calls on_pipeline_error for exceptions, not for KeyboardInterrupt).
    Code that catches every exception (the logging module does, while it
    writes a record) may swallow it; the interruption is then raised again
    at the next dataset load or save or node boundary.
    """

    def __init__(self) -> None:
        self._kept: dict[Path, Path | None] = {}
        self._new_versions: list[tuple[Path, bool]] = []
        self._handlers: dict[int, object] = {}
        self._interrupted: RunInterruptedError | None = None
        self._journal: Path | None = None

    @hook_impl
    def after_context_created(self, context) -> None:
        # A run killed outright (SIGKILL, power cut) ran no error hook: its journal
        # says what to put back, before anything reads the outputs.
        recover_killed_runs(Path(context.project_path) / "data")

    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        # Called under the environment's lock (hooks/run_lock.py): no other run of this
        # environment writes, so a journal of it left here is a killed run's.
        project = Path(run_params["project_path"])
        data = project / "data"
        recover_killed_runs(data)
        self._kept, self._new_versions = {}, []
        run_id = run_params.get("run_id") or str(os.getpid())
        linked: dict[Path, bool] = {}
        for name in sorted(pipeline.all_outputs()):
            dataset = catalog.get(name) if name in catalog else None
            folder = new_version_folder(dataset, run_id)
            if folder is not None:
                self._new_versions.append((folder, folder.parent.exists()))
                continue
            path = local_unversioned_file(dataset)
            if path is None:
                continue
            self._kept[path] = keep_name(path, run_id)
            linked[path] = isinstance(dataset, AtomicParquetDataset | AtomicJSONDataset)
        env = run_environment(run_params)
        self._journal = journal_path(data, run_id, env)
        # The journal first: a kill while files are kept aside leaves none unaccounted for.
        write_journal(
            self._journal,
            self._kept,
            self._new_versions,
            run_id,
            environment_lock_path(project, env),
            env,
        )
        claimed = journal_run_ids(data)
        for path, kept in self._kept.items():
            keep_aside(path, kept, linked[path], claimed)
        self._interrupted = None
        self._catch_signals()

    def _on_signal(self, signum: int, frame) -> None:
        self._interrupted = _interruption(signum)
        if _inside_logging(frame):
            # logging would catch it and print a traceback: deliver it again once
            # the record is written.
            threading.Timer(0.01, os.kill, (os.getpid(), signum)).start()
            return
        raise self._interrupted

    @hook_impl
    def before_node_run(self) -> None:
        """Raise an interruption that code catching every exception swallowed."""
        if self._interrupted is not None:
            raise self._interrupted

    # The same check at every node boundary and every dataset load and save.
    after_node_run = before_dataset_loaded = before_dataset_saved = before_node_run

    @hook_impl
    def on_pipeline_error(self) -> None:
        # A second Ctrl-C must not stop the rollback half-way.
        self._ignore_signals()
        restored, removed = roll_back(self._kept, self._new_versions)
        if restored or removed:
            logger.warning(
                "run failed: %d output file(s) restored to the last successful run's, "
                "%d new version(s) removed",
                restored,
                removed,
            )
        self._kept, self._new_versions, self._interrupted = {}, [], None
        self._close_journal()
        self._restore_signals()

    @hook_impl
    def after_pipeline_run(self) -> None:
        self._restore_signals()
        self._close_journal()  # the run is published: a kill from here on changes nothing
        for kept in self._kept.values():
            if kept is not None:
                kept.unlink(missing_ok=True)
        self._kept, self._new_versions = {}, []

    def _close_journal(self) -> None:
        if self._journal is not None:
            self._journal.unlink(missing_ok=True)
            self._journal = None

    def _catch_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Python only lets the main thread set signal handlers
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._handlers.setdefault(signum, signal.getsignal(signum))
            signal.signal(signum, self._on_signal)

    def _ignore_signals(self) -> None:
        for signum in self._handlers:
            signal.signal(signum, signal.SIG_IGN)

    def _restore_signals(self) -> None:
        for signum, handler in self._handlers.items():
            signal.signal(signum, handler)
        self._handlers = {}


def _inside_logging(frame) -> bool:
    """Return whether a signal arrived while the logging module was writing a record."""
    while frame is not None:
        if frame.f_globals.get("__name__", "").split(".")[0] == "logging":
            return True
        frame = frame.f_back
    return False
