"""Seeds: the paired statistics frame behind the Δ columns and ``--view stats``."""

from __future__ import annotations

import sys

import pandas as pd

from aprbench.harness.errors import BenchError
from aprbench.harness.results.leaderboard.board import Board


def _stats_frame(board: Board) -> pd.DataFrame | None:
    """``harness.results.stats.stats_table`` of the board's cells (the paired Δ against the teacher), computed once."""
    if board.stats is None:
        from aprbench.harness.results import stats

        try:
            table = stats.stats_table(list(board.cells.values()))
        except BenchError as exc:
            print(f"bench: statistics unavailable ({exc})", file=sys.stderr)
            table = pd.DataFrame()
        board.stats = table
    return board.stats if not board.stats.empty else None


def stats_frame(board: Board) -> pd.DataFrame:
    """The ``stats`` view: one row per group of cells that differ only in seed, per scene: ``n_seeds``,
    ``<metric>_mean`` / ``_std`` and the paired comparison with its baseline (``harness.results.stats``), then the
    extra comparisons (``comparison``: student on estimates vs ground truth, refiner iteration K vs K-1)."""
    from aprbench.harness.results import stats

    main = _stats_frame(board)
    extra = stats.extra_comparisons(list(board.cells.values()))
    parts = [f for f in (main, extra) if f is not None and not f.empty]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
