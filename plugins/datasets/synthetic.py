"""``synthetic``: the embedded default dataset, rendered on first use.

Procedurally textured box worlds (``room``: indoor, 7Scenes scale; ``site``:
outdoor, Cambridge scale; see :mod:`plugins.datasets.synthetic_scenes`)
ray-cast in torch at handheld-like trajectories and written in the native
7Scenes layout (``<scene>/seq-XX/frame-XXXXXX.color.png`` + ``.pose.txt``
camera-to-world 4x4 matrices in metres, ``TrainSplit.txt`` / ``TestSplit.txt``),
then read back with :func:`harness.data.layouts.read_sevenscenes` - the loading path
of real data. Training sequences come first (``seq-01`` ...), the held-out
test sequences after them. Everything is determined by ``seed``.

Options (``--dataset synthetic:seed=3,frames_per_sequence=100``):
``seed`` (0), ``frames_per_sequence`` (200), ``train_sequences`` (16),
``test_sequences`` (4), ``image_size`` (64 pixels, square; or ``WIDTHxHEIGHT``), ``supersample``
(1: rays per pixel edge, anti-aliasing).

The factory also carries :func:`export` (render scenes into any folder) and
:func:`render_twin` (new images for the poses of any label file), which
``bench data render`` uses.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from aprbench.harness.data.datasets import make_pose_data
from aprbench.harness.data.labels import read_labels, write_labels
from aprbench.harness.data.layouts import read_sevenscenes
from aprbench.harness.errors import BenchError, DataError
from aprbench.harness.api.hookspecs import hookimpl
from aprbench.harness.api.interfaces import LABEL_COLUMNS, POSE_COLUMNS, PoseData
from aprbench.harness.poses import poses_to_matrices
from aprbench.harness.store.hdf5 import Store, fingerprint
from aprbench.plugins.datasets.synthetic_render import render
from aprbench.plugins.datasets.synthetic_scenes import MOTIONS, SCENES, Motion, trajectories, twin_world

RENDER_VERSION = 2
DEFAULTS: dict[str, Any] = {
    "frames_per_sequence": 200,
    "train_sequences": 16,
    "test_sequences": 4,
    "image_size": 64,
    "supersample": 1,
}
BLOCK = 512  # frames rendered and written per step (bounds memory)
OPTIONS_FILE = "synthetic.json"  # in each rendered scene folder: what made it


def parse_image_size(value: Any) -> int | list[int]:
    """An image size in pixels: ``64`` (square) or ``640x480`` / ``[640, 480]`` (width, height).

    A square size comes back as an int, any other as ``[width, height]``.
    """
    dims: Any = value
    if isinstance(value, str):
        parts = value.lower().split("x")
        try:
            dims = [int(p) for p in parts] if len(parts) == 2 else int(value)
        except ValueError:
            dims = None
    if isinstance(dims, (list, tuple)) and len(dims) == 2:
        w, h = dims
        if all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (w, h)):
            return int(w) if w == h else [int(w), int(h)]
    elif isinstance(dims, int) and not isinstance(dims, bool) and dims >= 1:
        return dims
    raise BenchError(f"dataset 'synthetic': image_size must be a positive integer or WIDTHxHEIGHT, got {value!r}")


def _options(seed: int, options: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise BenchError(
            f"dataset 'synthetic': unknown option(s) {', '.join(unknown)}; "
            f"known options: scenes, seed, {', '.join(DEFAULTS)}"
        )
    resolved = {**DEFAULTS, **options, "seed": seed}
    resolved["image_size"] = parse_image_size(resolved["image_size"])
    for key, value in resolved.items():
        if key == "image_size":
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise BenchError(f"dataset 'synthetic': {key} must be a non-negative integer, got {value!r}")
    for key in ("frames_per_sequence", "train_sequences", "supersample"):
        if resolved[key] < 1:
            raise BenchError(f"dataset 'synthetic': {key} must be at least 1, got {resolved[key]}")
    return resolved


def _scene_names(scenes: Iterable[str] | None) -> list[str]:
    names = list(SCENES) if scenes is None else list(dict.fromkeys(scenes))
    unknown = [s for s in names if s not in SCENES]
    if unknown:
        raise DataError(f"dataset 'synthetic': unknown scene(s) {', '.join(unknown)}; known scenes: {', '.join(SCENES)}")
    return names


def scene_poses(scene: str, seed: int = 0, frames_per_sequence: int = 200, train_sequences: int = 16,
                test_sequences: int = 4, motion: Motion | None = None) -> Tensor:
    """``(train + test sequences, frames, 7)`` camera-to-world poses (float64) of one scene.

    Each sequence has its own random stream (seed, scene, split, index), so
    changing the number of test sequences leaves the training ones unchanged.
    """
    motion = motion or MOTIONS[scene]
    out = []
    for split, count in (("train", train_sequences), ("test", test_sequences)):
        for i in range(count):
            g = torch.Generator().manual_seed(int(fingerprint("synthetic-trajectory", seed, scene, split, i), 16) % 2**63)
            out.append(trajectories(motion, 1, frames_per_sequence, g)[0])
    return torch.stack(out)


def _write_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(image).save(path, compress_level=3)


def _render_and_write(world, poses: Tensor, paths: list[Path], size: int | list[int], supersample: int,
                      pool: ThreadPoolExecutor) -> None:
    """Render ``poses`` in blocks and write each image to its path (PNG, in the thread pool)."""
    futures = []
    for start in range(0, len(poses), BLOCK):
        images = render(world, poses[start:start + BLOCK], size, supersample=supersample)
        hwc = images.permute(0, 2, 3, 1).contiguous().numpy()
        futures += [pool.submit(_write_png, paths[start + i], hwc[i]) for i in range(len(hwc))]
    for f in futures:
        f.result()


def render_scene_native(scene: str, scene_dir: Path, seed: int = 0, **options: Any) -> Path:
    """Render one scene into ``scene_dir`` (native 7Scenes layout); ``options`` as :data:`DEFAULTS`."""
    o = _options(seed, options)
    built = SCENES[scene](seed)
    world = built.world
    poses = scene_poses(scene, seed, o["frames_per_sequence"], o["train_sequences"], o["test_sequences"], built.motion)
    n_seq, frames = poses.shape[:2]
    scene_dir.mkdir(parents=True, exist_ok=True)
    paths, matrices = [], poses_to_matrices(poses.reshape(-1, 7).numpy())
    for s in range(n_seq):
        seq_dir = scene_dir / f"seq-{s + 1:02d}"
        seq_dir.mkdir(exist_ok=True)
        for f in range(frames):
            paths.append(seq_dir / f"frame-{f:06d}.color.png")
    for path, T in zip(paths, matrices):
        path.with_name(path.name.replace(".color.png", ".pose.txt")).write_text(
            "\n".join("\t".join(f"{v:.12e}" for v in row) for row in T) + "\n"
        )
    n_train = o["train_sequences"]
    (scene_dir / OPTIONS_FILE).write_text(json.dumps({"scene": scene, "render_version": RENDER_VERSION, **o}, sort_keys=True))
    (scene_dir / "TrainSplit.txt").write_text("".join(f"sequence{s + 1}\n" for s in range(n_train)))
    (scene_dir / "TestSplit.txt").write_text("".join(f"sequence{s + 1}\n" for s in range(n_train, n_seq)))
    with ThreadPoolExecutor(max_workers=2) as pool:
        _render_and_write(world, poses.reshape(-1, 7).float(), paths, o["image_size"], o["supersample"], pool)
    return scene_dir


def _check_existing(scene_dir: Path, scene: str, wanted: dict[str, Any]) -> None:
    """A scene folder already there must have been rendered with the same options."""
    try:
        found = json.loads((scene_dir / OPTIONS_FILE).read_text())
    except (OSError, ValueError):
        found = None
    if found != {"scene": scene, "render_version": RENDER_VERSION, **wanted}:
        raise BenchError(
            f"{scene_dir} already exists and was not rendered with these options "
            f"({', '.join(f'{k}={v}' for k, v in sorted(wanted.items()))}); remove it or choose another folder"
        )


def export(out: Path | str, scenes: Iterable[str] | None = None, seed: int = 0, **options: Any) -> Path:
    """Render ``scenes`` (default all) into ``out/<scene>`` in the native 7Scenes layout.

    Each scene is rendered into a temporary folder beside its destination and
    renamed into place, so an interrupted render is never mistaken for a
    finished one; scenes already present are kept.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".*.rendering-*"):
        shutil.rmtree(stale, ignore_errors=True)
    wanted = _options(seed, options)
    for scene in _scene_names(scenes):
        final = out / scene
        if (final / "TestSplit.txt").is_file():
            _check_existing(final, scene, wanted)
            continue
        tmp = Path(tempfile.mkdtemp(prefix=f".{scene}.rendering-", dir=out))
        try:
            render_scene_native(scene, tmp, seed=seed, **options)
            try:
                os.rename(tmp, final)
            except OSError:
                if not (final / "TestSplit.txt").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def factory(store: Store | None = None, scenes: Iterable[str] | None = None, seed: int = 0, **options: Any) -> PoseData:
    """The synthetic dataset: rendered once into ``store.data_dir('synthetic')/<options hash>``, then read back."""
    o = _options(seed, options)
    names = _scene_names(scenes)
    store = store or Store()
    key = fingerprint("synthetic", RENDER_VERSION, o)
    root = store.data_dir("synthetic") / key
    if not all((root / s / "TestSplit.txt").is_file() for s in names):
        with store.lock(f"synthetic-{key}"):
            export(root, names, **o)
            (root / "options.json").write_text(json.dumps({"version": RENDER_VERSION, **o}, indent=2, sort_keys=True))
    labels = read_sevenscenes(root, names)
    return make_pose_data("synthetic", root, labels, names, {**o, "render_version": RENDER_VERSION})


