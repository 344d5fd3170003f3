"""Statistics of issue 13: paired bootstrap intervals, Wilcoxon p-values, aggregation over seeds, bench compare."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sst

from aprbench.harness.store.cells import PROVENANCE_KEYS, cell_files, pose_rows, read_cell
from aprbench.harness.errors import BenchError
from aprbench.harness.results.metrics import summarize
from aprbench.harness.results.stats import align, frame_errors, group_over_seeds, paired_delta, stats_table, extra_comparisons
from aprbench.harness.store.hdf5 import Store, write_h5

ROOT = Path(__file__).resolve().parents[1]


def _sample(rng, n, mu, rho):
    """Paired log-normal errors: median(baseline) = 1, median(candidate) = exp(mu), correlation rho in log space."""
    z = rng.multivariate_normal([0, 0], [[1, rho], [rho, 1]], size=n)
    return np.exp(z[:, 1] * 0.5 + mu), np.exp(z[:, 0] * 0.5)


def test_interval_coverage_by_simulation():
    rng, mu = np.random.default_rng(1), -0.1
    true = np.exp(mu) - 1.0  # population Δ median
    trials, hits, hits_50, hits_unpaired = 300, 0, 0, 0
    for i in range(trials):
        c, b = _sample(rng, 80, mu, 0.8)
        d = paired_delta(c, b, n_resamples=400, seed=i)
        hits += d.ci_low <= true <= d.ci_high
        d50 = paired_delta(c, b, n_resamples=400, seed=i, confidence=0.5)
        hits_50 += d50.ci_low <= true <= d50.ci_high
        wrong = sst.bootstrap((c, b), lambda x, y, axis=-1: np.median(x, axis=axis) - np.median(y, axis=axis),
                              paired=False, vectorized=True, n_resamples=400, method="percentile", rng=i)
        hits_unpaired += wrong.confidence_interval.low <= true <= wrong.confidence_interval.high
    coverage = hits / trials
    assert 0.90 <= coverage <= 0.99, coverage
    # the same check rejects a wrong interval: a 50 % one, and an unpaired one (too wide for correlated pairs)
    assert not 0.90 <= hits_50 / trials <= 0.99, hits_50 / trials
    assert not 0.90 <= hits_unpaired / trials <= 0.99, hits_unpaired / trials


def test_hierarchical_interval_covers_and_widens_with_seed_noise():
    rng = np.random.default_rng(2)
    c, b, g = [], [], []
    for s, offset in enumerate([-0.3, 0.0, 0.3]):  # training runs differ by much more than frame noise
        cs, bs = _sample(rng, 60, 0.0, 0.8)
        c.append(cs + offset), b.append(bs), g.append(np.full(60, s))
    c, b, g = np.concatenate(c), np.concatenate(b), np.concatenate(g)
    pooled = paired_delta(c, b, n_resamples=300)
    hier = paired_delta(c, b, groups=g, n_resamples=300)
    assert hier.n_seeds == 3 and pooled.n_seeds == 1
    # point estimate: mean over seeds of the per-seed Δ median
    expect = np.mean([np.median(c[g == s]) - np.median(b[g == s]) for s in range(3)])
    assert hier.delta == pytest.approx(expect)
    assert hier.ci_high - hier.ci_low > pooled.ci_high - pooled.ci_low


def test_pairing_shuffle_and_self_comparison():
    rng = np.random.default_rng(3)
    c, b = _sample(rng, 50, -0.2, 0.7)
    frames_c = pd.DataFrame({"seed": 0, "scene": "room", "img_path": [f"f{i:03d}.png" for i in range(50)],
                             "position_error_m": c, "orientation_error_deg": c * 10})
    frames_b = frames_c.assign(position_error_m=b, orientation_error_deg=b * 10)
    a = align(frames_c, frames_b)
    shuffled = align(frames_c.sample(frac=1.0, random_state=0), frames_b)
    d1 = paired_delta(a["position_error_m_cand"], a["position_error_m_base"], a["seed"], n_resamples=500)
    d2 = paired_delta(shuffled["position_error_m_cand"], shuffled["position_error_m_base"], shuffled["seed"],
                      n_resamples=500)
    assert d1 == d2
    assert d1.delta == pytest.approx(np.median(c) - np.median(b))
    assert d1.p_value == pytest.approx(sst.wilcoxon(c - b).pvalue)
    assert d1.improved == pytest.approx(np.mean(c < b)) and d1.worsened == pytest.approx(np.mean(c > b))
    same = align(frames_c, frames_c.sample(frac=1.0, random_state=1))
    d0 = paired_delta(same["position_error_m_cand"], same["position_error_m_base"], n_resamples=500)
    assert (d0.delta, d0.ci_low, d0.ci_high, d0.p_value, d0.significant) == (0.0, 0.0, 0.0, 1.0, False)
    with pytest.raises(BenchError, match="same frames"):
        align(frames_c.iloc[1:], frames_b)


# ---------------------------------------------------------------- cell files in the documented format

def _write_cell(store: Store, fp: str, *, seed: int, pos: np.ndarray, ori: np.ndarray, refiner: str | None = None,
                iterations: list[int] | None = None, overrides=None, scenes=("room", "site")) -> None:
    """A pose cell file as harness/cells.py documents it; ``pos``/``ori`` are (I, N)."""
    iterations = iterations or [0]
    n = pos.shape[1]
    scene_id = np.arange(n) % len(scenes)
    pose_gt = np.zeros((n, 7))
    pose_gt[:, 3] = 1.0
    pose_est = np.repeat(pose_gt[None], len(iterations), axis=0)
    pose_est[:, :, 0] = pos  # an estimate whose position error is pos (x offset)
    per_iteration = []
    for i, k in enumerate(iterations):
        per_scene = [{"scene": s, **summarize(pos[i][scene_id == j], ori[i][scene_id == j])} for j, s in enumerate(scenes)]
        per_iteration.append({"iteration": k, "per_scene": per_scene, "ms_per_frame": 1.0 + seed})
    cell = {"dataset": "synthetic", "teacher": "posenet-mobilenet", "checkpoint": None, "scenes": list(scenes),
            "fraction": 1.0, "seed": seed, "student": None, "encode": None, "refiner": refiner,
            "iterations": max(iterations), "shown_iterations": [k for k in iterations if k >= 1]}
    prov = {k: "x" for k in PROVENANCE_KEYS}
    prov.update(overrides=overrides, created=f"2026-01-0{seed + 1}")
    write_h5(store.cell_path(fp), {
        "pose_gt": pose_gt, "scene_id": scene_id, "img_path": [f"{scenes[s]}/f{i:03d}.png" for i, s in enumerate(scene_id)],
        "pose_est": pose_est, "position_error_m": pos, "orientation_error_deg": ori,
    }, {"kind": "pose", "cell": cell, "iterations": iterations, "scenes": list(scenes), "fingerprint": fp,
        "upstream": [], "result": {"per_iteration": per_iteration, "stored_bytes": 100}, "provenance": prov})


def _fill(store: Store, n: int = 60) -> dict:
    rng = np.random.default_rng(5)
    truth = {}
    for seed in (0, 1):
        t_pos, t_ori = rng.lognormal(0, 0.5, n), rng.lognormal(2, 0.5, n)
        r1_pos, r1_ori = t_pos * 0.8, t_ori * 0.95
        r2_pos, r2_ori = t_pos * 0.7, t_ori * 1.1
        _write_cell(store, f"teacher{seed}", seed=seed, pos=t_pos[None], ori=t_ori[None])
        _write_cell(store, f"refiner{seed}", seed=seed, refiner="pae-rpr", iterations=[0, 1, 2],
                    pos=np.stack([t_pos, r1_pos, r2_pos]), ori=np.stack([t_ori, r1_ori, r2_ori]))
        truth[seed] = (t_pos, t_ori, r2_pos, r2_ori)
    return truth


def test_group_over_seeds_numbers_and_never_merges_provenance(tmp_path):
    store = Store(tmp_path)
    _fill(store)
    rng = np.random.default_rng(9)
    _write_cell(store, "teacher-other", seed=0, pos=rng.lognormal(0, 0.5, (1, 60)), ori=rng.lognormal(2, 0.5, (1, 60)),
                overrides=["teacher.lr=0.1"])
    rows = pose_rows(cell_files(store))
    grouped = group_over_seeds(rows)
    teachers = grouped[grouped["refiner"] == "-"]
    assert sorted(teachers["n_seeds"]) == [1, 1, 2, 2]  # the 'overrides' teacher stays apart, per scene
    main = teachers[(teachers["n_seeds"] == 2) & (teachers["scene"] == "room")].iloc[0]
    src = rows[(rows["refiner"] == "-") & (rows["scene"] == "room") & rows["overrides"].isna()]
    for m in ("median_m", "median_deg", "mean_m", "acc_0.25m_2deg", "ms_per_frame"):
        assert main[f"{m}_mean"] == pytest.approx(np.mean(src[m])), m
        assert main[f"{m}_std"] == pytest.approx(np.std(src[m], ddof=1)), m
    alone = teachers[(teachers["n_seeds"] == 1) & (teachers["scene"] == "room")].iloc[0]
    assert np.isnan(alone["median_m_std"]) and "teacher.lr" in alone["overrides"]
    assert sorted(grouped[grouped["refiner"] == "pae-rpr"]["iterations"]) == [1, 1, 2, 2]


def test_stats_table_compares_with_teacher(tmp_path):
    store = Store(tmp_path)
    truth = _fill(store)
    cells = cell_files(store)
    table = stats_table(cells, n_resamples=300)
    row = table[(table["method"] == "posenet-mobilenet+pae-rpr@2") & (table["scene"] == "room")].iloc[0]
    assert row["baseline"] == "posenet-mobilenet" and row["n_seeds"] == 2
    room = np.arange(60) % 2 == 0
    expect = np.mean([np.median(truth[s][2][room]) - np.median(truth[s][0][room]) for s in (0, 1)])
    assert row["delta_position_m"] == pytest.approx(expect)
    assert row["delta_position_ci_low"] <= row["delta_position_m"] <= row["delta_position_ci_high"] < 0
    assert row["delta_orientation_deg"] > 0 and row["delta_position_p"] < 1e-3
    teacher = table[table["method"] == "posenet-mobilenet"].iloc[0]
    assert teacher["baseline"] == "" and np.isnan(teacher["delta_position_m"])
    extra = extra_comparisons(cells, n_resamples=200)
    it2 = extra[(extra["method"] == "posenet-mobilenet+pae-rpr@2") & (extra["scene"] == "site")].iloc[0]
    assert it2["comparison"] == "iteration" and it2["baseline"] == "posenet-mobilenet+pae-rpr@1"
    frames = frame_errors(read_cell(store.cell_path("refiner0")), 2)
    assert np.allclose(frames["position_error_m"], truth[0][2])


def _bench(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "aprbench.harness", *args], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=120)


def test_bench_compare_cli(tmp_path):
    store = Store(tmp_path)
    truth = _fill(store)
    out = tmp_path / "plot.png"
    res = _bench("compare", "posenet-mobilenet+pae-rpr@2", "posenet-mobilenet", "--workdir", str(tmp_path),
                 "--out", str(out), "--resamples", "300")
    assert res.returncode == 0, res.stderr
    overall = np.mean([np.median(truth[s][2]) - np.median(truth[s][0]) for s in (0, 1)])
    assert f"{overall:+.4f}" in res.stdout
    lines = [ln for ln in res.stdout.splitlines() if "| all" in ln or "| room" in ln or "| site" in ln]
    assert len(lines) == 3
    assert out.is_file() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    room = _bench("compare", "posenet-mobilenet+pae-rpr@2", "posenet-mobilenet", "--workdir", str(tmp_path),
                  "--out", str(out), "--resamples", "100", "--filter", "scene=room", "--filter", "seed=1")
    assert room.returncode == 0, room.stderr
    rows = [ln.split("|") for ln in room.stdout.splitlines() if "| all" in ln or "| room" in ln or "| site" in ln]
    assert [r[4].strip() for r in rows] == ["room", "all"] and [int(r[6]) for r in rows] == [30, 30]
    is_room = np.arange(60) % 2 == 0
    assert f"{np.median(truth[1][2][is_room]) - np.median(truth[1][0][is_room]):+.4f}" in rows[1][7]
    bad = _bench("compare", "posenet-mobilenet+nope", "posenet-mobilenet", "--workdir", str(tmp_path))
    assert bad.returncode == 2
    assert "posenet-mobilenet+pae-rpr@1" in bad.stderr and "posenet-mobilenet+pae-rpr@2" in bad.stderr
