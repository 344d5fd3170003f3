"""``bench leaderboard``: every cell in the store, as a table."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.leaderboard import display_frame, load_cells, render
from harness.plugins import get_manager
from harness.store import Store, atomic_path


def register(commands) -> None:
    p = commands.top.add_parser(
        "leaderboard", parents=[commands.common], help="print every evaluated cell of the store as a table",
        description="Read every cell file of the work directory into one table (one row per cell and scene) and print it.",
    )
    p.add_argument("--format", default="github", help="github (default), latex, html, plain or csv")
    p.add_argument("--sort", metavar="COLUMN", help="sort rows by this column, e.g. median_deg")
    p.add_argument("--group-by", metavar="COLUMN", help="one table per value of this column, e.g. scene")
    p.add_argument("--decoders", action="store_true", help="show the decoder cells (PSNR dB, SSIM) instead of pose cells")
    p.add_argument("--output", type=Path, metavar="FILE", help="write the table to FILE instead of printing it")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    store = Store(args.workdir, create=False)
    poses, decoders = load_cells(store)
    if args.decoders:
        frame = decoders.drop(columns=["cell"], errors="ignore")
    else:
        for columns in get_manager(args.plugin).pm.hook.bench_leaderboard_columns(frame=poses):
            for col, values in (columns or {}).items():
                poses[col] = values
        frame = display_frame(poses)
    text = render(frame, args.format, sort=args.sort, group_by=args.group_by)
    if args.output:
        with atomic_path(args.output) as tmp:
            tmp.write_text(text + "\n")
        print(f"wrote {args.output} ({len(frame)} rows)")
    else:
        print(text)
    return 0
