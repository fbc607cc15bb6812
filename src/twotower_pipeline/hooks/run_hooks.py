"""Hooks: a clear stop when prepared data is missing; a failed run publishes nothing."""

from __future__ import annotations

import codecs
import json
import logging
import os
import re
import shutil
import signal
import threading
import tomllib
from pathlib import Path

import click
import pandas as pd
from kedro.framework.hooks import hook_impl
from kedro.io import DatasetError
from kedro.io.core import get_protocol_and_path
from kedro_datasets.pandas import CSVDataset

from twotower_pipeline.config.errors import RunFailedError, RunInterruptedError, SettingsError
from twotower_pipeline.config.schema import check_neg_ratio, check_parameters
from twotower_pipeline.io import manifest
from twotower_pipeline.io.datasets import AtomicJSONDataset, AtomicParquetDataset

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

        # A Spark environment writes `x@spark` and reads `x@pandas`: one dataset (transcoding).
        prepared = {name.split("@")[0] for name in pipelines["__default__"].all_outputs()}
        raw = [name for name in missing if name.split("@")[0] not in prepared]
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
    (ingestion.encoding, ingestion.id_type: text), so the encoding is set in
    one place, and tells the ingestion node where the file's data rows start,
    so its messages name the file's own line numbers.
    """

    def __init__(self) -> None:
        self._loading: str | None = None
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
                _configure_raw_reader(
                    catalog.get("raw_interactions"), catalog.load("params:ingestion")
                )
        except SettingsError as error:
            raise ReadableError(str(error), error.exit_code) from None

    @hook_impl
    def before_dataset_loaded(self, dataset_name: str) -> None:
        self._loading = dataset_name

    @hook_impl
    def after_dataset_loaded(self, dataset_name: str, data) -> None:
        self._loading = None
        if dataset_name == "raw_interactions" and isinstance(data, pd.DataFrame):
            data.attrs["first_line"] = _first_data_line(self._catalog.get(dataset_name))

    @hook_impl
    def on_pipeline_error(self, error: Exception) -> None:
        if isinstance(error, RunFailedError):
            raise ReadableError(str(error), error.exit_code) from error
        if isinstance(error, ModuleNotFoundError) and (missing := describe_missing_extra(error)):
            raise ReadableError(missing, SettingsError.exit_code) from error
        if isinstance(error, DatasetError) and self._loading and self._catalog is not None:
            dataset = self._catalog.get(self._loading)
            raise ReadableError(describe_load_failure(dataset, error)) from error


# Each raw input and the parameter that names its file in error messages.
_SOURCES = (
    ("raw_interactions", "params:ingestion", ("source",), "raw_interactions_path"),
    ("item_features", "params:features", ("item", "source"), "item_features_path"),
    ("user_features", "params:features", ("user", "source"), "user_features_path"),
)


def check_sources(catalog, project: Path | None = None) -> None:
    """Raise SettingsError when a raw input's catalog file is not the one parameters name.

    Every error about a raw file names the parameter's path (ingestion.source,
    features.item.source, features.user.source); a catalog entry pointed at
    another file would make those errors name the wrong one.
    """
    for name, params, keys, global_key in _SOURCES:
        if name not in catalog or params not in catalog:
            continue
        source = catalog.load(params)
        for key in keys:
            source = source.get(key) if isinstance(source, dict) else None
        read = getattr(catalog.get(name), "_filepath", None)
        if source is None or read is None or _same_file(str(read), str(source)):
            continue
        where = ".".join((params.removeprefix("params:"), *keys))
        raise SettingsError(
            f"{name}: the catalog reads {_shown(str(read), project)} but {where} names {source}, "
            f"the file its errors would name; set {global_key} in globals.yml and use "
            f"${{globals:{global_key}}} in both (README, 'Your own data')"
        )


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


def _configure_raw_reader(dataset, ingestion: dict) -> None:
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


def _first_data_line(dataset) -> int | None:
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
        self._kept, self._new_versions = {}, []
        run_id = run_params.get("run_id") or str(os.getpid())
        suffix = f".{run_id}.keep"
        for name in sorted(pipeline.all_outputs()):
            dataset = catalog.get(name) if name in catalog else None
            folder = _new_version_folder(dataset, run_id)
            if folder is not None:
                self._new_versions.append((folder, folder.parent.exists()))
                continue
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
        data = Path(run_params["project_path"]) / "data"
        self._journal = data / f".run-{re.sub(r'[^A-Za-z0-9_.-]', '_', run_id)}.journal.json"
        _write_journal(self._journal, self._kept, self._new_versions)
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

    def _raise_if_interrupted(self) -> None:
        if self._interrupted is not None:
            raise self._interrupted

    @hook_impl
    def before_node_run(self) -> None:
        self._raise_if_interrupted()

    @hook_impl
    def after_node_run(self) -> None:
        self._raise_if_interrupted()

    @hook_impl
    def before_dataset_loaded(self) -> None:
        self._raise_if_interrupted()

    @hook_impl
    def before_dataset_saved(self) -> None:
        self._raise_if_interrupted()

    @hook_impl
    def on_pipeline_error(self) -> None:
        # A second Ctrl-C must not stop the rollback half-way.
        self._ignore_signals()
        restored = 0
        for path, kept in self._kept.items():
            if kept is None:
                if path.is_dir():  # a Spark dataset writes a folder of part files
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
            elif path.exists() and _unchanged(kept, path):
                kept.unlink()  # never rewritten (and a rename between two links does nothing)
            else:
                os.replace(kept, path)
                restored += 1
        removed = 0
        for folder, parent_existed in self._new_versions:
            if folder.exists():
                shutil.rmtree(folder)
                removed += 1
            if not parent_existed and folder.parent.is_dir() and not any(folder.parent.iterdir()):
                folder.parent.rmdir()
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


def _write_journal(
    journal: Path, kept: dict[Path, Path | None], new_versions: list[tuple[Path, bool]]
) -> None:
    """Write what a rollback of this run would do, for the next run if this one is killed."""
    record = {
        "pid": os.getpid(),
        "kept": [[str(path), None if keep is None else str(keep)] for path, keep in kept.items()],
        "new_versions": [[str(folder), existed] for folder, existed in new_versions],
    }
    journal.parent.mkdir(parents=True, exist_ok=True)
    tmp = journal.with_name(journal.name + ".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, journal)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a journal of this process is left by a run that ended without hooks
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_killed_runs(data: Path) -> int:
    """Roll back every run whose journal is left by a process that no longer runs.

    Returns how many runs were rolled back. Files the run replaced get their
    kept copies back, files it created and version folders it added go.
    """
    recovered = 0
    for journal in sorted(data.glob(".run-*.journal.json")):
        try:
            record = json.loads(journal.read_text())
        except (OSError, ValueError):
            continue
        if _alive(int(record.get("pid", -1))):
            continue  # another run, still going
        for path_text, kept_text in record.get("kept", []):
            path = Path(path_text)
            if kept_text is None:
                path.unlink(missing_ok=True)
                continue
            kept = Path(kept_text)
            if not kept.exists():
                continue
            if path.exists() and os.path.samefile(kept, path):
                kept.unlink()  # never rewritten (a rename between two links does nothing)
            else:
                os.replace(kept, path)
        for folder_text, parent_existed in record.get("new_versions", []):
            folder = Path(folder_text)
            if folder.exists():
                shutil.rmtree(folder)
            if not parent_existed and folder.parent.is_dir() and not any(folder.parent.iterdir()):
                folder.parent.rmdir()
        journal.unlink()
        recovered += 1
        logger.warning(
            "a run killed before it ended (%s) was rolled back: every output is the last "
            "successful run's",
            journal.name.removeprefix(".run-").removesuffix(".journal.json"),
        )
    return recovered


def _inside_logging(frame) -> bool:
    """Return whether a signal arrived while the logging module was writing a record."""
    while frame is not None:
        if frame.f_globals.get("__name__", "").split(".")[0] == "logging":
            return True
        frame = frame.f_back
    return False


def _new_version_folder(dataset, run_id: str) -> Path | None:
    """Return the folder a versioned local dataset will save this run's version in, or None."""
    version = getattr(dataset, "_version", None)
    filepath = getattr(dataset, "_filepath", None)
    if version is None or filepath is None:
        return None
    if getattr(dataset, "_protocol", "file") not in ("file", None):
        return None
    return Path(str(filepath)) / (version.save or run_id)


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


