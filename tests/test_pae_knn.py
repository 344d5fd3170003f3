"""``pae-knn``: test-time position refinement from PAE-encoded training poses.

Leak-freedom (test poses far from every training pose; refined positions stay convex combinations of training
positions), the closed form against the optimised weights in a known case, the batched fit against a per-query
loop written here, the stage (index stored once, bytes), the matrix and the CLI end to end.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aprbench.harness import poses as P
from aprbench.harness.errors import BenchError
from aprbench.harness.api.interfaces import PoseData, PoseIndexRefiner
from aprbench.harness.running.stages import refiner as stage
from aprbench.plugins.refiners import pae_knn as K
from refiner_helpers import (
    labels_dataset_with_teacher, make_ctx, make_data, make_outputs, one_thread, student_artifact, teacher_artifact,
)

single_thread = pytest.fixture(autouse=True)(one_thread)


@pytest.fixture
def fake_outputs(monkeypatch):
    """``install(outs)``: the refiner stage reads ``outs[split]`` as the teacher's stored outputs."""

    def install(outs):
        monkeypatch.setattr(stage, "_outputs", lambda ctx, teacher, split: outs[split])

    return install


def far_test_data(root, shift: float = 50.0) -> PoseData:
    """Training frames on a 2 m box; every test frame moved ``shift`` metres away (x and y)."""
    data = make_data(root, n_train=60, n_test=20)
    test = data.labels["split"] == "test"
    data.labels.loc[test, "t1"] += shift
    data.labels.loc[test, "t2"] -= shift
    return data


# --------------------------------------------------------------------------- leak-free by construction
@pytest.mark.parametrize("steps", [0, 3])
def test_no_test_pose_can_be_selected(tmp_path, fake_outputs, steps):
    data = far_test_data(tmp_path / "data")
    outs = make_outputs(data, 8, noise_m=0.3, noise_deg=5)
    fake_outputs(outs)
    ctx = make_ctx(tmp_path, data, refiner={"steps": steps, "refine_orientation": True})
    student = student_artifact()
    ref = stage.obtain_refiner(ctx, "pae-knn", teacher_artifact(), student)
    model = ref.model
    assert isinstance(model, PoseIndexRefiner) and model.neighbours == "training-poses"
    train, test = data.split("train").poses(), data.split("test").poses()
    # the index is exactly the training split's ground truth
    torch.testing.assert_close(model.index_pose[:, :3], train[:, :3])
    assert len(model.index_pose) == len(train)
    res = stage.refine(ctx, ref, teacher_artifact(), student, "test", iterations=2)
    assert res["poses"].shape == (3, len(test), 7)
    lo, hi = train[:, :3].min(0).values.numpy(), train[:, :3].max(0).values.numpy()
    for it in (1, 2):
        t = res["poses"][it][:, :3]
        assert np.all(t >= lo - 1e-5) and np.all(t <= hi + 1e-5)  # inside the training positions' box
        assert float(torch.cdist(torch.as_tensor(t), test[:, :3]).min()) > 40  # nowhere near a test pose
    idx, w = model.last_neighbours, model.last_weights
    assert idx.shape == (len(test), 3) and int(idx.min()) >= 0 and int(idx.max()) < len(train)
    assert float(w.min()) >= 0 and torch.allclose(w.sum(1), torch.ones(len(test)), atol=1e-6)
    # the last iteration's positions are these convex combinations of training positions
    np.testing.assert_allclose(res["poses"][2][:, :3], torch.einsum("bk,bkc->bc", w, train[idx, :3]).numpy(), atol=1e-5)


