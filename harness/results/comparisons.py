"""The paired comparisons behind the leaderboard's Δ columns, ``--view stats`` and ``bench compare``.

* :func:`stats_table`: one row per group of cells that differ only in seed, and scene, compared with its teacher
  (the teacher cell of the same setting, :mod:`harness.results.baselines`).
* :func:`extra_comparisons`: student trained on estimates vs on ground truth; refiner iteration K vs K−1.
* :func:`compare_methods`: ``bench compare A B``.
* :func:`adjust`: Holm-adjusted p-values over one table's comparisons (position and orientation alike) and the
  equivalence verdicts when a margin is given.

Inference (seed-level with several seeds, frames-only with one) is :func:`harness.results.stats.paired_delta`.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd

from aprbench.harness.errors import BenchError
from aprbench.harness.results import baselines
from aprbench.harness.results.stats import (DEFAULT_RESAMPLES, Delta, Margin, compare_frames, frame_errors,
                                            group_over_seeds, holm, tost, align)
from aprbench.harness.store.cells import CellFile, identity, method_name, pose_rows

QUANTITIES = (("position", "m"), ("orientation", "deg"))
EQUIVALENT, NOT_SHOWN = "equivalent", "not shown"


def delta_columns(margin: Margin | None = None) -> list[str]:
    """The comparison columns of a stats row, in order (margin columns only with a margin)."""
    cols = ["baseline", "baseline_cells", "ci_basis", "confidence"]
    for q, u in QUANTITIES:
        cols += [f"delta_{q}_{u}", f"delta_{q}_ci_low", f"delta_{q}_ci_high", f"delta_{q}_p", f"delta_{q}_p_adj",
                 f"delta_{q}_seeds"]
        if margin is not None:
            cols += [f"margin_{q}_{u}", f"tost_{q}_p", f"tost_{q}_p_adj", f"equivalence_{q}"]
    return cols


def _per_seed_text(values: Iterable[float]) -> str:
    return ",".join(repr(float(v)) for v in values)


def comparison_columns(baseline: str, cells: str, pos: Delta | None, ori: Delta | None,
                       margin: Margin | None) -> dict[str, Any]:
    """The :func:`delta_columns` of one comparison (NaN / "" without one); ``*_p_adj`` and ``equivalence_*`` are
    filled by :func:`adjust`."""
    nan = float("nan")
    first = pos or ori
    row: dict[str, Any] = {"baseline": baseline, "baseline_cells": cells, "ci_basis": first.basis if first else "",
                           "confidence": first.confidence if first else nan}
    for (q, u), d in zip(QUANTITIES, (pos, ori)):
        row.update({f"delta_{q}_{u}": d.delta if d else nan, f"delta_{q}_ci_low": d.ci_low if d else nan,
                    f"delta_{q}_ci_high": d.ci_high if d else nan, f"delta_{q}_p": d.p_value if d else nan,
                    f"delta_{q}_p_adj": nan, f"delta_{q}_seeds": _per_seed_text(d.per_seed) if d else ""})
        if margin is not None:
            value = margin.value(q, d.baseline_median) if d else nan
            row.update({f"margin_{q}_{u}": value, f"tost_{q}_p": tost(d, value) if d else nan,
                        f"tost_{q}_p_adj": nan, f"equivalence_{q}": ""})
    return row


def adjust(frame: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Holm over every comparison of ``frame`` (each row's position and orientation p-values form one family),
    written to ``delta_*_p_adj``; with margin columns, Holm over the TOST p-values the same way and
    ``equivalence_*`` = "equivalent" (adjusted TOST p < ``alpha``) or "not shown"."""
    if frame.empty or "delta_position_p" not in frame:
        return frame
    frame = frame.copy()
    for prefix in ("delta", "tost"):
        cols = [f"{prefix}_{q}_p" for q, _ in QUANTITIES]
        if not all(c in frame for c in cols):
            continue
        stacked = np.concatenate([frame[c].to_numpy(dtype=np.float64) for c in cols])
        adjusted = holm(stacked).reshape(len(cols), len(frame))
        for c, values in zip(cols, adjusted):
            frame[f"{c}_adj"] = values
        if prefix == "tost":
            for (q, _), values in zip(QUANTITIES, adjusted):
                frame[f"equivalence_{q}"] = [("" if not np.isfinite(v) else EQUIVALENT if v < alpha else NOT_SHOWN)
                                             for v in values]
    return frame


