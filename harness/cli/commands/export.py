"""``bench export``: the per-frame table of the selected cells, as CSV."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from aprbench.harness.store.cells import IDENTITY_COLUMNS, MACHINE_KEYS, MODEL_COLUMNS, PROVENANCE_KEYS
from aprbench.harness.cli.commands.leaderboard import add_selection_options, selection
from aprbench.harness.store.hdf5 import Store, atomic_path

FRAME_COLUMNS = ["img_path", *(f"{w}_{n}" for w in ("est", "gt") for n in ("t1", "t2", "t3", "q1", "q2", "q3", "q4")),
                 "position_error_m", "orientation_error_deg"]


# what every exported row says of where it came from: the run's provenance, the machine, each model's plugin
# version, origin and fingerprint (harness.store.cells)
ORIGIN_COLUMNS = [*PROVENANCE_KEYS, *MACHINE_KEYS, *MODEL_COLUMNS]


def frames_table(store: Store, filters: list[str]) -> pd.DataFrame:
    """One row per frame and stored iteration of the pose cells (and scenes) that ``filters`` select: identifying
    columns, ``iteration``, provenance (:data:`ORIGIN_COLUMNS`), ``cell``, then :data:`FRAME_COLUMNS`. A filter
    on ``iterations`` also restricts the iterations; otherwise every stored iteration is written (0 = the teacher's estimate)."""
    from aprbench.harness.results.leaderboard import build

    board = build(store, filters=filters, iterations=range(0, 10_000))
    if board.poses.empty:
        return pd.DataFrame(columns=[*IDENTITY_COLUMNS, "scene", "iteration", *ORIGIN_COLUMNS, "cell", *FRAME_COLUMNS])
    by_iteration = any(f.split("=", 1)[0].strip() == "iterations" for f in filters)
    keys = ["cell", "scene"] + (["iterations"] if by_iteration else [])
    wanted = set(map(tuple, board.poses[keys].drop_duplicates().itertuples(index=False)))
    parts = []
    for fp, rows in board.poses.groupby("cell", sort=False):
        frames = board.cells[fp].frames()
        pick = [(fp, s, *([k] if by_iteration else [])) in wanted for s, k in zip(frames["scene"], frames["iteration"])]
        frames = frames[pick]
        ident = rows.iloc[0]
        head = pd.DataFrame({c: [ident[c]] * len(frames) for c in [*IDENTITY_COLUMNS, *ORIGIN_COLUMNS, "cell"]},
                            index=frames.index)
        parts.append(pd.concat([head, frames], axis=1))
    frame = pd.concat(parts, ignore_index=True)
    return frame[[*IDENTITY_COLUMNS, "scene", "iteration", *ORIGIN_COLUMNS, "cell", *FRAME_COLUMNS]]


def register(commands) -> None:
    p = commands.top.add_parser(
        "export", parents=[commands.common], help="write the per-frame estimates and errors of the cells as CSV",
        description="One row per test frame and stored iteration of every selected pose cell: the cell's identifying "
        "columns and provenance (with torch, cpu, threads, and each model's plugin version, origin and fingerprint: "
        "teacher_version, teacher_origin, teacher_fingerprint, ...), img_path, est_t1..est_q4, gt_t1..gt_q4 (metres; scalar-first quaternion), "
        "position_error_m and orientation_error_deg.",
    )
    add_selection_options(p)
    p.add_argument("--out", type=Path, required=True, metavar="FILE.csv", help="the CSV file to write")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    frame = frames_table(Store(args.workdir, create=False), selection(args))
    with atomic_path(args.out) as tmp:
        frame.to_csv(tmp, index=False)
    cells = frame["cell"].nunique() if not frame.empty else 0
    print(f"wrote {args.out}: {len(frame)} rows from {cells} cell(s)")
    return 0
