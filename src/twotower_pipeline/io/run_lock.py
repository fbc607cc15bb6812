"""One run at a time per environment: a lock file whose lease the live run keeps renewing.

Two runs of one environment would write the same files, and each would roll
back the other's. A run therefore holds `<environment's data folder>/.run.lock`
(`data/.run.lock`, `data/smoke/.run.lock`, ...) while it runs; different
environments hold different files and run side by side.

The file names its holder (run id, pid, host, PID namespace, boot, start
time) and the lease it keeps: a thread of the holder touches the file every
`lease_s / 6` seconds, so its mtime says the holder is alive. A lock whose
mtime is older than its lease is stale, whoever wrote it: a pid alone cannot
tell, because a run in another PID namespace (a container sharing the folder)
or on another host has pids that mean nothing here. Only a holder on this
very machine, PID namespace and boot whose pid is gone is stale at once (a
run killed with SIGKILL frees its environment without waiting out the lease).
Clocks of hosts sharing the folder are assumed to agree within the lease.

A lock is created whole (written to a unique file, then hard-linked to its
name, which fails if it exists), so a reader never sees half a holder. A
stale lock is taken over under a short-lived guard folder (`.run.lock.takeover`,
made with mkdir, which only one process can do), and only if it still is
the stale lock that was judged.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from twotower_pipeline.config.errors import RunLockedError

logger = logging.getLogger(__name__)

LOCK_NAME = ".run.lock"
LEASE_S = 30.0
# A takeover holds its guard for milliseconds; a guard older than this was left by a kill.
_GUARD_STALE_S = 10.0


def lock_path(data_root: Path) -> Path:
    """Return the lock file of the environment whose outputs live under `data_root`."""
    return data_root / LOCK_NAME


@dataclass(frozen=True)
class LockHolder:
    """Who holds a lock, as its file says."""

    run_id: str
    env: str
    pid: int
    host: str
    pid_namespace: str | None
    boot_id: str | None
    started: str
    lease_s: float

    def describe(self) -> str:
        """Return 'run <id> (pid <pid> on <host>, started <time>)'."""
        return f"run {self.run_id} (pid {self.pid} on {self.host}, started {self.started})"


def this_process(run_id: str, env: str, lease_s: float = LEASE_S) -> LockHolder:
    """Return the holder record of this process for the run `run_id` of `env`."""
    return LockHolder(
        run_id=run_id,
        env=env,
        pid=os.getpid(),
        host=socket.gethostname(),
        pid_namespace=_read_link("/proc/self/ns/pid"),
        boot_id=_read_text("/proc/sys/kernel/random/boot_id"),
        started=datetime.now(UTC).isoformat(timespec="seconds"),
        lease_s=lease_s,
    )


def read_holder(path: Path) -> tuple[LockHolder, float] | None:
    """Return (holder, seconds since its lease was last renewed), or None when there is no lock.

    A file that cannot be parsed (written by hand, or truncated by a full disk)
    is a holder whose lease expired long ago: it protects nothing.
    """
    try:
        stat = path.stat()
        record = json.loads(path.read_text())
        holder = LockHolder(**{key: record.get(key) for key in LockHolder.__dataclass_fields__})
        holder = LockHolder(**{**asdict(holder), "lease_s": float(holder.lease_s or LEASE_S)})
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError):
        return _UNREADABLE, float("inf")
    return holder, max(0.0, time.time() - stat.st_mtime)


_UNREADABLE = LockHolder("?", "?", -1, "?", None, None, "?", 0.0)


def is_live(holder: LockHolder, age_s: float) -> bool:
    """Return whether a lock's holder may still be running (its lease is fresh)."""
    if age_s > holder.lease_s:
        return False
    me = this_process("", "")
    same_machine = (
        holder.host == me.host
        and holder.pid_namespace is not None
        and holder.pid_namespace == me.pid_namespace
        and holder.boot_id is not None
        and holder.boot_id == me.boot_id
    )
    if not same_machine:
        return True  # its pid means nothing here: the lease decides
    if holder.pid == me.pid:
        # This process holds no lock it does not know of: a session that ended
        # without its hooks (an exception in another hook) left it.
        return any(lock.holder == holder for lock in _HELD)
    return pid_running(holder.pid)


