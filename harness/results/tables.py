"""Leaderboard tables as text: number formats (digits that follow the quantity, true minus signs), best-value
marks, and the writers: a :class:`Block` (title, table, legend, footnotes) as github / plain / html (tabulate,
legend wrapped under the table) or as a complete LaTeX ``table`` environment (booktabs rules, the legend in its
caption, names escaped); CSV and JSON with plain numbers."""

from __future__ import annotations

import html
import json
import math
import textwrap
from dataclasses import dataclass, field
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


LEGEND_WIDTH = 100  # legend and footnote lines of the text formats are wrapped to this many columns


HUMAN_FORMATS = {"github": "github", "plain": "simple", "html": "unsafehtml", "latex": "latex"}


MACHINE_FORMATS = ("csv", "json")


FORMATS = (*HUMAN_FORMATS, *MACHINE_FORMATS)


# Digits follow the quantity (the same in github, plain, html and latex): a median over a few hundred test frames
# is known to about a centimetre and a tenth of a degree at APR error levels, so positions are printed to 0.01 m
# below 10 m (0.1 m to 100 m, 1 m above) and orientations to 0.1° (0.01° below 1°, where structure-based methods
# and their published figures live). Spreads (± std) and Δ use the same resolution as the value they qualify.
DIGITS_LEGEND = ("digits: positions to 0.01 m below 10 m (0.1 m above), orientations to 0.1° (0.01° below 1°); "
                 "a ±spread at the resolution of its value; Δ likewise")
MINUS = "\u2212"  # a true minus sign; LaTeX gets $-$


def _fixed(x: float, decimals: int) -> str:
    """``x`` with ``decimals`` decimals and a true minus sign; a value that rounds to zero has no sign."""
    text = f"{x:.{decimals}f}"
    if float(text) == 0:
        text = text.lstrip("-")
    return text.replace("-", MINUS)


def fmt_m(x: float) -> str:
    """Metres: 0.01 m below 10 m (0.09, 0.31, 2.21), 0.1 m below 100 m (31.4), 1 m above (142)."""
    if x is None or not np.isfinite(x):
        return ""
    a = abs(x)
    return _fixed(x, 2 if a < 9.995 else 1 if a < 99.95 else 0)


def fmt_deg(x: float) -> str:
    """Degrees: 0.01° below 1° (0.84), 0.1° above (6.4, 12.2)."""
    if x is None or not np.isfinite(x):
        return ""
    return _fixed(x, 2 if abs(x) < 0.995 else 1)


def fmt_ms(x: float) -> str:
    """Milliseconds per frame: two significant digits, at least 0.01 ms (0.52, 4.6, 13, 140)."""
    if x is None or not np.isfinite(x):
        return ""
    a = abs(x)
    return _fixed(x, 2 if a < 0.995 else 1 if a < 9.95 else 0)


def with_spread(x: float, spread: float, f) -> str:
    """``x`` formatted by ``f`` and ``±spread`` at the same resolution: ``0.92±0.11``, ``8.5±0.7``."""
    text = f(x)
    if spread is None or not np.isfinite(spread) or not text:
        return text
    decimals = len(text.split(".")[1]) if "." in text else 0
    return f"{text}±{_fixed(spread, decimals)}"


def _signed(x: float, f) -> str:
    """``+0.30`` / ``−0.01`` / ``±0.00`` (a value that rounds to zero)."""
    text = f(abs(x))
    if float(text) == 0:
        return "±" + text
    return ("+" if x > 0 else MINUS) + text


def signed_interval(x: float, low: float, high: float, f) -> str:
    """``−0.31 [−0.55, −0.06]``: a Δ by :func:`_signed` and its interval at the Δ's resolution (bounds signed,
    a bound that rounds to zero unsigned); the interval is left out when it is not finite."""
    text = _signed(x, f)
    if not all(v is not None and np.isfinite(v) for v in (low, high)):
        return text
    decimals = len(text.split(".")[1]) if "." in text else 0

    def bound(b: float) -> str:
        t = _fixed(abs(b), decimals)
        return t if float(t) == 0 else ("+" if b > 0 else MINUS) + t

    return f"{text} [{bound(low)}, {bound(high)}]"


def fmt_p(p: float) -> str:
    """A p-value to two significant digits (``0.034``, ``1.2e−05``) with a true minus sign; "" when not finite."""
    if p is None or not np.isfinite(p):
        return ""
    return f"{p:.2g}".replace("-", MINUS)


