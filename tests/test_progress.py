"""Progress that tells the truth: ETA from computed cells only, lines in a log, nothing under --quiet, lock waits."""

from __future__ import annotations

import io
import json
import re
import threading
import time

import pytest
from filelock import FileLock

from aprbench.harness.cli.main import main
from aprbench.harness.running.progress import CellProgress, Eta, StageTimes, load_estimates, resolve_mode
from aprbench.harness.store.hdf5 import Store
from test_bench_run import TINY, bench

SMALL = ["run", "--dataset", TINY, "--scenes", "room", "--teacher", "posenet-mobilenet", "--student", "none", "pae",
         "--set", "epochs=2", "--no-report"]


def test_eta_counts_only_computed_cells():
    eta = Eta(to_compute=6)
    assert eta.remaining() is None  # nothing measured yet
    eta.done(10.0)
    eta.done(20.0)  # mean 15 s per computed cell, 4 left
    assert eta.remaining() == pytest.approx(15.0 * 4)
    eta.cached()  # found in the store meanwhile: less work left, the pace unchanged
    eta.cached()
    assert eta.remaining() == pytest.approx(15.0 * 2)
    eta.done(3.0)  # (10 + 20 + 3) / 3 per cell, 1 left
    assert eta.remaining() == pytest.approx(11.0)


def test_modes_follow_options_and_the_terminal():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert resolve_mode("auto", Tty()) == "bars"
    assert resolve_mode("auto", io.StringIO()) == "lines"
    assert resolve_mode(True, io.StringIO()) == "lines"
    assert resolve_mode(False) == "quiet"
    assert resolve_mode("quiet", Tty()) == "quiet"
    with pytest.raises(ValueError, match="progress mode"):
        resolve_mode("loud")


def test_cell_lines_number_only_cells_to_compute(capsys):
    shown = CellProgress(total=5, stored=2, mode="lines")
    shown.done("a", 1.25)
    shown.cached("b")  # another process finished it: no line, and the count of cells to compute drops
    shown.done("c", 0.5, failed=True)
    shown.close()
    assert capsys.readouterr().err.splitlines() == ["[1/3] cell a computed in 1.2 s", "[2/2] cell c FAILED after 0.5 s"]


def test_stage_times_merge_into_the_estimate_table(tmp_path):
    path = tmp_path / "timings.json"
    first, second = StageTimes(), StageTimes()
    first.add("teacher a", 3.0)
    first.add("teacher a", 1.0)
    first.add("evaluation", 2.0)
    first.save(path)
    second.add("teacher b", 5.0)
    second.save(path)
    assert load_estimates(path) == {"teacher a": 4.0, "evaluation": 2.0, "teacher b": 5.0}
    assert first.training() == 4.0
    assert "total" in first.table() and "6.0 s" in first.table()


def test_waiting_on_a_held_lock_says_which_and_since_when(tmp_path, capfd):
    store = Store(tmp_path)
    path = tmp_path / "locks" / "teacher-posenet-mobilenet-abc123.lock"
    path.parent.mkdir(parents=True)
    since = time.time() - 3600
    held = threading.Event()

    def hold() -> None:  # another holder: a separate FileLock instance in another thread, released a moment later
        with FileLock(path):
            path.with_suffix(".owner").write_text(json.dumps({"pid": 4242, "host": "node7", "since": since}))
            held.set()
            time.sleep(0.5)

    threading.Thread(target=hold).start()
    held.wait()
    t0 = time.perf_counter()
    with store.lock("teacher-posenet-mobilenet-abc123"):
        waited = time.perf_counter() - t0
        owner = json.loads(path.with_suffix(".owner").read_text())
    err = capfd.readouterr().err
    assert waited >= 0.4  # it blocked until the other holder let go
    assert err.count("\n") == 1
    stamp = time.strftime("%H:%M:%S", time.localtime(since))
    assert err == (f"bench: waiting for teacher-posenet-mobilenet-abc123 (locked by process 4242 on node7 since "
                   f"{stamp}) ...\n")
    assert owner["pid"] != 4242  # the new holder wrote its own note
    with store.lock("teacher-posenet-mobilenet-abc123"):  # free: no line
        pass
    assert capfd.readouterr().err == ""


def test_a_log_gets_one_line_per_step_and_quiet_gets_none(tmp_path, capsys):
    out = bench(tmp_path, *SMALL)  # stderr is a pipe, as in a batch job
    assert out.returncode == 0, out.stderr
    assert "\r" not in out.stderr and "\r" not in out.stdout
    err = out.stderr.splitlines()
    assert err[0] == "plan: 2 cell(s) to compute, 0 from the store; models they need (trained unless already stored):"
    assert "  teacher: posenet-mobilenet" in err and "  student: pae" in err
    assert any(line.startswith("  time: no earlier run") for line in err)
    epochs = [line for line in err if re.fullmatch(r"  posenet-mobilenet: epoch [12]/2 loss [\d.e+-]+, \d+ samples/s "
                                                     r"\([\d.]+ s\)", line)]
    assert len(epochs) == 2
    assert sum(bool(re.fullmatch(r"teacher posenet-mobilenet \(room\) trained in [\d.]+ s \(2 epochs\)", line))
               for line in err) == 1
    cells = [line for line in err if line.startswith("[")]
    assert len(cells) == 2 and cells[0].startswith("[1/2] cell ") and cells[1].startswith("[2/2] cell ")
    stages = err[err.index("time per stage:") + 1:]
    names = [line.split("  ")[1].strip() for line in stages if line.strip()]
    assert names[0] == "render/data" and names[-1] == "total"
    assert set(names) == {"render/data", "teacher posenet-mobilenet", "student pae", "evaluation",
                          "cost re-measurement", "leaderboard and report", "total"}
    assert "re-measuring ms/frame of 2 cell(s), no worker training (3 repeats each)" in err
    assert "2 cell(s) in this run: 0 from the store, 2 computed" in out.stdout
    assert {"teacher posenet-mobilenet", "student pae", "evaluation per cell"} <= set(load_estimates(tmp_path / "timings.json"))

    # a student on the other encoding: a cell to compute, a model to train, and --quiet says nothing of it
    capsys.readouterr()
    assert main(["--workdir", str(tmp_path), *SMALL, "--encode", "ground_truth", "--quiet"]) == 0
    quiet = capsys.readouterr()
    assert quiet.err == ""
    assert "2 cell(s) in this run: 1 from the store, 1 computed" in quiet.out
    # another student recipe: now a rough estimate from the earlier runs' times
    again = [*SMALL, "--set", "student.epochs=1"]
    assert main(["--workdir", str(tmp_path), *again]) == 0
    err = capsys.readouterr().err
    assert err.startswith("plan: 1 cell(s) to compute, 1 from the store;")
    assert re.search(r"\n  time: roughly [\d.]+ s \(from earlier runs", err)
    # a warm rerun: no plan, no progress, no stage times, just the leaderboard
    assert main(["--workdir", str(tmp_path), *again]) == 0
    warm = capsys.readouterr()
    assert warm.err == "" and "2 cell(s) in this run: 2 from the store, 0 computed" in warm.out
