"""The synthetic dataset: renderer geometry, determinism, trajectories, the store, twins and the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from aprbench.harness import data as D
from aprbench.harness.data import images as I
from aprbench.harness.errors import BenchError, DataError
from aprbench.harness.api.manager import get_registry
from aprbench.harness.poses import orientation_error, quat_to_matrix
from aprbench.harness.store.hdf5 import Store
from aprbench.plugins.datasets import synthetic as S
from aprbench.plugins.datasets.synthetic_render import BoxWorld, make_atlas, render
from aprbench.plugins.datasets.synthetic_scenes import look_at

SMALL = {"frames_per_sequence": 12, "train_sequences": 2, "test_sequences": 1, "image_size": 32}
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "reference-poses"


# --------------------------------------------------------------------------- renderer geometry
def flat_world() -> BoxWorld:
    """A 4 m cube room centred on the origin plus a small box at x in [1, 1.5]; every face one flat colour."""
    lo = torch.tensor([[-2.0, -2.0, -2.0], [1.0, -0.25, -0.25]])
    hi = torch.tensor([[2.0, 2.0, 2.0], [1.5, 0.25, 0.25]])
    colours = torch.linspace(0.1, 0.9, 12)
    tex = colours.view(12, 1, 1, 1).expand(12, 3, 8, 8).contiguous()
    atlas, cols = make_atlas(tex)
    return BoxWorld(lo=lo, hi=hi, atlas=atlas, tile=8, cols=cols, light=torch.tensor([0.0, 0.0, 1.0]),
                    ambient=1.0, fog_distance=1e9)


def centre_pixel(world: BoxWorld, R: torch.Tensor, t=(0.0, 0.0, 0.0)) -> float:
    from aprbench.harness.poses import matrix_to_quat

    pose = torch.cat([torch.tensor(t), matrix_to_quat(R.double()).float()])[None]
    img = render(world, pose, size=8)
    return float(img[0, 0, 3:5, 3:5].float().mean()) / 255


def test_renderer_hits_the_expected_faces():
    world = flat_world()
    colour = lambda face: float(torch.linspace(0.1, 0.9, 12)[face])  # noqa: E731
    # looking along +x from the origin: the small box's lo-x face (box 1, axis 0, side 0 -> face 6)
    fwd_x = look_at(torch.zeros(3), torch.tensor([1.0, 0, 0]), torch.tensor(0.0))
    assert centre_pixel(world, fwd_x) == pytest.approx(colour(6), abs=1 / 255)
    # along -x: the room's lo-x wall seen from inside (box 0, axis 0, side 0 -> face 0)
    back_x = look_at(torch.zeros(3), torch.tensor([-1.0, 0, 0]), torch.tensor(0.0))
    assert centre_pixel(world, back_x) == pytest.approx(colour(0), abs=1 / 255)
    # along +y: the room's hi-y wall (face 3); along -z: the floor (face 4)
    fwd_y = look_at(torch.zeros(3), torch.tensor([0, 1.0, 0]), torch.tensor(0.0))
    assert centre_pixel(world, fwd_y) == pytest.approx(colour(3), abs=1 / 255)
    down = look_at(torch.zeros(3), torch.tensor([0.0, 0.01, -1.0]), torch.tensor(0.0))
    assert centre_pixel(world, down) == pytest.approx(colour(4), abs=1 / 255)
    # standing beyond the small box, looking back at it (-x): its hi-x face (face 7)
    assert centre_pixel(world, back_x, t=(1.9, 0.0, 0.0)) == pytest.approx(colour(7), abs=1 / 255)


def test_opencv_camera_frame():
    """x right, y down, z forward: looking along +y with z up, image right is +x (east), image down is -z."""
    R = look_at(torch.zeros(3), torch.tensor([0, 1.0, 0]), torch.tensor(0.0))
    torch.testing.assert_close(R, torch.tensor([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]]), atol=1e-6, rtol=0)
    # the upper half of an image looking at a wall over a floor is the wall, lower half shows the floor
    world = flat_world()
    from aprbench.harness.poses import matrix_to_quat

    pose = torch.cat([torch.tensor([0.0, 0.0, 0.0]), matrix_to_quat(look_at(torch.zeros(3), torch.tensor([0.0, 1.0, -0.9]), torch.tensor(0.0)).double()).float()])
    img = render(world, pose[None], size=16)[0, 0].float() / 255
    assert img[-1, 8] == pytest.approx(float(torch.linspace(0.1, 0.9, 12)[4]), abs=1 / 255)  # floor at the bottom


# --------------------------------------------------------------------------- scenes and trajectories
@pytest.mark.parametrize("scene", ["room", "site"])
def test_trajectories_smooth_held_out_inside(scene):
    poses = S.scene_poses(scene, seed=0, frames_per_sequence=150, train_sequences=6, test_sequences=2)
    assert poses.shape == (8, 150, 7)
    t, q = poses[..., :3], poses[..., 3:]
    extent = float((t.reshape(-1, 3).max(0).values - t.reshape(-1, 3).min(0).values).max())
    step = (t[:, 1:] - t[:, :-1]).norm(dim=-1)
    turn = orientation_error(q[:, 1:], q[:, :-1])
    assert float(step.max()) < 0.04 * extent  # smooth position (a few cm per frame indoors)
    assert float(turn.max()) < 5.0  # degrees per frame
    accel = (t[:, 2:] - 2 * t[:, 1:-1] + t[:, :-2]).norm(dim=-1)
    assert float(accel.max()) < 0.2 * float(step.max()) + 1e-6  # no jumps in velocity
    # roll stays slight: the camera x axis stays nearly horizontal (z up)
    R = quat_to_matrix(q.reshape(-1, 4))
    assert float(R[:, 2, 0].abs().max()) < math.sin(math.radians(6))
    # test sequences differ from training ones but lie inside the training region
    train, test = t[:6].reshape(-1, 3), t[6:].reshape(-1, 3)
    assert (test.min(0).values >= train.min(0).values - 0.05 * extent).all()
    assert (test.max(0).values <= train.max(0).values + 0.05 * extent).all()
    assert float(torch.cdist(test, train).min(1).values.max()) < 0.25 * extent
    assert not any(torch.allclose(poses[6], poses[i]) for i in range(6))
    # test sequences do not change when more training sequences are drawn, and vice versa
    more = S.scene_poses(scene, seed=0, frames_per_sequence=150, train_sequences=6, test_sequences=3)
    torch.testing.assert_close(more[:8], poses)


def test_seed_changes_everything():
    a = S.scene_poses("room", seed=0, frames_per_sequence=20, train_sequences=1, test_sequences=0)
    b = S.scene_poses("room", seed=1, frames_per_sequence=20, train_sequences=1, test_sequences=0)
    assert not torch.allclose(a, b)


# --------------------------------------------------------------------------- the dataset in the store
def test_factory_renders_once_deterministic(tmp_path, monkeypatch):
    store = Store(tmp_path / "w")
    data = S.factory(store, scenes=["room"], seed=0, **SMALL)
    assert data.scenes == ["room"] and len(data.labels) == 36
    assert data.labels.groupby("split").size().to_dict() == {"test": 12, "train": 24}
    assert set(data.split("test").labels["seq"]) == {"seq-03"}
    truth = S.scene_poses("room", 0, 12, 2, 1).reshape(-1, 7)
    got = data.poses().double()
    torch.testing.assert_close(got[:, :3], truth[:, :3].float().double(), atol=1e-6, rtol=0)
    assert float(orientation_error(got[:, 3:], truth[:, 3:]).max()) < 1e-3
    x1 = I.load_images(data, 32, store)
    assert x1.shape == (36, 3, 32, 32) and x1.float().std() > 10
    # the second call re-uses the rendered folder: rendering must not run again
    monkeypatch.setattr(S, "render_scene_native", lambda *a, **k: pytest.fail("rendered twice"))
    again = S.factory(store, scenes=["room"], seed=0, **SMALL)
    assert again.fingerprint() == data.fingerprint()
    assert torch.equal(I.load_images(again, 32, store), x1)
    monkeypatch.undo()
    # same seed elsewhere: same pixels; another seed: other pixels
    same = S.factory(Store(tmp_path / "w2"), scenes=["room"], seed=0, **SMALL)
    assert torch.equal(I.load_images(same, 32), x1)
    other = S.factory(store, scenes=["room"], seed=1, **SMALL)
    assert other.root != data.root and not torch.equal(I.load_images(other, 32), x1)


def test_interrupted_render_is_not_reused(tmp_path, monkeypatch):
    store = Store(tmp_path / "w")

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(S, "_render_and_write", boom)
    with pytest.raises(KeyboardInterrupt):
        S.factory(store, scenes=["room"], **SMALL)
    monkeypatch.undo()
    root = next((store.data_dir("synthetic")).iterdir())
    assert not (root / "room").exists() and not list(root.glob(".room.rendering-*"))
    data = S.factory(store, scenes=["room"], **SMALL)
    assert len(data.labels) == 36
    D.check_image_files(data.labels, data.root)


def test_factory_options_and_open_dataset(tmp_path):
    store = Store(tmp_path / "w")
    with pytest.raises(BenchError, match="unknown option\\(s\\) colour"):
        S.factory(store, colour=3)
    with pytest.raises(BenchError, match="frames_per_sequence must be"):
        S.factory(store, frames_per_sequence="many")
    with pytest.raises(DataError, match="unknown scene\\(s\\) moon; known scenes: room, site"):
        S.factory(store, scenes=["moon"])
    name, data = D.open_dataset(
        "synthetic:seed=2,frames_per_sequence=6,train_sequences=2,test_sequences=1,image_size=16,fraction=0.5",
        store, get_registry(), scenes=["site"],
    )
    assert name == "synthetic" and data.scenes == ["site"]
    assert data.labels.groupby("split").size().to_dict() == {"test": 6, "train": 6}
    assert I.load_images(data, 16, store).shape == (12, 3, 16, 16)


# --------------------------------------------------------------------------- twins
def test_render_twin_far_from_origin(tmp_path):
    rng = np.random.default_rng(0)
    q = rng.normal(size=(8, 4))
    df = pd.DataFrame({
        "scene": "Far", "split": ["train"] * 6 + ["test"] * 2, "seq": ["seq1"] * 6 + ["seq2"] * 2,
        "img_path": [f"Far/seq{1 + (i >= 6)}/frame{i:05d}.png" for i in range(8)],
        "t1": 5e5 + rng.normal(size=8) * 20, "t2": -3e5 + rng.normal(size=8) * 20, "t3": rng.normal(size=8),
        "q1": q[:, 0], "q2": q[:, 1], "q3": q[:, 2], "q4": q[:, 3],
    })
    S.render_twin(df, tmp_path, image_size=24)
    back = D.read_labels(tmp_path / "labels.csv", tmp_path, check_images=True)
    np.testing.assert_allclose(back[["t1", "t2", "t3"]].to_numpy(float), df[["t1", "t2", "t3"]].to_numpy(float))
    images = np.stack([np.asarray(Image.open(tmp_path / p)) for p in df["img_path"]])
    assert images.shape == (8, 24, 24, 3) and images.std(axis=(1, 2, 3)).min() > 5


@pytest.mark.skipif(not SHARED.is_dir(), reason="reference poses (../shared) not available")
def test_twin_of_reference_poses(tmp_path, run_bench):
    csvs = sorted(SHARED.glob("*.csv"))
    assert csvs
    rows = pd.concat([D.read_labels(p).iloc[::200] for p in csvs if "ShopFacade" in p.name or "heads" in p.name])
    small = tmp_path / "small.csv"
    D.write_labels(rows, small)
    out = tmp_path / "twin"
    r = run_bench("data", "render", "--poses", small, "--out", out, "--image-size", "32", "--samples", "8")
    assert r.returncode == 0, r.stderr
    assert (out / "samples.png").is_file()
    r = run_bench("data", "check", out, "--labels", out / "labels.csv")
    assert r.returncode == 0, r.stderr
    assert "ShopFacade" in r.stdout and "heads" in r.stdout
    # every reference file can be fitted (geometry only, a few poses each)
    from aprbench.plugins.datasets.synthetic_scenes import twin_world

    for p in csvs:
        t = torch.tensor(D.read_labels(p)[["t1", "t2", "t3"]].to_numpy(float))
        world = twin_world((t - t.mean(0)).float(), tile=8)
        inside = ((t - t.mean(0)).float()[:, None] > world.lo[1:]) & ((t - t.mean(0)).float()[:, None] < world.hi[1:])
        assert not inside.all(-1).any(), f"{p.name}: a camera inside a box"


# --------------------------------------------------------------------------- the CLI
def test_cli_render_check_and_errors(tmp_path, run_bench):
    out = tmp_path / "room"
    r = run_bench("data", "render", "--scene", "room", "--out", out, "--frames-per-sequence", "5",
                  "--train-sequences", "2", "--test-sequences", "1", "--samples", "6")
    assert r.returncode == 0, r.stderr
    assert (out / "room" / "TrainSplit.txt").read_text() == "sequence1\nsequence2\n"
    assert (out / "room" / "TestSplit.txt").read_text() == "sequence3\n"
    assert (out / "room" / "seq-03" / "frame-000004.color.png").is_file()
    assert Image.open(out / "samples.png").size[0] > 6 * 64
    r = run_bench("data", "check", out)
    assert r.returncode == 0, r.stderr
    assert "room" in r.stdout and "OK" in r.stdout and "| train" in r.stdout
    # break it: a missing image is reported by name, without a traceback (bad pose files: test_data.py)
    (out / "room" / "seq-01" / "frame-000002.color.png").unlink()
    r = run_bench("data", "check", out)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "seq-01/frame-000002.color.png does not exist" in r.stderr
    # a labels CSV with several problems: every one named with row and column
    bad = tmp_path / "bad.csv"
    bad.write_text("scene,split,seq,img_path,t1,t2,t3,q1,q2,q3,q4\n"
                   "room,train,seq-01,room/seq-01/frame-000000.color.png,0,x,0,1,0,0,0\n"
                   "room,dev,seq-01,room/seq-01/frame-000001.color.png,0,0,0,0,0,0,0\n")
    r = run_bench("data", "check", out, "--labels", bad)
    assert r.returncode == 1
    assert "row 1 (line 2), column 't2'" in r.stderr
    assert "row 2 (line 3), column 'split': unknown split 'dev'" in r.stderr
    assert "zero quaternion" in r.stderr


def test_cli_help_explains_every_option():
    from aprbench.harness.cli.main import build_parser

    parser = build_parser()
    for argv, options in ((["data", "render"], ["--scene", "--poses", "--out", "--seed", "--frames-per-sequence",
                                                 "--train-sequences", "--test-sequences", "--image-size",
                                                 "--supersample", "--samples"]),
                          (["data", "check"], ["--labels", "--decode", "ROOT"])):
        sub = parser._subparsers._group_actions[0].choices["data"]._subparsers._group_actions[0].choices[argv[1]]
        text = sub.format_help()
        for option in options:
            assert option in text
        documented = [a for a in sub._actions if a.option_strings and a.dest != "help"]
        assert all(a.help for a in documented)


def test_export_refuses_to_mix_options(tmp_path):
    tiny = {"frames_per_sequence": 3, "train_sequences": 1, "test_sequences": 1, "image_size": 16}
    S.export(tmp_path, ["room"], seed=0, **tiny)
    S.export(tmp_path, ["room"], seed=0, **tiny)  # same options: kept as is
    with pytest.raises(BenchError, match="already exists and was not rendered with these options"):
        S.export(tmp_path, ["room"], seed=1, **tiny)
