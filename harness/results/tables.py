"""Leaderboard tables as text: number formats, best-value marks, and the writers (tabulate for github /
plain / html, a booktabs LaTeX writer with escaped names and units, CSV and JSON with plain numbers)."""

from __future__ import annotations

import html
import json
import math
from typing import Any, Iterable

import numpy as np
import pandas as pd
from tabulate import tabulate

from aprbench.harness.errors import BenchError

def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return f"{value:g}"
    return str(value)


def threshold_label(m: float, d: float) -> str:
    """``(0.05, 5)`` -> ``5 cm, 5°``; ``(0.5, 5)`` -> ``0.5 m, 5°``."""
    return (f"{m * 100:g} cm" if m < 0.25 else f"{m:g} m") + f", {d:g}°"


def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (0 for one value) and count of the finite values."""
    arr = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if not len(arr):
        return float("nan"), float("nan"), 0
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0, int(len(arr))


CELL_COLUMNS = {  # machine name -> human header of the compact cells view
    "dataset": "dataset", "scene": "scene", "fraction": "train %", "seed": "seed(s)", "teacher": "teacher",
    "student": "student", "encode": "encode", "refiner": "refiner", "iterations": "iter",
    "median_m": "median (m)", "median_deg": "median (°)",
}


HUMAN_FORMATS = {"github": "github", "plain": "simple", "html": "unsafehtml", "latex": "latex"}


MACHINE_FORMATS = ("csv", "json")


FORMATS = (*HUMAN_FORMATS, *MACHINE_FORMATS)


def fmt_m(x: float) -> str:
    """Metres with 3 significant-ish decimals: 0.031, 0.31, 3.1, 31.4."""
    if x is None or not np.isfinite(x):
        return ""
    return f"{x:.3f}" if abs(x) < 0.1 else f"{x:.2f}" if abs(x) < 10 else f"{x:.1f}"


def fmt_deg(x: float) -> str:
    """Degrees: 0.84, 6.36, 12.3."""
    if x is None or not np.isfinite(x):
        return ""
    return f"{x:.2f}" if abs(x) < 10 else f"{x:.1f}"


def _signed(x: float, f) -> str:
    return ("+" if x > 0 else "−" if x < 0 else "±") + f(abs(x))


class Marks:
    """How a format writes bold, units and escapes."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt

    def esc(self, s: Any) -> str:
        s = _text(s)
        if self.fmt == "latex":
            for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"),
                         ("_", r"\_"), ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"),
                         ("^", r"\textasciicircum{}"), ("°", r"$^\circ$"), ("±", r"$\pm$"), ("Δ", r"$\Delta$"),
                         ("−", "--")):
                s = s.replace(a, b) if a != "\\" else s.replace(a, "\0")
            return s.replace("\0", r"\textbackslash{}")
        if self.fmt == "html":
            return html.escape(s)
        return s.replace("|", "\\|") if self.fmt == "github" else s

    def bold(self, s: str) -> str:
        if not s:
            return s
        return {"latex": rf"\textbf{{{s}}}", "html": f"<b>{s}</b>", "github": f"**{s}**"}.get(self.fmt, s)


def _pair_text(row: pd.Series, marks: Marks, best_m: bool, best_d: bool, units: bool) -> str:
    if not np.isfinite(row.get("median_m", np.nan)):
        return ""
    m, d = fmt_m(row["median_m"]), fmt_deg(row["median_deg"])
    n = int(row.get("n_seeds", 1) or 1)
    if n > 1:
        m += f" ± {fmt_m(row['median_m_std'])}"
        d += f" ± {fmt_deg(row['median_deg_std'])}"
    m_txt = marks.esc(m + (" m" if units else ""))
    d_txt = marks.esc(d + ("°" if units else ""))
    text = f"{marks.bold(m_txt) if best_m else m_txt}, {marks.bold(d_txt) if best_d else d_txt}"
    if n > 1:
        text += marks.esc(f" (n={n})")
    dm, dd = row.get("delta_position_m", np.nan), row.get("delta_orientation_deg", np.nan)
    if dm is not None and isinstance(dm, float) and np.isfinite(dm):
        from aprbench.harness.results.significance import marker  # * seed-level, † frames only (Holm-adjusted)

        text += marks.esc(f" (Δ {_signed(dm, fmt_m)}{marker(row, 'position')}"
                          f"{' m' if units else ''}, {_signed(dd, fmt_deg)}{marker(row, 'orientation')}"
                          f"{'°' if units else ''})")
    return text


