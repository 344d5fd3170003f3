"""Hostile options and plugins through the CLI (in-process): one result is never counted twice (repeated axis
values, two weights files of one name), a plugin column never replaces a measured one, a replaced ``--set`` file
is never replayed, ``--jobs`` is capped, and numeric options out of range are refused in one line."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from board_helpers import write_store
from hostile_helpers import cli, snapshot

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = "synthetic:frames_per_sequence=24,train_sequences=3,test_sequences=1"
QUIET = ["--no-progress", "--no-report"]
RUN = ["run", "--dataset", TINY, "--scenes", "room", "--set", "epochs=1", *QUIET]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A work directory with one real teacher cell (one epoch); tests copy it before changing it."""
    root = tmp_path_factory.mktemp("tiny") / "w"
    out = cli("--workdir", root, *RUN, "--teacher", "posenet-mobilenet")
    assert out.code == 0, out.err
    return root


def rows(work: Path, *args: str) -> pd.DataFrame:
    import io

    out = cli("--workdir", work, "leaderboard", "--format", "csv", *args)
    assert out.code == 0, out.err
    frame = pd.read_csv(io.StringIO(out.out))
    return frame[frame["scene"] != "Average"].reset_index(drop=True)


@pytest.mark.parametrize("axes, note", [
    (["--teacher", "posenet-mobilenet", "--fraction", "1.0,1"], "--fraction 1.0 given more than once; merged"),
    (["--teacher", "posenet-mobilenet", "posenet-mobilenet"], "--teacher posenet-mobilenet given more than once"),
    (["--teacher", "posenet-mobilenet", "posenet-mobilenet@room"], "1 cell(s) named twice by the axes"),
    (["--teacher", "posenet-mobilenet", "--seeds", "0,0"], "--seeds 0 given more than once; merged"),
])
def test_repeated_axis_values_count_one_cell_once(tiny, tmp_path, axes, note):
    work = shutil.copytree(tiny, tmp_path / "w")
    out = cli("--workdir", work, *RUN, "--format", "csv", *axes)
    assert out.code == 0, out.err
    assert note in out.err and "1 cell(s) in this run: 1 from the store" in out.out
    board = rows(work, "--view", "scenes")
    assert len(board) == 1 and "n=2" not in out.out and int(board["n_seeds"].iloc[0]) == 1


def test_two_weights_files_of_one_name_are_two_rows(tiny, tmp_path):
    from aprbench.harness.api.manager import get_registry
    from aprbench.harness.running.stages.context import build_named

    given = []
    for folder, seed in (("a", 1), ("b", 2)):
        torch.manual_seed(seed)
        model = build_named(get_registry(), "teacher", "posenet-mobilenet", num_scenes=1)
        (tmp_path / folder).mkdir()
        torch.save(model.state_dict(), tmp_path / folder / "weights.pth")
        given.append(f"posenet-mobilenet={tmp_path / folder / 'weights.pth'}")
    work = shutil.copytree(tiny, tmp_path / "w")
    out = cli("--workdir", work, *RUN, "--teacher", *given)
    assert out.code == 0, out.err
    board = rows(work, "--view", "scenes", "--filter", "teacher=*weights.pth*")
    assert len(board) == 2 and set(board["n_seeds"]) == {1}
    names = sorted(board["method"])
    assert names[0] != names[1] and all(n.startswith("posenet-mobilenet=weights.pth#") for n in names)
    # the same file by another path is the same model: one cell, one row
    same = cli("--workdir", work, *RUN, "--teacher", given[0], given[0].replace("/a/", "/a/../a/"))
    assert same.code == 0 and "1 cell(s) named twice by the axes" in same.err


HOOK = '''
from aprbench.harness.api.hookspecs import hookimpl

@hookimpl
def bench_leaderboard_columns(frame):
    return {"median_m": [0.0] * len(frame), "score": [1.0] * len(frame)}
'''


