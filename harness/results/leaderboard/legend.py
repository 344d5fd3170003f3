"""Legends: what the numbers, marks, digits and costs of a table mean, as plain-text lines.

Every human format carries them: under the table in github / plain / html, in the caption of the LaTeX
``table`` environment (:func:`harness.results.tables.render_block`). One function per kind of table, so the
wording lives in one place.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from aprbench.harness.results.tables import DIGITS_LEGEND, fmt_ms, with_spread

COST_UNDER_LOAD = "≈"  # marks a cost measured during the run, beside training (no quiet re-measurement yet)


def scenes_legend(tidy: pd.DataFrame, fmt: str) -> list[str]:
    """The scenes view's legend for the rows ``tidy`` (:func:`.scenes.scenes_frame` of one dataset)."""
    validation = tidy["dataset"].astype(str).str.endswith("(validation)").any() if "dataset" in tidy else False
    frames = ("held-out frames of the validation split (its last training sequence; the test split is not read)"
              if validation else "test frames")
    lines = [f"each cell: median position error (m), median orientation error (°) over the scene's {frames}; "
             "Average: the mean of the per-scene medians"]
    seeds = sorted({int(n) for n in tidy["n_seeds"].dropna()})
    if seeds and seeds[-1] > 1:
        over = f"{seeds[0]} training seeds" if len(seeds) == 1 else "the training seeds (their number: column n)"
        lines.append(f"a±b: mean ± sample standard deviation over {over}")
    if fmt != "plain":
        lines.append("bold: the best value of its column")
    lines.append(DIGITS_LEGEND)
    lines.append("MB: millions of bytes a method keeps at test time (weights, indexes, images it needs)")
    lines.append(cost_legend(tidy))
    return lines


def delta_legend(stats: pd.DataFrame | None) -> list[str]:
    """The legend of the Δ table under the scenes table: what Δ and its markers mean
    (:func:`harness.results.significance.legend_lines`, the one place for that wording, over the comparisons of
    ``stats``, the board's statistics) and where the intervals are."""
    from aprbench.harness.results.significance import legend_lines

    lines = legend_lines(stats, "this leaderboard") if stats is not None else []
    return [*lines, "intervals, p-values and the per-seed Δs: --view stats"] if lines else []


def cost_legend(rows: pd.DataFrame, marked: bool = True) -> str:
    """How ms/frame was measured, and what ``≈`` and ``±`` mean when they occur in ``rows`` (``marked``: the table
    marks them, as the scenes view does; otherwise the csv / json column ``ms_quiet`` tells)."""
    text = ("ms/frame: wall-clock per frame of the forward pass at the teacher's evaluation batch (eval_batch_size, "
            "64 unless set), the median of 5 timed passes after 2 warm-ups; a student row adds its PAE, a refiner row "
            "k refinement steps")
    quiet = rows.get("ms_quiet", pd.Series(False, index=rows.index)).fillna(False).astype(bool)
    if not marked:
        return text + ("; re-measured after the run with no aprbench worker training where the run could (the "
                       "median of the repeats), else the run's own figure (csv / json: column ms_quiet)")
    if quiet.any():
        text += ("; re-measured after the run with no aprbench worker training: the median of the "
                 "repeats ± half their range")
    if (~quiet).any():
        text += (f"; {COST_UNDER_LOAD}: measured during the run, possibly beside training (load-dependent); "
                 "a later bench run of the cell re-measures it")
    return text


def cost_text(row: pd.Series) -> str:
    """``1.3±0.1`` (quiet re-measurements, their median ± half range), ``≈4.6`` (measured during the run)."""
    ms = row.get("ms_per_frame", np.nan)
    text = fmt_ms(ms)
    if not text:
        return ""
    if not bool(row.get("ms_quiet", False) or False):
        return COST_UNDER_LOAD + text
    spread = row.get("ms_per_frame_spread", np.nan)
    return with_spread(ms, spread, fmt_ms)
