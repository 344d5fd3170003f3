"""``bench report``: PNG plots and an HTML page of the store's cells."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.store import Store


def register(commands) -> None:
    p = commands.top.add_parser(
        "report", parents=[commands.common], help="write plots (PNG) and an HTML page of the leaderboard",
        description="Write cumulative error curves per cell, per-scene median bars, error against iterations and "
        "decoder grids as PNGs, plus index.html and report.md showing them beside the leaderboard.",
    )
    p.add_argument("--out", type=Path, default=None, help="output folder (default WORKDIR/report)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harness.report import write_report

    store = Store(args.workdir, create=False)
    index = write_report(store, args.out or store.root / "report", force=True)
    print(f"report: {index}")
    return 0
