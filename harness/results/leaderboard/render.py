"""Rendering: a view as text (github, plain, html, latex) or as a machine frame (csv, json)."""

from __future__ import annotations

from typing import Any, Iterable
import io
import sys

import pandas as pd

from aprbench.harness.errors import BenchError
from aprbench.harness.results.published import no_published_text, published_frame
from aprbench.harness.results.tables import (DIGITS_LEGEND, FORMATS, LATEX_PREAMBLE, MACHINE_FORMATS, Block, Marks,
                                             _signed, _title, _with_notes, fmt_deg, fmt_m, fmt_p, render_block,
                                             render_machine, signed_interval, with_spread)
from aprbench.harness.store.hdf5 import Store
from aprbench.harness.results.leaderboard.board import Board, VIEWS, build
from aprbench.harness.results.leaderboard.thresholds import parse_thresholds
from aprbench.harness.results.leaderboard.provenance import provenance_lines
from aprbench.harness.results.leaderboard.seeds import stats_frame
from aprbench.harness.results.significance import legend_lines, marker
from aprbench.harness.results.stats import Margin, parse_margin
from aprbench.harness.results.leaderboard.scenes import deltas_table, scenes_frame, scenes_table
from aprbench.harness.results.leaderboard.legend import cost_legend
from aprbench.harness.results.leaderboard.cells import cells_frame, cells_table
from aprbench.harness.results.leaderboard.recall import recall_frame, recall_table
from aprbench.harness.results.leaderboard.decoders import decoders_table


def machine_frame(board: Board, view: str | None, thresholds=None, published: bool = False,
                  poses: pd.DataFrame | None = None, margin: Margin | None = None) -> pd.DataFrame:
    """The table a machine format writes for ``view`` (default ``cells``: one row per cell, every column)."""
    poses = board.poses if poses is None else poses
    if view in (None, "cells"):
        frame = cells_frame(board, thresholds, poses).drop(columns=[], errors="ignore")
        frame.insert(len(frame.columns), "published", False)
    elif view == "scenes":
        frame = scenes_frame(board, poses)
        frame["published"] = False
    elif view == "stats":
        return stats_frame(board, margin)
    else:
        frame = recall_frame(board, thresholds, poses)
        frame["published"] = False
    if published and not frame.empty and view != "recall":
        scenes = {d: list(dict.fromkeys(p["scene"])) for d, p in poses.groupby("dataset", sort=False)}
        pub = published_frame(scenes)
        if not pub.empty:
            frame = pd.concat([frame, pub], ignore_index=True)
        else:  # the table stays machine-readable; the reason goes to stderr
            for dataset, names in scenes.items():
                print(f"bench: {no_published_text(dataset, names)}", file=sys.stderr)
    return frame


def _p_text(p: float, p_adj: float) -> str:
    return "" if p != p else f"{fmt_p(p)} / {fmt_p(p_adj)}"


def _stats_text(frame: pd.DataFrame) -> pd.DataFrame:
    """The stats view for people: method, scene, n, mean ± std of the medians, then per quantity Δ [CI] with its
    marker (:mod:`harness.results.significance`), p / Holm-adjusted p, the per-seed Δs, and the equivalence
    verdict when a margin was given. Digits follow the quantity as in every other view (:data:`DIGITS_LEGEND`);
    p-values to two significant digits."""
    if frame.empty:
        return frame
    comparison = frame["comparison"] if "comparison" in frame else pd.Series(index=frame.index, dtype=object)
    out = pd.DataFrame({"comparison": comparison.fillna("vs teacher"), "method": frame["method"],
                        "scene": frame["scene"], "n": frame["n_seeds"]})
    for metric, unit, f in (("median_m", "m", fmt_m), ("median_deg", "°", fmt_deg)):
        if f"{metric}_mean" in frame:
            out[f"{metric} ({unit})"] = [with_spread(m, s, f).replace("±", " ± ")
                                         for m, s in zip(frame[f"{metric}_mean"], frame[f"{metric}_std"])]
    out["baseline"] = frame["baseline"].fillna("")
    out["basis"] = frame["ci_basis"].fillna("")
    several = bool((frame["n_seeds"].astype(float) > 1).any())
    conf = float(frame["confidence"].dropna().iloc[0]) if frame["confidence"].notna().any() else 0.95
    for part, unit, suffix, f in (("position", "m", "_m", fmt_m), ("orientation", "°", "_deg", fmt_deg)):
        d, lo, hi = (frame[f"delta_{part}{x}"] for x in (suffix, "_ci_low", "_ci_high"))
        marks = [marker(r, part) for _, r in frame.iterrows()]
        out[f"Δ {part} ({unit}) [{100 * conf:g} % CI]"] = [
            "" if x != x else signed_interval(x, a, b, f) + m for x, a, b, m in zip(d, lo, hi, marks)]
        out[f"p / p_adj ({unit})"] = [_p_text(p, q) for p, q in zip(frame[f"delta_{part}_p"],
                                                                     frame[f"delta_{part}_p_adj"])]
        if several:
            out[f"per-seed Δ ({unit})"] = [", ".join(_signed(float(v), f) for v in str(t).split(",")) if t else ""
                                           for t in frame[f"delta_{part}_seeds"].fillna("")]
        if f"equivalence_{part}" in frame:
            out[f"equivalent ({unit})"] = frame[f"equivalence_{part}"].fillna("")
    return out


