"""Refiners as artifacts: train (or load) a relative pose regressor, run the iAPR loop, evaluate it.

A refiner recipe resolves (``harness.api.recipes``) into the training loop's config,
:class:`harness.api.recipes.RefinerConfig` and the model's config for the plugin's
factory (``d_model``, ``layers``, ...).

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
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from aprbench.harness import poses as P
from aprbench.harness.poses import align_sign, relative_target
from aprbench.harness.errors import BenchError
from aprbench.harness.api.interfaces import PoseIndexRefiner, Refiner
from aprbench.harness.training.losses import PoseLoss
from aprbench.harness.results.metrics import per_scene
from aprbench.harness.training.batches import Batches
from aprbench.harness.api.recipes import Recipe
from aprbench.harness.api.compat import check_refiner, to_model_scenes, uses_student
from aprbench.harness.running.stages.context import (Artifact, Context, Stage, build_model, obtain, training_paths,
                                                     under_threads)
from aprbench.harness.running.timing import seconds_per_frame
from aprbench.harness.training.loop import fit, held_out_loss

def _outputs(ctx: Context, teacher: Artifact, split: str) -> dict[str, np.ndarray]:
    """The teacher's stored outputs on ``split`` (indirection so that tests can stand in for teachers)."""
    from aprbench.harness.running.stages.teacher import teacher_outputs

    return teacher_outputs(ctx, teacher, split)


def module_bytes(module: nn.Module | None) -> int:
    """Bytes of a module's parameters and buffers (its state dict)."""
    if module is None:
        return 0
    return int(sum(t.numel() * t.element_size() for t in module.state_dict().values()))


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
    from aprbench.harness.poses import nearest_neighbours

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
        if "ref_pose" in batch:  # the reference protocol: the refiner's own PAE encodes the reference pose (trained)
            pae = self.refiner.pae
            rx, rq = pae(batch["ref_pose"], batch["scene"] if pae.multi_scene else None)
        elif "ref_images" in batch:  # image-rpr fine-tuning: the reference image goes through the encoder too
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


def pair_batches(make: Callable[[int], dict[str, Tensor]], batch_size: int, seed: int = 0,
                 images: Tensor | None = None, augment: bool = True, device: torch.device | None = None) -> Batches:
    """Pair batches from ``make(epoch) -> dict of (P, ...) tensors``. With ``images`` (fine-tuning), the
    ``images`` entry holds each pair's query frame: pairs are grouped frame by frame and a batch gathers,
    augments and normalises each distinct frame once (``images`` ``(U, 3, S, S)``, ``image_rows`` ``(B,)``
    the image of each pair), so the encoder runs once per frame; ``ref_images`` are gathered per pair."""
    from aprbench.harness.data.images import augment_images, normalize_images

    def pixels(frames: Tensor, generator: torch.Generator) -> Tensor:
        u8 = images[frames]
        return normalize_images(augment_images(u8, generator=generator) if augment else u8)

    def gather(batch: dict[str, Tensor], generator: torch.Generator) -> dict[str, Tensor]:
        out = dict(batch)
        if "images" in batch:
            uniq, rows = torch.unique(batch["images"], return_inverse=True)
            out["image_rows"], out["images"] = rows, pixels(uniq, generator)
        if "ref_images" in batch:
            out["ref_images"] = pixels(batch["ref_images"], generator)
        return out

    if images is None:
        return Batches(make, batch_size, seed, device=device)
    return Batches(make, batch_size, seed, group="images", transform=gather, device=device)


# =========================================================================== obtaining a refiner
def _build_args(ctx: Context, upstream: dict[str, Artifact]) -> dict[str, Any]:
    return {"latent_dim": int(upstream["teacher"].model.latent_dim)}


def _check(ctx: Context, recipe: Recipe, model: Refiner, upstream: dict[str, Artifact]) -> None:
    teacher, student = upstream["teacher"], upstream.get("student")
    check_refiner(recipe.name, model, teacher.name, teacher.model, student.name if student else None,
                  student.model if student else None)
    if recipe.task.pairs != "nearest" and not uses_student(model):
        raise BenchError(f"refiner {recipe.name!r} retrieves training images; virtual neighbours "
                         f"(pairs={recipe.task.pairs!r}) need a PAE-based refiner")


