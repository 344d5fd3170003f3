"""The scenes view: one row per method, one column per scene (median m, median °), Average, MB, ms/frame."""

from __future__ import annotations

import json
from typing import Any, Iterable

import numpy as np
import pandas as pd

from aprbench.harness.errors import BenchError
from aprbench.harness.results.published import _published_table
from aprbench.harness.results.tables import (Marks, _best, _pair_text, _scene_header, _short, delta_text, fmt_mb,
                                              mean_std)
from aprbench.harness.results.leaderboard.board import Board, GROUP_KEYS, MERGE_KEYS, _overrides_text
from aprbench.harness.results.leaderboard.legend import cost_text, delta_legend, scenes_legend
from aprbench.harness.results.leaderboard.provenance import recipe_labels
from aprbench.harness.results.leaderboard.seeds import _stats_frame


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
    columns when :mod:`harness.results.stats` provides them.
    """
    poses = board.poses if poses is None else poses
    if poses.empty:
        return pd.DataFrame()
    rows = []
    for dataset, scenes, base, group in _methods(poses):
        common = {"stored_bytes": int(round(group["stored_bytes"].mean())), **_cost(group)}
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
        deltas = [c for c in stats.columns
                  if c.startswith("delta_") or c in ("baseline", "baseline_cells", "ci_basis", "confidence")]
        stats = stats[on + deltas].copy()
        if "overrides" in on:  # grouped as JSON text of the stored record; the board shows it as k=v,…
            stats["overrides"] = stats["overrides"].map(
                lambda v: _overrides_text(json.loads(v)) if str(v)[:1] in "{[" and v else v)
        for c in on:
            stats[c] = stats[c].astype(frame[c].dtype, errors="ignore")
        frame = frame.merge(stats.drop_duplicates(on), on=on, how="left")
    return frame


def _cost(group: pd.DataFrame) -> dict[str, Any]:
    """A method's ms/frame over its cells (seeds, scenes): the median of the cells' figures; when every cell was
    re-measured quietly, ``ms_per_frame_spread`` is half the range of all their repeats."""
    quiet = bool(group.get("ms_quiet", pd.Series(False, index=group.index)).all())
    out = {"ms_per_frame": float(group["ms_per_frame"].median()), "ms_quiet": quiet, "ms_per_frame_spread": np.nan}
    if quiet:
        out["ms_per_frame_spread"] = float(group["ms_per_frame_max"].max() - group["ms_per_frame_min"].min()) / 2
    return out


def row_labels(frame: pd.DataFrame) -> pd.Series:
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
    """The human scenes view: per dataset ``(title, table of strings)`` (``table.attrs["legend"]``: its legend
    lines); published rows (if asked) in their own table (``attrs["footnotes"]``: sources and caveats)."""
    marks = Marks(fmt)
    tidy = scenes_frame(board, poses)
    if tidy.empty:
        return []
    out = []
    for dataset, part in tidy.groupby("dataset", sort=False):
        scenes = [s for s in dict.fromkeys(part["scene"]) if s != "Average"]
        table = _dataset_table(board, part, marks, sort, scenes)
        table.attrs["legend"] = scenes_legend(part, fmt)
        out.append((str(dataset), table))
        if published:
            out.append(_published_table(str(dataset), scenes, marks))
    return out


def _dataset_table(board: Board, part: pd.DataFrame, marks: Marks, sort: str | None, scenes: list[str]) -> pd.DataFrame:
    """One dataset's rows: method (recipe), a ``m, °`` cell per scene and Average, stored MB, ms/frame."""
    fmt, units = marks.fmt, False  # units in the header, the same cell text in every format
    keys = [*GROUP_KEYS, "recipe"]
    extra = [c for c in ("ms_per_frame_spread", "ms_quiet") if c in part]
    methods = part.drop_duplicates(keys)[keys + ["stored_bytes", "ms_per_frame", *extra, *board.hook_columns]]
    methods = methods.reset_index(drop=True)
    methods["label"] = row_labels(methods)
    methods["recipe_label"] = _distinct_parts(methods["recipe"])
    cols = scenes + ["Average"]
    cell = {(tuple(r[k] for k in keys), r["scene"]): r for _, r in part.iterrows()}
    best = {}
    for s in cols:
        at = part[part["scene"] == s]
        best[s] = (_best(at["median_m"], "min"), _best(at["median_deg"], "min"))
    best_mb, best_ms = _best(methods["stored_bytes"], "min"), _best(methods["ms_per_frame"], "min")
    n_seeds = part.groupby(keys, sort=False, dropna=False)["n_seeds"].max()
    if sort:
        methods = _sort_methods(methods, part, keys, sort, scenes)
    table = []
    for _, mrow in methods.iterrows():
        key = tuple(mrow[k] for k in keys)
        line = {("method" if fmt != "latex" else "Method"): marks.esc(mrow["label"])}
        if (methods["recipe"] != "").any():
            line["recipe"] = marks.esc(mrow["recipe_label"])
        if n_seeds.nunique() > 1:
            line["n"] = str(int(n_seeds.loc[key]))
        for s in cols:
            r = cell.get((key, s))
            line[_scene_header(s, units, marks)] = "" if r is None else _pair_text(
                r, marks, r["median_m"] == best[s][0], r["median_deg"] == best[s][1], units)
        mb = fmt_mb(mrow["stored_bytes"])
        ms = marks.esc(cost_text(mrow))
        line["MB"] = marks.bold(mb) if mrow["stored_bytes"] == best_mb else mb
        line["ms/frame"] = marks.bold(ms) if mrow["ms_per_frame"] == best_ms else ms
        for col in board.hook_columns:
            line[marks.esc(col)] = marks.esc(_short(mrow[col]))
        table.append(line)
    return pd.DataFrame(table)


