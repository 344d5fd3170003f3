"""Students as artifacts: distil a pose auto-encoder (PAE) from a teacher's *stored* outputs, evaluate it.

Training reads only the teacher's train-split outputs from the HDF5 store
(``teacher_outputs(ctx, teacher, "train")``: estimated poses, latents, scene
log-probabilities); no image is loaded and the teacher's image encoder never
runs. The teacher is frozen; its heads (``teacher.decode``) decode the
student's latents and gradients flow through them into the student::

    loss = latent_weight * (MSE(lx, tx) + MSE(lq, tq)) + pose_weight * PoseLoss(teacher.decode(lx, lq), gt_pose)

(``(lx, lq) = student(pose_in, scene_in)``; MSE is the mean over elements of
each latent, as the reference sums the two; PoseLoss is Kendall's learned
weighting, ``harness.training.losses``). The reference evaluates the heads under
``torch.no_grad`` so its pose term only moves ``sx``, ``sq``; here it trains
the student too, as the paper describes.

``encode`` chooses what the student encodes during training:

- ``"estimate"`` (the reference): the teacher's estimated pose and, for a
  multi-scene teacher, its predicted scene (argmax of ``scene_logp``), i.e.
  exactly what produced the stored latents;
- ``"ground_truth"`` (the paper's text): the ground-truth pose and scene.

At evaluation the student always encodes the teacher's *estimated* pose (and
predicted scene) and the teacher's heads decode it.

A student recipe resolves (``harness.api.recipes``) into the training loop's config,
:class:`harness.api.recipes.StudentConfig` and the model's config for the plugin's
factory (``shallow``, ``positional_encoding``, ``num_freqs``, ``latent_dim``).
``pose_weight`` is a number or a table by
``encode``: with the estimate as input, the pose term asks the student to
*correct* its teacher on the training frames, which a positionally encoded
MLP memorises and which does not carry over to test estimates (measured on
the synthetic quick teachers: 0.2-1.1 m from the teacher's test estimates
with weight 1, 0.01 m with weight 0, the reference's effective loss since it
runs the heads under ``no_grad``); with the ground truth as input the pose
term is consistent and helps. ``from_teacher = [keys]`` copies those keys
from the teacher's resolved recipe (the paper trains a PAE with its teacher's
configuration); command-line ``--set`` values still win.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aprbench.harness.errors import BenchError
from aprbench.harness.api.interfaces import Student, Teacher, decode_poses
from aprbench.harness.training.losses import PoseLoss
from aprbench.harness.results.metrics import errors, per_scene
from aprbench.harness.poses import normalize_quat
from aprbench.harness.training.batches import Batches
from aprbench.harness.api.compat import check_student, to_model_scenes
from aprbench.harness.api.recipes import ENCODES, Recipe
from aprbench.harness.running.stages.context import Artifact, Context, Stage, obtain, training_paths, under_threads
from aprbench.harness.running.timing import seconds_per_frame
from aprbench.harness.training.loop import fit, held_out_loss

def pose_weight(recipe: Recipe, encode: str) -> float:
    """The recipe's ``pose_weight``: a number, or a table by ``encode`` (``{estimate = 0.0, ground_truth = 1.0}``)."""
    value = recipe.task.pose_weight
    if isinstance(value, dict):
        if encode not in value:
            raise BenchError(f"recipe pose_weight {value} has no entry for encode {encode!r}")
        value = value[encode]
    return float(value)


def _build_args(ctx: Context, upstream: dict[str, Artifact]) -> dict[str, Any]:
    """A student is shaped for its teacher: latent size, scene count and kind (a recipe ``latent_dim`` wins)."""
    t = upstream["teacher"].model
    return {"latent_dim": int(t.latent_dim), "num_scenes": int(getattr(t, "num_scenes", 1)),
            "multi_scene": bool(getattr(t, "multi_scene", False))}


def _check(ctx: Context, recipe: Recipe, student: Student, upstream: dict[str, Artifact]) -> None:
    teacher = upstream["teacher"]
    check_student(recipe.name, student, teacher.name, teacher.model, len(ctx.data.scenes))


def predicted_scene(out: dict[str, np.ndarray], multi_scene: bool) -> np.ndarray:
    """``(N,)`` int64 scene a teacher selected its latents with: argmax of ``scene_logp`` for a
    multi-scene teacher, else the label's scene."""
    logp = np.asarray(out.get("scene_logp", np.zeros((len(out["scene_id"]), 1))))
    if multi_scene and logp.ndim == 2 and logp.shape[1] > 1 and len(logp):
        return logp.argmax(1).astype(np.int64)
    return np.asarray(out["scene_id"], dtype=np.int64)


