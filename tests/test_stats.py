"""Paired statistics on cell files: alignment, aggregation over seeds, the stats table against the teacher, the
baseline chosen by identity, statistics on the filtered rows, bench compare (issues 13 and 24).
Inference itself (coverage, error rates, Holm, TOST) is tested in test_inference.py."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sst

from aprbench.harness.store.cells import PROVENANCE_KEYS, cell_files, pose_rows, read_cell
from aprbench.harness.errors import BenchError
from aprbench.harness.results.metrics import summarize
from aprbench.harness.cli.main import main
from aprbench.harness.results.comparisons import extra_comparisons, stats_table
from aprbench.harness.results.stats import align, frame_errors, group_over_seeds, paired_delta
from aprbench.harness.store.hdf5 import Store, write_h5
from board_helpers import axes, provenance, write_cell, write_store

ROOT = Path(__file__).resolve().parents[1]


def _sample(rng, n, mu, rho):
    """Paired log-normal errors: median(baseline) = 1, median(candidate) = exp(mu), correlation rho in log space."""
    z = rng.multivariate_normal([0, 0], [[1, rho], [rho, 1]], size=n)
    return np.exp(z[:, 1] * 0.5 + mu), np.exp(z[:, 0] * 0.5)


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
    assert d1.basis == "frames" and (d1.p_value < 0.05) == (d1.ci_low > 0 or d1.ci_high < 0)
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
    table = stats_table(cells)
    row = table[(table["method"] == "posenet-mobilenet+pae-rpr@2") & (table["scene"] == "room")].iloc[0]
    assert row["baseline"] == "posenet-mobilenet" and row["n_seeds"] == 2
    room = np.arange(60) % 2 == 0
    expect = np.mean([np.median(truth[s][2][room]) - np.median(truth[s][0][room]) for s in (0, 1)])
    assert row["delta_position_m"] == pytest.approx(expect)
    assert row["delta_position_ci_low"] <= row["delta_position_m"] <= row["delta_position_ci_high"] < 0
    per_seed = [np.median(truth[s][2][room]) - np.median(truth[s][0][room]) for s in (0, 1)]
    assert row["ci_basis"] == "seeds" and row["delta_position_seeds"] == ",".join(repr(float(v)) for v in per_seed)
    assert row["delta_position_p"] == pytest.approx(sst.ttest_1samp(per_seed, 0).pvalue)
    assert row["delta_orientation_deg"] > 0 and row["baseline_cells"] == "teacher0,teacher1"
    teacher = table[table["method"] == "posenet-mobilenet"].iloc[0]
    assert teacher["baseline"] == "" and np.isnan(teacher["delta_position_m"])
    extra = extra_comparisons(cells)
    it2 = extra[(extra["method"] == "posenet-mobilenet+pae-rpr@2") & (extra["scene"] == "site")].iloc[0]
    assert it2["comparison"] == "iteration" and it2["baseline"] == "posenet-mobilenet+pae-rpr@1"
    frames = frame_errors(read_cell(store.cell_path("refiner0")), 2)
    assert np.allclose(frames["position_error_m"], truth[0][2])


def _bench(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(x) for x in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_bench_compare_cli(tmp_path, capsys):
    store = Store(tmp_path)
    truth = _fill(store)
    out = tmp_path / "plot.png"
    code, stdout, err = _bench(capsys, "compare", "posenet-mobilenet+pae-rpr@2", "posenet-mobilenet", "--workdir",
                               tmp_path, "--out", out)
    assert code == 0, err
    overall = np.mean([np.median(truth[s][2]) - np.median(truth[s][0]) for s in (0, 1)])
    assert f"{overall:+.4f}" in stdout
    lines = [ln for ln in stdout.splitlines() if "| all" in ln or "| room" in ln or "| site" in ln]
    assert len(lines) == 3 and "Holm" in stdout and "6 comparisons of this bench compare call" in stdout
    assert out.is_file() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, room, err = _bench(capsys, "compare", "posenet-mobilenet+pae-rpr@2", "posenet-mobilenet", "--workdir",
                             tmp_path, "--out", out, "--resamples", "100", "--filter", "scene=room", "--filter", "seed=1")
    assert code == 0, err
    rows = [ln.split("|") for ln in room.splitlines() if "| all" in ln or "| room" in ln or "| site" in ln]
    assert [r[4].strip() for r in rows] == ["room"] and [int(r[6]) for r in rows] == [30]  # no "all" repeating it
    assert rows[0][7].strip() == "frames" and "--seeds 5" in room  # one seed: over frames, marked †, legend says so
    is_room = np.arange(60) % 2 == 0
    assert f"{np.median(truth[1][2][is_room]) - np.median(truth[1][0][is_room]):+.4f}" in rows[0][8]
    code, _, err = _bench(capsys, "compare", "posenet-mobilenet+nope", "posenet-mobilenet", "--workdir", tmp_path)
    assert code == 2
    assert "posenet-mobilenet+pae-rpr@1" in err and "posenet-mobilenet+pae-rpr@2" in err


# ---------------------------------------------------------------- the baseline by identity (issue 24)

def _stats_json(capsys, root, *extra) -> list[dict]:
    code, out, err = _bench(capsys, "leaderboard", "--workdir", root, "--view", "stats", "--format", "json", *extra)
    assert code == 0, err
    return json.loads(out)


def _scene_delta(store: Store, cand: str, base: str, scene: str) -> float:
    c, b = read_cell(store.cell_path(cand)), read_cell(store.cell_path(base))
    mask = c.arrays["scene_id"] == list(c.attrs["scenes"]).index(scene)
    return float(np.median(c.arrays["position_error_m"][-1][mask]) - np.median(b.arrays["position_error_m"][0][mask]))


def test_baseline_is_the_teacher_with_the_same_model_not_the_newest(tmp_path, capsys):
    """A second teacher recipe (``--set teacher.epochs=1``, stored later) never becomes the baseline of rows made
    from the first; the student's own ``--set`` (student only) does not hide its teacher."""
    from board_helpers import _perturb, _poses

    store = Store(tmp_path / "w")
    rng = np.random.default_rng(0)
    gt, sid = _poses(rng)
    teacher, short = _perturb(gt, rng, 0.06, 0.05), _perturb(gt, rng, 0.3, 0.2)
    student = teacher + _perturb(gt, rng, 0.01, 0.005) - gt
    student[:, 3:] /= np.linalg.norm(student[:, 3:], axis=1, keepdims=True)
    write_cell(store, "teacher-10ep", axes(), [teacher], [0], gt, sid, provenance(), 1, 2.0, upstream={"teacher": "T10"})
    write_cell(store, "teacher-1ep", axes(), [short], [0], gt, sid,
               provenance(overrides={"teacher": {"epochs": 1}}, created=1.8e9), 1, 2.0, upstream={"teacher": "T1"})
    write_cell(store, "student", axes(student="pae", encode="estimate"), [student], [0], gt, sid,
               provenance(overrides={"student": {"epochs": 5}}, created=1.75e9), 1, 3.0,
               upstream={"teacher": "T10", "student": "S"})
    rows = [r for r in _stats_json(capsys, store.root) if r["method"] == "posenet+pae"]
    assert {r["baseline_cells"] for r in rows} == {"teacher-10ep"}
    for r in rows:
        assert r["delta_position_m"] == pytest.approx(_scene_delta(store, "student", "teacher-10ep", r["scene"]))
    code, out, err = _bench(capsys, "compare", "posenet+pae", "posenet", "--workdir", store.root, "--out",
                            tmp_path / "c.png", "--resamples", "200")
    assert code == 0, err
    right = np.median(errors_of(store, "student")) - np.median(errors_of(store, "teacher-10ep"))
    assert f"{right:+.4f}" in [ln for ln in out.splitlines() if "| all" in ln][0]


