"""Hostile dataset input through ``bench data check``: each case refused (or warned about) naming its culprit.

Every case runs ``bench data check`` (in this process, as ``run_bench`` does) on a tiny
hand-made dataset and asserts the exit status, that the message names the
file, row (or line) and column, that no traceback is printed, and that
nothing outside the work directory changed (the dataset files are untouched
and nothing new appears beside the test folder).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import bench_in_process

LABEL_HEADER = "scene,split,seq,img_path,t1,t2,t3,q1,q2,q3,q4"
UNIT_Q = "1,0,0,0"


# --------------------------------------------------------------------------- harness
def snapshot(folder: Path, skip: Path) -> dict[str, tuple[int, int]]:
    """``relative path -> (size, mtime_ns)`` of every file under ``folder`` except under ``skip``."""
    out = {}
    for p in folder.rglob("*"):
        if p.is_file() and skip not in p.parents:
            st = p.stat()
            out[str(p.relative_to(folder))] = (st.st_size, st.st_mtime_ns)
    return out


def check(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Run ``bench data check ARGS --workdir tmp/work``; assert no traceback and no file changed outside the workdir."""
    work = tmp_path / "work"
    before, beside = snapshot(tmp_path, work), sorted(os.listdir(tmp_path.parent))
    proc = bench_in_process("data", "check", *args, "--workdir", work, env={"OMP_NUM_THREADS": "1", "BENCH_PLUGINS": "none"},
                            cwd=tmp_path)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    assert snapshot(tmp_path, work) == before
    assert sorted(os.listdir(tmp_path.parent)) == beside
    return proc


def refused(proc: subprocess.CompletedProcess, *parts: str) -> None:
    assert proc.returncode != 0, proc.stdout
    for part in parts:
        assert part in proc.stderr, (part, proc.stderr)


def png(path: Path, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)


# --------------------------------------------------------------------------- label CSV fixtures
def good_rows() -> list[str]:
    return [
        f"a,train,seq-01,a/seq-01/f0.png,0,0,0,{UNIT_Q}",
        f"a,train,seq-01,a/seq-01/f1.png,1,0,0,{UNIT_Q}",
        f"a,test,seq-02,a/seq-02/f0.png,0,1,0,{UNIT_Q}",
    ]


def labels_dataset(tmp_path: Path, rows: list[str]) -> Path:
    """``tmp/ds/labels.csv`` with ``rows``; every safe relative image path gets a PNG."""
    ds = tmp_path / "ds"
    ds.mkdir()
    for row in rows:
        rel = row.split(",")[3]
        if rel and not rel.startswith(("/", "..")) and ".." not in rel:
            png(ds / rel)
    (ds / "labels.csv").write_text("\n".join([LABEL_HEADER, *rows]) + "\n")
    return ds


def test_good_labels_pass(tmp_path):
    ds = labels_dataset(tmp_path, good_rows())
    proc = check(tmp_path, ds, "--labels", ds / "labels.csv")
    assert proc.returncode == 0 and "OK" in proc.stdout and "warning" not in proc.stderr, proc.stderr


def test_header_only_file(tmp_path):
    ds = labels_dataset(tmp_path, [])
    refused(check(tmp_path, ds, "--labels", ds / "labels.csv"), f"{ds / 'labels.csv'}: header only")


def test_duplicate_image(tmp_path):
    rows = good_rows() + [f"a,train,seq-01,a/seq-01/f0.png,5,5,5,{UNIT_Q}"]
    ds = labels_dataset(tmp_path, rows)
    refused(check(tmp_path, ds, "--labels", ds / "labels.csv"),
            "labels.csv, row 4 (line 5), column 'img_path': image 'a/seq-01/f0.png' appears more than once",
            "first at", "row 1 (line 2)")


def test_duplicate_image_across_files(tmp_path):
    ds = labels_dataset(tmp_path, good_rows())
    (ds / "more.csv").write_text(f"{LABEL_HEADER}\na,train,seq-01,a/seq-01/f1.png,0,0,0,{UNIT_Q}\n")
    refused(check(tmp_path, ds, "--labels", ds / "labels.csv", ds / "more.csv"),
            "more.csv, row 1 (line 2), column 'img_path'", "appears more than once")


def test_sequence_in_train_and_test(tmp_path):
    rows = good_rows() + [f"a,test,seq-01,a/seq-01/f9.png,0,0,2,{UNIT_Q}"]
    ds = labels_dataset(tmp_path, rows)
    refused(check(tmp_path, ds, "--labels", ds / "labels.csv"),
            "labels.csv, row 4 (line 5), column 'seq': sequence 'seq-01' of scene 'a' is in both train")