def _prepare(ctx: Context, recipe: Recipe, model: Refiner, upstream: dict[str, Artifact]) -> None:
    """Fine-tuning: the refiner keeps its own copy of the teacher's image encoder. A pose-index refiner takes
    its settings from the whole recipe and is sized for the training split (so that a stored index loads)."""
    if isinstance(model, PoseIndexRefiner):
        model.configure(recipe.model)  # the keys it declares (harness.api.keys)
        model.reserve_index(len(ctx.data.split("train").labels))
    reference = recipe.task.protocol == "reference"
    if recipe.task.finetune or reference:
        model.add_module("image_encoder", copy.deepcopy(upstream["teacher"].model))
    if reference:  # the reference's iAPR: the refiner keeps a fine-tuned copy of the PAE too
        if upstream.get("student") is None:
            raise BenchError(f"refiner {recipe.name!r}: protocol = reference needs a PAE (--student)")
        model.add_module("pae", copy.deepcopy(upstream["student"].model))


def obtain_refiner(ctx: Context, name: str, teacher: Artifact, student: Artifact | None = None,
                   checkpoint: Path | None = None) -> Artifact:
    """The refiner ``name`` for ``teacher`` (and ``student`` for PAE neighbours), from the store, from
    ``checkpoint``, or trained. Refuses incompatible pairings before any work; a retrieval refiner
    ignores the student (it is not part of its fingerprint)."""
    upstream = {"teacher": teacher}
    if student is not None:
        upstream["student"] = student
    art = obtain(ctx, REFINER, name, upstream if uses_student(_probe(ctx, name, teacher)) else {"teacher": teacher},
                 checkpoint)
    return art


def _probe(ctx: Context, name: str, teacher: Artifact) -> Refiner:
    """The refiner's untrained model (to read where its neighbours come from)."""
    return build_model(ctx.registry, ctx.recipe("refiner", name), Refiner, latent_dim=int(teacher.model.latent_dim))


def _train(ctx: Context, art: Artifact, upstream: dict[str, Artifact], out_dir: Path) -> tuple[list, dict]:
    name, model, config, cfg = art.name, art.model, art.recipe.train, art.recipe.task
    teacher, student = upstream["teacher"], upstream.get("student")
    if isinstance(model, PoseIndexRefiner):  # no training: an index of the training split's poses (labels only)
        train = ctx.data.split("train")
        scenes = to_model_scenes(train.scene_ids(), ctx.data.scenes, teacher.model)  # the PAE's (teacher's) order
        model.build_index(train.poses(), scenes, student.model.to(ctx.device).eval())
        return [], {"index_bytes": module_bytes(model)}
    out = _outputs(ctx, teacher, "train")
    if len(out["pose_gt"]) < 2:
        raise BenchError(f"refiner {name!r}: the teacher's training split has {len(out['pose_gt'])} frame(s); need at least 2")
    pae = student.model.to(ctx.device).eval() if student is not None else None
    reference = cfg.protocol == "reference"
    if reference:
        make = _reference_pairs(ctx, out, cfg, config.seed, teacher.model)
        spread = teacher_spread(out)
        std = torch.zeros_like(spread)
    else:
        make, spread, std = _pair_maker(out, cfg, config.seed, pae,
                                        to_model_scenes(out["scene_id"], ctx.data.scenes, teacher.model))
    images = None
    if reference:
        model.pae.requires_grad_(True)
    if cfg.finetune or reference:
        from aprbench.harness.data.images import Preprocess

        images = Preprocess.of(teacher.recipe.task).test_images(ctx.data.split("train"), ctx.store)  # (N, 3, S, S) uint8
        if len(images) != len(out["pose_gt"]):
            raise BenchError(f"refiner {name!r}: {len(images)} training images but {len(out['pose_gt'])} stored teacher outputs")
        model.image_encoder.requires_grad_(True)
    if cfg.standardize and hasattr(model, "set_latent_stats"):  # the teacher's training latents (a PAE reproduces them)
        model.set_latent_stats(*(torch.as_tensor(np.asarray(out[k]), dtype=torch.float32) for k in ("latent_x", "latent_q")))
    if cfg.init_bias and hasattr(model, "init_output_bias"):
        sample = make(0)["rel"]
        model.init_output_bias(torch.cat([sample[:, :3].mean(0), sample.new_tensor([1.0, 0.0, 0.0, 0.0])]))
    task = RPRTask(model, cfg.sx, cfg.sq, cfg.learn_weights).to(ctx.device)
    batches = pair_batches(make, config.batch_size, config.seed, images, cfg.augment, ctx.device)
    validate = None
    if ctx.data.options.get("validation") and images is None and not reference:
        # a validation split: the loss on pairs built the same way from the held-out frames' teacher outputs
        held = _outputs(ctx, teacher, "test")
        if len(held["pose_gt"]) >= 2:
            make_held = _pair_maker(held, cfg, config.seed, pae,
                                    to_model_scenes(held["scene_id"], ctx.data.scenes, teacher.model))[0]
            validate = held_out_loss(task, pair_batches(make_held, 10**9, config.seed, None, False, ctx.device))
    history = fit(task, batches, config, desc=f"refiner {name}", progress=ctx.progress, device=ctx.device,
                  precision=ctx.precision, log_kind=ctx.log, validate=validate, **training_paths(out_dir))
    present = np.unique(out["scene_id"]).tolist()  # scene ids index the dataset's scenes
    return history, {
        "teacher_train_rms": {ctx.data.scenes[s]: dict(zip(("m_per_axis", "deg_per_axis"), spread[s].tolist())) for s in present},
        "virtual_std": {ctx.data.scenes[s]: dict(zip(("m", "deg"), std[s].tolist())) for s in present},
        "sx": float(task.loss.sx.detach()), "sq": float(task.loss.sq.detach()),
    }