class RunManifestHooks:
    """Writes a manifest for each successful run; stops a run whose prepared data does not fit.

    See manifest.py. The run id (Kedro's save version, the name of this run's
    version folders) is also put in the catalog as the dataset `run_id`, so a
    node can write it into what it produces (model_config, metrics, report).
    """

    def __init__(self) -> None:
        self._manifest: dict | None = None

    @hook_impl
    def after_catalog_created(self, catalog, save_version) -> None:
        if save_version is None:  # a catalog made to read (a notebook, a script), not a run
            return
        if "run_id" in catalog:  # a catalog entry (for kedro-viz's layer): fill it, not replace it
            catalog.save("run_id", save_version)
        else:
            catalog["run_id"] = save_version

    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        from kedro.framework.project import pipelines

        project = Path(run_params["project_path"])
        parameters = catalog.load("parameters") if "parameters" in catalog else {}
        self._manifest = {
            "run_id": run_params["run_id"],
            "env": run_params.get("env"),
            "pipelines": run_params.get("pipeline_names") or ["__default__"],
            "runtime_params": run_params.get("runtime_params") or {},
            "parameters": parameters,
            "project_version": _project_version(),
            "git_commit": manifest.git_commit(project),
            "started": manifest.now(),
        }
        problems = _provenance_problems(
            pipelines, pipeline, catalog, project, run_params.get("env"), parameters
        )
        if problems:
            raise ReadableError(
                "prepared data was made by another configuration than this run's: "
                + "; ".join(problems)
                + ". Make it again with these settings (`kedro run`, or the pipeline that "
                "writes it), or run with the settings it was made with"
            )
        self._manifest["outputs"] = {
            name: path
            for name in sorted(pipeline.all_outputs())
            if (path := _dataset_file(catalog, name, project)) is not None
        }

    @hook_impl
    def after_pipeline_run(self, run_params, pipeline, catalog) -> None:
        if self._manifest is None or "run_manifest" not in catalog:
            return
        from kedro.framework.project import pipelines

        project = Path(run_params["project_path"])
        produced = pipelines["__default__"].all_outputs()
        raw = {}
        for name in sorted(pipeline.inputs()):
            path = _dataset_file(catalog, name, project)
            if name not in produced and path is not None and (project / path).exists():
                raw[name] = {"path": path, **manifest.fingerprint(project / path)}
        record = {**self._manifest, "raw_inputs": raw, "ended": manifest.now()}
        catalog.save("run_manifest", json.loads(json.dumps(record, default=str)))
        self._manifest = None

    @hook_impl
    def on_pipeline_error(self) -> None:
        self._manifest = None


