"""Refiners as artifacts: train (or load) a relative pose regressor, run the iAPR loop, evaluate it.

A refiner recipe (``registry.toml``, kind ``refiner``) is flat: the keys of
:class:`harness.train.TrainConfig`, the task keys in ``TASK_KEYS`` below, and
everything else goes to the plugin's factory (``d_model``, ``layers``, ...).

Training (frozen image encoder, the default) reads the teacher's stored
train-split outputs; it never re-runs the teacher. A training pair is a query
frame (its teacher latents) and a reference pose with latents:

* ``pairs = "nearest"``: the ``k`` nearest training frames of the same scene in
  pose space (the reference's way). Reference latents: the frame's stored
  teacher latents (``image-rpr``) or the PAE's encoding of its pose (``pae-rpr``).
* ``pairs = "virtual"`` (``pae-rpr`` only): ``virtual`` poses per frame sampled
  around the ground truth, new ones every epoch, encoded by the PAE. The
  spread (``std_m`` metres / ``std_deg`` degrees per axis) is
  ``spread_scale`` times the teacher's per-axis RMS error on the training
  frames of the frame's scene (a multi-scene teacher errs by metres outdoors
  and decimetres indoors), measured from its stored outputs, unless the
  recipe fixes it.
* ``pairs = "both"``: the union of the two.

The target is ``rel(query_gt -> reference)`` (``harness.poses.relative_pose``).
``finetune = true`` trains a copy of the teacher's image encoder together with
the RPR from the training images (the reference's way; slower); the copy is
kept in the refiner as ``image_encoder`` and encodes the query images at test
time (once per frame).

Inference (:func:`refine`), ``K`` iterations batched over all frames::

    p_0 = teacher estimate (stored); query latents computed once (stored)
    p_{k+1} = compose(ref_pose_k, invert_relative(RPR(query latents, ref latents_k)))

with ``ref_pose_k = p_k`` and ``ref latents_k = PAE(p_k, scene)`` for
``pae-rpr``, or the training frame nearest ``p_k`` (its ground truth and stored
latents) for ``image-rpr``. A multi-scene teacher's predicted scene (argmax
of its stored ``scene_logp``) selects the PAE's scene and the retrieval database.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from harness import poses as P
from harness.errors import BenchError
from harness.interfaces import Refiner
from harness.losses import PoseLoss
from harness.metrics import per_scene
from harness.stages.context import Artifact, Context, plugin_version, train_once
from harness.store import fingerprint, save_state
from harness.train import TrainConfig, distributed_env, fit

# recipe keys the training task reads (never passed to the model factory)
TASK_KEYS = {
    "pairs", "k", "virtual", "orientation_weight", "spread_scale", "std_m", "std_deg", "min_std_m", "min_std_deg",
    "sx", "sq", "learn_weights", "finetune", "augment", "eval_batch_size", "init_bias", "standardize", "description",
}
TRAIN_KEYS = set(TrainConfig.__dataclass_fields__)
DEFAULTS: dict[str, Any] = {
    "pairs": "nearest", "k": 4, "virtual": 4, "orientation_weight": 1.0, "spread_scale": 1.0,
    "min_std_m": 0.01, "min_std_deg": 0.5, "sx": 0.0, "sq": -3.0, "learn_weights": True, "finetune": False,
    "augment": True, "eval_batch_size": 1024, "init_bias": True, "standardize": True,
}
PAIRS = ("nearest", "virtual", "both")


def model_config(recipe: dict[str, Any]) -> dict[str, Any]:
    """The part of a recipe that the refiner factory receives."""
    return {k: v for k, v in recipe.items() if k not in TASK_KEYS | TRAIN_KEYS}


def _outputs(ctx: Context, teacher: Artifact, split: str) -> dict[str, np.ndarray]:
    """The teacher's stored outputs on ``split`` (indirection so that tests can stand in for teachers)."""
    from harness.stages.teacher import teacher_outputs

    return teacher_outputs(ctx, teacher, split)


def module_bytes(module: nn.Module | None) -> int:
    """Bytes of a module's parameters and buffers (its state dict)."""
    if module is None:
        return 0
    return int(sum(t.numel() * t.element_size() for t in module.state_dict().values()))