def errors_of(store: Store, name: str) -> np.ndarray:
    return read_cell(store.cell_path(name)).arrays["position_error_m"][0]


def test_two_teachers_of_one_identity_are_refused_never_guessed(tmp_path, capsys):
    store = write_store(tmp_path / "w", seeds=(0,), second_recipe=False, decoder=False)
    again = read_cell(store.cell_path("teacher-s0"))
    prov = {**again.attrs["provenance"], "created": 1.9e9, "git_commit": "fedcba9876543210"}
    write_h5(store.cell_path("teacher-again"), again.arrays, {**again.attrs, "fingerprint": "teacher-again",
                                                              "provenance": prov})
    code, out, err = _bench(capsys, "leaderboard", "--workdir", store.root, "--view", "stats")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "teacher-s0" in err and "teacher-again" in err and "--filter" in err
    code, out, err = _bench(capsys, "leaderboard", "--workdir", store.root)  # the scenes view: no Δ, says why
    assert code == 0 and "statistics unavailable" in err and "Δ against the baseline" not in out
    rows = _stats_json(capsys, store.root, "--filter", "git_commit=abcdef*")  # the selection decides
    assert {r["baseline_cells"] for r in rows if r["baseline"] and r["comparison"] is None} == {"teacher-s0"}


def test_statistics_follow_the_filter(tmp_path, capsys):
    store = write_store(tmp_path / "w", seeds=(0, 1, 2), decoder=False)
    rows = _stats_json(capsys, store.root, "--filter", "seed=0", "--filter", "overrides=")
    assert {r["n_seeds"] for r in rows} == {1}
    pae = [r for r in rows if r["method"] == "posenet+pae" and r["comparison"] is None and r["scene"] == "room"][0]
    assert pae["ci_basis"] == "frames" and pae["baseline_cells"] == "teacher-s0"
    assert pae["delta_position_m"] == pytest.approx(_scene_delta(store, "student-s0", "teacher-s0", "room"))
    code, human, _ = _bench(capsys, "leaderboard", "--workdir", store.root, "--filter", "seed=0", "--filter",
                            "overrides=")
    assert code == 0 and "--seeds 5" in human and "frames only" in human
    from aprbench.harness.results.tables import fmt_m, _signed

    deltas = human[human.index("Δ against the baseline"):]  # the Δ table under the seed-0 medians
    line = [ln for ln in deltas.splitlines() if ln.startswith("| posenet+pae ")][0]
    assert f"| {_signed(pae['delta_position_m'], fmt_m)}" in line  # the seed-0 Δ
    rows = _stats_json(capsys, store.root, "--filter", "refiner=pae-rpr")
    assert {r["method"] for r in rows} == {"posenet+pae+pae-rpr@1", "posenet+pae+pae-rpr@3"}
    assert {r["comparison"] for r in rows} == {None, "iteration"} and {r["n_seeds"] for r in rows} == {3}
    assert not [r for r in rows if r["baseline"].endswith("@0")]  # iteration 1 vs 0 is the vs-teacher row
    assert {r["ci_basis"] for r in rows} == {"seeds"}


