"""Seeds: the paired statistics frame behind the Δ columns and ``--view stats``, on the filtered rows only."""

from __future__ import annotations

import sys

import pandas as pd

from aprbench.harness.errors import BenchError
from aprbench.harness.results.leaderboard.board import Board
from aprbench.harness.results.stats import Margin


def _selection(board: Board) -> tuple[list, set[tuple[str, str, int]], list[int] | None]:
    """The board's selected cells, its ``(cell, scene, iteration)`` rows and the refiner iterations it shows."""
    poses = board.poses
    if poses.empty:
        return [], set(), None
    keep = {(str(c), str(s), int(k)) for c, s, k in zip(poses["cell"], poses["scene"], poses["iterations"])}
    cells = [board.cells[fp] for fp in dict.fromkeys(map(str, poses["cell"])) if fp in board.cells]
    shown = sorted({int(k) for k in poses["iterations"] if int(k) >= 1})
    return cells, keep, shown or None


def _main(board: Board, margin: Margin | None) -> pd.DataFrame:
    from aprbench.harness.results import comparisons

    cells, keep, shown = _selection(board)
    if not cells:
        return pd.DataFrame()
    return comparisons.stats_table(cells, shown, store=list(board.cells.values()), keep=keep, margin=margin)


def _stats_frame(board: Board) -> pd.DataFrame | None:
    """The paired Δ against the teacher of the board's filtered rows (Holm over them), computed once; None (and a
    line on stderr saying why) when it cannot be computed."""
    if board.stats is None:
        try:
            table = _main(board, None)
        except BenchError as exc:
            print(f"bench: statistics unavailable ({exc})", file=sys.stderr)
            table = pd.DataFrame()
        board.stats = table
    return board.stats if not board.stats.empty else None


def stats_frame(board: Board, margin: Margin | None = None) -> pd.DataFrame:
    """The ``stats`` view of the filtered rows: one row per group of cells that differ only in seed, per scene:
    ``n_seeds``, ``<metric>_mean`` / ``_std`` and the paired comparison with its teacher, then the extra
    comparisons (``comparison``: student on estimates vs ground truth, refiner iteration K vs K-1; iteration 1 vs 0
    only where the row has no comparison with its teacher, which is the same one since iteration 0 is the teacher's
    estimate). Holm over every comparison listed; equivalence columns with ``margin``. An ambiguous baseline raises
    (BenchError)."""
    from aprbench.harness.results import comparisons

    main = _main(board, margin)
    cells, keep, shown = _selection(board)
    extra = comparisons.extra_comparisons(cells, shown, keep=keep, margin=margin) if cells else pd.DataFrame()
    if not extra.empty and not main.empty:  # iteration 1 vs 0 is the row's vs-teacher comparison: list it once
        compared = set(zip(main.loc[main["baseline"] != "", "method"], main.loc[main["baseline"] != "", "scene"]))
        again = (extra["comparison"] == "iteration") & extra["baseline"].str.endswith("@0") & pd.Series(
            [(m, s) in compared for m, s in zip(extra["method"], extra["scene"])], index=extra.index)
        extra = extra[~again]
    parts = [f for f in (main, extra) if f is not None and not f.empty]
    if not parts:
        return pd.DataFrame()
    return comparisons.adjust(pd.concat(parts, ignore_index=True))