def _best(values: pd.Series, how: str) -> float:
    """The best (``min`` or ``max``) of ``values``; NaN (nothing marked) when they are all equal."""
    values = values.dropna()
    return float(getattr(values, how)()) if values.nunique() > 1 else float("nan")


def _scene_header(scene: str, units: bool, marks: Marks) -> str:
    return marks.esc(scene) if units else f"{marks.esc(scene)} (m, $^\\circ$)"


def fmt_mb(n: float) -> str:
    """Bytes as MB (10^6 bytes): 2.71, 0.052."""
    mb = float(n) / 1e6
    return f"{mb:.3f}" if mb < 0.1 else f"{mb:.2f}" if mb < 100 else f"{mb:.0f}"


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return _text(v)


def _cell_header(col: str, fmt: str) -> str:
    if col in CELL_COLUMNS:
        name = CELL_COLUMNS[col]
    elif col.startswith("acc_") and col.endswith("deg"):
        m, d = col[4:-3].split("m_")
        name = f"{threshold_label(float(m), float(d))} (%)"
    else:
        name = {"ms_per_frame": "ms/frame", "stored_bytes": "MB"}.get(col, col)
    return Marks(fmt).esc(name)


def _number(col: str, vals: pd.Series) -> str:
    m, s, n = mean_std(vals.astype(float))
    if n == 0:
        return ""
    if col.startswith("acc_") or col == "scene_accuracy":
        f = lambda x: f"{100 * x:.1f}"  # noqa: E731
    elif col == "fraction":
        f = lambda x: f"{100 * x:g}"  # noqa: E731
    elif col == "stored_bytes":
        f = fmt_mb
    elif col.endswith("_m"):
        f = fmt_m
    elif col.endswith("_deg"):
        f = fmt_deg
    elif col == "ms_per_frame":
        f = lambda x: f"{x:.1f}"  # noqa: E731
    elif col in ("iterations", "frames"):
        f = lambda x: f"{x:g}"  # noqa: E731
    else:
        f = lambda x: f"{x:.4g}"  # noqa: E731
    return f(m) + (f" ± {f(s)}" if n > 1 and s > 0 and col not in ("fraction", "iterations") else "")


def to_latex(frame: pd.DataFrame) -> str:
    """A booktabs tabular of already escaped strings (first column left-aligned, the rest right-aligned)."""
    spec = "l" + "r" * (len(frame.columns) - 1)
    lines = [rf"\begin{{tabular}}{{{spec}}}", r"\toprule", " & ".join(map(str, frame.columns)) + r" \\", r"\midrule"]
    lines += [" & ".join(_text(v) for v in row) + r" \\" for row in frame.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)


def render_table(frame: pd.DataFrame, fmt: str) -> str:
    """A table of strings in a human format."""
    if frame.empty:
        return "(no rows)"
    if fmt == "latex":
        return to_latex(frame)
    return tabulate(frame, headers="keys", tablefmt=HUMAN_FORMATS[fmt], showindex=False, disable_numparse=True)


def render_machine(frame: pd.DataFrame, fmt: str, sort: str | None = None) -> str:
    """CSV or JSON (records) of plain numbers."""
    if sort:
        desc, col = sort.startswith("-"), sort.lstrip("-")
        if col not in frame:
            raise BenchError(f"--sort {sort!r}: not a column; columns: {', '.join(frame.columns)}")
        frame = frame.sort_values(col, ascending=not desc, kind="stable", ignore_index=True)
    if fmt == "csv":
        return frame.to_csv(index=False).rstrip("\n")
    return json.dumps([{k: _json_value(v) for k, v in r.items()} for r in frame.to_dict(orient="records")], indent=1)


def _json_value(v: Any) -> Any:
    """A JSON value that reads back to the same number: Python floats (shortest round-trip repr), NaN as null."""
    if isinstance(v, (np.floating, float)):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, (np.integer, np.bool_)):
        return v.item()
    if isinstance(v, (str, int, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple, dict)):
        return json.loads(json.dumps(v, default=str))
    return None if pd.isna(v) else str(v)


def _title(text: str, fmt: str) -> str:
    if fmt == "html":
        return f"<h3>{html.escape(text)}</h3>"
    if fmt == "latex":
        return f"% {text}"
    return text


def _with_notes(fmt: str, lines: list[str]) -> str:
    if fmt == "html":
        return "\n".join(f"<p>{html.escape(line)}</p>" for line in lines)
    if fmt == "latex":
        return "\n".join(f"% {line}" for line in lines)
    return "\n".join(lines)

