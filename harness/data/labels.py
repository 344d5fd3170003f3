"""The reference label format: reading and writing label CSVs, checking that their images exist.

Conventions: a pose is ``[t1, t2, t3, q1, q2, q3, q4]`` =
position in metres and a scalar-first unit quaternion of the camera-to-world
rotation; cameras use the OpenCV frame (x right, y down, looking along +z).
Image paths in label files are relative to a dataset root.

Every reader validates what it reads and raises :class:`DataError` whose
message names the file, the 1-based data row (and the file line), and the
column. The exception carries ``errors``, the list of every problem found.
Native dataset layouts are read by :mod:`harness.data.layouts`, datasets and
subsets built by :mod:`harness.data.datasets`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from aprbench.harness.api.interfaces import LABEL_COLUMNS, POSE_COLUMNS
from aprbench.harness.data.csv_checks import (
    data_error, numeric_cells, read_csv, require_columns, require_non_empty, row_where, unit_quaternions, write_csv,
)
from aprbench.harness.data.label_checks import (
    SPLITS, STRING_COLUMNS, check_consistency, check_magnitudes, check_names, csv_where, warn_quaternion_norms,
)


def read_labels(path: Path | str, root: Path | str | None = None, check_images: bool = False) -> pd.DataFrame:
    """Read a reference label CSV (``scene,split,seq,img_path,t1,t2,t3,q1,q2,q3,q4``).

    Positions in metres, quaternions scalar first (camera-to-world); non-unit
    quaternions are normalised (their sign is kept). ``split`` must be
    ``train`` or ``test``. With ``check_images``, every ``root / img_path``
    must exist. Returns exactly ``LABEL_COLUMNS`` (strings, float64 poses).
    Raises :class:`DataError` listing every problem with file, row and column.
    """
    path = Path(path)
    df = read_csv(path)
    require_columns(df, LABEL_COLUMNS, path)
    errors: list[str] = []
    out = df[STRING_COLUMNS].apply(lambda s: s.str.strip()).reset_index(drop=True)
    require_non_empty(out, ["scene", "split", "img_path"], path, errors)
    for i in np.flatnonzero(~out["split"].isin(SPLITS).to_numpy() & (out["split"] != "").to_numpy()):
        errors.append(f"{row_where(path, i, 'split')}: unknown split {out['split'].iloc[i]!r} (expected train or test)")
    if len(df) == 0:
        raise data_error([f"{path}: header only, no data rows (expected one row per image)"])
    values = numeric_cells(df, POSE_COLUMNS, path, errors)
    where = csv_where(path)
    check_magnitudes(values, POSE_COLUMNS, where, errors)
    warn_quaternion_norms(values[:, 3:], where, ",".join(POSE_COLUMNS[3:]))
    values[:, 3:] = unit_quaternions(values[:, 3:], path, POSE_COLUMNS[3:], errors)
    check_names(out, where, errors)
    check_consistency(out, where, errors)
    if errors:
        raise data_error(errors)
    out[POSE_COLUMNS] = values
    if check_images:
        check_image_files(out, root if root is not None else path.parent, source=path)
    return out[LABEL_COLUMNS]


def write_labels(df: pd.DataFrame, path: Path | str) -> Path:
    """Write ``LABEL_COLUMNS`` of ``df`` as a reference label CSV (atomically, full float precision)."""
    return write_csv(df, LABEL_COLUMNS, path, "labels to write")


def check_image_files(labels: pd.DataFrame, root: Path | str, source: Path | str = "labels") -> None:
    """Raise :class:`DataError` naming every ``root / img_path`` that is not a file (with its label row)."""
    root = Path(root)
    errors = [
        f"{row_where(source, i, 'img_path')}: image file {root / p} does not exist"
        for i, p in enumerate(labels["img_path"].tolist())
        if not (root / p).is_file()
    ]
    if errors:
        raise data_error(errors)
