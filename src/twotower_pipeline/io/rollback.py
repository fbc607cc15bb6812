"""The files of a rollback: the journal a run leaves, and what a killed run's journal puts back."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)


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


def new_version_folder(dataset, run_id: str) -> Path | None:
    """Return the folder a versioned local dataset will save this run's version in, or None."""
    version = getattr(dataset, "_version", None)
    filepath = getattr(dataset, "_filepath", None)
    if version is None or filepath is None:
        return None
    if getattr(dataset, "_protocol", "file") not in ("file", None):
        return None
    return Path(str(filepath)) / (version.save or run_id)


def unchanged(kept: Path, path: Path) -> bool:
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
