"""The exceptions a user is meant to read: each message says what is wrong and where.

`kedro run` prints such a message alone, as one line, without a stack trace, and
exits with the error's `exit_code` (see hooks/readable_errors.py and docs/failures.md):

| family | exit code | meaning |
|---|---|---|
| SettingsError | 2 | a parameter is wrong (caught before any node runs) |
| PipelineInputError | 1 | the input data cannot be used as it is (file, column, count) |
| RunFailedError | 1 | the data and settings were fine, the run itself failed (e.g. diverged) |
| RunInterruptedError | 130 (SIGINT) / 143 (SIGTERM) | the run was stopped by a signal |
| RunLockedError | 75 (EX_TEMPFAIL: try again later) | another run of the environment is running |
"""


class RunFailedError(Exception):
    """A run stopped for a reason explained in one message; outputs are left as they were."""

    exit_code = 1


class PipelineInputError(RunFailedError):
    """Bad input data or prepared data that does not fit this run, explained in one message."""


class SettingsError(RunFailedError):
    """A parameter is missing, unknown, of the wrong type or out of range."""

    exit_code = 2


class RunInterruptedError(RunFailedError):
    """The run received SIGINT (Ctrl-C) or SIGTERM."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class RunLockedError(RunFailedError):
    """Another run of the same environment holds its lock (io/run_lock.py)."""

    exit_code = 75  # sysexits' EX_TEMPFAIL: the same command may succeed later


class DiskFullError(RunFailedError):
    """A save ran out of disk space; the message names the file and the space it needed."""


def human_size(n: float) -> str:
    """Return a byte count as people read it: 512 bytes, 3.2 MiB."""
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{int(n)} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{int(n)} bytes"