# =========================================================================== compatibility
def check_compatible(name: str, refiner: Refiner, teacher: Artifact, student: Artifact | None) -> None:
    """Refuse (``BenchError`` with the reason) a pairing that cannot work, before any training."""
    t = teacher.model
    if refiner.latent_dim != t.latent_dim:
        raise BenchError(
            f"refiner {name!r} has latent size {refiner.latent_dim} but teacher {teacher.name!r} produces {t.latent_dim}"
        )
    if getattr(refiner, "neighbours", "student") != "student":
        return  # image-rpr: the student is not used
    if student is None:
        raise BenchError(f"refiner {name!r} encodes poses with a student (PAE); give one (--student)")
    s = student.model
    if s.latent_dim != t.latent_dim:
        raise BenchError(
            f"refiner {name!r}: student {student.name!r} has latent size {s.latent_dim} but teacher "
            f"{teacher.name!r} has {t.latent_dim}; they cannot be combined"
        )
    if bool(s.multi_scene) != bool(t.multi_scene):
        which = ("multi-scene", "single-scene") if s.multi_scene else ("single-scene", "multi-scene")
        raise BenchError(
            f"refiner {name!r}: student {student.name!r} is {which[0]} but teacher {teacher.name!r} is {which[1]}; "
            "a refiner needs a student of the same kind as its teacher"
        )


def _uses_student(refiner: Refiner) -> bool:
    return getattr(refiner, "neighbours", "student") == "student"


# =========================================================================== helpers
@torch.no_grad()
def encode_poses(student: nn.Module, poses: Tensor, scene: Tensor | None, chunk: int = 8192) -> tuple[Tensor, Tensor]:
    """PAE latents ``(N, D)`` x 2 of poses ``(N, 7)`` (``scene`` ``(N,)`` for a multi-scene student, else ignored)."""
    multi = bool(getattr(student, "multi_scene", False))
    dev = next(iter(student.parameters()), poses).device
    xs, qs = [], []
    for i in range(0, len(poses), chunk):
        s = scene[i : i + chunk].to(dev) if (multi and scene is not None) else None
        lx, lq = student(poses[i : i + chunk].to(dev), s)
        xs.append(lx.float())
        qs.append(lq.float())
    if not xs:
        d = int(student.latent_dim)
        return poses.new_zeros(0, d), poses.new_zeros(0, d)
    return torch.cat(xs), torch.cat(qs)


from harness.poses import align_sign, relative_target  # noqa: E402  (moved to the pose module)


def teacher_spread(out: dict[str, np.ndarray]) -> Tensor:
    """Per-axis RMS error of the teacher per scene id, ``(S, 2)`` as (metres, degrees), from stored outputs
    (the spread of virtual neighbours; a scene without frames gets 0)."""
    est = torch.as_tensor(np.asarray(out["pose_est"]), dtype=torch.float64)
    gt = torch.as_tensor(np.asarray(out["pose_gt"]), dtype=torch.float64)
    scene = torch.as_tensor(np.asarray(out["scene_id"]), dtype=torch.int64)
    pos, ori = P.pose_errors(est, gt)
    S = int(scene.max()) + 1 if len(scene) else 0
    frames = torch.bincount(scene, minlength=S).clamp_min(1)
    sq = torch.stack([torch.bincount(scene, pos**2, S), torch.bincount(scene, ori**2, S)], 1)
    return torch.sqrt(sq / frames[:, None] / 3)


def nearest_pairs(poses: Tensor, scene: Tensor, k: int, orientation_weight: float) -> tuple[Tensor, Tensor]:
    """``(a, b)`` index pairs: for every frame ``a``, its ``k`` nearest other frames ``b`` of the same scene."""
    from harness.poses import nearest_neighbours

    a_all, b_all = [], []
    for sid in torch.unique(scene):
        idx = torch.nonzero(scene == sid).squeeze(1)
        kk = min(k, len(idx) - 1)
        if kk < 1:
            continue
        nb = nearest_neighbours(poses[idx], poses[idx], kk, orientation_weight, exclude_self=True)  # (n, kk)
        a_all.append(idx.repeat_interleave(kk))
        b_all.append(idx[nb.reshape(-1)])
    if not a_all:
        raise BenchError("nearest-neighbour pairs need at least two training frames in a scene")
    return torch.cat(a_all), torch.cat(b_all)