def test_neighbours_are_the_nearest_training_poses_of_the_predicted_scene():
    g = torch.Generator().manual_seed(0)
    index = P.perturb_poses(torch.tensor([[0.0, 0, 0, 1, 0, 0, 0]]).repeat(40, 1).double(), 1.0, 30.0, generator=g).float()
    scene = torch.arange(40) % 2
    query = P.perturb_poses(index[:10].double(), 0.2, 5.0, generator=g).float()
    qscene = torch.tensor([0, 1] * 5)
    idx, valid = K.knn_indices(query, index, scene, qscene, 3, 0.5)
    assert bool(valid.all()) and bool((scene[idx] == qscene[:, None]).all())
    for b in range(10):  # brute force, per query (independent formula)
        cand = torch.nonzero(scene == qscene[b]).squeeze(1)
        ang = 2 * torch.acos((P.normalize_quat(index[cand, 3:].double()) @ P.normalize_quat(query[b, 3:].double())).abs().clamp(0, 1))
        d = ((index[cand, :3] - query[b, :3]).double().pow(2).sum(1) + (0.5 * ang) ** 2).sqrt()
        assert idx[b].tolist() == cand[torch.argsort(d)[:3]].tolist()
    one = K.knn_indices(query, index[:2], scene[:2], torch.zeros(10, dtype=torch.int64), 3, 1.0)
    assert one[0].shape == (10, 2)  # never more neighbours than the index holds
    few = K.knn_indices(query, index[:3], torch.tensor([0, 0, 1]), torch.zeros(10, dtype=torch.int64), 3, 1.0)
    assert few[1].sum(1).tolist() == [2] * 10  # the scene holds two: the third is marked invalid
    w = K.fit_weights(torch.randn(10, 3, 4), torch.randn(10, 4), few[1], 0.1, 3, 0.01, 0.01)
    assert float(w[~few[1]].abs().max()) == 0.0 and torch.allclose(w.sum(1), torch.ones(10))


# --------------------------------------------------------------------------- the weights
@pytest.mark.parametrize("scorer", ["mlp", "logits"])
def test_closed_form_and_optimised_concentrate_on_an_exact_encoding(scorer):
    g = torch.Generator().manual_seed(1)
    B, k, D = 6, 3, 16
    neigh = torch.randn(B, k, D, generator=g)
    j = torch.arange(B) % k
    query = neigh[torch.arange(B), j]  # one neighbour's encoding equals the query latent
    valid = torch.ones(B, k, dtype=torch.bool)
    pos = torch.randn(B, k, 7, generator=g)
    est = torch.cat([torch.zeros(B, 3), torch.tensor([[1.0, 0, 0, 0]]).repeat(B, 1)], 1)
    closed = K.fit_weights(neigh, query, valid, temperature=0.01, steps=0, lr=0.0, weight_decay=0.0)
    fitted = K.fit_weights(neigh, query, valid, temperature=100.0, steps=300, lr=0.05, weight_decay=0.0,
                           scorer=scorer, hidden=8)
    start = K.fit_weights(neigh, query, valid, temperature=100.0, steps=0, lr=0.05, weight_decay=0.0)
    target = torch.nn.functional.one_hot(j, k).float()
    assert float((start - 1 / k).abs().max()) < 0.01  # a hot temperature starts uniform
    assert float((closed - target).abs().max()) < 1e-6
    assert float((fitted - target).abs().max()) < 0.05
    t_closed = K.combine(closed, pos, est, False)[:, :3]
    t_fitted = K.combine(fitted, pos, est, False)[:, :3]
    torch.testing.assert_close(t_closed, pos[torch.arange(B), j, :3], atol=1e-5, rtol=0)
    assert float((t_fitted - pos[torch.arange(B), j, :3]).norm(dim=1).max()) < 0.15


def reference_weights(neigh, query, temperature, steps, lr, wd, scorer, hidden, seed):
    """One query at a time, with its own AdamW: the formula written out with plain matrix products."""
    k, D = neigh.shape[1:]
    w1_0 = (torch.randn(hidden, D, generator=torch.Generator().manual_seed(seed)) / D**0.5).to(neigh.dtype)
    out = []
    for b in range(len(neigh)):
        z, q = neigh[b], query[b]  # (k, D), (D,)
        feats = z - q
        base = -(feats**2).mean(1).sqrt() / temperature
        if scorer == "mlp":
            params = [w1_0.clone().requires_grad_(), torch.zeros(hidden, dtype=z.dtype, requires_grad=True),
                      torch.zeros(hidden, dtype=z.dtype, requires_grad=True)]

            def logits():
                return base + torch.relu(feats @ params[0].T + params[1]) @ params[2]
        else:
            params = [torch.zeros(k, dtype=z.dtype, requires_grad=True)]

            def logits():
                return base + params[0]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=wd)
        for _ in range(steps):
            opt.zero_grad()
            loss = ((torch.softmax(logits(), 0) @ z - q) ** 2).mean()
            loss.backward()
            opt.step()
        out.append(torch.softmax(logits(), 0).detach())
    return torch.stack(out)


