"""Decoders as artifacts: images from pose encodings (DESIGN.md §1).

A decoder maps the student's (PAE's) latents of a pose to an ``S x S`` image.
Training: the student encodes the training ground-truth poses (its scene for
a multi-scene student), the decoder is fitted with L1 against the training
images resized to ``S`` (``harness.images.load_images``, cached in the store).
Scores: PSNR (dB) and SSIM (Gaussian window) of decoded vs true images on a
split; grids: PNGs of ground truth beside decoded.

A decoder recipe (kind ``decoder``) holds ``TrainConfig`` keys, the task keys
in ``TASK_KEYS`` and model keys for the factory (``image_size``, ``hidden``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.errors import BenchError
from harness.interfaces import Decoder, PoseData
from harness.stages.context import Artifact, Context, plugin_version, train_once
from harness.store import atomic_path, fingerprint, save_state
from harness.train import TrainConfig, distributed_env, fit

TASK_KEYS = {"eval_batch_size", "description"}
TRAIN_KEYS = set(TrainConfig.__dataclass_fields__)
DEFAULTS: dict[str, Any] = {"eval_batch_size": 256}


def model_config(recipe: dict[str, Any]) -> dict[str, Any]:
    """The part of a recipe that the decoder factory receives."""
    return {k: v for k, v in recipe.items() if k not in TASK_KEYS | TRAIN_KEYS}


# =========================================================================== image metrics
def psnr(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio in dB per image of ``(B, C, H, W)`` batches: ``10 log10(range^2 / MSE)``."""
    mse = ((x.double() - y.double()) ** 2).flatten(1).mean(1).clamp_min(1e-12)
    return 10.0 * torch.log10(data_range**2 / mse)


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype: torch.dtype = torch.float64) -> Tensor:
    """``(size, size)`` normalised Gaussian window (outer product of 1-D Gaussians)."""
    r = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(x: Tensor, y: Tensor, data_range: float = 1.0, window: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> Tensor:
    """Structural similarity per image of ``(B, C, H, W)`` batches (Wang et al. 2004).

    Local means, variances and covariance under a Gaussian window (``window``
    pixels, ``sigma``), population (not sample) statistics, evaluated at every
    position where the window fits (``valid``), averaged over positions and
    channels; ``C1 = (k1 range)^2``, ``C2 = (k2 range)^2``. Images smaller
    than the window use a window of their size.
    """
    dtype = torch.float64 if torch.float64 in (x.dtype, y.dtype) else torch.float32
    x, y = x.to(dtype), y.to(dtype)
    C = x.shape[1]
    size = min(window, x.shape[-2], x.shape[-1])
    w = gaussian_window(size, sigma).to(x.device, dtype)[None, None].expand(C, 1, size, size)  # (C, 1, k, k)

    def filt(z: Tensor) -> Tensor:
        return F.conv2d(z, w, groups=C)

    mx, my = filt(x), filt(y)
    sxx = filt(x * x) - mx**2
    syy = filt(y * y) - my**2
    sxy = filt(x * y) - mx * my
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    smap = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return smap.flatten(1).mean(1)


# =========================================================================== compatibility
def check_compatible(name: str, teacher: Artifact, student: Artifact | None) -> None:
    """A decoder needs a student whose latents are those of its teacher (size and scene kind)."""
    if student is None:
        raise BenchError(f"decoder {name!r} decodes a student's (PAE's) latents; give one (--student)")
    s, t = student.model, teacher.model
    if s.latent_dim != t.latent_dim:
        raise BenchError(f"decoder {name!r}: student {student.name!r} has latent size {s.latent_dim} but teacher "
                         f"{teacher.name!r} has {t.latent_dim}")
    if bool(s.multi_scene) != bool(t.multi_scene):
        raise BenchError(f"decoder {name!r}: student {student.name!r} and teacher {teacher.name!r} differ in "
                         "being multi-scene")


@torch.no_grad()
def pose_latents(student: Artifact, data: PoseData, device: torch.device) -> tuple[Tensor, Tensor]:
    """The student's latents ``(N, D)`` x 2 of ``data``'s ground-truth poses (ground-truth scenes)."""
    from harness.stages.refiner import encode_poses

    model = student.model.to(device).eval()
    return encode_poses(model, data.poses().to(device), data.scene_ids().to(device))


# =========================================================================== training
class DecoderTask(nn.Module):
    """``forward((latent_x, latent_q, images uint8)) -> (L1 loss, logs with PSNR)``."""

    def __init__(self, decoder: Decoder) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, batch: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, dict[str, float]]:
        lx, lq, u8 = batch
        target = u8.float() / 255.0  # (B, 3, S, S)
        out = self.decoder(lx, lq)
        loss = (out - target).abs().mean()
        with torch.no_grad():
            logs = {"psnr": float(psnr(out.detach(), target).mean())}
        return loss, logs