def test_a_hook_column_never_replaces_a_measured_one(tmp_path):
    store = write_store(tmp_path / "w", decoder=False)
    plugin = tmp_path / "cheat.py"
    plugin.write_text(HOOK)
    plain = rows(store.root, "--view", "cells")
    out = cli("--workdir", store.root, "--plugin", plugin, "leaderboard", "--view", "cells", "--format", "csv")
    assert out.code == 0
    assert "bench_leaderboard_columns returned 'median_m', a column the leaderboard already has; shown as " \
           "'median_m (cheat)'" in out.err
    import io

    hooked = pd.read_csv(io.StringIO(out.out))
    assert hooked["median_m"].tolist() == plain["median_m"].tolist() and plain["median_m"].gt(0).all()
    assert (hooked["median_m (cheat)"] == 0).all() and (hooked["score"] == 1).all()


def test_a_replaced_set_file_is_not_replayed(tmp_path):
    import timm

    pre = tmp_path / "pre.pth"
    torch.manual_seed(1)
    torch.save({k: v.clone() for k, v in timm.create_model("test_convnext").state_dict().items()}, pre)
    args = [*RUN, "--teacher", "posenet", "--set", "teacher.backbone=test_convnext",
            "--set", f"teacher.pretrained_file={pre}"]
    first = cli("--workdir", tmp_path / "w", *args)
    assert first.code == 0 and "0 from the store, 1 computed" in first.out, first.err
    stat = pre.stat()
    other = {k: (v * 1.5 if v.is_floating_point() else v).clone() for k, v in torch.load(pre, weights_only=True).items()}
    torch.save(other, pre)
    os.utime(pre, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same time, same inode: only content differs
    assert pre.stat().st_size == stat.st_size and pre.stat().st_ino == stat.st_ino
    second = cli("--workdir", tmp_path / "w", *args)
    assert second.code == 0 and "0 from the store, 1 computed" in second.out and second.out != first.out


def test_jobs_is_capped_at_the_chains_with_work_left(tiny, tmp_path):
    work = shutil.copytree(tiny, tmp_path / "w")
    for cell in (work / "cells").glob("*.h5"):
        cell.unlink()
    out = cli("--workdir", work, *RUN, "--teacher", "posenet-mobilenet", "--jobs", "1000")
    assert out.code == 0
    assert "--jobs 1000 capped at 1 worker process(es): 1 teacher chain(s) with cells left to compute" in out.err
    assert "0 from the store, 1 computed" in out.out


@pytest.mark.parametrize("args, message", [
    (["compare", "a", "b", "--confidence", "1.5"], "--confidence 1.5: must be in (0, 1)"),
    (["compare", "a", "b", "--resamples", "0"], "--resamples 0: must be >= 1"),
    (["logs", "posenet", "--last", "-1"], "--last -1: must be >= 0"),
    (["leaderboard", "--view", "recall", "--thresholds", "0.1:nan"], "--thresholds '0.1:nan': expected positive"),
    (["run", "--dataset", TINY, "--teacher", "posenet-mobilenet", "--seeds", "1000000000"],
     "--seeds 1000000000: a count must be in 1..1000"),
    (["run", "--dataset", TINY, "--teacher", "posenet-mobilenet", "--student", "pae", "--refiner", "pae-rpr",
      "--iterations", "0,5000"], "--iterations 5000: at most 1000 refinement steps"),
    (["run", "--dataset", TINY, "--teacher", "posenet-mobilenet", "--jobs", "0"], "--jobs 0: need at least 1"),
    (["data", "render", "--scene", "room", "--out", "{tmp}/r", "--samples", "-1"], "--samples -1: must be >= 0"),
    (["decode", "--dataset", TINY, "--teacher", "posenet-mobilenet", "--student", "pae", "-n", "0", "--out",
      "{tmp}/g.png"], "-n 0: the grid needs at least 1 frame"),
])
def test_numeric_options_out_of_range_are_one_line(tmp_path, args, message):
    write_store(tmp_path / "w", decoder=False)
    before = snapshot(tmp_path)
    out = cli("--workdir", tmp_path / "w", *[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert out.code == 2 and out.err.startswith("bench: error: ") and message in out.err
    assert len(out.err.strip().splitlines()) == 1
    assert snapshot(tmp_path, tmp_path / "w" / "replay") == before
