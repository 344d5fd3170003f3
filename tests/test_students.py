"""Students (PAEs): shapes, distillation from stored teacher outputs, refusals, the store, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from aprbench.harness import poses as P
from aprbench.harness.errors import BenchError
from aprbench.harness.api.interfaces import Latents, PoseData, Student, Teacher
from aprbench.harness.api.manager import get_registry
from aprbench.harness.running.stages import student as stage
from aprbench.harness.api.recipes import Recipe
from aprbench.harness.running.stages.context import Artifact, Context, build_model
from aprbench.harness.running.stages.student import evaluate_student, obtain_student, student_outputs
from aprbench.harness.store.hdf5 import Store, fingerprint, write_h5
from refiner_helpers import make_labels

STUDENTS = ["pae", "pae-shallow", "pae-nope", "pae-shallow-nope"]


# =========================================================================== stand-ins
class HeadTeacher(Teacher):
    """A stand-in APR whose stored latents are a fixed function of a pose and whose linear heads invert it.

    ``features(p)``: ``latent_x = [t, tanh(t Wx)]``, ``latent_q = [q, tanh(q Wq)]`` (``(B, D)`` each; a
    multi-scene teacher adds ``0.5 * scene`` to the non-raw dimensions); ``decode`` reads ``t`` and ``q``
    back through ``x_reg`` / ``q_reg``.
    """

    def __init__(self, latent_dim: int = 16, multi_scene: bool = False, num_scenes: int = 1) -> None:
        super().__init__()
        self.latent_dim, self.multi_scene, self.num_scenes = latent_dim, multi_scene, num_scenes
        g = torch.Generator().manual_seed(7)
        self.register_buffer("wx", torch.randn(3, latent_dim - 3, generator=g))
        self.register_buffer("wq", torch.randn(4, latent_dim - 4, generator=g))
        self.x_reg, self.q_reg = nn.Linear(latent_dim, 3), nn.Linear(latent_dim, 4)
        with torch.no_grad():
            for layer, k in ((self.x_reg, 3), (self.q_reg, 4)):
                layer.weight.zero_()
                layer.weight[:, :k] = torch.eye(k)
                layer.bias.zero_()

    def features(self, poses: Tensor, scene: Tensor | None = None) -> tuple[Tensor, Tensor]:
        t, q = poses[:, :3].float(), poses[:, 3:].float()
        hx, hq = torch.tanh(t @ self.wx), torch.tanh(q @ self.wq)
        if self.multi_scene and scene is not None:
            hx, hq = hx + 0.5 * scene.float()[:, None], hq + 0.5 * scene.float()[:, None]
        return torch.cat([t, hx], 1), torch.cat([q, hq], 1)

    def encode(self, images: Tensor, scene: Tensor | None = None) -> Latents:
        raise AssertionError("the stand-in teacher's image encoder must never run")

    def decode(self, latent_x: Tensor, latent_q: Tensor) -> Tensor:
        return torch.cat([self.x_reg(latent_x), self.q_reg(latent_q)], dim=-1)

    def heads(self) -> list[nn.Module]:
        return [self.x_reg, self.q_reg]


def make_data(scenes: tuple[str, ...] = ("a",), n_train: int = 240, n_test: int = 60) -> PoseData:
    labels = make_labels(n_train=n_train, n_test=n_test, scenes=scenes)
    return PoseData("standin", __import__("pathlib").Path("/nonexistent"), labels, list(scenes))


def make_ctx(tmp_path, data: PoseData, profile: str = "quick", **student) -> Context:
    return Context(store=Store(tmp_path / "work"), registry=get_registry(), data=data, dataset="standin",
                   profile=profile, device=torch.device("cpu"), progress=False, overrides={"student": student})


def store_fake_outputs(ctx: Context, teacher: Artifact, noise_m: float = 0.3, noise_deg: float = 10.0,
                       wrong_scene_every: int = 0, train_noise: float = 0.2) -> dict[str, dict]:
    """Teacher outputs written where ``teacher_outputs`` reads them: estimate = truth + noise (scaled by
    ``train_noise`` on the training split: an APR fits its training frames better), latents of the
    estimate, so that the teacher's heads decode its latents to its estimate."""
    model: HeadTeacher = teacher.model
    g = torch.Generator().manual_seed(0)
    outs = {}
    for split in ("train", "test"):
        part = ctx.data.split(split)
        gt, sid = part.poses(), part.scene_ids()
        k = train_noise if split == "train" else 1.0
        noisy = P.perturb_poses(gt.double(), k * noise_m, k * noise_deg, generator=g).float()
        S = len(ctx.data.scenes)
        pred = sid.clone()
        if wrong_scene_every:
            pred[::wrong_scene_every] = (pred[::wrong_scene_every] + 1) % S
        with torch.no_grad():
            lx, lq = model.features(noisy, pred)
            est = model.decode(lx, lq)
        est = P.join_pose(est[:, :3], P.normalize_quat(est[:, 3:]))
        logp = torch.full((len(gt), S if model.multi_scene else 1), -10.0)
        logp[torch.arange(len(gt)), pred if model.multi_scene else 0] = 0.0
        outs[split] = {
            "pose_est": est.numpy(), "pose_gt": gt.numpy(), "latent_x": lx.numpy(), "latent_q": lq.numpy(),
            "scene_id": sid.numpy(), "scene_logp": logp.numpy(), "time_s": np.full(len(gt), 0.002),
            "img_path": part.labels["img_path"].astype(str).tolist(),
        }
        path = ctx.store.outputs_path(fingerprint(teacher.fingerprint, part.fingerprint()), split)
        write_h5(path, outs[split])
    return outs


