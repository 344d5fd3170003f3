"""The leaderboard on a store of hand-written cell files (harness.store.cells format): views, numbers, provenance,
machine formats, published rows, hook columns, export. The CLI runs as a subprocess."""

from __future__ import annotations

import io
import json
from importlib import resources

import numpy as np
import pandas as pd
import pytest

from board_helpers import N, write_store
from aprbench.harness.results import leaderboard as lb
from aprbench.harness.results import tables
from aprbench.harness.store.cells import PROVENANCE_KEYS, read_cell
from aprbench.harness.cli.main import main


def bench_here(capsys, *args) -> tuple[int, str, str]:
    """``bench ARGS`` in this process (built-in plugins only): exit status, stdout, stderr."""
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def pose_errors_independent(est: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Position error (m) and orientation error (deg, 2 acos |<q1, q2>|) written out here, not from harness."""
    pos = np.linalg.norm(est[:, :3] - gt[:, :3], axis=1)
    q1 = est[:, 3:] / np.linalg.norm(est[:, 3:], axis=1, keepdims=True)
    q2 = gt[:, 3:] / np.linalg.norm(gt[:, 3:], axis=1, keepdims=True)
    ori = np.degrees(2 * np.arccos(np.clip(np.abs(np.sum(q1 * q2, axis=1)), 0, 1)))
    return pos, ori


def medians(store, name: str, iteration: int = 0) -> dict[str, tuple[float, float]]:
    """Per-scene (median m, median deg) of one cell, from its stored estimates and ground truth."""
    cell = read_cell(store.cell_path(name))
    i = cell.iterations.index(iteration)
    pos, ori = pose_errors_independent(cell.arrays["pose_est"][i], cell.arrays["pose_gt"])
    sid = cell.arrays["scene_id"]
    return {s: (float(np.median(pos[sid == k])), float(np.median(ori[sid == k])))
            for k, s in enumerate(cell.attrs["scenes"])}


@pytest.fixture
def store(tmp_path):
    return write_store(tmp_path / "wd")


def test_scenes_view_rows_columns_and_average_of_per_scene_medians(store):
    board = lb.build(store)
    tidy = lb.scenes_frame(board)
    # 5 methods (teacher of 2 recipes, +pae, +pae-rpr@1, @3) x (room, site, Average)
    assert len(tidy) == 15 and set(tidy["scene"]) == {"room", "site", "Average"}
    assert (tidy["n_seeds"] == 1).all()
    for name, method, k in (("teacher-s0", "posenet", 0), ("student-s0", "posenet+pae", 0),
                            ("refiner-s0", "posenet+pae+pae-rpr@3", 3), ("refiner-s0", "posenet+pae+pae-rpr@1", 1)):
        want = medians(store, name, k)
        rows = tidy[(tidy["method"] == method) & (tidy["overrides"] == "")].set_index("scene")
        for scene in ("room", "site"):
            assert rows.loc[scene, "median_m"] == pytest.approx(want[scene][0], rel=1e-9)
            assert rows.loc[scene, "median_deg"] == pytest.approx(want[scene][1], rel=1e-6)
        assert rows.loc["Average", "median_m"] == pytest.approx(np.mean([want[s][0] for s in ("room", "site")]))
        assert rows.loc["Average", "median_deg"] == pytest.approx(np.mean([want[s][1] for s in ("room", "site")]))
    [(title, table)] = lb.scenes_table(board, "github")
    assert title == "synthetic"
    assert list(table.columns) == ["method", "recipe", "room (m, °)", "site (m, °)", "Average (m, °)", "MB", "ms/frame"]
    assert len(table) == 5
    best = table[table["method"] == "posenet+pae+pae-rpr@3"].iloc[0]
    assert best["room (m, °)"].startswith("**") and best["Average (m, °)"].count("**") == 2  # best m and ° in bold
    teacher = medians(store, "teacher-s0")["room"]
    row = table[(table["method"] == "posenet") & (table["recipe"] == "-")].iloc[0]  # the recipe without --set
    assert row["room (m, °)"] == f"{tables.fmt_m(teacher[0])}, {tables.fmt_deg(teacher[1])}"
    assert row["MB"] == "**4.00**"  # the teachers are the smallest


def test_recipes_never_merge_and_are_labelled_seeds_do_merge(tmp_path):
    store = write_store(tmp_path / "wd", seeds=(0, 1))
    board = lb.build(store)
    out = lb.text(board)
    assert "note: the store holds results of 2 recipes" in out and "--filter overrides=" in out
    assert out.splitlines()[0].startswith("dataset synthetic · profile quick · aprbench 0.1.0")
    [(_, table)] = lb.scenes_table(board, "plain")
    teachers = table[table["method"] == "posenet"]
    assert sorted(teachers["recipe"]) == ["-", "teacher.epochs=2"]  # what tells the recipes apart
    merged = teachers[teachers["recipe"] == "-"].iloc[0]
    assert "±" in merged["room (m, °)"] and merged["n"] == "2"  # seeds 0 and 1 (created at different times) merge
    assert "over the training seeds (their number: column n)" in out
    tidy = lb.scenes_frame(board)
    room = tidy[(tidy["method"] == "posenet") & (tidy["scene"] == "room") & (tidy["overrides"] == "")].iloc[0]
    both = [medians(store, f"teacher-s{s}")["room"][0] for s in (0, 1)]
    assert room["median_m"] == pytest.approx(np.mean(both)) and room["median_m_std"] == pytest.approx(np.std(both, ddof=1))
    # a recipe differing in any provenance key stays apart, whatever else is equal
    for key in ("aprbench_version", "git_commit", "dataset_fingerprint", "device", "precision", "profile"):
        poses = board.poses.copy()
        poses.loc[poses["cell"] == "teacher-s1", key] = "other"
        rows = lb.scenes_frame(board, poses)
        assert len(rows[(rows["method"] == "posenet") & (rows["scene"] == "room")]) == 3, key
    one = lb.text(lb.build(store, filters=["overrides="]))
    assert "several" not in one and "note:" not in one


def test_machine_formats_round_trip_with_numeric_dtypes(store, run_bench, capsys):
    csv = run_bench("leaderboard", "--workdir", store.root, "--format", "csv")
    assert csv.returncode == 0, csv.stderr
    frame = pd.read_csv(io.StringIO(csv.stdout))
    # one row per cell, scene and shown iteration: teacher x2 recipes, pae, pae-rpr at 1 and 3; two scenes
    assert len(frame) == 10
    assert set(PROVENANCE_KEYS) <= set(frame.columns)
    for col in ("median_m", "median_deg", "mean_m", "fraction", "ms_per_frame", "acc_0.05m_5deg", "acc_5m_10deg"):
        assert pd.api.types.is_float_dtype(frame[col]), col
    assert frame["stored_bytes"].dtype == np.int64 and set(frame["stored_bytes"]) == {4_000_000, 5_000_000, 6_000_000}
    assert frame["fraction"].eq(1.0).all() and frame["acc_5m_10deg"].between(0, 1).all()
    assert sorted(frame["iterations"].unique()) == [0, 1, 3]
    code, js, err = bench_here(capsys, "leaderboard", "--workdir", store.root, "--format", "json", "--view", "scenes")
    assert code == 0, err
    tidy = pd.DataFrame(json.loads(js))
    assert len(tidy) == 15 and pd.api.types.is_float_dtype(tidy["median_m"])
    assert pd.api.types.is_integer_dtype(tidy["stored_bytes"])


def test_hook_columns_show_in_every_view_and_a_broken_hook_is_named(store, run_bench, tmp_path):
    plugin = tmp_path / "score_plugin.py"
    plugin.write_text(
        "from aprbench.harness.api.hookspecs import hookimpl\n"
        "@hookimpl\n"
        "def bench_leaderboard_columns(frame):\n"
        "    return {'cm_score': (frame['median_m'] * 100).round(1).tolist()}\n"
    )
    broken = tmp_path / "broken_columns.py"
    broken.write_text(
        "from aprbench.harness.api.hookspecs import hookimpl\n"
        "@hookimpl\n"
        "def bench_leaderboard_columns(frame):\n"
        "    raise RuntimeError('no columns today')\n"
    )
    for view in ([], ["--format", "csv"]):
        out = run_bench("leaderboard", "--workdir", store.root, "--plugin", plugin, "--plugin", broken, *view)
        assert out.returncode == 0, out.stderr
        assert "cm_score" in out.stdout, view
        assert "broken_columns.py" in out.stderr and "no columns today" in out.stderr
    frame = pd.read_csv(io.StringIO(out.stdout))
    assert np.allclose(frame["cm_score"], (frame["median_m"] * 100).round(1))
    from aprbench.harness.api.manager import BenchPluginManager
    from aprbench.harness.results.report import write_report

    manager = BenchPluginManager(extra=[str(plugin)], entry_points=False)
    assert "cm_score" in lb.text(lb.build(store, manager), "cells")
    assert "cm_score" in write_report(store, tmp_path / "report", manager=manager).read_text()


def test_published_rows_carry_their_source_and_stay_apart(tmp_path, run_bench, capsys):
    store = write_store(tmp_path / "wd", dataset="sevenscenes", scenes=("chess", "heads"), decoder=False,
                        second_recipe=False)
    out = run_bench("leaderboard", "--workdir", store.root, "--published", "--format", "csv")
    assert out.returncode == 0, out.stderr
    frame = pd.read_csv(io.StringIO(out.stdout))
    pub = frame[frame["published"]]
    ours = frame[~frame["published"]]
    assert len(ours) == 8 and ours["source"].isna().all()
    assert len(pub) and set(pub["scene"]) == {"chess", "heads"}
    assert pub["source"].str.len().gt(10).all()
    table = pd.read_csv(resources.files("aprbench.harness.results").joinpath("published_results.csv").open())
    want = table[(table["scene"] == "chess") & (table["method"] == pub["method"].iloc[0])].iloc[0]
    got = pub[(pub["scene"] == "chess") & (pub["method"] == want["method"])].iloc[0]
    assert got["median_m"] == want["median_position_m"] and got["source"] == want["source"]
    code, human, _ = bench_here(capsys, "leaderboard", "--workdir", store.root, "--published")
    assert code == 0 and "published results (not reproduced here" in human and "[published]" in human
    first = [line for line in human.splitlines() if "[published]" in line][0]
    ref = first.rstrip(" |").rsplit("[", 1)[1].rstrip("]")
    source = [line for line in human.splitlines() if line.startswith(f"[{ref}] ")][0][len(ref) + 3:]
    assert source.split(" — ")[0] in set(table["source"])
    head, _, published = human.partition("published results")
    assert "[published]" not in head  # kept apart from the reproduced rows


def test_cells_view_thresholds_follow_the_scene_convention_and_recall_counts_frames(store):
    board = lb.build(store)
    assert lb.scene_thresholds(board, "synthetic", "room") == lb.INDOOR_THRESHOLDS
    assert lb.scene_thresholds(board, "synthetic", "site") == lb.OUTDOOR_THRESHOLDS
    table = lb.cells_table(board, "plain")
    assert {"5 cm, 5° (%)", "10 cm, 10° (%)", "0.25 m, 2° (%)", "5 m, 10° (%)"} <= set(table.columns)
    room = table[table["scene"] == "room"]
    assert (room["0.25 m, 2° (%)"] == "").all() and (room["10 cm, 10° (%)"] != "").all()
    assert len(table) == 10 and len(lb.cells_table(board, "plain", columns="all").columns) > len(table.columns)
    assert list(lb.cells_table(board, "plain", columns="scene,median_m").columns) == ["scene", "median (m)"]
    tidy = lb.recall_frame(board, ((0.1, 10.0),))
    cell = read_cell(store.cell_path("refiner-s0"))
    pos, ori = pose_errors_independent(cell.arrays["pose_est"][3], cell.arrays["pose_gt"])
    want = np.mean((pos[:N] <= 0.1) & (ori[:N] <= 10.0))
    got = tidy[(tidy["method"] == "posenet+pae+pae-rpr@3") & (tidy["scene"] == "room")]["recall"].iloc[0]
    assert got == pytest.approx(want)
    text = lb.text(board, "recall", thresholds="0.1:10")
    assert "room (10 cm, 10°, %)" in text and "Average (10 cm, 10°, %)" in text


def test_dataset_plugin_declares_its_thresholds(tmp_path, run_bench):
    store = write_store(tmp_path / "wd", dataset="toy", decoder=False, second_recipe=False)
    plugin = tmp_path / "toy_data.py"
    plugin.write_text(
        "from aprbench.harness.api.hookspecs import hookimpl\n"
        "def toy(**options):\n"
        "    raise RuntimeError('not opened by the leaderboard')\n"
        "toy.thresholds = {'room': [(1.0, 1.0)], 'site': [(2.0, 3.0)]}\n"
        "@hookimpl\n"
        "def bench_datasets():\n"
        "    return {'toy': toy}\n"
    )
    out = run_bench("leaderboard", "--workdir", store.root, "--plugin", plugin, "--view", "recall")
    assert out.returncode == 0, out.stderr
    assert "room (1 m, 1°, %)" in out.stdout and "site (2 m, 3°, %)" in out.stdout


def test_filter_sort_group_and_errors(store, run_bench, capsys):
    out = run_bench("leaderboard", "--workdir", store.root, "--filter", "student=pae", "--filter", "refiner=pae*",
                    "--view", "cells", "--format", "csv", "--sort=-median_m")
    frame = pd.read_csv(io.StringIO(out.stdout))
    assert set(frame["refiner"]) == {"pae-rpr"} and list(frame["median_m"]) == sorted(frame["median_m"], reverse=True)
    _, sorted_scenes, _ = bench_here(capsys, "leaderboard", "--workdir", store.root, "--sort", "Average", "--format",
                                     "plain", "--filter", "overrides=")
    lines = [line.split()[0] for line in sorted_scenes.splitlines() if line.startswith("posenet")]
    assert lines[0] == "posenet+pae+pae-rpr@3" and lines[-1] in ("posenet", "posenet+pae")
    _, grouped, _ = bench_here(capsys, "leaderboard", "--workdir", store.root, "--group-by", "student", "--format",
                               "latex")
    assert "% student = pae" in grouped and "% student = -" in grouped
    for args, message in ((["--filter", "nope=1"], "no column 'nope'"), (["--sort", "zzz"], "--sort"),
                          (["--thresholds", "0.1"], "--thresholds"), (["--format", "xls"], "--format")):
        code, _, err = bench_here(capsys, "leaderboard", "--workdir", store.root, *args)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_latex_is_booktabs_with_units_escapes_and_bold(store):
    board = lb.build(store)
    poses = board.poses.copy()
    poses["method"] = poses["method"].str.replace("posenet", "pose_net&co")
    board.poses = poses
    out = lb.text(board, fmt="latex")
    assert "\\toprule" in out and "\\midrule" in out and "\\bottomrule" in out
    assert "room (m, $^\\circ$)" in out and "MB" in out
    assert "pose\\_net\\&co" in out and "\\textbf{" in out


def test_statistics_fill_the_delta_slot(store, monkeypatch):
    """The scenes view's Δ carries the marker of the Holm-adjusted p: * seed-level, † frames only."""
    from aprbench.harness.results import comparisons

    def stats_table(cells, iterations=None, **options):
        return pd.DataFrame([{"dataset": "synthetic", "scene": "room", "method": "posenet+pae", "fraction": 1.0,
                              "teacher_scenes": "room+site", "baseline": "posenet", "ci_basis": basis,
                              "confidence": 0.95, "delta_position_m": -0.012, "delta_position_p": 0.001,
                              "delta_position_p_adj": 0.004, "delta_orientation_deg": 0.3, "delta_orientation_p": 0.02,
                              "delta_orientation_p_adj": 0.08}])

    monkeypatch.setattr(comparisons, "stats_table", stats_table)
    basis = "seeds"
    out = lb.text(lb.build(store, filters=["overrides="]), fmt="plain")
    # in its own table under the scenes table: position adjusted p < 0.05 (*), orientation only its raw p
    assert "synthetic: Δ against the baseline" in out and "−0.01*, +0.30" in out
    out = " ".join(out.split())  # legend lines unwrapped
    assert "* seed-level" in out and "Holm" in out and "† frames only" not in out
    basis = "frames"
    out = " ".join(lb.text(lb.build(store, filters=["overrides="]), fmt="plain").split())
    assert "−0.01†, +0.30" in out and "--seeds 5" in out


def test_export_one_row_per_frame_and_iteration(store, run_bench, tmp_path, capsys):
    target = tmp_path / "frames.csv"
    out = run_bench("export", "--workdir", store.root, "--filter", "refiner=pae-rpr", "--out", target)
    assert out.returncode == 0, out.stderr
    frame = pd.read_csv(target)
    assert len(frame) == 2 * N * 4  # two scenes, iterations 0..3 stored
    assert sorted(frame["iteration"].unique()) == [0, 1, 2, 3]
    cols = ["est_t1", "est_t2", "est_t3", "est_q1", "est_q2", "est_q3", "est_q4",
            "gt_t1", "gt_t2", "gt_t3", "gt_q1", "gt_q2", "gt_q3", "gt_q4"]
    assert set(cols + ["img_path", "position_error_m", "orientation_error_deg", "dataset", "scene", "teacher",
                       "student", "encode", "refiner", "seed", *PROVENANCE_KEYS]) <= set(frame.columns)
    last = frame[frame["iteration"] == 3]
    pos, ori = pose_errors_independent(last[cols[:7]].to_numpy(), last[cols[7:]].to_numpy())
    assert np.allclose(pos, last["position_error_m"]) and np.allclose(ori, last["orientation_error_deg"], atol=1e-4)
    assert last["img_path"].iloc[0] == "room/frame-000.png"
    code, _, _ = bench_here(capsys, "export", "--workdir", store.root, "--filter", "scene=room", "--filter",
                            "iterations=3", "--out", target)
    assert code == 0
    assert len(pd.read_csv(target)) == N


def test_show_prints_only_the_cells_of_a_run(store):
    buf = io.StringIO()
    board = lb.show(store, None, ["teacher-s0", "student-s0"], file=buf)
    out = buf.getvalue()
    assert set(board.poses["cell"]) == {"teacher-s0", "student-s0"}
    assert "| posenet+pae " in out and "pae-rpr" not in out and "note:" not in out
    assert "(no cells" in lb.text(lb.build(store, filters=["teacher=nothing*"]))


def test_stats_view_gives_one_row_per_group_with_the_paired_comparison(tmp_path, capsys):
    """``--view stats --format csv``: seeds grouped (n_seeds, mean/std), Δ against the teacher with its interval
    and p (empty for a teacher row), plus the iteration K vs K-1 comparisons; recipes never merged."""
    store = write_store(tmp_path / "w", seeds=(0, 1, 2), decoder=False)
    code = main(["leaderboard", "--workdir", str(store.root), "--view", "stats", "--format", "csv"])
    frame = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert code == 0
    main_rows = frame[frame["comparison"].isna()]
    for col in ["n_seeds", "median_m_mean", "median_m_std", "baseline", "delta_position_m", "delta_position_ci_low",
                "delta_position_ci_high", "delta_position_p", "delta_orientation_deg", "delta_orientation_p",
                "ci_basis", "delta_position_p_adj", "delta_orientation_p_adj", "delta_position_seeds",
                "baseline_cells"]:
        assert col in frame, col
    other = main_rows["overrides"].astype(str).str.contains("epochs")  # the second recipe (--set teacher.epochs=2)
    quick = main_rows[~other]
    assert set(quick["n_seeds"]) == {3}
    teacher = quick[quick["student"] == "-"]
    assert teacher["baseline"].isna().all() and teacher["delta_position_m"].isna().all()
    refined = quick[quick["refiner"] != "-"]
    assert (refined["delta_position_ci_low"] <= refined["delta_position_m"]).all()
    assert (refined["delta_position_m"] <= refined["delta_position_ci_high"]).all()
    assert other.sum() == 2 and set(main_rows[other]["n_seeds"]) == {1}  # the other recipe's teacher stays apart
    assert "iteration" in set(frame["comparison"].dropna())
    assert main(["leaderboard", "--workdir", str(store.root), "--view", "stats"]) == 0
    human = capsys.readouterr().out
    assert "±" in human and "[95 % CI]" in human and "Holm" in human and "per-seed Δ" in human
    assert set(refined["ci_basis"]) == {"seeds"}
