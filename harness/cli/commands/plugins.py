"""``bench plugins``: every registered name by kind, where it came from, and broken plugins."""

from __future__ import annotations

import argparse
from pathlib import Path

from tabulate import tabulate


def register(commands) -> None:
    p = commands.top.add_parser(
        "plugins", parents=[commands.common],
        help="list registered datasets, teachers, students, refiners and decoders",
        description="List every registered plugin name by kind with its version (the plugin's declared VERSION: a "
        "model class attribute, else module-level; src:DIGEST when it declares none, then any edit of its source "
        "is a new version), where it comes from (built-in, entry point DIST VERSION, --plugin file with its "
        "digest), and plugins that failed to load with their error.",
    )
    p.add_argument("--hooks", action="store_true", help="also list each loaded plugin module with the hooks it implements")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the table; replayed (without importing a plugin, hence torch) when a work directory holds the record of
    the same command over the same code, entry points and ``--plugin`` files (:mod:`harness.store.replay`)."""
    from aprbench.harness.store.replay import Replay, options_of
    from aprbench.harness.store.hdf5 import default_workdir

    root = Path(args.workdir) if args.workdir else default_workdir()
    replay = Replay(root, "plugins", options_of(args), args.plugin) if root.is_dir() else None
    recorded = replay.load() if replay is not None else None
    if recorded is None:
        recorded = {"text": _text(args)}
        if replay is not None:
            replay.save(recorded, [])
    print(recorded["text"])
    return 0


def _version(registry, kind: str, name: str) -> tuple[str, str]:
    """``(version, origin)`` of a registered model plugin (:mod:`harness.api.identity`); a dataset's source."""
    if kind == "dataset":
        return "", registry.entries[kind][name].source
    from aprbench.harness.api.identity import plugin_identity

    code = plugin_identity(registry, kind, name)
    return code.label(), code.origin


def _text(args: argparse.Namespace) -> str:
    from aprbench.harness.api.manager import KINDS, get_manager

    manager = get_manager(args.plugin, refresh=True, strict=False)
    reg = manager.registry()
    rows = [(kind, name, *_version(reg, kind, name)) for kind in KINDS for name in reg.names(kind)]
    lines = [tabulate(rows, headers=["kind", "name", "version", "source"], tablefmt="github", disable_numparse=True)]
    if args.hooks:
        lines += ["", tabulate([(n, ", ".join(h)) for n, h in manager.plugin_hooks()], headers=["plugin", "hooks"],
                               tablefmt="github")]
    if reg.broken:
        lines.append("\nbroken plugins (not loaded):")
        lines += [f"  {source}: {error}" for source, error in reg.broken.items()]
    return "\n".join(lines)
