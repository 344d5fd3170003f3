"""CSV tables checked cell by cell: reading, column and value checks, atomic writing.

Every problem is one line naming the file, the 1-based data row (and the file
line) and the column; :func:`data_error` gathers them into one
:class:`DataError` whose ``errors`` holds the full list.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from aprbench.harness.errors import DataError
from aprbench.harness.store.hdf5 import atomic_path

MAX_LISTED_ERRORS = 20


def data_error(errors: Sequence[str]) -> DataError:
    """One :class:`DataError` listing ``errors`` (the first ``MAX_LISTED_ERRORS``); ``.errors`` holds all."""
    shown = list(errors[:MAX_LISTED_ERRORS])
    if len(errors) > MAX_LISTED_ERRORS:
        shown.append(f"... and {len(errors) - MAX_LISTED_ERRORS} more")
    exc = DataError("\n".join(shown))
    exc.errors = list(errors)  # type: ignore[attr-defined]
    return exc


def row_where(path: Path | str, row: int, column: str | None = None) -> str:
    """``file, row R (line L), column 'c'`` for a 0-based data row of a CSV with one header line."""
    col = f", column {column!r}" if column else ""
    return f"{path}, row {row + 1} (line {row + 2}){col}"


def read_csv(path: Path | str) -> pd.DataFrame:
    """Every cell of the CSV at ``path`` as a string (no NA guessing); a missing or unreadable file is a :class:`DataError`."""
    path = Path(path)
    if not path.is_file():
        raise data_error([f"{path}: no such file"])
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise data_error([f"{path}: not a readable CSV file ({str(exc).splitlines()[0]})"]) from None


def require_columns(df: pd.DataFrame, required: Sequence[str], path: Path | str) -> None:
    """A :class:`DataError` naming the missing ones unless ``df`` has every column of ``required``."""
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise data_error([
            f"{path}: missing column(s) {', '.join(missing)} "
            f"(expected {','.join(required)}; found {','.join(map(str, df.columns)) or 'none'})"
        ])


def numeric_cells(df: pd.DataFrame, columns: Sequence[str], path: Path | str, errors: list[str]) -> np.ndarray:
    """``(N, len(columns))`` float64; every non-numeric, NaN or infinite cell appended to ``errors``."""
    out = np.empty((len(df), len(columns)), dtype=np.float64)
    for j, col in enumerate(columns):
        raw = df[col].astype(str).str.strip()
        values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
        for i in np.flatnonzero(~np.isfinite(values)):
            errors.append(f"{row_where(path, i, col)}: not a finite number ({raw.iloc[i]!r})")
        out[:, j] = values
    return out


def unit_quaternions(q: np.ndarray, path: Path | str, columns: Sequence[str], errors: list[str]) -> np.ndarray:
    """Normalise ``(N, 4)`` quaternions; zero (or not finite) ones are errors."""
    norm = np.linalg.norm(q, axis=1)
    bad = np.isfinite(norm) & (norm < 1e-8)
    for i in np.flatnonzero(bad):
        errors.append(f"{row_where(path, i, ','.join(columns))}: zero quaternion")
    # rows already unit length (to 1e-9) are kept bit for bit, so files round-trip exactly
    scale = np.where((norm > 1e-8) & (np.abs(norm - 1.0) > 1e-9), norm, 1.0)
    return q / scale[:, None]


def require_non_empty(df: pd.DataFrame, columns: Sequence[str], path: Path | str, errors: list[str]) -> None:
    """Append an error for every blank cell of ``columns``."""
    for col in columns:
        for i in np.flatnonzero(df[col].astype(str).str.strip().to_numpy() == ""):
            errors.append(f"{row_where(path, i, col)}: empty value")


def write_csv(df: pd.DataFrame, columns: list[str], path: Path | str, what: str) -> Path:
    """Write ``columns`` of ``df`` as CSV atomically, floats at full precision."""
    require_columns(df, columns, what)
    with atomic_path(Path(path)) as tmp:
        df[columns].to_csv(tmp, index=False, float_format="%.17g")
    return Path(path)
