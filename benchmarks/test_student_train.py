"""PAE training from the store against the reference's way of training (pytest-benchmark).

Same teacher (PoseNet ``posenet-mobilenet``, MobileNetV2 1.0, randomly
initialised: cost does not depend on the weights), same frames (``FRAMES``
PNGs on disk), the paper's student recipe (the teacher's config: Adam,
StepLR, batch 32, 300 epochs).

- **Store** (:func:`harness.running.stages.student.obtain_student`): the teacher runs
  once over the training images (``teacher_outputs``, batched, stored in
  HDF5), then the PAE trains for the whole recipe from tensors. Measured in
  full: the one-time teacher pass at each image size and the 300 epochs
  (which do not depend on the image size: measured once).
- **Reference** (``main_learn_pose_encoding.py``): a DataLoader reads and
  transforms every image of every batch of every epoch and the frozen teacher
  re-runs on it before the PAE step. Measured for ``REF_BATCHES`` batches
  (the benchmarked function is one such batch), extrapolated to an epoch
  (``ceil(FRAMES / 32)`` batches) and to the recipe's epochs.

``extra_info``: per-epoch and whole-recipe ratios at 224x224 (the paper's
input size; target >= 50x for the whole recipe) and at the synthetic default
64x64. Run: ``.venv/bin/pytest benchmarks/test_student_train.py --benchmark-only -s``.
"""

from __future__ import annotations

import math
import os
import time

os.environ.setdefault("BENCH_PLUGINS", "none")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from aprbench.harness.data.datasets import make_pose_data  # noqa: E402
from aprbench.harness.data.images import PoseImageDataset  # noqa: E402
from aprbench.harness.api.interfaces import LABEL_COLUMNS  # noqa: E402
from aprbench.harness.training.losses import PoseLoss  # noqa: E402
from aprbench.harness.api.manager import get_registry  # noqa: E402
from aprbench.harness.poses import random_quat  # noqa: E402
from aprbench.harness.api.recipes import resolve  # noqa: E402
from aprbench.harness.running.stages.context import build_model  # noqa: E402
from aprbench.harness.running.stages import teacher as teacher_stage  # noqa: E402
from aprbench.harness.running.stages.context import Artifact, Context  # noqa: E402
from aprbench.harness.running.stages.student import obtain_student  # noqa: E402
from aprbench.harness.store.hdf5 import Store  # noqa: E402

FRAMES = 256
SIZES = [224, 64]
REF_BATCHES = 3
TEACHER = "posenet-mobilenet"
STUDENT = "pae"
DATASET = "cambridge"  # the paper recipe of a PoseNet teacher (300 epochs)


def write_frames(root, size: int, poses: np.ndarray):
    """PNG frames (smooth procedural colour fields plus mild noise, like rendered images) and their PoseData."""
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    rows = []
    for i, p in enumerate(poses):
        f = rng.uniform(1, 6, size=(3, 2))
        img = np.stack([0.5 + 0.4 * np.sin(2 * np.pi * (f[c, 0] * xx + f[c, 1] * yy) + p[c]) for c in range(3)], -1)
        img = np.clip(img * 255 + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
        rel = f"seq-01/frame-{i:06d}.png"
        (root / "seq-01").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / rel)
        rows.append(["room", "train", "seq-01", rel, *p])
    return make_pose_data("bench", root, pd.DataFrame(rows, columns=LABEL_COLUMNS))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("student-bench")
    g = torch.Generator().manual_seed(0)
    poses = torch.cat([torch.rand(FRAMES, 3, generator=g) * 4, random_quat(FRAMES, g, torch.float32)], 1).numpy()
    data = {size: write_frames(root / f"images{size}", size, poses) for size in SIZES}
    recipe = resolve(get_registry(), "teacher", TEACHER, DATASET, "paper")
    torch.manual_seed(0)
    model = build_model(get_registry(), recipe, num_scenes=1).eval()
    return root, data, recipe, model


def context(root, data, name: str) -> Context:
    return Context(store=Store(root / name), registry=get_registry(), data=data, dataset=DATASET, profile="paper",
                   device=torch.device("cpu"), progress=False)


def teacher_artifact(model, recipe, size: int) -> Artifact:
    return Artifact("teacher", TEACHER, f"bench-{size}", {**recipe.values(), "image_size": size, "eval_batch_size": 32}, model)


