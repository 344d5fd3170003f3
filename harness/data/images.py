"""Images: loading (resize + centre crop), the on-disk image cache, normalisation and augmentation.

Images are uint8 ``(N, 3, S, S)`` tensors in label order; paths come from a
:class:`PoseData`'s labels, relative to its root. Errors name the label row.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from torch import Tensor

from aprbench.harness.errors import BenchError
from aprbench.harness.data.csv_checks import data_error, row_where
from aprbench.harness.data.labels import check_image_files
from aprbench.harness.api.interfaces import PoseData
from aprbench.harness.store.hdf5 import Store, atomic_path

if TYPE_CHECKING:
    from PIL import Image

DECODE_VERSION = 2  # bumped when decoding changes (2: 16-bit and float images scaled, not clipped to white)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_rgb(im: "Image.Image") -> "Image.Image":
    """An 8-bit RGB copy of any PIL image: palette, grey, alpha (dropped) and CMYK through PIL; 16-bit grey
    (``I;16*``) scaled by 255/65535; 32-bit integer (``I``) by the same when its values exceed 255; float
    (``F``) by 255 when its values lie in [0, 1], as is in [0, 255]. Values no scale fits (negative, above
    65535 or above 255 as float, not finite) raise ``OSError`` saying why (the caller names the file)."""
    from PIL import Image

    if im.mode == "RGB":
        return im
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        grey = _scaled_grey(np.asarray(im), im.mode)
        return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2), "RGB")
    try:
        return im.convert("RGB")
    except (ValueError, OSError) as exc:
        raise OSError(f"image mode {im.mode!r} cannot be converted to 8-bit RGB ({exc})") from None


def _scaled_grey(a: np.ndarray, mode: str) -> np.ndarray:
    """8-bit grey from the values of a 16-bit, 32-bit integer or float single-channel image (see :func:`to_rgb`)."""
    a = a.astype(np.float64)
    if a.size and not np.isfinite(a).all():
        raise OSError(f"image mode {mode!r} holds values that are not finite")
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if lo < 0:
        raise OSError(f"image mode {mode!r} holds negative values (min {lo:g}); expected 0..255 or 0..65535")
    if mode == "F":
        if hi > 255:
            raise OSError(f"float image values up to {hi:g}; expected 0..1 or 0..255")
        scale = 255.0 if hi <= 1.0 else 1.0
    elif mode.startswith("I;16") or hi > 255:
        if hi > 65535:
            raise OSError(f"image mode {mode!r} holds values up to {hi:g}; expected 0..255 or 0..65535")
        scale = 255.0 / 65535.0
    else:
        scale = 1.0
    return np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)


def _load_one(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im = to_rgb(im)
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


def _load_resized(path: Path, resize: int, crop: int | None) -> np.ndarray:
    """The reference's decoding: torchvision.transforms.v2 ``Resize(resize)`` (shorter side, bilinear, on the
    PIL image, as the reference applies it) then ``CenterCrop(crop)`` (none: the whole resized image)."""
    from PIL import Image
    from torchvision.transforms import v2

    with Image.open(path) as im:
        im = v2.Resize(resize)(to_rgb(im))
        if crop is not None:
            im = v2.CenterCrop(crop)(im)
        return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)


def image_cache_path(data: PoseData, size: int, store: Store, resize: int = 0, stamp: str | None = None) -> Path:
    """Where :func:`load_images` caches ``data``'s images.

    Keyed by the labels, scene list, dataset root, image size, ``resize`` and the
    images' contents as seen on disk (``stamp``, by default :func:`image_stamp`: size and mtime of each file).
    """
    tag = f"{size}" if not resize else f"{size}-r{resize}"
    parts = f"{data.fingerprint()}|{Path(data.root).resolve()}|{tag}|{stamp or image_stamp(data)}|{DECODE_VERSION}"
    key = hashlib.sha256(parts.encode()).hexdigest()[:16]
    return store.image_cache_dir() / f"images-{key}-{tag}.npy"


# the last image sets this process decoded without a disk cache (key -> tensor): a chain's stages re-use them
_RECENT: "OrderedDict[str, Tensor]" = OrderedDict()
RECENT_SETS = 2
MMAP_BYTES = 256 * 2**20  # a decoded set larger than this is always cached on disk and memory-mapped


def _needs_resizing(path: Path, size: int, resize: int) -> bool:
    """Whether decoding ``path`` at ``size`` (``resize``) changes its shape (read from the file header only)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
    except OSError:
        return True  # decoding names the file
    if resize:
        return min(w, h) != resize or (size > 0 and (w, h) != (size, size))
    return (w, h) != (size, size)


