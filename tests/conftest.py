"""Shared fixtures: a throw-away copy of the project, and one on which the smoke run has run.

Tests never run pipelines in the repository itself: its data/ belongs to the
user. `smoke_project` is built once per test session and shared, so treat it
as read-only; a test that runs more pipelines makes its own copy with
`make_project_copy` (and `run_pipeline`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")

# Never copied: environments, history, build outputs and caches.
_SKIP_TOP = {".venv", ".git", "build", ".viz", "dist", "info.log"}
_SKIP_ANYWHERE = {
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    ".ipynb_checkpoints",
}


def copy_project(destination: Path) -> Path:
    """Return a copy of the project at `destination` with empty data/ and conf/local/ folders."""

    def ignore(directory: str, names: list[str]) -> set[str]:
        here = Path(directory)
        skipped = {n for n in names if n in _SKIP_ANYWHERE or n.endswith(".egg-info")}
        if here == ROOT:
            skipped |= _SKIP_TOP & set(names)
        # Keep the layer folders, not their contents (a user's data, private settings),
        # nor the outputs of other environments (data/<env>/, see environments.py).
        if here.parent == ROOT / "data" or here in (ROOT / "conf" / "local", ROOT / "mlruns"):
            skipped |= {n for n in names if n != ".gitkeep"}
        if here == ROOT / "data":
            skipped |= {n for n in names if not (here / n / ".gitkeep").exists()}
        return skipped

    shutil.copytree(ROOT, destination, ignore=ignore)
    (destination / "conf" / "local").mkdir(exist_ok=True)
    return destination


@contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    # Some parameters (checkpoint folders) are paths relative to the working directory.
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def run_pipeline(
    project: Path,
    pipeline: str | None = None,
    env: str = "smoke",
    params: dict | None = None,
) -> dict:
    """Run a pipeline of `project` in a KedroSession, as `kedro run` does; return its outputs."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project)
    _end_active_tracking_runs()
    with _working_directory(project):
        with KedroSession.create(project_path=project, env=env, runtime_params=params) as session:
            return session.run(pipeline_names=[pipeline] if pipeline else None)


def _end_active_tracking_runs() -> None:
    """End any MLflow run an earlier test left active, so each session tracks into its own."""
    try:
        import mlflow
    except ImportError:
        return
    while mlflow.active_run() is not None:
        mlflow.end_run()


@pytest.fixture(scope="session")
def make_project_copy(tmp_path_factory) -> Callable[[str], Path]:
    """Return a function that makes a fresh project copy in a temporary folder."""

    def make(name: str = "project") -> Path:
        return copy_project(tmp_path_factory.mktemp(name) / "project")

    return make


@pytest.fixture(scope="session")
def smoke_project(make_project_copy) -> Path:
    """Return the path of a project copy on which `kedro run --env=smoke` has run once.

    Shared by the whole test session: read it, do not run more pipelines in it.
    """
    project = make_project_copy("smoke")
    run_pipeline(project, env="smoke")
    return project


@pytest.fixture(scope="session")
def kedro_run() -> Callable[..., dict]:
    """Return `run_pipeline(project, pipeline=None, env="smoke", params=None)`."""
    return run_pipeline


def run_on_a_full_tmpfs(tmp_path: Path, script: str) -> tuple[Path, list[str]]:
    """Run `script` (given the folder as argv[1]) on a small tmpfs; return (folder, its lines).

    The tmpfs is mounted in a user and mount namespace of its own (unshare -rm), so
    nothing outside the test sees it; the test skips where that cannot be done.
    """
    unshare = shutil.which("unshare")
    folder = tmp_path / "small"
    folder.mkdir()
    mount = [unshare, "-rm", "mount", "-t", "tmpfs", "tmpfs", str(folder)] if unshare else []
    if unshare is None or subprocess.run(mount).returncode:
        pytest.skip("this machine cannot mount a small tmpfs (unshare -rm) for the test")
    result = subprocess.run(
        [unshare, "-rm", sys.executable, "-c", script, str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return folder, result.stdout.strip().splitlines()