# =========================================================================== the training task
class RPRTask(nn.Module):
    """A refiner plus its loss: ``forward(batch) -> (loss, logs)``.

    ``batch``: dict with ``qx``, ``qq`` (query latents ``(B, D)``) or ``images``
    ``(U, 3, S, S)`` + ``image_rows`` ``(B,)`` (the image of each pair) + ``scene``
    (fine-tuning: encoded here by ``refiner.image_encoder``), ``rx``,
    ``rq`` (reference latents) and ``rel`` (target ``(B, 7)``). Loss: the
    Kendall pose loss on the relative pose. Logs: median relative errors (m, deg).
    """

    def __init__(self, refiner: Refiner, sx: float = 0.0, sq: float = -3.0, learn_weights: bool = True) -> None:
        super().__init__()
        self.refiner = refiner
        self.loss = PoseLoss(sx, sq, learnable=learn_weights)

    def query_latents(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        if "images" in batch:  # fine-tuning: each distinct query image is encoded once for all its pairs
            enc = self.refiner.image_encoder
            rows = batch["image_rows"]
            scene = None
            if enc.multi_scene:
                scene = batch["scene"].new_zeros(len(batch["images"])).scatter_(0, rows, batch["scene"])
            lat = enc.encode(batch["images"], scene)
            return lat.x[rows], lat.q[rows]
        return batch["qx"], batch["qq"]

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        qx, qq = self.query_latents(batch)
        if "ref_images" in batch:  # image-rpr fine-tuning: the reference image goes through the encoder too
            enc = self.refiner.image_encoder
            lat = enc.encode(batch["ref_images"], batch["scene"] if enc.multi_scene else None)
            rx, rq = lat.x, lat.q
        else:
            rx, rq = batch["rx"], batch["rq"]
        est = self.refiner(qx, qq, rx, rq)  # (B, 7)
        loss, logs = self.loss(est, batch["rel"])
        with torch.no_grad():
            pos, ori = P.pose_errors(est.detach(), batch["rel"])
            logs["m"], logs["deg"] = float(pos.median()), float(ori.median())
        return loss, logs


class PairBatches:
    """Training batches of pairs for :func:`harness.train.fit`: ``__call__(epoch, rank, world)``.

    ``make(epoch) -> dict of (P, ...) tensors`` builds the epoch's pairs (fixed
    ones, or new virtual neighbours each epoch); the order depends only on
    ``(seed, epoch)``, each rank takes one contiguous slice of it. An
    ``images`` entry (fine-tuning) holds each pair's query frame index: pairs
    are then ordered frame by frame (frames in random order), so that a batch
    gathers, augments and normalises each distinct frame once (``images``
    ``(U, 3, S, S)``, ``image_rows`` ``(B,)``) and the encoder runs once per
    frame, not once per pair. ``ref_images`` indices are gathered per pair.
    """

    def __init__(self, make: Callable[[int], dict[str, Tensor]], batch_size: int, seed: int = 0,
                 images: Tensor | None = None, augment: bool = True, device: torch.device | None = None) -> None:
        self.make, self.batch_size, self.seed = make, batch_size, seed
        self.images, self.augment = images, augment
        self.device = device or torch.device("cpu")

    def _pixels(self, frames: Tensor, generator: torch.Generator) -> Tensor:
        from harness.images import augment_images, normalize_images

        u8 = self.images[frames]
        return normalize_images(augment_images(u8, generator=generator) if self.augment else u8)

    def __call__(self, epoch: int, rank: int = 0, world: int = 1) -> Iterator[dict[str, Tensor]]:
        pairs = self.make(epoch)
        n = len(pairs["rel"])
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=g)
        if "images" in pairs and n:  # group the pairs of each query frame, frames in random order
            frames = pairs["images"]
            frame_rank = torch.randperm(int(frames.max()) + 1, generator=g)
            order = order[torch.argsort(frame_rank[frames[order]], stable=True)]
        per_rank = n // world
        mine = order[rank * per_rank : (rank + 1) * per_rank]
        bs = max(1, self.batch_size // world)
        stop = len(mine) - len(mine) % bs if len(mine) > bs else len(mine)
        ga = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 1009 + rank)
        for i in range(0, stop, bs):
            idx = mine[i : i + bs]
            batch = {}
            for key, value in pairs.items():
                v = value[idx]
                if key == "images":
                    uniq, rows = torch.unique(v, return_inverse=True)
                    batch["image_rows"] = rows.to(self.device)
                    v = self._pixels(uniq, ga)
                elif key == "ref_images":
                    v = self._pixels(v, ga)
                batch[key] = v.to(self.device)
            yield batch


