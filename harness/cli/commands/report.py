"""``bench report``: captioned PNG figures and an HTML / Markdown page of the store's results."""

from __future__ import annotations

import argparse
from pathlib import Path

from aprbench.harness.cli.commands.leaderboard import add_selection_options, selection
from aprbench.harness.api.manager import get_manager
from aprbench.harness.store.hdf5 import Store


def register(commands) -> None:
    p = commands.top.add_parser(
        "report", parents=[commands.common], help="write figures (PNG) and an HTML page of the store's results",
        description="For every cell of the store (or those --filter selects): the provenance, the scenes and recall "
        "tables, median errors per scene, cumulative error curves and error against iterations per scene, and "
        "labelled decoder grids, as index.html and report.md with the PNGs beside them.",
    )
    p.add_argument("--out", type=Path, default=None, help="output folder (default WORKDIR/report)")
    add_selection_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from aprbench.harness.results.report import write_report

    store = Store(args.workdir, create=False)
    index = write_report(store, args.out or store.root / "report", force=True, manager=get_manager(args.plugin),
                         filters=selection(args))
    print(f"report: {index}")
    return 0
