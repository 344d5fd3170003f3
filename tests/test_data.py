"""The data layer: label and pairs CSVs, native layouts, subsets, images, transforms, neighbours."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import pairs_helpers as PH
from aprbench.harness import data as D
from aprbench.harness.data import images as I
from aprbench.harness import poses as P
from aprbench.harness.errors import BenchError, DataError
from aprbench.harness.api.interfaces import LABEL_COLUMNS
from aprbench.harness.api.manager import get_registry
from aprbench.harness.poses import relative_pose
from aprbench.harness.store.hdf5 import Store


# --------------------------------------------------------------------------- independent maths
def rodrigues(axis_angle: np.ndarray) -> np.ndarray:
    """Rotation matrix from a rotation vector (Rodrigues' formula)."""
    theta = np.linalg.norm(axis_angle)
    k = axis_angle / theta
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(theta) * K + (1 - math.cos(theta)) * K @ K


def quat_matrix(q: np.ndarray) -> np.ndarray:
    """Rotation matrix of a scalar-first unit quaternion (textbook formula)."""
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [w * w + x * x - y * y - z * z, 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), w * w - x * x + y * y - z * z, 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), w * w - x * x - y * y + z * z],
    ])


def labels_frame(n: int = 6, scenes=("a", "b"), seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        scene = scenes[i % len(scenes)]
        q = rng.normal(size=4)
        split = "train" if i % 3 else "test"
        seq = "seq-01" if split == "train" else "seq-02"  # a sequence belongs to one split
        rows.append([scene, split, seq, f"{scene}/{seq}/frame-{i:06d}.color.png",
                     *rng.normal(size=3), *(q / np.linalg.norm(q))])
    return pd.DataFrame(rows, columns=LABEL_COLUMNS)


def write_images(root: Path, paths, size=(40, 30), seed=0) -> None:
    rng = np.random.default_rng(seed)
    for p in paths:
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(root / p)


# --------------------------------------------------------------------------- label CSV
def test_labels_round_trip_exact(tmp_path):
    df = labels_frame()
    D.write_labels(df, tmp_path / "l.csv")
    back = D.read_labels(tmp_path / "l.csv")
    assert list(back.columns) == LABEL_COLUMNS
    pd.testing.assert_frame_equal(back, df, check_exact=True)


def test_labels_normalise_quaternions_keep_sign(tmp_path):
    df = labels_frame(2)
    df.loc[0, ["q1", "q2", "q3", "q4"]] = [-2.0, 0.0, 0.0, 0.0]
    df.loc[1, ["q1", "q2", "q3", "q4"]] = [1.0, 1.0, 1.0, 1.0]
    D.write_labels(df, tmp_path / "l.csv")
    back = D.read_labels(tmp_path / "l.csv")
    np.testing.assert_allclose(back.loc[0, ["q1", "q2", "q3", "q4"]].to_numpy(float), [-1, 0, 0, 0])
    np.testing.assert_allclose(back.loc[1, ["q1", "q2", "q3", "q4"]].to_numpy(float), [0.5] * 4)


def test_labels_missing_columns_are_named(tmp_path):
    df = labels_frame().drop(columns=["t2", "q4"])
    df.to_csv(tmp_path / "l.csv", index=False)
    with pytest.raises(DataError) as e:
        D.read_labels(tmp_path / "l.csv")
    msg = str(e.value)
    assert "l.csv" in msg and "missing column(s) t2, q4" in msg


@pytest.mark.parametrize("value", ["abc", "nan", ""])
def test_labels_bad_number_names_file_row_column(tmp_path, value):
    df = labels_frame().astype({"t3": object})
    df.loc[3, "t3"] = value
    df.to_csv(tmp_path / "l.csv", index=False)
    with pytest.raises(DataError) as e:
        D.read_labels(tmp_path / "l.csv")
    assert "l.csv, row 4 (line 5), column 't3': not a finite number" in str(e.value)


def test_labels_zero_quaternion_and_unknown_split_all_reported(tmp_path):
    df = labels_frame()
    df.loc[1, ["q1", "q2", "q3", "q4"]] = 0.0
    df.loc[4, "split"] = "validation"
    df.to_csv(tmp_path / "l.csv", index=False)
    with pytest.raises(DataError) as e:
        D.read_labels(tmp_path / "l.csv")
    assert len(e.value.errors) == 2
    assert "row 2 (line 3), column 'q1,q2,q3,q4': zero quaternion" in str(e.value)
    assert "row 5 (line 6), column 'split': unknown split 'validation'" in str(e.value)


def test_labels_missing_images_named_with_row(tmp_path):
    df = labels_frame(3)
    write_images(tmp_path, df["img_path"][:2])
    D.write_labels(df, tmp_path / "l.csv")
    with pytest.raises(DataError) as e:
        D.read_labels(tmp_path / "l.csv", tmp_path, check_images=True)
    assert "row 3 (line 4), column 'img_path'" in str(e.value)
    assert str(tmp_path / df["img_path"][2]) in str(e.value)
    assert len(e.value.errors) == 1


def test_labels_not_a_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        D.read_labels(tmp_path / "nope.csv")


# --------------------------------------------------------------------------- pairs CSV
def test_pairs_round_trip_and_relative_pose(tmp_path):
    data = D.make_pose_data("x", tmp_path, labels_frame(12))
    pairs = PH.make_pairs(data, k=2)
    PH.write_pairs(pairs, tmp_path / "p.csv")
    back = PH.read_pairs(tmp_path / "p.csv")
    assert list(back.columns) == PH.PAIR_COLUMNS
    np.testing.assert_allclose(back[PH.PAIR_POSE_AB].to_numpy(float), pairs[PH.PAIR_POSE_AB].to_numpy(float), atol=1e-12)
    rel = relative_pose(torch.tensor(back[PH.PAIR_POSE_A].to_numpy(float)), torch.tensor(back[PH.PAIR_POSE_B].to_numpy(float)))
    np.testing.assert_allclose(rel.numpy(), back[PH.PAIR_POSE_AB].to_numpy(float), atol=1e-9)


def test_pairs_bad_input(tmp_path):
    data = D.make_pose_data("x", tmp_path, labels_frame(12))
    pairs = PH.make_pairs(data, k=1)
    pairs.drop(columns=["q3_ab"]).to_csv(tmp_path / "p.csv", index=False)
    with pytest.raises(DataError, match="missing column\\(s\\) q3_ab"):
        PH.read_pairs(tmp_path / "p.csv")
    pairs = pairs.astype({"x2_b": object})
    pairs.loc[1, "x2_b"] = "oops"
    pairs.to_csv(tmp_path / "p.csv", index=False)
    with pytest.raises(DataError, match="row 2 \\(line 3\\), column 'x2_b'"):
        PH.read_pairs(tmp_path / "p.csv")


# --------------------------------------------------------------------------- native layouts
def make_sevenscenes(root: Path, seed: int = 0):
    """Two scenes, 7Scenes layout; returns {img_path: (t, R)} of every frame."""
    rng = np.random.default_rng(seed)
    truth = {}
    for scene, splits in (("chess", {"train": [1, 2], "test": [3]}), ("heads", {"train": [2], "test": [1]})):
        sdir = root / scene
        sdir.mkdir(parents=True)
        (sdir / "TrainSplit.txt").write_text("".join(f"sequence{i}\n" for i in splits["train"]))
        (sdir / "TestSplit.txt").write_text("".join(f"sequence{i}\n" for i in splits["test"]))
        for split, seqs in splits.items():
            for s in seqs:
                seq = sdir / f"seq-{s:02d}"
                seq.mkdir()
                for f in range(3):
                    R = rodrigues(rng.normal(size=3))
                    t = rng.normal(size=3)
                    T = np.eye(4)
                    T[:3, :3], T[:3, 3] = R, t
                    np.savetxt(seq / f"frame-{f:06d}.pose.txt", T, fmt="%.10e", delimiter="\t")
                    Image.new("RGB", (8, 6)).save(seq / f"frame-{f:06d}.color.png")
                    truth[f"{scene}/seq-{s:02d}/frame-{f:06d}.color.png"] = (split, t, R)
    return truth


def test_read_sevenscenes_poses_match_matrices(tmp_path):
    truth = make_sevenscenes(tmp_path)
    df = D.read_sevenscenes(tmp_path)
    assert list(df.columns) == LABEL_COLUMNS
    assert len(df) == len(truth) == 15
    for row in df.itertuples():
        split, t, R = truth[row.img_path]
        assert row.split == split and row.seq == row.img_path.split("/")[1]
        np.testing.assert_allclose([row.t1, row.t2, row.t3], t, atol=1e-9)
        np.testing.assert_allclose(quat_matrix(np.array([row.q1, row.q2, row.q3, row.q4])), R, atol=1e-8)
    assert set(D.read_sevenscenes(tmp_path, ["heads"])["scene"]) == {"heads"}


def test_read_sevenscenes_errors(tmp_path):
    make_sevenscenes(tmp_path)
    with pytest.raises(DataError, match="unknown scene\\(s\\) kitchen; known scenes: chess, heads"):
        D.read_sevenscenes(tmp_path, ["kitchen"])
    bad = tmp_path / "chess" / "seq-01" / "frame-000001.pose.txt"
    bad.write_text("1 2 3\n")
    (tmp_path / "heads" / "TestSplit.txt").write_text("sequence7\n")
    with pytest.raises(DataError) as e:
        D.read_sevenscenes(tmp_path)
    msg = str(e.value)
    assert f"{bad}: expected a 4x4 matrix" in msg
    assert "TestSplit.txt, line 1: sequence folder" in msg and "seq-07 does not exist" in msg


def make_cambridge(root: Path, seed: int = 1):
    rng = np.random.default_rng(seed)
    truth = {}
    for scene in ("ShopFacade", "KingsCollege"):
        (root / scene).mkdir(parents=True)
        for split in ("train", "test"):
            lines = ["Visual Landmark Dataset V1", "ImageFile, Camera Position [X Y Z W P Q R]", ""]
            for f in range(4):
                t = rng.normal(size=3) * 30
                q = rng.normal(size=4) * 3  # not unit: normalised on read
                path = f"seq{2 if split == 'train' else 3}/frame{f + 1:05d}.png"
                lines.append(f"{path} " + " ".join(f"{v:.9f}" for v in (*t, *q)))
                truth[f"{scene}/{path}"] = (split, t, q / np.linalg.norm(q))
            (root / scene / f"dataset_{split}.txt").write_text("\n".join(lines) + "\n")
    return truth


def test_read_cambridge(tmp_path):
    truth = make_cambridge(tmp_path)
    with pytest.warns(UserWarning, match=r"dataset_train.txt, line 4, columns W,P,Q,R: \|q\| = "):
        df = D.read_cambridge(tmp_path)
    assert len(df) == 16 and list(df.columns) == LABEL_COLUMNS
    for row in df.itertuples():
        split, t, q = truth[row.img_path]
        assert row.split == split and row.seq in ("seq2", "seq3")
        np.testing.assert_allclose([row.t1, row.t2, row.t3], t, atol=1e-8)
        np.testing.assert_allclose([row.q1, row.q2, row.q3, row.q4], q, atol=1e-8)


@pytest.mark.filterwarnings("ignore:.*norm far from 1")
def test_read_cambridge_errors(tmp_path):
    make_cambridge(tmp_path)
    txt = tmp_path / "ShopFacade" / "dataset_test.txt"
    lines = txt.read_text().splitlines()
    lines[4] = lines[4].rsplit(" ", 1)[0] + " NaN"
    lines[5] = "seq3/frame00003.png 1 2 3 0 0 0 0"
    lines.append("seq3/frame00009.png 1 2")
    txt.write_text("\n".join(lines))
    with pytest.raises(DataError) as e:
        D.read_cambridge(tmp_path)
    msg = str(e.value)
    assert f"{txt}, line 5, column R: not a finite number ('NaN')" in msg
    assert f"{txt}, line 6, columns W,P,Q,R: zero quaternion" in msg
    assert f"{txt}, line 8: expected" in msg


# --------------------------------------------------------------------------- PoseData, specs, fractions
def test_make_pose_data_scenes_and_ids(tmp_path):
    df = labels_frame(9, scenes=("zeta", "alpha", "mid"))
    data = D.make_pose_data("x", tmp_path, df)
    assert data.scenes == ["alpha", "mid", "zeta"]
    assert (data.labels["scene"].map(data.scenes.index) == data.labels["scene_id"]).all()
    sub = D.make_pose_data("x", tmp_path, df, scenes=["zeta", "alpha"])
    assert sub.scenes == ["alpha", "zeta"] and set(sub.labels["scene"]) == {"alpha", "zeta"}
    with pytest.raises(DataError, match="unknown scene\\(s\\) nope; known scenes: alpha, mid, zeta"):
        D.make_pose_data("x", tmp_path, df, scenes=["nope"])


def test_parse_dataset_spec():
    assert D.parse_dataset_spec("synthetic") == ("synthetic", {})
    assert D.parse_dataset_spec("synthetic:seed=3,fraction=0.5") == ("synthetic", {"seed": 3, "fraction": 0.5})
    assert D.parse_dataset_spec("sevenscenes:root=/data/7 Scenes") == ("sevenscenes", {"root": "/data/7 Scenes"})
    for bad in ("", ":x=1", "synthetic:seed", "synthetic:", "bad name"):
        with pytest.raises(BenchError):
            D.parse_dataset_spec(bad)


@pytest.mark.filterwarnings("ignore:.*norm far from 1")
def test_open_dataset_native_and_labels(tmp_path):
    make_sevenscenes(tmp_path / "7s")
    make_cambridge(tmp_path / "cam")
    store, reg = Store(tmp_path / "work"), get_registry()
    name, data = D.open_dataset(f"sevenscenes:root={tmp_path / '7s'}", store, reg, scenes=["heads"])
    assert name == "sevenscenes" and data.scenes == ["heads"] and len(data.labels) == 6
    name, data = D.open_dataset(f"cambridge:root={tmp_path / 'cam'},fraction=0.5", store, reg)
    assert data.scenes == ["KingsCollege", "ShopFacade"]
    assert (data.labels["split"] == "train").sum() == 4 and (data.labels["split"] == "test").sum() == 8
    D.write_labels(D.read_sevenscenes(tmp_path / "7s"), tmp_path / "all.csv")
    name, data = D.open_dataset(f"labels:root={tmp_path / '7s'},labels={tmp_path / 'all.csv'}", store, reg)
    assert name == "labels" and len(data.labels) == 15 and data.root == tmp_path / "7s"
    with pytest.raises(BenchError, match="root .* is not a folder"):
        D.open_dataset(f"sevenscenes:root={tmp_path / 'missing'}", store, reg)
    with pytest.raises(BenchError, match="needs root=DIR"):
        D.open_dataset("cambridge", store, reg)
    with pytest.raises(BenchError, match="unknown dataset 'imagenet'"):
        D.open_dataset("imagenet", store, reg)
    with pytest.raises(BenchError, match="unknown option\\(s\\) colour"):
        D.open_dataset(f"sevenscenes:root={tmp_path / '7s'},colour=red", store, reg)


def test_with_fraction_deterministic_per_scene_nested(tmp_path):
    df = pd.concat([labels_frame(300, scenes=("a", "b"), seed=1), labels_frame(50, scenes=("c",), seed=2)], ignore_index=True)
    df["img_path"] = [f"img{i}.png" for i in range(len(df))]
    data = D.make_pose_data("x", tmp_path, df)
    train = data.split("train").labels
    f3 = D.with_fraction(data, 0.3, seed=0)
    assert f3.labels.equals(D.with_fraction(data, 0.3, seed=0).labels)
    assert not f3.labels.equals(D.with_fraction(data, 0.3, seed=1).labels)
    for scene in "abc":
        n = int((train["scene"] == scene).sum())
        got = f3.labels[(f3.labels["scene"] == scene) & (f3.labels["split"] == "train")]
        assert len(got) == round(0.3 * n)
    pd.testing.assert_frame_equal(f3.split("test").labels, data.split("test").labels)
    f7 = D.with_fraction(data, 0.7, seed=0)
    assert set(f3.labels["img_path"]) <= set(f7.labels["img_path"])
    # a scene's subset does not depend on which other scenes are present
    only_c = D.with_fraction(D.make_pose_data("x", tmp_path, df, scenes=["c"]), 0.3, seed=0)
    assert list(only_c.labels["img_path"]) == list(f3.labels[f3.labels["scene"] == "c"]["img_path"])
    assert f3.options["fraction"] == 0.3
    with pytest.raises(BenchError):
        D.with_fraction(data, 0.0)


def test_with_validation_holds_out_each_scenes_last_training_sequence(tmp_path):
    df = labels_frame(90, scenes=("a", "b"), seed=3)
    train = df["split"] == "train"
    df.loc[train, "seq"] = [f"seq-{1 + (i // 10) % 3:02d}" for i in range(int(train.sum()))]  # 3 training sequences
    df.loc[(df["scene"] == "b") & train, "seq"] = "seq-01"  # scene b: one training sequence
    data = D.make_pose_data("x", tmp_path, df)
    val = D.with_validation(data)
    assert val.options["validation"] is True and val.fingerprint() != data.fingerprint()
    assert set(val.labels["img_path"]) == set(data.split("train").labels["img_path"])  # test frames never read
    a_train = data.labels[(data.labels["scene"] == "a") & (data.labels["split"] == "train")]
    held_a = val.labels[(val.labels["scene"] == "a") & (val.labels["split"] == "test")]
    last = a_train["seq"].iloc[-1]
    assert set(held_a["seq"]) == {last} and len(held_a) == (a_train["seq"] == last).sum()
    b_train = data.labels[(data.labels["scene"] == "b") & (data.labels["split"] == "train")]
    held_b = val.labels[(val.labels["scene"] == "b") & (val.labels["split"] == "test")]
    assert list(held_b["img_path"]) == list(b_train["img_path"].iloc[-(len(b_train) // 8):])  # its last eighth
    pd.testing.assert_frame_equal(D.with_validation(data).labels, val.labels)  # deterministic
    assert D.with_validation(val) is val
    with pytest.raises(BenchError, match="validation split before"):
        D.with_validation(D.with_fraction(data, 0.5))
    one = D.make_pose_data("x", tmp_path, df[df.index == df.index[train][0]])
    with pytest.raises(DataError, match="needs at least 2"):
        D.with_validation(one)


# --------------------------------------------------------------------------- images
def test_load_images_resize_crop_order_cache(tmp_path, monkeypatch):
    df = labels_frame(4, scenes=("s",))
    rng = np.random.default_rng(0)
    arrays = []
    for p in df["img_path"]:
        a = rng.integers(0, 255, (30, 60, 3), dtype=np.uint8)  # wide: 60 x 30
        (tmp_path / p).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(tmp_path / p)
        arrays.append(a)
    data = D.make_pose_data("x", tmp_path, df)
    store = Store(tmp_path / "work")
    x = I.load_images(data, 30, store)
    assert x.shape == (4, 3, 30, 30) and x.dtype == torch.uint8
    for i, a in enumerate(arrays):  # shorter side already 30: a pure centre crop
        np.testing.assert_array_equal(x[i].permute(1, 2, 0).numpy(), a[:, 15:45])
    small = I.load_images(data, 15)
    expected = np.asarray(Image.fromarray(arrays[2]).resize((30, 15), Image.BILINEAR, reducing_gap=None))[:, 7:22]
    np.testing.assert_array_equal(small[2].permute(1, 2, 0).numpy(), expected)
    cache = I.image_cache_path(data, 30, store)
    assert cache.is_file()
    monkeypatch.setattr(I, "_load_one", lambda *a: (_ for _ in ()).throw(AssertionError("decoded again")))
    assert torch.equal(I.load_images(data, 30, store), x)  # served from the cache: nothing decoded
    monkeypatch.undo()
    for p in df["img_path"]:
        (tmp_path / p).unlink()
    for with_store in (None, store):  # a deleted image is never served from the cache
        with pytest.raises(DataError) as e:
            I.load_images(data, 30, with_store)
        assert "row 1 (line 2), column 'img_path'" in str(e.value) and df["img_path"][0] in str(e.value)


def test_images_stored_at_their_size_skip_the_disk_cache_large_sets_are_mapped(tmp_path, monkeypatch):
    df = labels_frame(3, scenes=("s",))
    for i, p in enumerate(df["img_path"]):
        (tmp_path / p).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), 10 * i, dtype=np.uint8)).save(tmp_path / p)
    data = D.make_pose_data("x", tmp_path, df)
    store = Store(tmp_path / "work")
    first = I.load_images(data, 8, store)
    assert [int(first[i].max()) for i in range(3)] == [0, 10, 20]
    assert not list(store.image_cache_dir().glob("*"))  # 8-px files at 8 px: decoding is the whole cost, not cached
    monkeypatch.setattr(I, "_load_one", lambda *a: (_ for _ in ()).throw(AssertionError("decoded again")))
    assert I.load_images(data, 8, store) is first  # the recent sets stay in memory
    monkeypatch.undo()
    monkeypatch.setattr(I, "MMAP_BYTES", 0)  # "too large for memory": decoded once into a memory-mapped cache
    I._RECENT.clear()
    mapped = I.load_images(data, 8, store)
    cache = I.image_cache_path(data, 8, store)
    assert torch.equal(mapped, first) and cache.is_file() and not list(store.image_cache_dir().glob("*.tmp"))
    assert isinstance(np.load(cache, mmap_mode="r"), np.memmap)
    monkeypatch.setattr(I, "_load_one", lambda *a: (_ for _ in ()).throw(AssertionError("decoded again")))
    assert torch.equal(I.load_images(data, 8, store), first)


def test_image_cache_rereads_a_changed_image(tmp_path):
    df = labels_frame(3, scenes=("s",))
    for p in df["img_path"]:
        (tmp_path / p).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), 10, dtype=np.uint8)).save(tmp_path / p)
    data = D.make_pose_data("x", tmp_path, df)
    store = Store(tmp_path / "work")
    first = I.load_images(data, 8, store)
    assert (first == 10).all()
    old_key = I.image_cache_path(data, 8, store)
    target = tmp_path / df["img_path"][1]
    new = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    Image.fromarray(new).save(target)  # same labels, new pixels (and a new size / mtime)
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert I.image_cache_path(data, 8, store) != old_key
    second = I.load_images(data, 8, store)
    np.testing.assert_array_equal(second[1].permute(1, 2, 0).numpy(), new)
    assert torch.equal(second[[0, 2]], first[[0, 2]])


