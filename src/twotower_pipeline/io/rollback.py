"""A rollback's files: what a run keeps aside, puts back if it fails, and journals if killed."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)


def journal_path(data: Path, run_id: str) -> Path:
    """Return the file under `data` where the run `run_id` keeps its journal."""
    return data / f".run-{re.sub(r'[^A-Za-z0-9_.-]', '_', run_id)}.journal.json"


def keep_aside(path: Path, suffix: str, link: bool) -> Path | None:
    """Return the hard link (`link`) or copy of `path` kept for a rollback, or None when absent.

    A file replaced whole by its dataset (renamed over, never rewritten in place)
    can be kept as a link; any other is copied.
    """
    # Left by a run that was killed (no error hook ran): the file itself is whole.
    for stale in path.parent.glob(f".{path.name}.*.keep"):
        stale.unlink()
    if not path.is_file():
        return None
    kept = path.with_name(f".{path.name}{suffix}")
    if link:
        os.link(path, kept)
    else:
        shutil.copy2(path, kept)
    return kept


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
        roll_back(
            {
                Path(path): None if kept is None else Path(kept)
                for path, kept in record.get("kept", [])
            },
            [(Path(folder), existed) for folder, existed in record.get("new_versions", [])],
        )
        journal.unlink()
        recovered += 1
        logger.warning(
            "a run killed before it ended (%s) was rolled back: every output is the last "
            "successful run's",
            journal.name.removeprefix(".run-").removesuffix(".journal.json"),
        )
    return recovered


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
