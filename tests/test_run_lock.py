"""One run at a time per environment: a lock whose lease the live run renews.

The lock itself is checked on hand-written lock files (a stale lease, a live
one from another host or PID namespace, a killed holder on this machine);
then two real `kedro run --env=smoke` processes share one project copy: the
second refuses in one line naming the first, and the first publishes one
consistent run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from twotower_pipeline.config.errors import RunLockedError
from twotower_pipeline.io.run_lock import RunLock, read_holder, this_process

KEDRO = Path(sys.executable).with_name("kedro")


def write_lock(path: Path, age_s: float, **changes) -> None:
    """Write a lock file as another run would have, its lease last renewed `age_s` ago."""
    holder = replace(this_process("2026-01-01T00.00.00.000Z", "smoke", lease_s=30.0), **changes)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(holder)))
    then = time.time() - age_s
    os.utime(path, (then, then))


def test_a_free_lock_is_taken_renewed_and_released(tmp_path):
    path = tmp_path / ".run.lock"
    lock = RunLock(path, this_process("run-a", "smoke", lease_s=0.3))
    lock.acquire()
    holder, _ = read_holder(path)
    assert holder.run_id == "run-a" and holder.pid == os.getpid()
    first = path.stat().st_mtime_ns
    time.sleep(0.25)  # the heartbeat renews every lease/6 seconds
    assert path.stat().st_mtime_ns > first
    lock.release()
    assert list(tmp_path.iterdir()) == []


def test_a_second_run_of_the_environment_is_refused_naming_the_first(tmp_path):
    path = tmp_path / ".run.lock"
    first = RunLock(path, this_process("run-a", "smoke"))
    first.acquire()
    try:
        second = RunLock(path, this_process("run-b", "smoke"))
        with pytest.raises(RunLockedError) as refused:
            second.acquire()
    finally:
        first.release()
    message = str(refused.value)
    assert message.startswith("another run of environment 'smoke' is running: run run-a (pid ")
    assert f"pid {os.getpid()} on {this_process('', '').host}, started " in message
    assert "TWOTOWER_RUN_LOCK_WAIT" in message and "\n" not in message
    assert refused.value.exit_code == 75


def test_a_second_run_that_may_wait_runs_once_the_first_releases(tmp_path):
    path = tmp_path / ".run.lock"
    first = RunLock(path, this_process("run-a", "smoke"))
    first.acquire()
    threading.Timer(0.5, first.release).start()
    second = RunLock(path, this_process("run-b", "smoke"))
    second.acquire(wait_s=20, poll_s=0.05)
    assert read_holder(path)[0].run_id == "run-b"
    second.release()


def test_a_stale_lock_whose_lease_expired_is_taken_over(tmp_path):
    path = tmp_path / ".run.lock"
    write_lock(path, age_s=120, host="another-host", pid=1)  # pid 1 is alive here: no matter
    lock = RunLock(path, this_process("run-b", "smoke"))
    lock.acquire()
    assert read_holder(path)[0].run_id == "run-b"
    lock.release()
    assert list(tmp_path.iterdir()) == []  # no draft, no takeover guard left


@pytest.mark.parametrize(
    "elsewhere",
    [{"host": "another-host"}, {"pid_namespace": "pid:[1]"}],
    ids=["another_host", "another_pid_namespace"],
)
def test_a_live_lease_from_another_host_or_pid_namespace_is_respected(tmp_path, elsewhere):
    # Its pid does not run here, but a pid of another namespace means nothing: the lease decides.
    path = tmp_path / ".run.lock"
    write_lock(path, age_s=2, pid=2**22 + 7, **elsewhere)
    with pytest.raises(RunLockedError, match="run 2026-01-01T00.00.00.000Z"):
        RunLock(path, this_process("run-b", "smoke")).acquire()
    assert read_holder(path)[0].run_id == "2026-01-01T00.00.00.000Z"


def test_a_holder_killed_on_this_machine_frees_the_lock_at_once(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], text=True,
                          capture_output=True, check=True)  # fmt: skip
    path = tmp_path / ".run.lock"
    write_lock(path, age_s=1, pid=int(dead.stdout))  # a fresh lease, but its process is gone
    lock = RunLock(path, this_process("run-b", "smoke"))
    lock.acquire()
    assert read_holder(path)[0].run_id == "run-b"
    lock.release()


def test_a_lock_held_in_another_pid_namespace_is_respected_by_kedro_run(make_project_copy):
    """A real holder in its own PID namespace (unshare), a real `kedro run` beside it."""
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "-rp", "--fork", "true"]).returncode:
        pytest.skip("this machine cannot make a PID namespace (unshare -rp) for the test")
    project = make_project_copy("lock_namespace")
    lock = project / "data" / "smoke" / ".run.lock"
    holder_script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from twotower_pipeline.io.run_lock import RunLock, this_process
        lock = RunLock(Path({str(lock)!r}), this_process("held-in-a-namespace", "smoke"))
        lock.acquire()
        print(this_process("", "").pid_namespace, flush=True)
        time.sleep(60)
        """
    )
    holder = subprocess.Popen(
        [unshare, "-rp", "--fork", sys.executable, "-c", holder_script],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        namespace = holder.stdout.readline().strip()
        assert namespace != this_process("", "").pid_namespace
        run = subprocess.run(
            [str(KEDRO), "run", "--env=smoke"],
            cwd=project,
            env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "COLUMNS": "200"},
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        holder.kill()
        holder.wait()
    assert run.returncode == 75, run.stderr[-2000:]
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "Error: another run of environment 'smoke' is running: run held-in-a-namespace (pid "
    )
    assert "Traceback" not in run.stderr
    written = [p for p in (project / "data").rglob("*") if p.is_file() and p.name != ".gitkeep"]
    assert [p.name for p in written] == [".run.lock"]  # the holder's; nothing of the refused run