# =========================================================================== obtaining a refiner
def build_refiner(ctx: Context, name: str, recipe: dict[str, Any], latent_dim: int) -> Refiner:
    """The untrained refiner ``name`` with the model part of ``recipe``."""
    try:
        model = ctx.registry.build("refiner", name, latent_dim=latent_dim, **model_config(recipe))
    except TypeError as exc:
        raise BenchError(f"refiner {name!r}: bad recipe option ({exc}); model options: {sorted(model_config(recipe))}") from None
    if not isinstance(model, Refiner):
        raise BenchError(f"refiner plugin {name!r} built a {type(model).__name__}, not a harness Refiner")
    return model


def obtain_refiner(ctx: Context, name: str, teacher: Artifact, student: Artifact | None = None) -> Artifact:
    """The refiner ``name`` for ``teacher`` (and ``student`` for PAE neighbours), from the store or trained.

    Refuses incompatible pairings before any work. Fingerprint: name, plugin
    version, recipe, teacher (and student) fingerprints, training-split
    fingerprint. Training runs under a store lock and resumes from its checkpoints.
    """
    recipe = {**DEFAULTS, **ctx.recipe("refiner", name)}
    model = build_refiner(ctx, name, recipe, int(teacher.model.latent_dim))
    check_compatible(name, model, teacher, student)
    uses_student = _uses_student(model)
    pairs = str(recipe["pairs"])
    if pairs not in PAIRS:
        raise BenchError(f"refiner {name!r}: pairs must be one of {', '.join(PAIRS)}, got {pairs!r}")
    if pairs != "nearest" and not uses_student:
        raise BenchError(f"refiner {name!r} retrieves training images; virtual neighbours (pairs={pairs!r}) need a PAE-based refiner")
    if not uses_student:
        student = None
    train = ctx.data.split("train")
    upstream = {"teacher": teacher.fingerprint, "data": train.fingerprint()}
    if student is not None:
        upstream["student"] = student.fingerprint
    fp = fingerprint("refiner", name, plugin_version(ctx, "refiner", name), recipe, upstream)
    if recipe["finetune"]:
        model.add_module("image_encoder", copy.deepcopy(teacher.model))
    out_dir = ctx.store.artifact_dir("refiner", name, fp)
    weights = out_dir / "weights.pth"
    art = Artifact("refiner", name, fp, recipe, model, weights, upstream)
    train_once(ctx, "refiner", name, fp, model, weights, lambda: _train(ctx, name, model, recipe, teacher, student, out_dir))
    return art