@pytest.fixture(scope="module")
def store_training(setup) -> dict:
    """The whole paper recipe through ``obtain_student`` from stored outputs (image size does not enter)."""
    root, data, recipe, model = setup
    ctx = context(root, data[64], "store-training")
    teacher = teacher_artifact(model, recipe, 64)
    teacher_stage.teacher_outputs(ctx, teacher, "train")
    t0 = time.perf_counter()
    art = obtain_student(ctx, STUDENT, teacher)
    total = time.perf_counter() - t0
    import json

    meta = json.loads(art.path.with_suffix(".json").read_text())
    return {"total_s": total, "epochs": meta["epochs"], "epoch_s": meta["train_seconds"] / meta["epochs"],
            "batch_size": meta["recipe"]["batch_size"], "threads": meta["recipe"].get("num_threads")}


@pytest.mark.parametrize("size", SIZES)
def test_student_training_store_vs_reference(benchmark, setup, store_training, size):
    root, data, recipe, model = setup
    ctx = context(root, data[size], f"work{size}")
    teacher = teacher_artifact(model, recipe, size)
    t0 = time.perf_counter()
    teacher_stage.teacher_outputs(ctx, teacher, "train")  # the store's one-time teacher pass (images loaded here)
    outputs_s = time.perf_counter() - t0

    # the reference: every batch loads its images and re-runs the frozen teacher
    s_recipe = ctx.recipe("student", STUDENT, teacher=teacher.recipe)
    bs = s_recipe.train.batch_size
    torch.manual_seed(0)
    student = build_model(ctx.registry, s_recipe, latent_dim=model.latent_dim).train()
    loss_fn = PoseLoss(s_recipe.task.sx, s_recipe.task.sq)
    opt = torch.optim.Adam([*student.parameters(), *loss_fn.parameters()], lr=s_recipe.train.lr,
                           weight_decay=s_recipe.train.weight_decay)
    loader = torch.utils.data.DataLoader(PoseImageDataset(data[size], size), batch_size=bs, shuffle=True, num_workers=0)
    model.requires_grad_(False)

    def batches():
        while True:
            yield from loader

    stream = batches()

    def reference_batch() -> float:
        batch = next(stream)
        with torch.no_grad():
            est, lat = model(batch["image"])
        lx, lq = student(est)
        pose_loss, _ = loss_fn(model.decode(lx, lq), batch["pose"])
        loss = F.mse_loss(lx, lat.x) + F.mse_loss(lq, lat.q) + pose_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float(loss.detach())

    benchmark.pedantic(reference_batch, rounds=REF_BATCHES, warmup_rounds=1, iterations=1)
    model.requires_grad_(True)
    per_batch = benchmark.stats.stats.mean
    epochs = store_training["epochs"]
    ref_epoch = per_batch * math.ceil(FRAMES / bs)
    ours_total = outputs_s + store_training["total_s"]
    info = {
        "image_size": size, "frames": FRAMES, "teacher": TEACHER, "student": STUDENT, "batch_size": bs,
        "epochs": epochs, "reference_batch_s": per_batch, "reference_epoch_s": ref_epoch,
        "reference_recipe_s": ref_epoch * epochs, "store_teacher_pass_s": outputs_s,
        "store_epoch_s": store_training["epoch_s"], "store_recipe_s": ours_total,
        "ratio_per_epoch": ref_epoch / store_training["epoch_s"],
        "ratio_recipe": ref_epoch * epochs / ours_total,
        "torch_threads": torch.get_num_threads(), "student_threads": store_training["threads"],
    }
    benchmark.extra_info.update(info)
    print(f"\n{size}x{size}: reference {ref_epoch:.2f} s/epoch ({per_batch * 1000:.0f} ms/batch), store "
          f"{store_training['epoch_s'] * 1000:.1f} ms/epoch -> {info['ratio_per_epoch']:.0f}x per epoch; "
          f"{epochs} epochs: reference {info['reference_recipe_s']:.0f} s (extrapolated) vs store "
          f"{ours_total:.1f} s (teacher pass {outputs_s:.1f} s + training {store_training['total_s']:.1f} s) "
          f"-> {info['ratio_recipe']:.0f}x")
    assert info["ratio_per_epoch"] > 1.0
    if size == 224:
        assert info["ratio_recipe"] >= 50, info
