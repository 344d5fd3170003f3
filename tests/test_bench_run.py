"""`bench run` end to end, as a user runs it, on a tiny synthetic dataset: in this process (``bench_in_process``),
and as a real process where one is under test (killed mid-matrix, what a replay imports, entry points, a second
process reproducing the first bit for bit)."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from aprbench.harness.store.hdf5 import read_h5
from conftest import bench_in_process, bench_process

TINY = "synthetic:frames_per_sequence=24,train_sequences=3,test_sequences=1"
FAST = ["--set", "epochs=1", "--no-progress", "--no-report"]
README = Path(__file__).resolve().parents[1] / "README.md"
BROKEN_TEACHER = (  # a plugin whose teacher fails in every cell
    "from aprbench.harness.api.hookspecs import hookimpl\n"
    "from aprbench.plugins.teachers.posenet import PoseNet\n"
    "class Broken(PoseNet):\n"
    "    def encode(self, images, scene=None):\n"
    "        raise RuntimeError('this teacher always fails')\n"
    "@hookimpl\n"
    "def bench_teachers():\n"
    "    return {'broken-apr': lambda **kw: Broken(**{**kw, 'backbone': 'mobilenetv2_050'})}\n"
)


def bench(workdir: Path, *args: str, env: dict | None = None, timeout: float = 300,
          process: bool = False) -> subprocess.CompletedProcess:
    """``bench --workdir WORKDIR ARGS``, in this process unless ``process``."""
    run = bench_process if process else bench_in_process
    return run("--workdir", workdir, *args, env=env, timeout=timeout)


def cell_files(workdir: Path) -> dict[str, tuple[int, int]]:
    """Cell file name -> (inode, mtime_ns)."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (workdir / "cells").glob("*.h5")}


