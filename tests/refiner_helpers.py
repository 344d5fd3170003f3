"""Stand-ins for teachers and students in refiner / decoder tests: stored outputs without a trained APR.

Latents are a fixed function of the pose (``pose_features``): the "teacher"
produces them from the true pose of a frame, the "student" from any pose it is
given, so a PAE is exact and an RPR has something learnable to regress.
With ``raw=True`` the first 7 latent dimensions *are* the pose (the rest
zeros), which lets an oracle refiner read poses back from latents.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from aprbench.harness import poses as P
from aprbench.harness.api.interfaces import LABEL_COLUMNS, Latents, PoseData, Refiner, Student, Teacher
from aprbench.harness.api.manager import get_registry
from aprbench.harness.running.stages.context import Artifact, Context
from aprbench.harness.store.hdf5 import Store


def pose_features(poses: Tensor, dim: int, raw: bool = False, scene: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(latent_x, latent_q)`` ``(N, dim)``: raw pose padded, or a fixed random-Fourier encoding."""
    poses = poses.float()
    if raw:  # a multi-scene raw encoding carries the scene in dimension 7
        pad = poses.new_zeros(len(poses), dim - 7)
        lat = torch.cat([poses, pad], 1)
        if scene is not None and dim > 7:
            lat[:, 7] = scene.float()
        return lat, lat.clone()
    g = torch.Generator().manual_seed(1234)
    wx = torch.randn(3, dim, generator=g) * 1.5
    wq = torch.randn(4, dim, generator=g) * 1.5
    t, q = poses[:, :3], P.canonical_quat(P.normalize_quat(poses[:, 3:]))
    return torch.cos(t @ wx), torch.cos(q @ wq)


class StandInTeacher(Teacher):
    """Only what the refiner stage reads: ``latent_dim``, ``multi_scene``, ``num_scenes``."""

    def __init__(self, latent_dim: int = 8, multi_scene: bool = False, num_scenes: int = 1) -> None:
        super().__init__()
        self.latent_dim, self.multi_scene, self.num_scenes = latent_dim, multi_scene, num_scenes
        self.weight = nn.Parameter(torch.zeros(1))

    def encode(self, images: Tensor, scene: Tensor | None = None) -> Latents:
        raise NotImplementedError("stand-in teacher: outputs are stored")


class StandInStudent(Student):
    """An exact PAE: ``pose_features`` of the given pose; records the scenes it was given."""

    def __init__(self, latent_dim: int = 8, multi_scene: bool = False, raw: bool = False) -> None:
        super().__init__()
        self.latent_dim, self.multi_scene, self.raw = latent_dim, multi_scene, raw
        self.weight = nn.Parameter(torch.zeros(3))
        self.seen_scenes: list[Tensor] = []

    def forward(self, poses: Tensor, scene: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self.multi_scene:
            assert scene is not None, "a multi-scene student needs the scene"
            self.seen_scenes.append(scene.detach().cpu())
        return pose_features(poses, self.latent_dim, self.raw, scene if (self.multi_scene and self.raw) else None)


class OracleRefiner(Refiner):
    """Reads the poses back from raw latents and returns the true ``rel(query -> reference)``."""

    def __init__(self, latent_dim: int = 8, neighbours: str = "student") -> None:
        super().__init__()
        self.latent_dim, self.neighbours = latent_dim, neighbours
        self.weight = nn.Parameter(torch.zeros(5))

    def forward(self, query_x: Tensor, query_q: Tensor, ref_x: Tensor, ref_q: Tensor) -> Tensor:
        return P.relative_pose(query_x[:, :7], ref_x[:, :7])


def make_labels(n_train: int = 120, n_test: int = 40, scenes: tuple[str, ...] = ("a",), seed: int = 0) -> pd.DataFrame:
    """Frames on a 2 m x 2 m x 0.5 m box, yaw +-60 deg, pitch/roll +-10 deg; scene ``k`` offset by 5 k m."""
    rng = np.random.default_rng(seed)
    rows = []
    for k, scene in enumerate(scenes):
        for split, n in (("train", n_train), ("test", n_test)):
            t = rng.uniform([0, 0, 1.0], [2, 2, 1.5], size=(n, 3)) + np.array([5.0 * k, 0, 0])
            aa = rng.uniform(-1, 1, size=(n, 3)) * np.radians([10, 10, 60])
            q = P.axis_angle_to_quat(torch.tensor(aa)).numpy()
            for i in range(n):
                rows.append([scene, split, split, f"{scene}/{split}/{i:04d}.png", *t[i], *q[i]])
    labels = pd.DataFrame(rows, columns=LABEL_COLUMNS)
    labels["scene_id"] = labels["scene"].map({s: i for i, s in enumerate(scenes)}).astype(np.int64)
    return labels


def write_images(root: Path, labels: pd.DataFrame, size: int = 16) -> None:
    """Smooth images that depend on the pose (gradients whose offsets move with x, y and yaw)."""
    from PIL import Image

    yy, xx = np.mgrid[0:size, 0:size] / size
    for row in labels.itertuples():
        yaw = 2 * math.atan2(row.q4, row.q1)
        r = 0.5 + 0.4 * np.sin(2 * math.pi * (xx + row.t1 / 2))
        g = 0.5 + 0.4 * np.sin(2 * math.pi * (yy + row.t2 / 2))
        b = 0.5 + 0.4 * np.cos(2 * math.pi * (xx + yy) + yaw)
        img = (np.stack([r, g, b], -1) * 255).astype(np.uint8)
        path = root / row.img_path
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path)


