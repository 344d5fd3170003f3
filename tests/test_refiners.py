"""Refiners: the iAPR loop (oracle convergence, composition convention, batching, scenes), training,
stored bytes, refusals, and the CLI (stand-in teachers/students; real ones when available)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from aprbench.harness import poses as P
from aprbench.harness.errors import BenchError
from aprbench.harness.api.interfaces import Refiner
from aprbench.harness.running.stages import refiner as stage
from aprbench.harness.running.stages.context import Artifact
from aprbench.plugins.refiners.pae_rpr import TransformerRPR
from refiner_helpers import (
    one_thread,
    TINY_RPR, OracleRefiner, make_ctx, make_data, make_outputs, student_artifact, teacher_artifact,
)


@pytest.fixture
def fake_outputs(monkeypatch):
    """``install(outs)``: make the refiner stage read ``outs[split]`` as the teacher's stored outputs."""
    calls: list[str] = []

    def install(outs):
        def read(ctx, teacher, split):
            calls.append(split)
            return outs[split]

        monkeypatch.setattr(stage, "_outputs", read)
        return calls

    return install


def oracle(neighbours: str, latent_dim: int = 8) -> Artifact:
    return Artifact("refiner", "oracle", "o0", {}, OracleRefiner(latent_dim, neighbours))


single_thread = pytest.fixture(autouse=True)(one_thread)

# --------------------------------------------------------------------------- the loop
@pytest.mark.parametrize("neighbours", ["student", "retrieval"])
def test_oracle_refiner_converges_in_one_iteration(tmp_path, fake_outputs, neighbours):
    data = make_data(tmp_path / "data", images=neighbours == "retrieval")
    outs = make_outputs(data, 8, raw=True, noise_m=0.4, noise_deg=15)
    fake_outputs(outs)
    ctx = make_ctx(tmp_path, data)
    student = student_artifact(raw=True) if neighbours == "student" else None
    res = stage.refine(ctx, oracle(neighbours), teacher_artifact(), student, "test", iterations=3)
    gt, est = outs["test"]["pose_gt"], outs["test"]["pose_est"]
    assert res["poses"].shape == (4, len(gt), 7)  # every iteration, batched over all frames
    np.testing.assert_allclose(res["poses"][0], est, atol=1e-6)  # index 0 = teacher estimate
    for k in (1, 2, 3):
        pos, ori = P.pose_errors(torch.as_tensor(res["poses"][k]).double(), torch.as_tensor(gt).double())
        assert float(pos.max()) < 1e-4 and float(ori.max()) < 0.05, (k, float(pos.max()), float(ori.max()))
    pos0, _ = P.pose_errors(torch.as_tensor(est).double(), torch.as_tensor(gt).double())
    assert float(pos0.median()) > 0.2  # there was something to correct
    np.testing.assert_allclose(res["pose_gt"], gt)
    assert res["time_s"].shape == (4,) and res["time_s"][0] == pytest.approx(0.002)
    assert np.all(np.diff(res["time_s"]) > 0)  # cumulative


class ConstantRel(Refiner):
    """Always answers the same relative pose."""

    def __init__(self, rel: torch.Tensor) -> None:
        super().__init__()
        self.latent_dim, self.neighbours = 8, "student"
        self.register_buffer("rel", rel)

    def forward(self, query_x, query_q, ref_x, ref_q):
        return self.rel.expand(len(query_x), 7)


def test_composition_follows_the_reference_convention(tmp_path, fake_outputs):
    """``rel = rel(query -> reference)``: ``t = t_ref - t_query``, ``R = R_query^-1 R_ref``, so the refined
    query is ``t_ref - t`` and ``R_ref R^-1`` (DESIGN.md §1)."""
    data = make_data(tmp_path / "data")
    outs = make_outputs(data, 8)
    fake_outputs(outs)
    rel = torch.cat([torch.tensor([0.3, -0.2, 0.1]), P.axis_angle_to_quat(torch.tensor([0.1, 0.2, -0.3]))])
    art = Artifact("refiner", "const", "c0", {}, ConstantRel(rel))
    res = stage.refine(make_ctx(tmp_path, data), art, teacher_artifact(), student_artifact(), "test", 1)
    p0, p1 = torch.as_tensor(res["poses"][0]).double(), torch.as_tensor(res["poses"][1]).double()
    np.testing.assert_allclose(p1[:, :3], p0[:, :3] - rel[:3].double(), atol=1e-5)
    R_ref, R_rel = P.quat_to_matrix(p0[:, 3:]), P.quat_to_matrix(rel[3:].double())
    np.testing.assert_allclose(P.quat_to_matrix(p1[:, 3:]), R_ref @ R_rel.T, atol=1e-5)
    # and the relative pose of the result to the reference is the regressed one
    back = P.relative_pose(p1, p0)
    np.testing.assert_allclose(back[:, :3], rel[:3].double().expand_as(back[:, :3]), atol=1e-5)


