"""The recall view: the fraction of frames within each threshold, per scene and averaged."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from aprbench.harness.results.tables import Marks, _best, mean_std, threshold_label
from aprbench.harness.results.leaderboard.board import Board, GROUP_KEYS
from aprbench.harness.results.leaderboard.thresholds import recall, scene_thresholds
from aprbench.harness.results.leaderboard.scenes import _methods, row_labels


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
        methods["label"] = row_labels(methods)
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
