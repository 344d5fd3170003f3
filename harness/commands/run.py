"""`bench` sub-commands: run (to be written)."""


def register(commands) -> None:
    """Add this module's parsers to ``commands`` (see ``harness.cli.Commands``)."""