def teacher_artifact(latent_dim: int = 16, multi_scene: bool = False, num_scenes: int = 1, fp: str = "t0",
                     config: dict | None = None) -> Artifact:
    return Artifact("teacher", "standin", fp, config or {"eval_batch_size": 64},
                    HeadTeacher(latent_dim, multi_scene, num_scenes).eval())


FAST = dict(epochs=2, batch_size=64, checkpoint_every=100, threads=1)


# =========================================================================== shapes
@pytest.mark.parametrize("name", STUDENTS)
@pytest.mark.parametrize("multi", [False, True])
def test_variant_input_sizes_and_layer_shapes(name, multi):
    model = get_registry().build("student", name, latent_dim=48, num_scenes=3, multi_scene=multi)
    assert isinstance(model, Student) and model.latent_dim == 48 and model.multi_scene == multi
    pe = "nope" not in name
    x_in, q_in = (39, 52) if pe else (3, 4)
    if multi:  # the scene index is always positionally encoded: 1 -> 13, appended to both inputs
        x_in, q_in = x_in + 13, q_in + 13
    hidden = [64] if "shallow" in name else [64, 128, 256]
    for enc, n_in in ((model.x_encoder, x_in), (model.q_encoder, q_in)):
        linears = [m for m in enc if isinstance(m, nn.Linear)]
        assert [(m.in_features, m.out_features) for m in linears] == list(zip([n_in, *hidden], [*hidden, 48]))
        assert [type(m) for m in enc] == [nn.Linear, *[nn.ReLU, nn.Linear] * len(hidden)]
    poses = P.join_pose(torch.randn(5, 3), P.random_quat(5, dtype=torch.float32))
    lx, lq = model(poses, torch.tensor([0, 1, 2, 0, 1]) if multi else None)
    assert lx.shape == lq.shape == (5, 48)


def test_positional_encoding_sizes_and_reference_layer_names():
    assert P.positional_encoding(torch.zeros(2, 3)).shape == (2, 39)
    assert P.positional_encoding(torch.zeros(2, 4)).shape == (2, 52)
    assert P.positional_encoding(torch.zeros(2, 1)).shape == (2, 13)
    reg = get_registry()
    deep = reg.build("student", "pae", latent_dim=256)
    # the reference's PoseEncoder state dict keys: Sequential indices of the linear layers
    assert sorted(deep.state_dict()) == sorted(f"{e}_encoder.{i}.{p}" for e in "xq" for i in (0, 2, 4, 6) for p in ("weight", "bias"))
    shallow = reg.build("student", "pae-shallow", latent_dim=256, num_scenes=7, multi_scene=True)
    assert sorted(shallow.state_dict()) == sorted(f"{e}_encoder.{i}.{p}" for e in "xq" for i in (0, 2) for p in ("weight", "bias"))
    assert shallow.x_encoder[0].weight.shape == (64, 52) and shallow.q_encoder[0].weight.shape == (64, 65)


