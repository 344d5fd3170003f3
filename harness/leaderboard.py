"""The leaderboard: every cell of the store as a pandas frame, printed with tabulate.

One row per pose cell and scene: dataset, scene, fraction, teacher, student,
encode, refiner, iterations; median and mean errors (m, deg); threshold
accuracies; ms per frame; bytes stored at test time. Decoder cells form their
own frame (PSNR in dB, SSIM).
"""

from __future__ import annotations

from typing import Iterable

import pandas as pd
from tabulate import tabulate

from harness.cells import cell_files, decoder_rows, pose_rows
from harness.errors import BenchError
from harness.metrics import THRESHOLDS, threshold_name
from harness.store import Store

KEY_COLUMNS = ["dataset", "scene", "fraction", "seed", "teacher", "student", "encode", "refiner", "iterations"]
ERROR_COLUMNS = ["median_m", "median_deg", "mean_m", "mean_deg"]
FORMATS = {"github": "github", "latex": "latex", "html": "html", "plain": "simple"}
FORMAT_NAMES = [*FORMATS, "csv"]


def load_cells(store: Store, fingerprints: Iterable[str] | None = None,
               iterations: Iterable[int] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(pose rows, decoder rows)`` from the cell files (all of them, or the given fingerprints)."""
    cells = cell_files(store, fingerprints)
    return pose_rows(cells, iterations), decoder_rows(cells)


def display_frame(poses: pd.DataFrame) -> pd.DataFrame:
    """The columns a person reads, in order (thresholds: the ones that fit the scene's scale)."""
    if poses.empty:
        return poses
    thresholds = [threshold_name(m, d) for m, d in THRESHOLDS]
    cols = KEY_COLUMNS + ERROR_COLUMNS + [c for c in thresholds if c in poses] + ["ms_per_frame", "stored_bytes"]
    cols += [c for c in ("scene_accuracy", "latent_mse") if c in poses]
    out = poses[cols].copy()
    out["stored_bytes"] = out["stored_bytes"].map(_human_bytes)
    return out


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def render(frame: pd.DataFrame, fmt: str = "github", sort: str | None = None, group_by: str | None = None,
           floatfmt: str = ".3f") -> str:
    """The frame as text: ``github``, ``latex``, ``html``, ``plain`` (tabulate) or ``csv`` (pandas)."""
    if frame.empty:
        return "(no cells in the store yet: run `bench run` first)"
    if sort:
        if sort not in frame:
            raise BenchError(f"--sort {sort!r}: not a column; columns: {', '.join(frame.columns)}")
        frame = frame.sort_values(sort, kind="stable", ignore_index=True)
    if fmt == "csv":
        return frame.to_csv(index=False)
    if fmt not in FORMATS:
        raise BenchError(f"--format {fmt!r}: expected one of github, latex, html, plain, csv")
    if not group_by:
        return tabulate(frame, headers="keys", tablefmt=FORMATS[fmt], showindex=False, floatfmt=floatfmt)
    if group_by not in frame:
        raise BenchError(f"--group-by {group_by!r}: not a column; columns: {', '.join(frame.columns)}")
    parts = []
    for value, group in frame.groupby(group_by, sort=True):
        body = tabulate(group.drop(columns=[group_by]), headers="keys", tablefmt=FORMATS[fmt], showindex=False, floatfmt=floatfmt)
        parts.append(f"{group_by} = {value}\n\n{body}")
    return "\n\n".join(parts)
