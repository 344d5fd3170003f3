"""Uncertainty of leaderboard numbers: aggregates over seeds and paired comparisons (``scipy.stats``).

Conventions: position errors in metres, orientation errors in degrees. A *delta* is
candidate − baseline of the median error, so a negative delta is an improvement.

* :func:`group_over_seeds` folds leaderboard rows that differ only in ``seed`` into one row
  (``n_seeds``, ``<metric>_mean``, ``<metric>_std``).
* :func:`paired_delta` compares the per-frame errors of two methods on the same frames:
  Δ median with a paired (and, over several seeds, hierarchical) bootstrap interval from
  :func:`scipy.stats.bootstrap`, and the Wilcoxon signed-rank p-value from :func:`scipy.stats.wilcoxon`.
* :func:`stats_table` is the machine-readable stats view: one row per group and scene with its
  comparison against the teacher; :func:`extra_comparisons` adds student-on-estimate vs
  student-on-ground-truth and refiner iteration K vs K-1; :func:`compare_methods` backs ``bench compare``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd
from scipy import stats as sst

from aprbench.harness.store.cells import CellFile, identity, method_name, pose_rows
from aprbench.harness.errors import BenchError
from aprbench.harness.results.metrics import THRESHOLDS, threshold_name

# per-row metric columns aggregated over seeds (when present)
METRIC_COLUMNS = ["median_m", "median_deg", "mean_m", "mean_deg",
                  *[threshold_name(m, d) for m, d in THRESHOLDS], "ms_per_frame", "scene_accuracy", "latent_mse"]
# columns that vary between seeds of one group and are neither keys nor metrics
SEED_COLUMNS = ["seed", "cell", "created"]
DELTA_COLUMNS = ["baseline", "delta_position_m", "delta_position_ci_low", "delta_position_ci_high", "delta_position_p",
                 "delta_orientation_deg", "delta_orientation_ci_low", "delta_orientation_ci_high",
                 "delta_orientation_p"]
FRAME_KEYS = ["seed", "scene", "img_path"]
DEFAULT_RESAMPLES = 2000


@dataclass
class Delta:
    """Paired comparison of two per-frame error arrays (candidate − baseline; negative = better)."""

    delta: float          # Δ median (mean over seeds of the per-seed Δ median), same unit as the errors
    ci_low: float         # lower end of the ``confidence`` bootstrap interval
    ci_high: float        # upper end
    p_value: float        # Wilcoxon signed-rank p-value of the per-frame differences (two-sided)
    improved: float       # fraction of frames whose error went down
    worsened: float       # fraction of frames whose error went up
    n_frames: int
    n_seeds: int
    confidence: float

    @property
    def significant(self) -> bool:
        """The interval excludes zero."""
        return bool(self.ci_low > 0 or self.ci_high < 0)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "significant": self.significant}


def _median_delta(c: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.median(c, axis=axis) - np.median(b, axis=axis)


def paired_delta(candidate_err: np.ndarray, baseline_err: np.ndarray, groups: np.ndarray | None = None,
                 confidence: float = 0.95, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Delta:
    """Δ median error of ``candidate_err`` vs ``baseline_err`` (same frames, same order) with its interval.

    ``groups`` labels each frame with its training seed (None: one seed). The point estimate is the mean
    over seeds of ``median(candidate) − median(baseline)`` within the seed, i.e. exactly the difference of
    the ``median_*_mean`` columns of :func:`group_over_seeds`.

    Interval, one seed: :func:`scipy.stats.bootstrap` with ``paired=True`` over the frames (a resample
    draws frame indices and takes both errors of each drawn frame, keeping the pairing), percentile method.

    Interval, several seeds: a two-stage (hierarchical) bootstrap. ``scipy.stats.bootstrap`` resamples
    only one level, so it is given the seed *indices* as data (it draws seeds with replacement and forms
    the percentile interval) and the statistic draws, for each drawn seed, that seed's frames with
    replacement (paired) before averaging the per-seed Δ medians. Resampling only frames of pooled seeds
    would ignore how much training runs differ from one another, which is the larger noise here; stacking
    seeds as ``paired=True`` columns would need equal frame counts and still draw no seeds. The percentile
    method is used throughout: BCa's jackknife of a median is unreliable with few distinct values, and
    meaningless for a statistic that draws random numbers itself.

    The p-value is the Wilcoxon signed-rank test of all per-frame differences (frames of all seeds pooled,
    zero differences dropped). All differences zero: ``delta = 0``, interval ``[0, 0]``, ``p = 1``.
    """
    c = np.asarray(candidate_err, dtype=np.float64).ravel()
    b = np.asarray(baseline_err, dtype=np.float64).ravel()
    if c.shape != b.shape:
        raise BenchError(f"paired comparison needs the same frames: {len(c)} candidate vs {len(b)} baseline errors")
    if len(c) == 0:
        raise BenchError("paired comparison of zero frames")
    g = np.zeros(len(c), dtype=np.int64) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1]
    if len(g) != len(c):
        raise BenchError(f"{len(g)} group labels for {len(c)} frames")
    members = [np.flatnonzero(g == s) for s in range(int(g.max()) + 1)]
    diff = c - b
    improved, worsened = float(np.mean(diff < 0)), float(np.mean(diff > 0))
    n_seeds = len(members)
    point = float(np.mean([_median_delta(c[m], b[m]) for m in members]))
    if not np.any(diff != 0):
        return Delta(0.0, 0.0, 0.0, 1.0, improved, worsened, len(c), n_seeds, confidence)
    p = float(sst.wilcoxon(diff[diff != 0]).pvalue) if np.count_nonzero(diff) else 1.0
    rng = np.random.default_rng(seed)
    if n_seeds == 1:
        res = sst.bootstrap((c, b), _median_delta, paired=True, vectorized=True, axis=-1,
                            confidence_level=confidence, n_resamples=n_resamples, method="percentile", rng=rng)
    else:
        inner = np.random.default_rng([seed, 1])

        def statistic(seed_idx: np.ndarray) -> float:
            deltas = []
            for s in np.asarray(seed_idx, dtype=np.int64):
                m = members[s]
                pick = m[inner.integers(0, len(m), len(m))]
                deltas.append(_median_delta(c[pick], b[pick]))
            return float(np.mean(deltas))

        res = sst.bootstrap((np.arange(n_seeds),), statistic, vectorized=False, confidence_level=confidence,
                            n_resamples=n_resamples, method="percentile", rng=rng)
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return Delta(point, low, high, p, improved, worsened, len(c), n_seeds, confidence)


# ---------------------------------------------------------------- per-frame errors and their alignment

def frame_errors(cell: CellFile, iteration: int = 0) -> pd.DataFrame:
    """Per-frame errors of one stored iteration of a cell: ``seed, scene, img_path, position_error_m,
    orientation_error_deg`` (iteration ``k`` is ``arrays[...][cell.iterations.index(k)]``)."""
    if iteration not in cell.iterations:
        raise BenchError(f"cell {cell.attrs.get('fingerprint')} stores iterations {cell.iterations}, not {iteration}")
    f = cell.frames(iteration)
    f.insert(0, "seed", int(cell.attrs["cell"].get("seed", 0)))
    return f[[*FRAME_KEYS, "position_error_m", "orientation_error_deg"]]


def align(cand_frames: pd.DataFrame, base_frames: pd.DataFrame) -> pd.DataFrame:
    """Join two per-frame tables on ``seed, scene, img_path``: columns ``seed, scene, img_path,
    position_error_m_cand, orientation_error_deg_cand, position_error_m_base, orientation_error_deg_base``,
    sorted by the keys. Refuses (BenchError) duplicate keys or frame sets that differ."""
    for name, f in (("candidate", cand_frames), ("baseline", base_frames)):
        dup = f.duplicated(FRAME_KEYS)
        if dup.any():
            first = f.loc[dup, FRAME_KEYS].iloc[0].tolist()
            raise BenchError(f"{name} lists frame {first} (seed, scene, img_path) more than once")
    merged = cand_frames.merge(base_frames, on=FRAME_KEYS, how="outer", suffixes=("_cand", "_base"), indicator=True)
    only = merged[merged["_merge"] != "both"]
    if len(only):
        n_c, n_b = int((only["_merge"] == "left_only").sum()), int((only["_merge"] == "right_only").sum())
        example = only[FRAME_KEYS].iloc[0].tolist()
        raise BenchError(f"the two cells were not evaluated on the same frames: {n_c} frame(s) only in the candidate, "
                         f"{n_b} only in the baseline (e.g. seed, scene, img_path = {example})")
    return merged.drop(columns="_merge").sort_values(FRAME_KEYS, ignore_index=True)


def compare_frames(cand: pd.DataFrame, base: pd.DataFrame, scene: str | None = None, confidence: float = 0.95,
                   n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> tuple[Delta, Delta, pd.DataFrame]:
    """``(position Delta, orientation Delta, aligned frames)`` of two :func:`frame_errors` tables
    (concatenated over seeds), restricted to ``scene`` when given."""
    joined = align(cand, base)
    if scene is not None:
        joined = joined[joined["scene"] == scene]
        if joined.empty:
            raise BenchError(f"no frames of scene {scene!r} in both cells")
    groups = joined["seed"].to_numpy()
    pos = paired_delta(joined["position_error_m_cand"], joined["position_error_m_base"], groups,
                       confidence, n_resamples, seed)
    ori = paired_delta(joined["orientation_error_deg_cand"], joined["orientation_error_deg_base"], groups,
                       confidence, n_resamples, seed)
    return pos, ori, joined


# ---------------------------------------------------------------- aggregation over seeds

def _hashable(value: Any) -> Any:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""  # groupby keys: None / NaN would be dropped or compare unequal
    return value


def group_over_seeds(rows: pd.DataFrame) -> pd.DataFrame:
    """Fold rows of :func:`harness.store.cells.pose_rows` that differ only in ``seed`` (and ``cell``, ``created``).

    Every other column is a key, provenance included, so rows differing in anything else stay apart.
    Output: the key columns, ``n_seeds``, ``seeds`` (comma-separated), ``cells`` (fingerprints, comma-
    separated, in seed order), and ``<metric>_mean`` / ``<metric>_std`` (sample std, ``ddof=1``; NaN for one
    seed) for each metric column of :data:`METRIC_COLUMNS` present. Missing keys (None) show as ``""``.
    """
    if rows.empty:
        return pd.DataFrame()
    metrics = [m for m in METRIC_COLUMNS if m in rows.columns]
    keys = [c for c in rows.columns if c not in metrics and c not in SEED_COLUMNS]
    frame = rows.copy()
    for k in keys:
        frame[k] = frame[k].map(_hashable)
    out = []
    for key, part in frame.groupby(keys, sort=False, dropna=False):
        part = part.sort_values("seed")
        seeds = part["seed"].astype(int).tolist()
        if len(set(seeds)) != len(seeds):
            raise BenchError(f"{len(seeds)} cells of seeds {seeds} agree on every other column "
                             f"(cells {', '.join(map(str, part.get('cell', [])))}); remove the duplicates")
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        row["n_seeds"] = len(seeds)
        row["seeds"] = ",".join(map(str, seeds))
        row["cells"] = ",".join(map(str, part["cell"])) if "cell" in part else ""
        for m in metrics:
            values = part[m].to_numpy(dtype=np.float64)
            row[f"{m}_mean"] = float(np.mean(values))
            row[f"{m}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
        out.append(row)
    return pd.DataFrame(out)


# ---------------------------------------------------------------- the stats view

def _by_fingerprint(cells: Iterable[CellFile]) -> dict[str, CellFile]:
    return {str(c.attrs["fingerprint"]): c for c in cells if c.kind == "pose"}


def _teacher_cell(cells: list[CellFile], like: CellFile) -> CellFile | None:
    """The teacher cell of ``like``: same dataset, teacher, scenes, fraction, seed; no student, no refiner
    (the newest by ``created`` when several)."""
    me = identity(like)
    found = [c for c in cells if c.kind == "pose" and not c.attrs["cell"].get("student")
             and not c.attrs["cell"].get("refiner")
             and all(identity(c)[k] == me[k] for k in ("dataset", "teacher", "teacher_scenes", "fraction", "seed"))]
    return max(found, key=lambda c: str(identity(c).get("created") or "")) if found else None


def _delta_columns(baseline: str, pos: Delta | None, ori: Delta | None) -> dict[str, Any]:
    nan = float("nan")
    return {
        "baseline": baseline,
        "delta_position_m": pos.delta if pos else nan, "delta_position_ci_low": pos.ci_low if pos else nan,
        "delta_position_ci_high": pos.ci_high if pos else nan, "delta_position_p": pos.p_value if pos else nan,
        "delta_orientation_deg": ori.delta if ori else nan, "delta_orientation_ci_low": ori.ci_low if ori else nan,
        "delta_orientation_ci_high": ori.ci_high if ori else nan, "delta_orientation_p": ori.p_value if ori else nan,
    }


def _group_frames(members: list[CellFile], iteration: int) -> pd.DataFrame:
    return pd.concat([frame_errors(c, iteration) for c in members], ignore_index=True)


def stats_table(cells: list[CellFile], iterations: Iterable[int] | None = None, confidence: float = 0.95,
                n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> pd.DataFrame:
    """One row per group (every column but the seed equal) and scene: the group's columns from
    :func:`group_over_seeds`, ``method`` (:func:`harness.store.cells.method_name`), and the comparison with the
    teacher (:data:`DELTA_COLUMNS`; ``baseline`` is the teacher's method name, NaN deltas and empty
    ``baseline`` for a teacher row or when a seed's teacher cell is missing). Student and refiner rows of
    seed s are compared with the teacher cell of seed s on the same frames of the row's scene.
    ``iterations`` selects the refiner iterations shown, as in :func:`harness.store.cells.pose_rows`."""
    cells = [c for c in cells if c.kind == "pose"]
    grouped = group_over_seeds(pose_rows(cells, iterations))
    if grouped.empty:
        return grouped
    by_fp = _by_fingerprint(cells)
    grouped.insert(0, "method", [method_name(r) for _, r in grouped.iterrows()])
    extra = []
    for _, row in grouped.iterrows():
        members = [by_fp[fp] for fp in row["cells"].split(",")]
        if row["student"] in ("-", "") and row["refiner"] in ("-", ""):
            extra.append(_delta_columns("", None, None))
            continue
        teachers = [_teacher_cell(cells, m) for m in members]
        if any(t is None for t in teachers):
            extra.append(_delta_columns("", None, None))
            continue
        k = int(row["iterations"]) if row["refiner"] not in ("-", "") else 0
        pos, ori, _ = compare_frames(_group_frames(members, k), _group_frames(teachers, 0), scene=row["scene"],
                                     confidence=confidence, n_resamples=n_resamples, seed=seed)
        extra.append(_delta_columns(method_name(identity(teachers[0])), pos, ori))
    return pd.concat([grouped, pd.DataFrame(extra, index=grouped.index)], axis=1)


def extra_comparisons(cells: list[CellFile], iterations: Iterable[int] | None = None, confidence: float = 0.95,
                      n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> pd.DataFrame:
    """The other paired comparisons of issue 13, one row per pair of groups and scene:

    * ``comparison = "estimate-vs-gt"``: a student trained on teacher estimates (``method``) vs the same
      student trained on ground truth (``baseline``, the ``(gt)`` name); same dataset, teacher, scenes,
      fraction, seeds; refiner rows excluded.
    * ``comparison = "iteration"``: refiner iteration K (``method`` ``…@K``) vs K-1 of the same cells
      (``baseline`` ``…@K-1``; for K = 1 the baseline is iteration 0 stored in the refiner cell, i.e. the
      teacher's estimate the refiner started from).

    Columns: ``comparison, method, baseline, dataset, teacher_scenes, fraction, scene, n_seeds, seeds``, then
    :data:`DELTA_COLUMNS` without ``baseline``.
    """
    cells = [c for c in cells if c.kind == "pose"]
    grouped = group_over_seeds(pose_rows(cells, iterations))
    out: list[dict[str, Any]] = []
    if grouped.empty:
        return pd.DataFrame(out)
    by_fp = _by_fingerprint(cells)

    def emit(kind: str, row: pd.Series, base_name: str, cand: pd.DataFrame, base: pd.DataFrame) -> None:
        pos, ori, _ = compare_frames(cand, base, scene=row["scene"], confidence=confidence,
                                     n_resamples=n_resamples, seed=seed)
        out.append({"comparison": kind, "method": method_name(row), **{k: row[k] for k in (
            "dataset", "teacher_scenes", "fraction", "scene", "n_seeds", "seeds")}, **_delta_columns(base_name, pos, ori)})

    for _, row in grouped.iterrows():
        members = [by_fp[fp] for fp in row["cells"].split(",")]
        if row["refiner"] not in ("-", ""):
            k = int(row["iterations"])
            base_name = method_name({**row.to_dict(), "iterations": k - 1}) if k > 1 else \
                method_name({**row.to_dict(), "refiner": "-"}) + f"+{row['refiner']}@0"
            emit("iteration", row, base_name, _group_frames(members, k), _group_frames(members, k - 1))
        elif row["student"] not in ("-", "") and row["encode"] != "ground_truth":
            same = grouped[(grouped["encode"] == "ground_truth") & (grouped["refiner"].isin(["-", ""]))]
            for col in ("dataset", "teacher", "teacher_scenes", "fraction", "student", "scene", "seeds"):
                same = same[same[col] == row[col]]
            if same.empty:
                continue
            gt = same.iloc[-1]
            emit("estimate-vs-gt", row, method_name(gt), _group_frames(members, 0),
                 _group_frames([by_fp[fp] for fp in gt["cells"].split(",")], 0))
    return pd.DataFrame(out)


# ---------------------------------------------------------------- bench compare

def method_frames(cells: list[CellFile], name: str) -> dict[tuple, pd.DataFrame]:
    """Per-frame errors of the method called ``name`` (:func:`harness.store.cells.method_name`), keyed by
    ``(dataset, teacher_scenes, fraction)``, seeds concatenated. Several cells of one key and seed
    (e.g. different provenance): the newest by ``created`` wins."""
    picked: dict[tuple, CellFile] = {}
    iteration: dict[tuple, int] = {}
    for cell in cells:
        if cell.kind != "pose":
            continue
        ident = identity(cell)
        ks = [k for k in cell.iterations if k >= 1] if cell.attrs["cell"].get("refiner") else [0]
        for k in ks:
            if method_name({**ident, "iterations": k}) != name:
                continue
            key = (ident["dataset"], ident["teacher_scenes"], ident["fraction"], ident["seed"])
            old = picked.get(key)
            if old is None or str(ident.get("created") or "") > str(identity(old).get("created") or ""):
                picked[key], iteration[key] = cell, k
    out: dict[tuple, list[pd.DataFrame]] = {}
    for key, cell in picked.items():
        out.setdefault(key[:3], []).append(frame_errors(cell, iteration[key]))
    return {k: pd.concat(v, ignore_index=True) for k, v in out.items()}


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


def compare_methods(cells: list[CellFile], a: str, b: str, confidence: float = 0.95,
                    n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                    scenes: Callable[[str], bool] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Paired analysis of method ``a`` (candidate) vs ``b`` (baseline) on their common
    ``(dataset, teacher_scenes, fraction)`` settings: ``(table, frames)``.

    ``table``: one row per setting and scene plus one ``scene = "all"`` row per setting, columns
    ``dataset, teacher_scenes, fraction, scene, n_seeds, frames``, then for ``position`` (m) and
    ``orientation`` (deg): ``<q>_delta, <q>_ci_low, <q>_ci_high, <q>_p, <q>_improved, <q>_worsened,
    <q>_significant``. ``frames``: the aligned per-frame errors of every setting (:func:`align`, plus the
    setting columns). ``scenes``: keep only the frames of scenes it accepts (also in the ``all`` rows).
    Unknown names raise BenchError listing the known ones.
    """
    known = known_methods(cells)
    for n in (a, b):
        if n not in known:
            raise BenchError(f"unknown method {n!r}; known: {', '.join(known) or '(none: the store has no pose cells)'}")
    fa, fb = method_frames(cells, a), method_frames(cells, b)
    common = [k for k in fa if k in fb]
    if not common:
        raise BenchError(f"{a} and {b} share no dataset / scenes / fraction setting")
    rows, frames = [], []
    for key in common:
        seeds_a, seeds_b = set(fa[key]["seed"]), set(fb[key]["seed"])
        shared = sorted(seeds_a & seeds_b)
        if not shared:
            continue
        ca, cb = fa[key][fa[key]["seed"].isin(shared)], fb[key][fb[key]["seed"].isin(shared)]
        if scenes is not None:
            ca, cb = ca[ca["scene"].map(scenes)], cb[cb["scene"].map(scenes)]
            if ca.empty and cb.empty:
                continue
        joined = align(ca, cb)
        joined.insert(0, "fraction", key[2])
        joined.insert(0, "teacher_scenes", key[1])
        joined.insert(0, "dataset", key[0])
        frames.append(joined)
        for scene in [*sorted(joined["scene"].unique()), None]:
            pos, ori, part = compare_frames(ca, cb, scene=scene, confidence=confidence,
                                            n_resamples=n_resamples, seed=seed)
            row: dict[str, Any] = {"dataset": key[0], "teacher_scenes": key[1], "fraction": key[2],
                                   "scene": scene or "all", "n_seeds": len(shared), "frames": len(part)}
            for q, d in (("position", pos), ("orientation", ori)):
                row.update({f"{q}_delta": d.delta, f"{q}_ci_low": d.ci_low, f"{q}_ci_high": d.ci_high,
                            f"{q}_p": d.p_value, f"{q}_improved": d.improved, f"{q}_worsened": d.worsened,
                            f"{q}_significant": d.significant})
            rows.append(row)
    if not rows:
        raise BenchError(f"{a} and {b} share no seed (or no scene passed the filter)")
    return pd.DataFrame(rows), pd.concat(frames, ignore_index=True)
