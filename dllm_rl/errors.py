"""Errors that the CLI turns into one clear line and exit code 2."""


class UsageError(Exception):
    """Bad user input: what was wrong and what is valid, in one line."""


class OutputError(UsageError):
    """An output could not be written (disk full, read-only, permission): the path and what is intact."""
