"""Recipe-driven image preprocessing: the reference's Resize/CenterCrop/RandomCrop/ColorJitter in ``paper``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T  # the reference's (v1) transforms, applied to PIL images as it does

from aprbench.harness import data as D
from aprbench.harness.data import images as I
from aprbench.harness.api import recipes as R
from aprbench.harness.errors import BenchError
from aprbench.harness.api.manager import get_registry
from aprbench.harness.store.hdf5 import Store
from test_data import labels_frame


def smooth_images(root, paths, size=(320, 240), seed=0) -> None:
    """Natural-ish images (smooth gradients plus noise) of ``size`` (width, height)."""
    rng = np.random.default_rng(seed)
    h, w = size[1], size[0]
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    for k, p in enumerate(paths):
        base = np.stack([np.sin(6 * xx + k), np.cos(5 * yy - k), np.sin(4 * (xx + yy))], -1) * 100 + 128
        a = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(root / p)


def paper_task(name: str = "posenet-mobilenet"):
    return R.resolve(get_registry(), "teacher", name, "synthetic", "paper").task


@pytest.mark.parametrize("name", ["posenet-mobilenet", "mstransformer"])
def test_paper_recipe_is_the_references_preprocessing(name):
    task = paper_task(name)
    assert (task.image_size, task.resize, task.train_crop, task.jitter) == (224, 256, "random", [0.5, 0.5, 0.5, 0.2])
    quick = R.resolve(get_registry(), "teacher", name, "synthetic", "quick").task
    assert (quick.resize, quick.train_crop, quick.jitter) == (0, "shift", [0.2, 0.2, 0.2, 0.0])


def test_paper_test_images_equal_the_references_pil_pipeline(tmp_path):
    df = labels_frame(3, scenes=("s",))
    smooth_images(tmp_path, df["img_path"])
    data = D.make_pose_data("x", tmp_path, df)
    prep = I.Preprocess.of(paper_task())
    got = I.normalize_images(prep.test_images(data, Store(tmp_path / "work")))
    assert got.shape == (3, 3, 224, 224)
    ref = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(I.IMAGENET_MEAN, I.IMAGENET_STD)])
    for i, p in enumerate(df["img_path"]):
        with Image.open(tmp_path / p) as im:
            expected = ref(im.convert("RGB"))
        torch.testing.assert_close(got[i], expected, atol=1e-5, rtol=0)


def test_paper_train_images_keep_the_whole_resized_frame_and_crop_per_image(tmp_path):
    df = labels_frame(2, scenes=("s",))
    smooth_images(tmp_path, df["img_path"])
    data = D.make_pose_data("x", tmp_path, df)
    whole = I.Preprocess.of(paper_task()).train_images(data, Store(tmp_path / "work"))
    assert whole.shape == (2, 3, 256, 341)  # Resize(256) of 320x240: torchvision's int(256 * 320 / 240)
    with Image.open(tmp_path / df["img_path"][0]) as im:
        np.testing.assert_array_equal(whole[0].permute(1, 2, 0).numpy(), np.asarray(T.Resize(256)(im.convert("RGB"))))
    # crops only: each output is a 224 x 224 window of its input, windows differ between images
    crops = I.Preprocess(224, 256, "random", [0, 0, 0, 0])
    x = whole[:1].expand(16, -1, -1, -1).contiguous()
    out = crops(x, torch.Generator().manual_seed(0))
    assert out.shape == (16, 3, 224, 224) and out.dtype == torch.uint8
    offsets = set()
    src = x[0]
    for o in out:
        hits = [(dy, dx) for dy in range(33) for dx in range(118) if torch.equal(src[:, dy:dy + 224, dx:dx + 224], o)]
        assert hits
        offsets.add(hits[0])
    assert len(offsets) > 8


def test_train_jitter_is_drawn_per_image_and_seeded():
    x = torch.randint(0, 256, (1, 3, 40, 40), dtype=torch.uint8).expand(12, -1, -1, -1).contiguous()
    prep = I.Preprocess(32, 40, "center", [0.5, 0.5, 0.5, 0.2])
    state = torch.get_rng_state()
    a = prep(x, torch.Generator().manual_seed(1))
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
    b = prep(x, torch.Generator().manual_seed(1))
    c = prep(x, torch.Generator().manual_seed(2))
    assert a.shape == (12, 3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    centre = x[0, :, 4:36, 4:36]
    distinct = {tuple(img.flatten()[:4096].tolist()) for img in a}
    assert len(distinct) == 12 and not any(torch.equal(img, centre) for img in a)
    # hue only changes hue: with hue jitter alone grey pixels stay grey
    grey = torch.full((4, 3, 8, 8), 90, dtype=torch.uint8)
    assert torch.equal(I.Preprocess(8, 8, "center", [0, 0, 0, 0.5])(grey, torch.Generator().manual_seed(0)), grey)


def test_quick_preprocessing_is_the_original_augmentation(tmp_path):
    task = R.resolve(get_registry(), "teacher", "posenet-mobilenet", "synthetic", "quick").task
    prep = I.Preprocess.of(task)
    x = torch.randint(0, 256, (6, 3, task.image_size, task.image_size), dtype=torch.uint8)
    assert torch.equal(prep(x, torch.Generator().manual_seed(5)), I.augment_images(x, torch.Generator().manual_seed(5)))
    df = labels_frame(3, scenes=("s",))
    smooth_images(tmp_path, df["img_path"], size=(90, 70))
    data = D.make_pose_data("x", tmp_path, df)
    assert torch.equal(prep.test_images(data), I.load_images(data, task.image_size))
    assert torch.equal(prep.train_images(data), I.load_images(data, task.image_size))


@pytest.mark.parametrize("kwargs, message", [
    ({"train_crop": "diagonal"}, "train_crop must be one of"),
    ({"jitter": [0.1, 0.1]}, "jitter must be"),
    ({"jitter": [0.1, 0.1, 0.1, 0.7], "train_crop": "random"}, "hue <= 0.5"),
    ({"jitter": [0.1, 0.1, 0.1, 0.1]}, "jitters without hue"),
    ({"resize": 20}, "smaller than image_size"),
])
def test_bad_preprocessing_is_refused(kwargs, message):
    with pytest.raises(BenchError, match=message):
        I.Preprocess(32, **kwargs)


def test_bad_train_crop_is_refused_by_the_recipe():
    with pytest.raises(BenchError, match="train_crop"):
        R.resolve(get_registry(), "teacher", "posenet-mobilenet", "synthetic", "quick", R.parse_sets(["teacher.train_crop=x"]))


def test_paper_decoder_target_is_resize_72_centre_crop_64(tmp_path):
    task = R.resolve(get_registry(), "decoder", "image-decoder", "synthetic", "paper").task
    assert task.resize == 72
    assert R.resolve(get_registry(), "decoder", "image-decoder", "synthetic", "quick").task.resize == 0
    df = labels_frame(2, scenes=("s",))
    smooth_images(tmp_path, df["img_path"], size=(160, 120))
    data = D.make_pose_data("x", tmp_path, df)
    got = I.load_images(data, 64, Store(tmp_path / "work"), resize=task.resize).float() / 255
    ref = T.Compose([T.Resize(72), T.CenterCrop(64), T.ToTensor()])
    for i, p in enumerate(df["img_path"]):
        with Image.open(tmp_path / p) as im:
            torch.testing.assert_close(got[i], ref(im.convert("RGB")), atol=1e-6, rtol=0)


def test_paper_renders_the_synthetic_scenes_at_its_recipes_size(tmp_path):
    from aprbench.harness.data.datasets import open_dataset
    from aprbench.harness.api.registry import dataset_defaults

    assert dataset_defaults("synthetic", "paper") == {"image_size": 256} and dataset_defaults("synthetic", "quick") == {}
    assert dataset_defaults("sevenscenes", "paper") == {}
    store, registry = Store(tmp_path / "work"), get_registry()
    spec = "synthetic:frames_per_sequence=2,train_sequences=1,test_sequences=1"
    sizes = {}
    for profile, extra in (("paper", ""), ("quick", ""), ("paper", ",image_size=40x30")):
        _, data = open_dataset(spec + extra, store, registry, scenes=["room"], profile=profile)
        with Image.open(Path(data.root) / data.labels["img_path"][0]) as im:
            sizes[profile + extra] = im.size
        assert data.options["image_size"] == {"paper": 256, "quick": 64}[profile] if not extra else [40, 30]
    assert sizes == {"paper": (256, 256), "quick": (64, 64), "paper,image_size=40x30": (40, 30)}
    # the paper recipe's test images are then centre crops of the render, never an upsampling
    _, data = open_dataset(spec, store, registry, scenes=["room"], profile="paper")
    x = I.Preprocess.of(paper_task()).test_images(data)
    with Image.open(Path(data.root) / data.labels["img_path"][0]) as im:
        np.testing.assert_array_equal(x[0].permute(1, 2, 0).numpy(), np.asarray(im.convert("RGB"))[16:240, 16:240])