def _reference_pairs(ctx: Context, out: dict[str, np.ndarray], cfg: Any, seed: int,
                     teacher: nn.Module | None = None) -> Callable[[int], dict[str, Tensor]]:
    """``make(epoch)`` of the reference protocol: the pairs of ``cfg.pairs_file`` (or, without one, every training
    frame with its ``k`` nearest frames of the same scene), half of them swapped anew each epoch; query image,
    ground-truth scene (in ``teacher``'s own scene order, what its encoder and the PAE are given), the reference
    frame's ground-truth pose and the target ``rel(query -> reference)``."""
    from aprbench.harness.data.pair_lists import read_pair_list, swap_half

    gt = torch.as_tensor(np.asarray(out["pose_gt"]), dtype=torch.float32)
    gt = P.join_pose(gt[:, :3], P.normalize_quat(gt[:, 3:]))
    scene = torch.as_tensor(np.asarray(out["scene_id"]), dtype=torch.int64)
    if cfg.pairs_file:
        a, b, rel = read_pair_list(cfg.pairs_file, ctx.data.split("train").labels["img_path"].astype(str).tolist())
    else:
        a, b = nearest_pairs(gt, scene, cfg.k, cfg.orientation_weight)
        rel = relative_target(gt[a], gt[b])
    model_scene = scene if teacher is None else to_model_scenes(scene, ctx.data.scenes, teacher)

    def make(epoch: int) -> dict[str, Tensor]:
        g = torch.Generator().manual_seed(seed * 7919 + epoch)
        qa, rb, target = swap_half(a, b, rel, g)
        return {"images": qa, "scene": model_scene[rb], "ref_pose": gt[rb], "rel": target}

    return make