def family_size(frame: pd.DataFrame, prefix: str = "delta") -> int:
    """How many p-values :func:`adjust` adjusted together (finite ones)."""
    cols = [f"{prefix}_{q}_p" for q, _ in QUANTITIES if f"{prefix}_{q}_p" in frame]
    return int(sum(np.isfinite(frame[c].to_numpy(dtype=np.float64)).sum() for c in cols)) if cols else 0


# ---------------------------------------------------------------- vs the teacher

def _group_frames(members: list[CellFile], iteration: int) -> pd.DataFrame:
    return pd.concat([frame_errors(c, iteration) for c in members], ignore_index=True)


def _grouped(cells: list[CellFile], iterations: Iterable[int] | None,
             keep: set[tuple[str, str, int]] | None) -> pd.DataFrame:
    rows = pose_rows(cells, iterations)
    if keep is not None and not rows.empty:
        mask = [(str(c), str(s), int(k)) in keep for c, s, k in zip(rows["cell"], rows["scene"], rows["iterations"])]
        rows = rows[np.asarray(mask, dtype=bool)].reset_index(drop=True)
    return group_over_seeds(rows)


def _is(value: Any) -> bool:
    return value not in ("-", "", None)


def stats_table(cells: list[CellFile], iterations: Iterable[int] | None = None, *, store: list[CellFile] | None = None,
                keep: set[tuple[str, str, int]] | None = None, margin: Margin | None = None,
                confidence: float = 0.95, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> pd.DataFrame:
    """One row per group (every column but the seed equal) and scene of the selected ``cells``: the group's
    columns from :func:`group_over_seeds`, ``method``, and the comparison with its teacher (:func:`delta_columns`;
    empty for a teacher row or when a seed's teacher cell is missing). ``keep``: only these ``(cell, scene,
    iteration)`` rows (the leaderboard's filtered rows); ``store``: where a teacher is looked for when the
    selection has none (default ``cells``). Student and refiner rows of seed s are compared with the teacher cell
    of seed s and the same setting (:func:`harness.results.baselines.teacher_cell`), on the row's scene's frames.
    Holm over the table's comparisons (:func:`adjust`)."""
    cells = [c for c in cells if c.kind == "pose"]
    pool = [c for c in (store if store is not None else cells) if c.kind == "pose"]
    grouped = _grouped(cells, iterations, keep)
    if grouped.empty:
        return grouped
    by_fp = {str(c.attrs["fingerprint"]): c for c in [*pool, *cells]}
    grouped.insert(0, "method", [method_name(r) for _, r in grouped.iterrows()])
    extra = []
    for _, row in grouped.iterrows():
        members = [by_fp[fp] for fp in row["cells"].split(",")]
        teachers = [] if not (_is(row["student"]) or _is(row["refiner"])) else \
            [baselines.teacher_cell(m, cells, pool) for m in members]
        if not teachers or any(t is None for t in teachers):
            extra.append(comparison_columns("", "", None, None, margin))
            continue
        k = int(row["iterations"]) if _is(row["refiner"]) else 0
        pos, ori, _ = compare_frames(_group_frames(members, k), _group_frames(teachers, 0), scene=row["scene"],
                                     confidence=confidence, n_resamples=n_resamples, seed=seed)
        extra.append(comparison_columns(method_name(identity(teachers[0])),
                                        ",".join(str(t.attrs["fingerprint"]) for t in teachers), pos, ori, margin))
    out = pd.concat([grouped, pd.DataFrame(extra, index=grouped.index)], axis=1)
    return adjust(out, 1 - confidence)


# ---------------------------------------------------------------- estimate vs ground truth, iteration K vs K-1

def _gt_twin(grouped: pd.DataFrame, row: pd.Series, members: list[CellFile],
             by_fp: dict[str, CellFile]) -> pd.Series | None:
    """The ground-truth-trained student group of ``row``'s setting (same seeds, each seed the same teacher)."""
    same = grouped[(grouped["encode"] == "ground_truth") & (~grouped["refiner"].map(_is))]
    for col in ("dataset", "teacher", "teacher_scenes", "fraction", "student", "scene", "seeds"):
        same = same[same[col] == row[col]]
    twins = [r for _, r in same.iterrows()
             if all(baselines.same_setting(m, by_fp[fp]) for m, fp in zip(members, r["cells"].split(",")))]
    if len(twins) > 1:
        baselines.pick([by_fp[t["cells"].split(",")[0]] for t in twins], f"{method_name(row)} (estimate vs gt)")
    return twins[0] if twins else None


def extra_comparisons(cells: list[CellFile], iterations: Iterable[int] | None = None, *,
                      keep: set[tuple[str, str, int]] | None = None, margin: Margin | None = None,
                      confidence: float = 0.95, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> pd.DataFrame:
    """The other paired comparisons among the selected rows, one row per pair of groups and scene:

    * ``comparison = "estimate-vs-gt"``: a student trained on teacher estimates (``method``) vs the same student
      trained on ground truth (``baseline``, the ``(gt)`` name) of the same setting and seeds.
    * ``comparison = "iteration"``: refiner iteration K (``method`` ``…@K``) vs K−1 of the same cells (for K = 1
      the baseline is iteration 0 stored in the refiner cell: the teacher's estimate, bit for bit).

    Columns: ``comparison, method, dataset, teacher_scenes, fraction, scene, n_seeds, seeds``, then
    :func:`delta_columns`; Holm over these rows alone (:func:`adjust`).
    """
    cells = [c for c in cells if c.kind == "pose"]
    grouped = _grouped(cells, iterations, keep)
    out: list[dict[str, Any]] = []
    if grouped.empty:
        return pd.DataFrame(out)
    by_fp = {str(c.attrs["fingerprint"]): c for c in cells}

    def emit(kind: str, row: pd.Series, base_name: str, base_cells: list[CellFile], cand: pd.DataFrame,
             base: pd.DataFrame) -> None:
        pos, ori, _ = compare_frames(cand, base, scene=row["scene"], confidence=confidence,
                                     n_resamples=n_resamples, seed=seed)
        fps = ",".join(str(c.attrs["fingerprint"]) for c in base_cells)
        out.append({"comparison": kind, "method": method_name(row), **{k: row[k] for k in (
            "dataset", "teacher_scenes", "fraction", "scene", "n_seeds", "seeds")},
            **comparison_columns(base_name, fps, pos, ori, margin)})

    for _, row in grouped.iterrows():
        members = [by_fp[fp] for fp in row["cells"].split(",")]
        if _is(row["refiner"]):
            k = int(row["iterations"])
            base_name = method_name({**row.to_dict(), "iterations": k - 1}) if k > 1 else \
                method_name({**row.to_dict(), "refiner": "-"}) + f"+{row['refiner']}@0"
            emit("iteration", row, base_name, members, _group_frames(members, k), _group_frames(members, k - 1))
        elif _is(row["student"]) and row["encode"] != "ground_truth":
            gt = _gt_twin(grouped, row, members, by_fp)
            if gt is not None:
                twins = [by_fp[fp] for fp in gt["cells"].split(",")]
                emit("estimate-vs-gt", row, method_name(gt), twins, _group_frames(members, 0), _group_frames(twins, 0))
    return adjust(pd.DataFrame(out), 1 - confidence)


# ---------------------------------------------------------------- bench compare

def _named(cells: list[CellFile], name: str) -> list[tuple[CellFile, int]]:
    """Every ``(cell, iteration)`` the leaderboard calls ``name`` (refiner cells: each stored iteration >= 1)."""
    out = []
    for cell in cells:
        if cell.kind != "pose":
            continue
        ident = identity(cell)
        ks = [k for k in cell.iterations if k >= 1] if cell.attrs["cell"].get("refiner") else [0]
        out += [(cell, k) for k in ks if method_name({**ident, "iterations": k}) == name]
    return out


def known_methods(cells: list[CellFile]) -> list[str]:
    """Every method name of the store's pose cells (all stored refiner iterations >= 1)."""
    names = set()
    for cell in cells:
        if cell.kind != "pose":
            continue
        ident = identity(cell)
        ks = [k for k in cell.iterations if k >= 1] if cell.attrs["cell"].get("refiner") else [0]
        names.update(method_name({**ident, "iterations": k}) for k in ks)
    return sorted(names)


def _setting(cell: CellFile) -> tuple:
    i = identity(cell)
    return i["dataset"], i["teacher_scenes"], i["fraction"]


def paired_cells(cells: list[CellFile], a: str, b: str) -> dict[tuple, list[tuple[CellFile, int, CellFile, int]]]:
    """Per ``(dataset, teacher_scenes, fraction)``: ``(cell of a, its iteration, cell of b, its iteration)`` per
    seed both have, b's cell of the same setting as a's (:func:`harness.results.baselines.same_setting`).
    Two cells of ``a`` (or two matching ones of ``b``) for one seed are refused, listed, never chosen by date."""
    named_b = _named(cells, b)
    by_seed: dict[tuple, list[tuple[CellFile, int]]] = {}
    for cell, k in _named(cells, a):
        by_seed.setdefault((*_setting(cell), identity(cell)["seed"]), []).append((cell, k))
    out: dict[tuple, list] = {}
    for key, found in sorted(by_seed.items(), key=lambda kv: str(kv[0])):
        what = f"{a} seed {key[3]}"
        cell = baselines.pick([c for c, _ in found], what)
        k = dict((id(c), kk) for c, kk in found)[id(cell)]
        matches = [(c, kk) for c, kk in named_b if baselines.same_setting(cell, c)]
        other = baselines.pick(list({id(c): c for c, _ in matches}.values()), f"{what} (its {b})")
        if other is not None:
            kb = [kk for c, kk in matches if c is other][0]
            out.setdefault(key[:3], []).append((cell, k, other, kb))
    return out


def compare_methods(cells: list[CellFile], a: str, b: str, confidence: float = 0.95,
                    n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                    scenes: Callable[[str], bool] | None = None,
                    margin: Margin | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Paired analysis of method ``a`` (candidate) vs ``b`` (baseline) on their common
    ``(dataset, teacher_scenes, fraction)`` settings: ``(table, frames)``.

    ``table``: one row per setting and scene plus, with several scenes, one ``scene = "all"`` row, columns
    ``dataset, teacher_scenes, fraction, scene, n_seeds, frames``, ``improved_position``/``worsened_position`` (and
    orientation; fractions of frames), then :func:`delta_columns` with Holm over this table's comparisons.
    ``frames``: the aligned per-frame errors of every setting (:func:`align`, plus the setting columns).
    ``scenes``: keep only the frames of scenes it accepts (also in the ``all`` rows).
    Unknown names raise BenchError listing the known ones.
    """
    known = known_methods(cells)
    for n in (a, b):
        if n not in known:
            raise BenchError(f"unknown method {n!r}; known: {', '.join(known) or '(none: the store has no pose cells)'}")
    pairs = paired_cells(cells, a, b)
    if not pairs:
        raise BenchError(f"{a} and {b} share no setting (dataset, scenes, fraction, seed and the models they both "
                         "name) in the store")
    rows, frames = [], []
    for key, seeds in pairs.items():
        ca = pd.concat([frame_errors(c, k) for c, k, _, _ in seeds], ignore_index=True)
        cb = pd.concat([frame_errors(c, k) for _, _, c, k in seeds], ignore_index=True)
        if scenes is not None:
            ca, cb = ca[ca["scene"].map(scenes)], cb[cb["scene"].map(scenes)]
            if ca.empty and cb.empty:
                continue
        joined = align(ca, cb)
        for i, col in enumerate(("dataset", "teacher_scenes", "fraction")):
            joined.insert(i, col, key[i])
        frames.append(joined)
        base_cells = ",".join(str(c.attrs["fingerprint"]) for _, _, c, _ in seeds)
        present = sorted(joined["scene"].unique())
        for scene in [*present, None] if len(present) > 1 else present:  # one scene: "all" would repeat it
            pos, ori, part = compare_frames(ca, cb, scene=scene, confidence=confidence,
                                            n_resamples=n_resamples, seed=seed)
            rows.append({"dataset": key[0], "teacher_scenes": key[1], "fraction": key[2], "scene": scene or "all",
                         "n_seeds": len(seeds), "frames": len(part),
                         "improved_position": pos.improved, "worsened_position": pos.worsened,
                         "improved_orientation": ori.improved, "worsened_orientation": ori.worsened,
                         **comparison_columns(b, base_cells, pos, ori, margin)})
    if not rows:
        raise BenchError(f"{a} and {b} share no scene that passed the filter")
    return adjust(pd.DataFrame(rows), 1 - confidence), pd.concat(frames, ignore_index=True)