def test_stats_json_numbers_are_the_computed_ones(tmp_path, capsys):
    from aprbench.harness.results import leaderboard as lb

    store = write_store(tmp_path / "w", seeds=(0, 1, 2), decoder=False)
    rows = _stats_json(capsys, store.root, "--margin", "5%")
    frame = lb.stats_frame(lb.build(store), margin=__import__("aprbench.harness.results.stats",
                                                              fromlist=["parse_margin"]).parse_margin("5%"))
    for col in ("delta_position_p", "delta_position_p_adj", "delta_orientation_ci_low", "tost_position_p",
                "margin_position_m"):
        expect = [None if v != v else float(v) for v in frame[col]]
        assert [r[col] for r in rows] == expect, col  # exactly, not to 10 digits
    assert {r["equivalence_position"] for r in rows if r["baseline"]} <= {"equivalent", "not shown"}
    # the store's second teacher recipe (--set teacher.epochs=2, no model fingerprints recorded) is no baseline
    assert {r["baseline_cells"] for r in rows if r["baseline"] and r["comparison"] is None} == {
        "teacher-s0,teacher-s1,teacher-s2"}
    code, csv, _ = _bench(capsys, "leaderboard", "--workdir", store.root, "--view", "stats", "--format", "csv")
    back = pd.read_csv(io.StringIO(csv))
    assert back["delta_position_p"].dropna().tolist() == frame["delta_position_p"].dropna().tolist()


def test_same_setting_compares_every_recorded_model_fingerprint():
    from aprbench.harness.results.baselines import same_setting
    from aprbench.harness.store.cells import CellFile

    def cell(fp, student=None, upstream=None, models=None, overrides=None):
        attrs = {"kind": "pose", "fingerprint": fp, "iterations": [0],
                 "cell": {**axes(student=student, encode="estimate" if student else None)},
                 "provenance": provenance(overrides=overrides), "upstream": upstream or {}}
        if models is not None:
            attrs["models"] = models
        return CellFile(Path(f"{fp}.h5"), {}, attrs)

    teacher = cell("t", upstream={"teacher": "A"}, models={"teacher": {"fingerprint": "m1"}})
    student = cell("s", "pae", {"teacher": "A", "student": "S"}, {"teacher": {"fingerprint": "m1"}},
                   overrides={"student": {"epochs": 5}})
    assert same_setting(student, teacher)  # the same teacher model: the student's own --set does not matter
    other_code = cell("s2", "pae", {"teacher": "A"}, {"teacher": {"fingerprint": "m2"}})
    assert not same_setting(other_code, teacher)  # same artifact hash recorded, another model identity
    assert not same_setting(cell("s3", "pae", {"teacher": "B"}), teacher)
    # nothing recorded: the provenance decides, --set overrides included
    assert same_setting(cell("s4", "pae"), cell("t4"))
    assert not same_setting(cell("s5", "pae", overrides={"teacher": {"epochs": 1}}), cell("t5"))