@pytest.mark.parametrize("scorer", ["mlp", "logits"])
def test_batched_fit_equals_a_per_query_loop(scorer):
    """In float64: Adam normalises tiny gradients to full steps, so float32 rounding could flip one."""
    g = torch.Generator().manual_seed(2)
    B, k, D = 9, 3, 12
    neigh = torch.randn(B, k, D, generator=g, dtype=torch.float64)
    query = neigh.mean(1) + 0.3 * torch.randn(B, D, generator=g, dtype=torch.float64)
    valid = torch.ones(B, k, dtype=torch.bool)
    for steps, lr in ((3, 0.01), (20, 0.1)):
        got = K.fit_weights(neigh, query, valid, 0.5, steps, lr, 0.01, scorer=scorer, hidden=5, seed=3)
        want = reference_weights(neigh, query, 0.5, steps, lr, 0.01, scorer, 5, 3)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        if steps == 20:
            assert float((got - reference_weights(neigh, query, 0.5, 0, lr, 0.01, scorer, 5, 3)).abs().max()) > 1e-3  # it moved


def test_refine_batch_is_independent_of_chunking_and_orientation_is_a_weighted_mean():
    data = make_data(None, n_train=50, n_test=30)
    student = student_artifact().model
    models = []
    for chunk in (7, 2048):
        m = K.factory(8)
        m.configure({"chunk": chunk, "refine_orientation": True, "temperature": 0.3})
        m.build_index(data.split("train").poses(), data.split("train").scene_ids(), student)
        models.append(m)
    test = data.split("test").poses()
    est = P.perturb_poses(test.double(), 0.3, 10.0, generator=torch.Generator().manual_seed(0)).float()
    lx, lq = student(test)
    a, b = (m.refine_batch(est, lx, lq, None) for m in models)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    m = models[1]
    qn = m.index_pose[m.last_neighbours, 3:].double()  # (B, k, 4)
    qn = qn * torch.sign((qn * est[:, None, 3:].double()).sum(-1, keepdim=True))
    mean = (m.last_weights.double()[..., None] * qn).sum(1)
    torch.testing.assert_close(b[:, 3:].double(), mean / mean.norm(dim=1, keepdim=True), atol=1e-5, rtol=0)
    m.configure({"refine_orientation": False})
    torch.testing.assert_close(m.refine_batch(est, lx, lq, None)[:, 3:], P.normalize_quat(est[:, 3:]))


def test_configure_refuses_bad_values():
    m = K.factory(8)
    for bad in ({"k": 0}, {"steps": -1}, {"temperature": 0}, {"scorer": "tree"}, {"latents": "image"},
                {"orientation_weight": -1}):
        with pytest.raises(BenchError):
            m.configure(bad)


# --------------------------------------------------------------------------- the stage
def test_index_is_built_once_stored_and_counted(tmp_path, fake_outputs, monkeypatch):
    data = make_data(tmp_path / "data", n_train=40, n_test=10)
    fake_outputs(make_outputs(data, 8))
    ctx = make_ctx(tmp_path, data)
    student = student_artifact()
    ref = stage.obtain_refiner(ctx, "pae-knn", teacher_artifact(), student)
    assert ref.model.options["k"] == 3 and ref.model.options["steps"] == 3 and ref.model.options["lr"] == 0.01
    assert ref.path.is_file()
    expected = 40 * (7 * 4 + 8 + 2 * 8 * 4) + 2 * 2 * 8 * 4  # poses, scene ids, two encodings; latent statistics
    res = stage.refine(ctx, ref, teacher_artifact(), student, "test", iterations=1)
    assert res["stored_bytes"] == expected
    closed = stage.obtain_refiner(ctx, "pae-knn-closed", teacher_artifact(), student)
    assert closed.model.options["steps"] == 0 and closed.fingerprint != ref.fingerprint
    monkeypatch.setattr(K.PaeKnn, "build_index", lambda *a, **kw: pytest.fail("rebuilt a stored index"))
    again = stage.obtain_refiner(ctx, "pae-knn", teacher_artifact(), student)
    assert again.fingerprint == ref.fingerprint
    torch.testing.assert_close(again.model.index_x, ref.model.index_x)
    res2 = stage.refine(ctx, again, teacher_artifact(), student, "test", iterations=1)
    np.testing.assert_allclose(res2["poses"], res["poses"], atol=1e-6)
    with pytest.raises(BenchError, match="student"):
        stage.obtain_refiner(ctx, "pae-knn", teacher_artifact(), None)


