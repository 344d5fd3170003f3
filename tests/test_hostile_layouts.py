"""Hostile datasets through the CLI (in-process): files a layout names that resolve outside the dataset root are
refused unread (their content never echoed), a 7Scenes frame without its pose file is an error naming it, images
of any PIL mode decode to correct 8-bit RGB or are refused naming the file, and a dataset plugin's labels pass the
checks the built-in readers apply. Each case asserts the exit code, the culprit, no traceback and that nothing
outside the work directory changed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hostile_helpers import cli, snapshot
from test_hostile_data import cambridge, sevenscenes

SECRET = "root:x:0:0:SECRET-LINE-NEVER-SHOWN"


def check(tmp_path: Path, *args: object):
    """``bench data check ARGS`` with a work directory under ``tmp_path``; nothing outside it may change."""
    work = tmp_path / "work"
    before = snapshot(tmp_path, work)
    out = cli("data", "check", *args, "--workdir", work)
    assert snapshot(tmp_path, work) == before
    assert SECRET not in out.out + out.err
    return out


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "elsewhere" / "passwd"
    path.parent.mkdir()
    path.write_text(SECRET + "\nsequence1\n")
    return path


@pytest.mark.parametrize("name", ["TrainSplit.txt", "TestSplit.txt"])
def test_sevenscenes_split_file_linked_outside_is_refused_unread(tmp_path, secret, name):
    root = sevenscenes(tmp_path)
    link = root / "chess" / name
    link.unlink()
    link.symlink_to(secret)
    out = check(tmp_path, root)
    assert out.code == 1
    assert f"{link}: split file resolves outside the dataset root {root.resolve()}" in out.err and "not read" in out.err


def test_sevenscenes_sequence_and_pose_file_linked_outside_are_refused(tmp_path):
    root = sevenscenes(tmp_path)
    outside = tmp_path / "elsewhere"
    (root / "chess" / "seq-02").rename(outside)
    (root / "chess" / "seq-02").symlink_to(outside)
    pose = root / "chess" / "seq-01" / "frame-000001.pose.txt"
    (tmp_path / "pose.txt").write_text(pose.read_text())
    pose.unlink()
    pose.symlink_to(tmp_path / "pose.txt")
    out = check(tmp_path, root)
    assert out.code == 1
    assert f"{root / 'chess' / 'seq-02'}: sequence folder resolves outside the dataset root" in out.err
    assert f"{pose}: pose file resolves outside the dataset root" in out.err


def test_scene_folder_linked_from_another_disk_is_still_read(tmp_path):
    elsewhere = sevenscenes(tmp_path / "disk")  # the whole scene lives elsewhere; the root links to it
    root = tmp_path / "root"
    root.mkdir()
    (root / "chess").symlink_to(elsewhere / "chess")
    out = check(tmp_path, root)
    assert out.code == 0 and "OK" in out.out, out.err


def test_cambridge_split_file_linked_outside_is_refused(tmp_path, secret):
    root = cambridge(tmp_path)
    link = root / "ShopFacade" / "dataset_test.txt"
    link.unlink()
    link.symlink_to(secret)
    out = check(tmp_path, root)
    assert out.code == 1 and f"{link}: split file resolves outside the dataset root" in out.err


def test_sevenscenes_frame_without_its_pose_file_is_named(tmp_path):
    root = sevenscenes(tmp_path)
    (root / "chess" / "seq-02" / "frame-000001.pose.txt").unlink()
    out = check(tmp_path, root)
    assert out.code == 1
    image = root / "chess" / "seq-02" / "frame-000001.color.png"
    assert f"{image}: frame without its pose file frame-000001.pose.txt (listed at TestSplit.txt, line 1)" in out.err


# --------------------------------------------------------------------------- image modes
def _grey16() -> np.ndarray:
    return (np.arange(64, dtype=np.uint32).reshape(8, 8) * 1000 + 7).astype(np.uint16)  # 7 .. 63007


def _palette() -> Image.Image:
    im = Image.fromarray((np.arange(64).reshape(8, 8) % 4).astype(np.uint8), "P")
    im.putpalette([200, 10, 20, 0, 255, 0, 30, 40, 250, 9, 9, 9] + [0] * (256 * 3 - 12))
    return im


# (what to save, the 8-bit RGB it must decode to, computed independently of the decoder)
MODES = {
    "I;16": (lambda: Image.fromarray(_grey16()), lambda: np.repeat(np.rint(_grey16().astype(np.float64) * 255 / 65535)[:, :, None], 3, 2)),
    "P": (_palette, lambda: np.array([[200, 10, 20], [0, 255, 0], [30, 40, 250], [9, 9, 9]])[np.arange(64).reshape(8, 8) % 4]),
    "LA": (lambda: Image.fromarray(np.dstack([np.full((8, 8), 77, np.uint8), np.full((8, 8), 3, np.uint8)]), "LA"),
           lambda: np.full((8, 8, 3), 77)),
    "RGBA": (lambda: Image.fromarray(np.dstack([np.full((8, 8, 3), 90, np.uint8), np.zeros((8, 8), np.uint8)]), "RGBA"),
             lambda: np.full((8, 8, 3), 90)),
    "F": (lambda: Image.fromarray(np.full((8, 8), 0.5, np.float32), "F"), lambda: np.full((8, 8, 3), 128)),
    "I": (lambda: Image.fromarray(np.full((8, 8), 65535, np.int32), "I"), lambda: np.full((8, 8, 3), 255)),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_every_image_mode_decodes_to_the_right_8bit_rgb(tmp_path, mode):
    from aprbench.harness.data import make_pose_data
    from aprbench.harness.data.images import load_images

    make, expected = MODES[mode]
    root = sevenscenes(tmp_path)
    suffix = ".tiff" if mode in ("F", "I") else ".png"  # PNG cannot hold float or 32-bit integer images
    for png in sorted((root / "chess").rglob("*.color.png")):
        make().save(png, format="TIFF" if suffix == ".tiff" else "PNG")
    out = check(tmp_path, root, "--decode")
    assert out.code == 0 and "OK" in out.out, out.err
    from aprbench.harness.data import read_sevenscenes

    labels = read_sevenscenes(root)
    images = load_images(make_pose_data("t", root, labels), 8).permute(0, 2, 3, 1).numpy()
    with Image.open(root / labels["img_path"].iloc[0]) as im:
        assert im.mode == mode
    assert images.dtype == np.uint8 and np.array_equal(images[0], expected().astype(np.uint8))


def test_an_image_no_scale_fits_is_refused_naming_it(tmp_path):
    root = sevenscenes(tmp_path)
    bad = root / "chess" / "seq-02" / "frame-000001.color.png"
    Image.fromarray(np.full((8, 8), 1000.0, np.float32), "F").save(bad, format="TIFF")
    out = check(tmp_path, root, "--decode")
    assert out.code == 1
    assert f"cannot read image {bad} (float image values up to 1000; expected 0..1 or 0..255)" in out.err


# --------------------------------------------------------------------------- plugin datasets
PLUGIN = '''
import pandas as pd
from pathlib import Path
from aprbench.harness.api.hookspecs import hookimpl
from aprbench.harness.data import make_pose_data

def factory(store=None, scenes=None, **options):
    rows = [["a", "train", "s1", "a/0.png", 0.0, 0.0, 0.0, 1, 0, 0, 0],
            ["a", "train", "s1", IMG1, 1.0, 0.0, 0.0, 1, 0, 0, 0],
            ["a", "test", SEQ3, IMG3, 0.0, T2, 0.0, 1, 0, QUAT3, 0]]
    labels = pd.DataFrame(rows, columns=["scene", "split", "seq", "img_path", "t1", "t2", "t3", "q1", "q2", "q3", "q4"])
    return make_pose_data("nanset", Path(__file__).parent, labels, scenes)

@hookimpl
def bench_datasets():
    return {"nanset": factory}
'''


CLEAN = {"IMG1": '"a/1.png"', "IMG3": '"a/2.png"', "SEQ3": '"s2"', "T2": "0.0", "QUAT3": "0"}


@pytest.mark.parametrize("change, message", [
    ({"T2": 'float("nan")'}, "labels row 3, column 't2': not finite ([0.0, nan, 0.0"),
    ({"T2": 'float("nan")', "QUAT3": 'float("nan")'}, "labels row 3, columns 't2', 'q3': not finite"),  # the plugin contract (harness.api.contracts) says it first
    ({"IMG3": '"../../outside.png"'}, "dataset plugin 'nanset', labels row 3, column 'img_path': image path "
                                      "'../../outside.png' leaves the dataset root"),
    ({"IMG1": '"a/0.png"'}, "dataset plugin 'nanset', labels row 2, column 'img_path': image 'a/0.png' appears "
                            "more than once"),
    ({"SEQ3": '"s1"'}, "dataset plugin 'nanset', labels row 3, column 'seq': sequence 's1' of scene 'a' is in both "
                       "train"),
])
def test_a_plugin_dataset_passes_the_readers_checks(tmp_path, change, message):
    plugin = tmp_path / "nanset.py"
    source = PLUGIN
    for key, value in {**CLEAN, **change}.items():
        source = source.replace(key, value)
    plugin.write_text(source)
    before = snapshot(tmp_path, tmp_path / "w")
    out = cli("--workdir", tmp_path / "w", "--plugin", plugin, "run", "--dataset", "nanset",
              "--teacher", "posenet-mobilenet", "--no-progress", "--no-report")
    assert out.code == 2 and "dataset plugin 'nanset'" in out.err and message in out.err
    assert not (tmp_path / "w" / "cells").exists() and snapshot(tmp_path, tmp_path / "w") == before
