"""How tables mark and explain a Δ: the marker beside it and the legend lines under the table.

One place for both, so that every view (scenes, stats, ``bench compare``, LaTeX or text) says the same thing:

* ``*``: Holm-adjusted p < α with the **seeds** as the unit (t-test on the per-seed Δs of the median errors);
* ``†``: Holm-adjusted p < α over the test **frames** of one trained model (paired bootstrap of the Δ of
  medians): a statement about that one training run only;
* no marker: no difference shown at that level, which is not evidence of equivalence (``--margin`` tests that).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from aprbench.harness.results.stats import FRAMES, SEEDS, Margin

SEED_MARK, FRAME_MARK = "*", "†"


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def alpha_of(row: pd.Series | dict) -> float:
    conf = _float(row.get("confidence", 0.95))
    return 1 - conf if np.isfinite(conf) else 0.05


def marker(row: pd.Series | dict, quantity: str) -> str:
    """``*`` (seed-level), ``†`` (frames only) or "" for ``quantity`` (``position`` / ``orientation``) of a row
    with ``delta_<quantity>_p_adj`` and ``ci_basis`` columns."""
    p = _float(row.get(f"delta_{quantity}_p_adj", np.nan))
    if not np.isfinite(p) or p >= alpha_of(row):
        return ""
    return SEED_MARK if row.get("ci_basis") == SEEDS else FRAME_MARK


def _pct(x: float) -> str:
    return f"{100 * x:g} %"


def legend_lines(frame: pd.DataFrame, family: str, margin: Margin | None = None) -> list[str]:
    """The legend of a table whose Δs come from ``frame`` (stats columns of :mod:`harness.results.comparisons`):
    what Δ is, what each marker means and on what basis, the multiplicity adjustment (method and ``family``, e.g.
    "this table"), the equivalence test with its margin, and how to get seed-level inference."""
    if frame is None or frame.empty or "delta_position_p" not in frame:
        return []
    from aprbench.harness.results.comparisons import family_size

    rows = frame[np.isfinite(frame["delta_position_p"].astype(float)) |
                 np.isfinite(frame["delta_orientation_p"].astype(float))]
    if rows.empty:
        return []
    alpha = alpha_of(rows.iloc[0])
    conf = _pct(1 - alpha)
    bases = set(rows["ci_basis"])
    seeds = sorted({int(n) for n in rows.get("n_seeds", pd.Series([], dtype=int)) if n == n and int(n) > 1})
    lines = [f"Δ: candidate − baseline of the median error (negative is better); intervals, where shown: {conf}, "
             "not adjusted for multiplicity."]
    if SEEDS in bases:
        n = "/".join(map(str, seeds)) or "≥ 2"
        lines.append(f"{SEED_MARK} seed-level: Holm-adjusted p < {alpha:g}; the unit is the training seed "
                     f"(n = {n}): t-interval and t-test on the per-seed Δs.")
    if FRAMES in bases:
        lines.append(f"{FRAME_MARK} frames only: Holm-adjusted p < {alpha:g} from one trained model per row (paired "
                     "bootstrap of the Δ of medians over test frames, interval and p); another seed may differ. "
                     "For seed-level inference run with --seeds 5.")
    lines.append(f"p adjusted by Holm's step-down method over the {family_size(rows)} comparisons of {family} "
                 "(position and orientation of every row); no marker: no difference shown, not equivalence.")
    if margin is not None and "tost_position_p" in frame:
        size = family_size(frame, "tost")
        what = f"±{_pct(margin.relative)} of the baseline's median error" if margin.relative is not None else \
            f"±{margin.position_m:g} m, ±{margin.orientation_deg:g}°"
        lines.append(f"equivalence within {what}: two one-sided tests (TOST), Holm over the {size} tests of {family}; "
                     f"\"equivalent\": adjusted TOST p < {alpha:g}; \"not shown\": the data cannot exclude a "
                     "difference of that size.")
    return lines