@pytest.mark.parametrize("scene", ["x/y", "../up", ".hidden", "caf\u00e9 a"])
def test_unsafe_scene_name(tmp_path, scene):
    rows = good_rows() + [f"{scene},train,seq-01,a/seq-01/f2.png,0,0,0,{UNIT_Q}"]
    ds = labels_dataset(tmp_path, rows)
    refused(check(tmp_path, ds, "--labels", ds / "labels.csv"), "row 4 (line 5), column 'scene'", repr(scene))


@pytest.mark.parametrize("path,why", [
    ("/etc/passwd", "is absolute"), ("C:/data/x.png", "is absolute"), ("a/../../outside.png", "leaves the dataset root"),
])
def test_image_path_outside_root(tmp_path, path, why):
    (tmp_path / "outside.png").write_bytes(b"not read")
    rows = good_rows() + [f"a,train,seq-01,{path},0,0,0,{UNIT_Q}"]
    ds = labels_dataset(tmp_path, rows)
    refused(check(tmp_path, ds, "--labels", ds / "labels.csv"), "row 4 (line 5), column 'img_path'", why)


@pytest.mark.parametrize("value,column,why", [
    ("1e308", "t2", "beyond"), ("-1e300", "q3", "beyond"), ("inf", "t1", "not a finite number"),
])
def test_non_finite_or_huge_values(tmp_path, value, column, why):
    fields = ["a", "train", "seq-01", "a/seq-01/f2.png", "0", "0", "0", "1", "0", "0", "0"]
    fields[LABEL_HEADER.split(",").index(column)] = value
    ds = labels_dataset(tmp_path, good_rows() + [",".join(fields)])
    refused(check(tmp_path, ds, "--labels", ds / "labels.csv"), f"row 4 (line 5), column '{column}'", why)


def test_swapped_columns_warn_naming_rows(tmp_path):
    # t and q swapped in row 2: the "quaternion" is (0.5, 2, 3, 4), norm 5.4
    rows = good_rows()
    rows[1] = "a,train,seq-01,a/seq-01/f1.png,1,0,0,0.5,2,3,4"
    ds = labels_dataset(tmp_path, rows)
    proc = check(tmp_path, ds, "--labels", ds / "labels.csv")
    assert proc.returncode == 0, proc.stderr
    assert "warning" in proc.stderr and "row 2 (line 3), column 'q1,q2,q3,q4': |q| = 5.408" in proc.stderr
    assert "row 1 " not in proc.stderr and "swapped" in proc.stderr


def test_empty_test_split_is_said(tmp_path):
    ds = labels_dataset(tmp_path, good_rows()[:2])
    proc = check(tmp_path, ds, "--labels", ds / "labels.csv")
    assert proc.returncode == 0 and "warning: dataset 'check': split test of scene a has no frames" in proc.stderr


# --------------------------------------------------------------------------- native layouts
def sevenscenes(tmp_path: Path, pose: str | None = None) -> Path:
    """``tmp/7s/chess``: seq-01 (train, 2 frames), seq-02 (test, 2 frames); ``pose`` replaces seq-01 frame 1's matrix."""
    root = tmp_path / "7s"
    scene = root / "chess"
    for seq in ("seq-01", "seq-02"):
        for f in range(2):
            png(scene / seq / f"frame-{f:06d}.color.png")
            (scene / seq / f"frame-{f:06d}.pose.txt").write_text(
                "1 0 0 0.5\n0 1 0 0\n0 0 1 0\n0 0 0 1\n" if f else "0 -1 0 0\n1 0 0 0\n0 0 1 0\n0 0 0 1\n")
    (scene / "TrainSplit.txt").write_text("sequence1\n")
    (scene / "TestSplit.txt").write_text("sequence2\n")
    if pose is not None:
        (scene / "seq-01" / "frame-000001.pose.txt").write_text(pose)
    return root


def test_good_sevenscenes_pass(tmp_path):
    proc = check(tmp_path, sevenscenes(tmp_path))
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr


@pytest.mark.parametrize("pose,why", [
    ("1.01 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n", "not orthonormal"),
    ("1 0.3 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n", "not orthonormal"),
    ("-1 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n", "determinant -1"),
    ("1 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 1 1\n", "bottom row is 0 0 1 1, expected 0 0 0 1"),
    ("1 0 0 1e308\n0 1 0 0\n0 0 1 0\n0 0 0 1\n", "beyond"),
])
def test_sevenscenes_pose_not_rigid(tmp_path, pose, why):
    root = sevenscenes(tmp_path, pose)
    refused(check(tmp_path, root), str(root / "chess" / "seq-01" / "frame-000001.pose.txt"), why)