def _train(ctx: Context, name: str, model: Refiner, recipe: dict[str, Any], teacher: Artifact,
           student: Artifact | None, out_dir: Path) -> None:
    t0 = time.perf_counter()
    config = TrainConfig.from_recipe(recipe)
    out = _outputs(ctx, teacher, "train")
    gt = torch.as_tensor(np.asarray(out["pose_gt"]), dtype=torch.float32)
    gt = P.join_pose(gt[:, :3], P.normalize_quat(gt[:, 3:]))  # label sign kept
    scene = torch.as_tensor(np.asarray(out["scene_id"]), dtype=torch.int64)
    qx = torch.as_tensor(np.asarray(out["latent_x"]), dtype=torch.float32)
    qq = torch.as_tensor(np.asarray(out["latent_q"]), dtype=torch.float32)
    N = len(gt)
    if N < 2:
        raise BenchError(f"refiner {name!r}: the teacher's training split has {N} frame(s); need at least 2")
    pairs = str(recipe["pairs"])
    spread = teacher_spread(out)  # (S, 2) per scene id: metres, degrees per axis
    std = torch.maximum(recipe["spread_scale"] * spread, spread.new_tensor([recipe["min_std_m"], recipe["min_std_deg"]]))
    for col, key in enumerate(("std_m", "std_deg")):  # a spread the recipe fixes
        if recipe.get(key):
            std[:, col] = float(recipe[key])
    std_rows = std[scene].float()  # (N, 2): each frame's spread
    pae = student.model.to(ctx.device).eval() if student is not None else None
    finetune = bool(recipe["finetune"])

    # fixed nearest-neighbour pairs -------------------------------------------------
    fixed: dict[str, Tensor] = {}
    if pairs in ("nearest", "both"):
        a, b = nearest_pairs(gt, scene, int(recipe["k"]), float(recipe["orientation_weight"]))
        fixed = {"a": a, "b": b, "rel": relative_target(gt[a], gt[b])}
        if pae is not None:
            rx, rq = encode_poses(pae, gt[b], scene[b])  # PAE latents of the neighbour's pose
            fixed["rx"], fixed["rq"] = rx.cpu(), rq.cpu()
        elif not finetune:
            fixed["rx"], fixed["rq"] = qx[b], qq[b]  # stored teacher latents of the neighbour image

    def make(epoch: int) -> dict[str, Tensor]:
        parts: list[dict[str, Tensor]] = []
        if fixed:
            parts.append(dict(fixed))
        if pairs in ("virtual", "both"):
            g = torch.Generator().manual_seed(config.seed * 7919 + epoch)
            a = torch.arange(N).repeat_interleave(int(recipe["virtual"]))
            ref = _virtual(gt[a], std_rows[a, :1], std_rows[a, 1:], g)
            rx, rq = encode_poses(pae, ref, scene[a])
            parts.append({"a": a, "b": torch.full_like(a, -1), "rel": relative_target(gt[a], ref), "rx": rx.cpu(), "rq": rq.cpu()})
        batch = {k: torch.cat([p[k] for p in parts]) for k in parts[0] if all(k in p for p in parts)}
        a = batch.pop("a")
        b = batch.pop("b")
        if finetune:
            batch["images"], batch["scene"] = a, scene[a]
            if pae is None:
                batch["ref_images"] = b
        else:
            batch["qx"], batch["qq"] = qx[a], qq[a]
        return batch

    images = None
    if finetune:
        from harness.images import load_images

        size = int(teacher.config.get("image_size", 64))
        images = load_images(ctx.data.split("train"), size, ctx.store)  # (N, 3, S, S) uint8, label order
        if len(images) != N:
            raise BenchError(f"refiner {name!r}: {len(images)} training images but {N} stored teacher outputs")
        model.image_encoder.requires_grad_(True)

    if recipe.get("standardize", True) and hasattr(model, "set_latent_stats"):
        model.set_latent_stats(qx, qq)  # the teacher's training latents (a PAE reproduces them)
    if recipe.get("init_bias", True) and hasattr(model, "init_output_bias"):
        sample = make(0)["rel"]
        model.init_output_bias(torch.cat([sample[:, :3].mean(0), sample.new_tensor([1.0, 0.0, 0.0, 0.0])]))
    task = RPRTask(model, float(recipe["sx"]), float(recipe["sq"]), bool(recipe["learn_weights"])).to(ctx.device)
    batches = PairBatches(make, config.batch_size, seed=config.seed, images=images,
                          augment=bool(recipe["augment"]), device=ctx.device)
    history = fit(task, batches, config, out_dir / "checkpoints", desc=f"refiner {name}", progress=ctx.progress,
                  device=ctx.device)
    if distributed_env()[0] != 0:
        return
    present = torch.unique(scene).tolist()  # scene ids index the dataset's scenes
    meta = {
        "kind": "refiner", "name": name, "recipe": recipe, "dataset": ctx.dataset, "scenes": ctx.data.scenes,
        "teacher": teacher.fingerprint, "student": student.fingerprint if student is not None else None,
        "train_frames": N,
        "teacher_train_rms": {ctx.data.scenes[s]: dict(zip(("m_per_axis", "deg_per_axis"), spread[s].tolist())) for s in present},
        "virtual_std": {ctx.data.scenes[s]: dict(zip(("m", "deg"), std[s].tolist())) for s in present}, "epochs": len(history),
        "train_seconds": sum(h.get("seconds", 0.0) for h in history), "wall_seconds": time.perf_counter() - t0,
        "first": history[0] if history else {}, "final": history[-1] if history else {},
        "sx": float(task.loss.sx.detach()), "sq": float(task.loss.sq.detach()), "torch": torch.__version__,
    }
    save_state(out_dir / "weights.pth", model.state_dict(), meta=meta)