@pytest.mark.parametrize("neighbours", ["student", "retrieval"])
def test_multi_scene_uses_the_predicted_scene(tmp_path, fake_outputs, neighbours):
    data = make_data(tmp_path / "data", scenes=("a", "b"), images=neighbours == "retrieval")
    wrong = np.array([0, 5, 41])  # frames whose scene the teacher misclassifies
    outs = make_outputs(data, 8, raw=True, multi_scene=True, wrong_scene=wrong)
    fake_outputs(outs)
    ctx = make_ctx(tmp_path, data)
    teacher = teacher_artifact(multi_scene=True, num_scenes=2)
    student = student_artifact(multi_scene=True, raw=True)
    res = stage.refine(ctx, oracle(neighbours), teacher, student if neighbours == "student" else None, "test", 1)
    pred = outs["test"]["scene_logp"].argmax(1)
    np.testing.assert_array_equal(res["scene_pred"], pred)
    assert (pred != outs["test"]["scene_id"]).sum() == len(wrong)
    np.testing.assert_array_equal(res["scene_id"], outs["test"]["scene_id"])  # ground truth for the tables
    if neighbours == "student":
        np.testing.assert_array_equal(student.model.seen_scenes[-1].numpy(), pred)
    pos, _ = P.pose_errors(torch.as_tensor(res["poses"][1]).double(), torch.as_tensor(res["pose_gt"]).double())
    assert float(pos.max()) < 1e-4


def test_retrieval_database_is_the_predicted_scene(tmp_path):
    db = torch.tensor([[0.0, 0, 0, 1, 0, 0, 0], [5.0, 0, 0, 1, 0, 0, 0]])
    db_scene = torch.tensor([0, 1])
    p = torch.tensor([[0.1, 0, 0, 1, 0, 0, 0], [0.2, 0, 0, 1, 0, 0, 0]])
    idx = stage._retrieve(p, db, db_scene, torch.tensor([0, 1]), 1.0)
    assert idx.tolist() == [0, 1]  # the second query is in scene 1 by prediction, however far
    assert stage._retrieve(p, db, db_scene, None, 1.0).tolist() == [0, 0]


# --------------------------------------------------------------------------- the RPR module
def test_rpr_shapes_and_config():
    rpr = TransformerRPR(latent_dim=48, d_model=32, layers=1, heads=2, ffn=64, head_hidden=64)
    x = torch.randn(5, 48)
    assert rpr(x, x, x, x).shape == (5, 7)
    paper = TransformerRPR()  # 2 layers, d 256, 4 heads, ffn 2048, final LayerNorm
    assert len(paper.encoder.layers) == 2 and isinstance(paper.encoder.norm, torch.nn.LayerNorm)
    layer = paper.encoder.layers[0]
    assert layer.self_attn.num_heads == 4 and layer.linear1.out_features == 2048
    assert paper.head_x.net[0].out_features == 1024 and paper.head_q.net[-1].out_features == 4


def test_plugins_register_both_refiners():
    from aprbench.harness.api.manager import get_registry

    reg = get_registry()
    assert reg.build("refiner", "pae-rpr", latent_dim=16, d_model=16, ffn=32, head_hidden=8).neighbours == "student"
    assert reg.build("refiner", "image-rpr", latent_dim=16, d_model=16, ffn=32, head_hidden=8).neighbours == "retrieval"


# --------------------------------------------------------------------------- training
def _sidecar(art: Artifact) -> dict:
    return json.loads(art.path.with_suffix(".json").read_text())