def _pair_maker(out: dict[str, np.ndarray], cfg: Any, seed: int, pae: nn.Module | None,
                model_scene: Tensor | None = None) -> tuple[Callable[[int], dict[str, Tensor]], Tensor, Tensor]:
    """``make(epoch)`` building the epoch's training pairs from the teacher's stored train outputs (fixed
    nearest-neighbour pairs, and/or virtual neighbours drawn anew each epoch), plus the teacher's per-scene
    spread ``(S, 2)`` and the virtual spread used (metres, degrees per axis). Pairs and spreads go by the
    dataset's scene ids; the PAE and a fine-tuned encoder get ``model_scene`` ``(N,)``, each frame's scene in
    the teacher's own order (default: the dataset's ids)."""
    gt = torch.as_tensor(np.asarray(out["pose_gt"]), dtype=torch.float32)
    gt = P.join_pose(gt[:, :3], P.normalize_quat(gt[:, 3:]))  # label sign kept
    scene = torch.as_tensor(np.asarray(out["scene_id"]), dtype=torch.int64)
    model_scene = scene if model_scene is None else torch.as_tensor(model_scene, dtype=torch.int64)
    qx = torch.as_tensor(np.asarray(out["latent_x"]), dtype=torch.float32)
    qq = torch.as_tensor(np.asarray(out["latent_q"]), dtype=torch.float32)
    N, pairs, finetune = len(gt), cfg.pairs, cfg.finetune
    spread = teacher_spread(out)  # (S, 2) per scene id: metres, degrees per axis
    std = torch.maximum(cfg.spread_scale * spread, spread.new_tensor([cfg.min_std_m, cfg.min_std_deg]))
    for col, value in enumerate((cfg.std_m, cfg.std_deg)):  # a spread the recipe fixes
        if value:
            std[:, col] = float(value)
    std_rows = std[scene].float()  # (N, 2): each frame's spread
    fixed: dict[str, Tensor] = {}
    if pairs in ("nearest", "both"):
        a, b = nearest_pairs(gt, scene, cfg.k, cfg.orientation_weight)
        fixed = {"a": a, "b": b, "rel": relative_target(gt[a], gt[b])}
        if pae is not None:
            rx, rq = encode_poses(pae, gt[b], model_scene[b])  # PAE latents of the neighbour's pose
            fixed["rx"], fixed["rq"] = rx.cpu(), rq.cpu()
        elif not finetune:
            fixed["rx"], fixed["rq"] = qx[b], qq[b]  # stored teacher latents of the neighbour image

    def make(epoch: int) -> dict[str, Tensor]:
        parts: list[dict[str, Tensor]] = [dict(fixed)] if fixed else []
        if pairs in ("virtual", "both"):
            g = torch.Generator().manual_seed(seed * 7919 + epoch)
            a = torch.arange(N).repeat_interleave(cfg.virtual)
            ref = _virtual(gt[a], std_rows[a, :1], std_rows[a, 1:], g)
            rx, rq = encode_poses(pae, ref, model_scene[a])
            parts.append({"a": a, "b": torch.full_like(a, -1), "rel": relative_target(gt[a], ref), "rx": rx.cpu(), "rq": rq.cpu()})
        batch = {k: torch.cat([p[k] for p in parts]) for k in parts[0] if all(k in p for p in parts)}
        a, b = batch.pop("a"), batch.pop("b")
        if finetune:
            batch["images"], batch["scene"] = a, model_scene[a]
            if pae is None:
                batch["ref_images"] = b
        else:
            batch["qx"], batch["qq"] = qx[a], qq[a]
        return batch

    return make, spread, std


REFINER = Stage("refiner", Refiner, _build_args, _check, _train, _prepare)


def _virtual(poses: Tensor, std_m: float | Tensor, std_deg: float | Tensor, generator: torch.Generator) -> Tensor:
    """Virtual neighbours around ``poses`` with the quaternion sign of ``poses`` (the PAE saw label signs)."""
    from aprbench.harness.poses import virtual_neighbours

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
    from aprbench.harness.data.images import Preprocess, normalize_images

    images = Preprocess.of(teacher.recipe.task).test_images(ctx.data.split(split), ctx.store)
    xs, qs = [], []
    bs = teacher.recipe.task.eval_batch_size
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


