"""The leaderboard: the store's cells as the tables a paper prints.

:func:`build` reads the cell files (:mod:`harness.cells`), adds the columns of
every ``bench_leaderboard_columns`` hook and applies ``--filter``; it serves
``bench run``, ``bench leaderboard`` and ``bench report`` alike. :func:`text`
renders one of the views:

- ``scenes`` (default for people): per dataset, one row per method, one column
  per scene with ``median m, median °`` and an ``Average`` column (mean of the
  per-scene medians, the field's convention; left empty for a method that lacks
  a scene), then stored MB (10^6 bytes) and ms per frame. Best value per column
  in bold (github, html, latex).
- ``cells``: one row per cell, scene and iteration; people get a compact set of
  columns with the threshold accuracies of the scene's convention only
  (:func:`scene_thresholds`), machines (``csv``, ``json``) every column as plain
  numbers: bytes as integers, fractions 0-1, errors in metres and degrees.
- ``recall``: the fraction of frames within each threshold, per scene and averaged.

Several seeds of one recipe merge into one row (``mean ± std``, ``n``); rows
whose provenance differs (:data:`MERGE_KEYS`: all of
:data:`harness.cells.PROVENANCE_KEYS` but the creation date) never merge and
are labelled with what differs.
"""

from __future__ import annotations

import difflib
import fnmatch
import io
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from harness.cells import (IDENTITY_COLUMNS, PROVENANCE_KEYS, CellFile, cell_files, decoder_rows, method_name,
                           pose_rows)
from harness.errors import BenchError
from harness.published import _published_table, published_frame
from harness.store import Store
from harness.tables import (CELL_COLUMNS, FORMATS, MACHINE_FORMATS, Marks, _best, _cell_header, _number, _pair_text,
                            _scene_header, _short, _text, _title, _with_notes, fmt_mb, mean_std, render_machine,
                            render_table, threshold_label)