def student_inputs(out: dict[str, np.ndarray], teacher: Teacher, source: str,
                   raw_quaternion: bool = False, scenes_names: Sequence[str] | None = None) -> tuple[Tensor, Tensor]:
    """``(poses (N, 7), scenes (N,))`` the student encodes: the teacher's estimate and predicted scene
    (``estimate``) or the ground-truth pose and scene (``ground_truth``). Scenes are the teacher's own scene
    index: its prediction, or the label's scene (``scenes_names``: the dataset's scene names) in the teacher's order
    (``harness.api.compat.to_model_scenes``; a 7-scene checkpoint on one scene's label file).

    ``raw_quaternion`` (recipe value; the reference): the estimate with the quaternion as the teacher's
    heads output it, unnormalised, recomputed from the stored latents (``teacher.decode``)."""
    if source not in ENCODES:
        raise BenchError(f"encode must be one of {', '.join(ENCODES)}, got {source!r}")
    if source == "estimate" and raw_quaternion:
        dev = next(iter(teacher.parameters()), torch.empty(0)).device
        scenes = predicted_scene(out, bool(getattr(teacher, "multi_scene", False)))
        sid = torch.as_tensor(np.asarray(scenes), dtype=torch.int64, device=dev)
        with torch.no_grad(), frozen(teacher):
            lx = torch.as_tensor(np.asarray(out["latent_x"]), dtype=torch.float32, device=dev)
            lq = torch.as_tensor(np.asarray(out["latent_q"]), dtype=torch.float32, device=dev)
            poses = torch.cat([decode_poses(teacher, lx[i : i + 4096], lq[i : i + 4096], sid[i : i + 4096])
                               for i in range(0, len(lx), 4096)] or [torch.zeros(0, 7)]).float().cpu()
        poses = poses.numpy()
    elif source == "estimate":
        poses = out["pose_est"]
        scenes = predicted_scene(out, bool(getattr(teacher, "multi_scene", False)))
    else:
        poses, scenes = out["pose_gt"], out["scene_id"]
        if scenes_names is not None:
            scenes = to_model_scenes(scenes, scenes_names, teacher)
    return (torch.as_tensor(np.asarray(poses), dtype=torch.float32),
            torch.as_tensor(np.asarray(scenes), dtype=torch.int64))


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode with no parameter requiring a gradient; both restored afterwards."""
    flags = [p.requires_grad for p in module.parameters()]
    was_training = module.training
    module.eval().requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)
        module.train(was_training)


# =========================================================================== the training task
class StudentTask(nn.Module):
    """A student plus its loss: ``forward((poses, scenes, latent_x, latent_q, gt)) -> (loss, logs)``.

    The teacher is held outside the module tree (not in ``parameters()``,
    ``state_dict()`` or ``train()``): frozen, in eval mode, never checkpointed.
    """

    def __init__(self, student: Student, teacher: Teacher, sx: float = 0.0, sq: float = 0.0,
                 learn_weights: bool = True, latent_weight: float = 1.0, pose_weight: float = 1.0) -> None:
        super().__init__()
        self.student = student
        self.loss = PoseLoss(sx, sq, learnable=learn_weights)
        self.latent_weight, self.pose_weight = float(latent_weight), float(pose_weight)
        self._teacher = (teacher,)  # a tuple hides it from nn.Module's registration

    @property
    def teacher(self) -> Teacher:
        return self._teacher[0]

    def forward(self, batch: tuple[Tensor, ...]) -> tuple[Tensor, dict[str, float]]:
        poses, scenes, tx, tq, gt = batch  # (B, 7), (B,), (B, D), (B, D), (B, 7)
        lx, lq = self.student(poses, scenes if self.student.multi_scene else None)
        mse = F.mse_loss(lx, tx) + F.mse_loss(lq, tq)
        est = decode_poses(self.teacher, lx, lq, scenes)  # (B, 7), gradients flow through the frozen heads
        pose_loss, logs = self.loss(est, gt)
        logs["mse"] = float(mse.detach())
        return self.latent_weight * mse + self.pose_weight * pose_loss, logs


# =========================================================================== obtaining a student
def obtain_student(ctx: Context, name: str, teacher: Artifact, encode: str = "estimate",
                   checkpoint: Path | None = None) -> Artifact:
    """The student ``name`` distilled from ``teacher`` on ``ctx.data``'s training split (from the store when
    there, or the weights of ``checkpoint``); ``encode`` is part of its fingerprint.

    Refuses an incompatible student (latent size, single-scene under a
    multi-scene teacher) before any training.
    """
    if encode not in ENCODES:
        raise BenchError(f"encode must be one of {', '.join(ENCODES)}, got {encode!r}")
    if teacher.model is None:
        raise BenchError(f"teacher {teacher.name!r} has no model: a student needs its teacher's heads")
    pose_weight(ctx.recipe("student", name, teacher.recipe), encode)  # a bad table is refused before any work
    return obtain(ctx, STUDENT, name, {"teacher": teacher}, checkpoint, options={"encode": encode})


def _train(ctx: Context, art: Artifact, upstream: dict[str, Artifact], out_dir: Path) -> tuple[list, dict]:
    from aprbench.harness.running.stages.teacher import teacher_outputs

    teacher, student, recipe = upstream["teacher"], art.model, art.recipe
    encode = _encode_of(art)
    weight = pose_weight(recipe, encode)
    dev = ctx.device

    def tensors(split: str) -> tuple[Tensor, ...]:  # stored teacher outputs: the image encoder does not run again
        out = teacher_outputs(ctx, teacher, split)
        poses, scenes = student_inputs(out, teacher.model, encode, recipe.task.raw_quaternion, ctx.data.scenes)
        return (poses.to(dev), scenes.to(dev), *(torch.as_tensor(np.asarray(out[k]), dtype=torch.float32, device=dev)
                                                 for k in ("latent_x", "latent_q", "pose_gt")))

    train = tensors("train")
    cfg = recipe.task
    teacher_model = teacher.model.to(dev)
    task = StudentTask(student.to(dev), teacher_model, cfg.sx, cfg.sq, cfg.learn_weights, cfg.latent_weight,
                       weight).to(dev)
    validate = None
    if ctx.data.options.get("validation"):  # a validation split: the loss on its held-out frames every epoch
        held = tensors("test")
        validate = held_out_loss(task, Batches(held, max(len(held[0]), 1), 0, device=dev)) if len(held[0]) else None
    with frozen(teacher_model):
        history = fit(task, Batches(train, recipe.train.batch_size, recipe.train.seed, device=dev), recipe.train,
                      desc=f"{art.name} <- {teacher.name}", progress=ctx.progress, device=dev,
                      precision=ctx.precision, log_kind=ctx.log, validate=validate, **training_paths(out_dir))
    return history, {
        "encode": encode, "pose_weight": weight, "teacher": teacher.name, "latent_dim": int(student.latent_dim),
        "multi_scene": bool(student.multi_scene), "sx": float(task.loss.sx.detach()), "sq": float(task.loss.sq.detach()),
    }


def _encode_of(art: Artifact) -> str:
    """What the student artifact encodes in training (its fingerprint option)."""
    return str(art.options.get("encode", "estimate"))


STUDENT = Stage("student", Student, _build_args, _check, _train)


# =========================================================================== outputs
@under_threads
@torch.inference_mode()
def student_outputs(ctx: Context, student: Artifact, teacher: Artifact, split: str) -> dict[str, np.ndarray]:
    """The student on ``split``: it encodes the teacher's *estimated* poses (and predicted scenes),
    the teacher's heads decode them.

    Keys: ``pose_est (N, 7)`` float32 (unit quaternion), ``pose_gt (N, 7)``,
    ``scene_id (N,)`` int64 (labels), ``scene_pred (N,)`` (the scene the student
    was given), ``latent_mse (N,)`` mean squared difference to the teacher's
    latents over both latents' ``2 D`` elements, ``time_s (N,)`` seconds per
    frame of encode + decode at the teacher's ``eval_batch_size`` (warmed up and
    repeated, :func:`harness.running.timing.seconds_per_frame`). Forward passes run under
    ``ctx.precision``'s autocast; outputs are float32.
    """
    from aprbench.harness.training.devices import autocast
    from aprbench.harness.running.stages.teacher import teacher_outputs

    out = teacher_outputs(ctx, teacher, split)
    s_model, t_model = student.model, teacher.model
    dev = next(iter(s_model.parameters()), torch.empty(0)).device
    s_model.eval()
    t_model.eval()
    poses, scenes = student_inputs(out, t_model, "estimate", student.recipe.task.raw_quaternion, ctx.data.scenes)
    tx = torch.as_tensor(np.asarray(out["latent_x"]), dtype=torch.float32)
    tq = torch.as_tensor(np.asarray(out["latent_q"]), dtype=torch.float32)
    n = len(poses)
    bs = max(1, teacher.recipe.task.eval_batch_size)
    est = torch.zeros(n, 7)
    mse = torch.zeros(n)
    multi = bool(getattr(s_model, "multi_scene", False))

    def encode_decode(i: int) -> tuple[Tensor, Tensor, Tensor]:
        p = poses[i : i + bs].to(dev)
        with autocast(dev, ctx.precision):
            lx, lq = s_model(p, scenes[i : i + bs].to(dev) if multi else None)
            return lx, lq, decode_poses(t_model, lx, lq, scenes[i : i + bs].to(dev)).float()

    for i in range(0, n, bs):
        lx, lq, e = encode_decode(i)
        est[i : i + bs] = torch.cat([e[:, :3], normalize_quat(e[:, 3:])], dim=1).float().cpu()
        diff = torch.cat([lx.float().cpu() - tx[i : i + bs], lq.float().cpu() - tq[i : i + bs]], dim=1)
        mse[i : i + bs] = diff.pow(2).mean(dim=1)
    # encode + decode's cost per frame: warmed up, repeated, on one batch of ``eval_batch_size`` poses
    time_s = np.full(n, seconds_per_frame(lambda: encode_decode(0), min(n, bs), dev))
    return {
        "pose_est": est.numpy(), "pose_gt": np.asarray(out["pose_gt"], dtype=np.float32),
        "scene_id": np.asarray(out["scene_id"], dtype=np.int64), "scene_pred": scenes.numpy(),
        "latent_mse": mse.numpy(), "time_s": time_s,
    }


# =========================================================================== evaluation
def evaluate_student(ctx: Context, student: Artifact, teacher: Artifact, split: str = "test") -> pd.DataFrame:
    """Per scene: the student's and the teacher's median / mean errors side by side.

    Columns: ``scene``, ``frames``, ``student_median_m``, ``teacher_median_m``,
    ``student_median_deg``, ``teacher_median_deg``, ``student_mean_m``,
    ``teacher_mean_m``, ``student_mean_deg``, ``teacher_mean_deg``,
    ``ratio_m`` / ``ratio_deg`` (student median / teacher median),
    ``vs_teacher_m`` / ``vs_teacher_deg`` (median distance of the student's
    pose from the teacher's estimate), ``latent_mse`` (mean), and both
    ``student_ms`` / ``teacher_ms`` per frame.
    """
    from aprbench.harness.running.stages.teacher import teacher_outputs

    t_out = teacher_outputs(ctx, teacher, split)
    s_out = student_outputs(ctx, student, teacher, split)
    scenes = ctx.data.scenes
    s_frame = per_scene(s_out["pose_est"], s_out["pose_gt"], s_out["scene_id"], scenes)
    t_frame = per_scene(t_out["pose_est"], t_out["pose_gt"], t_out["scene_id"], scenes)
    dev_m, dev_deg = errors(s_out["pose_est"], t_out["pose_est"])
    sid = np.asarray(s_out["scene_id"])
    rows = []
    for s_row, t_row in zip(s_frame.to_dict("records"), t_frame.to_dict("records")):
        mask = sid == scenes.index(s_row["scene"])
        rows.append({
            "scene": s_row["scene"], "frames": s_row["frames"],
            "student_median_m": s_row["median_m"], "teacher_median_m": t_row["median_m"],
            "student_median_deg": s_row["median_deg"], "teacher_median_deg": t_row["median_deg"],
            "student_mean_m": s_row["mean_m"], "teacher_mean_m": t_row["mean_m"],
            "student_mean_deg": s_row["mean_deg"], "teacher_mean_deg": t_row["mean_deg"],
            "ratio_m": s_row["median_m"] / t_row["median_m"] if t_row["median_m"] > 0 else float("nan"),
            "ratio_deg": s_row["median_deg"] / t_row["median_deg"] if t_row["median_deg"] > 0 else float("nan"),
            "vs_teacher_m": float(np.median(dev_m[mask])), "vs_teacher_deg": float(np.median(dev_deg[mask])),
            "latent_mse": float(np.mean(s_out["latent_mse"][mask])),
            "student_ms": 1000 * float(np.mean(s_out["time_s"][mask])),
            "teacher_ms": 1000 * float(np.mean(np.asarray(t_out["time_s"])[mask])),
        })
    return pd.DataFrame(rows)


__all__ = [
    "ENCODES", "StudentTask", "STUDENT", "obtain_student", "student_outputs", "evaluate_student",
    "student_inputs", "predicted_scene", "pose_weight",
]
