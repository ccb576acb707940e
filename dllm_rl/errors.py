"""Errors that the CLI turns into one clear line and exit code 2."""


class UsageError(Exception):
    """Bad user input: what was wrong and what is valid, in one line."""
