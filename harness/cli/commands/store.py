"""``bench store list`` and ``bench store prune``: what the work directory holds, and removing superseded results.

The logic is :mod:`harness.store.housekeeping`; this module parses options and prints tables.
"""

from __future__ import annotations

import argparse


def register(commands) -> None:
    p = commands.top.add_parser(
        "store", help="list what the work directory holds, or prune superseded cells and models",
        description="Stored cells and trained models, with their sizes and whether the plugin code loaded now is "
        "the one that made them (current; source changed under the same VERSION, reused; superseded; not loaded).",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", parents=[commands.common], help="stored models and cells, sizes, status")
    listing.add_argument("--cells", action="store_true", help="also list every cell (default: models and a summary)")
    listing.set_defaults(func=run_list)
    prune = actions.add_parser(
        "prune", parents=[commands.common], help="remove superseded cells and the models no kept cell needs",
        description="Remove cells made by plugin code that is no longer the loaded one (a VERSION bump, an edit of a "
        "plugin without VERSION, a changed variant config), and trained models (and teacher outputs) that no kept "
        "cell needs and that are superseded or were needed only by removed cells. Cells of plugins not loaded in "
        "this command are kept (give their --plugin). Shows what it would remove unless --yes.",
    )
    mode = prune.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="only show what would be removed (the default)")
    mode.add_argument("--yes", action="store_true", help="remove it")
    prune.set_defaults(func=run_prune)


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def run_list(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from aprbench.harness.api.manager import get_registry
    from aprbench.harness.store.hdf5 import Store
    from aprbench.harness.store.housekeeping import stored_cells, stored_models

    store = Store(getattr(args, "workdir", None), create=False)
    registry = get_registry(getattr(args, "plugin", None))
    cells = stored_cells(store, registry)
    models = stored_models(store, registry, cells)
    rows = [(m.kind, m.name, m.fingerprint, m.version, m.status, len(m.cells), _mb(m.size)) for m in models]
    print(f"models ({len(models)}, {_mb(sum(m.size for m in models))}):")
    print(tabulate(rows, headers=["kind", "name", "fingerprint", "version", "code", "cells", "size"], tablefmt="github"))
    by_status: dict[str, list] = {}
    for c in cells:
        by_status.setdefault(c.status, []).append(c)
    summary = ", ".join(f"{len(v)} {k} ({_mb(sum(c.size for c in v))})" for k, v in by_status.items())
    print(f"\ncells ({len(cells)}): {summary or 'none'}")
    if args.cells:
        rows = [(c.fingerprint, c.describe, c.status, _mb(c.size)) for c in cells]
        print(tabulate(rows, headers=["cell", "models", "code", "size"], tablefmt="github"))
    return 0


def run_prune(args: argparse.Namespace) -> int:
    from aprbench.harness.api.manager import get_registry
    from aprbench.harness.store.hdf5 import Store
    from aprbench.harness.store.housekeeping import prune, prune_plan

    store = Store(getattr(args, "workdir", None), create=False)
    with store.lock("prune"):
        plan = prune_plan(store, get_registry(getattr(args, "plugin", None)))
        verb = "removed" if args.yes else "would remove"
        for c in plan.cells:
            print(f"  cell {c.fingerprint} ({c.describe}): superseded")
        for m in plan.models:
            print(f"  {m.kind} {m.name}-{m.fingerprint}: {m.status}" + ("" if m.status == "superseded" else
                                                                        ", needed only by removed cells"))
        size = plan.size
        if args.yes:
            prune(store, plan)
        print(f"{verb} {len(plan.cells)} cell(s), {len(plan.models)} model(s), {len(plan.outputs)} teacher output "
              f"file(s): {_mb(size)}" + ("" if args.yes or not (plan.cells or plan.models or plan.outputs)
                                             else " (run with --yes to remove them)"))
    return 0
