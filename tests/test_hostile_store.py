"""Hostile store and output folders through the CLI (in-process): a busy cell is waited for or skipped, never
deleted; a damaged cell or side file is named, moved aside or ignored, and recomputed; an output folder keeps
every file the user put there. Each case asserts the exit code, the message naming the culprit, no traceback
(:func:`hostile_helpers.cli`) and that nothing outside the work directory or the named output changed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from board_helpers import write_store
from hostile_helpers import cli, snapshot

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = "synthetic:frames_per_sequence=24,train_sequences=3,test_sequences=1"
RUN = ["run", "--dataset", TINY, "--scenes", "room", "--teacher", "posenet-mobilenet", "--set", "epochs=1",
       "--no-progress", "--no-report"]
HOLD = ("import h5py, sys, time\nf = h5py.File(sys.argv[1], 'a')\nprint('held', flush=True)\n"
        "time.sleep(float(sys.argv[2]))\nf.close()\n")


def hold(path: Path, seconds: float) -> subprocess.Popen:
    """Another process holding ``path`` open for writing (HDF5's lock) for ``seconds``."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


# --------------------------------------------------------------------------- busy cells
def test_busy_cell_is_skipped_with_a_warning_and_never_deleted(tmp_path, monkeypatch):
    store = write_store(tmp_path / "w", decoder=False)
    cell = store.cell_path("student-s0")
    before = cell.read_bytes()
    monkeypatch.setenv("BENCH_BUSY_WAIT", "0.5")
    holder = hold(cell, 3)
    busy = cli("--workdir", store.root, "leaderboard", "--view", "cells", "--format", "csv")
    holder.communicate()
    assert busy.code == 0
    assert f"{cell} is busy (held open for writing by another process); skipped, left as it is" in busy.err
    assert cell.read_bytes()[:16] == before[:16] and not (store.root / "damaged").exists()
    assert ",student-s0," not in busy.out and ",teacher-s0," in busy.out
    again = cli("--workdir", store.root, "leaderboard", "--view", "cells", "--format", "csv")  # not the replayed table
    assert again.code == 0 and "busy" not in again.err and ",student-s0," in again.out


def test_busy_cell_is_waited_for(tmp_path, monkeypatch):
    store = write_store(tmp_path / "w", decoder=False)
    monkeypatch.setenv("BENCH_BUSY_WAIT", "60")
    holder = hold(store.cell_path("student-s0"), 1.0)
    out = cli("--workdir", store.root, "leaderboard", "--view", "cells", "--format", "csv")
    holder.communicate()
    assert out.code == 0 and "busy" not in out.err and ",student-s0," in out.out


# --------------------------------------------------------------------------- damaged cells
@pytest.mark.parametrize("command", [["leaderboard"], ["export", "--out", "{tmp}/frames.csv"],
                                     ["report", "--out", "{tmp}/report"]])
def test_cell_missing_its_arrays_is_named_moved_aside_and_left_out(tmp_path, command):
    store = write_store(tmp_path / "w", decoder=False)
    cell = store.cell_path("student-s0")
    with h5py.File(cell, "a") as fh:  # valid HDF5, complete marker, no estimates
        del fh["pose_est"]
    before = snapshot(tmp_path, store.root)
    out = cli("--workdir", store.root, *[a.replace("{tmp}", str(tmp_path)) for a in command])
    assert out.code == 0, out.err
    assert f"{cell}: damaged (missing array pose_est); moved aside to {store.root / 'damaged' / 'cells' / cell.name}" \
        in out.err
    assert not cell.exists() and (store.root / "damaged" / "cells" / cell.name).is_file()
    after = snapshot(tmp_path, store.root, tmp_path / "frames.csv", tmp_path / "report")
    assert after == before
    if command[0] == "export":
        text = (tmp_path / "frames.csv").read_text()
        assert "student-s0" not in text and "teacher-s0" in text


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A work directory with one real cell (tiny teacher, one epoch), copied by each test that changes it."""
    root = tmp_path_factory.mktemp("tiny") / "w"
    out = cli("--workdir", root, *RUN)
    assert out.code == 0, out.err
    return root


def test_run_recomputes_a_cell_missing_its_arrays(tiny, tmp_path):
    work = shutil.copytree(tiny, tmp_path / "w")
    (cell,) = (work / "cells").glob("*.h5")
    with h5py.File(cell, "a") as fh:
        del fh["position_error_m"]
    out = cli("--workdir", work, *RUN)
    assert out.code == 0
    assert f"{cell}: damaged (missing array position_error_m); moved aside" in out.err
    assert "0 from the store, 1 computed, 0 failed" in out.out
    with h5py.File(cell) as fh:
        assert fh["position_error_m"].shape[1] == fh["pose_gt"].shape[0]


def test_damaged_side_files_are_named_and_ignored(tiny, tmp_path):
    work = shutil.copytree(tiny, tmp_path / "w")
    (folder,) = (work / "artifacts" / "teacher").glob("posenet-mobilenet-*")
    (folder / "logs" / "log.csv").write_text("epoch,loss\n1,abc\n2\n")
    (folder / "weights.json").write_text("[not json")
    (work / "timings.json").write_text('{"teacher posenet-mobilenet": "x", "evaluation per cell": Infinity}')
    for record in (work / "replay").glob("*.json"):
        record.write_text('{"inputs": [], "digest": 1, "payload": 3}')
    before = snapshot(tmp_path, work)
    run = cli("--workdir", work, *RUN)
    assert run.code == 0 and "1 from the store, 0 computed, 0 failed" in run.out
    logs = cli("--workdir", work, "logs", "posenet-mobilenet", "--out", tmp_path / "curves")
    assert logs.code == 0 and "(no readable epochs)" in logs.out
    assert f"{folder / 'logs' / 'log.csv'}: damaged line(s) 2, 3 (not numbers); left out" in logs.err
    assert f"{folder / 'weights.json'}: damaged sidecar" in logs.err
    report = cli("--workdir", work, "report", "--out", tmp_path / "report")
    assert report.code == 0 and (tmp_path / "report" / "index.html").is_file()
    assert snapshot(tmp_path, work, tmp_path / "report", tmp_path / "curves") == before


# --------------------------------------------------------------------------- output folders
def test_report_out_keeps_the_users_files_and_replaces_only_its_own(tmp_path):
    store = write_store(tmp_path / "w", decoder=False)
    out = tmp_path / "figures"
    out.mkdir()
    (out / "my-plot.png").write_bytes(b"the user's own figure")
    (out / "notes.txt").write_text("mine")
    first = cli("--workdir", store.root, "report", "--out", out)
    assert first.code == 0 and (out / "index.html").is_file()
    assert (out / "my-plot.png").read_bytes() == b"the user's own figure" and (out / "notes.txt").read_text() == "mine"
    figures = {p.name for p in out.glob("*.png")} - {"my-plot.png"}
    assert {"cdf-synthetic-room.png", "scenes-synthetic.png"} <= figures
    narrowed = cli("--workdir", store.root, "report", "--out", out, "--filter", "refiner=-")
    assert narrowed.code == 0
    now = {p.name for p in out.glob("*.png")}
    assert "my-plot.png" in now and not any(n.startswith("iterations-") for n in now)  # its own stale figures went


def test_report_refuses_to_overwrite_a_file_it_did_not_write(tmp_path):
    store = write_store(tmp_path / "w", decoder=False)
    out = tmp_path / "site"
    out.mkdir()
    (out / "index.html").write_text("<p>the user's home page</p>")
    before = snapshot(tmp_path, store.root)
    result = cli("--workdir", store.root, "report", "--out", out)
    assert result.code == 2
    assert result.err.strip() == (f"bench: error: {out / 'index.html'} exists and was not written by bench report; "
                                  "nothing was changed (move it, or choose another --out)")
    assert snapshot(tmp_path, store.root) == before and sorted(p.name for p in out.iterdir()) == ["index.html"]


LABELS = "scene,split,seq,img_path,t1,t2,t3,q1,q2,q3,q4,note\n" + "".join(
    f"room,{'train' if i < 4 else 'test'},{'a' if i < 4 else 'b'},img/f{i}.png,{0.2 * i},0.1,1.2,1,0,0,0,n{i}\n"
    for i in range(6))


@pytest.mark.parametrize("where", ["DS", "."])
def test_render_refuses_the_dataset_it_reads(tmp_path, where):
    ds = tmp_path / "DS"
    (ds / "img").mkdir(parents=True)
    (ds / "labels.csv").write_text(LABELS)
    (ds / "img" / "f0.png").write_bytes(b"the user's image")
    before = snapshot(tmp_path)
    target = ds if where == "DS" else tmp_path
    out = cli("data", "render", "--poses", ds / "labels.csv", "--out", target)
    assert out.code == 2 and len(out.err.strip().splitlines()) == 1
    assert f"--out {target} holds --poses {ds / 'labels.csv'}, the dataset being read" in out.err
    assert snapshot(tmp_path) == before


def test_render_refuses_a_foreign_folder_and_rerenders_its_own(tmp_path):
    (tmp_path / "labels.csv").write_text(LABELS)
    foreign = tmp_path / "photos"  # beside the labels: a folder of its own, but the user's
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"jpeg")
    before = snapshot(tmp_path)
    refused = cli("data", "render", "--poses", tmp_path / "labels.csv", "--out", foreign, "--samples", "0")
    assert refused.code == 2
    assert f"--out {foreign} is not empty and was not written by bench data render (holiday.jpg)" in refused.err
    assert snapshot(tmp_path) == before
    twin = tmp_path / "twin"
    for _ in range(2):  # a folder it rendered itself is rendered again
        out = cli("data", "render", "--poses", tmp_path / "labels.csv", "--out", twin, "--samples", "0",
                  "--image-size", "32")
        assert out.code == 0, out.err
    assert sorted(p.name for p in (twin / "img").iterdir()) == [f"f{i}.png" for i in range(6)]