def test_iteration_zero_is_the_teachers_estimate_bit_for_bit(tmp_path, fake_outputs):
    """Iteration 0 of a refiner cell is the stored teacher estimate, and a pae-knn that keeps the orientation keeps
    its bits: "iteration K vs the teacher" then never tests rounding noise (quaternions a hair off unit length,
    as a float32 normalisation leaves them, so that normalising again would change them)."""
    data = make_data(tmp_path / "data", n_train=40, n_test=12)
    outs = make_outputs(data, 8)
    est = outs["test"]["pose_est"]
    est[:, 3:] *= np.float32(1.0000003)
    fake_outputs(outs)
    ctx = make_ctx(tmp_path, data, refiner={"refine_orientation": False})
    student = student_artifact()
    ref = stage.obtain_refiner(ctx, "pae-knn", teacher_artifact(), student)
    res = stage.refine(ctx, ref, teacher_artifact(), student, "test", iterations=2)
    assert res["poses"].dtype == np.float32 and res["poses"][0].tobytes() == est.astype(np.float32).tobytes()
    for k in (1, 2):
        assert res["poses"][k][:, 3:].tobytes() == est[:, 3:].tobytes()
        assert not np.array_equal(res["poses"][k][:, :3], est[:, :3])  # the positions did move


def test_matrix_needs_a_student_for_pae_knn():
    from aprbench.harness.running.matrix import Axes, expand
    from aprbench.harness.api.manager import get_registry

    data = make_data(None, n_train=4, n_test=2)
    data.name = "synthetic"
    plan = expand(Axes("synthetic", ["posenet-mobilenet"], ["none"], refiners=["pae-knn"], iterations=[0, 1]),
                  data, get_registry(), "quick")
    assert not any(c.refiner for c in plan.cells) and any("pae-knn" in what for what, _ in plan.refused)
    plan = expand(Axes("synthetic", ["posenet-mobilenet"], ["pae"], refiners=["pae-knn", "pae-knn-closed"],
                       iterations=[0, 1, 2]), data, get_registry(), "quick")
    assert sorted((c.refiner, c.iterations, c.shown) for c in plan.cells if c.refiner) == [
        ("pae-knn", 2, (1, 2)), ("pae-knn-closed", 2, (1, 2))]  # one cell each runs 2 steps and stores both


# --------------------------------------------------------------------------- the CLI, end to end
def test_bench_run_with_pae_knn(run_bench, tmp_path):
    labels, options = labels_dataset_with_teacher(tmp_path)
    r = run_bench("run", "--workdir", tmp_path / "work", *options, "--student", "pae",
                  "--refiner", "pae-knn", "pae-knn-closed", "--iterations", "0,1", "--no-progress", "--no-report",
                  "--set", "student.epochs=1", timeout=300, env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [ln for ln in r.stdout.splitlines() if "pae-knn" in ln]
    assert len(rows) >= 2, r.stdout
    import h5py

    cells = sorted((tmp_path / "work").rglob("*.h5"))
    found = []
    for path in cells:
        with h5py.File(path) as f:
            cell = f.attrs.get("cell")
            if cell and "pae-knn" in str(cell):
                found.append(path)
                train = labels[labels["split"] == "train"][["t1", "t2", "t3"]].to_numpy()
                est = f["pose_est"][1:, :, :3]  # every refinement step (index 0 is the teacher's estimate)
                assert np.all(est >= train.min(0) - 1e-5) and np.all(est <= train.max(0) + 1e-5)
    assert len(found) == 2
