"""The synthetic scenes and their handheld-like camera trajectories.

World frame: z up, metres. Cameras: OpenCV frame, poses camera-to-world
``[tx, ty, tz, qw, qx, qy, qz]``. Everything is determined by the seed.

- ``room``: an indoor room of 4 x 4 x 3 m (7Scenes scale) with furniture
  boxes; the camera is carried around the near half of the room and looks
  at the far half (walls, furniture), as a 7Scenes operator scans a scene.
- ``site``: an outdoor site at Cambridge scale: a street of building blocks
  tens of metres long, kiosks in front of them, ground, distant skyline, sky.
- :func:`twin_world`: a box world fitted around any set of camera positions.

Trajectories: every sequence (training and test alike) is drawn from the
same process - a smooth random walk of the camera through a region and of
the point it looks at through a target region, plus a slight smooth roll -
so held-out test sequences lie inside the training distribution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from aprbench.harness.poses import matrix_to_quat
from aprbench.plugins.datasets.synthetic_render import BoxWorld, face_sizes, face_textures, make_atlas

TILE = 128


@dataclass
class Motion:
    """Where cameras go: ``centre`` +- ``half`` (metres) for positions and for the looked-at point."""

    centre: tuple[float, float, float]
    half: tuple[float, float, float]
    target_centre: tuple[float, float, float]
    target_half: tuple[float, float, float]
    roll_deg: float = 4.0
    cycles: tuple[float, float] = (0.3, 1.2)  # wiggles per sequence of the smooth random walk


@dataclass
class Scene:
    name: str
    world: BoxWorld
    motion: Motion


# Camera regions (the same for every seed): the room's near half looking at its far half;
# the street in front of the facade row looking at the facades.
MOTIONS = {
    "room": Motion(centre=(0.0, -0.9, 1.4), half=(1.1, 0.7, 0.3),
                   target_centre=(0.0, 1.5, 1.0), target_half=(1.5, 0.4, 0.6)),
    "site": Motion(centre=(0.0, -7.0, 1.7), half=(20.0, 5.0, 0.3),
                   target_centre=(0.0, 14.0, 7.0), target_half=(26.0, 2.0, 5.0)),
}


def hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """``(..., 3)`` RGB from hue in [0, 1), saturation and value in [0, 1]."""
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], dim=-1)
    return v[..., None] - v[..., None] * s[..., None] * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def distinct_colours(n: int, g: torch.Generator, sat: tuple[float, float] = (0.35, 0.75),
                     val: tuple[float, float] = (0.45, 0.85)) -> Tensor:
    """``(n, 3)`` colours with evenly spread, shuffled hues (faces tell each other apart)."""
    hue = (torch.arange(n) + torch.rand(1, generator=g)) / n
    hue = hue[torch.randperm(n, generator=g)]
    s = sat[0] + torch.rand(n, generator=g) * (sat[1] - sat[0])
    v = val[0] + torch.rand(n, generator=g) * (val[1] - val[0])
    return hsv_to_rgb(hue % 1.0, s, v)


def _world(lo: Tensor, hi: Tensor, base: Tensor, g: torch.Generator, scale: float,
           calm: dict[int, float] | None = None, tile: int = TILE, **kw) -> BoxWorld:
    """Texture every face of the boxes; ``scale`` multiplies metric sizes (1 = room scale).

    ``calm``: ``{face: factor}`` scales a face's texture around its base colour (a quiet sky).
    """
    sizes = face_sizes(lo, hi)
    tex = face_textures(
        sizes, base, g, tile=tile, freq_range=(0.25 / scale, 5.0 / scale),
        patch_size=(0.3 * scale, 1.2 * scale),
    )
    for face, factor in (calm or {}).items():
        tex[face] = base[face].view(3, 1, 1) + factor * (tex[face] - base[face].view(3, 1, 1))
    atlas, cols = make_atlas(tex)
    light = torch.tensor([0.35, -0.55, 0.76])
    return BoxWorld(lo=lo, hi=hi, atlas=atlas, tile=tile, cols=cols, light=light / light.norm(), **kw)


def _place_boxes(
    g: torch.Generator, count: int, area_lo: tuple[float, float], area_hi: tuple[float, float],
    size_lo: tuple[float, float, float], size_hi: tuple[float, float, float],
    keep_out_lo: Tensor, keep_out_hi: Tensor, z0: float = 0.0, tries: int = 200,
) -> tuple[Tensor, Tensor]:
    """Up to ``count`` boxes on the ground ``z0`` inside the x-y ``area``, none overlapping the keep-out box."""
    los, his = [], []
    for _ in range(tries):
        if len(los) == count:
            break
        size = torch.tensor(size_lo) + torch.rand(3, generator=g) * (torch.tensor(size_hi) - torch.tensor(size_lo))
        xy = torch.tensor(area_lo) + torch.rand(2, generator=g) * (torch.tensor(area_hi) - torch.tensor(area_lo) - size[:2])
        lo = torch.cat([xy, torch.tensor([z0])])
        hi = lo + size
        if bool(((lo < keep_out_hi) & (hi > keep_out_lo)).all()):
            continue
        los.append(lo)
        his.append(hi)
    return torch.stack(los), torch.stack(his)


def room(seed: int) -> Scene:
    """Indoor room 4 x 4 x 3 m with furniture in its far half and along the side walls."""
    g = torch.Generator().manual_seed(seed * 1000 + 1)
    motion = MOTIONS["room"]
    keep_lo = torch.tensor(motion.centre) - torch.tensor(motion.half) - 0.5
    keep_hi = torch.tensor(motion.centre) + torch.tensor(motion.half) + 0.5
    f_lo, f_hi = _place_boxes(g, 7, (-2.0, -2.0), (2.0, 2.0), (0.3, 0.3, 0.3), (1.0, 0.8, 1.6), keep_lo, keep_hi)
    s_lo, s_hi = _place_boxes(g, 3, (-2.0, 0.0), (2.0, 2.0), (0.4, 0.25, 0.1), (1.0, 0.4, 0.3), keep_lo, keep_hi,
                              z0=float(1.2 + torch.rand(1, generator=g) * 0.6))  # shelves
    lo = torch.cat([torch.tensor([[-2.0, -2.0, 0.0]]), f_lo, s_lo])
    hi = torch.cat([torch.tensor([[2.0, 2.0, 3.0]]), f_hi, s_hi])
    base = distinct_colours(6 * len(lo), g)
    return Scene("room", _world(lo, hi, base, g, scale=1.0, fog_colour=(0.0, 0.0, 0.0), fog_distance=9.0), motion)


def site(seed: int) -> Scene:
    """Outdoor street at Cambridge scale: a row of building blocks, kiosks, ground, skyline and sky."""
    g = torch.Generator().manual_seed(seed * 1000 + 2)
    motion = MOTIONS["site"]
    keep_lo = torch.tensor(motion.centre) - torch.tensor(motion.half) - 2.0
    keep_hi = torch.tensor(motion.centre) + torch.tensor(motion.half) + 2.0
    # the facade row: consecutive blocks of varied width, depth and height
    los, his, x = [], [], -60.0
    while x < 60.0:
        w = 8 + float(torch.rand(1, generator=g)) * 12
        h = 8 + float(torch.rand(1, generator=g)) * 16
        y0 = 11 + float(torch.rand(1, generator=g)) * 4
        los.append(torch.tensor([x, y0, 0.0]))
        his.append(torch.tensor([x + w, y0 + 10 + float(torch.rand(1, generator=g)) * 10, h]))
        x += w + 1 + float(torch.rand(1, generator=g)) * 4
    row_lo, row_hi = torch.stack(los), torch.stack(his)
    back_lo, back_hi = _place_boxes(g, 6, (-70, -60), (70, -20), (10, 8, 6), (25, 15, 20), keep_lo, keep_hi)
    kiosk_lo, kiosk_hi = _place_boxes(g, 7, (-35, 1), (35, 9), (1.5, 1.5, 2.0), (4.0, 3.0, 4.5), keep_lo, keep_hi)
    lo = torch.cat([torch.tensor([[-90.0, -90.0, 0.0]]), row_lo, back_lo, kiosk_lo])
    hi = torch.cat([torch.tensor([[90.0, 90.0, 45.0]]), row_hi, back_hi, kiosk_hi])
    base = distinct_colours(6 * len(lo), g, sat=(0.25, 0.6), val=(0.5, 0.9))
    base[4] = torch.tensor([0.42, 0.42, 0.38])  # ground (lo z plane of the enclosure)
    base[5] = torch.tensor([0.62, 0.76, 0.92])  # sky (hi z plane)
    world = _world(lo, hi, base, g, scale=8.0, calm={5: 0.35}, fog_colour=(0.72, 0.8, 0.9), fog_distance=160.0,
                   ambient=0.5)
    return Scene("site", world, motion)


SCENES = {"room": room, "site": site}


def twin_world(positions: Tensor, seed: int = 0, boxes: int = 12, tile: int = 256) -> BoxWorld:
    """A box world fitted around camera ``positions`` ``(N, 3)``, for any axis convention.

    An enclosing box a margin away from the cameras (all six faces textured in
    distinct colours, so no up axis is assumed) and ``boxes`` boxes inside that
    hold no camera. Texture scales follow the size of the enclosure.
    """
    g = torch.Generator().manual_seed(seed * 1000 + 7)
    p = positions.float()
    pmin, pmax = p.min(0).values, p.max(0).values
    extent = float((pmax - pmin).max().clamp_min(0.5))
    margin = max(0.6 * extent, 1.5)
    lo_enc, hi_enc = pmin - margin, pmax + margin
    size = hi_enc - lo_enc
    los, his = [lo_enc], [hi_enc]
    clearance = 0.05 * extent + 0.3
    for _ in range(40 * boxes):
        if len(los) > boxes:
            break
        bsize = size * (0.08 + 0.2 * torch.rand(3, generator=g))
        lo = lo_enc + torch.rand(3, generator=g) * (size - bsize)
        hi = lo + bsize
        inside = ((p > lo - clearance) & (p < hi + clearance)).all(dim=1)
        if bool(inside.any()):
            continue
        los.append(lo)
        his.append(hi)
    lo, hi = torch.stack(los), torch.stack(his)
    scale = float(size.max()) / 8.0  # finer than a room scaled up: the walls are a margin away
    base = distinct_colours(6 * len(lo), g)
    return _world(lo, hi, base, g, scale=scale, tile=tile, fog_colour=(0.0, 0.0, 0.0),
                  fog_distance=3.0 * float(size.max()))


# --------------------------------------------------------------------------- trajectories
def _smooth_walk(n_seq: int, frames: int, dims: int, cycles: tuple[float, float], g: torch.Generator) -> Tensor:
    """``(n_seq, frames, dims)`` smooth curves in [-1, 1]: normalised sums of 3 random sinusoids."""
    k = 3
    t = torch.linspace(0, 1, frames, dtype=torch.float64).view(1, frames, 1, 1)
    freq = cycles[0] + torch.rand(n_seq, 1, dims, k, generator=g, dtype=torch.float64) * (cycles[1] - cycles[0])
    phase = torch.rand(n_seq, 1, dims, k, generator=g, dtype=torch.float64) * 2 * math.pi
    amp = 0.3 + torch.rand(n_seq, 1, dims, k, generator=g, dtype=torch.float64)
    s = (amp * torch.sin(2 * math.pi * freq * t + phase)).sum(-1) / amp.sum(-1)
    return torch.tanh(1.8 * s) / math.tanh(1.8)  # smooth, in [-1, 1], reaching the edges of its region


def look_at(position: Tensor, target: Tensor, roll_rad: Tensor, up: tuple[float, float, float] = (0, 0, 1)) -> Tensor:
    """Camera-to-world rotations ``(..., 3, 3)`` (OpenCV: x right, y down, z forward) looking at ``target``."""
    z = target - position
    z = z / z.norm(dim=-1, keepdim=True)
    x = torch.cross(z, torch.tensor(up, dtype=z.dtype).expand_as(z), dim=-1)
    x = x / x.norm(dim=-1, keepdim=True)
    y = torch.cross(z, x, dim=-1)
    c, s = torch.cos(roll_rad)[..., None], torch.sin(roll_rad)[..., None]
    x, y = c * x + s * y, -s * x + c * y  # roll about the optical axis
    return torch.stack([x, y, z], dim=-1)


def trajectories(motion: Motion, n_seq: int, frames: int, g: torch.Generator) -> Tensor:
    """``(n_seq, frames, 7)`` camera-to-world poses (float64), smooth in position, yaw, pitch and roll."""
    c, h = torch.tensor(motion.centre, dtype=torch.float64), torch.tensor(motion.half, dtype=torch.float64)
    tc, th = torch.tensor(motion.target_centre, dtype=torch.float64), torch.tensor(motion.target_half, dtype=torch.float64)
    pos = c + h * _smooth_walk(n_seq, frames, 3, motion.cycles, g)
    target = tc + th * _smooth_walk(n_seq, frames, 3, motion.cycles, g)
    roll = math.radians(motion.roll_deg) * _smooth_walk(n_seq, frames, 1, motion.cycles, g)[..., 0]
    R = look_at(pos, target, roll)
    return torch.cat([pos, matrix_to_quat(R)], dim=-1)