@under_threads
def refine(ctx: Context, refiner: Artifact, teacher: Artifact, student: Artifact | None, split: str,
           iterations: int) -> dict[str, Any]:
    """Refinement on ``split``: ``iterations`` steps from the teacher's stored estimate, batched over all frames.

    Returns numpy ``poses (K+1, N, 7)`` (index 0 = the teacher's stored estimate, bit for bit),
    ``pose_gt (N, 7)``, ``scene_id (N,)`` (ground truth), ``scene_pred (N,)``
    (the scene used), ``time_s (K+1,)`` seconds per frame, cumulative: the
    teacher's forward pass plus k times one step's measured cost, and ``stored_bytes`` (int): what the
    refiner keeps at test time besides the teacher (PAE + RPR weights for
    ``pae-rpr``; training image files + their latents and poses + RPR
    weights for ``image-rpr``; the pose index for a pose-index refiner).
    Forward passes (image encoder, PAE, RPR) run under ``ctx.precision``'s
    autocast; the poses are composed and returned in float32.
    """
    from aprbench.harness.training.devices import autocast

    _check_pairing(refiner, teacher, student)
    if iterations < 0:
        raise BenchError(f"iterations must be >= 0, got {iterations}")
    refiner.model.to(ctx.device).eval()
    out = _outputs(ctx, teacher, split)
    # iteration 0 is the teacher's stored estimate bit for bit (stored unit-normalised by the teacher stage;
    # normalising it again would change the last bits and make "iteration 0 vs teacher" a test of rounding)
    p = torch.as_tensor(np.asarray(out["pose_est"], dtype=np.float32))
    N = len(p)
    multi = bool(getattr(teacher.model, "multi_scene", False))
    logp = np.asarray(out.get("scene_logp", np.zeros((N, 1))))
    scene_pred = torch.as_tensor(logp.argmax(1) if (multi and logp.ndim == 2 and N) else np.zeros(N), dtype=torch.int64)
    with autocast(ctx.device, ctx.precision):
        qx, qq = _query_latents(ctx, refiner, teacher, split, out, scene_pred if multi else None)
        step, stored = _stepper(ctx, refiner, teacher, student, qx.to(ctx.device), qq.to(ctx.device),
                                scene_pred.to(ctx.device), multi)
        poses = [p.clone()]
        p = p.to(ctx.device)
        # one step's cost per frame, warmed up and repeated over every frame (each iteration costs the same)
        step_s = seconds_per_frame(lambda: step(p), N, ctx.device, warmup=1, repeats=3) if iterations else 0.0
        for _ in range(iterations):
            p = step(p).float()
            poses.append(p.detach().cpu().clone())
    first = float(np.mean(out["time_s"])) if N else 0.0
    times = [first + k * step_s for k in range(iterations + 1)]
    return {
        "poses": torch.stack(poses).numpy(),
        "pose_gt": np.asarray(out["pose_gt"], dtype=np.float32),
        "scene_id": np.asarray(out["scene_id"], dtype=np.int64),
        "scene_pred": scene_pred.numpy(),
        "time_s": np.asarray(times, dtype=np.float64),
        "stored_bytes": int(stored),
    }


