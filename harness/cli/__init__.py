"""The ``bench`` command line: ``main`` parses the arguments; each sub-command lives in ``commands/``."""

from aprbench.harness.cli.main import main

__all__ = ["main"]
