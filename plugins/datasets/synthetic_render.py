"""A small batched ray caster for box worlds, in torch.

A :class:`BoxWorld` is a set of axis-aligned boxes (``lo``/``hi`` corners,
metres); a camera may stand inside a box (the enclosing room or site sees its
inner faces) or outside (furniture, buildings). Each box face carries a
texture image, generated once (:func:`face_textures`) from a base colour, a
few soft-edged patches and ~32 random 2-D sinusoids in the face's metric
coordinates, and looked up with one ``grid_sample`` over a texture atlas.

Camera: pinhole, ``hfov_deg`` horizontal field of view, square pixels,
OpenCV frame (x right, y down, looking along +z); poses are camera-to-world
``[tx, ty, tz, qw, qx, qy, qz]``.

Face numbering: face ``f = 6 * box + 2 * axis + side`` (``side`` 0 is the
``lo`` plane, 1 the ``hi`` plane). A face's texture coordinates ``(u, v)``
run along the two other axes in increasing order (axis 0: y, z; axis 1:
x, z; axis 2: x, y).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from aprbench.harness.poses import quat_to_matrix

U_AXIS = (1, 0, 0)  # texture u axis for faces normal to axis 0, 1, 2
V_AXIS = (2, 2, 1)  # texture v axis


@dataclass
class BoxWorld:
    """Boxes, their face textures and the lighting of one scene.

    ``lo``, ``hi``: ``(B, 3)`` box corners in metres. ``atlas``: ``(3, rows*T, cols*T)``
    float texture atlas in [0, 1], face ``f`` in tile ``(f // cols, f % cols)``.
    ``light``: unit vector towards the light; ``fog_colour`` / ``fog_distance``
    (metres): colour blended in with distance ``exp(-d / fog_distance)``.
    """

    lo: Tensor
    hi: Tensor
    atlas: Tensor
    tile: int
    cols: int
    light: Tensor
    ambient: float = 0.45
    fog_colour: tuple[float, float, float] = (0.0, 0.0, 0.0)
    fog_distance: float = 10.0

    @property
    def num_faces(self) -> int:
        return 6 * len(self.lo)


def face_sizes(lo: Tensor, hi: Tensor) -> Tensor:
    """``(6B, 2)`` metric extents ``(u, v)`` of every face."""
    size = hi - lo  # (B, 3)
    per_axis = torch.stack([size[:, [U_AXIS[a], V_AXIS[a]]] for a in range(3)], dim=1)  # (B, 3, 2)
    return per_axis.repeat_interleave(2, dim=1).reshape(-1, 2)


def face_textures(
    sizes: Tensor, base: Tensor, generator: torch.Generator, tile: int = 128, waves: int = 32,
    freq_range: tuple[float, float] = (0.25, 5.0), contrast: float = 0.22, patches: int = 4,
    patch_size: tuple[float, float] = (0.3, 1.2), patch_strength: float = 0.35,
) -> Tensor:
    """Textures ``(F, 3, tile, tile)`` in [0, 1] for faces of metric ``sizes`` ``(F, 2)``.

    Per face: the ``base`` colour ``(F, 3)``; ``patches`` soft rectangles
    (``patch_size`` metres) in random colours, landmarks that tell one place
    from another; plus ``waves`` sinusoids in metric face coordinates, random
    direction and phase, frequency log-uniform in ``freq_range`` cycles/m
    (capped at 0.4 cycles/texel), amplitude proportional to ``f^-0.5``, each
    with its own colour tint.
    """
    n = len(sizes)
    g = generator
    lin = (torch.arange(tile, dtype=torch.float32) + 0.5) / tile
    u = lin.view(1, 1, tile) * sizes[:, 0].view(n, 1, 1)  # (F, 1, T) metres
    v = lin.view(1, tile, 1) * sizes[:, 1].view(n, 1, 1)  # (F, T, 1) metres
    tex = base.float().view(n, 3, 1, 1).expand(n, 3, tile, tile).clone()

    # landmark patches: soft-edged rectangles
    if patches:
        centre = torch.rand(n, patches, 2, generator=g) * sizes[:, None, :]
        half = (patch_size[0] + torch.rand(n, patches, 2, generator=g) * (patch_size[1] - patch_size[0])) / 2
        half = torch.minimum(half, sizes[:, None, :] / 3)
        colour = torch.rand(n, patches, 3, generator=g) - 0.5
        edge = (half.min(-1).values * 0.15).clamp_min(1e-3)[..., None, None]
        du = (u[:, None] - centre[..., 0, None, None]).abs() - half[..., 0, None, None]  # (F, K, 1, T)
        dv = (v[:, None] - centre[..., 1, None, None]).abs() - half[..., 1, None, None]  # (F, K, T, 1)
        inside = torch.sigmoid(-torch.maximum(du, dv) / edge)  # (F, K, T, T)
        tex = tex + patch_strength * torch.einsum("fkhw,fkc->fchw", inside, colour)

    # sinusoids in metric coordinates
    fmin, fmax = freq_range
    cap = (0.4 * tile / sizes.max(dim=1).values).clamp_min(fmin * 1.01)  # (F,) cycles/m
    logf = math.log(fmin) + torch.rand(n, waves, generator=g) * (math.log(fmax) - math.log(fmin))
    freq = torch.minimum(logf.exp(), cap[:, None])
    theta = torch.rand(n, waves, generator=g) * 2 * math.pi
    phase = torch.rand(n, waves, generator=g) * 2 * math.pi
    amp = freq.pow(-0.5)
    amp = amp / amp.square().sum(1, keepdim=True).sqrt() * contrast * math.sqrt(2)
    tint = 0.6 + 0.8 * torch.rand(n, waves, 3, generator=g)  # mostly luminance, some colour
    kx = 2 * math.pi * freq * torch.cos(theta)  # (F, W) radians per metre
    ky = 2 * math.pi * freq * torch.sin(theta)
    # separable: sin(kx u + ky v + p) = sin(kx u + p) cos(ky v) + cos(kx u + p) sin(ky v)
    au = kx[..., None] * u + phase[..., None]  # (F, W, T) along u
    av = ky[..., None] * v.transpose(1, 2)  # (F, W, T) along v
    weight = (amp[..., None] * tint).transpose(1, 2)  # (F, 3, W)
    su = weight[..., None] * torch.sin(au)[:, None]  # (F, 3, W, T)
    cu = weight[..., None] * torch.cos(au)[:, None]
    tex += torch.einsum("fcwx,fwy->fcyx", su, torch.cos(av)) + torch.einsum("fcwx,fwy->fcyx", cu, torch.sin(av))
    return tex.clamp(0.02, 1.0)


def make_atlas(textures: Tensor) -> tuple[Tensor, int]:
    """Tile ``(F, 3, T, T)`` textures into one ``(3, rows*T, cols*T)`` atlas; returns ``(atlas, cols)``."""
    n, c, t, _ = textures.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    pad = torch.zeros(rows * cols - n, c, t, t, dtype=textures.dtype)
    grid = torch.cat([textures, pad]).view(rows, cols, c, t, t)
    return grid.permute(2, 0, 3, 1, 4).reshape(c, rows * t, cols * t).contiguous(), cols


def image_dims(size: int | Sequence[int]) -> tuple[int, int]:
    """``(width, height)`` in pixels from a square ``size`` or a ``(width, height)`` pair."""
    if isinstance(size, int):
        return size, size
    w, h = size
    return int(w), int(h)


def camera_rays(size: int | Sequence[int], hfov_deg: float = 60.0) -> Tensor:
    """``(H*W, 3)`` ray directions in the camera frame (OpenCV), row-major pixel centres.

    ``size``: square side or ``(width, height)`` in pixels; ``hfov_deg`` is the
    horizontal field of view (square pixels, principal point at the centre).
    """
    w, h = image_dims(size)
    f = (w / 2) / math.tan(math.radians(hfov_deg) / 2)
    cx = (torch.arange(w, dtype=torch.float32) + 0.5 - w / 2) / f
    cy = (torch.arange(h, dtype=torch.float32) + 0.5 - h / 2) / f
    y, x = torch.meshgrid(cy, cx, indexing="ij")
    return torch.stack([x, y, torch.ones_like(x)], dim=-1).reshape(-1, 3)


def render(world: BoxWorld, poses: Tensor, size: int | Sequence[int] = 64, hfov_deg: float = 60.0, chunk: int = 16,
           supersample: int = 1, workers: int | None = None) -> Tensor:
    """Render ``(N, 7)`` camera-to-world poses to uint8 images ``(N, 3, H, W)``.

    ``size`` is the square side or ``(width, height)`` in pixels.

    ``supersample`` renders at ``size * supersample`` and box-filters down
    (anti-aliasing). Batched over ``chunk`` frames; every ray of a chunk is
    tested against every box at once (slab test). Chunks are spread over
    ``workers`` threads (default: the CPU count, at most 4), each running
    single-threaded torch ops: on a busy machine this is several times faster
    than torch's own OpenMP threads, which spin at barriers when cores are
    shared. (Torch's thread count is set to 1 for the duration of the call.)
    """
    poses = poses.float()
    w, h = image_dims(size)
    out = torch.empty(len(poses), 3, h, w, dtype=torch.uint8)
    big = (w * supersample, h * supersample)
    rays = camera_rays(big, hfov_deg)

    def one(start: int) -> None:
        img = _render_chunk(world, poses[start:start + chunk], rays, big)
        if supersample > 1:
            img = F.avg_pool2d(img, supersample)
        out[start:start + chunk] = (img.clamp(0, 1) * 255).round().to(torch.uint8)

    workers = workers or min(4, os.cpu_count() or 1)
    starts = range(0, len(poses), chunk)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if workers == 1 or len(starts) == 1:
            for start in starts:
                one(start)
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                list(pool.map(one, starts))
    finally:
        torch.set_num_threads(previous)
    return out


def _slab(lo: Tensor, hi: Tensor, o: Tensor, inv: Tensor) -> tuple[Tensor, Tensor]:
    """Entry and exit distances ``(tnear, tfar)`` of rays against boxes, axis by axis (broadcasting).

    In-place where possible: the ``(n, p, B)`` temporaries dominate the cost.
    """
    tnear = tfar = None
    for k in range(3):
        a = (lo[..., k] - o[..., k]) * inv[..., k]
        b = (hi[..., k] - o[..., k]) * inv[..., k]
        near = torch.minimum(a, b)
        far = torch.maximum(a, b, out=a)
        if tnear is None:
            tnear, tfar = near, far
        else:
            torch.maximum(tnear, near, out=tnear)
            torch.minimum(tfar, far, out=tfar)
    return tnear, tfar


def _render_chunk(world: BoxWorld, poses: Tensor, rays_cam: Tensor, size: tuple[int, int]) -> Tensor:
    n, p = len(poses), len(rays_cam)
    R = quat_to_matrix(poses[:, 3:])  # (n, 3, 3) camera-to-world
    d = torch.einsum("nij,pj->npi", R, rays_cam)  # (n, p, 3) world directions (not unit)
    o = poses[:, None, :3]  # (n, 1, 3)
    d = torch.where(d.abs() < 1e-9, torch.full_like(d, 1e-9), d)
    inv = 1.0 / d
    # slab test of every ray against every box at once: (n, p, B)
    tnear, tfar = _slab(world.lo, world.hi, o[:, :, None, :], inv[:, :, None, :])
    eps = 1e-4
    # outside a box its entry face is visible, inside it (the enclosure) its exit face
    miss = (tnear > tfar) | (tfar <= eps)
    t_hit = torch.where(tnear > eps, tnear, tfar).masked_fill_(miss, math.inf)
    t_best, box = t_hit.min(dim=-1)  # (n, p)
    # which face of the chosen box: redo the slab test for that box only, keeping the axes
    lo_b, hi_b = world.lo[box], world.hi[box]  # (n, p, 3)
    a, b = (lo_b - o) * inv, (hi_b - o) * inv
    tnear_b, axis_near = torch.minimum(a, b).max(dim=-1)
    tfar_b, axis_far = torch.maximum(a, b).min(dim=-1)
    enter = tnear_b > eps
    axis = torch.where(enter, axis_near, axis_far)
    d_axis = d.gather(-1, axis[..., None]).squeeze(-1)
    side = torch.where(enter, d_axis < 0, d_axis > 0).long()  # entering a +d ray crosses the lo plane first
    face = 6 * box + 2 * axis + side
    t_best = torch.where(torch.isfinite(t_best), t_best, torch.zeros_like(t_best))
    hit = o + t_best[..., None] * d  # (n, p, 3)

    # texture coordinates in [0, 1] within the face
    u_ax = torch.tensor(U_AXIS)[axis]
    v_ax = torch.tensor(V_AXIS)[axis]

    def coord(ax: Tensor) -> Tensor:
        lo = lo_b.gather(-1, ax[..., None]).squeeze(-1)
        hi = hi_b.gather(-1, ax[..., None]).squeeze(-1)
        return ((hit.gather(-1, ax[..., None]).squeeze(-1) - lo) / (hi - lo)).clamp(0, 1)

    T = world.tile
    half = 0.5 / T
    u = coord(u_ax).clamp(half, 1 - half)
    v = coord(v_ax).clamp(half, 1 - half)
    rows = math.ceil(world.num_faces / world.cols)
    gx = (face % world.cols + u) / world.cols * 2 - 1
    gy = (face // world.cols + v) / rows * 2 - 1
    grid = torch.stack([gx, gy], dim=-1).reshape(1, n * p, 1, 2)
    colour = F.grid_sample(world.atlas[None], grid, mode="bilinear", padding_mode="border", align_corners=False)
    colour = colour.reshape(3, n, p).permute(1, 2, 0)  # (n, p, 3)

    # shading: the visible side's normal against the light, plus distance fog
    normal_sign = -torch.sign(d_axis)  # the visible normal points back at the camera
    lambert = (normal_sign * world.light[axis]).clamp_min(0)
    shade = world.ambient + (1 - world.ambient) * lambert
    dist = t_best * d.norm(dim=-1)
    fog = torch.exp(-dist / world.fog_distance)[..., None]
    rgb = colour * shade[..., None] * fog + torch.tensor(world.fog_colour) * (1 - fog)
    return rgb.permute(0, 2, 1).reshape(n, 3, size[1], size[0])
