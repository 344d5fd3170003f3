"""Paired inference on per-frame errors (``scipy.stats``): Δ of median errors, intervals, p-values, Holm, TOST.

Conventions: position errors in metres, orientation errors in degrees. A *delta* is candidate − baseline of the
median error, so a negative delta is an improvement. The unit of inference is the training seed whenever there
are several: frames are the unit only within a seed.

* :func:`paired_delta` compares the per-frame errors of two methods on the same frames. Per seed s the estimate
  is ``d_s = median(candidate_s) − median(baseline_s)``; Δ is the mean of the ``d_s``.

  - n_seeds ≥ 2 (``basis = "seeds"``): a t-interval and two-sided one-sample t-test on the per-seed ``d_s``
    (:func:`scipy.stats.ttest_1samp`), i.e. a test of the Δ of medians shown, with the seed-to-seed variation
    of training in its error. Frames only enter through each seed's medians.
  - one seed (``basis = "frames"``): a paired percentile bootstrap of the same Δ of medians over test frames
    (:func:`scipy.stats.bootstrap`, ``paired=True``) gives the interval, and the p-value inverts it (so the
    marker and the interval agree). Both are conditional on the one trained model: they say nothing about
    another seed. (A paired permutation test, the other choice, costs another full resampling per comparison:
    about 0.4 s for 800 frames, which the default leaderboard would pay some forty times.)

* :func:`holm` adjusts a family of p-values (Holm 1979, step-down, strong control of the family-wise error).
* :func:`parse_margin` / :func:`tost`: equivalence within ``±margin`` by two one-sided tests (seeds: one-sided
  t-tests on the ``d_s``; frames: the bootstrap distribution, i.e. the ``1 − 2α`` percentile interval inside
  the margin).
* :func:`group_over_seeds` folds leaderboard rows that differ only in ``seed`` into one row.

The tables built on these (vs the teacher, estimate vs ground truth, iteration K vs K−1, ``bench compare``)
are in :mod:`harness.results.comparisons`; the baseline of a row is chosen in :mod:`harness.results.baselines`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sst

from aprbench.harness.errors import BenchError
from aprbench.harness.results.metrics import THRESHOLDS, threshold_name
from aprbench.harness.store.cells import MODEL_KINDS, CellFile

# per-row metric columns aggregated over seeds (when present)
METRIC_COLUMNS = ["median_m", "median_deg", "mean_m", "mean_deg",
                  *[threshold_name(m, d) for m, d in THRESHOLDS], "ms_per_frame", "scene_accuracy", "latent_mse"]
# columns that vary between seeds of one group and are neither keys nor metrics
SEED_COLUMNS = ["seed", "cell", "created", "torch", "cpu", *(f"{k}_origin" for k in MODEL_KINDS)]
FRAME_KEYS = ["seed", "scene", "img_path"]
DEFAULT_RESAMPLES = 2000
SEEDS, FRAMES = "seeds", "frames"  # the two bases of an interval / p-value


@dataclass
class Delta:
    """Paired comparison of two per-frame error arrays (candidate − baseline; negative = better)."""

    delta: float          # Δ median: mean over seeds of the per-seed Δ median, same unit as the errors
    ci_low: float         # lower end of the ``confidence`` interval (t over seeds, or bootstrap over frames)
    ci_high: float        # upper end
    p_value: float        # two-sided p of Δ = 0 (t-test over seeds, or the bootstrap over frames), unadjusted
    basis: str            # "seeds" or "frames": what the interval and p-value treat as independent units
    per_seed: tuple[float, ...]  # the per-seed Δ medians, in seed order
    baseline_median: float  # mean over seeds of the baseline's median error (for a relative margin)
    improved: float       # fraction of frames whose error went down
    worsened: float       # fraction of frames whose error went up
    n_frames: int
    n_seeds: int
    confidence: float
    boot: np.ndarray | None = field(default=None, repr=False, compare=False)  # bootstrap Δs (frames basis)

    @property
    def significant(self) -> bool:
        """Unadjusted: p < 1 − confidence (tables mark the Holm-adjusted p instead)."""
        return bool(self.p_value < 1 - self.confidence)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("delta", "ci_low", "ci_high", "p_value", "basis", "per_seed",
                                             "baseline_median", "improved", "worsened", "n_frames", "n_seeds",
                                             "confidence")} | {"significant": self.significant}


def _median_delta(c: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.median(c, axis=axis) - np.median(b, axis=axis)


def seed_level(per_seed: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                         np.ndarray]:
    """``(mean, ci_low, ci_high, p)`` of per-seed Δs along the last axis (vectorised over leading axes): the
    Student t interval and two-sided one-sample t-test of mean 0 (:func:`scipy.stats.ttest_1samp`), n − 1 degrees
    of freedom. Δs that are all equal (no spread) give the interval ``[Δ, Δ]`` and ``p = 1`` when Δ = 0, else 0."""
    d = np.asarray(per_seed, dtype=np.float64)
    if d.shape[-1] < 2:
        raise BenchError(f"a seed-level interval needs at least 2 seeds, got {d.shape[-1]}")
    mean = d.mean(axis=-1)
    flat = np.ptp(d, axis=-1) == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        res = sst.ttest_1samp(d, 0.0, axis=-1)
        ci = res.confidence_interval(confidence)
    low, high, p = (np.where(flat, mean, ci.low), np.where(flat, mean, ci.high),
                    np.where(flat, np.where(mean == 0, 1.0, 0.0), res.pvalue))
    return mean, low, high, p


def frames_only(c: np.ndarray, b: np.ndarray, confidence: float = 0.95, n_resamples: int = DEFAULT_RESAMPLES,
                seed: int = 0) -> tuple[float, float, float, np.ndarray]:
    """One seed: ``(ci_low, ci_high, p, bootstrap Δs)`` of ``median(c) − median(b)`` over paired frames, from one
    paired percentile bootstrap (:func:`scipy.stats.bootstrap`, ``paired=True``: a resample draws frames and keeps
    both errors of each). The p-value inverts the same bootstrap distribution: twice the smaller tail beyond zero,
    ``p = min(1, 2 (min(#Δ* <= 0, #Δ* >= 0) + 1) / (R + 1))``, so p < 1 − confidence exactly when the interval
    excludes zero (up to that +1), and p is never below ``2 / (R + 1)``."""
    boot = sst.bootstrap((c, b), _median_delta, paired=True, vectorized=True, axis=-1, confidence_level=confidence,
                         n_resamples=n_resamples, method="percentile", rng=np.random.default_rng(seed))
    dist = np.asarray(boot.bootstrap_distribution)
    tail = min(int(np.sum(dist <= 0)), int(np.sum(dist >= 0)))
    p = min(1.0, 2 * (tail + 1) / (len(dist) + 1))
    return float(boot.confidence_interval.low), float(boot.confidence_interval.high), p, dist


def _checked(candidate_err: Any, baseline_err: Any, groups: Any) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    c = np.asarray(candidate_err, dtype=np.float64).ravel()
    b = np.asarray(baseline_err, dtype=np.float64).ravel()
    if c.shape != b.shape:
        raise BenchError(f"paired comparison needs the same frames: {len(c)} candidate vs {len(b)} baseline errors")
    if len(c) == 0:
        raise BenchError("paired comparison of zero frames")
    g = np.zeros(len(c), dtype=np.int64) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1]
    if len(g) != len(c):
        raise BenchError(f"{len(g)} group labels for {len(c)} frames")
    return c, b, [np.flatnonzero(g == s) for s in range(int(g.max()) + 1)]


def paired_delta(candidate_err: Any, baseline_err: Any, groups: Any = None, confidence: float = 0.95,
                 n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Delta:
    """Δ median error of ``candidate_err`` vs ``baseline_err`` (same frames, same order), its interval and p.

    ``groups`` labels each frame with its training seed (None: one seed). Several seeds: inference over the
    per-seed Δs (:func:`seed_level`); one seed: over frames (:func:`frames_only`). All differences zero:
    ``delta = 0``, interval ``[0, 0]``, ``p = 1``.
    """
    c, b, members = _checked(candidate_err, baseline_err, groups)
    diff = c - b
    per_seed = tuple(float(_median_delta(c[m], b[m])) for m in members)
    base_median = float(np.mean([np.median(b[m]) for m in members]))
    basis = SEEDS if len(members) > 1 else FRAMES
    common = dict(basis=basis, per_seed=per_seed, baseline_median=base_median, improved=float(np.mean(diff < 0)),
                  worsened=float(np.mean(diff > 0)), n_frames=len(c), n_seeds=len(members), confidence=confidence)
    if not np.any(diff != 0):
        return Delta(0.0, 0.0, 0.0, 1.0, boot=np.zeros(1), **common)
    if basis == SEEDS:
        mean, low, high, p = seed_level(np.array(per_seed), confidence)
        return Delta(float(mean), float(low), float(high), float(p), **common)
    low, high, p, boot = frames_only(c, b, confidence, n_resamples, seed)
    return Delta(per_seed[0], low, high, p, boot=boot, **common)


# ---------------------------------------------------------------- multiplicity and equivalence

def holm(pvalues: Any) -> np.ndarray:
    """Holm's step-down adjusted p-values of a family (NaN entries are not members and stay NaN):
    with the m p-values sorted ascending, ``p_adj(i) = max_{j <= i} min(1, (m − j + 1) p(j))``."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out


@dataclass(frozen=True)
class Margin:
    """An equivalence margin: ``relative`` (fraction of the baseline's median error) or absolute metres / degrees."""

    text: str
    relative: float | None = None
    position_m: float | None = None
    orientation_deg: float | None = None

    def value(self, quantity: str, baseline_median: float) -> float:
        """The margin (m or deg) of ``quantity`` (``position`` or ``orientation``) for this baseline."""
        if self.relative is not None:
            return self.relative * abs(baseline_median)
        return float(self.position_m if quantity == "position" else self.orientation_deg)


def parse_margin(text: str | None) -> Margin | None:
    """``5%`` (of the baseline's median error) or ``0.01m,0.1deg`` (absolute; both needed). None for no margin."""
    if text is None or str(text).strip() == "":
        return None
    s = str(text).strip().replace(" ", "")
    rel = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)%", s)
    if rel:
        value = float(rel.group(1)) / 100
        if not 0 < value < 10:
            raise BenchError(f"--margin {text!r}: a relative margin must be above 0 % and below 1000 %")
        return Margin(s, relative=value)
    parts = dict()
    for piece in s.split(","):
        m = re.fullmatch(r"(\d+(?:\.\d*)?(?:e-?\d+)?|\.\d+)(m|deg|°)", piece)
        if not m:
            parts = None
            break
        parts["deg" if m.group(2) in ("deg", "°") else "m"] = float(m.group(1))
    if not parts or set(parts) != {"m", "deg"} or min(parts.values()) <= 0:
        raise BenchError(f"--margin {text!r}: expected a positive percentage of the baseline's median error "
                         "(e.g. 5%) or positive absolute margins for both quantities (e.g. 0.01m,0.1deg)")
    return Margin(s, position_m=parts["m"], orientation_deg=parts["deg"])


def tost(d: Delta, margin: float) -> float:
    """Two one-sided tests of ``|Δ| < margin``: the larger of the two one-sided p-values (equivalence is shown
    when it is below α). Seeds: one-sided t-tests of the per-seed Δs against ``−margin`` and ``+margin``
    (:func:`scipy.stats.ttest_1samp`); frames: the fraction of bootstrap Δs beyond each bound."""
    if not np.isfinite(margin) or margin <= 0:
        return float("nan")
    if d.basis == SEEDS:
        x = np.asarray(d.per_seed, dtype=np.float64)
        if np.ptp(x) == 0:
            return 0.0 if abs(x[0]) < margin else 1.0
        lower = sst.ttest_1samp(x, -margin, alternative="greater").pvalue
        upper = sst.ttest_1samp(x, margin, alternative="less").pvalue
        return float(max(lower, upper))
    boot = np.asarray(d.boot if d.boot is not None else [d.delta], dtype=np.float64)
    return float(max(np.mean(boot <= -margin), np.mean(boot >= margin)))


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