def _distinct_parts(labels: pd.Series) -> pd.Series:
    """Recipe labels without the parts every row shares (``quick, teacher.epochs=2`` / ``quick`` -> ``teacher.epochs=2``
    / ``-``); unchanged when that would leave nothing to tell apart."""
    parts = labels.map(lambda t: [p for p in str(t).split(", ") if p])
    common = set.intersection(*(set(p) for p in parts)) if len(parts) else set()
    short = parts.map(lambda ps: ", ".join(p for p in ps if p not in common) or "-")
    return short if short.nunique() == labels.nunique() else labels


def deltas_table(board: Board, fmt: str, poses: pd.DataFrame | None = None) -> list[tuple[str, pd.DataFrame]]:
    """Per dataset, the Δ of every row that has a baseline against it, a column per scene (``−0.01* m, +0.3°``);
    ``attrs["legend"]``: :func:`.legend.delta_legend`. Empty when no row has a Δ."""
    marks = Marks(fmt)
    tidy = scenes_frame(board, poses)
    if tidy.empty or "delta_position_m" not in tidy or not tidy["delta_position_m"].notna().any():
        return []
    units = False  # in the header
    keys = [*GROUP_KEYS, "recipe"]
    out = []
    for dataset, part in tidy.groupby("dataset", sort=False):
        part = part[part["scene"] != "Average"]
        with_delta = part[part["delta_position_m"].notna()]
        if with_delta.empty:
            continue
        methods = with_delta.drop_duplicates(keys).reset_index(drop=True)
        labels = row_labels(methods)
        recipes = list(dict.fromkeys(part["recipe"]))  # labelled as in the scenes table above
        recipe_label = dict(zip(recipes, _distinct_parts(pd.Series(recipes))))
        rows = []
        for (_, mrow), label in zip(methods.iterrows(), labels):
            mine = part[(part[keys] == mrow[keys]).all(axis=1)]
            line = {("method" if fmt != "latex" else "Method"): marks.esc(label)}
            if (part["recipe"] != "").any():
                line["recipe"] = marks.esc(recipe_label[mrow["recipe"]])
            line["baseline"] = marks.esc(mrow.get("baseline", ""))
            for scene in dict.fromkeys(part["scene"]):
                r = mine[mine["scene"] == scene]
                line[_scene_header(scene, units, marks)] = "" if r.empty else delta_text(r.iloc[0], marks, units)
            rows.append(line)
        table = pd.DataFrame(rows)
        table.attrs["legend"] = delta_legend(_stats_frame(board))
        out.append((f"{dataset}: Δ against the baseline", table))
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
