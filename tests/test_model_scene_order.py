"""A multi-scene model given as weights of more scenes than the data (a 7Scenes checkpoint on one scene's label
file): students, refiners and decoders give its PAE and encoder the scene index in the model's own order
(office: 3 in the reference's 7Scenes order, 0 in the label file), in training and at test time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aprbench.harness.api.compat import to_model_scenes
from aprbench.harness.running.stages import refiner as stage
from aprbench.harness.running.stages.student import student_inputs
from refiner_helpers import TINY_RPR, make_ctx, make_data, make_outputs, student_artifact, teacher_artifact

OFFICE = 3  # chess, fire, heads, office, pumpkin, redkitchen, stairs


def seven_scene_outputs(data, latent_dim: int = 8) -> dict[str, dict]:
    """Stored outputs of a 7-scene teacher that predicts office for every frame (7 columns of log-probabilities)."""
    outs = make_outputs(data, latent_dim, raw=True, multi_scene=True)
    for out in outs.values():
        logp = np.full((len(out["pose_gt"]), 7), -10.0, dtype=np.float32)
        logp[:, OFFICE] = 0.0
        out["scene_logp"] = logp
    return outs


def test_dataset_scene_ids_in_the_model_order():
    seven = teacher_artifact(multi_scene=True, num_scenes=7).model
    ids = np.array([0, 1, 1, 0])
    assert to_model_scenes(ids, ["fire", "office"], seven).tolist() == [1, 3, 3, 1]
    assert to_model_scenes(ids, ["a", "b"], seven).tolist() == ids.tolist()  # an order it cannot know: unchanged
    two = teacher_artifact(multi_scene=True, num_scenes=2).model
    assert to_model_scenes(ids, ["office", "fire"], two).tolist() == ids.tolist()  # as many scenes: the data's order
    assert to_model_scenes(ids, ["fire", "office"], teacher_artifact().model).tolist() == ids.tolist()  # single-scene
    four = teacher_artifact(multi_scene=True, num_scenes=4).model
    assert to_model_scenes([0], ["ShopFacade"], four).tolist() == [2]  # Cambridge (the reference's four)


def test_student_encodes_the_label_scene_in_the_model_order(tmp_path):
    data = make_data(tmp_path / "data", scenes=("office",), n_train=6, n_test=2)
    out = seven_scene_outputs(data)["train"]
    teacher = teacher_artifact(multi_scene=True, num_scenes=7).model
    _, scenes = student_inputs(out, teacher, "ground_truth", scenes_names=data.scenes)
    assert scenes.tolist() == [OFFICE] * 6  # not the label file's 0
    _, scenes = student_inputs(out, teacher, "estimate", scenes_names=data.scenes)
    assert scenes.tolist() == [OFFICE] * 6  # the prediction, already in the model's order


@pytest.mark.parametrize("name", ["pae-rpr", "pae-knn"])
def test_refiner_trains_and_refines_with_the_model_scene(tmp_path, monkeypatch, name):
    data = make_data(tmp_path / "data", scenes=("office",), n_train=24, n_test=6)
    outs = seven_scene_outputs(data)
    monkeypatch.setattr(stage, "_outputs", lambda ctx, teacher, split: outs[split])
    ctx = make_ctx(tmp_path, data, refiner={**TINY_RPR, "epochs": 1, "pairs": "both"} if name == "pae-rpr" else {})
    teacher = teacher_artifact(multi_scene=True, num_scenes=7)
    student = student_artifact(multi_scene=True, raw=True)
    art = stage.obtain_refiner(ctx, name, teacher, student)
    seen = student.model.seen_scenes
    assert seen and all(s.unique().tolist() == [OFFICE] for s in seen)  # nearest + virtual pairs / the index
    if name == "pae-knn":
        assert art.model.index_scene.unique().tolist() == [OFFICE]
    seen.clear()
    res = stage.refine(ctx, art, teacher, student, "test", 1)
    assert res["scene_pred"].tolist() == [OFFICE] * 6 and res["scene_id"].tolist() == [0] * 6
    if name == "pae-rpr":
        assert seen and all(s.unique().tolist() == [OFFICE] for s in seen)
    assert np.isfinite(res["poses"]).all()


def test_retrieval_database_in_the_model_order(tmp_path, monkeypatch):
    """image-rpr: the training frames' scenes are compared with the predicted scene (the model's order)."""
    data = make_data(tmp_path / "data", scenes=("fire", "office"), n_train=8, n_test=2, images=True)
    outs = seven_scene_outputs(data)
    monkeypatch.setattr(stage, "_outputs", lambda ctx, teacher, split: outs[split])
    ctx = make_ctx(tmp_path, data)
    teacher = teacher_artifact(multi_scene=True, num_scenes=7)
    calls = []
    original = stage._retrieve

    def retrieve(p, db_pose, db_scene, scene, ow):
        idx = original(p, db_pose, db_scene, scene, ow)
        calls.append(db_scene[idx])
        return idx

    monkeypatch.setattr(stage, "_retrieve", retrieve)
    from aprbench.harness.running.stages.context import Artifact
    from refiner_helpers import OracleRefiner

    art = Artifact("refiner", "oracle", "o", ctx.recipe("refiner", "image-rpr"), OracleRefiner(8, "retrieval"))
    res = stage.refine(ctx, art, teacher, None, "test", 1)
    # every test frame (fire's too) is predicted office: its neighbour is one of office's training frames
    assert calls and calls[-1].tolist() == [OFFICE] * 4
    assert np.isfinite(res["poses"]).all()


def test_decoder_latents_in_the_model_order(tmp_path):
    """A decoder trains on the student's latents of the ground-truth poses: office's PAE input is 3."""
    from aprbench.harness.running.stages.context import Artifact
    from aprbench.harness.running.stages.decoder import pose_latents
    from aprbench.plugins.students.pae import PAE

    data = make_data(tmp_path / "data", scenes=("office",), n_train=5, n_test=1).split("train")
    torch.manual_seed(0)
    pae = PAE(latent_dim=8, num_scenes=7, multi_scene=True).eval()
    lx, lq = pose_latents(Artifact("student", "pae", "p", {}, pae), data, torch.device("cpu"))
    with torch.no_grad():
        ex, eq = pae(data.poses(), torch.full((5,), OFFICE))
        wrong, _ = pae(data.poses(), torch.zeros(5, dtype=torch.int64))
    assert torch.equal(lx, ex) and torch.equal(lq, eq) and not torch.allclose(lx, wrong)
