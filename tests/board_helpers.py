"""A store of hand-made cell files in the format of :mod:`harness.store.cells` (no training): teacher, student and
refiner cells on two scenes (``room``: 4 m across, ``site``: 60 m across), two recipes, optional extra seeds,
and one decoder cell with a grid PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from aprbench.harness.results.metrics import errors, per_scene
from aprbench.harness.store.hdf5 import Store, write_h5

SCENES = ["room", "site"]
N = 20  # test frames per scene


def _poses(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    gt, sid = [], []
    for s, extent in enumerate((4.0, 60.0)):
        t = rng.uniform(0, extent, size=(N, 3))
        q = rng.normal(size=(N, 4))
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        q *= np.sign(q[:, :1])
        gt.append(np.concatenate([t, q], 1))
        sid.append(np.full(N, s))
    return np.concatenate(gt), np.concatenate(sid)


def _perturb(gt: np.ndarray, rng: np.random.Generator, pos_sigma: float, rot_sigma: float) -> np.ndarray:
    est = gt.copy()
    scale = np.where(np.arange(len(gt)) < N, 1.0, 10.0)[:, None]  # the outdoor scene errs in metres, not cm
    est[:, :3] += rng.normal(scale=pos_sigma, size=(len(gt), 3)) * scale
    est[:, 3:] += rng.normal(scale=rot_sigma, size=(len(gt), 4))
    est[:, 3:] /= np.linalg.norm(est[:, 3:], axis=1, keepdims=True)
    return est


def provenance(profile: str = "quick", overrides: dict | None = None, created: float = 1.7e9) -> dict:
    return {"profile": profile, "overrides": overrides or {}, "recipe_fingerprint": f"r-{profile}-{overrides}",
            "aprbench_version": "0.1.0", "git_commit": "abcdef1234567890", "dataset_fingerprint": "d0",
            "device": "cpu", "precision": "fp32", "created": created}


def write_cell(store: Store, name: str, cell: dict, estimates: list[np.ndarray], iterations: list[int],
               gt: np.ndarray, sid: np.ndarray, prov: dict, stored_bytes: int, ms: float,
               upstream: dict | None = None) -> str:
    """One pose cell: ``estimates[i]`` is the estimate of stored iteration ``iterations[i]``; ``upstream``: the
    fingerprints of its models by kind (none recorded by default)."""
    scenes = cell["scenes"]
    pos, ori, per_iteration = [], [], []
    for k, est in zip(iterations, estimates):
        p, o = errors(est, gt)
        pos.append(p)
        ori.append(o)
        per_iteration.append({"iteration": k, "per_scene": per_scene(est, gt, sid, scenes).to_dict("records"),
                              "ms_per_frame": ms * (1 + k)})
    fp = f"{name}"
    write_h5(store.cell_path(fp),
             {"pose_gt": gt, "scene_id": sid, "img_path": [f"{scenes[s]}/frame-{i:03d}.png" for i, s in enumerate(sid)],
              "pose_est": np.stack(estimates), "position_error_m": np.stack(pos), "orientation_error_deg": np.stack(ori)},
             {"kind": "pose", "cell": cell, "iterations": iterations, "scenes": scenes, "fingerprint": fp,
              "upstream": upstream or {}, "result": {"per_iteration": per_iteration, "stored_bytes": stored_bytes},
              "provenance": prov})
    return fp


def axes(teacher: str = "posenet", student: str | None = None, encode: str | None = None,
         refiner: str | None = None, seed: int = 0, shown: list[int] | None = None, fraction: float = 1.0,
         dataset: str = "synthetic", scenes: tuple[str, ...] = tuple(SCENES)) -> dict:
    return {"dataset": dataset, "teacher": teacher, "checkpoint": None, "scenes": list(scenes),
            "fraction": fraction, "seed": seed, "student": student, "encode": encode, "refiner": refiner,
            "decoder": None, "shown_iterations": shown or []}


def write_store(root: Path, seeds: tuple[int, ...] = (0,), second_recipe: bool = True, decoder: bool = True,
                dataset: str = "synthetic", scenes: tuple[str, ...] = tuple(SCENES)) -> Store:
    """Teacher, teacher + student, teacher + student + refiner (K = 3, shown at 1 and 3) per seed for recipe
    ``quick``; the teacher alone again under ``quick`` with ``--set teacher.epochs=2`` when ``second_recipe``.
    The first of ``scenes`` spans 4 m, the second 60 m."""
    store = Store(root)
    where = {"dataset": dataset, "scenes": scenes}
    rng = np.random.default_rng(0)
    gt, sid = _poses(rng)
    for seed in seeds:
        r = np.random.default_rng(100 + seed)
        prov = provenance(created=1.7e9 + seed)
        teacher = _perturb(gt, r, 0.06, 0.05)
        write_cell(store, f"teacher-s{seed}", axes(seed=seed, **where), [teacher], [0], gt, sid, prov, 4_000_000, 2.0)
        student = teacher + _perturb(gt, r, 0.02, 0.01) - gt
        student[:, 3:] /= np.linalg.norm(student[:, 3:], axis=1, keepdims=True)
        write_cell(store, f"student-s{seed}", axes(student="pae", encode="estimate", seed=seed, **where), [student], [0],
                   gt, sid, prov, 5_000_000, 3.0)
        steps = [teacher]
        for _ in range(3):
            nxt = gt + 0.7 * (steps[-1] - gt)
            nxt[:, 3:] /= np.linalg.norm(nxt[:, 3:], axis=1, keepdims=True)
            steps.append(nxt)
        write_cell(store, f"refiner-s{seed}", axes(student="pae", encode="estimate", refiner="pae-rpr", seed=seed,
                                                   shown=[0, 1, 3], **where), steps, [0, 1, 2, 3], gt, sid, prov, 6_000_000, 5.0)
    if second_recipe:
        other = _perturb(gt, np.random.default_rng(7), 0.1, 0.08)
        write_cell(store, "teacher-epochs2", axes(**where), [other], [0], gt, sid,
                   provenance(overrides={"teacher": {"epochs": 2}}), 4_000_000, 2.0)
    if decoder:
        grid = store.root / "cells" / "decoder-grid-test.png"
        write_grid_png(grid, n=6, size=16)
        write_h5(store.cell_path("decoder"), {"psnr": np.array([20.0, 18.0])},
                 {"kind": "decoder", "cell": {**axes(student="pae", encode="estimate", **where), "decoder": "image-decoder"},
                  "fingerprint": "decoder", "scenes": list(scenes), "upstream": {}, "provenance": provenance(),
                  "result": {"train_psnr": 20.0, "train_ssim": 0.8, "test_psnr": 18.0, "test_ssim": 0.7,
                             "stored_bytes": 1_000_000, "grids": {"test": str(grid)}}})
    return store


def write_grid_png(path: Path, n: int, size: int) -> None:
    """A grid as ``torchvision.utils.save_image(nrow=8, padding=2, pad_value=1)`` draws ``n`` (truth, decoded)
    pairs: the truth a gradient, the decoded image that gradient plus noise."""
    rng = np.random.default_rng(3)
    tiles = []
    for i in range(n):
        truth = np.broadcast_to(np.linspace(0, 1, size)[None, :, None] * (0.3 + 0.1 * i), (size, size, 3))
        decoded = np.clip(truth + rng.normal(scale=0.05 * (i + 1), size=truth.shape), 0, 1)
        tiles += [truth, decoded]
    rows = -(-len(tiles) // 8)
    canvas = np.ones((rows * (size + 2) + 2, 8 * (size + 2) + 2, 3))
    for k, tile in enumerate(tiles):
        r, c = divmod(k, 8)
        canvas[2 + r * (size + 2): 2 + r * (size + 2) + size, 2 + c * (size + 2): 2 + c * (size + 2) + size] = tile
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((canvas * 255 + 0.5).astype(np.uint8)).save(path)
