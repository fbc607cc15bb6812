"""Every row of docs/failures.md ("bad input -> what you see") names a test that exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "failures.md"


def rows() -> list[str]:
    lines = DOC.read_text().splitlines()
    table = [line for line in lines if line.startswith("|") and not line.startswith("|---")]
    return [line for line in table if not line.startswith(("| bad input", "| what happened"))]


def test_every_row_names_a_test():
    assert len(rows()) >= 30
    for row in rows():
        backing = row.rstrip(" |").rsplit("|", 1)[-1]
        assert "test_" in backing or backing.strip().startswith("same"), row


def test_every_named_test_exists():
    sources = {path.name: path.read_text() for path in (ROOT / "tests").glob("test_*.py")}
    everything = "\n".join(sources.values())
    for row in rows():
        backing = row.rstrip(" |").rsplit("|", 1)[-1]
        for file, name in re.findall(r"(test_\w+\.py)::(test_\w+)", backing):
            assert f"def {name}(" in sources[file], f"{file}::{name}"
        for name in re.findall(r"(?<![\w.:])(test_\w+)(?![\w.])", backing):
            assert f"def {name}(" in everything, name
