"""The image decoder: SSIM/PSNR against independent computations, learning, grids, refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aprbench.harness.errors import BenchError
from aprbench.harness.results import metrics
from aprbench.harness.running.stages import decoder as stage
from aprbench.plugins.decoders.image_decoder import MLPDecoder
from refiner_helpers import one_thread, make_ctx, make_data, student_artifact, teacher_artifact

TINY_DECODER = dict(image_size=16, hidden=[64, 128], epochs=60, batch_size=32, lr=2e-3, checkpoint_every=1000)


single_thread = pytest.fixture(autouse=True)(one_thread)

# --------------------------------------------------------------------------- metrics
def ssim_reference(x: np.ndarray, y: np.ndarray, win: int = 11, sigma: float = 1.5, L: float = 1.0) -> float:
    """Wang et al. 2004 written out with explicit loops over window positions (float64, one image (C, H, W))."""
    r = np.arange(win) - (win - 1) / 2
    g = np.exp(-(r**2) / (2 * sigma**2))
    w = np.outer(g, g)
    w /= w.sum()
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    vals = []
    for c in range(x.shape[0]):
        for i in range(x.shape[1] - win + 1):
            for j in range(x.shape[2] - win + 1):
                a, b = x[c, i : i + win, j : j + win], y[c, i : i + win, j : j + win]
                ma, mb = (w * a).sum(), (w * b).sum()
                va, vb = (w * (a - ma) ** 2).sum(), (w * (b - mb) ** 2).sum()
                cov = (w * (a - ma) * (b - mb)).sum()
                vals.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_ssim_matches_an_independent_computation():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 16, 18, generator=g, dtype=torch.float64)
    cases = [
        x.clone(),  # identical: 1
        (x * 0.7 + 0.1),  # contrast and brightness change
        (x + 0.1 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(0, 1),  # noise
    ]
    for y in cases:
        got = metrics.ssim(x, y)
        assert got.shape == (3,)
        for b in range(3):
            assert float(got[b]) == pytest.approx(ssim_reference(x[b].numpy(), y[b].numpy()), abs=1e-9)
    assert torch.allclose(metrics.ssim(x, x), torch.ones(3, dtype=torch.float64))
    assert (metrics.ssim(x, cases[1]) < 1).all() and (metrics.ssim(x, cases[2]) < 1).all()


def test_psnr_formula():
    x = torch.zeros(2, 3, 4, 4)
    y = x + torch.tensor([0.1, 0.01]).view(2, 1, 1, 1)
    assert metrics.psnr(x, y).tolist() == pytest.approx([20.0, 40.0])
    assert metrics.psnr(y * 255, x, data_range=255.0).tolist() == pytest.approx([20.0, 40.0])


def test_decoder_module_shapes():
    dec = MLPDecoder(latent_dim=256)  # the reference's: 512 -> 512 -> 1024 -> 2048 -> 3*64*64
    widths = [m.out_features for m in dec.net if isinstance(m, torch.nn.Linear)]
    assert widths == [512, 1024, 2048, 3 * 64 * 64] and dec.net[0].in_features == 512
    with torch.no_grad():
        out = dec(torch.randn(2, 256), torch.randn(2, 256))
    assert out.shape == (2, 3, 64, 64) and 0 <= float(out.min()) and float(out.max()) <= 1


# --------------------------------------------------------------------------- training, scores, grid
def test_decoder_learns_and_writes_a_grid(tmp_path):
    data = make_data(tmp_path / "data", n_train=160, n_test=24, images=True)
    ctx = make_ctx(tmp_path, data, decoder=TINY_DECODER)
    teacher, student = teacher_artifact(32), student_artifact(32)
    untrained = stage.Artifact("decoder", "image-decoder", "u0", {}, MLPDecoder(32, image_size=16, hidden=(64, 128)))
    before = stage.decoder_scores(ctx, untrained, teacher, student, "train")
    art = stage.obtain_decoder(ctx, "image-decoder", teacher, student)
    after = stage.decoder_scores(ctx, art, teacher, student, "train")
    assert after["psnr"] > before["psnr"] + 5, (before, after)
    assert after["ssim"] > before["ssim"]
    assert after["frames"] == 160
    test = stage.decoder_scores(ctx, art, teacher, student, "test")
    assert math.isfinite(test["psnr"]) and -1 <= test["ssim"] <= 1
    out = stage.write_grid(ctx, art, teacher, student, "train", tmp_path / "grid.png", n=8)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(out) as im:  # 8 frames x (truth, decoded) = 16 tiles of 16 px, 8 a row, 2 px padding
        assert im.size == (8 * 18 + 2, 2 * 18 + 2)
    again = stage.obtain_decoder(ctx, "image-decoder", teacher, student)  # from the store
    assert again.fingerprint == art.fingerprint


def test_decoder_refusals(tmp_path):
    data = make_data(tmp_path / "data")
    ctx = make_ctx(tmp_path, data, decoder=TINY_DECODER)
    with pytest.raises(BenchError, match="latent size"):
        stage.obtain_decoder(ctx, "image-decoder", teacher_artifact(8), student_artifact(16))
    with pytest.raises(BenchError, match="multi-scene"):
        stage.obtain_decoder(ctx, "image-decoder", teacher_artifact(8), student_artifact(8, multi_scene=True))
    with pytest.raises(BenchError, match="student"):
        stage.obtain_decoder(ctx, "image-decoder", teacher_artifact(8), None)
    assert not (ctx.store.root / "artifacts").exists()