def test_multi_scene_pae_needs_the_scene_and_uses_it():
    model = get_registry().build("student", "pae", latent_dim=8, num_scenes=2, multi_scene=True)
    poses = P.join_pose(torch.randn(3, 3), P.random_quat(3, dtype=torch.float32))
    with pytest.raises(BenchError, match="scene"):
        model(poses)
    a, _ = model(poses, torch.zeros(3, dtype=torch.long))
    b, _ = model(poses, torch.ones(3, dtype=torch.long))
    assert not torch.allclose(a, b)


# =========================================================================== distillation
def _sidecar(art: Artifact) -> dict:
    return json.loads(art.path.with_suffix(".json").read_text())


def test_pae_learns_a_teachers_latents_and_is_reused(tmp_path, monkeypatch):
    data = make_data(n_train=600, n_test=60)
    ctx = make_ctx(tmp_path, data, epochs=60, batch_size=128, lr=3e-3, schedule="cosine", gamma=0.05,
                   checkpoint_every=1000, threads=1)
    teacher = teacher_artifact()
    outs = store_fake_outputs(ctx, teacher, noise_m=0.1, noise_deg=3.0)
    recipe = ctx.recipe("student", "pae")
    untrained = Artifact("student", "pae", "u", recipe,
                         build_model(ctx.registry, recipe, latent_dim=teacher.model.latent_dim).eval())
    before = student_outputs(ctx, untrained, teacher, "test")
    art = obtain_student(ctx, "pae", teacher)
    after = student_outputs(ctx, art, teacher, "test")
    assert after["pose_est"].shape == (60, 7) and after["time_s"].shape == (60,)
    assert np.mean(after["latent_mse"]) < np.mean(before["latent_mse"]) / 10
    meta = _sidecar(art)
    assert meta["encode"] == "estimate" and meta["upstream"]["teacher"] == "t0" and meta["epochs"] == 60
    assert meta["final"]["mse"] < meta["first"]["mse"] / 20  # training-split latent MSE
    frame = evaluate_student(ctx, art, teacher, "test")
    row = frame.iloc[0]
    gt, est = outs["test"]["pose_gt"], outs["test"]["pose_est"]
    assert row.teacher_median_m == pytest.approx(float(np.median(np.linalg.norm(est[:, :3] - gt[:, :3], axis=1))), rel=1e-4)
    # the student's decoded poses, scored against ground truth, are about as good as the teacher's own
    assert row.student_median_m == pytest.approx(row.teacher_median_m, rel=0.2)
    assert row.student_median_deg == pytest.approx(row.teacher_median_deg, rel=0.2)
    assert row.vs_teacher_m < 0.8 * row.teacher_median_m and row.vs_teacher_deg < 0.8 * row.teacher_median_deg

    # stored: a second obtain_student loads the weights and trains nothing
    monkeypatch.setattr(stage, "fit", lambda *a, **k: pytest.fail("retrained a stored student"))
    again = obtain_student(ctx, "pae", teacher)
    assert again.fingerprint == art.fingerprint and again.path == art.path
    for k, v in art.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k])
    # a different teacher is a different student (trained anew)
    other = teacher_artifact(fp="t1")
    store_fake_outputs(ctx, other)
    monkeypatch.setattr(stage, "fit", lambda *a, **k: [])
    assert obtain_student(ctx, "pae", other).fingerprint != art.fingerprint


