"""The one exception family a user is meant to read: bad input or an impossible run.

Its message says what is wrong and where (file, column, count); `kedro run`
prints that message alone, without a stack trace (see hooks.py).
"""


class PipelineInputError(Exception):
    """Bad input or an impossible run, explained in one message."""