def load_images(data: PoseData, size: int, store: Store | None = None, workers: int | None = None,
                resize: int = 0) -> Tensor:
    """All images of ``data`` as uint8 ``(N, 3, size, size)`` in label order.

    ``resize`` 0: shorter side resized to ``size`` (PIL bilinear, rounded), then
    centre-cropped. ``resize`` > 0: the reference's torchvision.transforms.v2
    ``Resize(resize)`` + ``CenterCrop(size)`` on the PIL image; ``size`` 0 then
    keeps the whole resized image (``(N, 3, H, W)``, every image must resize to
    the same shape), for random crops at training time. Decoded in a thread pool.

    With a ``store``, images that must be resized (or sets over :data:`MMAP_BYTES`) are decoded once into a
    cache under ``store.root/cache`` (written through a memory map, renamed into place when complete) and
    served memory-mapped afterwards: pages are read on demand, so a large dataset never has to fit in
    memory. Images already stored at the size asked for (the synthetic renders) are not cached on disk:
    decoding a PNG costs about what reading the cache would, and the files would be stored twice; the
    last :data:`RECENT_SETS` sets stay in memory instead. The key covers each image's size and mtime: a
    changed image is re-read. A missing image file is a :class:`DataError` naming the file and label row.
    """
    if size <= 0 and resize <= 0:
        raise BenchError(f"load_images: size {size} needs resize > 0")
    stamp = image_stamp(data)
    cache = image_cache_path(data, size, store, resize, stamp) if store is not None else None
    if cache is not None and (cached := _read_cache(cache, len(data.labels), size)) is not None:
        return cached
    root = Path(data.root)
    paths = [root / p for p in data.labels["img_path"].tolist()]
    source = f"dataset {data.name!r} labels"
    check_image_files(data.labels, root, source=source)
    recent = f"{data.fingerprint()}|{root.resolve()}|{size}|{resize}|{stamp}"
    if recent in _RECENT:
        _RECENT.move_to_end(recent)
        return _RECENT[recent]
    decode = partial(_decode, paths, source, size, resize)
    if size > 0:
        shape: tuple[int, ...] = (3, size, size)
    else:
        shape = decode(0).shape if paths else (3, resize, resize)
    big = len(paths) * int(np.prod(shape)) > MMAP_BYTES
    to_disk = cache is not None and bool(paths) and (big or _needs_resizing(paths[0], size, resize))
    if to_disk:
        return _decode_to_cache(cache, decode, shape, paths, source, workers)
    out = np.empty((len(paths), *shape), dtype=np.uint8)
    _decode_all(out, decode, shape, paths, source, workers)
    return _remember(recent, torch.from_numpy(out))


def _read_cache(cache: Path, n: int, size: int) -> Tensor | None:
    """The cached ``(n, 3, size, size)`` uint8 images memory-mapped, or ``None`` (a stale or broken cache is removed)."""
    if not cache.is_file():
        return None
    try:
        arr = np.load(cache, mmap_mode="c")
        ok_shape = arr.shape == (n, 3, size, size) if size > 0 else arr.shape[:2] == (n, 3)
        if ok_shape and arr.dtype == np.uint8:
            return torch.from_numpy(arr)
    except (ValueError, OSError, EOFError):
        pass
    cache.unlink(missing_ok=True)
    return None


def _decode(paths: list[Path], source: str, size: int, resize: int, i: int) -> np.ndarray:
    """Image ``i`` as uint8 ``(3, H, W)``; an unreadable file is a :class:`DataError` naming its label row."""
    try:
        return _load_resized(paths[i], resize, size or None) if resize else _load_one(paths[i], size)
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError on bad files
        raise data_error([f"{row_where(source, i, 'img_path')}: cannot read image {paths[i]} ({exc})"]) from None


def _decode_all(out: np.ndarray, decode: Callable[[int], np.ndarray], shape: tuple[int, ...], paths: list[Path],
                source: str, workers: int | None) -> None:
    """Decode every image into ``out[i]`` in a thread pool; each must come out ``shape``."""

    def one(i: int) -> None:
        arr = decode(i)
        if arr.shape != shape:
            raise data_error([f"{row_where(source, i, 'img_path')}: image {paths[i]} resizes to "
                              f"{arr.shape[2]}x{arr.shape[1]}, the first to {shape[2]}x{shape[1]}: random crops need "
                              f"one aspect ratio (use train_crop = \"center\")"])
        out[i] = arr

    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(one, range(len(paths)), chunksize=64))


def _decode_to_cache(cache: Path, decode: Callable[[int], np.ndarray], shape: tuple[int, ...], paths: list[Path],
                     source: str, workers: int | None) -> Tensor:
    """Decode every image through a memory map into ``cache`` (renamed into place when complete); served memory-mapped."""
    with atomic_path(cache) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), *shape))
        _decode_all(out, decode, shape, paths, source, workers)
        out.flush()
        del out
    return torch.from_numpy(np.load(cache, mmap_mode="c"))


def _remember(key: str, images: Tensor) -> Tensor:
    """Keep ``images`` among the last :data:`RECENT_SETS` sets decoded in memory."""
    _RECENT[key] = images
    while len(_RECENT) > RECENT_SETS:
        _RECENT.popitem(last=False)
    return images


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


TRAIN_CROPS = ("shift", "random", "center")


