"""One run at a time per environment: the run holds its environment's lock (io/run_lock.py)."""

from __future__ import annotations

import os
from pathlib import Path

from kedro.framework.hooks import hook_impl

from twotower_pipeline.config.errors import RunLockedError, SettingsError
from twotower_pipeline.config.loader import data_root
from twotower_pipeline.hooks.readable_errors import ReadableError
from twotower_pipeline.io.run_lock import LEASE_S, RunLock, lock_path, this_process

# Seconds a run waits for another run of its environment to end (0: it refuses at once).
WAIT_VARIABLE = "TWOTOWER_RUN_LOCK_WAIT"


def run_environment(run_params: dict) -> str:
    """Return the environment a run's outputs belong to (`local` when none was named)."""
    return run_params.get("env") or "local"


def environment_lock_path(project: Path, env: str | None) -> Path:
    """Return the lock file of `env` in the project at `project`."""
    return lock_path(Path(project) / data_root(env))


class RunLockHooks:
    """A second run of an environment refuses in one line naming the first, or waits for it.

    The lock is taken before every other before_pipeline_run hook (a hook
    wrapper), so before any provenance check reads the outputs or any rollback
    bookkeeping starts, and released after every after_pipeline_run or
    on_pipeline_error hook has run (the rollback included), and also when a
    later before_pipeline_run hook stops the run. `TWOTOWER_RUN_LOCK_WAIT=<seconds>`
    makes a second run wait for the first instead of refusing.
    """

    def __init__(self, lease_s: float = LEASE_S) -> None:
        self._lease_s = lease_s
        self._lock: RunLock | None = None

    @hook_impl(wrapper=True)
    def before_pipeline_run(self, run_params):
        env = run_environment(run_params)
        path = environment_lock_path(Path(run_params["project_path"]), env)
        lock = RunLock(path, this_process(run_params["run_id"], env, self._lease_s))
        try:
            lock.acquire(wait_s=_wait_s())
        except (RunLockedError, SettingsError) as error:
            raise ReadableError(str(error), error.exit_code) from None
        self._lock = lock
        try:
            return (yield)
        except BaseException:
            self._release()
            raise

    @hook_impl(wrapper=True)
    def after_pipeline_run(self):
        try:
            return (yield)
        finally:
            self._release()

    # A failed run releases the lock the same way, after the other error hooks.
    on_pipeline_error = after_pipeline_run

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def _wait_s() -> float:
    text = os.environ.get(WAIT_VARIABLE, "").strip()
    if not text:
        return 0.0
    try:
        wait = float(text)
    except ValueError:
        wait = -1.0
    if not wait >= 0:
        raise SettingsError(f"{WAIT_VARIABLE}={text!r}: should be a number of seconds, 0 or more")
    return wait
