"""Students as artifacts: distil a pose auto-encoder (PAE) from a teacher's *stored* outputs, evaluate it.

Training reads only the teacher's train-split outputs from the HDF5 store
(``teacher_outputs(ctx, teacher, "train")``: estimated poses, latents, scene
log-probabilities); no image is loaded and the teacher's image encoder never
runs. The teacher is frozen; its heads (``teacher.decode``) decode the
student's latents and gradients flow through them into the student::

    loss = latent_weight * (MSE(lx, tx) + MSE(lq, tq)) + pose_weight * PoseLoss(teacher.decode(lx, lq), gt_pose)

(``(lx, lq) = student(pose_in, scene_in)``; MSE is the mean over elements of
each latent, as the reference sums the two; PoseLoss is Kendall's learned
weighting, ``harness.losses``). The reference evaluates the heads under
``torch.no_grad`` so its pose term only moves ``sx``, ``sq``; here it trains
the student too, as the paper describes.

``encode`` chooses what the student encodes during training:

- ``"estimate"`` (the reference): the teacher's estimated pose and, for a
  multi-scene teacher, its predicted scene (argmax of ``scene_logp``), i.e.
  exactly what produced the stored latents;
- ``"ground_truth"`` (the paper's text): the ground-truth pose and scene.

At evaluation the student always encodes the teacher's *estimated* pose (and
predicted scene) and the teacher's heads decode it.

A student recipe (``registry.toml``, kind ``student``) is flat: the keys of
:class:`harness.train.TrainConfig`, the task keys in ``TASK_KEYS`` and
everything else for the plugin's factory (``shallow``, ``positional_encoding``,
``num_freqs``, ``latent_dim``). ``pose_weight`` is a number or a table by
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
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.errors import BenchError
from harness.interfaces import Student, Teacher
from harness.losses import PoseLoss
from harness.metrics import errors, per_scene
from harness.poses import normalize_quat
from harness.stages.context import Artifact, Context, plugin_version, train_once
from harness.store import fingerprint, save_state
from harness.train import TrainConfig, distributed_env, fit

ENCODES = ("estimate", "ground_truth")
# recipe keys the training task reads (never passed to the model factory)
TASK_KEYS = {"sx", "sq", "learn_weights", "latent_weight", "pose_weight", "from_teacher", "num_threads", "description",
             "raw_quaternion"}
TRAIN_KEYS = set(TrainConfig.__dataclass_fields__)
DEFAULTS: dict[str, Any] = {"sx": 0.0, "sq": 0.0, "learn_weights": True, "latent_weight": 1.0, "pose_weight": 1.0,
                           "num_threads": 0}


def model_config(recipe: dict[str, Any]) -> dict[str, Any]:
    """The part of a recipe that the student factory receives."""
    return {k: v for k, v in recipe.items() if k not in TASK_KEYS | TRAIN_KEYS}


def pose_weight(recipe: dict[str, Any], encode: str) -> float:
    """The recipe's ``pose_weight``: a number, or a table by ``encode`` (``{estimate = 0.0, ground_truth = 1.0}``)."""
    value = recipe.get("pose_weight", 1.0)
    if isinstance(value, dict):
        if encode not in value:
            raise BenchError(f"recipe pose_weight {value} has no entry for encode {encode!r}")
        value = value[encode]
    return float(value)


def student_recipe(ctx: Context, name: str, teacher: Artifact) -> dict[str, Any]:
    """The resolved recipe: defaults, registry tables, ``from_teacher`` keys, then ``--set`` overrides."""
    recipe = {**DEFAULTS, **ctx.recipe("student", name)}
    inherit = recipe.get("from_teacher") or []
    if isinstance(inherit, str):
        inherit = [inherit]
    copied = {k: teacher.config[k] for k in inherit if k in (teacher.config or {})}
    return {**recipe, **copied, **ctx.overrides.get("student", {})}