def _virtual(poses: Tensor, std_m: float | Tensor, std_deg: float | Tensor, generator: torch.Generator) -> Tensor:
    """Virtual neighbours around ``poses`` with the quaternion sign of ``poses`` (the PAE saw label signs)."""
    from harness.poses import virtual_neighbours

    v = virtual_neighbours(poses, std_m, std_deg, generator=generator).to(poses.dtype)
    return P.join_pose(v[:, :3], align_sign(v[:, 3:], poses[:, 3:]))


# =========================================================================== inference
def _query_latents(ctx: Context, refiner: Artifact, teacher: Artifact, split: str, out: dict[str, np.ndarray],
                   scene_pred: Tensor | None) -> tuple[Tensor, Tensor]:
    """Query latents ``(N, D)`` x 2: the stored teacher latents, or the fine-tuned encoder's (computed once)."""
    enc = getattr(refiner.model, "image_encoder", None)
    if enc is None:
        return (torch.as_tensor(np.asarray(out["latent_x"]), dtype=torch.float32),
                torch.as_tensor(np.asarray(out["latent_q"]), dtype=torch.float32))
    from harness.images import load_images, normalize_images

    images = load_images(ctx.data.split(split), int(teacher.config.get("image_size", 64)), ctx.store)
    xs, qs = [], []
    bs = int(teacher.config.get("eval_batch_size", 64))
    with torch.inference_mode():
        for i in range(0, len(images), bs):
            s = scene_pred[i : i + bs].to(ctx.device) if (enc.multi_scene and scene_pred is not None) else None
            lat = enc.encode(normalize_images(images[i : i + bs]).to(ctx.device), s)
            xs.append(lat.x.float().cpu())
            qs.append(lat.q.float().cpu())
    return torch.cat(xs), torch.cat(qs)


def _image_bytes(ctx: Context) -> int:
    """Bytes of the training image files (what the retrieval baseline keeps)."""
    train = ctx.data.split("train")
    root = Path(train.root)
    total = 0
    for p in train.labels["img_path"].tolist():
        f = root / p
        total += f.stat().st_size if f.is_file() else 0
    return int(total)


def refine(ctx: Context, refiner: Artifact, teacher: Artifact, student: Artifact | None, split: str,
           iterations: int) -> dict[str, Any]:
    """iAPR inference on ``split``: ``iterations`` refinement steps from the teacher's stored estimate.

    Returns numpy ``poses (K+1, N, 7)`` (index 0 = teacher estimate),
    ``pose_gt (N, 7)``, ``scene_id (N,)`` (ground truth), ``scene_pred (N,)``
    (the scene used), ``time_s (K+1,)`` mean seconds per frame, cumulative and
    including the teacher's stored time, and ``stored_bytes`` (int): what the
    refiner keeps at test time besides the teacher (PAE + RPR weights for
    ``pae-rpr``; training image files + their latents and poses + RPR
    weights for ``image-rpr``).
    """
    model: Refiner = refiner.model
    check_compatible(refiner.name, model, teacher, student)
    if iterations < 0:
        raise BenchError(f"iterations must be >= 0, got {iterations}")
    uses_student = _uses_student(model)
    device = ctx.device
    model.to(device).eval()
    out = _outputs(ctx, teacher, split)
    p = torch.as_tensor(np.asarray(out["pose_est"]), dtype=torch.float32)
    p = P.join_pose(p[:, :3], P.normalize_quat(p[:, 3:]))
    N = len(p)
    multi = bool(getattr(teacher.model, "multi_scene", False))
    logp = np.asarray(out.get("scene_logp", np.zeros((N, 1))))
    scene_pred = torch.as_tensor(logp.argmax(1) if (multi and logp.ndim == 2 and N) else np.zeros(N), dtype=torch.int64)
    qx, qq = _query_latents(ctx, refiner, teacher, split, out, scene_pred if multi else None)
    qx, qq = qx.to(device), qq.to(device)
    pae = student.model.to(device).eval() if uses_student else None
    if uses_student:
        stored = module_bytes(pae) + module_bytes(model)
    else:
        db = _outputs(ctx, teacher, "train")
        db_pose = torch.as_tensor(np.asarray(db["pose_gt"]), dtype=torch.float32)
        db_pose = P.join_pose(db_pose[:, :3], P.normalize_quat(db_pose[:, 3:]))
        db_scene = torch.as_tensor(np.asarray(db["scene_id"]), dtype=torch.int64)
        db_x, db_q = _query_latents(ctx, refiner, teacher, "train", db, db_scene)  # fine-tuned: re-encoded once
        db_x, db_q = db_x.to(device), db_q.to(device)
        stored = _image_bytes(ctx) + int(db_x.numel() * 4 + db_q.numel() * 4 + db_pose.numel() * 4) + module_bytes(model)
        if len(db_pose) == 0:
            raise BenchError(f"refiner {refiner.name!r} retrieves training frames, but the training split is empty")
    ow = float(refiner.config.get("orientation_weight", DEFAULTS["orientation_weight"]))
    bs = int(refiner.config.get("eval_batch_size", DEFAULTS["eval_batch_size"]))
    t_teacher = float(np.mean(out["time_s"])) if N else 0.0
    poses, times = [p.clone()], [t_teacher]
    p = p.to(device)
    with torch.inference_mode():
        for _ in range(iterations):
            t0 = time.perf_counter()
            if uses_student:
                ref_pose = p
                rx, rq = encode_poses(pae, p, scene_pred.to(device))
            else:
                nn_idx = _retrieve(p.cpu(), db_pose, db_scene, scene_pred if multi else None, ow)
                ref_pose = db_pose[nn_idx].to(device)
                ref_pose = P.join_pose(ref_pose[:, :3], align_sign(ref_pose[:, 3:], p[:, 3:]))
                rx, rq = db_x[nn_idx.to(device)], db_q[nn_idx.to(device)]
            rel = torch.cat([model(qx[i : i + bs], qq[i : i + bs], rx[i : i + bs], rq[i : i + bs]) for i in range(0, N, bs)]) if N else p.new_zeros(0, 7)
            new = P.compose(ref_pose, P.invert_relative(rel))  # (N, 7)
            p = P.join_pose(new[:, :3], align_sign(new[:, 3:], p[:, 3:]))
            dt = time.perf_counter() - t0
            times.append(times[-1] + dt / max(N, 1))
            poses.append(p.detach().cpu().clone())
    return {
        "poses": torch.stack(poses).numpy(),
        "pose_gt": np.asarray(out["pose_gt"], dtype=np.float32),
        "scene_id": np.asarray(out["scene_id"], dtype=np.int64),
        "scene_pred": scene_pred.numpy(),
        "time_s": np.asarray(times, dtype=np.float64),
        "stored_bytes": int(stored),
    }


