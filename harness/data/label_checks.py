"""Reviewer checks on assembled label tables (``LABEL_COLUMNS``), whatever file or layout they came from.

Refused: unsafe scene names, absolute or escaping image paths, pose values
beyond ``MAX_ABS_VALUE``, the same image twice, a sequence in both splits.
Quaternion norms far from 1 are warned about. Each problem names its origin
through a ``where(row, column)`` callable.
"""

from __future__ import annotations

import posixpath
import re
import warnings
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from aprbench.harness.api.interfaces import LABEL_COLUMNS, POSE_COLUMNS
from aprbench.harness.data.csv_checks import data_error, row_where

SPLITS = ("train", "test")
STRING_COLUMNS = ["scene", "split", "seq", "img_path"]
MAX_ABS_VALUE = 1e6  # metres (or quaternion units): larger pose values are refused, not normalised away
QUAT_NORM_WARN = 0.05  # warn when | |q| - 1 | exceeds this (typically t and q columns swapped)
SAFE_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
Where = Callable[[int, "str | None"], str]


def csv_where(path: Path | str) -> Where:
    """``where(row, column)`` for the data rows of the CSV at ``path``."""
    return lambda i, col: row_where(path, i, col)


def scene_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a scene name (it becomes part of file names), or ``None``.

    Allowed: letters, digits, ``_``, ``-`` and ``.``, not starting with ``.``
    and without ``..``.
    """
    if not SAFE_NAME.fullmatch(name):
        return f"scene name {name!r} has characters outside [A-Za-z0-9_.-]"
    if name.startswith(".") or ".." in name:
        return f"scene name {name!r} starts with '.' or contains '..'"
    return None


def image_path_problem(path: str) -> str | None:
    """Why ``path`` cannot be an image path relative to a dataset root (absolute, or escaping with ``..``), or ``None``."""
    if PurePosixPath(path).is_absolute() or PureWindowsPath(path).is_absolute() or PureWindowsPath(path).drive:
        return f"image path {path!r} is absolute (paths are relative to the dataset root)"
    norm = posixpath.normpath(path.replace("\\", "/"))
    if norm == ".." or norm.startswith("../"):
        return f"image path {path!r} leaves the dataset root"
    return None


def check_names(df: pd.DataFrame, where: Where, errors: list[str]) -> None:
    """Scene names safe as file names and image paths inside the root, each problem with its row."""
    for i, name in enumerate(df["scene"].tolist()):
        problem = scene_name_problem(name) if name else None
        if problem:
            errors.append(f"{where(i, 'scene')}: {problem}")
    for i, path in enumerate(df["img_path"].tolist()):
        problem = image_path_problem(path) if path else None
        if problem:
            errors.append(f"{where(i, 'img_path')}: {problem}")


def check_magnitudes(values: np.ndarray, columns: Sequence[str], where: Where, errors: list[str]) -> None:
    """Finite pose values larger than ``MAX_ABS_VALUE`` in magnitude are errors (non-finite ones are reported elsewhere)."""
    big = np.isfinite(values) & (np.abs(values) > MAX_ABS_VALUE)
    for i, j in zip(*np.nonzero(big)):
        errors.append(f"{where(int(i), columns[j])}: value {values[i, j]:g} is beyond {MAX_ABS_VALUE:g} in magnitude")


def warn_quaternion_norms(q: np.ndarray, where: Where, columns: str, stacklevel: int = 3) -> None:
    """Warn (naming rows) when quaternion norms are far from 1: the t and q columns may be swapped.

    ``stacklevel`` as in :func:`warnings.warn`: the default names the caller of the reader that called this.
    """
    norm = np.linalg.norm(q, axis=1)
    far = np.flatnonzero(np.isfinite(norm) & (norm > 1e-8) & (np.abs(norm - 1.0) > QUAT_NORM_WARN))
    if len(far):
        shown = "; ".join(f"{where(int(i), columns)}: |q| = {norm[i]:.4g}" for i in far[:5])
        more = f" (and {len(far) - 5} more rows)" if len(far) > 5 else ""
        warnings.warn(
            f"{len(far)} quaternion(s) with norm far from 1 (normalised; are the t and q columns swapped?): {shown}{more}",
            UserWarning, stacklevel=stacklevel,
        )


def check_consistency(df: pd.DataFrame, where: Where, errors: list[str]) -> None:
    """The same image twice, or one sequence of a scene in both train and test, are errors naming the rows."""
    paths = df["img_path"].to_numpy()
    dup = pd.Series(paths).duplicated(keep=False).to_numpy() & (paths != "")
    if dup.any():
        first: dict[str, int] = {}
        for i in np.flatnonzero(dup):
            p = paths[i]
            if p in first:
                errors.append(f"{where(int(i), 'img_path')}: image {p!r} appears more than once (first at {where(first[p], None)})")
            else:
                first[p] = int(i)
    has_seq = df[(df["seq"] != "") & df["split"].isin(SPLITS)]
    for (scene, seq), g in has_seq.groupby(["scene", "seq"], sort=True):
        if g["split"].nunique() > 1:
            i_train = int(g.index[g["split"] == "train"][0])
            i_test = int(g.index[g["split"] == "test"][0])
            errors.append(
                f"{where(i_test, 'seq')}: sequence {seq!r} of scene {scene!r} is in both train "
                f"({where(i_train, None)}) and test: a test sequence must not be trained on"
            )


def check_label_table(df: pd.DataFrame, where: Where) -> None:
    """Reviewer checks on assembled labels (``LABEL_COLUMNS``); raise :class:`DataError` naming every problem.

    ``where(i, column)`` names row ``i``'s origin (file, row or line, column).
    Refused: unsafe scene names, absolute or escaping image paths, pose values
    beyond ``MAX_ABS_VALUE``, the same image twice, a sequence in both splits.
    Quaternion norms far from 1 are warned about (:class:`UserWarning`).
    """
    errors: list[str] = []
    df = df.reset_index(drop=True)
    check_names(df, where, errors)
    check_magnitudes(df[POSE_COLUMNS].to_numpy(np.float64), POSE_COLUMNS, where, errors)
    check_consistency(df, where, errors)
    if errors:
        raise data_error(errors)


def check_label_files(tables: Sequence[tuple[Path | str, pd.DataFrame]]) -> pd.DataFrame:
    """Concatenate label tables read from CSV files and run the cross-file checks (duplicates, shared sequences)."""
    frames = [t for _, t in tables]
    origin = [(src, i) for src, t in tables for i in range(len(t))]
    table = pd.concat(frames, ignore_index=True) if frames else concat_labels([])
    errors: list[str] = []
    check_consistency(table, lambda i, col: row_where(origin[i][0], origin[i][1], col), errors)
    if errors:
        raise data_error(errors)
    return table


def concat_labels(rows: list[pd.DataFrame]) -> pd.DataFrame:
    """``rows`` concatenated to exactly ``LABEL_COLUMNS`` (an empty, typed table when there are none)."""
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype=object if c in STRING_COLUMNS else np.float64) for c in LABEL_COLUMNS})
    return pd.concat(rows, ignore_index=True)[LABEL_COLUMNS]