def build_student(ctx: Context, name: str, recipe: dict[str, Any], teacher: Teacher) -> Student:
    """The untrained student ``name`` shaped for ``teacher`` (its latent size, scene count and kind).

    A ``latent_dim`` in the recipe overrides the teacher's (and is then refused if it differs).
    """
    config = {"latent_dim": int(teacher.latent_dim), "num_scenes": int(getattr(teacher, "num_scenes", 1)),
              "multi_scene": bool(getattr(teacher, "multi_scene", False)), **model_config(recipe)}
    try:
        student = ctx.registry.build("student", name, **config)
    except TypeError as exc:
        raise BenchError(f"student {name!r}: bad recipe option ({exc}); model options: {sorted(model_config(recipe))}") from None
    if not isinstance(student, nn.Module) or not callable(student):
        raise BenchError(f"student plugin {name!r} built a {type(student).__name__}, not a harness Student")
    return student


def check_compatible(ctx: Context, name: str, student: Student, teacher: Artifact) -> None:
    """Refuse (``BenchError``) a student that cannot reproduce ``teacher``'s latents, before any training."""
    t = teacher.model
    s_dim, t_dim = int(getattr(student, "latent_dim", -1)), int(t.latent_dim)
    if s_dim != t_dim:
        raise BenchError(
            f"student {name!r} has latent size {s_dim} but teacher {teacher.name!r} has latent size {t_dim}; "
            "a student must reproduce its teacher's latents"
        )
    if getattr(t, "multi_scene", False) and not getattr(student, "multi_scene", False) and len(ctx.data.scenes) > 1:
        raise BenchError(
            f"student {name!r} is single-scene but teacher {teacher.name!r} is multi-scene over "
            f"{len(ctx.data.scenes)} scenes ({', '.join(ctx.data.scenes)}); its latents depend on the scene: "
            "use a multi-scene student"
        )


def predicted_scene(out: dict[str, np.ndarray], multi_scene: bool) -> np.ndarray:
    """``(N,)`` int64 scene a teacher selected its latents with: argmax of ``scene_logp`` for a
    multi-scene teacher, else the label's scene."""
    logp = np.asarray(out.get("scene_logp", np.zeros((len(out["scene_id"]), 1))))
    if multi_scene and logp.ndim == 2 and logp.shape[1] > 1 and len(logp):
        return logp.argmax(1).astype(np.int64)
    return np.asarray(out["scene_id"], dtype=np.int64)


def student_inputs(out: dict[str, np.ndarray], teacher: Teacher, source: str,
                   raw_quaternion: bool = False) -> tuple[Tensor, Tensor]:
    """``(poses (N, 7), scenes (N,))`` the student encodes: the teacher's estimate and predicted scene
    (``estimate``) or the ground-truth pose and scene (``ground_truth``).

    ``raw_quaternion`` (recipe value; the reference): the estimate with the quaternion as the teacher's
    heads output it, unnormalised, recomputed from the stored latents (``teacher.decode``)."""
    if source not in ENCODES:
        raise BenchError(f"encode must be one of {', '.join(ENCODES)}, got {source!r}")
    if source == "estimate" and raw_quaternion:
        dev = next(iter(teacher.parameters()), torch.empty(0)).device
        with torch.no_grad(), frozen(teacher):
            lx = torch.as_tensor(np.asarray(out["latent_x"]), dtype=torch.float32, device=dev)
            lq = torch.as_tensor(np.asarray(out["latent_q"]), dtype=torch.float32, device=dev)
            poses = torch.cat([teacher.decode(lx[i : i + 4096], lq[i : i + 4096]) for i in range(0, len(lx), 4096)]
                              or [torch.zeros(0, 7)]).float().cpu()
        poses = poses.numpy()
        scenes = predicted_scene(out, bool(getattr(teacher, "multi_scene", False)))
    elif source == "estimate":
        poses = out["pose_est"]
        scenes = predicted_scene(out, bool(getattr(teacher, "multi_scene", False)))
    else:
        poses, scenes = out["pose_gt"], out["scene_id"]
    return (torch.as_tensor(np.asarray(poses), dtype=torch.float32),
            torch.as_tensor(np.asarray(scenes), dtype=torch.int64))


@contextlib.contextmanager
def cpu_threads(n: int, device: torch.device) -> Iterator[None]:
    """``torch.set_num_threads(n)`` for the block when training on the CPU (``n`` <= 0: unchanged).

    A PAE step is a few small matrix products: one thread avoids the cost of
    synchronising several, which dominates on a shared or busy machine.
    """
    if n <= 0 or device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
        est = self.teacher.decode(lx, lq)  # (B, 7), gradients flow through the frozen heads
        pose_loss, logs = self.loss(est, gt)
        logs["mse"] = float(mse.detach())
        return self.latent_weight * mse + self.pose_weight * pose_loss, logs