def _project_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("twotower_pipeline")
    except PackageNotFoundError:
        return "unknown"


def _dataset_file(catalog, name: str, project: Path) -> str | None:
    """Return a dataset's local file (or version folder) relative to the project, or None."""
    dataset = catalog.get(name) if name in catalog else None
    filepath = getattr(dataset, "_filepath", None)
    if filepath is None or getattr(dataset, "_protocol", "file") not in ("file", None):
        return None
    path = Path(str(filepath))
    if path.is_absolute():
        if not path.is_relative_to(project):
            return str(path)
        path = path.relative_to(project)
    return path.as_posix()


def _provenance_problems(pipelines, pipeline, catalog, project, env, parameters) -> list[str]:
    """Return one sentence per way prepared inputs differ from this run (env, settings)."""
    default = pipelines["__default__"]
    produced = default.all_outputs()
    manifests = manifest.read_manifests(project)
    if not manifests:
        return []
    # {(made by, how it differs): [inputs]}: one sentence for inputs that differ alike.
    grouped: dict[tuple[str, str], list[str]] = {}
    for name in sorted(pipeline.inputs() & produced):
        path = _dataset_file(catalog, name, project)
        made_by = _producer(manifests, catalog.get(name), path)
        if made_by is None:
            continue  # made before manifests existed, or by a run that was killed
        if (made_by.get("env") or "") != (env or ""):
            key = (f"environment {made_by.get('env')!r}", "")
            grouped.setdefault(key, []).append(name)
            continue
        names = {
            source.removeprefix("params:")
            for upstream in default.to_outputs(name).nodes
            for source in upstream.inputs
            if source.startswith("params:")
        }
        differences = manifest.provenance_differences(
            made_by.get("parameters", {}), parameters, names
        )
        if differences:
            settings = ", ".join(
                f"{key}={old!r} (now {new!r})" for key, (old, new) in differences.items()
            )
            grouped.setdefault((f"run {made_by['run_id']}", settings), []).append(name)
    problems = []
    for (made_by, settings), names in grouped.items():
        verb = "was" if len(names) == 1 else "were"
        if settings:
            problems.append(f"{', '.join(names)} {verb} made with {settings} by {made_by}")
        else:
            problems.append(f"{', '.join(names)} {verb} made by {made_by}")
    return problems