def test_two_kedro_runs_of_one_environment_one_refused_the_other_consistent(
    make_project_copy, monkeypatch
):
    project = make_project_copy("two_runs")
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "COLUMNS": "200"}
    first = subprocess.Popen(
        [str(KEDRO), "run", "--env=smoke"],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lock = project / "data" / "smoke" / ".run.lock"
    deadline = time.monotonic() + 120
    while not lock.exists() and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.05)
    assert lock.exists(), "the first run never took its lock"
    second = subprocess.run(
        [str(KEDRO), "run", "--env=smoke"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output, _ = first.communicate(timeout=600)
    assert first.returncode == 0, output[-3000:]
    assert second.returncode == 75, second.stderr[-2000:]
    last = second.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: another run of environment 'smoke' is running: run ")
    assert f"(pid {first.pid} on " in last
    assert "Traceback" not in second.stderr

    # Every output loads, and every output that records a run id names the one run.
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    monkeypatch.chdir(project)  # the catalog's relative paths are the project's
    bootstrap_project(project)
    with KedroSession.create(project_path=project, env="smoke") as session:
        catalog = session.load_context().catalog
        manifest = catalog.load("run_manifest")
        for name, path in manifest["outputs"].items():
            writable_only = type(catalog.get(name)).__name__.startswith("Matplotlib")  # plots
            if name in catalog and (project / path).exists() and not writable_only:
                catalog.load(name)
        assert catalog.load("model_config")["run_id"] == manifest["run_id"]
    data = project / "data"
    assert [p.name for p in data.rglob("*") if p.name.endswith((".keep", ".tmp", ".lock"))] == []
    assert list(data.glob(".run-*.journal.json")) == []


# --- one run never touches another's rollback files ----------------------------------


def test_a_run_keeps_its_own_copies_and_leaves_those_of_a_run_with_a_journal(tmp_path):
    from twotower_pipeline.io.rollback import journal_path, keep_aside, keep_name, write_journal

    output = tmp_path / "model_config.json"
    output.write_text("{}")
    other = keep_name(output, "run-a")
    keep_aside(output, other, link=True)
    write_journal(journal_path(tmp_path, "run-a", "smoke"), {output: other}, [], "run-a")
    mine = keep_name(output, "run-b")
    keep_aside(output, mine, link=True, claimed={"run-a"})
    assert other.exists() and mine.exists() and other != mine
    keep_aside(output, keep_name(output, "run-c"), link=True, claimed=set())
    assert not other.exists()  # no journal claims it: a run killed after it ended left it


def test_recovery_rolls_back_a_run_whose_lease_is_gone_and_leaves_a_live_one(tmp_path):
    from twotower_pipeline.io.rollback import journal_path, recover_killed_runs, write_journal

    lock = tmp_path / "smoke" / ".run.lock"
    live_output, dead_output = tmp_path / "live.parquet", tmp_path / "dead.parquet"
    live_output.write_text("being written by a live run")
    dead_output.write_text("left half-written by a killed run")
    live = journal_path(tmp_path, "live-run", "smoke")
    write_journal(live, {live_output: None}, [], "live-run", lock, "smoke")
    write_lock(lock, age_s=1, run_id="live-run", host="another-host")  # its lease is fresh
    other_lock = tmp_path / "other" / ".run.lock"
    dead = journal_path(tmp_path, "dead-run", "other")
    write_journal(dead, {dead_output: None}, [], "dead-run", other_lock, "other")
    write_lock(other_lock, age_s=600, run_id="dead-run", host="another-host")

    assert recover_killed_runs(tmp_path) == 1
    assert live.exists() and live_output.exists()  # another host's live run: untouched
    assert not dead.exists() and not dead_output.exists()  # the file it created is gone
    assert not other_lock.exists()  # the lock taken for the rollback was given back
