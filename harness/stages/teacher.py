"""Teachers as artifacts: train (or load) an APR, cache its outputs per split, evaluate it.

A teacher recipe (``registry.toml``, kind ``teacher``) is flat: the keys of
:class:`harness.train.TrainConfig`, the task keys in ``TASK_KEYS`` below, and
everything else goes to the plugin's factory (``backbone``, ``d_model``, ...).

``stages`` (optional) is a list of tables, each a fine-tuning stage run after
the previous one: ``train`` (a glob, ``re:REGEX``, or a list of them, matched
against the teacher's parameter names; the rest is frozen, the loss weights
always train) plus any ``TrainConfig`` keys for that stage (``epochs``, ``lr``, ...).
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.errors import BenchError
from harness.interfaces import PoseData, Teacher
from harness.losses import PoseLoss
from harness.metrics import errors, mean_pose_baseline, per_scene
from harness.poses import normalize_quat, pose_errors
from harness.stages.context import Artifact, Context, train_once
from harness.store import fingerprint, load_into, load_state, read_h5, save_state, write_h5
from harness.train import TrainConfig, distributed_env, fit

# recipe keys the training task reads (never passed to the model factory)
TASK_KEYS = {
    "sx", "sq", "learn_weights", "nll_weight", "image_size", "augment", "scene_balanced",
    "stages", "eval_batch_size", "init_bias", "description",
}
TRAIN_KEYS = set(TrainConfig.__dataclass_fields__)
DEFAULTS: dict[str, Any] = {
    "sx": 0.0, "sq": 0.0, "learn_weights": True, "nll_weight": 1.0, "image_size": 64, "augment": True,
    "scene_balanced": False, "eval_batch_size": 64, "init_bias": True,
}


def model_config(recipe: dict[str, Any]) -> dict[str, Any]:
    """The part of a recipe that the teacher factory receives."""
    return {k: v for k, v in recipe.items() if k not in TASK_KEYS | TRAIN_KEYS}


from harness.poses import mean_pose  # noqa: E402  (moved to the pose module)


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


class ImageBatches:
    """Training batches sliced from a preloaded uint8 image tensor, augmented and normalised per batch.

    ``__call__(epoch, rank, world)`` yields ``(images float (B, 3, S, S), poses (B, 7), scenes (B,))``
    on ``device``. The order depends only on ``(seed, epoch)`` (shared by all
    ranks, each taking every ``world``-th frame of it, equal counts) and the
    augmentation on ``(seed, epoch, rank)``, so a resumed epoch replays exactly.
    ``scene_balanced`` draws scenes uniformly, then frames within a scene.
    The last partial batch is dropped when there is more than one batch.
    """

    def __init__(self, images: Tensor, poses: Tensor, scenes: Tensor, batch_size: int, seed: int = 0,
                 augment: bool = True, scene_balanced: bool = False, device: torch.device | None = None) -> None:
        self.images, self.poses, self.scenes = images, poses.float(), scenes.long()
        self.batch_size, self.seed, self.augment = batch_size, seed, augment
        self.scene_balanced = scene_balanced
        self.device = device or torch.device("cpu")

    def order(self, epoch: int) -> Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        n = len(self.poses)
        if not self.scene_balanced:
            return torch.randperm(n, generator=g)
        counts = torch.bincount(self.scenes).float()
        weights = 1.0 / counts[self.scenes]
        return torch.multinomial(weights, n, replacement=True, generator=g)

    def __call__(self, epoch: int, rank: int = 0, world: int = 1) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        from harness.images import augment_images, normalize_images

        order = self.order(epoch)
        per_rank = len(order) // world
        mine = order[: per_rank * world][rank::world]
        bs = max(1, self.batch_size // world)  # the global batch is split over the ranks
        stop = len(mine) - len(mine) % bs if len(mine) > bs else len(mine)
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 1009 + rank)
        for i in range(0, stop, bs):
            idx = mine[i : i + bs]
            u8 = self.images[idx]  # (B, 3, S, S) uint8
            if self.augment:
                u8 = augment_images(u8, generator=g)
            yield (normalize_images(u8).to(self.device), self.poses[idx].to(self.device), self.scenes[idx].to(self.device))


# =========================================================================== obtaining a teacher
def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def build_teacher(ctx: Context, name: str, recipe: dict[str, Any]) -> Teacher:
    """The untrained teacher ``name`` with the model part of ``recipe``."""
    try:
        teacher = ctx.registry.build("teacher", name, num_scenes=len(ctx.data.scenes), **model_config(recipe))
    except TypeError as exc:
        raise BenchError(f"teacher {name!r}: bad recipe option ({exc}); model options: {sorted(model_config(recipe))}") from None
    if not isinstance(teacher, Teacher):
        raise BenchError(f"teacher plugin {name!r} built a {type(teacher).__name__}, not a harness Teacher")
    return teacher


def checkpoint_state(path: Path) -> dict[str, Tensor]:
    """A teacher state dict from a user checkpoint (``weights_only``): plain, or nested under
    ``state_dict`` / ``model`` / ``model_state_dict``, or one of our training checkpoints."""
    state = load_state(path)
    if "task" in state and isinstance(state["task"], dict):  # harness.train checkpoint
        state = {k.removeprefix("teacher."): v for k, v in state["task"].items() if k.startswith("teacher.")}
    for key in ("state_dict", "model_state_dict", "model"):
        if key in state and isinstance(state[key], dict):
            state = state[key]
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise BenchError(f"checkpoint {path}: not a state dict of tensors (entries {bad[:5]} are not tensors)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def obtain_teacher(ctx: Context, name: str, checkpoint: Path | None = None) -> Artifact:
    """The teacher ``name`` trained with its recipe on ``ctx.data``'s training split (from the store when there).

    With ``checkpoint``, its weights come from that file instead of training.
    Training runs under a store lock, so two processes never train the same
    artifact; an interrupted training resumes from ``artifact_dir/checkpoints``.
    """
    recipe = {**DEFAULTS, **ctx.recipe("teacher", name)}
    train = ctx.data.split("train")
    if len(train.labels) == 0 and checkpoint is None:
        raise BenchError(f"dataset {ctx.dataset!r} has no training frames for scenes {ctx.data.scenes}")
    source = ctx.registry.get("teacher", name).source
    upstream = {"data": train.fingerprint()}
    parts: list[Any] = ["teacher", name, recipe, ctx.dataset, upstream["data"]]
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():
            raise BenchError(f"teacher checkpoint {checkpoint} does not exist")
        upstream["checkpoint"] = _file_hash(checkpoint)
        parts.append(upstream["checkpoint"])
    torch.manual_seed(int(recipe.get("seed", 0)))
    teacher = build_teacher(ctx, name, recipe)
    parts.append(getattr(teacher, "version", "0"))
    fp = fingerprint(*parts)
    out_dir = ctx.store.artifact_dir("teacher", name, fp)
    weights = out_dir / "weights.pth"
    art = Artifact("teacher", name, fp, recipe, teacher, weights, upstream)

    if checkpoint is not None:
        load_into(teacher, checkpoint_state(checkpoint), source=f"checkpoint {checkpoint}")
        teacher.to(ctx.device).eval()
        art.path = checkpoint
        return art
    train_once(ctx, "teacher", name, fp, teacher, weights, lambda: _train(ctx, name, teacher, recipe, train, out_dir, source))
    return art


def _trainable(names: list[str], patterns: str | list[str]) -> set[str]:
    pats = [patterns] if isinstance(patterns, str) else list(patterns)
    keep = set()
    for n in names:
        for p in pats:
            if (p.startswith("re:") and re.search(p[3:], n)) or fnmatch.fnmatchcase(n, p):
                keep.add(n)
    return keep


def _train(ctx: Context, name: str, teacher: Teacher, recipe: dict[str, Any], train: PoseData, out_dir: Path, source: str) -> None:
    from harness.images import load_images

    images = load_images(train, int(recipe["image_size"]), ctx.store)  # (N, 3, S, S) uint8
    poses, scenes = train.poses(), train.scene_ids()
    if recipe.get("init_bias", True) and hasattr(teacher, "init_output_bias"):
        teacher.init_output_bias(mean_pose(poses))
    task = TeacherTask(teacher, float(recipe["sx"]), float(recipe["sq"]), bool(recipe["learn_weights"]),
                       float(recipe["nll_weight"])).to(ctx.device)
    stages = recipe.get("stages") or [{}]
    names = [n for n, _ in teacher.named_parameters()]
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    for i, stage in enumerate(stages):
        config = TrainConfig.from_recipe({**recipe, **stage})
        if "train" in stage:
            keep = _trainable(names, stage["train"])
            if not keep:
                raise BenchError(f"teacher {name!r} stage {i}: pattern {stage['train']!r} matches no parameter")
            for n, p in teacher.named_parameters():
                p.requires_grad_(n in keep)
        else:
            teacher.requires_grad_(True)
        batches = ImageBatches(images, poses, scenes, config.batch_size, seed=config.seed + i,
                               augment=bool(recipe["augment"]), scene_balanced=bool(recipe["scene_balanced"]),
                               device=ctx.device)
        ckpt_dir = out_dir / "checkpoints" / (f"stage{i}" if len(stages) > 1 else "")
        desc = f"{name}" + (f" stage {i + 1}/{len(stages)}" if len(stages) > 1 else "")
        history += fit(task, batches, config, ckpt_dir, desc=desc, progress=ctx.progress, device=ctx.device)
    teacher.requires_grad_(True)
    if distributed_env()[0] != 0:
        return
    meta = {
        "kind": "teacher", "name": name, "source": source, "recipe": recipe, "dataset": ctx.dataset,
        "scenes": train.scenes, "train_frames": len(train.labels), "data_fingerprint": train.fingerprint(),
        "epochs": len(history), "train_seconds": sum(h.get("seconds", 0.0) for h in history),
        "wall_seconds": time.perf_counter() - t0, "final": history[-1] if history else {},
        "sx": float(task.loss.sx.detach()), "sq": float(task.loss.sq.detach()), "torch": torch.__version__,
    }
    save_state(out_dir / "weights.pth", teacher.state_dict(), meta=meta)


# =========================================================================== outputs
def _image_size(teacher: Artifact) -> int:
    return int(teacher.config.get("image_size", DEFAULTS["image_size"]))


@torch.inference_mode()
def predict(model: Teacher, images: Tensor, batch_size: int = 64, device: torch.device | None = None) -> dict[str, np.ndarray]:
    """Batched teacher outputs over uint8 images ``(N, 3, S, S)``: pose_est, latents, scene_logp, time_s."""
    from harness.images import normalize_images

    device = device or next(model.parameters()).device
    model.eval()
    out: dict[str, list[np.ndarray]] = {"pose_est": [], "latent_x": [], "latent_q": [], "scene_logp": [], "time_s": []}
    for i in range(0, len(images), batch_size):
        t0 = time.perf_counter()
        x = normalize_images(images[i : i + batch_size]).to(device)
        est, lat = model(x)
        est = torch.cat([est[:, :3], normalize_quat(est[:, 3:])], dim=1)
        logp = lat.scene_logp if lat.scene_logp is not None else est.new_zeros(len(x), 1)
        parts = [est, lat.x, lat.q, logp]
        parts = [p.float().cpu().numpy() for p in parts]
        dt = (time.perf_counter() - t0) / len(x)
        for key, value in zip(("pose_est", "latent_x", "latent_q", "scene_logp"), parts):
            out[key].append(value)
        out["time_s"].append(np.full(len(x), dt))
    return {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in out.items()}


def teacher_outputs(ctx: Context, teacher: Artifact, split: str) -> dict[str, np.ndarray]:
    """The teacher's outputs on ``split`` of ``ctx.data``, from the HDF5 store or computed once.

    Keys: ``pose_est (N, 7)`` float32 (unit quaternion), ``pose_gt (N, 7)``,
    ``latent_x``/``latent_q (N, D)``, ``scene_id (N,)`` int64, ``scene_logp (N, S)``
    float32 (zeros ``(N, 1)`` for a single-scene teacher), ``time_s (N,)``
    seconds per frame, ``img_path (N,)`` strings; frames in label order.
    """
    from harness.images import load_images

    data = ctx.data.split(split)
    fp = fingerprint(teacher.fingerprint, data.fingerprint())
    path = ctx.store.outputs_path(fp, split)
    cached = read_h5(path)
    if cached is not None:
        return cached[0]
    with ctx.store.lock(f"outputs-{fp}-{split}"):
        cached = read_h5(path)
        if cached is not None:
            return cached[0]
        size = _image_size(teacher)
        images = load_images(data, size, ctx.store)
        model = teacher.model
        out = predict(model, images, int(teacher.config.get("eval_batch_size", 64)), ctx.device)
        if len(data.labels) == 0:
            out = {"pose_est": np.zeros((0, 7), np.float32), "latent_x": np.zeros((0, model.latent_dim), np.float32),
                   "latent_q": np.zeros((0, model.latent_dim), np.float32),
                   "scene_logp": np.zeros((0, max(1, model.num_scenes if model.multi_scene else 1)), np.float32),
                   "time_s": np.zeros(0)}
        out["pose_gt"] = data.poses().numpy().astype(np.float32)
        out["scene_id"] = data.scene_ids().numpy().astype(np.int64)
        out["img_path"] = data.labels["img_path"].astype(str).tolist()
        attrs = {"teacher": teacher.name, "fingerprint": teacher.fingerprint, "config": teacher.config,
                 "split": split, "data_fingerprint": data.fingerprint(), "scenes": list(data.scenes),
                 "image_size": size}
        write_h5(path, out, attrs)
    return read_h5(path)[0]


# =========================================================================== evaluation
def evaluate_teacher(ctx: Context, teacher: Artifact, split: str = "test") -> pd.DataFrame:
    """Per-scene summary of the teacher on ``split`` (``harness.metrics.summarize`` columns), plus
    ``scene_acc`` (fraction of frames whose scene it classifies right) for a multi-scene teacher
    and ``ms_per_frame``."""
    out = teacher_outputs(ctx, teacher, split)
    frame = per_scene(out["pose_est"], out["pose_gt"], out["scene_id"], ctx.data.scenes)
    sid = np.asarray(out["scene_id"])
    if getattr(teacher.model, "multi_scene", False):
        pred = np.asarray(out["scene_logp"]).argmax(1)
        frame["scene_acc"] = [float(np.mean(pred[sid == ctx.data.scenes.index(s)] == ctx.data.scenes.index(s))) for s in frame["scene"]]
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
    "TeacherTask", "ImageBatches", "obtain_teacher", "teacher_outputs", "evaluate_teacher", "baseline_table",
    "predict", "mean_pose", "model_config", "errors",
]