@pytest.mark.parametrize("name,pairs", [("pae-rpr", "both"), ("image-rpr", "nearest")])
def test_rpr_learns_on_small_data(tmp_path, fake_outputs, monkeypatch, name, pairs):
    data = make_data(tmp_path / "data", n_train=200, images=name == "image-rpr")
    outs = make_outputs(data, 32, noise_m=0.15, noise_deg=8)
    calls = fake_outputs(outs)
    ctx = make_ctx(tmp_path, data, refiner={**TINY_RPR, "pairs": pairs})
    teacher, student = teacher_artifact(32), student_artifact(32)
    art = stage.obtain_refiner(ctx, name, teacher, student)
    meta = _sidecar(art)
    assert meta["final"]["loss"] < meta["first"]["loss"]
    assert meta["final"]["deg"] < 0.8 * meta["first"]["deg"]  # relative-pose error falls
    assert meta["final"]["m"] < meta["first"]["m"]
    assert calls == ["train"]  # trained from the stored train split only
    std = art.model.latent_std  # inputs standardised with the training latents' statistics
    assert torch.allclose(std[0], torch.as_tensor(outs["train"]["latent_x"]).std(0), rtol=1e-4)
    assert art.upstream.get("student") == (student.fingerprint if name == "pae-rpr" else None)
    # a second call loads from the store without training
    monkeypatch.setattr(stage, "fit", lambda *a, **k: pytest.fail("retrained a stored refiner"))
    again = stage.obtain_refiner(ctx, name, teacher, student)
    assert again.fingerprint == art.fingerprint
    for a, b in zip(art.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)
    res = stage.refine(ctx, again, teacher, student, "test", 2)
    assert res["poses"].shape == (3, 40, 7) and np.isfinite(res["poses"]).all()


def test_virtual_spread_is_measured_from_the_teacher_per_scene(tmp_path, fake_outputs):
    """Virtual neighbours spread like the teacher's training error in each scene (metres outdoors, decimetres indoors)."""
    data = make_data(tmp_path / "data", n_train=60, scenes=("a", "b"))
    outs = make_outputs(data, 16, noise_m=0.2, noise_deg=6, multi_scene=True)
    train = outs["train"]
    in_b = train["scene_id"] == 1
    far = P.perturb_poses(torch.as_tensor(train["pose_gt"][in_b]).double(), 2.0, 3.0, generator=torch.Generator().manual_seed(1))
    train["pose_est"][in_b] = far.float().numpy()
    fake_outputs(outs)
    ctx = make_ctx(tmp_path, data, refiner={**TINY_RPR, "epochs": 1, "pairs": "virtual", "spread_scale": 1.0})
    art = stage.obtain_refiner(ctx, "pae-rpr", teacher_artifact(16, True, 2), student_artifact(16, True))
    std = _sidecar(art)["virtual_std"]
    assert std["a"]["m"] == pytest.approx(0.2, rel=0.3) and std["a"]["deg"] == pytest.approx(6, rel=0.3)
    assert std["b"]["m"] == pytest.approx(2.0, rel=0.3) and std["b"]["deg"] == pytest.approx(3, rel=0.3)


def test_evaluate_refiner_table(tmp_path, fake_outputs):
    data = make_data(tmp_path / "data", scenes=("a", "b"))
    fake_outputs(make_outputs(data, 8, raw=True, multi_scene=True))
    ctx = make_ctx(tmp_path, data)
    frame = stage.evaluate_refiner(ctx, oracle("student"), teacher_artifact(multi_scene=True, num_scenes=2),
                                   student_artifact(multi_scene=True, raw=True), "test", 2)
    assert list(frame["scene"]) == ["a", "a", "a", "b", "b", "b"]
    assert list(frame["iteration"]) == [0, 1, 2, 0, 1, 2]
    assert (frame.loc[frame["iteration"] > 0, "median_m"] < 1e-4).all()
    assert {"median_deg", "ms_per_frame", "stored_bytes"} <= set(frame.columns)


# --------------------------------------------------------------------------- stored bytes
def test_stored_bytes(tmp_path, fake_outputs):
    data = make_data(tmp_path / "data", images=True)
    outs = make_outputs(data, 8, raw=True)
    fake_outputs(outs)
    ctx = make_ctx(tmp_path, data)
    teacher, student = teacher_artifact(), student_artifact(raw=True)
    pae = stage.refine(ctx, oracle("student"), teacher, student, "test", 1)["stored_bytes"]
    assert pae == stage.module_bytes(student.model) + stage.module_bytes(oracle("student").model) == (3 + 5) * 4
    img = stage.refine(ctx, oracle("retrieval"), teacher, None, "test", 1)["stored_bytes"]
    files = sum((data.root / p).stat().st_size for p in data.split("train").labels["img_path"])
    n = len(data.split("train").labels)
    assert files > 0
    assert img == files + n * (8 + 8 + 7) * 4 + 5 * 4


# --------------------------------------------------------------------------- refusals
@pytest.fixture
def no_work(monkeypatch, fake_outputs):
    """Any access to teacher outputs or training fails the test."""
    monkeypatch.setattr(stage, "_outputs", lambda *a: pytest.fail("read teacher outputs before refusing"))
    monkeypatch.setattr(stage, "fit", lambda *a, **k: pytest.fail("trained before refusing"))


