"""What a checkpoint was trained on, so that a resume continues only its own run.

A checkpoint that records only the model and training settings lets a resume
"continue" a model whose training rows are now test rows (another split), or
another candidate's. The fingerprint records the train split's content (a
hash of its rows), the split and sampling settings, the environment, the
model block and the candidate's name; a resume compares it with its own and
refuses, in one line, naming what differs.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pandas as pd


def frame_digest(frame: pd.DataFrame) -> dict[str, Any]:
    """Return {"rows", "sha256"} of a table's content: its columns, their types and every row."""
    digest = hashlib.sha256()
    digest.update(repr([(str(c), str(t)) for c, t in frame.dtypes.items()]).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return {"rows": len(frame), "sha256": digest.hexdigest()}


def training_fingerprint(
    train_interactions: pd.DataFrame,
    *,
    split: dict[str, Any],
    sampling: dict[str, Any],
    environment: str | None,
    model: dict[str, Any],
    candidate: str,
) -> dict[str, Any]:
    """Return the fingerprint of what one candidate trains on (see the module)."""
    return {
        "train_interactions": frame_digest(train_interactions),
        "split": split,
        "sampling": sampling,
        "environment": environment or "local",
        "model": model,
        "candidate": candidate,
    }


def fingerprint_differences(written: dict[str, Any] | None, now: dict[str, Any]) -> list[str]:
    """Return one phrase per way a checkpoint's fingerprint differs from this run's."""
    if written is None:
        return ["it records no fingerprint of its data (written by an older version)"]
    differences = []
    before, after = written.get("train_interactions") or {}, now["train_interactions"]
    if before != after:
        differences.append(
            f"the train split's rows ({before.get('rows')} rows, sha256 "
            f"{str(before.get('sha256'))[:12]} -> now {after['rows']} rows, "
            f"{after['sha256'][:12]})"
        )
    for key in ("environment", "candidate"):
        if written.get(key) != now[key]:
            differences.append(f"{key} {written.get(key)!r} -> now {now[key]!r}")
    for block in ("split", "sampling", "model"):
        old, new = flatten(written.get(block), block), flatten(now[block], block)
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                differences.append(f"{key} {old.get(key)!r} -> now {new.get(key)!r}")
    return differences


def resume_refusal(checkpoint: str, differences: list[str]) -> str:
    """Return the one line that refuses to resume from a checkpoint of another run."""
    return (
        f"training.resume is true but {checkpoint} was trained on other data or settings: "
        f"{'; '.join(differences)}. Resume with the settings it was written with, or set "
        "training.resume=false to start from epoch 1"
    )


def flatten(value: Any, prefix: str) -> dict[str, Any]:
    """Return {"a.b.c": leaf} for every leaf of a nested parameter block."""
    if isinstance(value, dict) and value:
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(flatten(item, f"{prefix}.{key}"))
        return flat
    return {prefix: value}
