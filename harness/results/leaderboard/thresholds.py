"""Accuracy thresholds per scene: the dataset's declared ones, else 7Scenes (indoor) or Cambridge (outdoor) by extent."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from aprbench.harness.errors import BenchError
from aprbench.harness.results.leaderboard.board import Board, INDOOR_THRESHOLDS, OUTDOOR_EXTENT_M, OUTDOOR_THRESHOLDS


def _declared_thresholds(dataset: str, manager: Any) -> Any:
    if manager is None:
        return None
    try:
        factory = manager.registry().entries["dataset"].get(dataset)
    except Exception:
        return None
    return getattr(factory.factory, "thresholds", None) if factory is not None else None


def scene_thresholds(board: Board, dataset: str, scene: str) -> tuple[tuple[float, float], ...]:
    """The ``(m, deg)`` accuracy thresholds of a scene's convention.

    A dataset plugin may declare them on its factory: ``factory.thresholds`` = a list of ``(m, deg)``, a dict
    ``{scene: list}`` or a callable ``scene -> list``. Otherwise the scene's test positions decide: a bounding box
    with every side within :data:`OUTDOOR_EXTENT_M` is indoor (7Scenes convention), else outdoor (Cambridge),
    which puts synthetic ``room`` indoors and ``site`` outdoors.
    """
    declared = _declared_thresholds(dataset, board.manager)
    if callable(declared):
        declared = declared(scene)
    if isinstance(declared, dict):
        declared = declared.get(scene)
    if declared:
        return tuple((float(m), float(d)) for m, d in declared)
    rows = board.poses[(board.poses["dataset"] == dataset) & (board.poses["scene"] == scene)]
    for fp in rows["cell"].unique() if not rows.empty else []:
        cell = board.cells[fp]
        scenes = list(cell.attrs.get("scenes", []))
        positions = cell.arrays["pose_gt"][cell.arrays["scene_id"] == scenes.index(scene), :3]
        if len(positions):
            extent = float(np.max(positions.max(0) - positions.min(0)))
            return INDOOR_THRESHOLDS if extent <= OUTDOOR_EXTENT_M else OUTDOOR_THRESHOLDS
    return INDOOR_THRESHOLDS


def parse_thresholds(spec: str | None) -> tuple[tuple[float, float], ...] | None:
    """``"0.05:5,0.1:10"`` -> ``((0.05, 5.0), (0.1, 10.0))`` (metres:degrees)."""
    if not spec:
        return None
    out = []
    for part in spec.split(","):
        m, colon, d = part.partition(":")
        try:
            out.append((float(m), float(d)))
        except ValueError:
            raise BenchError(f"--thresholds {spec!r}: expected METRES:DEGREES pairs, e.g. 0.05:5,0.1:10") from None
        if not colon or not all(0 < v < float("inf") for v in out[-1]):  # also NaN
            raise BenchError(f"--thresholds {spec!r}: expected positive METRES:DEGREES pairs, e.g. 0.05:5,0.1:10")
    return tuple(out)




def threshold_column(m: float, d: float) -> str:
    """Machine column name of a threshold accuracy (as :func:`harness.results.metrics.threshold_name`)."""
    return f"acc_{m:g}m_{d:g}deg"


def recall(board: Board, row: pd.Series | dict, m: float, d: float) -> float:
    """Fraction of the row's test frames with position error <= ``m`` metres and orientation error <= ``d`` deg."""
    pos, ori = board.errors(row["cell"], row["scene"], int(row["iterations"]))
    return float(np.mean((pos <= m) & (ori <= d))) if len(pos) else float("nan")