@pytest.mark.parametrize("case,match", [
    ("latent size", "latent size 16 but teacher"),
    ("multi-scene student", "is multi-scene but teacher"),
    ("single-scene student", "is single-scene but teacher"),
    ("no student", "give one"),
])
def test_refusals_before_any_work(tmp_path, no_work, case, match):
    data = make_data(tmp_path / "data")
    ctx = make_ctx(tmp_path, data, refiner=TINY_RPR)
    teacher = teacher_artifact(8, multi_scene=case == "single-scene student", num_scenes=2)
    student = {
        "latent size": student_artifact(16),
        "multi-scene student": student_artifact(8, multi_scene=True),
        "single-scene student": student_artifact(8, multi_scene=False),
        "no student": None,
    }[case]
    with pytest.raises(BenchError, match=match):
        stage.obtain_refiner(ctx, "pae-rpr", teacher, student)
    with pytest.raises(BenchError, match=match):
        stage.refine(ctx, oracle("student"), teacher, student, "test", 1)
    assert not (ctx.store.root / "artifacts").exists()


def test_image_rpr_ignores_the_student_and_refuses_virtual_pairs(tmp_path, no_work):
    data = make_data(tmp_path / "data")
    ctx = make_ctx(tmp_path, data, refiner={**TINY_RPR, "pairs": "virtual"})
    with pytest.raises(BenchError, match="virtual neighbours"):
        stage.obtain_refiner(ctx, "image-rpr", teacher_artifact(8), student_artifact(16))


@pytest.mark.parametrize("name", ["pae-rpr", "image-rpr"])
def test_finetune_trains_the_image_encoder_and_encodes_queries_once(tmp_path, fake_outputs, monkeypatch, name):
    from refiner_helpers import ConvTeacher

    data = make_data(tmp_path / "data", n_train=48, n_test=12, images=True)
    outs = make_outputs(data, 16)
    fake_outputs(outs)
    ctx = make_ctx(tmp_path, data, refiner={**TINY_RPR, "epochs": 2, "pairs": "nearest", "finetune": True})
    teacher = Artifact("teacher", "conv", "tc", {"image_size": 16}, ConvTeacher(16))
    before = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    art = stage.obtain_refiner(ctx, name, teacher, student_artifact(16))
    enc = art.model.image_encoder
    assert any(not torch.equal(before[k], v) for k, v in enc.state_dict().items())  # the copy was trained
    assert all(torch.equal(before[k], v) for k, v in teacher.model.state_dict().items())  # the teacher was not
    calls = []
    original = ConvTeacher.encode
    monkeypatch.setattr(ConvTeacher, "encode", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    res = stage.refine(ctx, art, teacher, student_artifact(16), "test", 3)
    # the 12 test frames in one batch, encoded once for all 3 iterations (image-rpr: plus its database once)
    assert len(calls) == (1 if name == "pae-rpr" else 2)
    assert res["poses"].shape == (4, 12, 7) and np.isfinite(res["poses"]).all()
    assert res["stored_bytes"] >= stage.module_bytes(enc)


def test_finetune_batches_encode_each_query_frame_once():
    """Fine-tuning batches hold each distinct query frame once, every pair points at its own frame, and
    a frame's pairs share a batch; the epoch still covers every pair exactly once."""
    images = torch.randint(0, 256, (10, 3, 4, 4), dtype=torch.uint8)
    frames = torch.arange(10).repeat_interleave(3)  # 3 pairs per frame (e.g. k=1 nearest + 2 virtual)
    rel = torch.randn(30, 7)

    def make(epoch):
        return {"images": frames, "scene": torch.zeros(30, dtype=torch.int64), "rel": rel}

    batches = list(stage.pair_batches(make, 6, seed=3, images=images, augment=False)(0))
    from aprbench.harness.data.images import normalize_images

    seen = []
    for b in batches:
        assert len(b["images"]) == 2  # 6 pairs of 2 frames: each frame gathered once
        for row, r in enumerate(b["rel"]):
            i = int(torch.nonzero((rel == r).all(1))[0])
            seen.append(i)
            torch.testing.assert_close(b["images"][b["image_rows"][row]], normalize_images(images[frames[i : i + 1]])[0])
    assert sorted(seen) == list(range(30))
    # two ranks take disjoint halves
    halves = [torch.cat([b["rel"] for b in stage.pair_batches(make, 6, seed=3, images=images, augment=False)(0, r, 2)])
              for r in (0, 1)]
    assert len(halves[0]) == len(halves[1]) == 15 - 15 % 3
    assert not (halves[0][:, None] == halves[1][None]).all(-1).any()
