"""Provenance labels: what separates rows of one method (recipe, overrides, plugin versions, precision, device)."""

from __future__ import annotations

import pandas as pd

from aprbench.harness.results.leaderboard.board import MERGE_KEYS
from aprbench.harness.store.cells import MODEL_KINDS


def models_label(frame: pd.DataFrame, row: pd.Series) -> str:
    """The models of ``row`` whose fingerprint differs from another row's model of the same name in ``frame``,
    with their plugin versions (``myapr v2``), or their fingerprint when the versions are equal."""
    parts = []
    for kind in MODEL_KINDS:
        fp_col, name = f"{kind}_fingerprint", row.get(kind, kind) if kind != "decoder" else row.get("decoder", kind)
        if fp_col not in frame or not row.get(fp_col):
            continue
        same_name = frame[frame[kind] == name] if kind in frame else frame
        if same_name[fp_col].nunique() < 2:
            continue
        version = str(row.get(f"{kind}_version", ""))
        versions = same_name.loc[same_name[fp_col] != row[fp_col], f"{kind}_version"].astype(str)
        if version and not (versions == version).any():
            parts.append(f"{name} {version if version.startswith('src:') else 'v' + version}")
        else:
            parts.append(f"{name} {row[fp_col][:8]}")
    return " ".join(parts) or f"models {str(row.get('models_fingerprint', ''))[:8]}"


SAME_ROW = ["dataset", "method", "teacher_scenes", "fraction", "scene", "iterations"]  # what one row of a table is


def varying_keys(frame: pd.DataFrame) -> tuple[list[str], pd.DataFrame]:
    """``(keys, recipes)``: the :data:`MERGE_KEYS` that differ between rows of one method (same dataset, scenes,
    fraction, iterations), and the distinct recipes (those keys with the row's columns)."""
    same = [c for c in SAME_ROW if c in frame]
    recipes = frame[same + MERGE_KEYS].drop_duplicates()
    counts = recipes.groupby(same, dropna=False)[MERGE_KEYS].nunique(dropna=False) if same else \
        recipes[MERGE_KEYS].nunique(dropna=False).to_frame().T
    return [k for k in MERGE_KEYS if (counts[k] > 1).any()], recipes


def recipe_labels(frame: pd.DataFrame) -> pd.Series:
    """A short label per row naming the provenance that varies between rows of one method (``quick``,
    ``quick, epochs=2``, ``quick, myapr v2``); empty when every method comes from one recipe. Keys are added in
    :data:`MERGE_KEYS` order until the labels tell every recipe of a method apart (a differing ``--set`` explains a
    differing model fingerprint)."""
    if frame.empty:
        return pd.Series([], dtype=str)
    varying, recipes = varying_keys(frame)
    if not varying:
        return pd.Series([""] * len(frame), index=frame.index)
    same = [c for c in SAME_ROW if c in frame]
    used = ["profile"]
    for key in varying:
        if recipes[same + used].drop_duplicates().shape[0] == len(recipes):
            break
        if key not in used:
            used.append(key)

    def one(row: pd.Series) -> str:
        parts = []
        for key in used:
            value = str(row[key])
            if key == "models_fingerprint":
                value = models_label(frame, row) if value else ""
            elif key in ("dataset_fingerprint", "git_commit"):
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
    varying, recipes = varying_keys(frame)
    if varying:
        count = len(recipes[MERGE_KEYS].drop_duplicates())
        lines.append(f"note: the store holds results of {count} recipes (they differ in {', '.join(varying)}); "
                     f"rows are labelled by recipe; select one with --filter, e.g. --filter {varying[0]}="
                     f"{recipes[varying[0]].iloc[0] or chr(39) * 2}")
    return lines