def _producer(manifests: list[dict], dataset, path: str | None) -> dict | None:
    """Return the manifest of the run that wrote the version of `dataset` this run will load."""
    if path is None:
        return None
    if getattr(dataset, "_version", None) is not None:
        try:
            version = dataset.resolve_load_version()
        except Exception:  # noqa: BLE001 - no version yet: nothing to compare
            return None
        return next((m for m in manifests if m.get("run_id") == version), None)
    return manifest.producer(manifests, path)


class SettingsHooks:
    """Every parameter is checked against one schema before anything runs (schema.py).

    The check runs as the context is created, before any pipeline, catalog or
    other hook sees the parameters; a bad setting ends the run with one line
    and exit code 2. The one rule that needs the data (neg_ratio below the
    number of items) is checked as the node that draws negatives starts.
    """

    @hook_impl
    def after_context_created(self, context) -> None:
        try:
            check_parameters(context.params)
        except SettingsError as error:
            raise ReadableError(str(error), error.exit_code) from None

    @hook_impl
    def before_node_run(self, inputs: dict) -> None:
        if "params:neg_ratio" in inputs and "item_index" in inputs:
            check_neg_ratio(inputs["params:neg_ratio"], len(inputs["item_index"]))


def describe_missing_extra(error: ModuleNotFoundError) -> str | None:
    """Return the one line for an optional library that is not installed, or None."""
    module = (error.name or "").split(".")[0]
    extra = _optional_modules().get(module)
    if extra is None:
        return None
    return (
        f"the optional library {module} is not installed; it comes with the [{extra}] "
        f"extra: pip install -e '.[{extra}]'"
    )


def _optional_modules() -> dict[str, str]:
    """Return {module: extra} for the libraries of the project's optional extras.

    Read from pyproject.toml in a checkout (an editable install's metadata is
    as old as the install), else from the installed package's metadata.
    """
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    if pyproject.is_file():
        project = tomllib.loads(pyproject.read_text())["project"]
        core = {re.split(r"[\[<>=~; ]", r)[0].lower() for r in project.get("dependencies", [])}
        requirements = [
            f"{requirement}; extra == '{extra}'"
            for extra, listed in project.get("optional-dependencies", {}).items()
            for requirement in listed
            if re.split(r"[\[<>=~; ]", requirement)[0].lower() not in core
        ]
    else:
        from importlib import metadata

        try:
            requirements = metadata.requires("twotower_pipeline") or []
        except metadata.PackageNotFoundError:
            return {}
    modules = {}
    for requirement in requirements:
        found = _EXTRA_REQUIREMENT.match(requirement)
        if not found or found[2] == "dev":
            continue
        distribution = found[1].lower()
        module = _MODULE_OF.get(distribution, distribution.replace("-", "_"))
        modules.setdefault(module, found[2])
    return modules


_EXTRA_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9_.-]+)[^;]*;\s*extra\s*==\s*['\"]([^'\"]+)['\"]")
# Distributions whose module has another name than theirs.
_MODULE_OF = {"faiss-cpu": "faiss", "faiss-gpu": "faiss", "scikit-learn": "sklearn"}