# (metres, degrees): the 7Scenes convention (indoor) and the Cambridge convention (outdoor)
INDOOR_THRESHOLDS: tuple[tuple[float, float], ...] = ((0.05, 5.0), (0.10, 10.0))
OUTDOOR_THRESHOLDS: tuple[tuple[float, float], ...] = ((0.25, 2.0), (0.5, 5.0), (5.0, 10.0))
# a scene whose test positions span more than this (bounding-box side, metres) is outdoor
OUTDOOR_EXTENT_M = 10.0
# provenance that separates rows; the creation date does not (seeds run at different times still merge)
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
    stats: pd.DataFrame | None = None  # harness.stats.stats_table of the cells, once computed

    def errors(self, fingerprint: str, scene: str, iteration: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-frame ``(position error m, orientation error deg)`` of one cell, scene and stored iteration."""
        cell = self.cells[fingerprint]
        i = cell.iterations.index(int(iteration))
        scenes = list(cell.attrs.get("scenes", []))
        mask = cell.arrays["scene_id"] == scenes.index(scene)
        return (np.asarray(cell.arrays["position_error_m"][i])[mask],
                np.asarray(cell.arrays["orientation_error_deg"][i])[mask])


# -- building ------------------------------------------------------------------------------------------------

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
            frame[col] = extra[col]
            if col not in added:
                added.append(col)
    return frame, added


def build(store: Store, manager: Any = None, fingerprints: Iterable[str] | None = None,
          filters: Iterable[str] = (), iterations: Iterable[int] | None = None) -> Board:
    """Read the cells (all, or ``fingerprints``), add ``method`` and the hook columns, keep the rows matching every
    ``KEY=GLOB`` of ``filters``. ``iterations``: the refiner iterations to show (default: those requested)."""
    files = cell_files(store, fingerprints)
    poses = _normalise(pose_rows(files, iterations))
    decoders = _normalise(decoder_rows(files))
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


# -- thresholds ------------------------------------------------------------------------------------------------

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
        if not colon or out[-1][0] <= 0 or out[-1][1] <= 0:
            raise BenchError(f"--thresholds {spec!r}: expected positive METRES:DEGREES pairs, e.g. 0.05:5,0.1:10")
    return tuple(out)




def threshold_column(m: float, d: float) -> str:
    """Machine column name of a threshold accuracy (as :func:`harness.metrics.threshold_name`)."""
    return f"acc_{m:g}m_{d:g}deg"


def recall(board: Board, row: pd.Series | dict, m: float, d: float) -> float:
    """Fraction of the row's test frames with position error <= ``m`` metres and orientation error <= ``d`` deg."""
    pos, ori = board.errors(row["cell"], row["scene"], int(row["iterations"]))
    return float(np.mean((pos <= m) & (ori <= d))) if len(pos) else float("nan")


# -- provenance --------------------------------------------------------------------------------------------------

def recipe_labels(frame: pd.DataFrame) -> pd.Series:
    """A short label per row naming the provenance that varies within ``frame`` (``quick``, ``quick, epochs=2``);
    empty when every row comes from one recipe. Keys are added in :data:`MERGE_KEYS` order until the labels tell
    every recipe apart (a differing ``--set`` explains a differing recipe fingerprint)."""
    if frame.empty:
        return pd.Series([], dtype=str)
    recipes = frame[MERGE_KEYS].drop_duplicates()
    varying = [k for k in MERGE_KEYS if recipes[k].nunique(dropna=False) > 1]
    if not varying:
        return pd.Series([""] * len(frame), index=frame.index)
    used = ["profile"]
    for key in varying:
        if recipes[used].drop_duplicates().shape[0] == len(recipes):
            break
        if key not in used:
            used.append(key)

    def one(row: pd.Series) -> str:
        parts = []
        for key in used:
            value = str(row[key])
            if key in ("recipe_fingerprint", "dataset_fingerprint", "git_commit"):
                value = f"{key.split('_')[0]} {value[:8]}" if value else ""
            elif key == "aprbench_version":
                value = f"v{value}" if value else ""
            parts.append(value)
        return ", ".join(p for p in parts if p)

    return frame.apply(one, axis=1)


def provenance_lines(frame: pd.DataFrame) -> list[str]:
    """The header line (dataset, profile, version, commit, seeds, dates) and, when the rows come from several recipes,
    one line saying so and how to select one."""
    if frame.empty:
        return []

    def values(key: str) -> str:
        vals = sorted({str(v) for v in frame[key] if str(v) not in ("", "None", "nan")}) if key in frame else []
        return ", ".join(vals) if vals else "?"

    dates = sorted(d for d in frame.get("created", pd.Series([], dtype=str)) if d)
    seeds = ",".join(str(s) for s in sorted(frame["seed"].unique()))
    head = (f"dataset {values('dataset')} · profile {values('profile')} · aprbench {values('aprbench_version')}"
            f" (git {', '.join(v[:10] for v in values('git_commit').split(', '))}) · seeds {seeds}")
    if values("precision") not in ("fp32", "?"):  # autocast results say so (fp32 is the plain run)
        head += f" · precision {values('precision')}"
    if dates:
        head += f" · {dates[0][:10]}" + (f" … {dates[-1][:10]}" if dates[-1][:10] != dates[0][:10] else "")
    lines = [head]
    recipes = frame[MERGE_KEYS].drop_duplicates()
    if len(recipes) > 1:
        varying = [k for k in MERGE_KEYS if recipes[k].nunique() > 1]
        lines.append(f"note: the store holds results of {len(recipes)} recipes (they differ in {', '.join(varying)}); "
                     f"rows are labelled by recipe; select one with --filter, e.g. --filter {varying[0]}="
                     f"{recipes[varying[0]].iloc[0] or chr(39) * 2}")
    return lines


# -- seeds ------------------------------------------------------------------------------------------------------



def _stats_frame(board: Board) -> pd.DataFrame | None:
    """``harness.stats.stats_table`` of the board's cells (the paired Δ against the teacher), computed once."""
    if board.stats is None:
        from harness import stats

        try:
            table = stats.stats_table(list(board.cells.values()))
        except BenchError as exc:
            print(f"bench: statistics unavailable ({exc})", file=sys.stderr)
            table = pd.DataFrame()
        board.stats = table
    return board.stats if not board.stats.empty else None


def stats_frame(board: Board) -> pd.DataFrame:
    """The ``stats`` view: one row per group of cells that differ only in seed, per scene: ``n_seeds``,
    ``<metric>_mean`` / ``_std`` and the paired comparison with its baseline (``harness.stats``), then the
    extra comparisons (``comparison``: student on estimates vs ground truth, refiner iteration K vs K-1)."""
    from harness import stats

    main = _stats_frame(board)
    extra = stats.extra_comparisons(list(board.cells.values()))
    parts = [f for f in (main, extra) if f is not None and not f.empty]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


# -- the scenes view --------------------------------------------------------------------------------------------

def _methods(poses: pd.DataFrame) -> Iterable[tuple[str, list[str], dict[str, Any], pd.DataFrame]]:
    """Per dataset and method (group keys + recipe, over seeds): ``(dataset, its scenes, the keys, the rows)``."""
    poses = poses.assign(recipe=recipe_labels(poses))
    keys = [*GROUP_KEYS, "recipe"]
    for dataset, part in poses.groupby("dataset", sort=False):
        scenes = list(dict.fromkeys(part["scene"]))
        for key, group in part.groupby(keys, sort=False, dropna=False):
            yield dataset, scenes, dict(zip(keys, key)), group


def scenes_frame(board: Board, poses: pd.DataFrame | None = None) -> pd.DataFrame:
    """Tidy numbers of the scenes view: one row per method (over seeds) and scene, plus ``scene = "Average"`` rows
    (per seed: the mean of the per-scene medians over every scene of the dataset; then mean over seeds).

    Columns: the group keys, ``recipe``, ``scene``, ``n_seeds``, ``median_m``/``median_deg`` (mean over seeds),
    ``median_m_std``/``median_deg_std``, ``stored_bytes`` (int), ``ms_per_frame``, hook columns, and ``delta_*``
    columns when :mod:`harness.stats` provides them.
    """
    poses = board.poses if poses is None else poses
    if poses.empty:
        return pd.DataFrame()
    rows = []
    for dataset, scenes, base, group in _methods(poses):
        common = {"stored_bytes": int(round(group["stored_bytes"].mean())),
                  "ms_per_frame": float(group["ms_per_frame"].mean())}
        for col in board.hook_columns:
            vals = group[col].dropna().unique()
            common[col] = vals[0] if len(vals) == 1 else (
                float(np.mean(vals)) if len(vals) and all(np.isreal(v) for v in vals) else ", ".join(map(str, vals)))
        for scene, at in group.groupby("scene", sort=False):
            m, sm, n = mean_std(at["median_m"])
            dg, sd, _ = mean_std(at["median_deg"])
            rows.append({**base, "scene": scene, "n_seeds": n, "median_m": m, "median_m_std": sm,
                         "median_deg": dg, "median_deg_std": sd, "seeds": ",".join(map(str, sorted(at["seed"]))),
                         **common})
        per_seed = group.groupby("seed").filter(lambda s: set(s["scene"]) >= set(scenes))
        if not per_seed.empty:
            avg = per_seed.groupby("seed")[["median_m", "median_deg"]].mean()
            m, sm, n = mean_std(avg["median_m"])
            dg, sd, _ = mean_std(avg["median_deg"])
            rows.append({**base, "scene": "Average", "n_seeds": n, "median_m": m, "median_m_std": sm,
                         "median_deg": dg, "median_deg_std": sd,
                         "seeds": ",".join(map(str, sorted(avg.index))), **common})
    frame = pd.DataFrame(rows)
    stats = _stats_frame(board)
    if stats is not None:
        on = [c for c in ["dataset", "scene", "method", "fraction", "teacher_scenes", *MERGE_KEYS]
              if c in stats and c in frame]
        deltas = [c for c in stats.columns if c.startswith("delta_") or c == "baseline"]
        stats = stats[on + deltas].copy()
        for c in on:
            stats[c] = stats[c].astype(frame[c].dtype, errors="ignore")
        frame = frame.merge(stats.drop_duplicates(on), on=on, how="left")
    return frame
















def _row_label(frame: pd.DataFrame) -> pd.Series:
    """The method name, with ``@scenes`` or the training fraction where two rows would otherwise look alike."""
    labels = frame["method"].astype(str).copy()
    for method, idx in frame.groupby("method").groups.items():
        part = frame.loc[idx]
        if part["teacher_scenes"].nunique() > 1:
            labels.loc[idx] = labels.loc[idx] + " @" + part["teacher_scenes"].astype(str)
    frac = frame["fraction"].astype(float)
    labels = labels.where(frac == 1.0, labels + " (" + (frac * 100).map(lambda f: f"{f:g}") + " % train)")
    return labels


def scenes_table(board: Board, fmt: str, sort: str | None = None, published: bool = False,
                 poses: pd.DataFrame | None = None) -> list[tuple[str, pd.DataFrame]]:
    """The human scenes view: per dataset ``(title, table of strings)``; published rows (if asked) in their own table."""
    marks = Marks(fmt)
    tidy = scenes_frame(board, poses)
    if tidy.empty:
        return []
    units = fmt != "latex"
    out = []
    for dataset, part in tidy.groupby("dataset", sort=False):
        scenes = [s for s in dict.fromkeys(part["scene"]) if s != "Average"]
        keys = [*GROUP_KEYS, "recipe"]
        methods = part.drop_duplicates(keys)[keys + ["stored_bytes", "ms_per_frame", *board.hook_columns]]
        methods = methods.reset_index(drop=True)
        methods["label"] = _row_label(methods)
        cols = scenes + ["Average"]
        cell = {(tuple(r[k] for k in keys), r["scene"]): r for _, r in part.iterrows()}
        best = {}
        for s in cols:
            at = part[part["scene"] == s]
            best[s] = (_best(at["median_m"], "min"), _best(at["median_deg"], "min"))
        best_mb, best_ms = _best(methods["stored_bytes"], "min"), _best(methods["ms_per_frame"], "min")
        if sort:
            methods = _sort_methods(methods, part, keys, sort, scenes)
        table = []
        for _, mrow in methods.iterrows():
            key = tuple(mrow[k] for k in keys)
            line = {("method" if fmt != "latex" else "Method"): marks.esc(mrow["label"])}
            if (methods["recipe"] != "").any():
                line["recipe"] = marks.esc(mrow["recipe"])
            for s in cols:
                r = cell.get((key, s))
                line[_scene_header(s, units, marks)] = "" if r is None else _pair_text(
                    r, marks, r["median_m"] == best[s][0], r["median_deg"] == best[s][1], units)
            mb = fmt_mb(mrow["stored_bytes"])
            ms = f"{mrow['ms_per_frame']:.1f}"
            line["stored (MB)"] = marks.bold(mb) if mrow["stored_bytes"] == best_mb else mb
            line["ms/frame"] = marks.bold(ms) if mrow["ms_per_frame"] == best_ms else ms
            for col in board.hook_columns:
                line[marks.esc(col)] = marks.esc(_short(mrow[col]))
            table.append(line)
        out.append((str(dataset), pd.DataFrame(table)))
        if published:
            out.append(_published_table(str(dataset), scenes, marks))
    return out












def _sort_methods(methods: pd.DataFrame, part: pd.DataFrame, keys: list[str], sort: str,
                  scenes: list[str]) -> pd.DataFrame:
    desc, col = sort.startswith("-"), sort.lstrip("-")
    names = {"method": "label", "stored_bytes": "stored_bytes", "mb": "stored_bytes", "ms_per_frame": "ms_per_frame",
             "ms/frame": "ms_per_frame"}
    if col in names:
        by = methods[names[col]]
    else:
        if col in ("median_m", "median_deg"):  # the Average column's metres or degrees
            col = "average" + (":deg" if col == "median_deg" else "")
        scene = {s.lower(): s for s in [*scenes, "Average"]}.get(col.lower().removesuffix(":deg"))
        if scene is None and col not in methods:
            allowed = ", ".join(["method", "mb", "ms_per_frame", *scenes, "average", "SCENE:deg", "median_m",
                                 "median_deg"])
            raise BenchError(f"--sort {sort!r}: not a column of the scenes view; choose one of {allowed}")
        if scene is None:
            by = methods[col]
        else:
            metric = "median_deg" if col.lower().endswith(":deg") else "median_m"
            at = part[part["scene"] == scene].set_index(keys)[metric]
            by = pd.Series([at.get(tuple(r[k] for k in keys), np.nan) for _, r in methods.iterrows()],
                           index=methods.index)
    order = by.sort_values(ascending=not desc, kind="stable", na_position="last").index
    return methods.loc[order]


# -- the cells view -------------------------------------------------------------------------------------------

def cells_frame(board: Board, thresholds: Sequence[tuple[float, float]] | None = None,
                poses: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every column, one row per cell, scene and iteration, plain numbers; plus ``acc_*`` columns for
    ``thresholds`` (computed from the per-frame errors) when given."""
    frame = (board.poses if poses is None else poses).copy()
    if frame.empty or not thresholds:
        return frame
    for m, d in thresholds:
        col = threshold_column(m, d)
        frame[col] = [recall(board, r, m, d) for _, r in frame.iterrows()]
    return frame




def cells_table(board: Board, fmt: str, columns: str | None = None, poses: pd.DataFrame | None = None,
                sort: str | None = None) -> pd.DataFrame:
    """The human cells view: seeds of one recipe merged (``mean ± std``), compact columns unless ``columns``
    (``all`` or ``a,b,c`` of the machine names)."""
    poses = board.poses if poses is None else poses
    if poses.empty:
        return pd.DataFrame()
    marks = Marks(fmt)
    thresholds: dict[tuple[str, str], tuple] = {}
    for (dataset, scene), _ in poses.groupby(["dataset", "scene"], sort=False):
        thresholds[(dataset, scene)] = scene_thresholds(board, dataset, scene)
    convention = list(dict.fromkeys(t for ts in thresholds.values() for t in ts))
    frame = cells_frame(board, convention, poses)
    frame["recipe"] = recipe_labels(frame)
    for (dataset, scene), ts in thresholds.items():  # other conventions' accuracies stay blank
        mask = (frame["dataset"] == dataset) & (frame["scene"] == scene)
        for t in convention:
            if t not in ts:
                frame.loc[mask, threshold_column(*t)] = np.nan
    if columns in (None, ""):
        wanted = [*CELL_COLUMNS, *(threshold_column(*t) for t in convention), "ms_per_frame", "stored_bytes"]
        wanted += ["recipe"] if (frame["recipe"] != "").any() else []
        wanted += board.hook_columns
    elif columns == "all":
        wanted = [c for c in frame.columns if c not in ("cell",)]
    else:
        wanted = [c.strip() for c in columns.split(",") if c.strip()]
        unknown = [c for c in wanted if c not in frame]
        if unknown:
            close = difflib.get_close_matches(unknown[0], list(frame.columns), n=3)
            raise BenchError(f"--columns: no column {unknown[0]!r}" + (f"; did you mean {', '.join(close)}?" if close
                             else f"; columns: {', '.join(frame.columns)}"))
    keys = [c for c in [*GROUP_KEYS, "scene", "recipe"] if c in frame]
    rows = []
    for _, group in frame.groupby(keys, sort=False, dropna=False):
        line = {}
        for col in wanted:
            vals = group[col]
            if col == "seed":
                line[col] = ",".join(map(str, sorted(vals)))
            elif pd.api.types.is_numeric_dtype(vals) and not pd.api.types.is_bool_dtype(vals):
                line[col] = _number(col, vals)
            else:
                line[col] = ", ".join(dict.fromkeys(_text(v) for v in vals))
        line["_sort"] = group.iloc[0]
        rows.append(line)
    if sort:
        desc, col = sort.startswith("-"), sort.lstrip("-")
        if col not in frame:
            raise BenchError(f"--sort {sort!r}: not a column; columns: {', '.join(frame.columns)}")
        rows.sort(key=lambda r: (pd.isna(r["_sort"][col]), r["_sort"][col]), reverse=desc)
        if desc:  # keep blanks last
            rows.sort(key=lambda r: pd.isna(r["_sort"][col]))
    table = pd.DataFrame([{k: v for k, v in r.items() if k != "_sort"} for r in rows])
    headers = {c: _cell_header(c, fmt) for c in table.columns}
    table = table.map(marks.esc) if fmt in ("latex", "html") else table
    return table.rename(columns=headers)






# -- the recall view ----------------------------------------------------------------------------------------------

def recall_frame(board: Board, thresholds: Sequence[tuple[float, float]] | None = None,
                 poses: pd.DataFrame | None = None) -> pd.DataFrame:
    """Tidy recall: one row per method (over seeds), scene and threshold, plus ``scene = "Average"`` rows:
    group keys, ``recipe``, ``threshold_m``, ``threshold_deg``, ``recall`` (0-1, mean over seeds), ``recall_std``,
    ``n_seeds``. ``thresholds``: for every scene (default: each scene's convention)."""
    poses = board.poses if poses is None else poses
    if poses.empty:
        return pd.DataFrame()
    rows = []
    for dataset, scenes, base, group in _methods(poses):
        per_scene = {s: tuple(thresholds) if thresholds else scene_thresholds(board, dataset, s) for s in scenes}
        shared = per_scene[scenes[0]] if len(set(per_scene.values())) == 1 else None
        by_seed: dict[tuple[float, float], dict[int, list[float]]] = {}
        for scene, at in group.groupby("scene", sort=False):
            for m, d in per_scene[scene]:
                vals = {int(r["seed"]): recall(board, r, m, d) for _, r in at.iterrows()}
                mean, std, n = mean_std(vals.values())
                rows.append({**base, "scene": scene, "threshold_m": m, "threshold_deg": d, "recall": mean,
                             "recall_std": std, "n_seeds": n})
                for seed, v in vals.items():
                    by_seed.setdefault((m, d), {}).setdefault(seed, []).append(v)
        if shared is not None:
            for (m, d), seeds in by_seed.items():
                full = [np.mean(v) for v in seeds.values() if len(v) == len(scenes)]
                if full:
                    mean, std, n = mean_std(full)
                    rows.append({**base, "scene": "Average", "threshold_m": m, "threshold_deg": d, "recall": mean,
                                 "recall_std": std, "n_seeds": n})
    return pd.DataFrame(rows)


def recall_table(board: Board, fmt: str, thresholds: Sequence[tuple[float, float]] | None = None,
                 poses: pd.DataFrame | None = None) -> list[tuple[str, pd.DataFrame]]:
    """The human recall view: per dataset, a row per method, a column per scene (and Average) holding the
    percentages within each threshold, ``a / b / c``, thresholds named in the header."""
    marks = Marks(fmt)
    tidy = recall_frame(board, thresholds, poses)
    if tidy.empty:
        return []
    keys = [*GROUP_KEYS, "recipe"]
    out = []
    for dataset, part in tidy.groupby("dataset", sort=False):
        methods = part.drop_duplicates(keys)[keys].reset_index(drop=True)
        methods["label"] = _row_label(methods)
        scenes = list(dict.fromkeys(part["scene"]))
        best = part.groupby(["scene", "threshold_m", "threshold_deg"])["recall"].agg(lambda v: _best(v, "max"))
        table = []
        for _, mrow in methods.iterrows():
            line = {"method": marks.esc(mrow["label"])}
            if (methods["recipe"] != "").any():
                line["recipe"] = marks.esc(mrow["recipe"])
            mine = part.set_index(keys).loc[[tuple(mrow[k] for k in keys)]] if len(keys) else part
            for s in scenes:
                at = part[(part["scene"] == s)]
                ts = list(dict.fromkeys(zip(at["threshold_m"], at["threshold_deg"])))
                header = f"{s} ({' / '.join(threshold_label(m, d) for m, d in ts)}, %)"
                vals = []
                for m, d in ts:
                    r = mine[(mine["scene"] == s) & (mine["threshold_m"] == m) & (mine["threshold_deg"] == d)]
                    if r.empty:
                        vals.append("–")
                        continue
                    v = float(r["recall"].iloc[0])
                    txt = f"{100 * v:.1f}"
                    vals.append(marks.bold(txt) if v == best.get((s, m, d)) else txt)
                line[marks.esc(header)] = " / ".join(vals)
            table.append(line)
        out.append((str(dataset), pd.DataFrame(table)))
    return out


# -- decoders ---------------------------------------------------------------------------------------------------

def decoders_table(board: Board, fmt: str) -> pd.DataFrame:
    """Decoder cells for people: method, decoder, scenes, PSNR (dB) and SSIM per split, MB."""
    dec = board.decoders
    if dec.empty:
        return dec
    marks = Marks(fmt)
    cols = {"method": "method", "decoder": "decoder", "scene": "scenes"}
    table = dec[list(cols)].rename(columns=cols).copy()
    for split in ("train", "test"):
        if f"{split}_psnr" in dec:
            table[f"{split} PSNR (dB)"] = dec[f"{split}_psnr"].map(lambda v: f"{v:.2f}")
        if f"{split}_ssim" in dec:
            table[f"{split} SSIM"] = dec[f"{split}_ssim"].map(lambda v: f"{v:.3f}")
    if "stored_bytes" in dec:
        table["MB"] = dec["stored_bytes"].map(fmt_mb)
    labels = recipe_labels(dec)
    if (labels != "").any():
        table["recipe"] = labels
    return table.map(marks.esc).rename(columns=marks.esc) if fmt in ("latex", "html") else table


# -- rendering ----------------------------------------------------------------------------------------------------











def machine_frame(board: Board, view: str | None, thresholds=None, published: bool = False,
                  poses: pd.DataFrame | None = None) -> pd.DataFrame:
    """The table a machine format writes for ``view`` (default ``cells``: one row per cell, every column)."""
    poses = board.poses if poses is None else poses
    if view in (None, "cells"):
        frame = cells_frame(board, thresholds, poses).drop(columns=[], errors="ignore")
        frame.insert(len(frame.columns), "published", False)
    elif view == "scenes":
        frame = scenes_frame(board, poses)
        frame["published"] = False
    elif view == "stats":
        return stats_frame(board)
    else:
        frame = recall_frame(board, thresholds, poses)
        frame["published"] = False
    if published and not frame.empty and view != "recall":
        scenes = {d: list(dict.fromkeys(p["scene"])) for d, p in poses.groupby("dataset", sort=False)}
        pub = published_frame(scenes)
        if not pub.empty:
            frame = pd.concat([frame, pub], ignore_index=True)
    return frame


def _stats_text(frame: pd.DataFrame) -> pd.DataFrame:
    """The stats view for people: method, scene, n, mean ± std of the medians, Δ [95 % CI] and p against the baseline."""
    if frame.empty:
        return frame
    out = pd.DataFrame({"comparison": frame.get("comparison", pd.Series("vs teacher", index=frame.index)).fillna("vs teacher"),
                        "method": frame["method"], "scene": frame["scene"], "n": frame["n_seeds"]})
    for metric, unit in (("median_m", "m"), ("median_deg", "°")):
        if f"{metric}_mean" in frame:
            out[f"{metric} ({unit})"] = [f"{m:.3f} ± {s:.3f}" if s == s else f"{m:.3f}"
                                         for m, s in zip(frame[f"{metric}_mean"], frame[f"{metric}_std"])]
    out["baseline"] = frame["baseline"].fillna("")
    for part, unit in (("position", "m"), ("orientation", "°")):
        d, lo, hi, p = (frame[f"delta_{part}{suffix}"] for suffix in ("_m" if part == "position" else "_deg",
                                                                      "_ci_low", "_ci_high", "_p"))
        out[f"Δ {part} ({unit}) [95 % CI], p"] = [
            "" if x != x else f"{x:+.3f} [{a:+.3f}, {b:+.3f}]{'*' if a > 0 or b < 0 else ''}, p={q:.2g}"
            for x, a, b, q in zip(d, lo, hi, p)]
    return out


def text(board: Board, view: str | None = None, fmt: str = "github", sort: str | None = None,
         group_by: str | None = None, columns: str | None = None, thresholds: str | None = None,
         published: bool = False, decoders: bool = True, header: bool = True) -> str:
    """The leaderboard as text in ``fmt`` (github, plain, html, latex, csv, json) for ``view``
    (scenes, cells, recall; default scenes for people and cells for machines)."""
    if fmt not in FORMATS:
        raise BenchError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if view is not None and view not in VIEWS:
        raise BenchError(f"--view {view!r}: expected one of {', '.join(VIEWS)}")
    ts = parse_thresholds(thresholds)
    if board.poses.empty and board.decoders.empty:
        return "(no cells in the store match: run `bench run` first, or loosen --filter)"
    if group_by and not board.poses.empty and group_by not in board.poses:
        raise BenchError(f"--group-by {group_by!r}: not a column; columns: {', '.join(board.poses.columns)}")
    if fmt in MACHINE_FORMATS:
        if board.poses.empty:
            return render_machine(board.decoders, fmt, sort)
        frame = machine_frame(board, view, ts, published)
        if columns and columns != "all":
            wanted = [c.strip() for c in columns.split(",") if c.strip()]
            missing = [c for c in wanted if c not in frame]
            if missing:
                raise BenchError(f"--columns: no column {missing[0]!r}; columns: {', '.join(frame.columns)}")
            frame = frame[wanted]
        return render_machine(frame, fmt, sort)
    parts = provenance_lines(board.poses if not board.poses.empty else board.decoders) if header else []
    out = [_with_notes(fmt, parts)] if parts else []
    groups = [(None, board.poses)] if not group_by else [
        (f"{group_by} = {value}", part) for value, part in board.poses.groupby(group_by, sort=True)]
    view = view or "scenes"
    for heading, poses in groups:
        if poses.empty:
            continue
        if heading:
            out.append(_title(heading, fmt))
        if view == "cells":
            out.append(render_table(cells_table(board, fmt, columns, poses, sort), fmt))
            continue
        if view == "stats":
            out.append(render_table(_stats_text(stats_frame(board)), fmt))
            continue
        tables = scenes_table(board, fmt, sort, published, poses) if view == "scenes" else \
            recall_table(board, fmt, ts, poses)
        for title, table in tables:
            out.append(_title(title, fmt))
            out.append(render_table(table, fmt) if not table.empty else "(no published results for these scenes)")
            if table.attrs.get("footnotes"):
                out.append(_with_notes(fmt, table.attrs["footnotes"]))
        if view == "scenes" and fmt != "latex" and "delta_position_m" in scenes_frame(board, poses):
            out.append(_with_notes(fmt, ["Δ: against the teacher (negative is better); * its 95 % interval "
                                         "excludes zero"]))
        if view == "scenes" and fmt != "latex":
            out.append(_with_notes(fmt, [MS_NOTE]))
    if decoders and not board.decoders.empty:
        out.append(_title("decoders", fmt))
        out.append(render_table(decoders_table(board, fmt), fmt))
    return "\n\n".join(out)


MS_NOTE = ("ms/frame: median of 5 timed passes after 2 warm-ups at the teacher's evaluation batch (eval_batch_size, "
           "64 unless set); a student row adds its PAE, a refiner row k steps to the teacher's forward pass")


def show(store: Store, manager: Any = None, fingerprints: Iterable[str] | None = None, fmt: str = "github",
         file: io.TextIOBase | None = None, **options: Any) -> Board:
    """Build the board and print it (what ``bench run`` prints after a run); returns the board."""
    board = build(store, manager, fingerprints)
    print(text(board, fmt=fmt, **options), file=file or sys.stdout)
    return board


__all__ = ["Board", "build", "text", "show", "scenes_frame", "cells_frame", "recall_frame", "published_frame",
           "scene_thresholds", "parse_thresholds", "parse_filters", "apply_hooks", "IDENTITY_COLUMNS"]