def text(board: Board, view: str | None = None, fmt: str = "github", sort: str | None = None,
         group_by: str | None = None, columns: str | None = None, thresholds: str | None = None,
         published: bool = False, decoders: bool = True, header: bool = True, margin: str | None = None) -> str:
    """The leaderboard as text in ``fmt`` (github, plain, html, latex, csv, json) for ``view``
    (scenes, cells, recall, stats; default scenes for people and cells for machines). ``margin`` (stats view):
    equivalence margin, ``5%`` or ``0.01m,0.1deg`` (:func:`harness.results.stats.parse_margin`)."""
    if fmt not in FORMATS:
        raise BenchError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if view is not None and view not in VIEWS:
        raise BenchError(f"--view {view!r}: expected one of {', '.join(VIEWS)}")
    ts = parse_thresholds(thresholds)
    equivalence = parse_margin(margin)
    if equivalence is not None and view != "stats":
        raise BenchError(f"--margin {margin}: equivalence tests are part of --view stats (and bench compare)")
    if board.poses.empty and board.decoders.empty:
        return "(no cells in the store match: run `bench run` first, or loosen --filter)"
    if group_by and not board.poses.empty and group_by not in board.poses:
        raise BenchError(f"--group-by {group_by!r}: not a column; columns: {', '.join(board.poses.columns)}")
    if fmt in MACHINE_FORMATS:
        if board.poses.empty:
            return render_machine(board.decoders, fmt, sort)
        frame = machine_frame(board, view, ts, published, margin=equivalence)
        if columns and columns != "all":
            wanted = [c.strip() for c in columns.split(",") if c.strip()]
            missing = [c for c in wanted if c not in frame]
            if missing:
                raise BenchError(f"--columns: no column {missing[0]!r}; columns: {', '.join(frame.columns)}")
            frame = frame[wanted]
        return render_machine(frame, fmt, sort)
    parts = provenance_lines(board.poses if not board.poses.empty else board.decoders) if header else []
    out = [_with_notes(fmt, parts)] if parts else []
    if fmt == "latex":
        out.append(LATEX_PREAMBLE)
    groups = [(None, board.poses)] if not group_by else [
        (f"{group_by} = {value}", part) for value, part in board.poses.groupby(group_by, sort=True)]
    view = view or "scenes"
    if view == "stats":  # one table of every selected row: its comparisons are one family
        stats = stats_frame(board, equivalence)
        table = _stats_text(stats)
        if fmt in ("latex", "html") and not table.empty:  # escaped like every other view's cells
            table = table.map(Marks(fmt).esc).rename(columns=Marks(fmt).esc)
        legend = [*legend_lines(stats, "this table", equivalence), DIGITS_LEGEND]
        out.append(_render(Block("statistics", table, legend), fmt))
        groups = []
    for heading, poses in groups:
        if poses.empty:
            continue
        if heading:
            out.append(_title(heading, fmt))
        out += [_render(b, fmt) for b in blocks(board, view, fmt, poses, sort, columns, ts, published)]
    if decoders and not board.decoders.empty:
        out.append(_render(Block("decoders", decoders_table(board, fmt), DECODER_LEGEND), fmt))
    return "\n\n".join(out)


DECODER_LEGEND = ["PSNR (dB) and SSIM of the decoded images against the resized input images, per split; "
                  "MB: millions of bytes of the decoder's weights"]


def _render(block: Block, fmt: str) -> str:
    return render_block(block, fmt).replace(LATEX_PREAMBLE + "\n", "")  # said once, at the top


def blocks(board: Board, view: str, fmt: str, poses: pd.DataFrame, sort: str | None = None,
           columns: str | None = None, thresholds=None, published: bool = False) -> list[Block]:
    """The tables of the scenes, cells or recall view as :class:`Block`\\ s (title, table, legend, footnotes); the
    stats view is one table of every selected row (:func:`text`)."""
    if view == "cells":
        table = cells_table(board, fmt, columns, poses, sort)
        return [Block("cells", table, ["one row per cell, scene and refinement iteration; a±b: mean ± sample "
                                       "standard deviation over seeds", DIGITS_LEGEND, cost_legend(poses, marked=False)])]
    if view == "recall":
        return [Block(title, table, ["percentage of test frames within both thresholds; bold: the best of its "
                                     "column"], table.attrs.get("footnotes", []))
                for title, table in recall_table(board, fmt, thresholds, poses)]
    ours, theirs = [], []
    for title, table in scenes_table(board, fmt, sort, published, poses):
        is_published = bool(table.attrs.get("published"))
        title = title if is_published else f"{title}: median errors per scene"
        (theirs if is_published else ours).append(
            Block(title, table, table.attrs.get("legend", []), table.attrs.get("footnotes", []),
                  empty=table.attrs.get("empty", "(no published results for these scenes)")))
    ours += [Block(title, table, table.attrs.get("legend", [])) for title, table in deltas_table(board, fmt, poses)]
    return ours + theirs


def show(store: Store, manager: Any = None, fingerprints: Iterable[str] | None = None, fmt: str = "github",
         file: io.TextIOBase | None = None, **options: Any) -> Board:
    """Build the board and print it (what ``bench run`` prints after a run); returns the board."""
    board = build(store, manager, fingerprints)
    print(text(board, fmt=fmt, **options), file=file or sys.stdout)
    return board
