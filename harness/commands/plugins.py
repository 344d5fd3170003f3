"""``bench plugins``: every registered name by kind, where it came from, and broken plugins."""

from __future__ import annotations

import argparse

from tabulate import tabulate

from harness.plugins import KINDS, get_manager


def register(commands) -> None:
    p = commands.top.add_parser(
        "plugins", parents=[commands.common],
        help="list registered datasets, teachers, students, refiners and decoders",
        description="List every registered plugin name by kind with the plugin that provides it "
        "(builtin:, entrypoint:DIST:NAME or --plugin:), and plugins that failed to load with their error.",
    )
    p.add_argument("--hooks", action="store_true", help="also list each loaded plugin module with the hooks it implements")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    manager = get_manager(args.plugin, refresh=True, strict=False)
    reg = manager.registry()
    rows = [(kind, name, reg.entries[kind][name].source) for kind in KINDS for name in reg.names(kind)]
    print(tabulate(rows, headers=["kind", "name", "source"], tablefmt="github"))
    if args.hooks:
        print()
        print(tabulate([(n, ", ".join(h)) for n, h in manager.plugin_hooks()], headers=["plugin", "hooks"], tablefmt="github"))
    if reg.broken:
        print("\nbroken plugins (not loaded):")
        for source, error in reg.broken.items():
            print(f"  {source}: {error}")
    return 0
