"""Exceptions the CLI turns into one-line messages (exit status 2)."""


class BenchError(Exception):
    """A user-facing error: bad input, unknown names, incompatible combinations."""


class DataError(BenchError, ValueError):
    """Bad dataset input; the message names the file, row and column."""
