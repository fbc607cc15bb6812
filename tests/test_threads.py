"""The thread policy: set before torch loads, wherever a run starts, never over the user's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from twotower_pipeline.config import threads
from twotower_pipeline.config.threads import apply_thread_policy

ROOT = Path(__file__).resolve().parents[1]


def test_passive_waiting_is_set_when_the_user_said_nothing():
    environ: dict[str, str] = {}
    policy = apply_thread_policy(environ)
    assert environ["OMP_WAIT_POLICY"] == "PASSIVE"
    assert policy.set_variables["OMP_WAIT_POLICY"] == "PASSIVE"


def test_a_wait_setting_of_the_user_wins():
    for name, value in [("OMP_WAIT_POLICY", "ACTIVE"), ("GOMP_SPINCOUNT", "10000")]:
        environ = {name: value}
        policy = apply_thread_policy(environ)
        assert environ == {name: value}
        assert "OMP_WAIT_POLICY" not in policy.set_variables


def test_threads_follow_the_affinity_only_when_it_is_narrower_than_the_machine(monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: 3)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 8)
    environ: dict[str, str] = {}
    apply_thread_policy(environ)
    assert environ["OMP_NUM_THREADS"] == "3"
    environ = {"OMP_NUM_THREADS": "5"}
    apply_thread_policy(environ)
    assert environ["OMP_NUM_THREADS"] == "5"
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 3)
    environ = {}
    apply_thread_policy(environ)
    assert "OMP_NUM_THREADS" not in environ


def _python(code: str, **extra: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k not in threads.WAIT_VARIABLES}
    return (
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env={**environ, "KEDRO_DISABLE_TELEMETRY": "true", **extra},
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )


def test_the_package_sets_the_policy_on_import_before_torch_loads():
    shown = (
        "import os, twotower_pipeline as t\n"
        "print(os.environ['OMP_WAIT_POLICY'], t.THREAD_POLICY.torch_was_loaded)"
    )
    assert _python(shown) == "PASSIVE False"
    assert _python(shown, OMP_WAIT_POLICY="ACTIVE") == "ACTIVE False"


def test_the_kedro_cli_imports_the_package_before_torch():
    code = (
        "import sys\n"
        "sys.argv = ['kedro', 'registry', 'list']\n"
        "from kedro.framework.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "import twotower_pipeline, os\n"
        "print(os.environ['OMP_WAIT_POLICY'], twotower_pipeline.THREAD_POLICY.torch_was_loaded)\n"
    )
    assert _python(code) == "PASSIVE False"
