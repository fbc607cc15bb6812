"""A rollback's files: what a run keeps aside, puts back if it fails, and journals if killed.

Every name is the run's own: `.<file>.<run id>.keep` beside each output, the
journal `data/.run-<env>-<run id>.journal.json`. A run touches only its own,
except that a process holding an environment's lock (io/run_lock.py) rolls
back the journals of that environment's runs whose lease is gone, and a run
removes kept files no journal claims (left by a run killed after it ended).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

from twotower_pipeline.config.errors import RunLockedError
from twotower_pipeline.io import run_lock
from twotower_pipeline.io.run_lock import RunLock, held_lock, is_live, read_holder, this_process

logger = logging.getLogger(__name__)


def safe_name(text: str) -> str:
    """Return `text` with every character a file name should not hold replaced by `_`."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def journal_path(data: Path, run_id: str, env: str = "") -> Path:
    """Return the file under `data` where the run `run_id` of `env` keeps its journal."""
    prefix = f"{safe_name(env)}-" if env else ""
    return data / f".run-{prefix}{safe_name(run_id)}.journal.json"


def journal_run_ids(data: Path) -> set[str]:
    """Return the run ids of every journal under `data` (runs whose kept files may be needed)."""
    ids = set()
    for journal in data.glob(".run-*.journal.json"):
        try:
            ids.add(safe_name(str(json.loads(journal.read_text()).get("run_id", ""))))
        except (OSError, ValueError):
            continue
    return ids


def keep_name(path: Path, run_id: str) -> Path | None:
    """Return where the run `run_id` keeps `path` aside, or None when there is nothing to keep."""
    return path.with_name(f".{path.name}.{safe_name(run_id)}.keep") if path.is_file() else None


def keep_aside(
    path: Path, kept: Path | None, link: bool, claimed: frozenset[str] | set[str] = frozenset()
) -> None:
    """Make `kept`, the hard link (`link`) or copy of `path` that a rollback would put back.

    A file replaced whole by its dataset (renamed over, never rewritten in place)
    can be kept as a link; any other is copied. Kept files of other runs are
    removed only when no journal (`claimed`: run ids) still needs them.
    """
    for stale in path.parent.glob(f".{path.name}.*.keep"):
        run_id = stale.name.removeprefix(f".{path.name}.").removesuffix(".keep")
        if stale != kept and run_id not in claimed:
            stale.unlink(missing_ok=True)  # left by a run killed after it ended: the file is whole
    if kept is None or not path.is_file():
        return
    kept.unlink(missing_ok=True)
    if link:
        os.link(path, kept)
    else:
        shutil.copy2(path, kept)


def roll_back(
    kept: dict[Path, Path | None], new_versions: list[tuple[Path, bool]]
) -> tuple[int, int]:
    """Put kept files back, remove what the run created; return (files restored, versions removed).

    `kept` maps each output to its kept copy (None: the run created it);
    `new_versions` lists the version folders the run adds, each with whether
    its parent folder existed before the run.
    """
    restored = 0
    for path, keep in kept.items():
        if keep is None:
            if path.is_dir():  # a Spark dataset writes a folder of part files
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        elif not keep.exists():
            continue  # put back already (a killed run's journal outlives its copies)
        elif path.exists() and _unchanged(keep, path):
            keep.unlink()  # never rewritten (and a rename between two links does nothing)
        else:
            os.replace(keep, path)
            restored += 1
    removed = 0
    for folder, parent_existed in new_versions:
        if folder.exists():
            shutil.rmtree(folder)
            removed += 1
        if not parent_existed and folder.parent.is_dir() and not any(folder.parent.iterdir()):
            folder.parent.rmdir()
    return restored, removed


def write_journal(
    journal: Path,
    kept: dict[Path, Path | None],
    new_versions: list[tuple[Path, bool]],
    run_id: str = "",
    lock: Path | None = None,
    env: str = "",
) -> None:
    """Write what a rollback of this run would do, for the next run if this one is killed.

    Written before any file is kept aside: the rollback skips a kept file that
    was never made, while a kept file that no journal names would be lost.
    """
    record = {
        "pid": os.getpid(),
        "run_id": run_id,
        "env": env,
        "lock": None if lock is None else str(lock),
        "kept": [[str(path), None if keep is None else str(keep)] for path, keep in kept.items()],
        "new_versions": [[str(folder), existed] for folder, existed in new_versions],
    }
    journal.parent.mkdir(parents=True, exist_ok=True)
    tmp = journal.with_name(f"{journal.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, journal)


def _alive(pid: int) -> bool:
    # A journal of this process is left by a run that ended without hooks.
    return pid != os.getpid() and run_lock.pid_running(pid)


def recover_killed_runs(data: Path) -> int:
    """Roll back every run whose journal is left by a run whose lock lease is gone.

    Returns how many runs were rolled back. Files the run replaced get their
    kept copies back, files it created and version folders it added go. A
    journal is rolled back only by a process holding the lock of the run's
    environment (its own run's, or one taken for the rollback alone): a run
    whose lease is live, or an environment another run holds, is left alone
    (that run rolls it back as it starts).
    """
    recovered = 0
    for journal in sorted(data.glob(".run-*.journal.json")):
        try:
            record = json.loads(journal.read_text())
        except (OSError, ValueError):
            continue
        lock = record.get("lock")
        if lock is None:  # a journal written before runs took locks: only its pid can tell
            if not _alive(int(record.get("pid", -1))):
                recovered += _roll_back_journal(journal, record)
            continue
        lock = Path(lock)
        found = read_holder(lock)
        if found is not None and found[0].run_id == record.get("run_id") and is_live(*found):
            continue  # the run is still going
        if held_lock(lock) is not None:  # this process holds the environment: nobody else runs
            recovered += _roll_back_journal(journal, record)
            continue
        recovery = RunLock(lock, this_process(f"rollback-{os.getpid()}", str(record.get("env"))))
        try:
            recovery.acquire(wait_s=0)
        except RunLockedError:
            continue  # another run holds the environment
        try:
            recovered += _roll_back_journal(journal, record)
        finally:
            recovery.release()
    return recovered


def _roll_back_journal(journal: Path, record: dict) -> int:
    """Roll back the run a journal describes, then remove the journal; return 1 (0 if gone)."""
    if not journal.exists():
        return 0  # rolled back meanwhile
    roll_back(
        {Path(path): None if kept is None else Path(kept) for path, kept in record.get("kept", [])},
        [(Path(folder), existed) for folder, existed in record.get("new_versions", [])],
    )
    journal.unlink(missing_ok=True)
    logger.warning(
        "a run killed before it ended (%s) was rolled back: every output is the last "
        "successful run's",
        journal.name.removeprefix(".run-").removesuffix(".journal.json"),
    )
    return 1


def new_version_folder(dataset, run_id: str) -> Path | None:
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


def local_unversioned_file(dataset) -> Path | None:
    """Return the local file a dataset writes in place, or None (memory, versioned, remote)."""
    filepath = getattr(dataset, "_filepath", None)
    if filepath is None or getattr(dataset, "_version", None) is not None:
        return None
    if getattr(dataset, "_protocol", "file") not in ("file", None):
        return None
    path = Path(str(filepath))
    return None if path.is_dir() else path
