"""The reference's iAPR protocol (``protocol = "reference"``, the ``paper`` recipe of ``pae-rpr``).

* A reference-layout iAPR file (``mstransformer.*``, ``pae.*`` and the RPR, random weights) imports whole
  into a refiner that holds its own encoder and PAE, and aprbench's batched K-iteration loop gives the poses
  of an independent rewrite of the reference's test loop (frame by frame, rotation matrices, ``w >= 0``).
* Training fine-tunes the RPR, the image encoder copy and the PAE copy on pairs (the teacher and the
  student stay as they were) and the loss goes down.
* The reference's pair-list format reads back, and half the pairs are swapped with the inverse target.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from aprbench.harness import poses as P
from aprbench.harness.errors import BenchError
from aprbench.harness.data.pair_lists import read_pair_list, swap_half, write_pair_list
from aprbench.harness.running.stages import refiner as stage
from aprbench.harness.running.stages.context import Artifact
from aprbench.harness.store.hdf5 import load_into
from aprbench.plugins.refiners.pae_rpr import TransformerRPR
from aprbench.plugins.students.pae import PAE
from refiner_helpers import ConvTeacher, TINY_RPR, make_ctx, make_data, make_outputs
from test_reference_parity import RefEMSTransPoseNet, RefVTRPR, _mst, _randomise

TOL = 1e-5


@pytest.fixture
def fake_outputs(monkeypatch):
    """``install(outs)``: the refiner stage reads ``outs[split]`` as the teacher's stored outputs."""

    def install(outs):
        monkeypatch.setattr(stage, "_outputs", lambda ctx, teacher, split: outs[split])

    return install