def render_twin(
    labels: pd.DataFrame | Path | str, out: Path | str, image_size: int | str | list[int] = 64, seed: int = 0,
    supersample: int = 1,
) -> pd.DataFrame:
    """A synthetic twin of a label file: the same poses and splits, new images.

    Per scene, a box world is fitted around the scene's camera positions
    (:func:`plugins.datasets.synthetic_scenes.twin_world`; any axis
    convention, any offset from the origin). Images go to ``out / img_path``
    and the labels to ``out/labels.csv``; returns the labels.
    """
    df = read_labels(labels) if isinstance(labels, (str, Path)) else labels
    missing = [c for c in LABEL_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"render_twin: labels miss column(s) {', '.join(missing)}")
    df = df[LABEL_COLUMNS].reset_index(drop=True)
    for i, p in enumerate(df["img_path"].tolist()):
        if Path(p).is_absolute() or ".." in Path(p).parts:
            raise DataError(f"render_twin: row {i + 1}, column 'img_path': {p!r} must be a relative path inside the dataset root")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=2) as pool:
        for scene in sorted(df["scene"].unique()):
            rows = df.index[df["scene"] == scene].to_numpy()
            poses = torch.tensor(df.loc[rows, POSE_COLUMNS].to_numpy(), dtype=torch.float64)
            centre = poses[:, :3].mean(0)  # render near the origin: float32 precision for far-off coordinates
            shifted = torch.cat([poses[:, :3] - centre, poses[:, 3:]], dim=1).float()
            world = twin_world(shifted[:, :3], seed=seed)
            paths = [out / p for p in df.loc[rows, "img_path"]]
            for d in {p.parent for p in paths}:
                d.mkdir(parents=True, exist_ok=True)
            _render_and_write(world, shifted, paths, parse_image_size(image_size), supersample, pool)
    write_labels(df, out / "labels.csv")
    return df


factory.export = export  # type: ignore[attr-defined]
factory.render_twin = render_twin  # type: ignore[attr-defined]
factory.scenes = list(SCENES)  # type: ignore[attr-defined]
factory.defaults = dict(DEFAULTS)  # type: ignore[attr-defined]


@hookimpl
def bench_datasets():
    return {"synthetic": factory}
