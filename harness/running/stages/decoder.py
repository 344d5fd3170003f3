"""Decoders as artifacts: images from pose encodings.

A decoder maps the student's (PAE's) latents of a pose to an ``S x S`` image.
Training: the student encodes the training ground-truth poses (its scene for
a multi-scene student), the decoder is fitted with L1 against the training
images resized to ``S`` (``harness.data.images.load_images``, cached in the store).
Scores: PSNR (dB) and SSIM (Gaussian window) of decoded vs true images on a
split; grids: PNGs of ground truth beside decoded.

A decoder recipe resolves (``harness.api.recipes``) into the training loop's config,
:class:`harness.api.recipes.DecoderConfig` and the model's config for the factory
(``image_size``, ``hidden``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from aprbench.harness.errors import BenchError
from aprbench.harness.results.metrics import psnr, ssim
from aprbench.harness.api.interfaces import Decoder, PoseData
from aprbench.harness.training.batches import Batches
from aprbench.harness.api.compat import check_decoder, to_model_scenes
from aprbench.harness.api.recipes import Recipe
from aprbench.harness.running.stages.context import Artifact, Context, Stage, obtain, training_paths, under_threads
from aprbench.harness.store.hdf5 import atomic_path
from aprbench.harness.training.loop import fit

def _check_pairing(name: str, teacher: Artifact, student: Artifact | None) -> None:
    check_decoder(name, teacher.name, teacher.model, student.name if student else None,
                  student.model if student else None)


@torch.no_grad()
def pose_latents(student: Artifact, data: PoseData, device: torch.device, precision: str = "fp32") -> tuple[Tensor, Tensor]:
    """The student's float32 latents ``(N, D)`` x 2 of ``data``'s ground-truth poses (ground-truth scenes, in the
    student's own scene order: ``harness.api.compat.to_model_scenes``), encoded under ``precision``'s autocast."""
    from aprbench.harness.training.devices import autocast
    from aprbench.harness.running.stages.refiner import encode_poses

    model = student.model.to(device).eval()
    with autocast(device, precision):
        scenes = to_model_scenes(data.scene_ids(), data.scenes, model)
        return encode_poses(model, data.poses().to(device), scenes.to(device))


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


def _build_args(ctx: Context, upstream: dict[str, Artifact]) -> dict[str, Any]:
    return {"latent_dim": int(upstream["student"].model.latent_dim)}


def _check(ctx: Context, recipe: Recipe, model: Decoder, upstream: dict[str, Artifact]) -> None:
    _check_pairing(recipe.name, upstream["teacher"], upstream.get("student"))


def obtain_decoder(ctx: Context, name: str, teacher: Artifact, student: Artifact,
                   checkpoint: Path | None = None) -> Artifact:
    """The decoder ``name`` for ``student`` (distilled from ``teacher``), from the store, ``checkpoint``, or trained."""
    _check_pairing(name, teacher, student)
    return obtain(ctx, DECODER, name, {"teacher": teacher, "student": student}, checkpoint)


def _train(ctx: Context, art: Artifact, upstream: dict[str, Artifact], out_dir: Path) -> tuple[list, dict]:
    from aprbench.harness.data.images import load_images

    model, config = art.model, art.recipe.train
    train = ctx.data.split("train")
    images = load_images(train, int(model.image_size), ctx.store, resize=art.recipe.task.resize)  # (N, 3, S, S) uint8
    lx, lq = pose_latents(upstream["student"], train, ctx.device, ctx.precision)
    task = DecoderTask(model).to(ctx.device)
    batches = Batches((lx.cpu(), lq.cpu(), images), config.batch_size, config.seed, device=ctx.device)
    history = fit(task, batches, config, desc=f"decoder {art.name}", progress=ctx.progress, device=ctx.device,
                  precision=ctx.precision, log_kind=ctx.log, **training_paths(out_dir))
    return history, {"student": upstream["student"].fingerprint}


DECODER = Stage("decoder", Decoder, _build_args, _check, _train)


# =========================================================================== scores and grids
@torch.inference_mode()
def decode_split(ctx: Context, decoder: Artifact, student: Artifact, split: str,
                 index: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(decoded, truth)`` float32 ``(N, 3, S, S)`` in [0, 1] for ``split``'s ground-truth poses (or ``index`` of
    them), decoded under ``ctx.precision``'s autocast."""
    from aprbench.harness.training.devices import autocast
    from aprbench.harness.data.images import load_images

    data = ctx.data.split(split)
    if len(data.labels) == 0:
        raise BenchError(f"no {split} frames to decode")
    S = int(decoder.model.image_size)
    images = load_images(data, S, ctx.store, resize=decoder.recipe.task.resize)
    lx, lq = pose_latents(student, data, ctx.device, ctx.precision)
    if index is not None:
        images, lx, lq = images[index], lx[index], lq[index]
    bs = decoder.recipe.task.eval_batch_size
    model = decoder.model.to(ctx.device).eval()
    with autocast(ctx.device, ctx.precision):
        out = torch.cat([model(lx[i : i + bs], lq[i : i + bs]).float().cpu() for i in range(0, len(lx), bs)])
    return out, images.float() / 255.0


@under_threads
def decoder_scores(ctx: Context, decoder: Artifact, teacher: Artifact, student: Artifact, split: str) -> dict[str, float]:
    """Mean PSNR (dB) and SSIM of images decoded from ``split``'s ground-truth poses against the true images."""
    _check_pairing(decoder.name, teacher, student)
    out, truth = decode_split(ctx, decoder, student, split)
    chunks = range(0, len(out), 256)  # bounded memory: SSIM keeps five float64 maps per image
    p = torch.cat([psnr(out[i : i + 256], truth[i : i + 256]) for i in chunks])
    s = torch.cat([ssim(out[i : i + 256], truth[i : i + 256]) for i in chunks])
    return {"psnr": float(p.mean()), "ssim": float(s.mean()), "frames": int(len(out))}


@under_threads
def write_grid(ctx: Context, decoder: Artifact, teacher: Artifact, student: Artifact, split: str, out: Path,
               n: int = 16) -> Path:
    """A PNG of ``n`` frames (evenly spaced over ``split``): each ground truth beside its decoded image, 4 pairs a row."""
    from torchvision.utils import save_image

    _check_pairing(decoder.name, teacher, student)
    N = len(ctx.data.split(split).labels)
    index = torch.unique(torch.linspace(0, max(N - 1, 0), min(n, N)).round().long())
    decoded, truth = decode_split(ctx, decoder, student, split, index)
    tiles = torch.stack([truth, decoded], dim=1).flatten(0, 1)  # (2n, 3, S, S): truth, decoded, truth, ...
    out = Path(out)
    with atomic_path(out) as tmp:
        save_image(tiles, tmp, nrow=8, padding=2, pad_value=1.0, format="PNG")
    return out


__all__ = ["DECODER", "obtain_decoder", "decoder_scores", "write_grid", "DecoderTask"]
