"""The thread policy: set before torch loads, wherever a run starts, never over the user's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from twotower_pipeline.config import threads
from twotower_pipeline.config.threads import apply_thread_policy

ROOT = Path(__file__).resolve().parents[1]


def test_the_policy_leaves_waiting_alone_and_is_adaptive_when_the_user_said_nothing():
    environ: dict[str, str] = {}
    policy = apply_thread_policy(environ)
    assert "OMP_WAIT_POLICY" not in environ
    assert policy.adaptive


def test_a_thread_count_of_the_user_wins_and_turns_the_governor_off():
    for name in threads.THREAD_VARIABLES:
        environ = {name: "3"}
        policy = apply_thread_policy(environ)
        assert environ == {name: "3"}
        assert not policy.adaptive


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
    environ = {k: v for k, v in os.environ.items() if k not in threads.THREAD_VARIABLES}
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
        "import twotower_pipeline as t\n"
        "print(t.THREAD_POLICY.adaptive, t.THREAD_POLICY.torch_was_loaded, t.THREADS.enabled)"
    )
    assert _python(shown) == "True False True"
    assert _python(shown, OMP_NUM_THREADS="1") == "False False False"


def test_the_kedro_cli_imports_the_package_before_torch():
    code = (
        "import sys\n"
        "sys.argv = ['kedro', 'registry', 'list']\n"
        "from kedro.framework.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "import twotower_pipeline\n"
        "print(twotower_pipeline.THREAD_POLICY.torch_was_loaded)\n"
    )
    assert _python(code) == "False"


@pytest.fixture
def restore_threads():
    """torch, with its thread count put back after the test."""
    import torch

    before = torch.get_num_threads()
    yield torch
    torch.set_num_threads(before)


class FakeMachine:
    """A clock and the busy seconds of the machine and of this process, moved by hand."""

    def __init__(self) -> None:
        self.now = 0.0
        self.machine = 0.0
        self.own = 0.0

    def run(self, seconds: float, own_cores: float, other_cores: float) -> None:
        self.now += seconds
        self.own += own_cores * seconds
        self.machine += (own_cores + other_cores) * seconds

    def governor(self, cores: int = 4, torch_threads: int | None = None) -> threads.ThreadGovernor:
        """A governor on this machine; torch starts with `torch_threads` when given."""
        if torch_threads is not None:
            import torch

            torch.set_num_threads(torch_threads)
        return threads.ThreadGovernor(
            True,
            interval=1.0,
            clock=lambda: self.now,
            machine_busy=lambda: self.machine,
            own_busy=lambda: self.own,
            cores=cores,
        )


def test_free_cores_rounds_the_others_load_and_keeps_at_least_one():
    assert threads.free_cores(4, 0.0) == 4
    assert threads.free_cores(4, 0.4) == 4
    assert threads.free_cores(4, 1.0) == 3
    assert threads.free_cores(4, 2.6) == 1
    assert threads.free_cores(2, 5.0) == 1
    assert threads.free_cores(2, -0.3) == 2  # a clock's jitter, never more than the cores


def test_the_governor_gives_up_the_cores_others_keep_busy_and_takes_them_back(restore_threads):
    torch = restore_threads
    machine = FakeMachine()
    governor = machine.governor(torch_threads=4)
    machine.run(0.5, own_cores=4, other_cores=2)
    assert governor.adjust() == 4  # under a second: nothing measured yet
    machine.run(0.6, own_cores=2, other_cores=2)
    assert governor.adjust() == 2 and torch.get_num_threads() == 2
    machine.run(1.0, own_cores=2, other_cores=0.1)
    assert governor.adjust() == 4  # free again, up to the count it started with
    assert governor.fewest_threads() == 2
    governor.start_count()
    assert governor.fewest_threads() == 4


@pytest.mark.usefixtures("restore_threads")
def test_a_stale_window_decides_nothing():
    machine = FakeMachine()
    governor = machine.governor(torch_threads=4)
    machine.run(60.0, own_cores=0, other_cores=3)  # a minute nobody asked about
    assert governor.adjust() == 4
    machine.run(1.0, own_cores=1, other_cores=3)
    assert governor.adjust() == 1


def test_the_governor_never_raises_a_count_someone_else_set(restore_threads):
    torch = restore_threads
    machine = FakeMachine()
    governor = machine.governor(torch_threads=4)
    governor.adjust()
    torch.set_num_threads(1)  # the user's own choice, in the middle of a run
    machine.run(1.0, own_cores=1, other_cores=0.0)
    assert governor.adjust() == 1


def test_a_disabled_governor_changes_nothing(restore_threads):
    torch = restore_threads
    machine = FakeMachine()
    governor = machine.governor(torch_threads=3)
    governor.enabled = False
    machine.run(2.0, own_cores=1, other_cores=4)
    assert governor.adjust() == 3 and torch.get_num_threads() == 3


def test_busy_seconds_are_read_from_proc_stat(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    stat.write_text(
        "cpu  300 0 100 900 5 0 0 0 0 0\n"
        "cpu0 100 0 50 400 5 0 0 7 0 0\n"
        "cpu1 200 10 50 500 0 3 2 0 0 0\n"
        "intr 12345\n"
    )
    monkeypatch.setattr(threads, "PROC_STAT", stat)
    monkeypatch.setattr(threads.os, "sysconf", lambda name: 100)
    # user + nice + system + irq + softirq; idle, iowait and steal are not busy
    assert threads.busy_core_seconds() == (150 + 265) / 100
    assert threads.busy_core_seconds(frozenset({1})) == 2.65
    assert threads.busy_core_seconds(frozenset({1}), with_nice=False) == 2.55  # niced jobs yield
    monkeypatch.setattr(threads, "PROC_STAT", tmp_path / "missing")
    assert threads.busy_core_seconds() is None