def test_matrix_runs_caches_and_prints_the_leaderboard(tmp_path, tiny_models):
    tiny_models(tmp_path)  # the models: trained once per session (conftest.TINY_MATRIX is this matrix)
    args = ["run", "--dataset", TINY, "--scenes", "room", "--teacher", "posenet-mobilenet", "--student", "none", "pae",
            "--refiner", "none", "pae-rpr", "--iterations", "0,1,2", *FAST]
    first = bench(tmp_path, *args)
    assert first.returncode == 0, first.stderr[-3000:]
    # teacher alone, pae, and one pae-rpr cell that runs 2 iterations and stores both
    assert "3 cell(s) in this run: 0 from the store, 3 computed, 0 failed" in first.stdout
    assert "posenet-mobilenet" in first.stdout and "pae-rpr" in first.stdout
    files = cell_files(tmp_path)
    assert len(files) == 3
    shapes = []
    for name in files:
        arrays, attrs = read_h5(tmp_path / "cells" / name)
        shapes.append(arrays["pose_est"].shape)
        assert arrays["pose_gt"].shape == (24, 7) and arrays["position_error_m"].shape == arrays["pose_est"].shape[:2]
        assert attrs["versions"]["torch"] and attrs["cell"]["dataset"] == "synthetic"
        assert attrs["result"]["per_iteration"][0]["per_scene"][0]["scene"] == "room"
        assert attrs["provenance"]["profile"] == "quick" and attrs["provenance"]["overrides"] == "epochs=1"
    assert sorted(shapes) == [(1, 24, 7), (1, 24, 7), (3, 24, 7)]

    again = bench(tmp_path, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "3 from the store, 0 computed" in again.stdout
    assert cell_files(tmp_path) == files  # nothing rewritten
    # nothing it read changed: the rerun replayed the same leaderboard without loading plugins or torch
    board_of = lambda out: out[out.index("dataset synthetic"):out.index("cell(s) in this run")]  # noqa: E731
    assert board_of(again.stdout) == board_of(first.stdout)
    probe = [sys.executable, "-c", "import sys; from aprbench.harness.cli.main import main; rc = main(sys.argv[1:]); "
             "print('torch loaded:', 'torch' in sys.modules); sys.exit(rc)", "--workdir", str(tmp_path), *args]
    warm = subprocess.run(probe, capture_output=True, text=True, timeout=300)
    assert warm.returncode == 0 and "torch loaded: False" in warm.stdout, warm.stderr[-2000:]
    cell = next((tmp_path / "cells").glob("*.h5"))
    os.utime(cell, ns=(cell.stat().st_atime_ns, cell.stat().st_mtime_ns + 10**9))  # a cell rewritten by another run
    files = cell_files(tmp_path)
    checked = subprocess.run(probe, capture_output=True, text=True, timeout=300)
    assert checked.returncode == 0 and "torch loaded: True" in checked.stdout, checked.stderr[-2000:]
    # the same board, but for ms/frame: a cell rewritten after its cost was measured is timed again
    without_cost = lambda out: [ln.rsplit("|", 2)[0] if ln.startswith("|") else ln  # noqa: E731
                                for ln in board_of(out).splitlines()]
    assert "3 from the store, 0 computed" in checked.stdout and without_cost(checked.stdout) == without_cost(first.stdout)

    board = bench(tmp_path, "leaderboard", "--format", "csv")
    assert board.returncode == 0, board.stderr
    frame = pd.read_csv(io.StringIO(board.stdout))
    assert len(frame) == 4
    assert set(frame["refiner"]) == {"-", "pae-rpr"}
    assert sorted(frame["iterations"]) == [0, 0, 1, 2]
    assert (frame["median_m"] >= 0).all() and (frame["median_deg"] >= 0).all()
    latex = bench(tmp_path, "leaderboard", "--format", "latex", "--group-by", "student", "--sort", "median_deg")
    assert latex.returncode == 0 and "\\toprule" in latex.stdout and "% student = pae" in latex.stdout

    report = bench(tmp_path, "report", "--out", str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr
    pngs = sorted(p.name for p in (tmp_path / "report").glob("*.png"))
    assert {"cdf-synthetic-room.png", "scenes-synthetic.png", "iterations-synthetic-room.png"} <= set(pngs)
    assert "<table>" in (tmp_path / "report" / "index.html").read_text()


def test_sigkill_mid_matrix_then_rerun_finishes_without_recomputing(tmp_path):
    args = ["run", "--dataset", TINY, "--scenes", "room", "--teacher", "posenet-mobilenet", "--student", "pae",
            "--encode", "estimate", "ground_truth", "--refiner", "pae-rpr", "--iterations", "1,2,3", *FAST]
    proc = subprocess.Popen([sys.executable, "-m", "aprbench.harness", "--workdir", str(tmp_path), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    deadline = time.monotonic() + 240
    while not cell_files(tmp_path) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = cell_files(tmp_path)
    assert before, "the run was killed before it finished any cell"

    rerun = bench(tmp_path, *args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    total = 1 + 2 * (1 + 1)  # teacher; per encoding: pae, one pae-rpr cell (3 iterations)
    m = re.search(r"(\d+) cell\(s\) in this run: (\d+) from the store, (\d+) computed, 0 failed", rerun.stdout)
    assert m and int(m.group(1)) == total
    assert int(m.group(2)) == len(before) and int(m.group(3)) == total - len(before)
    after = cell_files(tmp_path)
    assert len(after) == total
    assert all(after[name] == stat for name, stat in before.items())  # finished cells were not recomputed
    for name in after:
        assert read_h5(tmp_path / "cells" / name) is not None


def test_failing_cell_is_recorded_and_the_rest_goes_on(tmp_path, tiny_models):
    tiny_models(tmp_path)  # posenet-mobilenet is stored; the broken teacher is not
    plugin = tmp_path / "broken_apr.py"
    plugin.write_text(BROKEN_TEACHER)
    out = bench(tmp_path, "--plugin", str(plugin), "run", "--dataset", TINY, "--scenes", "room",
                "--teacher", "broken-apr", "posenet-mobilenet", *FAST)
    assert out.returncode == 1
    assert "this teacher always fails" in out.stderr and "1 cell(s) failed" in out.stderr
    assert "1 computed, 1 failed" in out.stdout
    assert len(cell_files(tmp_path)) == 1
    assert len(list((tmp_path / "cells").glob("*.failed.json"))) == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--teacher", "nope"], "unknown teacher 'nope'; known teachers: "),
        (["run", "--teacher", "posenet-mobilenet", "--shard", "2/x"], "--shard"),
        (["run", "--teacher", "posenet-mobilenet=/no/such.pth"], "does not exist"),
        (["run", "--dataset", "sevenscenes:root=/no/such/dir", "--teacher", "posenet-mobilenet"], "/no/such/dir"),
        (["run", "--dataset", TINY, "--teacher", "posenet-mobilenet", "--iterations", "1,x"], "comma-separated"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    out = bench(tmp_path, *args, "--no-progress")
    assert out.returncode == 2, out.stderr
    assert message in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def _readme_plugin() -> str:
    text = README.read_text()
    block = re.search(r"```python\n(\"\"\"tiny_apr.*?)```", text, re.S)
    assert block, "README lost its plugin example"
    return block.group(1)


def test_readme_third_party_apr_installed_by_entry_point_runs_in_a_matrix(tmp_path, tiny_models):
    tiny_models(tmp_path)  # posenet-mobilenet and its pae are stored; tiny-apr is trained here
    code = _readme_plugin()
    assert len(code.strip().splitlines()) < 40
    site = tmp_path / "site"
    (site / "tiny_apr-0.1.dist-info").mkdir(parents=True)
    (site / "tiny_apr.py").write_text(code)
    (site / "tiny_apr-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: tiny-apr\nVersion: 0.1\n")
    (site / "tiny_apr-0.1.dist-info" / "entry_points.txt").write_text("[bench]\ntiny_apr = tiny_apr\n")
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]), "BENCH_PLUGINS": "tiny_apr"}

    listing = bench(tmp_path, "plugins", env=env, process=True)  # entry points found through PYTHONPATH
    assert listing.returncode == 0
    assert re.search(r"teacher\s*\|\s*tiny-apr\s*\|\s*1\s*\|\s*entry point tiny-apr 0.1 \(tiny_apr\)", listing.stdout)

    out = bench(tmp_path, "run", "--dataset", TINY, "--scenes", "room", "--teacher", "tiny-apr", "posenet-mobilenet",
                "--student", "none", "pae", *FAST, env=env, process=True)
    assert out.returncode == 0, out.stderr[-3000:]
    board = bench(tmp_path, "leaderboard", "--format", "csv", env=env, process=True)
    frame = pd.read_csv(io.StringIO(board.stdout))
    assert set(frame["teacher"]) == {"tiny-apr", "posenet-mobilenet"}
    assert set(frame[frame["teacher"] == "tiny-apr"]["student"]) == {"-", "pae"}


def test_same_seed_reproduces_every_estimate_bit_for_bit_and_seeds_differ(tmp_path):
    """Seeds are a matrix axis; a workdir deleted and the same matrix run again gives the same estimates."""
    args = ["run", "--dataset", TINY, "--scenes", "room", "--teacher", "posenet-mobilenet", "--student", "pae",
            "--refiner", "pae-rpr", "--iterations", "1", "--seeds", "0,1", *FAST]

    def estimates(workdir: Path, process: bool) -> dict[tuple, object]:
        out = bench(workdir, *args, process=process, env={"OMP_NUM_THREADS": "1"})  # bit for bit at one thread count
        assert out.returncode == 0, out.stderr[-3000:]
        assert "6 cell(s) in this run" in out.stdout  # teacher, pae, pae-rpr per seed
        found = {}
        for path in (workdir / "cells").glob("*.h5"):
            arrays, attrs = read_h5(path)
            c = attrs["cell"]
            found[(c["seed"], c["student"], c["refiner"])] = arrays["pose_est"]
        return found

    first = estimates(tmp_path / "a", process=True)  # another process: hash seeds and caches of its own
    second = estimates(tmp_path / "b", process=False)
    assert first.keys() == second.keys() and len(first) == 6
    for key in first:
        assert (first[key] == second[key]).all(), key  # bit for bit
    assert not (first[(0, None, None)] == first[(1, None, None)]).all()  # another seed trains another teacher


def test_validation_split_run_logs_held_out_curves_and_labels_its_rows(tmp_path):
    """``--dataset ...,validation=true``: trained on all but each scene's last training sequence, scored on that
    one; every model's log has per-epoch held-out values and the leaderboard says what it was scored on."""
    args = ["run", "--dataset", TINY + ",validation=true", "--scenes", "room", "--teacher", "posenet-mobilenet",
            "--student", "pae", "--refiner", "pae-rpr", "--iterations", "1", "--set", "epochs=2", "--no-progress",
            "--no-report"]
    done = bench(tmp_path, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "synthetic (validation)" in done.stdout
    for name in (tmp_path / "cells").glob("*.h5"):
        arrays, attrs = read_h5(name)
        assert attrs["cell"]["evaluated_on"] == "validation" and arrays["pose_gt"].shape[-2:] == (24, 7)  # seq 3
    logs = {p.parts[-4]: pd.read_csv(p) for p in (tmp_path / "artifacts").glob("*/*/logs/log.csv")}
    assert set(logs) == {"teacher", "student", "refiner"}
    assert list(logs["teacher"]["epoch"]) == [1, 2] and (logs["teacher"][["val_m", "val_deg"]] > 0).all().all()
    for kind in ("student", "refiner"):
        assert logs[kind]["val_loss"].notna().all(), kind
    assert (logs["teacher"]["cpu_seconds"] > 0).all()
    # the validation data is told apart from the full dataset: a plain run trains its own models
    plain = bench(tmp_path, "run", "--dataset", TINY, "--scenes", "room", "--teacher", "posenet-mobilenet",
                  "--student", "none", "--refiner", "none", "--set", "epochs=1", "--no-progress", "--no-report")
    assert plain.returncode == 0 and "synthetic (validation)" not in plain.stdout
    assert len(list((tmp_path / "artifacts" / "teacher").iterdir())) == 2