# characters pdflatex's default set-up does not typeset as such (outside ASCII, or < and > in text), as LaTeX
LATEX_SYMBOLS = (("°", r"$^\circ$"), ("±", r"$\pm$"), ("Δ", r"$\Delta$"), (MINUS, r"$-$"), ("·", r"$\cdot$"),
                 ("×", r"$\times$"), ("≤", r"$\leq$"), ("≥", r"$\geq$"), ("≈", r"$\approx$"), ("–", "--"),
                 ("—", "---"),
                 ("…", r"\ldots{}"), ("†", r"\textdagger{}"), ("‡", r"\textdaggerdbl{}"), ("§", r"\S{}"),
                 ("¶", r"\P{}"), ("<", r"$<$"), (">", r"$>$"))


class Marks:
    """How a format writes bold, units and escapes."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt

    def esc(self, s: Any) -> str:
        s = _text(s)
        if self.fmt == "latex":
            for a, b in (("\\", r"\textbackslash{}"), ("`", r"\textasciigrave{}"), ("&", r"\&"), ("%", r"\%"),
                         ("$", r"\$"), ("#", r"\#"), ("_", r"\_"), ("{", r"\{"), ("}", r"\}"), ("--", "-{}-"), ("~", r"\textasciitilde{}"),
                         ("^", r"\textasciicircum{}"), *LATEX_SYMBOLS):
                s = s.replace(a, b) if a != "\\" else s.replace(a, "\0")
            return s.replace("\0", r"\textbackslash{}")
        if self.fmt == "html":
            return html.escape(s)
        return s.replace("|", "\\|") if self.fmt == "github" else s

    def bold(self, s: str) -> str:
        if not s:
            return s
        return {"latex": rf"\textbf{{{s}}}", "html": f"<b>{s}</b>", "github": f"**{s}**"}.get(self.fmt, s)


def _pair_text(row: pd.Series, marks: Marks, best_m: bool, best_d: bool, units: bool, mark: str = "") -> str:
    """``0.31, 6.4`` under a ``scene (m, °)`` header (``units``: ``0.31 m, 6.4°``); over seeds ``0.31±0.02, 6.4±0.5``
    (mean ± sample std; the seed count is in the legend or the ``n`` column); best values in bold (one pair of marks
    when both are); ``mark`` (a footnote sign) appended."""
    if not np.isfinite(row.get("median_m", np.nan)):
        return ""
    m, d = fmt_m(row["median_m"]), fmt_deg(row["median_deg"])
    if int(row.get("n_seeds", 1) or 1) > 1:
        m = with_spread(row["median_m"], row["median_m_std"], fmt_m)
        d = with_spread(row["median_deg"], row["median_deg_std"], fmt_deg)
    m_txt = marks.esc(m + (" m" if units else ""))
    d_txt = marks.esc(d + ("°" if units else ""))
    if best_m and best_d:  # one pair of marks keeps the column narrow
        return marks.bold(f"{m_txt}, {d_txt}") + marks.esc(mark)
    return f"{marks.bold(m_txt) if best_m else m_txt}, {marks.bold(d_txt) if best_d else d_txt}" + marks.esc(mark)


def delta_text(row: pd.Series, marks: Marks, units: bool) -> str:
    """``−0.01*, +0.30``: Δ of the median position and orientation against the row's baseline (negative is
    better) with the marker of :func:`harness.results.significance.marker`; "" when the row has no Δ."""
    dm, dd = row.get("delta_position_m", np.nan), row.get("delta_orientation_deg", np.nan)
    if dm is None or not isinstance(dm, float) or not np.isfinite(dm):
        return ""
    from aprbench.harness.results.significance import marker  # * seed-level, † frames only (Holm-adjusted)

    return marks.esc(f"{_signed(dm, fmt_m)}{marker(row, 'position')}{' m' if units else ''}, "
                     f"{_signed(dd, fmt_deg)}{marker(row, 'orientation')}{'°' if units else ''}")


def _best(values: pd.Series, how: str) -> float:
    """The best (``min`` or ``max``) of ``values``; NaN (nothing marked) when they are all equal."""
    values = values.dropna()
    return float(getattr(values, how)()) if values.nunique() > 1 else float("nan")


def _scene_header(scene: str, units: bool, marks: Marks) -> str:
    """``room`` when the cells carry their units, else ``room (m, °)``."""
    return marks.esc(scene if units else f"{scene} (m, °)")


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
        f = fmt_ms
    elif col in ("iterations", "frames"):
        f = lambda x: f"{x:g}"  # noqa: E731
    else:
        f = lambda x: f"{x:.4g}"  # noqa: E731
    if n > 1 and s > 0 and col not in ("fraction", "iterations", "frames"):
        return with_spread(m, s, f)
    return f(m)


LATEX_PREAMBLE = r"% needs \usepackage{booktabs} in the preamble (\toprule, \midrule, \bottomrule)"


@dataclass
class Block:
    """One table as people read it: a title, the table of already escaped strings, its legend (what the columns,
    marks, digits and costs mean; plain text) and its footnotes (sources and caveats; plain text)."""

    title: str
    table: pd.DataFrame
    legend: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    empty: str = "(no rows)"


def _tabular(frame: pd.DataFrame) -> list[str]:
    spec = "l" + "r" * (len(frame.columns) - 1)
    lines = [rf"\begin{{tabular}}{{{spec}}}", r"\toprule", " & ".join(map(str, frame.columns)) + r" \\", r"\midrule"]
    lines += [" & ".join(_text(v) for v in row) + r" \\" for row in frame.itertuples(index=False)]
    return lines + [r"\bottomrule", r"\end{tabular}"]


def _label(title: str) -> str:
    slug = "".join(c if c.isascii() and c.isalnum() else "-" for c in title.lower())
    return "tab:aprbench-" + "-".join(p for p in slug.split("-") if p)[:60]


def to_latex(frame: pd.DataFrame, caption: str = "", notes: Iterable[str] = (), label: str = "") -> str:
    """A complete ``table`` environment (booktabs rules, the caption carrying the legend, footnotes under the
    tabular) of already escaped strings; ``caption`` and ``notes`` are plain text, escaped here. First column
    left-aligned, the rest right-aligned. Without a caption: the bare tabular."""
    if not caption and not notes:
        return "\n".join(_tabular(frame))
    esc = Marks("latex").esc
    lines = [LATEX_PREAMBLE, r"\begin{table}[htbp]", r"\centering"]
    if caption:
        lines.append(rf"\caption{{{esc(caption)}}}")
    if label:
        lines.append(rf"\label{{{label}}}")
    lines += _tabular(frame)
    notes = [n for n in notes if n]
    if notes:
        lines += [r"\par\smallskip{\footnotesize\raggedright"] + [esc(n) + r"\par" for n in notes] + ["}"]
    return "\n".join(lines + [r"\end{table}"])


def _sentence(text: str) -> str:
    """A caption sentence, ending with a full stop."""
    text = text.strip()
    return text if not text or text[-1] in ".!?" else text + "."


def render_block(block: Block, fmt: str, width: int = LEGEND_WIDTH) -> str:
    """A block in a human format: LaTeX gets one ``table`` environment whose caption is the title and the legend;
    the text formats the title, the table, then the legend and notes wrapped to ``width`` columns; html
    ``<h3>``, the table and ``<p>`` lines."""
    if block.table.empty:
        return "\n\n".join([_title(block.title, fmt), _with_notes(fmt, [block.empty], width)])
    if fmt == "latex":
        caption = " ".join(_sentence(t) for t in [block.title, *block.legend])
        return to_latex(block.table, caption, block.notes, _label(block.title))
    parts = [_title(block.title, fmt), render_table(block.table, fmt)] if block.title else [render_table(block.table, fmt)]
    lines = [*block.legend, *block.notes]
    if lines:
        parts.append(_with_notes(fmt, lines, width))
    return "\n\n".join(parts)


def render_table(frame: pd.DataFrame, fmt: str) -> str:
    """A table of strings in a human format (LaTeX: the bare booktabs tabular; see :func:`render_block`)."""
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


def _with_notes(fmt: str, lines: list[str], width: int = LEGEND_WIDTH) -> str:
    """Plain-text lines: html paragraphs, LaTeX comments, or text wrapped to ``width`` columns."""
    if fmt == "html":
        return "\n".join(f"<p>{html.escape(line)}</p>" for line in lines)
    if fmt == "latex":
        return "\n".join(f"% {line}" for line in lines)
    return "\n".join(textwrap.fill(line, width, subsequent_indent="  ", break_on_hyphens=False,
                                   break_long_words=False) for line in lines)