class LatentImageBatches:
    """Batches ``(latent_x, latent_q, images uint8)`` in an order fixed by ``(seed, epoch)``."""

    def __init__(self, lx: Tensor, lq: Tensor, images: Tensor, batch_size: int, seed: int = 0,
                 device: torch.device | None = None) -> None:
        self.lx, self.lq, self.images = lx, lq, images
        self.batch_size, self.seed = batch_size, seed
        self.device = device or torch.device("cpu")

    def __call__(self, epoch: int, rank: int = 0, world: int = 1) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.lx), generator=g)
        mine = order[: (len(order) // world) * world][rank::world]
        bs = max(1, self.batch_size // world)
        stop = len(mine) - len(mine) % bs if len(mine) > bs else len(mine)
        for i in range(0, stop, bs):
            idx = mine[i : i + bs]
            yield self.lx[idx].to(self.device), self.lq[idx].to(self.device), self.images[idx].to(self.device)


def obtain_decoder(ctx: Context, name: str, teacher: Artifact, student: Artifact) -> Artifact:
    """The decoder ``name`` for ``student`` (distilled from ``teacher``), from the store or trained."""
    check_compatible(name, teacher, student)
    recipe = {**DEFAULTS, **ctx.recipe("decoder", name)}
    try:
        model = ctx.registry.build("decoder", name, latent_dim=int(student.model.latent_dim), **model_config(recipe))
    except TypeError as exc:
        raise BenchError(f"decoder {name!r}: bad recipe option ({exc}); model options: {sorted(model_config(recipe))}") from None
    if not isinstance(model, Decoder):
        raise BenchError(f"decoder plugin {name!r} built a {type(model).__name__}, not a harness Decoder")
    train = ctx.data.split("train")
    upstream = {"teacher": teacher.fingerprint, "student": student.fingerprint, "data": train.fingerprint()}
    fp = fingerprint("decoder", name, plugin_version(ctx, "decoder", name), recipe, upstream)
    out_dir = ctx.store.artifact_dir("decoder", name, fp)
    weights = out_dir / "weights.pth"
    art = Artifact("decoder", name, fp, recipe, model, weights, upstream)
    train_once(ctx, "decoder", name, fp, model, weights, lambda: _train(ctx, name, model, recipe, student, train, out_dir))
    return art


def _train(ctx: Context, name: str, model: Decoder, recipe: dict[str, Any], student: Artifact, train: PoseData,
           out_dir: Path) -> None:
    from harness.images import load_images

    if len(train.labels) == 0:
        raise BenchError(f"decoder {name!r}: no training frames")
    t0 = time.perf_counter()
    config = TrainConfig.from_recipe(recipe)
    images = load_images(train, int(model.image_size), ctx.store)  # (N, 3, S, S) uint8
    lx, lq = pose_latents(student, train, ctx.device)
    task = DecoderTask(model).to(ctx.device)
    batches = LatentImageBatches(lx.cpu(), lq.cpu(), images, config.batch_size, config.seed, ctx.device)
    history = fit(task, batches, config, out_dir / "checkpoints", desc=f"decoder {name}", progress=ctx.progress,
                  device=ctx.device)
    if distributed_env()[0] != 0:
        return
    meta = {
        "kind": "decoder", "name": name, "recipe": recipe, "dataset": ctx.dataset, "scenes": train.scenes,
        "student": student.fingerprint, "train_frames": len(train.labels), "epochs": len(history),
        "train_seconds": sum(h.get("seconds", 0.0) for h in history), "wall_seconds": time.perf_counter() - t0,
        "final": history[-1] if history else {}, "torch": torch.__version__,
    }
    save_state(out_dir / "weights.pth", model.state_dict(), meta=meta)


# =========================================================================== scores and grids
@torch.inference_mode()
def decode_split(ctx: Context, decoder: Artifact, student: Artifact, split: str,
                 index: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(decoded, truth)`` float ``(N, 3, S, S)`` in [0, 1] for ``split``'s ground-truth poses (or ``index`` of them)."""
    from harness.images import load_images

    data = ctx.data.split(split)
    if len(data.labels) == 0:
        raise BenchError(f"no {split} frames to decode")
    S = int(decoder.model.image_size)
    images = load_images(data, S, ctx.store)
    lx, lq = pose_latents(student, data, ctx.device)
    if index is not None:
        images, lx, lq = images[index], lx[index], lq[index]
    bs = int(decoder.config.get("eval_batch_size", DEFAULTS["eval_batch_size"]))
    model = decoder.model.to(ctx.device).eval()
    out = torch.cat([model(lx[i : i + bs], lq[i : i + bs]).float().cpu() for i in range(0, len(lx), bs)])
    return out, images.float() / 255.0


def decoder_scores(ctx: Context, decoder: Artifact, teacher: Artifact, student: Artifact, split: str) -> dict[str, float]:
    """Mean PSNR (dB) and SSIM of images decoded from ``split``'s ground-truth poses against the true images."""
    check_compatible(decoder.name, teacher, student)
    out, truth = decode_split(ctx, decoder, student, split)
    chunks = range(0, len(out), 256)  # bounded memory: SSIM keeps five float64 maps per image
    p = torch.cat([psnr(out[i : i + 256], truth[i : i + 256]) for i in chunks])
    s = torch.cat([ssim(out[i : i + 256], truth[i : i + 256]) for i in chunks])
    return {"psnr": float(p.mean()), "ssim": float(s.mean()), "frames": int(len(out))}


def write_grid(ctx: Context, decoder: Artifact, teacher: Artifact, student: Artifact, split: str, out: Path,
               n: int = 16) -> Path:
    """A PNG of ``n`` frames (evenly spaced over ``split``): each ground truth beside its decoded image, 4 pairs a row."""
    from torchvision.utils import save_image

    check_compatible(decoder.name, teacher, student)
    N = len(ctx.data.split(split).labels)
    index = torch.unique(torch.linspace(0, max(N - 1, 0), min(n, N)).round().long())
    decoded, truth = decode_split(ctx, decoder, student, split, index)
    tiles = torch.stack([truth, decoded], dim=1).flatten(0, 1)  # (2n, 3, S, S): truth, decoded, truth, ...
    out = Path(out)
    with atomic_path(out) as tmp:
        save_image(tiles, tmp, nrow=8, padding=2, pad_value=1.0, format="PNG")
    return out


__all__ = ["obtain_decoder", "decoder_scores", "write_grid", "psnr", "ssim", "gaussian_window", "DecoderTask"]
