"""The leaderboard's frame: the store's cells read into one pandas frame, hook columns, ``--filter``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence
import difflib
import fnmatch
import sys

import numpy as np
import pandas as pd

from aprbench.harness.errors import BenchError
from aprbench.harness.results.tables import _text
from aprbench.harness.store.cells import CellFile, PROVENANCE_KEYS, cell_files, decoder_rows, method_name, pose_rows
from aprbench.harness.store.costs import read_costs, summary as cost_summary
from aprbench.harness.store.hdf5 import Store


# (metres, degrees): the 7Scenes convention (indoor) and the Cambridge convention (outdoor)
INDOOR_THRESHOLDS: tuple[tuple[float, float], ...] = ((0.05, 5.0), (0.10, 10.0))
OUTDOOR_THRESHOLDS: tuple[tuple[float, float], ...] = ((0.25, 2.0), (0.5, 5.0), (5.0, 10.0))
# a scene whose test positions span more than this (bounding-box side, metres) is outdoor
OUTDOOR_EXTENT_M = 10.0
# provenance that separates rows (models_fingerprint: every model's identity); the creation date does not (seeds run
# at different times still merge), nor the machine (harness.store.cells.MACHINE_KEYS, not provenance keys)
MERGE_KEYS = [k for k in PROVENANCE_KEYS if k != "created"]
VIEWS = ("scenes", "cells", "recall", "stats")
# what makes one leaderboard row: all but seed, cell fingerprint and date
GROUP_KEYS = ["dataset", "method", "teacher", "teacher_scenes", "fraction", "student", "encode", "refiner",
              "iterations", *MERGE_KEYS]


@dataclass
class Board:
    """Everything the views read: pose rows (one per cell, scene and shown iteration, with ``method`` and the
    hook columns), decoder rows, the cell files by fingerprint, and the names of hook columns."""

    poses: pd.DataFrame
    decoders: pd.DataFrame
    cells: dict[str, CellFile] = field(default_factory=dict)
    hook_columns: list[str] = field(default_factory=list)
    manager: Any = None
    stats: pd.DataFrame | None = None  # harness.results.comparisons.stats_table of the rows, once computed

    def errors(self, fingerprint: str, scene: str, iteration: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-frame ``(position error m, orientation error deg)`` of one cell, scene and stored iteration."""
        cell = self.cells[fingerprint]
        i = cell.iterations.index(int(iteration))
        scenes = list(cell.attrs.get("scenes", []))
        mask = cell.arrays["scene_id"] == scenes.index(scene)
        return (np.asarray(cell.arrays["position_error_m"][i])[mask],
                np.asarray(cell.arrays["orientation_error_deg"][i])[mask])



def parse_filters(filters: Iterable[str]) -> list[tuple[str, str]]:
    """``["teacher=posenet*"]`` -> ``[("teacher", "posenet*")]`` (shell-style globs on the column's text)."""
    out = []
    for spec in filters or ():
        key, eq, pattern = spec.partition("=")
        if not eq or not key.strip():
            raise BenchError(f"--filter {spec!r}: expected KEY=GLOB, e.g. teacher=posenet*")
        out.append((key.strip(), pattern.strip()))
    return out