def test_normalize_and_augment():
    x = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8)
    n = I.normalize_images(x)
    mean = torch.tensor(I.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(I.IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(n, (x.float() / 255 - mean) / std)
    a1 = I.augment_images(x, torch.Generator().manual_seed(3))
    a2 = I.augment_images(x, torch.Generator().manual_seed(3))
    assert a1.dtype == torch.uint8 and a1.shape == x.shape and torch.equal(a1, a2)
    assert not torch.equal(a1, x)
    ident = I.augment_images(x, brightness=0, contrast=0, saturation=0, shift=0)
    assert torch.equal(ident, x)
    # shift only: every output is the input translated by (dy, dx) with |d| <= shift (edge-padded)
    shifted = I.augment_images(x, torch.Generator().manual_seed(0), brightness=0, contrast=0, saturation=0, shift=2)
    for i in range(len(x)):
        padded = torch.nn.functional.pad(x[i:i + 1].float(), (2, 2, 2, 2), mode="replicate")[0]
        assert any(torch.equal(shifted[i].float(), padded[:, dy:dy + 16, dx:dx + 16]) for dy in range(5) for dx in range(5))
    # brightness only scales every pixel by one factor per image
    b = I.augment_images(torch.full((64, 3, 4, 4), 100, dtype=torch.uint8), brightness=0.2, contrast=0, saturation=0, shift=0)
    assert b.float().min() >= 80 and b.float().max() <= 120 and b.float().std() > 3


def test_pose_image_dataset_matches_tensor_path(tmp_path):
    df = labels_frame(3, scenes=("s", "t"))
    write_images(tmp_path, df["img_path"], size=(50, 40))
    data = D.make_pose_data("x", tmp_path, df)
    ds = I.PoseImageDataset(data, size=32)
    item = ds[1]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert item["pose"].shape == (7,) and item["scene"].dtype == torch.int64 and int(item["index"]) == 1
    assert int(item["scene"]) == data.scenes.index(df["scene"][1])
    ref = I.normalize_images(I.load_images(data, 32))[1]
    assert (item["image"] - ref).abs().mean() < 0.15  # torchvision's antialiased resize vs PIL bilinear
    train = I.PoseImageDataset(data, size=32, train=True)[1]["image"]
    assert train.shape == (3, 32, 32) and not torch.allclose(train, item["image"])


# --------------------------------------------------------------------------- neighbours
def test_nearest_neighbours_brute_force():
    g = torch.Generator().manual_seed(0)
    db = torch.cat([torch.randn(60, 3, generator=g), torch.nn.functional.normalize(torch.randn(60, 4, generator=g), dim=1)], 1)
    q = torch.cat([torch.randn(7, 3, generator=g), torch.nn.functional.normalize(torch.randn(7, 4, generator=g), dim=1)], 1)
    w = 0.5
    got = P.nearest_neighbours(q, db, k=3, orientation_weight=w, chunk=4)
    for i in range(len(q)):
        d = []
        for j in range(len(db)):
            dt = float(np.linalg.norm(q[i, :3] - db[j, :3]))
            dot = min(1.0, abs(float(q[i, 3:] @ db[j, 3:])))
            d.append(math.sqrt(dt**2 + (w * 2 * math.acos(dot)) ** 2))
        assert got[i].tolist() == list(np.argsort(d)[:3])
    self_nn = P.nearest_neighbours(db, db, k=2, exclude_self=True)
    assert not (self_nn == torch.arange(60)[:, None]).any()
    assert torch.equal(self_nn[:, 0], P.nearest_neighbours(db, db, k=2)[:, 1])
    # the same position, different orientations: only the orientation decides
    same_t = db.clone()
    same_t[:, :3] = 0
    assert torch.equal(P.nearest_neighbours(same_t[:5], same_t, k=1)[:, 0], torch.arange(5))
    with pytest.raises(BenchError):
        P.nearest_neighbours(q, db, k=61)


def test_virtual_neighbours_spread():
    poses = torch.tensor([[1.0, 2.0, 3.0, 1.0, 0.0, 0.0, 0.0]]).repeat(4000, 1)
    v = P.virtual_neighbours(poses, 0.3, 10.0, generator=torch.Generator().manual_seed(0))
    assert abs(float((v[:, :3] - poses[:, :3]).std()) - 0.3) < 0.02
    from aprbench.harness.poses import orientation_error

    # the angle of a rotation with N(0, s) per axis has RMS s * sqrt(3)
    rms = float(orientation_error(v[:, 3:], poses[:, 3:]).pow(2).mean().sqrt())
    assert abs(rms - 10 * math.sqrt(3)) < 1.0


def test_make_pairs_same_scene_and_virtual(tmp_path):
    data = D.make_pose_data("x", tmp_path, labels_frame(30, scenes=("a", "b")))
    pairs = PH.make_pairs(data, k=2, virtual=1, std_m=0.1, std_deg=5)
    n_train = (data.labels["split"] == "train").sum()
    assert len(pairs) == 3 * n_train
    assert (pairs["scene_a"] == pairs["scene_b"]).all()
    real = pairs[pairs["img_path_b"] != ""]
    virt = pairs[pairs["img_path_b"] == ""]
    assert len(real) == 2 * n_train and len(virt) == n_train
    assert (real["img_path_a"] != real["img_path_b"]).all()
    train_paths = set(data.split("train").labels["img_path"])
    assert set(real["img_path_b"]) <= train_paths
    rel = relative_pose(torch.tensor(pairs[PH.PAIR_POSE_A].to_numpy(float)), torch.tensor(pairs[PH.PAIR_POSE_B].to_numpy(float)))
    np.testing.assert_allclose(rel.numpy(), pairs[PH.PAIR_POSE_AB].to_numpy(float), atol=1e-9)
    assert (virt[["x1_ab", "x2_ab", "x3_ab"]].abs().to_numpy() < 0.6).all()


# --------------------------------------------------------------------------- non-square synthetic renders
def test_render_non_square_images(tmp_path, run_bench):
    from aprbench.plugins.datasets.synthetic_render import camera_rays

    rays = camera_rays((6, 4), hfov_deg=90.0)  # f = 3 px: x = (col + 0.5 - 3) / 3, y = (row + 0.5 - 2) / 3
    assert rays.shape == (24, 3)
    np.testing.assert_allclose(rays[0].numpy(), [-2.5 / 3, -1.5 / 3, 1.0], atol=1e-6)
    np.testing.assert_allclose(rays[-1].numpy(), [2.5 / 3, 1.5 / 3, 1.0], atol=1e-6)
    out = tmp_path / "render"
    r = run_bench("data", "render", "--scene", "room", "--out", out, "--image-size", "40x24", "--frames-per-sequence", "2",
                  "--train-sequences", "1", "--test-sequences", "1", "--samples", "0", "--workdir", tmp_path / "work",
                  env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    pngs = sorted(out.glob("room/seq-*/frame-*.color.png"))
    assert len(pngs) == 4 and all(Image.open(p).size == (40, 24) for p in pngs)
    bad = run_bench("data", "render", "--scene", "room", "--out", tmp_path / "bad", "--image-size", "40x", "--workdir",
                    tmp_path / "work")
    assert bad.returncode == 2 and "image_size must be a positive integer or WIDTHxHEIGHT, got '40x'" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "bad" / "room").exists()
