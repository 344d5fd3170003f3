"""A tiny on-disk pose dataset and contexts for teacher tests (no renderer needed).

Frames lie on a plane (x, y in [0, 4] m, z = 1.5 m) with a yaw in [-90, 90] deg
about the world z axis. Each image is a fixed random texture plus per-channel
offsets linear in x, y and yaw, so any CNN can learn the pose from it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from aprbench.harness.api.interfaces import LABEL_COLUMNS, PoseData
from aprbench.harness.api.manager import get_registry
from aprbench.harness.running.stages.context import Context
from aprbench.harness.store.hdf5 import Store


def make_tiny_data(root: Path, n_train: int = 192, n_test: int = 48, size: int = 32, scenes: tuple[str, ...] = ("a",),
                   seed: int = 0) -> PoseData:
    """Write PNGs and labels under ``root``; scene ``k`` is offset by ``10 k`` m in x and tinted."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    texture = rng.uniform(-25, 25, size=(size, size, 3))
    rows = []
    for k, scene in enumerate(scenes):
        for split, n in (("train", n_train), ("test", n_test)):
            xy = rng.uniform(0, 4, size=(n, 2))
            yaw = rng.uniform(-math.pi / 2, math.pi / 2, size=n)
            for i in range(n):
                rgb = np.array([xy[i, 0] / 4, xy[i, 1] / 4, (yaw[i] + math.pi / 2) / math.pi]) * 150 + 50
                img = np.clip(texture + rgb + (40 if k else 0) * np.array([1, -1, 0]), 0, 255).astype(np.uint8)
                rel = f"{scene}/{split}/{i:04d}.png"
                (root / scene / split).mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(root / rel)
                q = [math.cos(yaw[i] / 2), 0.0, 0.0, math.sin(yaw[i] / 2)]
                rows.append([scene, split, split, rel, xy[i, 0] + 10 * k, xy[i, 1], 1.5, *q])
    labels = pd.DataFrame(rows, columns=LABEL_COLUMNS)
    labels["scene_id"] = labels["scene"].map({s: i for i, s in enumerate(scenes)}).astype(np.int64)
    return PoseData("tiny", root, labels, list(scenes))


def make_ctx(tmp: Path, data: PoseData, **overrides) -> Context:
    """A context on ``data`` with a store under ``tmp/work``; ``overrides`` go to the teacher recipe."""
    return Context(
        store=Store(tmp / "work"), registry=get_registry(), data=data, dataset="tiny", profile="quick",
        device=torch.device("cpu"), progress=False, overrides={"teacher": overrides},
    )


# small recipe overrides that make any posenet train in seconds on the tiny data
TINY_POSENET = dict(backbone="test_convnext", image_size=32, epochs=2, batch_size=32, augment=False)
TINY_MST = dict(backbone="test_convnext", image_size=32, epochs=2, batch_size=32, augment=False, d_model=32,
                heads=2, ffn=64, enc_layers=1, dec_layers=1, head_hidden=64)
