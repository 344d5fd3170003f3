"""harness.metrics.psnr / ssim (torchmetrics) agree with the hand-written ones of harness.stages.decoder."""

from __future__ import annotations

import pytest
import torch

from harness import metrics
from harness.stages import decoder as handwritten


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(3, 3, 64, 64), (2, 1, 17, 23)])
def test_torchmetrics_ssim_psnr_agree_with_handwritten(dtype, shape):
    g = torch.Generator().manual_seed(7)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    for noise, clamp in [(0.01, True), (0.1, True), (0.5, True), (0.1, False)]:
        y = x + noise * torch.randn(shape, generator=g, dtype=torch.float64)
        y = y.clamp(0, 1) if clamp else y
        a, b = x.to(dtype), y.to(dtype)
        got, want = metrics.ssim(a, b), handwritten.ssim(a, b)
        assert got.shape == (shape[0],) and got.dtype == dtype
        assert torch.allclose(got.double(), want.double(), rtol=0, atol=1e-4), (noise, got, want)
        assert torch.allclose(metrics.psnr(a, b), handwritten.psnr(a, b), rtol=0, atol=1e-4)
    assert torch.allclose(metrics.ssim(x, x), torch.ones(shape[0], dtype=torch.float64))


def test_psnr_of_a_known_error():
    x = torch.zeros(2, 3, 16, 16)
    y = torch.stack([torch.full((3, 16, 16), 0.1), torch.full((3, 16, 16), 0.01)])  # MSE 1e-2 and 1e-4
    assert metrics.psnr(y, x).tolist() == pytest.approx([20.0, 40.0])
    assert metrics.psnr(y * 255, x, data_range=255.0).tolist() == pytest.approx([20.0, 40.0])
    assert torch.isinf(metrics.psnr(x, x)).all()


def test_ssim_refuses_images_smaller_than_its_window():
    with pytest.raises(ValueError, match="smaller than the 11-pixel window"):
        metrics.ssim(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))