def test_sevenscenes_sequence_in_both_splits(tmp_path):
    root = sevenscenes(tmp_path)
    (root / "chess" / "TestSplit.txt").write_text("sequence2\nsequence1\n")
    refused(check(tmp_path, root), "TestSplit.txt, line 2", "sequence 'seq-01' of scene 'chess' is in both train")


def test_sevenscenes_empty_test_split(tmp_path):
    root = sevenscenes(tmp_path)
    (root / "chess" / "TestSplit.txt").write_text("\n")
    refused(check(tmp_path, root), "split test of scene chess has no frames")


def test_sevenscenes_unsafe_scene_folder(tmp_path):
    root = sevenscenes(tmp_path)
    (root / "chess").rename(root / "chess pieces")
    refused(check(tmp_path, root), "column 'scene'", "'chess pieces'")


def cambridge(tmp_path: Path, header: bool = True) -> Path:
    root = tmp_path / "cam"
    for split, seq in (("train", "seq1"), ("test", "seq2")):
        lines = ["Visual Landmark Dataset V1", "ImageFile, Camera Position [X Y Z W P Q R]", ""] if header else []
        for f in range(4):
            png(root / "ShopFacade" / seq / f"frame{f:05d}.png")
            lines.append(f"{seq}/frame{f:05d}.png {f} 0 0 1 0 0 0")
        (root / "ShopFacade" / f"dataset_{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_good_cambridge_pass(tmp_path):
    proc = check(tmp_path, cambridge(tmp_path))
    assert proc.returncode == 0 and "| ShopFacade | test    |        4 |" in proc.stdout, proc.stdout


def test_cambridge_without_header_lines(tmp_path):
    root = cambridge(tmp_path, header=False)
    refused(check(tmp_path, root), f"{root / 'ShopFacade' / 'dataset_train.txt'}, line 1: a data line where the three header lines belong")


def test_cambridge_swapped_columns_warn(tmp_path):
    root = cambridge(tmp_path)
    txt = root / "ShopFacade" / "dataset_test.txt"
    txt.write_text(txt.read_text().replace("seq2/frame00002.png 2 0 0 1 0 0 0", "seq2/frame00002.png 1 0 0 0 2 0 0"))
    proc = check(tmp_path, root)
    assert proc.returncode == 0, proc.stderr
    assert f"{txt}, line 6, columns W,P,Q,R: |q| = 2" in proc.stderr


def test_cambridge_image_escaping_root(tmp_path):
    root = cambridge(tmp_path)
    txt = root / "ShopFacade" / "dataset_train.txt"
    txt.write_text(txt.read_text().replace("seq1/frame00001.png", "../../outside.png"))
    refused(check(tmp_path, root), f"{txt}, line 5, column 'img_path'", "leaves the dataset root")


# --------------------------------------------------------------------------- in-process: subsets and empty splits
def test_fractions_never_stack_and_require_frames(tmp_path):
    from aprbench.harness.data.datasets import make_pose_data, require_frames, subset, with_fraction
    from aprbench.harness.errors import BenchError, DataError

    rows = [[s, "train", "seq-01", f"{s}/{i}.png", i, 0, 0, 1, 0, 0, 0] for s in ("a", "b") for i in range(10)]
    rows += [["a", "test", "seq-02", "a/t.png", 0, 0, 0, 1, 0, 0, 0]]
    data = make_pose_data("x", tmp_path, pd.DataFrame(rows, columns=LABEL_HEADER.split(",")))
    half = with_fraction(data, 0.5, seed=3)
    assert half.options["fraction"] == 0.5 and (half.labels["split"] == "train").sum() == 10
    for again in (lambda: with_fraction(half, 0.5), lambda: subset(half, ["a"], 1.0), lambda: subset(half, ["a"], 0.3)):
        with pytest.raises(BenchError, match="already reduced to fraction 0.5"):
            again()
    s1, s2 = subset(data, ["a"], 0.5, seed=1), subset(data, ["a"], 0.5, seed=2)
    assert s1.labels.equals(subset(data, ["a"], 0.5, seed=1).labels)  # deterministic per seed
    assert not s1.labels.equals(s2.labels) and s1.options["fraction_seed"] == 1
    with pytest.raises(DataError, match="split test of scene b has no frames") as e:
        require_frames(data, "test")
    assert "scene a" not in str(e.value)
    require_frames(subset(data, ["a"]), "test")
