"""Run manifests: what made each output, and a check that prepared data fits the run reading it.

A manifest is written at the end of every successful run (catalog dataset
`run_manifest`, versioned, one version per run id): the parameters after
overrides, the environment, the pipelines, the project version and git
commit, a fingerprint of each raw input, start and end time, and the file of
every output. A versioned output's version folder is named after the same
run id, so a model or a metrics file points to its manifest by its folder
name.

Before a run reads prepared data it did not make (say the `evaluation`
pipeline on a model trained earlier), the newest manifest that wrote each
such input is looked up and the parameters that influenced it (those read
by the nodes upstream of it) are compared with this run's: a different
environment or value stops the run, naming which.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from twotower_pipeline.config.fingerprint import flatten

# Parameters (and blocks) that change how a run behaves, not what it produces, or
# that a node reads as part of a block without their shaping its output: training
# reads `evaluation` for headline_k (the epoch it keeps), not for the K list, the
# baselines or the health thresholds, which evaluation may change on its own.
NOT_PROVENANCE = (
    "training.progress_bar",
    "training.resume",
    "training.checkpoint_dir",
    "training.device",
    "training.distributed",
    "evaluation.chunk_size",
    "evaluation.ks",
    "evaluation.recommendations_k",
    "evaluation.als",
    "evaluation.health",
)


def _counts(key: str) -> bool:
    return not any(key == p or key.startswith(f"{p}.") for p in NOT_PROVENANCE)


MANIFEST_GLOB = "**/run_manifest.json/*/run_manifest.json"


def now() -> str:
    """Return the current UTC time in ISO 8601."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def git_commit(project: Path) -> str | None:
    """Return the project's git commit (with "+changes" when the tree differs), or None."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True, timeout=10
        )
        if commit.returncode:
            return None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return commit.stdout.strip() + ("+changes" if status.stdout.strip() else "")


def fingerprint(path: Path) -> dict[str, Any]:
    """Return the size and SHA-256 of a file (or of every file of a folder, in name order)."""
    digest, size = hashlib.sha256(), 0
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        with file.open("rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
                size += len(block)
    return {"bytes": size, "sha256": digest.hexdigest()}


def lookup(parameters: dict, dotted: str) -> Any:
    """Return parameters["a"]["b"] for "a.b" (None when absent)."""
    value: Any = parameters
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def provenance_differences(
    made_with: dict, running_with: dict, parameter_names: set[str]
) -> dict[str, tuple[Any, Any]]:
    """Return {parameter: (value it was made with, value now)} for each one that differs."""
    differences = {}
    for name in sorted(parameter_names):
        before = flatten(lookup(made_with, name), name)
        after = flatten(lookup(running_with, name), name)
        for key in sorted(set(before) | set(after)):
            if not _counts(key):
                continue
            if before.get(key) != after.get(key):
                differences[key] = (before.get(key), after.get(key))
    return differences


def read_manifests(project: Path) -> list[dict]:
    """Return every run manifest under the project's data/ folder, newest run first."""
    manifests = []
    for path in (project / "data").glob(MANIFEST_GLOB):
        try:
            manifests.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue  # unreadable: it cannot vouch for anything
    return sorted(manifests, key=lambda m: m.get("run_id", ""), reverse=True)


def producer(manifests: list[dict], filepath: str) -> dict | None:
    """Return the newest manifest whose run wrote `filepath`, or None."""
    for manifest in manifests:
        if filepath in manifest.get("outputs", {}).values():
            return manifest
    return None