def _retrieve(p: Tensor, db_pose: Tensor, db_scene: Tensor, scene: Tensor | None, orientation_weight: float) -> Tensor:
    """``(N,)`` index of the database frame nearest each pose (within its scene when ``scene`` is given)."""
    from harness.poses import nearest_neighbours

    if scene is None:
        return nearest_neighbours(p, db_pose, 1, orientation_weight)[:, 0]
    idx = torch.zeros(len(p), dtype=torch.int64)
    for sid in torch.unique(scene):
        mask = scene == sid
        cand = torch.nonzero(db_scene == sid).squeeze(1)
        if len(cand) == 0:  # the predicted scene has no training frames: search all
            cand = torch.arange(len(db_pose))
        idx[mask] = cand[nearest_neighbours(p[mask], db_pose[cand], 1, orientation_weight)[:, 0]]
    return idx


def evaluate_refiner(ctx: Context, refiner: Artifact, teacher: Artifact, student: Artifact | None,
                     split: str = "test", iterations: int = 3) -> pd.DataFrame:
    """Per scene and per iteration (0 = the teacher) errors (``harness.metrics.summarize`` columns),
    plus ``ms_per_frame`` (cumulative, teacher included) and ``stored_bytes``."""
    res = refine(ctx, refiner, teacher, student, split, iterations)
    frames = []
    for k, est in enumerate(res["poses"]):
        f = per_scene(est, res["pose_gt"], res["scene_id"], ctx.data.scenes)
        f.insert(1, "iteration", k)
        f["ms_per_frame"] = 1000.0 * float(res["time_s"][k])
        f["stored_bytes"] = int(res["stored_bytes"])
        frames.append(f)
    frame = pd.concat(frames, ignore_index=True)
    return frame.sort_values(["scene", "iteration"], kind="stable").reset_index(drop=True)


__all__ = [
    "RPRTask", "PairBatches", "obtain_refiner", "refine", "evaluate_refiner", "check_compatible",
    "encode_poses", "teacher_spread", "nearest_pairs", "module_bytes", "model_config",
]