def _stepper(ctx: Context, refiner: Artifact, teacher: Artifact, student: Artifact | None, qx: Tensor, qq: Tensor,
             scene_pred: Tensor, multi: bool) -> tuple[Callable[[Tensor], Tensor], int]:
    """One refinement step ``(N, 7) -> (N, 7)`` for this refiner's kind of neighbours, and its stored bytes."""
    model = refiner.model
    if isinstance(model, PoseIndexRefiner):  # refines from its index of training poses (no RPR, no PAE at test time)
        from aprbench.harness.api.contracts import expect_poses

        source = ctx.registry.get("refiner", refiner.name).source

        def refine_step(p: Tensor) -> Tensor:  # its contract, checked at every iteration: (N, 7) in, (N, 7) out
            out = model.refine_batch(p, qx, qq, scene_pred if multi else None)
            return expect_poses(out, len(p), "refiner", refiner.name, source, f"refine_batch(poses of shape {tuple(p.shape)})")

        return refine_step, module_bytes(model)
    bs = refiner.recipe.task.eval_batch_size
    reference = refiner.recipe.task.protocol == "reference"
    if uses_student(model):
        own = getattr(model, "pae", None) if reference else None  # the reference protocol's fine-tuned PAE
        pae = (own if own is not None else student.model).to(ctx.device).eval()

        def neighbours(p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            return (p, *encode_poses(pae, p, scene_pred))  # the estimate itself, encoded by the PAE

        stored = module_bytes(model) + (0 if own is not None else module_bytes(pae))  # own copies: inside the model
    else:
        neighbours, stored = _retrieval(ctx, refiner, teacher, scene_pred if multi else None)

    return make_step(model, neighbours, qx, qq, bs, reference), stored


def make_step(model: Refiner, neighbours: Callable[[Tensor], tuple[Tensor, Tensor, Tensor]], qx: Tensor, qq: Tensor,
              batch_size: int, w_positive: bool = False) -> Callable[[Tensor], Tensor]:
    """One refinement step ``(N, 7) -> (N, 7)``, batched over frames: ``neighbours(p) -> (ref_pose, rx, rq)``,
    ``rel = model(qx, qq, rx, rq)`` (``rel(query -> reference)``), ``p' = compose(ref_pose, invert_relative(rel))``.
    Quaternion sign: ``w_positive`` returns ``w >= 0`` (the reference protocol), else the sign of ``p``."""

    @torch.inference_mode()
    def step(p: Tensor) -> Tensor:
        ref_pose, rx, rq = neighbours(p)
        N, bs = len(p), batch_size
        rel = torch.cat([model(qx[i: i + bs], qq[i: i + bs], rx[i: i + bs], rq[i: i + bs]).float()
                         for i in range(0, N, bs)]) if N else p.new_zeros(0, 7)
        new = P.compose(ref_pose, P.invert_relative(rel))  # (N, 7)
        if w_positive:  # the reference returns w >= 0, whatever the previous estimate's sign
            return P.join_pose(new[:, :3], P.canonical_quat(new[:, 3:]))
        return P.join_pose(new[:, :3], align_sign(new[:, 3:], p[:, 3:]))

    return step


def _retrieval(ctx: Context, refiner: Artifact, teacher: Artifact, scene: Tensor | None) -> tuple[Callable, int]:
    """The image-RPR baseline's neighbours: the training frame nearest each estimate (its pose and latents)."""
    db = _outputs(ctx, teacher, "train")
    db_pose = torch.as_tensor(np.asarray(db["pose_gt"]), dtype=torch.float32)
    db_pose = P.join_pose(db_pose[:, :3], P.normalize_quat(db_pose[:, 3:]))
    if len(db_pose) == 0:
        raise BenchError(f"refiner {refiner.name!r} retrieves training frames, but the training split is empty")
    db_scene = to_model_scenes(db["scene_id"], ctx.data.scenes, teacher.model)  # the predicted scenes' order
    db_x, db_q = _query_latents(ctx, refiner, teacher, "train", db, db_scene)  # fine-tuned: re-encoded once
    db_x, db_q = db_x.to(ctx.device), db_q.to(ctx.device)
    ow = refiner.recipe.task.orientation_weight

    def neighbours(p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        idx = _retrieve(p.cpu(), db_pose, db_scene, scene.cpu() if scene is not None else None, ow)
        ref = db_pose[idx].to(p.device)
        ref = P.join_pose(ref[:, :3], align_sign(ref[:, 3:], p[:, 3:]))
        idx = idx.to(p.device)
        return ref, db_x[idx], db_q[idx]

    stored = _image_bytes(ctx) + int(db_x.numel() * 4 + db_q.numel() * 4 + db_pose.numel() * 4) + module_bytes(refiner.model)
    return neighbours, stored


def _check_pairing(refiner: Artifact, teacher: Artifact, student: Artifact | None) -> None:
    check_refiner(refiner.name, refiner.model, teacher.name, teacher.model, student.name if student else None,
                  student.model if student else None)


def _retrieve(p: Tensor, db_pose: Tensor, db_scene: Tensor, scene: Tensor | None, orientation_weight: float) -> Tensor:
    """``(N,)`` index of the database frame nearest each pose (within its scene when ``scene`` is given)."""
    from aprbench.harness.poses import nearest_neighbours

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
    """Per scene and per iteration (0 = the teacher) errors (``harness.results.metrics.summarize`` columns),
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
    "RPRTask", "REFINER", "pair_batches", "obtain_refiner", "refine", "evaluate_refiner",
    "encode_poses", "teacher_spread", "nearest_pairs", "module_bytes", "make_step",
]