def augment_v2(x: Tensor, size: int, generator: torch.Generator | None = None, crop: str = "random",
               jitter: tuple[float, float, float, float] | list[float] = (0.5, 0.5, 0.5, 0.2)) -> Tensor:
    """The reference's training augmentation of uint8 ``(B, 3, H, W)`` images, per image, returns uint8 ``(B, 3, size, size)``.

    torchvision.transforms.v2 ``RandomCrop(size)`` (``crop = "random"``) or
    ``CenterCrop(size)`` (``"center"``), then ``ColorJitter(brightness, contrast,
    saturation, hue)`` with its own factors and random order for every image.
    Random draws come from ``generator`` (one seed drawn from it per batch, the
    global RNG untouched), so a seeded epoch is reproducible.
    """
    from torchvision.transforms import v2

    steps: list[Any] = [v2.RandomCrop(size) if crop == "random" else v2.CenterCrop(size)]
    if any(jitter):
        b, c, s, h = (list(jitter) + [0.0] * 4)[:4]
        steps.append(v2.ColorJitter(brightness=b, contrast=c, saturation=s, hue=h))
    transform = v2.Compose(steps)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.stack([transform(img) for img in x])


class Preprocess:
    """A teacher recipe's image preprocessing: which cached images to load and how a training batch is augmented.

    ``image_size`` the square crop (pixels); ``resize`` the shorter side the
    images are resized to before cropping (0: to ``image_size``, aprbench's
    original loader; the reference: 256 for 224 crops); ``train_crop``
    ``"shift"`` (aprbench's original: a shift of up to ``image_size // 16``
    pixels with edge replication, jitter without hue), ``"random"``
    (``RandomCrop`` of the resized image, the reference) or ``"center"``;
    ``jitter`` (brightness, contrast, saturation, hue); ``augment`` false: none.
    Test images are always ``Resize(resize)`` + ``CenterCrop(image_size)``.
    """

    def __init__(self, image_size: int, resize: int = 0, train_crop: str = "shift",
                 jitter: tuple[float, ...] | list[float] = (0.2, 0.2, 0.2, 0.0), augment: bool = True) -> None:
        if train_crop not in TRAIN_CROPS:
            raise BenchError(f"train_crop must be one of {', '.join(TRAIN_CROPS)}, got {train_crop!r}")
        jitter = [float(v) for v in jitter]
        if len(jitter) not in (3, 4) or min(jitter) < 0 or (len(jitter) == 4 and jitter[3] > 0.5):
            raise BenchError(f"jitter must be [brightness, contrast, saturation(, hue <= 0.5)], all >= 0, got {jitter}")
        if resize and resize < image_size:
            raise BenchError(f"resize {resize} is smaller than image_size {image_size}")
        if train_crop == "shift" and len(jitter) == 4 and jitter[3]:
            raise BenchError("train_crop = \"shift\" jitters without hue: set jitter's hue to 0 or train_crop = \"random\"")
        self.image_size, self.resize, self.train_crop, self.augment = image_size, resize, train_crop, augment
        self.jitter = (jitter + [0.0])[:4]

    @classmethod
    def of(cls, task: Any) -> "Preprocess":
        """From a :class:`harness.api.recipes.TeacherConfig` (or anything with its attributes)."""
        return cls(task.image_size, getattr(task, "resize", 0), getattr(task, "train_crop", "shift"),
                   getattr(task, "jitter", (0.2, 0.2, 0.2, 0.0)), getattr(task, "augment", True))

    def test_images(self, data: PoseData, store: Store | None = None) -> Tensor:
        """uint8 ``(N, 3, S, S)``: ``Resize(resize)`` + ``CenterCrop(image_size)``, cached."""
        return load_images(data, self.image_size, store, resize=self.resize)

    def train_images(self, data: PoseData, store: Store | None = None) -> Tensor:
        """The cached uint8 images :meth:`augment` crops from: the whole resized image for random crops."""
        whole = self.augment and self.train_crop == "random" and self.resize > self.image_size
        return load_images(data, 0 if whole else self.image_size, store, resize=self.resize)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One training batch, uint8 in, uint8 ``(B, 3, S, S)`` out (augmented per image when ``augment``)."""
        S = self.image_size
        if not self.augment:
            return x if x.shape[-2:] == (S, S) else augment_v2(x, S, generator, "center", (0, 0, 0, 0))
        if self.train_crop == "shift":
            b, c, s, _ = self.jitter
            return augment_images(x, generator, b, c, s)
        return augment_v2(x, S, generator, self.train_crop, self.jitter)


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
            raise data_error([f"{row_where(f'dataset {self.data.name!r} labels', i, 'img_path')}: image file {path} does not exist"])
        try:
            with Image.open(path) as im:
                image = self.transform(to_rgb(im))
        except Exception as exc:  # as in _decode: whatever PIL raises on a bad file
            raise data_error([f"{row_where(f'dataset {self.data.name!r} labels', i, 'img_path')}: cannot read image "
                              f"{path} ({exc})"]) from None
        return {"image": image, "pose": self.poses[i], "scene": self.scenes[i], "index": torch.tensor(i, dtype=torch.int64)}
