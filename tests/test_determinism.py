"""Same seed, same data, same thread count: bit-identical weights, history and metrics on CPU.

The train pipeline runs twice on one prepared smoke dataset; the two model
versions, training histories (less the columns that record the machine: its
wall clock, and the threads the load of other processes left) and metrics
must be equal byte for byte.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

MACHINE = ["seconds", "examples_per_second", "threads"]
DATA = "data/smoke"


def versions(project: Path, relative: str) -> list[Path]:
    return sorted((project / DATA / relative).iterdir())


def history_bytes(project: Path) -> bytes:
    history = pd.read_parquet(project / DATA / "08_reporting/training_history.parquet")
    return history.drop(columns=[c for c in MACHINE if c in history]).to_csv().encode()


@pytest.fixture(scope="module")
def two_runs(make_project_copy, kedro_run) -> tuple[Path, list[bytes]]:
    """A project trained twice from the same prepared data; the two histories as bytes."""
    project = make_project_copy("determinism")
    kedro_run(project)
    first = history_bytes(project)
    kedro_run(project, pipeline="train")
    return project, [first, history_bytes(project)]


def test_two_runs_give_bit_identical_weights(two_runs):
    project, _ = two_runs
    runs = versions(project, "06_models/two_tower_model.pt")
    assert len(runs) == 2
    first, second = (torch.load(v / "two_tower_model.pt", weights_only=True) for v in runs)
    assert first.keys() == second.keys()
    for name in first:
        a, b = first[name], second[name]
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert a.numpy().tobytes() == b.numpy().tobytes(), f"{name} differs"


def test_two_runs_give_bit_identical_history_and_metrics(two_runs):
    project, (first_history, second_history) = two_runs
    assert first_history == second_history
    runs = versions(project, "08_reporting/evaluation_metrics.json")
    first, second = (json.loads((v / "evaluation_metrics.json").read_text()) for v in runs)
    assert first == second
