"""Images: loading (resize + centre crop), the on-disk image cache, normalisation and augmentation.

Images are uint8 ``(N, 3, S, S)`` tensors in label order; paths come from a
:class:`PoseData`'s labels, relative to its root. Errors name the label row.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from harness.data import _where, check_image_files, data_error
from harness.interfaces import PoseData
from harness.store import Store, atomic_path

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _load_one(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        if (w, h) != (size, size):
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            im = im.resize((nw, nh), Image.BILINEAR, reducing_gap=None)
            left, top = (nw - size) // 2, (nh - size) // 2
            im = im.crop((left, top, left + size, top + size))
        return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)


def image_stamp(data: PoseData) -> str:
    """A digest of every image file's size and modification time (ns), in label order.

    Folded into the image cache key, so an image replaced or edited on disk is
    read again; a missing file contributes ``missing`` (loading then names it).
    """
    root = Path(data.root)
    h = hashlib.sha256()
    for rel in data.labels["img_path"].tolist():
        try:
            st = os.stat(root / rel)
            h.update(f"{rel}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{rel}|missing\n".encode())
    return h.hexdigest()


def image_cache_path(data: PoseData, size: int, store: Store) -> Path:
    """Where :func:`load_images` caches ``data``'s images.

    Keyed by the labels, scene list, dataset root, image size and the images'
    contents as seen on disk (:func:`image_stamp`: size and mtime of each file).
    """
    parts = f"{data.fingerprint()}|{Path(data.root).resolve()}|{size}|{image_stamp(data)}"
    key = hashlib.sha256(parts.encode()).hexdigest()[:16]
    return store.image_cache_dir() / f"images-{key}-{size}.npy"


def load_images(data: PoseData, size: int, store: Store | None = None, workers: int | None = None) -> Tensor:
    """All images of ``data`` as uint8 ``(N, 3, size, size)`` in label order.

    Shorter side resized to ``size`` (bilinear), then centre-cropped. Decoded
    in a thread pool; with a ``store`` the tensor is cached under
    ``store.root/cache`` (atomic write) and the next call only reads it back
    (the key covers each image's size and mtime: a changed image is re-read).
    A missing image file is a :class:`DataError` naming the file and label row.
    """
    cache = image_cache_path(data, size, store) if store is not None else None
    if cache is not None and cache.is_file():
        try:
            arr = np.load(cache)
            if arr.shape == (len(data.labels), 3, size, size) and arr.dtype == np.uint8:
                return torch.from_numpy(arr)
        except (ValueError, OSError, EOFError):
            pass
        cache.unlink(missing_ok=True)
    root = Path(data.root)
    paths = [root / p for p in data.labels["img_path"].tolist()]
    check_image_files(data.labels, root, source=f"dataset {data.name!r} labels")
    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)

    def load(i: int) -> None:
        try:
            out[i] = _load_one(paths[i], size)
        except OSError as exc:
            raise data_error([f"{_where(f'dataset {data.name!r} labels', i, 'img_path')}: cannot read image {paths[i]} ({exc})"]) from None

    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(load, range(len(paths)), chunksize=64))
    if cache is not None:
        with atomic_path(cache) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, out)
    return torch.from_numpy(out)


def normalize_images(x: Tensor) -> Tensor:
    """ImageNet normalisation of uint8 ``(B, 3, H, W)`` images (floats are taken to be in [0, 1])."""
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def augment_images(
    x: Tensor, generator: torch.Generator | None = None, brightness: float = 0.2, contrast: float = 0.2,
    saturation: float = 0.2, shift: int | None = None,
) -> Tensor:
    """Batched training augmentation of uint8 ``(B, 3, H, W)`` images, returns uint8.

    Per image: colour jitter (brightness, contrast, saturation factors uniform
    in ``[1 - a, 1 + a]``, as torchvision's ColorJitter, fixed order) and a
    random translation of up to ``shift`` pixels (default ``H // 16``) by
    edge padding and cropping. Vectorised over the batch.
    """
    B, C, H, W = x.shape
    dev = x.device

    def factors(a: float) -> Tensor:
        u = torch.rand(B, 1, 1, 1, generator=generator)
        return (1 - a + 2 * a * u).to(dev)

    y = x.float()
    weights = y.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    if brightness:
        y = y * factors(brightness)
    if contrast:
        mean = (y * weights).sum(1, keepdim=True).mean(dim=(2, 3), keepdim=True)
        y = (y - mean) * factors(contrast) + mean
    if saturation:
        gray = (y * weights).sum(1, keepdim=True)
        y = gray + (y - gray) * factors(saturation)
    y = y.clamp(0, 255)
    s = H // 16 if shift is None else shift
    if s > 0:
        padded = torch.nn.functional.pad(y, (s, s, s, s), mode="replicate")
        off = torch.randint(0, 2 * s + 1, (2, B), generator=generator).to(dev)
        iy = off[0][:, None] + torch.arange(H, device=dev)  # (B, H)
        ix = off[1][:, None] + torch.arange(W, device=dev)  # (B, W)
        b = torch.arange(B, device=dev)[:, None, None]
        y = padded.permute(0, 2, 3, 1)[b, iy[:, :, None], ix[:, None, :]].permute(0, 3, 1, 2)
    return y.round().to(torch.uint8)


class PoseImageDataset(torch.utils.data.Dataset):
    """Per-sample torch Dataset with the reference torchvision transforms.

    Test: ``Resize(size)`` (shorter side), ``CenterCrop(size)``, ``ToTensor``,
    ImageNet ``Normalize``. Train adds a random translation
    (``RandomCrop(size, padding=size // 16, padding_mode='edge')``) and
    ``ColorJitter(0.2, 0.2, 0.2)``. (The reference resizes to 256/224 of the
    crop size before cropping; here train and test see the same field of view,
    like :func:`load_images` + :func:`augment_images`.) Items are dicts:
    ``image`` float ``(3, S, S)``, ``pose`` float32 ``(7,)``, ``scene`` and
    ``index`` int64 scalars.
    """

    def __init__(self, data: PoseData, size: int = 64, train: bool = False) -> None:
        from torchvision import transforms as T

        self.data = data
        self.size = size
        self.root = Path(data.root)
        self.paths = data.labels["img_path"].tolist()
        self.poses = data.poses()
        self.scenes = data.scene_ids()
        steps: list[Any] = [T.Resize(size), T.CenterCrop(size)]
        if train:
            steps += [T.RandomCrop(size, padding=max(1, size // 16), padding_mode="edge"), T.ColorJitter(0.2, 0.2, 0.2)]
        steps += [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
        self.transform = T.Compose(steps)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        from PIL import Image

        path = self.root / self.paths[i]
        if not path.is_file():
            raise data_error([f"{_where(f'dataset {self.data.name!r} labels', i, 'img_path')}: image file {path} does not exist"])
        with Image.open(path) as im:
            image = self.transform(im.convert("RGB"))
        return {"image": image, "pose": self.poses[i], "scene": self.scenes[i], "index": torch.tensor(i, dtype=torch.int64)}
