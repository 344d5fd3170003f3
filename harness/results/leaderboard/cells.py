"""The cells view: one row per cell, scene and iteration."""

from __future__ import annotations

from typing import Sequence
import difflib

import numpy as np
import pandas as pd

from aprbench.harness.errors import BenchError
from aprbench.harness.results.tables import CELL_COLUMNS, Marks, _cell_header, _number, _text
from aprbench.harness.results.leaderboard.board import Board, GROUP_KEYS
from aprbench.harness.results.leaderboard.thresholds import recall, scene_thresholds, threshold_column
from aprbench.harness.results.leaderboard.provenance import recipe_labels


def cells_frame(board: Board, thresholds: Sequence[tuple[float, float]] | None = None,
                poses: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every column, one row per cell, scene and iteration, plain numbers; plus ``acc_*`` columns for
    ``thresholds`` (computed from the per-frame errors) when given."""
    frame = (board.poses if poses is None else poses).copy()
    if frame.empty or not thresholds:
        return frame
    for m, d in thresholds:
        col = threshold_column(m, d)
        frame[col] = [recall(board, r, m, d) for _, r in frame.iterrows()]
    return frame




def cells_table(board: Board, fmt: str, columns: str | None = None, poses: pd.DataFrame | None = None,
                sort: str | None = None) -> pd.DataFrame:
    """The human cells view: seeds of one recipe merged (``mean ± std``), compact columns unless ``columns``
    (``all`` or ``a,b,c`` of the machine names)."""
    poses = board.poses if poses is None else poses
    if poses.empty:
        return pd.DataFrame()
    marks = Marks(fmt)
    thresholds: dict[tuple[str, str], tuple] = {}
    for (dataset, scene), _ in poses.groupby(["dataset", "scene"], sort=False):
        thresholds[(dataset, scene)] = scene_thresholds(board, dataset, scene)
    convention = list(dict.fromkeys(t for ts in thresholds.values() for t in ts))
    frame = cells_frame(board, convention, poses)
    frame["recipe"] = recipe_labels(frame)
    for (dataset, scene), ts in thresholds.items():  # other conventions' accuracies stay blank
        mask = (frame["dataset"] == dataset) & (frame["scene"] == scene)
        for t in convention:
            if t not in ts:
                frame.loc[mask, threshold_column(*t)] = np.nan
    if columns in (None, ""):
        wanted = [*CELL_COLUMNS, *(threshold_column(*t) for t in convention), "ms_per_frame", "stored_bytes"]
        wanted += ["recipe"] if (frame["recipe"] != "").any() else []
        wanted += board.hook_columns
    elif columns == "all":
        wanted = [c for c in frame.columns if c not in ("cell",)]
    else:
        wanted = [c.strip() for c in columns.split(",") if c.strip()]
        unknown = [c for c in wanted if c not in frame]
        if unknown:
            close = difflib.get_close_matches(unknown[0], list(frame.columns), n=3)
            raise BenchError(f"--columns: no column {unknown[0]!r}" + (f"; did you mean {', '.join(close)}?" if close
                             else f"; columns: {', '.join(frame.columns)}"))
    keys = [c for c in [*GROUP_KEYS, "scene", "recipe"] if c in frame]
    rows = []
    for _, group in frame.groupby(keys, sort=False, dropna=False):
        line = {}
        for col in wanted:
            vals = group[col]
            if col == "seed":
                line[col] = ",".join(map(str, sorted(vals)))
            elif pd.api.types.is_numeric_dtype(vals) and not pd.api.types.is_bool_dtype(vals):
                line[col] = _number(col, vals)
            else:
                line[col] = ", ".join(dict.fromkeys(_text(v) for v in vals))
        line["_sort"] = group.iloc[0]
        rows.append(line)
    if sort:
        desc, col = sort.startswith("-"), sort.lstrip("-")
        if col not in frame:
            raise BenchError(f"--sort {sort!r}: not a column; columns: {', '.join(frame.columns)}")
        rows.sort(key=lambda r: (pd.isna(r["_sort"][col]), r["_sort"][col]), reverse=desc)
        if desc:  # keep blanks last
            rows.sort(key=lambda r: pd.isna(r["_sort"][col]))
    table = pd.DataFrame([{k: v for k, v in r.items() if k != "_sort"} for r in rows])
    headers = {c: _cell_header(c, fmt) for c in table.columns}
    table = table.map(marks.esc) if fmt in ("latex", "html") else table
    return table.rename(columns=headers)
