"""Kendall's learned-weighting pose loss: ``L = Lx exp(-sx) + sx + Lq exp(-sq) + sq`` (metres, unit quaternions)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from aprbench.harness.poses import normalize_quat


class PoseLoss(nn.Module):
    """``L = Lx exp(-sx) + sx + Lq exp(-sq) + sq``.

    ``Lx`` is the mean Euclidean position error (m), ``Lq`` the mean distance
    between normalised quaternions; ``sx``, ``sq`` are learnable unless
    ``learnable=False``. Computed in float32 whatever dtype ``est`` has (under
    bf16/fp16 autocast a network's outputs are half precision).
    """

    def __init__(self, sx: float = 0.0, sq: float = 0.0, learnable: bool = True) -> None:
        super().__init__()
        self.sx = nn.Parameter(torch.tensor(float(sx)), requires_grad=learnable)
        self.sq = nn.Parameter(torch.tensor(float(sq)), requires_grad=learnable)

    def forward(self, est: Tensor, gt: Tensor) -> tuple[Tensor, dict[str, float]]:
        est, gt = est.float(), gt.float()
        lx = (est[:, :3] - gt[:, :3]).norm(dim=1).mean()
        lq = (normalize_quat(est[:, 3:]) - normalize_quat(gt[:, 3:])).norm(dim=1).mean()
        loss = lx * torch.exp(-self.sx) + self.sx + lq * torch.exp(-self.sq) + self.sq
        return loss, {"lx": float(lx.detach()), "lq": float(lq.detach())}
