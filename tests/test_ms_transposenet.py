"""``ms-transposenet``: one pose head pair per scene, chosen by the given (training) or classified (test) scene."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from aprbench.harness.api import recipes as R
from aprbench.harness.errors import BenchError
from aprbench.harness.api.interfaces import Latents, Teacher, decode_accepts_scene, decode_poses
from aprbench.harness.api.manager import get_registry


def build(name: str = "ms-transposenet", scenes: int = 2):
    recipe = R.resolve(get_registry(), "teacher", name, "synthetic", "quick")
    return get_registry().build("teacher", name, num_scenes=scenes, **recipe.model)


def test_registered_with_per_scene_heads_and_the_mstransformer_recipes():
    model = build()
    assert model.per_scene_heads and len(model.regressor_head_t) == 2 and len(model.regressor_head_rot) == 2
    assert not build("mstransformer").per_scene_heads
    assert decode_accepts_scene(model)
    with pytest.raises(BenchError, match="one pose head per scene"):
        model.decode(torch.zeros(1, model.latent_dim), torch.zeros(1, model.latent_dim))
    with pytest.raises(BenchError, match="indices in"):
        model.decode(torch.zeros(1, model.latent_dim), torch.zeros(1, model.latent_dim), torch.tensor([2]))


def test_decode_uses_each_rows_scene_head():
    torch.manual_seed(0)
    model = build(scenes=3).eval()
    lx, lq = torch.randn(5, model.latent_dim), torch.randn(5, model.latent_dim)
    scene = torch.tensor([1, 0, 2, 1, 0])
    got = model.decode(lx, lq, scene)
    for i, k in enumerate(scene.tolist()):  # independent: row by row through head k
        want = torch.cat([model.regressor_head_t[k](lx[i:i + 1]), model.regressor_head_rot[k](lq[i:i + 1])], 1)
        torch.testing.assert_close(got[i:i + 1], want, atol=1e-6, rtol=0)


def test_per_scene_heads_learn_what_shared_heads_cannot():
    """The same latent must decode to a different pose in each scene: only per-scene heads fit both."""
    torch.manual_seed(0)
    targets = torch.tensor([[1.0, 2.0, 3.0, 1.0, 0.0, 0.0, 0.0], [-4.0, 0.5, 1.0, 0.0, 1.0, 0.0, 0.0]])
    scene = torch.tensor([0, 1] * 8)
    errors = {}
    for name in ("ms-transposenet", "mstransformer"):
        model = build(name)
        heads = [p for h in model.heads() for p in h.parameters()]
        opt = torch.optim.Adam(heads, lr=1e-2)
        lx, lq = torch.ones(16, model.latent_dim), torch.ones(16, model.latent_dim)
        for _ in range(150):
            loss = (decode_poses(model, lx, lq, scene) - targets[scene]).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        errors[name] = float((decode_poses(model, lx, lq, scene) - targets[scene]).abs().mean().detach())
    assert errors["ms-transposenet"] < 0.05 and errors["mstransformer"] > 0.5


class OldStyleTeacher(Teacher):
    """A third-party teacher written before ``decode`` took a scene."""

    multi_scene, num_scenes, latent_dim = True, 2, 4

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 7)

    def encode(self, images: Tensor, scene: Tensor | None = None) -> Latents:
        x = images.mean(dim=(2, 3)).repeat(1, 2)[:, :4]
        return Latents(x, x, torch.log_softmax(x[:, :2], dim=1))

    def decode(self, latent_x: Tensor, latent_q: Tensor) -> Tensor:
        return self.head(latent_x + latent_q)


def test_a_decode_without_scene_still_works():
    t = OldStyleTeacher()
    assert not decode_accepts_scene(t)
    x = torch.randn(3, 3, 8, 8)
    pose, lat = t(x, torch.tensor([0, 1, 0]))
    torch.testing.assert_close(pose, t.head(lat.x + lat.q))
    torch.testing.assert_close(decode_poses(t, lat.x, lat.q, torch.tensor([1, 1, 1])), pose)


def test_trains_end_to_end_with_the_references_preprocessing(tmp_path, monkeypatch):
    """The teacher stage with per-scene heads and Resize + RandomCrop + ColorJitter: every scene's head trains,
    stored outputs are the forward pass on Resize + CenterCrop images through the classified scene's head."""
    import numpy as np

    from aprbench.harness.data.images import Preprocess, normalize_images
    from aprbench.harness.running.stages import teacher as stage
    from aprbench.harness.running.stages.teacher import obtain_teacher, teacher_outputs
    from teacher_helpers import TINY_MST, make_ctx, make_tiny_data

    data = make_tiny_data(tmp_path / "data", n_train=64, n_test=16, scenes=("a", "b"))
    ctx = make_ctx(tmp_path, data, **{**TINY_MST, "epochs": 1, "augment": True, "resize": 40, "train_crop": "random",
                                      "jitter": [0.5, 0.5, 0.5, 0.2], "init_bias": False})
    starts = []  # the teacher's weights when training starts

    def spy(task, *args, **kwargs):
        starts.append({k: v.clone() for k, v in task.teacher.state_dict().items()})
        return real_fit(task, *args, **kwargs)

    real_fit = stage.fit
    monkeypatch.setattr(stage, "fit", spy)
    art = obtain_teacher(ctx, "ms-transposenet")
    model = art.model.eval()
    assert model.per_scene_heads and art.recipe.task.resize == 40 and len(starts) == 1
    for k in ("regressor_head_t.0.fc_o.weight", "regressor_head_t.1.fc_o.weight", "regressor_head_rot.1.fc_h.weight"):
        assert not torch.equal(model.state_dict()[k], starts[0][k]), k
    out = teacher_outputs(ctx, art, "test")
    images = Preprocess.of(art.recipe.task).test_images(ctx.data.split("test"), ctx.store)
    assert images.shape[-2:] == (32, 32)
    with torch.no_grad():
        pose, lat = model(normalize_images(images))
    np.testing.assert_allclose(out["latent_x"], lat.x.numpy(), atol=1e-5)
    est = torch.cat([pose[:, :3], torch.nn.functional.normalize(pose[:, 3:], dim=1)], 1)
    np.testing.assert_allclose(out["pose_est"], est.numpy(), atol=1e-5)
