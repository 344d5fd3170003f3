"""``bench leaderboard``: the store's cells as tables (scenes, cells or recall view)."""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from pathlib import Path

from aprbench.harness.errors import BenchError
from aprbench.harness.store.replay import Replay, options_of
from aprbench.harness.store.hdf5 import Store, atomic_path


def add_selection_options(p: argparse.ArgumentParser) -> None:
    """``--filter KEY=GLOB`` (repeatable) and ``--profile P`` (= ``--filter profile=P``)."""
    p.add_argument("--filter", action="append", default=[], metavar="KEY=GLOB",
                   help="keep rows whose column KEY matches the shell pattern, e.g. teacher=posenet* or "
                   "overrides= (no --set); repeatable, all must match")
    p.add_argument("--profile", metavar="P", help="keep cells made with recipe profile P (= --filter profile=P)")


def selection(args: argparse.Namespace) -> list[str]:
    return [*args.filter, *([f"profile={args.profile}"] if args.profile else [])]


def register(commands) -> None:
    p = commands.top.add_parser(
        "leaderboard", parents=[commands.common], help="print the store's results as tables (scenes, cells, recall)",
        description="Read every cell file of the work directory and print it: by default one row per method and one "
        "column per scene (median m, median °) with their Average; --view cells gives one row per cell, --view "
        "recall the accuracy within thresholds, --view stats the mean ± std over seeds and the paired Δ of the "
        "median errors against each row's baseline: with several seeds a t-interval and t-test over the per-seed Δs, "
        "with one seed a paired bootstrap interval and p over test frames; Holm-adjusted p over the table; "
        "--margin adds equivalence tests. csv and json carry every column as plain numbers.",
    )
    p.add_argument("--format", default="github", help="github (default), plain, latex, html, csv or json")
    p.add_argument("--view", choices=["scenes", "cells", "recall", "stats"],
                   help="scenes (default for github/plain/latex/html), cells (default for csv/json), recall or stats")
    p.add_argument("--columns", metavar="all|A,B,C", help="cells view: every column, or these (machine names)")
    p.add_argument("--thresholds", metavar="M:DEG,...", help="recall / accuracy thresholds, e.g. 0.05:5,0.1:10 "
                   "(default: the scene's convention: 7Scenes indoors, Cambridge outdoors)")
    p.add_argument("--sort", metavar="[-]COLUMN", help="sort rows by this column (-COLUMN: descending), e.g. median_deg; "
                   "in the scenes view a scene name, average, SCENE:deg, mb or ms_per_frame")
    p.add_argument("--group-by", metavar="COLUMN", help="one table per value of this column, e.g. student")
    add_selection_options(p)
    p.add_argument("--margin", metavar="PCT%|Mm,Ddeg", help="stats view: equivalence test (TOST) of every comparison "
                   "within this margin: a percentage of the baseline's median error (5%%) or absolute (0.01m,0.1deg)")
    p.add_argument("--iterations", metavar="K,K", help="refiner iterations to show (default: those run)")
    p.add_argument("--published", action="store_true",
                   help="add published results of known methods for 7Scenes / Cambridge scenes, kept apart, with sources")
    p.add_argument("--decoders", action="store_true", help="show only the decoder cells (PSNR dB, SSIM)")
    p.add_argument("--output", type=Path, metavar="FILE", help="write the table to FILE instead of printing it")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    store = Store(args.workdir, create=False)
    replay = Replay(store.root, "leaderboard", options_of(args, ("output",)), args.plugin)
    recorded = replay.load()
    if recorded is None:
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):  # a broken hook is named on stderr, on every call
                recorded = {"text": _text(args, store), "stderr": err.getvalue()}
        finally:
            sys.stderr.write(err.getvalue())
        replay.save(recorded, [store.root / "cells"])
    else:
        sys.stderr.write(recorded["stderr"])
    text = recorded["text"]
    if args.output:
        with atomic_path(args.output) as tmp:
            tmp.write_text(text + "\n")
        print(f"wrote {args.output}")
    else:
        print(text)
    return 0


def _text(args: argparse.Namespace, store: Store) -> str:
    from aprbench.harness.results import leaderboard
    from aprbench.harness.running.matrix import parse_list
    from aprbench.harness.api.manager import get_manager

    iterations = parse_list(args.iterations, int, "--iterations") if args.iterations else None
    board = leaderboard.build(store, get_manager(args.plugin), filters=selection(args), iterations=iterations)
    if args.decoders:
        fmt = args.format
        if fmt in leaderboard.MACHINE_FORMATS:
            return leaderboard.render_machine(board.decoders, fmt, args.sort)
        from aprbench.harness.results.leaderboard.render import DECODER_LEGEND
        from aprbench.harness.results.tables import Block, render_block

        if fmt not in leaderboard.FORMATS:
            raise BenchError(f"--format {fmt!r}: expected one of {', '.join(leaderboard.FORMATS)}")
        return render_block(Block("decoders", leaderboard.decoders_table(board, fmt), DECODER_LEGEND), fmt)
    return leaderboard.text(board, args.view, args.format, sort=args.sort, group_by=args.group_by,
                            columns=args.columns, thresholds=args.thresholds, published=args.published,
                            margin=args.margin)