class TensorBatches:
    """Training batches sliced from tensors already on the device: one permutation per epoch.

    ``__call__(epoch, rank, world)`` yields tuples of ``(B, ...)`` slices of
    ``tensors`` (same first dimension). The order depends only on ``(seed,
    epoch)`` (shared by all ranks, each taking every ``world``-th frame), so a
    resumed epoch replays exactly. The last partial batch is dropped when
    there is more than one batch.
    """

    def __init__(self, tensors: tuple[Tensor, ...], batch_size: int, seed: int = 0) -> None:
        self.tensors, self.batch_size, self.seed = tensors, int(batch_size), int(seed)
        self.n = len(tensors[0])

    def __call__(self, epoch: int, rank: int = 0, world: int = 1) -> Iterator[tuple[Tensor, ...]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(self.n, generator=g)
        per_rank = self.n // world
        mine = order[: per_rank * world][rank::world].to(self.tensors[0].device)
        shuffled = tuple(t[mine] for t in self.tensors)  # one gather per epoch, then views
        bs = max(1, self.batch_size // world)
        stop = len(mine) - len(mine) % bs if len(mine) > bs else len(mine)
        for i in range(0, stop, bs):
            yield tuple(t[i : i + bs] for t in shuffled)


# =========================================================================== obtaining a student
def obtain_student(ctx: Context, name: str, teacher: Artifact, encode: str = "estimate") -> Artifact:
    """The student ``name`` distilled from ``teacher`` on ``ctx.data``'s training split (from the store when there).

    Refuses an incompatible student (latent size, single-scene under a
    multi-scene teacher) before any training. Fingerprint: name, plugin
    version, recipe, ``encode``, teacher fingerprint, training-split
    fingerprint. Training runs under a store lock and resumes from
    ``artifact_dir/checkpoints``; weights and a JSON sidecar are stored.
    """
    if encode not in ENCODES:
        raise BenchError(f"encode must be one of {', '.join(ENCODES)}, got {encode!r}")
    if teacher.model is None:
        raise BenchError(f"teacher {teacher.name!r} has no model: a student needs its teacher's heads")
    recipe = student_recipe(ctx, name, teacher)
    pose_weight(recipe, encode)  # a bad table is refused before any work
    torch.manual_seed(int(recipe.get("seed", 0)))
    student = build_student(ctx, name, recipe, teacher.model)
    check_compatible(ctx, name, student, teacher)
    train = ctx.data.split("train")
    upstream = {"teacher": teacher.fingerprint, "data": train.fingerprint()}
    fp = fingerprint("student", name, plugin_version(ctx, "student", name), recipe, encode, upstream)
    out_dir = ctx.store.artifact_dir("student", name, fp)
    weights = out_dir / "weights.pth"
    art = Artifact("student", name, fp, {**recipe, "encode": encode}, student, weights, upstream)
    train_once(ctx, "student", name, fp, student, weights, lambda: _train(ctx, name, student, recipe, teacher, encode, out_dir))
    return art


def _train(ctx: Context, name: str, student: Student, recipe: dict[str, Any], teacher: Artifact, encode: str,
           out_dir: Path) -> None:
    from harness.stages.teacher import teacher_outputs

    t0 = time.perf_counter()
    out = teacher_outputs(ctx, teacher, "train")  # stored: the image encoder does not run again
    if len(out["pose_gt"]) == 0:
        raise BenchError(f"dataset {ctx.dataset!r} has no training frames for scenes {ctx.data.scenes}")
    dev = ctx.device
    poses, scenes = student_inputs(out, teacher.model, encode, bool(recipe.get("raw_quaternion", False)))
    tensors = (
        poses.to(dev), scenes.to(dev),
        torch.as_tensor(np.asarray(out["latent_x"]), dtype=torch.float32, device=dev),
        torch.as_tensor(np.asarray(out["latent_q"]), dtype=torch.float32, device=dev),
        torch.as_tensor(np.asarray(out["pose_gt"]), dtype=torch.float32, device=dev),
    )
    config = TrainConfig.from_recipe(recipe)
    teacher_model = teacher.model.to(dev)
    task = StudentTask(student.to(dev), teacher_model, float(recipe["sx"]), float(recipe["sq"]),
                       bool(recipe["learn_weights"]), float(recipe["latent_weight"]),
                       pose_weight(recipe, encode)).to(dev)
    with frozen(teacher_model), cpu_threads(int(recipe.get("num_threads", 0)), dev):
        history = fit(task, TensorBatches(tensors, config.batch_size, config.seed), config, out_dir / "checkpoints",
                      desc=f"{name} <- {teacher.name}", progress=ctx.progress, device=dev)
    if distributed_env()[0] != 0:
        return
    meta = {
        "kind": "student", "name": name, "source": ctx.registry.get("student", name).source, "recipe": recipe,
        "encode": encode, "pose_weight": pose_weight(recipe, encode), "teacher": teacher.name, "teacher_fingerprint": teacher.fingerprint,
        "dataset": ctx.dataset, "scenes": ctx.data.scenes, "train_frames": int(len(out["pose_gt"])),
        "data_fingerprint": ctx.data.split("train").fingerprint(), "latent_dim": int(student.latent_dim),
        "multi_scene": bool(student.multi_scene), "epochs": len(history),
        "train_seconds": sum(h.get("seconds", 0.0) for h in history), "wall_seconds": time.perf_counter() - t0,
        "first": history[0] if history else {}, "final": history[-1] if history else {},
        "sx": float(task.loss.sx.detach()), "sq": float(task.loss.sq.detach()), "torch": torch.__version__,
    }
    save_state(out_dir / "weights.pth", student.state_dict(), meta=meta)


# =========================================================================== outputs
@torch.inference_mode()
def student_outputs(ctx: Context, student: Artifact, teacher: Artifact, split: str) -> dict[str, np.ndarray]:
    """The student on ``split``: it encodes the teacher's *estimated* poses (and predicted scenes),
    the teacher's heads decode them.

    Keys: ``pose_est (N, 7)`` float32 (unit quaternion), ``pose_gt (N, 7)``,
    ``scene_id (N,)`` int64 (labels), ``scene_pred (N,)`` (the scene the student
    was given), ``latent_mse (N,)`` mean squared difference to the teacher's
    latents over both latents' ``2 D`` elements, ``time_s (N,)`` seconds per
    frame of encode + decode (batched as the teacher's outputs were, its
    ``eval_batch_size``).
    """
    from harness.stages.teacher import teacher_outputs

    out = teacher_outputs(ctx, teacher, split)
    s_model, t_model = student.model, teacher.model
    dev = next(iter(s_model.parameters()), torch.empty(0)).device
    s_model.eval()
    t_model.eval()
    poses, scenes = student_inputs(out, t_model, "estimate", bool((student.config or {}).get("raw_quaternion", False)))
    tx = torch.as_tensor(np.asarray(out["latent_x"]), dtype=torch.float32)
    tq = torch.as_tensor(np.asarray(out["latent_q"]), dtype=torch.float32)
    n = len(poses)
    bs = max(1, int(teacher.config.get("eval_batch_size", 64)))
    est = torch.zeros(n, 7)
    mse = torch.zeros(n)
    time_s = np.zeros(n)
    multi = bool(getattr(s_model, "multi_scene", False))
    for i in range(0, n, bs):
        t0 = time.perf_counter()
        p = poses[i : i + bs].to(dev)
        lx, lq = s_model(p, scenes[i : i + bs].to(dev) if multi else None)
        e = t_model.decode(lx, lq)
        e = torch.cat([e[:, :3], normalize_quat(e[:, 3:])], dim=1).float().cpu()
        time_s[i : i + bs] = (time.perf_counter() - t0) / len(p)
        est[i : i + bs] = e
        diff = torch.cat([lx.float().cpu() - tx[i : i + bs], lq.float().cpu() - tq[i : i + bs]], dim=1)
        mse[i : i + bs] = diff.pow(2).mean(dim=1)
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
    from harness.stages.teacher import teacher_outputs

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
    "ENCODES", "StudentTask", "TensorBatches", "obtain_student", "student_outputs", "evaluate_student",
    "build_student", "check_compatible", "student_recipe", "student_inputs", "predicted_scene",
]
