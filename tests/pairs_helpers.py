"""Test helpers: the reference pairs CSV (frames ``a``, ``b`` and ``rel(a -> b)`` as ``_ab`` columns).

Only the tests read and write pairs CSVs (DESIGN.md section 4 describes the
format); the harness builds its training pairs in memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from aprbench.harness import poses as P
from aprbench.harness.data.csv_checks import (
    data_error, numeric_cells, read_csv, require_columns, require_non_empty, unit_quaternions, write_csv,
)
from aprbench.harness.api.interfaces import PoseData
from aprbench.harness.poses import nearest_neighbours, virtual_neighbours


def _pair_columns(suffix: str) -> list[str]:
    return [f"img_path_{suffix}", f"scene_{suffix}", f"scene_id_{suffix}",
            f"x1_{suffix}", f"x2_{suffix}", f"x3_{suffix}",
            f"q1_{suffix}", f"q2_{suffix}", f"q3_{suffix}", f"q4_{suffix}"]


PAIR_POSE_A = ["x1_a", "x2_a", "x3_a", "q1_a", "q2_a", "q3_a", "q4_a"]
PAIR_POSE_B = ["x1_b", "x2_b", "x3_b", "q1_b", "q2_b", "q3_b", "q4_b"]
PAIR_POSE_AB = ["x1_ab", "x2_ab", "x3_ab", "q1_ab", "q2_ab", "q3_ab", "q4_ab"]
PAIR_COLUMNS = _pair_columns("a") + _pair_columns("b") + PAIR_POSE_AB


def read_pairs(path: Path | str) -> pd.DataFrame:
    """Read a pairs CSV (``PAIR_COLUMNS``: frames ``a`` and ``b`` and ``rel(a -> b)`` as ``_ab``).

    ``img_path_b`` may be empty (a virtual neighbour has no image). Quaternions
    are normalised; errors name file, row and column.
    """
    path = Path(path)
    df = read_csv(path)
    require_columns(df, PAIR_COLUMNS, path)
    errors: list[str] = []
    out = df[["img_path_a", "scene_a", "img_path_b", "scene_b"]].apply(lambda s: s.str.strip()).reset_index(drop=True)
    require_non_empty(out, ["img_path_a", "scene_a", "scene_b"], path, errors)
    ids = numeric_cells(df, ["scene_id_a", "scene_id_b"], path, errors)
    blocks = {}
    for cols in (PAIR_POSE_A, PAIR_POSE_B, PAIR_POSE_AB):
        v = numeric_cells(df, cols, path, errors)
        v[:, 3:] = unit_quaternions(v[:, 3:], path, cols[3:], errors)
        blocks[tuple(cols)] = v
    if errors:
        raise data_error(errors)
    out["scene_id_a"] = ids[:, 0].astype(np.int64)
    out["scene_id_b"] = ids[:, 1].astype(np.int64)
    for cols, v in blocks.items():
        out[list(cols)] = v
    return out[PAIR_COLUMNS]


def write_pairs(df: pd.DataFrame, path: Path | str) -> Path:
    """Write ``PAIR_COLUMNS`` of ``df`` as a pairs CSV (atomically)."""
    return write_csv(df, PAIR_COLUMNS, path, "pairs to write")




def make_pairs(
    data: PoseData, k: int = 1, orientation_weight: float = 1.0, split: str = "train",
    virtual: int = 0, std_m: float = 0.3, std_deg: float = 10.0, seed: int = 0,
) -> pd.DataFrame:
    """Training pairs in the pairs CSV format (``PAIR_COLUMNS``).

    For every frame ``a`` of ``split``: its ``k`` nearest other frames ``b`` of
    the same scene and split (:func:`nearest_neighbours`), then ``virtual``
    virtual neighbours (``a``'s pose perturbed, ``img_path_b`` empty). The
    ``_ab`` columns hold ``rel(a -> b)`` (``harness.poses.relative_pose``).
    """
    part = data.split(split) if split else data
    labels = part.labels
    poses = part.poses().double()
    gen = torch.Generator().manual_seed(seed)
    a_idx, b_idx, b_poses = [], [], []
    for scene in part.scenes:
        idx = torch.from_numpy(np.flatnonzero((labels["scene"] == scene).to_numpy()))
        if len(idx) == 0:
            continue
        if k > 0:
            kk = min(k, len(idx) - 1)
            if kk > 0:
                nn_local = nearest_neighbours(poses[idx], poses[idx], kk, orientation_weight, exclude_self=True)
                a_idx.append(idx.repeat_interleave(kk))
                b_idx.append(idx[nn_local.reshape(-1)])
                b_poses.append(poses[b_idx[-1]])
        if virtual > 0:
            rep = idx.repeat_interleave(virtual)
            a_idx.append(rep)
            b_idx.append(torch.full_like(rep, -1))
            b_poses.append(virtual_neighbours(poses[rep], std_m, std_deg, generator=gen))
    if not a_idx:
        return pd.DataFrame({c: [] for c in PAIR_COLUMNS})
    a = torch.cat(a_idx)
    b = torch.cat(b_idx)
    pb = torch.cat(b_poses)
    pa = poses[a]
    rel = P.relative_pose(pa, pb)
    la = labels.iloc[a.numpy()].reset_index(drop=True)
    real = (b >= 0).numpy()
    out = pd.DataFrame({
        "img_path_a": la["img_path"], "scene_a": la["scene"], "scene_id_a": la["scene_id"].astype(np.int64),
        "img_path_b": np.where(real, labels["img_path"].to_numpy()[b.clamp_min(0).numpy()], ""),
        "scene_b": la["scene"], "scene_id_b": la["scene_id"].astype(np.int64),
    })
    out[PAIR_POSE_A] = pa.numpy()
    out[PAIR_POSE_B] = pb.numpy()
    out[PAIR_POSE_AB] = rel.numpy()
    return out[PAIR_COLUMNS]
