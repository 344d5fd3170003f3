"""Teachers as artifacts: train (or load) an APR, cache its outputs per split, evaluate it.

A teacher recipe resolves (``harness.api.recipes``) into the training loop's
config, :class:`harness.api.recipes.TeacherConfig` and the model's config (``backbone``,
``d_model``, ...), which the plugin's factory receives.

``stages`` (optional) is a list of tables, each a fine-tuning stage run after
the previous one: ``train`` (a glob, ``re:REGEX``, or a list of them, matched
against the teacher's parameter names; the rest is frozen, the loss weights
always train) plus any ``TrainConfig`` keys for that stage (``epochs``, ``lr``, ...).
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aprbench.harness.errors import BenchError
from aprbench.harness.api.interfaces import Teacher
from aprbench.harness.training.losses import PoseLoss
from aprbench.harness.results.metrics import errors, mean_pose_baseline, per_scene
from aprbench.harness.poses import mean_pose, normalize_quat, pose_errors
from aprbench.harness.training.batches import Batches
from aprbench.harness.api.recipes import Recipe
from aprbench.harness.running.stages.context import Artifact, Context, Stage, obtain, training_paths
from aprbench.harness.running.timing import seconds_per_frame
from aprbench.harness.store.hdf5 import Damaged, fingerprint, read_h5, require, write_h5
from aprbench.harness.training.devices import model_threads
from aprbench.harness.training.loop import fit


# =========================================================================== the training task
class TeacherTask(nn.Module):
    """A teacher plus its loss: ``forward((images, poses, scenes)) -> (loss, logs)``.

    Loss = Kendall pose loss (learnable ``sx``, ``sq``) + ``nll_weight`` x NLL
    of the scene classification for a multi-scene teacher (which is given the
    ground-truth scene to select its latent). Logs: loss parts, batch median
    errors (m, deg) and the scene accuracy.
    """

    def __init__(self, teacher: Teacher, sx: float = 0.0, sq: float = 0.0, learn_weights: bool = True,
                 nll_weight: float = 1.0) -> None:
        super().__init__()
        self.teacher = teacher
        self.loss = PoseLoss(sx, sq, learnable=learn_weights)
        self.nll_weight = nll_weight

    def forward(self, batch: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, dict[str, float]]:
        images, poses, scenes = batch  # (B, 3, S, S) normalised, (B, 7), (B,)
        multi = self.teacher.multi_scene
        est, lat = self.teacher(images, scenes if multi else None)
        loss, logs = self.loss(est, poses)
        with torch.no_grad():
            pos, ori = pose_errors(est.detach(), poses)
            logs["m"], logs["deg"] = float(pos.median()), float(ori.median())
        if multi and lat.scene_logp is not None:
            nll = F.nll_loss(lat.scene_logp, scenes)
            loss = loss + self.nll_weight * nll
            logs["nll"] = float(nll.detach())
            logs["acc"] = float((lat.scene_logp.argmax(-1) == scenes).float().mean())
        return loss, logs


# =========================================================================== obtaining a teacher
def _build_args(ctx: Context, upstream: dict[str, Artifact]) -> dict[str, Any]:
    return {"num_scenes": len(ctx.data.scenes)}


def _check(ctx: Context, recipe: Recipe, model: Teacher, upstream: dict[str, Artifact]) -> None:
    """A teacher needs nothing upstream."""


def obtain_teacher(ctx: Context, name: str, checkpoint: Path | None = None) -> Artifact:
    """The teacher ``name`` trained with its recipe on ``ctx.data``'s training split (from the store when there),
    or with the weights of ``checkpoint`` (see :func:`harness.running.stages.context.obtain`)."""
    return obtain(ctx, TEACHER, name, {}, checkpoint)


def _trainable(names: list[str], patterns: str | list[str]) -> set[str]:
    pats = [patterns] if isinstance(patterns, str) else list(patterns)
    keep = set()
    for n in names:
        for p in pats:
            if (p.startswith("re:") and re.search(p[3:], n)) or fnmatch.fnmatchcase(n, p):
                keep.add(n)
    return keep


def image_batches(images: Tensor, poses: Tensor, scenes: Tensor, batch_size: int, seed: int = 0,
                  augment: bool = True, scene_balanced: bool = False, device: torch.device | None = None,
                  preprocess: Any = None) -> Batches:
    """Teacher training batches ``(images float (B, 3, S, S), poses (B, 7), scenes (B,))`` from uint8 images,
    augmented and normalised per batch; ``scene_balanced`` draws scenes uniformly, then frames.
    ``preprocess`` (a :class:`harness.data.images.Preprocess`) replaces the default augmentation."""
    from aprbench.harness.data.images import augment_images, normalize_images

    def pixels(batch: tuple[Tensor, Tensor, Tensor], generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        u8, p, s = batch
        if preprocess is not None:
            return normalize_images(preprocess(u8, generator)), p, s
        return normalize_images(augment_images(u8, generator=generator) if augment else u8), p, s

    scenes = scenes.long()
    weights = 1.0 / torch.bincount(scenes).float()[scenes] if scene_balanced else None
    return Batches((images, poses.float(), scenes), batch_size, seed, weights=weights, transform=pixels, device=device)


def _train(ctx: Context, art: Artifact, upstream: dict[str, Artifact], out_dir: Path) -> tuple[list, dict]:
    from aprbench.harness.data.images import Preprocess

    teacher, recipe, task_cfg = art.model, art.recipe, art.recipe.task
    train = ctx.data.split("train")
    prep = Preprocess.of(task_cfg)
    images = prep.train_images(train, ctx.store)  # (N, 3, S, S) uint8 (whole resized images for random crops)
    poses, scenes = train.poses(), train.scene_ids()
    if task_cfg.init_bias and hasattr(teacher, "init_output_bias"):
        teacher.init_output_bias(mean_pose(poses))
    task = TeacherTask(teacher, task_cfg.sx, task_cfg.sq, task_cfg.learn_weights, task_cfg.nll_weight).to(ctx.device)
    stages = task_cfg.stages or [{}]
    validate = held_out_errors(ctx, teacher, prep.test_images) if ctx.data.options.get("validation") else None
    names = [n for n, _ in teacher.named_parameters()]
    history: list[dict[str, float]] = []
    for i, stage in enumerate(stages):
        config = replace(recipe.train, **{k: v for k, v in stage.items() if k != "train"})
        if "train" in stage:
            keep = _trainable(names, stage["train"])
            if not keep:
                raise BenchError(f"teacher {art.name!r} stage {i}: pattern {stage['train']!r} matches no parameter")
            for n, p in teacher.named_parameters():
                p.requires_grad_(n in keep)
        else:
            teacher.requires_grad_(True)
        batches = image_batches(images, poses, scenes, config.batch_size, config.seed + i, task_cfg.augment,
                                task_cfg.scene_balanced, ctx.device, preprocess=prep)
        desc = f"{art.name}" + (f" stage {i + 1}/{len(stages)}" if len(stages) > 1 else "")
        history += fit(task, batches, config, desc=desc, progress=ctx.progress, device=ctx.device,
                       precision=ctx.precision, log_kind=ctx.log, validate=validate,
                       **training_paths(out_dir, i if len(stages) > 1 else None))
    teacher.requires_grad_(True)
    return history, {"sx": float(task.loss.sx.detach()), "sq": float(task.loss.sq.detach())}


def held_out_errors(ctx: Context, teacher: Teacher, load: Any) -> Callable[[], dict[str, float]] | None:
    """The per-epoch check of a training on a validation split (``harness.data.datasets.with_validation``):
    median position (``m``, metres) and orientation (``deg``) errors on the held-out frames, and per scene
    (``m_SCENE``, ``deg_SCENE``) for several scenes; ``load(data, store)`` gives their uint8 images.
    ``None`` when there are no held-out frames. The training loop logs them as ``val_*``."""
    from aprbench.harness.data.images import normalize_images

    held = ctx.data.split("test")
    if len(held.labels) == 0:
        return None
    images, poses, sid = load(held, ctx.store), held.poses().numpy(), held.scene_ids().numpy()
    size = 256

    def validate() -> dict[str, float]:
        est = torch.cat([teacher(normalize_images(images[i : i + size]).to(ctx.device))[0].float().cpu()
                         for i in range(0, len(images), size)]).numpy()
        pos, ori = errors(est, poses)
        out = {"m": float(np.median(pos)), "deg": float(np.median(ori))}
        if len(ctx.data.scenes) > 1:
            for row in per_scene(est, poses, sid, ctx.data.scenes).itertuples():
                out[f"m_{row.scene}"], out[f"deg_{row.scene}"] = row.median_m, row.median_deg
        return out

    return validate


TEACHER = Stage("teacher", Teacher, _build_args, _check, _train)


# =========================================================================== outputs
@torch.inference_mode()
def predict(model: Teacher, images: Tensor, batch_size: int = 64, device: torch.device | None = None,
            precision: str = "fp32") -> dict[str, np.ndarray]:
    """Batched teacher outputs over uint8 images ``(N, 3, S, S)``: pose_est, latents, scene_logp (float32
    whatever ``precision`` the forward passes ran under, :func:`harness.training.devices.autocast`), and time_s
    (seconds per frame of the forward pass at ``batch_size``, :func:`harness.running.timing.seconds_per_frame`)."""
    from aprbench.harness.training.devices import autocast
    from aprbench.harness.data.images import normalize_images

    device = device or next(model.parameters()).device
    model.eval()
    out: dict[str, list[np.ndarray]] = {"pose_est": [], "latent_x": [], "latent_q": [], "scene_logp": [], "time_s": []}
    for i in range(0, len(images), batch_size):
        x = normalize_images(images[i : i + batch_size]).to(device)
        with autocast(device, precision):
            est, lat = model(x)
        est = est.float()
        est = torch.cat([est[:, :3], normalize_quat(est[:, 3:])], dim=1)
        logp = lat.scene_logp if lat.scene_logp is not None else est.new_zeros(len(x), 1)
        parts = [est, lat.x, lat.q, logp]
        parts = [p.float().cpu().numpy() for p in parts]
        for key, value in zip(("pose_est", "latent_x", "latent_q", "scene_logp"), parts):
            out[key].append(value)
    # the forward pass's cost per frame: warmed up, repeated, on one batch of ``batch_size`` frames
    x = normalize_images(images[:batch_size]).to(device)

    def forward() -> None:
        with autocast(device, precision):
            model(x)

    out["time_s"].append(np.full(len(images), seconds_per_frame(forward, len(x), device)))
    return {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in out.items()}


def teacher_outputs(ctx: Context, teacher: Artifact, split: str) -> dict[str, np.ndarray]:
    """The teacher's outputs on ``split`` of ``ctx.data``, from the HDF5 store or computed once.

    Forward passes run under ``ctx.precision`` (whose non-fp32 value is part of
    the teacher's fingerprint, hence of these outputs'); stored arrays are float32.
    Keys: ``pose_est (N, 7)`` float32 (unit quaternion), ``pose_gt (N, 7)``,
    ``latent_x``/``latent_q (N, D)``, ``scene_id (N,)`` int64, ``scene_logp (N, S)``
    float32 (zeros ``(N, 1)`` for a single-scene teacher), ``time_s (N,)``
    seconds per frame, ``img_path (N,)`` strings; frames in label order.
    """
    from aprbench.harness.data.images import Preprocess

    data = ctx.data.split(split)
    fp = fingerprint(teacher.fingerprint, data.fingerprint())
    path = ctx.store.outputs_path(fp, split)
    cached = read_h5(path, check=_check_outputs)
    if cached is not None:
        return cached[0]
    with ctx.store.lock(f"outputs-{fp}-{split}"):
        cached = read_h5(path, check=_check_outputs)
        if cached is not None:
            return cached[0]
        size = teacher.recipe.task.image_size
        images = Preprocess.of(teacher.recipe.task).test_images(data, ctx.store)
        model = teacher.model
        with model_threads(teacher.recipe, ctx.device):
            out = predict(model, images, teacher.recipe.task.eval_batch_size, ctx.device, ctx.precision)
        if len(data.labels) == 0:
            out = {"pose_est": np.zeros((0, 7), np.float32), "latent_x": np.zeros((0, model.latent_dim), np.float32),
                   "latent_q": np.zeros((0, model.latent_dim), np.float32),
                   "scene_logp": np.zeros((0, max(1, model.num_scenes if model.multi_scene else 1)), np.float32),
                   "time_s": np.zeros(0)}
        out["pose_gt"] = data.poses().numpy().astype(np.float32)
        out["scene_id"] = data.scene_ids().numpy().astype(np.int64)
        out["img_path"] = data.labels["img_path"].astype(str).tolist()
        attrs = {"teacher": teacher.name, "fingerprint": teacher.fingerprint, "config": teacher.recipe.values(),
                 "split": split, "data_fingerprint": data.fingerprint(), "scenes": list(data.scenes),
                 "image_size": size, "device": str(ctx.device), "precision": ctx.precision}
        write_h5(path, out, attrs)
    return read_h5(path)[0]


OUTPUT_ARRAYS = ["pose_est", "latent_x", "latent_q", "scene_logp", "time_s", "pose_gt", "scene_id", "img_path"]


def _check_outputs(arrays: dict[str, Any], attrs: dict[str, Any]) -> None:
    """A teacher-outputs file holds every array of :data:`OUTPUT_ARRAYS`, one row per frame."""
    require(arrays, OUTPUT_ARRAYS)
    rows = {name: len(arrays[name]) for name in OUTPUT_ARRAYS}
    if len(set(rows.values())) != 1:
        raise Damaged("arrays of different lengths: " + ", ".join(f"{k} {v}" for k, v in rows.items()))


# =========================================================================== evaluation
def evaluate_teacher(ctx: Context, teacher: Artifact, split: str = "test") -> pd.DataFrame:
    """Per-scene summary of the teacher on ``split`` (``harness.results.metrics.summarize`` columns), plus
    ``scene_acc`` (fraction of frames whose scene it classifies right) for a multi-scene teacher
    and ``ms_per_frame``."""
    out = teacher_outputs(ctx, teacher, split)
    frame = per_scene(out["pose_est"], out["pose_gt"], out["scene_id"], ctx.data.scenes)
    sid = np.asarray(out["scene_id"])
    if getattr(teacher.model, "multi_scene", False):
        from aprbench.harness.api.compat import model_scene_index

        logp = np.asarray(out["scene_logp"])
        pred, index = logp.argmax(1), model_scene_index(list(ctx.data.scenes), logp.shape[1])
        if index is not None:  # the model's scene index of each scene (a model of more scenes: its own order)
            frame["scene_acc"] = [float(np.mean(pred[sid == ctx.data.scenes.index(s)] == index[ctx.data.scenes.index(s)]))
                                  for s in frame["scene"]]
    frame["ms_per_frame"] = [1000 * float(np.mean(out["time_s"][sid == ctx.data.scenes.index(s)])) for s in frame["scene"]]
    return frame


def baseline_table(ctx: Context, split: str = "test") -> pd.DataFrame:
    """Per-scene errors of the mean-training-pose predictor (mean over each scene's training frames)."""
    train, test = ctx.data.split("train"), ctx.data.split(split)
    rows = []
    for sid, scene in enumerate(ctx.data.scenes):
        tr = train.labels["scene_id"].to_numpy() == sid
        te = test.labels["scene_id"].to_numpy() == sid
        if not te.any() or not tr.any():
            continue
        pos, ori = mean_pose_baseline(train.poses().numpy()[tr], test.poses().numpy()[te])
        rows.append({"scene": scene, "median_m": float(np.median(pos)), "median_deg": float(np.median(ori))})
    return pd.DataFrame(rows, columns=["scene", "median_m", "median_deg"])


__all__ = [
    "TeacherTask", "TEACHER", "image_batches", "obtain_teacher", "teacher_outputs", "evaluate_teacher", "baseline_table",
    "predict", "mean_pose", "errors",
]