def apply_filters(frame: pd.DataFrame, filters: Sequence[tuple[str, str]], what: str = "pose") -> pd.DataFrame:
    """Rows of ``frame`` whose every filtered column matches its glob; an unknown column is a BenchError."""
    if frame.empty:
        return frame
    for key, pattern in filters:
        if key not in frame:
            close = difflib.get_close_matches(key, list(frame.columns), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; columns: {', '.join(map(str, frame.columns))}"
            raise BenchError(f"--filter {key}={pattern}: no column {key!r} in the {what} rows{hint}")
        mask = frame[key].map(lambda v: fnmatch.fnmatchcase(_text(v), pattern))
        frame = frame[mask.astype(bool)]
    return frame.reset_index(drop=True)


def _overrides_text(value: Any) -> str:
    """A ``--set`` record as short text: ``teacher.epochs=2,lr=0.0001`` ("" for none)."""
    if value in (None, "", [], {}):
        return ""
    if isinstance(value, dict):
        parts = []
        for key, val in value.items():
            if isinstance(val, dict):
                parts += [f"{key}.{k}={v}" for k, v in val.items()]
            else:
                parts.append(f"{key}={val}")
        return ",".join(parts)
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def _created_text(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return pd.Timestamp(value, unit="s", tz="UTC").strftime("%Y-%m-%d %H:%M:%S")
    return "" if value is None else str(value)


def _normalise(frame: pd.DataFrame) -> pd.DataFrame:
    """Provenance as text (``overrides`` as ``k=v,…``, ``created`` as a UTC date), ``method`` added."""
    if frame.empty:
        return frame
    frame = frame.copy()
    for key in PROVENANCE_KEYS:
        if key not in frame:
            frame[key] = ""
    frame["overrides"] = frame["overrides"].map(_overrides_text)
    frame["created"] = frame["created"].map(_created_text)
    for key in MERGE_KEYS:
        frame[key] = frame[key].map(lambda v: "" if v is None else str(v))
    if "iterations" not in frame:
        frame["iterations"] = 0
    frame.insert(0, "method", [method_name(r) for r in frame.to_dict("records")])
    return frame


def apply_hooks(frame: pd.DataFrame, manager: Any) -> tuple[pd.DataFrame, list[str]]:
    """Add the columns every ``bench_leaderboard_columns`` implementation returns. A plugin that raises (or returns
    columns of the wrong length) is named on stderr and left out; the others still apply."""
    if manager is None or frame.empty:
        return frame, []
    added: list[str] = []
    for impl in manager.pm.hook.bench_leaderboard_columns.get_hookimpls():  # registration order
        if getattr(impl, "hookwrapper", False) or getattr(impl, "wrapper", False):
            continue
        try:
            columns = impl.function(frame=frame.copy()) or {}
            extra = pd.DataFrame({col: (list(v) if not np.isscalar(v) else [v] * len(frame))
                                  for col, v in dict(columns).items()}, index=frame.index)
        except Exception as exc:  # a broken plugin must not hide the table
            print(f"bench: plugin {impl.plugin_name}: bench_leaderboard_columns failed "
                  f"({type(exc).__name__}: {exc}); its columns are left out", file=sys.stderr)
            continue
        for col in extra.columns:
            name = col if col not in frame else _renamed(col, impl.plugin_name, frame)
            frame[name] = extra[col]
            added.append(name)
    return frame, added


def apply_costs(poses: pd.DataFrame, store: Store) -> pd.DataFrame:
    """``ms_per_frame`` from the cell's quiet re-measurement (:mod:`harness.store.costs`) where there is one: the
    median of the repeats, with ``ms_per_frame_min`` / ``_max`` and ``ms_quiet = True``; otherwise the figure the
    cell recorded during its run, ``ms_quiet = False``."""
    if poses.empty:
        return poses
    poses = poses.copy()
    lo, hi, quiet, ms = [], [], [], []
    cache: dict[str, dict[int, list[float]] | None] = {}
    for fp, k, own in zip(poses["cell"], poses["iterations"], poses["ms_per_frame"]):
        if fp not in cache:
            cache[fp] = read_costs(store, str(fp))
        samples = (cache[fp] or {}).get(int(k))
        if samples:
            med, a, b = cost_summary(samples)
            ms.append(med), lo.append(a), hi.append(b), quiet.append(True)
        else:
            ms.append(float(own)), lo.append(np.nan), hi.append(np.nan), quiet.append(False)
    poses["ms_per_frame"], poses["ms_per_frame_min"], poses["ms_per_frame_max"] = ms, lo, hi
    poses["ms_quiet"] = quiet
    return poses


def _renamed(col: str, plugin: str, frame: pd.DataFrame) -> str:
    """A hook column whose name is taken (a built-in column or another hook's) is kept under a new name, said on
    stderr: a plugin never replaces a measured value."""
    short = str(plugin).rpartition("/")[2].removesuffix(".py").removeprefix("--plugin:")
    name, k = f"{col} ({short})", 2
    while name in frame:
        name, k = f"{col} ({short} {k})", k + 1
    print(f"bench: plugin {plugin}: bench_leaderboard_columns returned {col!r}, a column the leaderboard already has; "
          f"shown as {name!r}", file=sys.stderr)
    return name


def build(store: Store, manager: Any = None, fingerprints: Iterable[str] | None = None,
          filters: Iterable[str] = (), iterations: Iterable[int] | None = None) -> Board:
    """Read the cells (all, or ``fingerprints``), add ``method`` and the hook columns, keep the rows matching every
    ``KEY=GLOB`` of ``filters``. ``iterations``: the refiner iterations to show (default: those requested)."""
    files = cell_files(store, fingerprints)
    poses = _normalise(pose_rows(files, iterations))
    decoders = _normalise(decoder_rows(files))
    poses = apply_costs(poses, store)
    poses, hooked = apply_hooks(poses, manager)
    parsed = parse_filters(filters)
    if parsed:
        known = set(poses.columns) | set(decoders.columns)
        for key, pattern in parsed:
            if key not in known and known:
                apply_filters(poses if not poses.empty else decoders, [(key, pattern)])  # raises, naming columns
        # a filter on a column only one kind of cell has (``decoder``) selects that kind
        if not poses.empty:
            poses = poses.iloc[0:0] if any(k not in poses for k, _ in parsed) else apply_filters(poses, parsed, "pose")
        if not decoders.empty:
            decoders = decoders.iloc[0:0] if any(k not in decoders for k, _ in parsed) else \
                apply_filters(decoders, parsed, "decoder")
    return Board(poses, decoders, {c.attrs["fingerprint"]: c for c in files}, hooked, manager)
