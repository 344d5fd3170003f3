"""Pose error summaries: medians, means, threshold accuracies, per scene.

Position errors in metres, orientation errors in degrees (``harness.poses``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from aprbench.harness.poses import pose_errors

# (metres, degrees): 7Scenes-style, then Cambridge-style
THRESHOLDS: list[tuple[float, float]] = [(0.05, 5.0), (0.10, 10.0), (0.25, 2.0), (0.5, 5.0), (5.0, 10.0)]


def threshold_name(m: float, deg: float) -> str:
    """Column name of a threshold accuracy, e.g. ``acc_0.05m_5deg``."""
    return f"acc_{m:g}m_{deg:g}deg"


def errors(est, gt) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame ``(position error m, orientation error deg)`` as float64 numpy arrays."""
    e, g = torch.tensor(np.asarray(est, dtype=np.float64)), torch.tensor(np.asarray(gt, dtype=np.float64))
    pos, ori = pose_errors(e, g)
    return pos.numpy(), ori.numpy()


def summarize(pos_err: np.ndarray, ori_err: np.ndarray) -> dict[str, float]:
    """Median and mean of both errors and the fraction of frames within each of ``THRESHOLDS``."""
    pos_err, ori_err = np.asarray(pos_err, dtype=np.float64), np.asarray(ori_err, dtype=np.float64)
    out = {
        "median_m": float(np.median(pos_err)) if len(pos_err) else float("nan"),
        "median_deg": float(np.median(ori_err)) if len(ori_err) else float("nan"),
        "mean_m": float(np.mean(pos_err)) if len(pos_err) else float("nan"),
        "mean_deg": float(np.mean(ori_err)) if len(ori_err) else float("nan"),
        "frames": int(len(pos_err)),
    }
    for m, deg in THRESHOLDS:
        out[threshold_name(m, deg)] = float(np.mean((pos_err <= m) & (ori_err <= deg))) if len(pos_err) else float("nan")
    return out


def per_scene(est, gt, scene_ids, scenes: list[str]) -> pd.DataFrame:
    """One summary row per scene present in ``scene_ids`` (plus nothing else): columns of :func:`summarize`."""
    pos, ori = errors(est, gt)
    scene_ids = np.asarray(scene_ids)
    rows = []
    for sid in np.unique(scene_ids):
        mask = scene_ids == sid
        rows.append({"scene": scenes[int(sid)], **summarize(pos[mask], ori[mask])})
    return pd.DataFrame(rows)


def mean_pose_baseline(train_poses, test_poses) -> tuple[np.ndarray, np.ndarray]:
    """Errors of the trivial predictor that always answers the mean training pose.

    The mean quaternion is the principal eigenvector of ``sum q q^T`` (sign-invariant).
    """
    train = np.asarray(train_poses, dtype=np.float64)
    t = train[:, :3].mean(axis=0)
    q = train[:, 3:] / np.linalg.norm(train[:, 3:], axis=1, keepdims=True)
    _, vecs = np.linalg.eigh(q.T @ q)
    mean = np.concatenate([t, vecs[:, -1]])
    test = np.asarray(test_poses, dtype=np.float64)
    return errors(np.broadcast_to(mean, test.shape), test)


# =========================================================================== image quality
def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image of ``(B, C, H, W)`` batches (``torchmetrics``), in float64.

    ``10 log10(data_range^2 / MSE)`` with the MSE over channels and pixels of each image; identical images
    give ``inf``.
    """
    from torchmetrics.functional.image import peak_signal_noise_ratio

    return peak_signal_noise_ratio(x.double(), y.double(), data_range=data_range, reduction="none", dim=(1, 2, 3))


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Structural similarity per image of ``(B, C, H, W)`` batches (Wang et al. 2004), from ``torchmetrics``' map.

    Gaussian window of standard deviation ``sigma`` pixels (11 pixels wide for 1.5), population statistics,
    ``C1 = (k1 range)^2``, ``C2 = (k2 range)^2``; the map is averaged over channels and over the positions
    where the window fits inside the image (as Wang et al.'s reference and scikit-image do; ``torchmetrics``'
    own mean also counts the reflection-padded border). Computed in float64 when either input is float64,
    else float32. Images must be at least as large as the window.
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    dtype = torch.float64 if torch.float64 in (x.dtype, y.dtype) else torch.float32
    size = int(3.5 * sigma + 0.5) * 2 + 1  # torchmetrics' Gaussian window width
    if min(x.shape[-2:]) < size:
        raise ValueError(f"ssim: images of {tuple(x.shape[-2:])} pixels are smaller than the {size}-pixel window")
    _, full = structural_similarity_index_measure(x.to(dtype), y.to(dtype), sigma=sigma, kernel_size=size,
                                                  reduction="none", data_range=data_range, k1=k1, k2=k2,
                                                  return_full_image=True)
    pad = (size - 1) // 2
    return full[..., pad:-pad, pad:-pad].flatten(1).mean(1)