class RunLock:
    """The lock of one environment, held by one run of this process (see the module)."""

    def __init__(self, path: Path, holder: LockHolder) -> None:
        self.path = path
        self.holder = holder
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def acquire(self, wait_s: float = 0.0, poll_s: float = 0.5) -> None:
        """Take the lock, waiting up to `wait_s` seconds for a live holder; else RunLockedError."""
        deadline = time.monotonic() + wait_s
        said_waiting = False
        while True:
            found = self._try_take()
            if found is None:
                self._start_heartbeat()
                return
            holder, age = found
            if time.monotonic() >= deadline:
                raise RunLockedError(self._refusal(holder, age, wait_s))
            if not said_waiting:
                logger.warning(
                    "waiting up to %.0f s for %s of environment %r to end",
                    wait_s,
                    holder.describe(),
                    holder.env,
                )
                said_waiting = True
            time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))

    def release(self) -> None:
        """Stop renewing the lease and remove the lock, if it is still this run's."""
        self._stop.set()
        if self._heartbeat is not None and self._heartbeat is not threading.current_thread():
            self._heartbeat.join(timeout=5)
        self._heartbeat = None
        if self in _HELD:
            _HELD.remove(self)
        found = read_holder(self.path)
        if found is not None and found[0] == self.holder:
            self.path.unlink(missing_ok=True)

    def _try_take(self) -> tuple[LockHolder, float] | None:
        """Take the lock if free or stale; return None, or the live holder and its lease's age."""
        for _ in range(20):  # a lock that comes and goes between two looks: look again
            if self._link_new():
                return None
            found = read_holder(self.path)
            if found is None:
                continue  # released between the two calls
            holder, age = found
            if is_live(holder, age):
                return holder, age
            if self._take_over(holder):
                return None
        raise RunLockedError(f"{self.path}: the lock keeps changing hands; try again")

    def _link_new(self) -> bool:
        """Create the lock whole; return False when a lock exists."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        draft = self.path.with_name(f"{self.path.name}.{self.holder.pid}.{id(self)}.new")
        draft.write_text(json.dumps(asdict(self.holder)))
        try:
            os.link(draft, self.path)
        except FileExistsError:
            return False
        finally:
            draft.unlink(missing_ok=True)
        return True

    def _take_over(self, stale: LockHolder) -> bool:
        """Replace the stale lock of `stale` by this one; return whether this run holds it now."""
        guard = self.path.with_name(self.path.name + ".takeover")
        try:
            guard.mkdir()
        except FileExistsError:
            if time.time() - _mtime(guard) > _GUARD_STALE_S:
                _remove_guard(guard)
            time.sleep(0.05)
            return False
        try:
            found = read_holder(self.path)
            if found is not None:
                if found[0] != stale or is_live(*found):
                    return False  # someone else took it meanwhile
                self.path.unlink()
            logger.warning(
                "the lock of environment %r was left by %s, whose lease expired: taken over",
                self.holder.env,
                stale.describe(),
            )
            return self._link_new()
        finally:
            _remove_guard(guard)

    def _start_heartbeat(self) -> None:
        _HELD.append(self)
        self._stop.clear()
        self._heartbeat = threading.Thread(
            target=self._renew, name=f"run-lock {self.path}", daemon=True
        )
        self._heartbeat.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.holder.lease_s / 6):
            try:
                os.utime(self.path)
            except FileNotFoundError:
                logger.warning("the run lock %s was removed while this run held it", self.path)
                return
            except OSError:
                continue  # a full disk or a slow share: try again at the next beat

    def _refusal(self, holder: LockHolder, age_s: float, wait_s: float) -> str:
        waited = f"waited {wait_s:.0f} s; " if wait_s > 0 else ""
        return (
            f"another run of environment {holder.env!r} is running: {holder.describe()}; "
            f"{waited}let it end, or set TWOTOWER_RUN_LOCK_WAIT=<seconds> to wait for it "
            f"(its lock {_shown(self.path)} was renewed {age_s:.0f} s ago; a lock not renewed "
            f"for {holder.lease_s:.0f} s is taken over)"
        )


# The locks this process holds (a run ends by releasing its own).
_HELD: list[RunLock] = []


def held_lock(path: Path) -> RunLock | None:
    """Return the lock at `path` if this process holds it, else None."""
    return next((lock for lock in _HELD if lock.path == path), None)


def pid_running(pid: int) -> bool:
    """Return whether a process with this id runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OSError, OverflowError):
        return False
    return True


def _shown(path: Path) -> str:
    """Return `path` relative to the working folder (the project's) when it is below it."""
    try:
        return path.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return path.as_posix()


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return time.time()


def _remove_guard(guard: Path) -> None:
    try:
        guard.rmdir()
    except FileNotFoundError:
        pass


def _read_link(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _read_text(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None
