"""``bench``: the command line. Each sub-command lives in ``harness/cli/commands/``.

Errors the user can fix (``BenchError``) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from pathlib import Path

# torch's OpenMP threads spin while they wait for work: beside another busy process a training step slows down
# tens of times. Passive waiting (set before torch loads; a value the user set wins) keeps `bench` and several
# `--shard` processes on one machine adding up instead of fighting (measured in the README's "Threads" note).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from aprbench.harness.errors import BenchError  # noqa: E402

COMMAND_MODULES = ["plugins", "recipe", "data", "teacher", "student", "refiner", "decode", "run", "leaderboard", "report",
                   "compare", "export", "logs", "store"]


class Commands:
    """The parsers every command module adds to: top level, ``train <kind>`` and ``eval <kind>``."""

    def __init__(self, parser: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
        self.common = common
        self.top = parser.add_subparsers(dest="command", metavar="COMMAND")
        train = self.top.add_parser("train", help="train one model (teacher, student, refiner, decoder)")
        self.train = train.add_subparsers(dest="kind", metavar="KIND", required=True)
        evaluate = self.top.add_parser("eval", help="evaluate one model and print a per-scene table")
        self.eval = evaluate.add_subparsers(dest="kind", metavar="KIND", required=True)


def common_options(plugin_dest: str = "plugin") -> argparse.ArgumentParser:
    """``--workdir`` and ``--plugin``, accepted before and after the command. Sub-command values replace
    top-level ones in argparse, so the top level collects ``--plugin`` under its own ``plugin_dest``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--workdir", type=Path, default=argparse.SUPPRESS,
        help="work directory holding rendered data, weights, teacher outputs and cells (default ./.bench, or $BENCH_WORKDIR)",
    )
    common.add_argument(
        "--plugin", action="append", default=argparse.SUPPRESS, metavar="MODULE_OR_FILE", dest=plugin_dest,
        help="load an extra plugin from a dotted module name or a .py file (repeatable)",
    )
    return common


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser; with ``command``, only the command module of that name when it registers that command
    (so ``bench logs`` does not import what every other command needs), else every module."""
    if command in COMMAND_MODULES:
        parser, commands = _parser([command])
        if command in commands.top.choices:
            return parser
    return _parser(COMMAND_MODULES)[0]


def _parser(modules: list[str]) -> tuple[argparse.ArgumentParser, Commands]:
    common = common_options()
    parser = argparse.ArgumentParser(
        prog="bench", parents=[common_options("top_plugin")],
        description="Benchmark absolute pose regressors, pose auto-encoders and iAPR refiners. "
        "With no command, runs the default matrix on the synthetic dataset and prints the leaderboard.",
    )
    commands = Commands(parser, common)
    for name in modules:
        importlib.import_module(f"aprbench.harness.cli.commands.{name}").register(commands)
    return parser, commands


def _is_option_value(argv: list[str], command: str | None, parser: argparse.ArgumentParser) -> bool:
    """Whether the word taken for the command is not one but the value of the option before it (``--jobs 1``,
    ``--format csv``): ``bench`` with options only is ``bench run`` with them."""
    choices = next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})
    if command is None or command in choices or command not in argv:
        return False
    at = argv.index(command)
    return at > 0 and argv[at - 1].startswith("-") and "=" not in argv[at - 1]


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings as ``bench: warning: …`` lines (the user's concern is the message, not our source line)."""
    if not issubclass(category, UserWarning):
        return _default_formatwarning(message, category, filename, lineno, line)
    return f"bench: warning: {message}\n"


_default_formatwarning = warnings.formatwarning


def main(argv: list[str] | None = None) -> int:
    """Run ``bench ARGV`` (default ``sys.argv[1:]``) and return its exit status; safe to call repeatedly in one
    process: each call starts with a new plugin manager (torch threads and the working directory are left as
    they were found)."""
    argv = sys.argv[1:] if argv is None else argv
    manager = sys.modules.get("aprbench.harness.api.manager")  # loaded by an earlier call in this process
    if manager is not None:
        manager.forget_manager()
    warnings.formatwarning = _one_line_warning
    first = argparse.ArgumentParser(add_help=False, parents=[common_options("top_plugin")])
    first.add_argument("command", nargs="?")
    command = first.parse_known_args(argv)[0].command
    parser = build_parser(command)
    if _is_option_value(argv, command, parser):  # `bench --jobs 1`: run options with values, no command
        argv = ["run", *argv]
    known, _ = parser.parse_known_args(argv)
    # no command: `bench [run options]` is `bench run [run options]`
    args = parser.parse_args(argv if getattr(known, "command", None) else ["run", *argv])
    args.argv = list(argv if getattr(known, "command", None) else ["run", *argv])  # what `--launcher` jobs run again
    args.workdir = getattr(args, "workdir", None)
    args.plugin = [*getattr(args, "top_plugin", []), *getattr(args, "plugin", [])]
    try:
        return int(args.func(args) or 0)
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `bench leaderboard | head`: the reader left; end quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt as exc:
        print(f"bench: {str(exc) or 'interrupted; run the same command again to resume'}", file=sys.stderr)
        return 130
    except OSError as exc:  # a work directory that is read-only, full, or not a folder
        where = f" {exc.filename}" if exc.filename else ""
        print(f"bench: error: cannot write{where}: {exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