def test_encode_estimate_and_ground_truth_differ(tmp_path, monkeypatch):
    data = make_data(n_train=64, n_test=16)
    ctx = make_ctx(tmp_path, data, **FAST)
    teacher = teacher_artifact()
    outs = store_fake_outputs(ctx, teacher)
    seen = []
    real = stage.StudentTask.forward

    def spy(self, batch):
        seen.append(batch[0].clone())
        return real(self, batch)

    monkeypatch.setattr(stage.StudentTask, "forward", spy)
    est = obtain_student(ctx, "pae-shallow", teacher, encode="estimate")
    n_est = len(seen)
    gt = obtain_student(ctx, "pae-shallow", teacher, encode="ground_truth")
    assert est.fingerprint != gt.fingerprint and est.path != gt.path
    assert est.options["encode"] == "estimate" and gt.options["encode"] == "ground_truth"

    def rows(batches):  # the set of poses the student saw, sorted
        x = torch.cat(batches).numpy()
        return x[np.lexsort(x.T[::-1])]

    def expect(key):
        x = outs["train"][key]
        return x[np.lexsort(x.T[::-1])]

    np.testing.assert_allclose(rows(seen[: n_est // 2]), expect("pose_est"), atol=1e-6)
    np.testing.assert_allclose(rows(seen[n_est : n_est + n_est // 2]), expect("pose_gt"), atol=1e-6)
    for art in (est, gt):
        frame = evaluate_student(ctx, art, teacher)
        assert np.isfinite(frame[["student_median_m", "student_median_deg", "latent_mse"]].to_numpy()).all()
    with pytest.raises(BenchError, match="encode"):
        obtain_student(ctx, "pae", teacher, encode="label")


def test_multi_scene_student_encodes_the_scene_its_teacher_used(tmp_path, monkeypatch):
    data = make_data(scenes=("a", "b"), n_train=48, n_test=16)
    ctx = make_ctx(tmp_path, data, **{**FAST, "batch_size": 32})
    teacher = teacher_artifact(multi_scene=True, num_scenes=2)
    outs = store_fake_outputs(ctx, teacher, wrong_scene_every=4)
    seen = []
    real = stage.StudentTask.forward
    monkeypatch.setattr(stage.StudentTask, "forward", lambda self, b: (seen.append(b[1].clone()), real(self, b))[1])
    art = obtain_student(ctx, "pae", teacher, encode="estimate")
    assert art.model.multi_scene and art.model.x_encoder[0].in_features == 39 + 13
    pred = outs["train"]["scene_logp"].argmax(1)
    assert sorted(torch.cat(seen[:3]).tolist()) == sorted(pred.tolist())  # epoch 1: every frame once
    res = student_outputs(ctx, art, teacher, "test")
    np.testing.assert_array_equal(res["scene_pred"], outs["test"]["scene_logp"].argmax(1))
    np.testing.assert_array_equal(res["scene_id"], outs["test"]["scene_id"])
    assert set(evaluate_student(ctx, art, teacher)["scene"]) == {"a", "b"}


# =========================================================================== refusals
@pytest.fixture
def no_work(monkeypatch):
    import aprbench.harness.running.stages.teacher as tstage

    monkeypatch.setattr(tstage, "teacher_outputs", lambda *a, **k: pytest.fail("read teacher outputs before refusing"))
    monkeypatch.setattr(stage, "fit", lambda *a, **k: pytest.fail("trained before refusing"))


def test_latent_size_mismatch_refused_before_training(tmp_path, no_work):
    ctx = make_ctx(tmp_path, make_data(n_train=8, n_test=4), latent_dim=24, **FAST)
    with pytest.raises(BenchError) as info:
        obtain_student(ctx, "pae", teacher_artifact(latent_dim=16))
    assert "24" in str(info.value) and "16" in str(info.value)
    assert not (tmp_path / "work" / "artifacts").exists()


def test_single_scene_student_under_multi_scene_teacher_refused(tmp_path, no_work):
    ctx = make_ctx(tmp_path, make_data(scenes=("a", "b"), n_train=8, n_test=4), multi_scene=False, **FAST)
    with pytest.raises(BenchError, match="single-scene.*multi-scene"):
        obtain_student(ctx, "pae", teacher_artifact(multi_scene=True, num_scenes=2))


def test_paper_recipe_follows_the_teacher_and_set_wins(tmp_path):
    data = make_data(n_train=8, n_test=4)
    teacher = teacher_artifact(config={"epochs": 30, "batch_size": 8, "lr": 1e-4, "step_size": 10, "gamma": 0.1,
                                       "sx": 0.0, "sq": -3.0, "image_size": 224})
    def student(ctx, t):
        return ctx.recipe("student", "pae", teacher=t.recipe).values()

    recipe = student(make_ctx(tmp_path, data, profile="paper"), teacher)
    assert (recipe["epochs"], recipe["batch_size"], recipe["lr"], recipe["step_size"], recipe["sq"]) == (30, 8, 1e-4, 10, -3.0)
    assert recipe["schedule"] == "step" and "image_size" not in recipe
    recipe = student(make_ctx(tmp_path, data, profile="paper"), teacher_artifact(config={}))
    assert (recipe["epochs"], recipe["batch_size"], recipe["lr"], recipe["sx"], recipe["sq"]) == (300, 32, 1e-3, -3.0, -6.5)
    recipe = student(make_ctx(tmp_path, data, profile="paper", epochs=5), teacher)
    assert recipe["epochs"] == 5
    # the pose term's weight may depend on what the student encodes
    table = Recipe.of("student", "pae", {"pose_weight": {"estimate": 0.0, "ground_truth": 1.0}})
    assert stage.pose_weight(table, "ground_truth") == 1.0
    assert stage.pose_weight(Recipe.of("student", "pae", {"pose_weight": 0.5}), "estimate") == 0.5
    with pytest.raises(BenchError, match="ground_truth"):
        stage.pose_weight(Recipe.of("student", "pae", {"pose_weight": {"estimate": 0.0}}), "ground_truth")


# =========================================================================== no image, real teacher
@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    """A tiny real PoseNet trained on tiny images, with its outputs on both splits stored."""
    from aprbench.harness.running.stages.teacher import obtain_teacher, teacher_outputs
    from teacher_helpers import TINY_POSENET, make_tiny_data

    root = tmp_path_factory.mktemp("tiny-student")
    data = make_tiny_data(root / "data", n_train=64, n_test=16, size=32)
    ctx = Context(store=Store(root / "work"), registry=get_registry(), data=data, dataset="tiny", profile="quick",
                  device=torch.device("cpu"), progress=False,
                  overrides={"teacher": {**TINY_POSENET, "epochs": 1}, "student": dict(FAST)})
    teacher = obtain_teacher(ctx, "posenet")
    for split in ("train", "test"):
        teacher_outputs(ctx, teacher, split)
    return ctx, teacher


def test_training_never_loads_an_image(tiny_teacher, monkeypatch):
    import PIL.Image

    import aprbench.harness.data.images as images_module

    ctx, teacher = tiny_teacher

    def boom(*a, **k):
        raise AssertionError("an image was loaded while training a student")

    monkeypatch.setattr(images_module, "load_images", boom)
    monkeypatch.setattr(images_module, "_load_one", boom)
    monkeypatch.setattr(PIL.Image, "open", boom)
    monkeypatch.setattr(teacher.model, "encode", boom)  # the image encoder never runs either
    teacher.model.zero_grad(set_to_none=True)
    for encode in ("estimate", "ground_truth"):
        art = obtain_student(ctx, "pae", teacher, encode=encode)
        assert art.model.latent_dim == teacher.model.latent_dim == 256
        assert _sidecar(art)["train_frames"] == 64
        frame = evaluate_student(ctx, art, teacher)
        assert len(frame) == 1 and np.isfinite(frame["latent_mse"]).all()
    # the teacher was frozen (no gradient reached it) and its flags restored
    assert all(p.requires_grad for p in teacher.model.parameters())
    assert all(p.grad is None for p in teacher.model.parameters())


# =========================================================================== CLI
def test_cli_train_and_eval_student(tmp_path, run_bench):
    from aprbench.harness.data.labels import write_labels
    from aprbench.harness.running.stages.context import build_named
    from teacher_helpers import make_tiny_data

    data = make_tiny_data(tmp_path / "data", n_train=48, n_test=16, size=32)
    write_labels(data.labels, tmp_path / "data" / "labels.csv")
    # given teacher weights (random init of the quick recipe's model): no teacher training in the test
    torch.manual_seed(0)
    model = build_named(get_registry(), "teacher", "posenet-mobilenet", "labels", "quick", num_scenes=1)
    ckpt = tmp_path / "teacher.pth"
    torch.save(model.state_dict(), ckpt)
    common = ["--workdir", tmp_path / "work", "--dataset", f"labels:root={tmp_path / 'data'},labels={tmp_path / 'data' / 'labels.csv'}",
              "--teacher", f"posenet-mobilenet={ckpt}", "--set", "epochs=3", "--set", "batch_size=16", "--no-progress"]
    res = run_bench("train", "student", "pae-shallow", *common)
    assert res.returncode == 0, res.stderr
    assert "student_median_m" in res.stdout and "teacher_median_m" in res.stdout and "| a " in res.stdout
    assert len(list((tmp_path / "work" / "artifacts" / "student").glob("pae-shallow-*/weights.pth"))) == 1
    res = run_bench("eval", "student", "pae-shallow", *common)
    assert res.returncode == 0, res.stderr
    assert "latent_mse" in res.stdout and "| a " in res.stdout