# ----------------------------------------------------------------------------- the reference's test loop
def _quat2mat(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def _mat2quat(m: np.ndarray) -> np.ndarray:
    """Bar-Itzhack: the eigenvector of the largest eigenvalue of the symmetric K matrix, then ``w >= 0``."""
    (xx, yx, zx), (xy, yy, zy), (xz, yz, zz) = m
    K = np.array([[xx - yy - zz, 0, 0, 0], [yx + xy, yy - xx - zz, 0, 0],
                  [zx + xz, zy + yz, zz - xx - yy, 0], [yz - zy, zx - xz, xy - yx, xx + yy + zz]]) / 3.0
    vals, vecs = np.linalg.eigh(K)
    q = vecs[[3, 0, 1, 2], np.argmax(vals)]
    return -q if q[0] < 0 else q


def reference_test_loop(apr, mst_ft, vtrpr, images: torch.Tensor, iterations: int) -> np.ndarray:
    """The reference's iAPR test, one frame at a time: the frozen APR's estimate and predicted scene, then
    ``iterations`` times: normalise, fine-tuned encoder latents + PAE latents of the estimate -> relative pose,
    flip it (neighbour -> query), compose with rotation matrices."""
    out = []
    with torch.no_grad():
        for i in range(len(images)):
            img = images[i : i + 1]
            pose, _, _, logp = apr(img)
            scene = logp.argmax(1)
            est = pose.double().numpy()[0]
            for _ in range(iterations):
                closest = est.copy()
                closest[3:] = est[3:] / np.linalg.norm(est[3:])
                _, qx, qq, _ = mst_ft(img, scene)
                nx, nq = vtrpr.pae(torch.tensor(closest[None], dtype=torch.float32), scene.float().unsqueeze(1))
                rel = vtrpr(qx, qq, nx, nq).double().numpy()[0]
                rel[:3], rel[4:] = -rel[:3], -rel[4:]
                est = np.concatenate([closest[:3] + rel[:3], _mat2quat(_quat2mat(closest[3:]) @ _quat2mat(rel[3:]))])
            out.append(est)
    return np.stack(out)


def reference_iapr_state(seed: int = 0) -> tuple[dict, RefEMSTransPoseNet, RefEMSTransPoseNet, RefVTRPR]:
    """A reference iAPR file (fine-tuned ``mstransformer.*``, ``pae.*``, RPR) and the frozen APR, random weights."""
    torch.manual_seed(seed)
    apr = _randomise(RefEMSTransPoseNet(), seed)
    mst_ft = _randomise(RefEMSTransPoseNet(), seed + 1)
    vtrpr = _randomise(RefVTRPR(), seed + 2)
    state = {**vtrpr.state_dict(), **{f"mstransformer.{k}": v for k, v in mst_ft.state_dict().items()}}
    return state, apr, mst_ft, vtrpr


def _reference_refiner() -> TransformerRPR:
    model = TransformerRPR(latent_dim=32, d_model=32, layers=2, heads=4, ffn=64, reference_layout=True)
    model.add_module("image_encoder", _mst())
    model.add_module("pae", PAE(latent_dim=32, num_scenes=3, multi_scene=True))
    return model.eval()


def test_reference_iapr_file_loads_whole_and_refines_like_the_reference():
    pytest.importorskip("efficientnet_pytorch")
    state, apr, mst_ft, vtrpr = reference_iapr_state()
    teacher = _mst()
    load_into(teacher, teacher.from_reference_state_dict(apr.state_dict()), source="apr")
    model = _reference_refiner()
    load_into(model, model.from_reference_state_dict(state), source="iapr")  # strict: every key of all three parts
    images = torch.randn(5, 3, 64, 64)
    K = 3
    expected = reference_test_loop(apr, mst_ft, vtrpr, images, K)
    with torch.no_grad():  # aprbench: all frames at once, query latents computed once
        pose, lat = teacher(images)
        scene = lat.scene_logp.argmax(1)
        p = P.join_pose(pose[:, :3], P.normalize_quat(pose[:, 3:]))
        q = model.image_encoder.encode(images, scene)
        step = stage.make_step(model, lambda e: (e, *stage.encode_poses(model.pae, e, scene)), q.x, q.q, 2,
                               w_positive=True)
        for _ in range(K):
            p = step(p)
    worst = np.abs(p.double().numpy() - expected).max()
    print(f"iAPR loop, {K} iterations: max diff {worst:.2e}")
    assert (p[:, 3] >= 0).all() and worst < TOL
    assert np.abs(expected[:, :3] - pose[:, :3].numpy()).max() > 1e-2  # the loop moved the estimates


def test_reference_iapr_file_refused_where_parts_do_not_fit():
    state, *_ = reference_iapr_state()
    plain = TransformerRPR(latent_dim=32, d_model=32, layers=2, heads=4, ffn=64, reference_layout=True)
    with pytest.raises(BenchError, match=r"unexpected keys.*(mstransformer|pae)\."):
        load_into(plain, plain.from_reference_state_dict(state), source="iapr")  # aprbench protocol: no encoder/PAE
    model = _reference_refiner()
    del state["pae.x_encoder.0.weight"]
    with pytest.raises(BenchError, match=r"pae\.x_encoder\.0\.weight"):
        load_into(model, model.from_reference_state_dict(state), source="iapr")


# ----------------------------------------------------------------------------- training
def test_reference_protocol_finetunes_rpr_encoder_and_pae(tmp_path, fake_outputs):
    data = make_data(tmp_path / "data", n_train=32, n_test=8, images=True)
    fake_outputs(make_outputs(data, 16))
    ctx = make_ctx(tmp_path, data, refiner={**TINY_RPR, "epochs": 4, "batch_size": 8, "lr": 1e-3, "k": 2,
                                            "protocol": "reference", "reference_layout": True, "d_model": 16,
                                            "standardize": False, "init_bias": False})
    teacher = Artifact("teacher", "conv", "tc", {"image_size": 16}, ConvTeacher(16))
    torch.manual_seed(0)
    student = Artifact("student", "pae", "sp", {}, PAE(latent_dim=16))
    before_t = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    before_s = {k: v.clone() for k, v in student.model.state_dict().items()}
    art = stage.obtain_refiner(ctx, "pae-rpr", teacher, student)
    model = art.model
    state = torch.load(art.path, weights_only=True)
    assert {k.split(".")[0] for k in state} >= {"image_encoder", "pae", "encoder", "head_x"}  # the artifact holds all
    for prefix, before in (("image_encoder.", before_t), ("pae.", before_s)):
        assert any(not torch.equal(before[k[len(prefix):]], v) for k, v in state.items() if k.startswith(prefix))
    assert all(torch.equal(before_t[k], v) for k, v in teacher.model.state_dict().items())  # originals untouched
    assert all(torch.equal(before_s[k], v) for k, v in student.model.state_dict().items())
    log = pd.read_csv(art.path.parent / "logs" / "log.csv")
    loss = log["loss"]  # per epoch
    assert loss.iloc[-1] < loss.iloc[0], loss.tolist()
    res = stage.refine(ctx, art, teacher, student, "test", 2)  # the fine-tuned PAE, w >= 0
    assert res["poses"].shape == (3, 8, 7) and (res["poses"][1:, :, 3] >= 0).all()
    assert model.pae is not student.model


# ----------------------------------------------------------------------------- pair lists
def test_pair_list_reads_back_and_swaps_half(tmp_path):
    data = make_data(tmp_path / "data", n_train=20, n_test=2)
    train = data.split("train")
    poses, paths = train.poses(), train.labels["img_path"].tolist()
    a, b = torch.arange(0, 19), torch.arange(1, 20)
    f = tmp_path / "pairs.csv"
    write_pair_list(f, paths, train.labels["scene"].tolist(), train.scene_ids(), poses, a, b)
    assert pd.read_csv(f).columns[0] == "img_path_a" and pd.read_csv(f)["img_path_a"][0].startswith("/")
    ra, rb, rel = read_pair_list(f, paths)
    assert torch.equal(ra, a) and torch.equal(rb, b)
    torch.testing.assert_close(rel, P.relative_target(poses[a], poses[b]), atol=1e-6, rtol=0)
    sa, sb, srel = swap_half(ra, rb, rel, torch.Generator().manual_seed(0))
    flipped = sa != ra
    assert 0 < int(flipped.sum()) < len(a) and torch.equal(sb[flipped], ra[flipped])
    # a swapped target is rel(b -> a): composing it onto b gives a
    back = P.compose(poses[sb], P.invert_relative(srel))
    torch.testing.assert_close(P.pose_errors(back, poses[sa])[0], torch.zeros(len(a)), atol=1e-5, rtol=0)
    torch.testing.assert_close(srel[:, :3], (poses[sb] - poses[sa])[:, :3], atol=1e-6, rtol=0)
    bad = tmp_path / "bad.csv"
    pd.read_csv(f).assign(img_path_b="/nowhere.png").to_csv(bad, index=False)
    with pytest.raises(BenchError, match="not in the training split.*nowhere.png"):
        read_pair_list(bad, paths)
    pd.read_csv(f).drop(columns=["q4_ab"]).to_csv(bad, index=False)
    with pytest.raises(BenchError, match="missing columns q4_ab"):
        read_pair_list(bad, paths)


# ----------------------------------------------------------------------------- end to end
# `--profile paper` as it is (preprocessing, architecture options, the reference protocol), with the model widths
# and depths of the small random reference files
PAPER_SIZES = ["--set", "teacher.d_model=32", "--set", "teacher.ffn=32", "--set", "teacher.enc_layers=1",
               "--set", "teacher.dec_layers=1", "--set", "refiner.d_model=32", "--set", "refiner.ffn=64",
               "--set", "refiner.heads=4", "--set", "refiner.layers=2"]


def test_bench_run_with_reference_files_gives_the_reference_estimates_per_frame(tmp_path):
    """``bench run --profile paper --teacher mstransformer=APR --student pae=PAE --refiner pae-rpr=IAPR``, then
    ``bench export``: after 3 iterations every frame's estimate is the reference test loop's on the reference's
    test transform (Resize(256) + CenterCrop(224) of the PIL image)."""
    pytest.importorskip("efficientnet_pytorch")
    from PIL import Image
    from torchvision.transforms import v2

    from aprbench.harness.cli.main import main
    from aprbench.harness.data.images import normalize_images
    from aprbench.harness.api.interfaces import LABEL_COLUMNS
    from refiner_helpers import make_labels, write_images
    from test_reference_parity import RefPAE

    labels = make_labels(n_train=2, n_test=2, scenes=("a", "b", "c"))
    data = tmp_path / "data"
    write_images(data, labels, size=64)
    labels[LABEL_COLUMNS].to_csv(data / "labels.csv", index=False)
    state, apr, mst_ft, vtrpr = reference_iapr_state(seed=3)
    pae = _randomise(RefPAE(True), 9)  # the student's PAE: not the file's fine-tuned one, which the loop must use
    torch.save(apr.state_dict(), tmp_path / "apr.pth")
    torch.save(pae.state_dict(), tmp_path / "pae.pth")
    torch.save(state, tmp_path / "iapr.pth")
    work = tmp_path / "work"
    common = ["--workdir", str(work), "--no-progress"]
    code = main(["run", *common, "--profile", "paper", "--dataset", f"labels:root={data},labels={data / 'labels.csv'}",
                 "--teacher", f"mstransformer={tmp_path / 'apr.pth'}", "--student", f"pae={tmp_path / 'pae.pth'}",
                 "--refiner", f"pae-rpr={tmp_path / 'iapr.pth'}", "--iterations", "0,3", "--no-report",
                 *PAPER_SIZES])
    assert code in (0, None)
    out = tmp_path / "frames.csv"
    assert main(["export", "--workdir", str(work), "--filter", "refiner=pae-rpr*", "--out", str(out)]) in (0, None)
    assert (pd.read_csv(out)["profile"] == "paper").all()
    rows = pd.read_csv(out)
    rows = rows[rows["iteration"] == 3].set_index("img_path")
    test = labels[labels["split"] == "test"]
    reference_transform = v2.Compose([v2.Resize(256), v2.CenterCrop(224), v2.PILToTensor()])
    images = torch.stack([reference_transform(Image.open(data / p).convert("RGB")) for p in test["img_path"]])
    expected = reference_test_loop(apr, mst_ft, vtrpr, normalize_images(images), 3)
    got = rows.loc[test["img_path"].tolist(), [f"est_{c}" for c in ("t1", "t2", "t3", "q1", "q2", "q3", "q4")]].to_numpy()
    pos = np.abs(got[:, :3] - expected[:, :3]).max()
    q1, q2 = got[:, 3:] / np.linalg.norm(got[:, 3:], axis=1, keepdims=True), expected[:, 3:]
    vec = q1[:, :1] * q2[:, 1:] - q2[:, :1] * q1[:, 1:] - np.cross(q1[:, 1:], q2[:, 1:])  # vector part of q1^-1 q2
    ang = np.degrees(2 * np.arcsin(np.clip(np.linalg.norm(vec, axis=1), 0, 1))).max()  # precise at small angles
    print(f"bench run + export vs the reference loop: {len(got)} frames, max {pos:.2e} m, {ang:.2e} deg")
    assert len(got) == 6 and pos < 1e-3 and ang < 1e-2 and (got[:, 3] >= 0).all()


def test_reference_iapr_files_run_on_one_scene_label_file(tmp_path):
    """The reference's documented iAPR test (``main_iapr.py test ... abs_7scenes_pose.csv_redkitchen_test.csv``): its
    7-scene APR, PAE and iAPR file at the paper's sizes on one scene's label file, ``--profile paper`` and no
    ``--set``. Every frame's estimate after 3 iterations is the reference loop's, whose fine-tuned encoder and PAE
    are given the APR's predicted scene in the model's own order (redkitchen is 5 there, 0 in the label file)."""
    pytest.importorskip("efficientnet_pytorch")
    from PIL import Image
    from torch import nn

    from aprbench.harness.cli.main import main
    from aprbench.harness.data.images import normalize_images
    from aprbench.harness.store.hdf5 import read_h5
    from test_reference_parity import RefPAE
    from test_third_party import _one_scene_labels

    sizes = dict(scenes=7, d=256, h=8, ffn=256, n_enc=6, n_dec=6)  # the paper recipe's MS-Transformer
    torch.manual_seed(0)
    apr, mst_ft = _randomise(RefEMSTransPoseNet(**sizes), 11), _randomise(RefEMSTransPoseNet(**sizes), 12)

    def pae_256() -> nn.Module:  # the reference's multi-scene PAE with 256-d latents
        pae = RefPAE(True)
        pae.x_encoder[6], pae.q_encoder[6] = nn.Linear(256, 256), nn.Linear(256, 256)
        return pae

    vtrpr = RefVTRPR(d=256, heads=4, ffn=2048, layers=2)  # the paper's RPR
    vtrpr.pae = pae_256()
    vtrpr = _randomise(vtrpr, 13)
    student = _randomise(pae_256(), 14)  # the --student PAE: not the file's fine-tuned one, which the loop uses
    state = {**vtrpr.state_dict(), **{f"mstransformer.{k}": v for k, v in mst_ft.state_dict().items()}}
    for name, obj in (("apr", apr.state_dict()), ("pae", student.state_dict()), ("iapr", state)):
        torch.save(obj, tmp_path / f"{name}.pth")
    scene = "redkitchen"  # what these random weights predict for the label file's frames
    labels = _one_scene_labels(tmp_path / "data", scene)
    work = tmp_path / "work"
    code = main(["run", "--workdir", str(work), "--no-progress", "--profile", "paper", "--dataset",
                 f"labels:root={tmp_path / 'data'},labels={labels}", "--teacher", f"mstransformer={tmp_path / 'apr.pth'}",
                 "--student", f"pae={tmp_path / 'pae.pth'}", "--refiner", f"pae-rpr={tmp_path / 'iapr.pth'}",
                 "--iterations", "0,3", "--no-report"])
    assert code in (0, None)
    out = tmp_path / "frames.csv"
    assert main(["export", "--workdir", str(work), "--filter", "refiner=pae-rpr*", "--out", str(out)]) in (0, None)
    rows = pd.read_csv(out)
    rows = rows[rows["iteration"] == 3].set_index("img_path")
    frames = sorted(p.relative_to(tmp_path / "data").as_posix() for p in (tmp_path / "data" / scene).rglob("*.png"))
    images = torch.stack([torch.from_numpy(np.array(Image.open(tmp_path / "data" / f))).permute(2, 0, 1)
                          for f in frames])[:, :, 16:240, 16:240]  # Resize(256) + CenterCrop(224) of 256-px images
    images = normalize_images(images)
    with torch.no_grad():
        pred = apr(images)[3].argmax(1).numpy()
    assert (pred != 0).any(), pred  # the label file's scene id (0) would give other PAE latents
    expected = reference_test_loop(apr, mst_ft, vtrpr, images, 3)
    got = rows.loc[frames, [f"est_{c}" for c in ("t1", "t2", "t3", "q1", "q2", "q3", "q4")]].to_numpy()
    pos = np.abs(got[:, :3] - expected[:, :3]).max()
    q1, q2 = got[:, 3:] / np.linalg.norm(got[:, 3:], axis=1, keepdims=True), expected[:, 3:]
    vec = q1[:, :1] * q2[:, 1:] - q2[:, :1] * q1[:, 1:] - np.cross(q1[:, 1:], q2[:, 1:])  # vector part of q1^-1 q2
    ang = np.degrees(2 * np.arcsin(np.clip(np.linalg.norm(vec, axis=1), 0, 1))).max()
    print(f"one-scene iAPR vs the reference loop: {len(got)} frames, predicted scenes {pred.tolist()}, "
          f"max {pos:.2e} m, {ang:.2e} deg")
    assert len(got) == len(frames) and pos < 1e-3 and ang < 1e-2 and (got[:, 3] >= 0).all()
    assert np.abs(expected[:, :3] - apr(images)[0][:, :3].detach().numpy()).max() > 1e-2  # the loop moved them
    teacher_cells = [read_h5(c)[1]["result"] for c in (work / "cells").glob("*.h5")]
    accuracy = {r["scene_accuracy"] for r in teacher_cells if "scene_accuracy" in r}
    assert accuracy == {float(np.mean(pred == 5))}  # redkitchen's index in the reference's 7Scenes order
    print(f"teacher cell scene accuracy {accuracy}")