def labels_dataset_with_teacher(root: Path, name: str = "posenet-mobilenet", n_train: int = 48,
                                 n_test: int = 16) -> tuple[pd.DataFrame, list[str]]:
    """A tiny labels dataset under ``root/data`` and a randomly initialised quick ``name`` saved as
    ``root/teacher.pth``; returns the labels and the ``--dataset`` / ``--teacher`` options that use them."""
    from aprbench.harness.running.stages.context import build_named

    labels = make_labels(n_train=n_train, n_test=n_test)
    write_images(root / "data", labels)
    labels[LABEL_COLUMNS].to_csv(root / "data" / "labels.csv", index=False)
    torch.manual_seed(0)
    teacher = build_named(get_registry(), "teacher", name, "labels", "quick", num_scenes=1)
    torch.save(teacher.state_dict(), root / "teacher.pth")
    return labels, ["--dataset", f"labels:root={root / 'data'},labels={root / 'data' / 'labels.csv'}",
                    "--teacher", f"{name}={root / 'teacher.pth'}"]


def make_data(root: Path, scenes: tuple[str, ...] = ("a",), images: bool = False, **kw) -> PoseData:
    labels = make_labels(scenes=scenes, **kw)
    if images:
        write_images(root, labels)
    return PoseData("standin", root, labels, list(scenes))


def make_outputs(data: PoseData, latent_dim: int, raw: bool = False, noise_m: float = 0.3, noise_deg: float = 10.0,
                 multi_scene: bool = False, wrong_scene: np.ndarray | None = None, seed: int = 0) -> dict[str, dict]:
    """Fake stored teacher outputs per split: latents of the true pose, estimates = truth + noise."""
    g = torch.Generator().manual_seed(seed)
    outs = {}
    for split in ("train", "test"):
        part = data.split(split)
        gt = part.poses()
        sid = part.scene_ids()
        lx, lq = pose_features(gt, latent_dim, raw, sid if (multi_scene and raw) else None)
        est = P.perturb_poses(gt.double(), noise_m, noise_deg, generator=g).float()
        est = P.join_pose(est[:, :3], P.normalize_quat(est[:, 3:]))
        S = len(data.scenes)
        logp = torch.full((len(gt), S if multi_scene else 1), -10.0)
        pred = sid.clone()
        if wrong_scene is not None and split == "test":
            pred[torch.as_tensor(wrong_scene)] = (pred[torch.as_tensor(wrong_scene)] + 1) % S
        logp[torch.arange(len(gt)), pred if multi_scene else 0] = 0.0
        outs[split] = {
            "pose_est": est.numpy(), "pose_gt": gt.numpy(), "latent_x": lx.numpy(), "latent_q": lq.numpy(),
            "scene_id": sid.numpy(), "scene_logp": logp.numpy(), "time_s": np.full(len(gt), 0.002),
            "img_path": np.array(part.labels["img_path"].tolist(), dtype=object),
        }
    return outs


def make_ctx(tmp: Path, data: PoseData, refiner: dict | None = None, decoder: dict | None = None) -> Context:
    return Context(
        store=Store(tmp / "work"), registry=get_registry(), data=data, dataset="standin", profile="quick",
        device=torch.device("cpu"), progress=False, overrides={"refiner": refiner or {}, "decoder": decoder or {}},
    )


def teacher_artifact(latent_dim: int = 8, multi_scene: bool = False, num_scenes: int = 1, fp: str = "t0") -> Artifact:
    return Artifact("teacher", "standin", fp, {"image_size": 16}, StandInTeacher(latent_dim, multi_scene, num_scenes))


def student_artifact(latent_dim: int = 8, multi_scene: bool = False, raw: bool = False, fp: str = "s0") -> Artifact:
    return Artifact("student", "standin-pae", fp, {}, StandInStudent(latent_dim, multi_scene, raw))


# small RPR that trains in seconds
TINY_RPR = dict(d_model=32, layers=1, heads=2, ffn=64, head_hidden=64, dropout=0.0, epochs=15, batch_size=64,
                lr=3e-3, k=3, virtual=2, checkpoint_every=100)


class ConvTeacher(Teacher):
    """A tiny image encoder (for fine-tuning tests): conv, pool, two linear latent heads."""

    def __init__(self, latent_dim: int = 16) -> None:
        super().__init__()
        self.latent_dim, self.multi_scene, self.num_scenes = latent_dim, False, 1
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fx, self.fq = nn.Linear(8, latent_dim), nn.Linear(8, latent_dim)

    def encode(self, images: Tensor, scene: Tensor | None = None) -> Latents:
        f = torch.relu(self.conv(images)).mean(dim=(2, 3))  # (B, 8)
        return Latents(self.fx(f), self.fq(f))

    def decode(self, latent_x: Tensor, latent_q: Tensor) -> Tensor:
        return torch.cat([latent_x[:, :3], latent_q[:, :4]], -1)


def one_thread():
    """Fixture body: tiny models train several times faster on one thread (no oversubscription on a shared CPU)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
