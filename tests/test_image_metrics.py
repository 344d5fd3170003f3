"""harness.results.metrics.psnr / ssim (torchmetrics); SSIM against an independent computation is in test_decoder.py."""

from __future__ import annotations

import pytest
import torch

from aprbench.harness.results import metrics


def test_psnr_of_a_known_error():
    x = torch.zeros(2, 3, 16, 16)
    y = torch.stack([torch.full((3, 16, 16), 0.1), torch.full((3, 16, 16), 0.01)])  # MSE 1e-2 and 1e-4
    assert metrics.psnr(y, x).tolist() == pytest.approx([20.0, 40.0])
    assert metrics.psnr(y * 255, x, data_range=255.0).tolist() == pytest.approx([20.0, 40.0])
    assert torch.isinf(metrics.psnr(x, x)).all()


def test_ssim_refuses_images_smaller_than_its_window():
    with pytest.raises(ValueError, match="smaller than the 11-pixel window"):
        metrics.ssim(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))
