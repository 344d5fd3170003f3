"""Training pairs of the reference's iAPR protocol: its pair-list file and its random swap.

The pair list is a CSV with columns ``img_path_a, scene_a, scene_id_a,
x1_a..x3_a, q1_a..q4_a`` (frame a), the same with suffix ``_b`` (frame b) and
``x1_ab..x3_ab, q1_ab..q4_ab``: ``rel(a -> b)`` (``t = t_b - t_a``, world
frame, metres; ``q = q_a^-1 q_b``, w first). Image paths are relative to the
dataset root (a leading ``/`` is ignored). A pair trains the RPR with query
image ``a`` and the reference pose ``b``; each time a pair is drawn it is
swapped with probability 1/2 (query ``b``, reference ``a``, target the inverse
relative pose ``(-t, q^-1)``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from torch import Tensor

from aprbench.harness import poses as P
from aprbench.harness.errors import BenchError

POSE = ("x1", "x2", "x3", "q1", "q2", "q3", "q4")
COLUMNS = ("img_path_a", "img_path_b", *(f"{c}_ab" for c in POSE))


def read_pair_list(path: str | Path, img_paths: list[str]) -> tuple[Tensor, Tensor, Tensor]:
    """``(a, b, rel)``: row indices into ``img_paths`` (the training split's ``img_path``) of both frames of
    every pair, and the file's ``rel(a -> b)`` ``(P, 7)``. Refuses missing columns or unknown images."""
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"pair list {path} does not exist")
    frame = pd.read_csv(path)
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise BenchError(f"pair list {path}: missing columns {', '.join(missing)}")
    row = {p.lstrip("/"): i for i, p in enumerate(img_paths)}
    idx = []
    for col in ("img_path_a", "img_path_b"):
        names = [str(p).lstrip("/") for p in frame[col]]
        unknown = [n for n in names if n not in row]
        if unknown:
            raise BenchError(f"pair list {path}: {len(unknown)} image(s) not in the training split, e.g. {unknown[0]!r}")
        idx.append(torch.tensor([row[n] for n in names], dtype=torch.int64))
    rel = torch.as_tensor(frame[[f"{c}_ab" for c in POSE]].to_numpy(), dtype=torch.float32)
    return idx[0], idx[1], rel


def swap_half(a: Tensor, b: Tensor, rel: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Each pair swapped with probability 1/2: ``(b, a, (-t, q^-1))`` (the reference's rule)."""
    flip = torch.rand(len(a), generator=generator) > 0.5
    inv = torch.cat([-rel[:, :3], rel[:, 3:4], -rel[:, 4:]], 1)
    return torch.where(flip, b, a), torch.where(flip, a, b), torch.where(flip[:, None], inv, rel)


def write_pair_list(path: str | Path, img_paths: list[str], scenes: list[str], scene_ids: Tensor, poses: Tensor,
                    a: Tensor, b: Tensor) -> None:
    """Write pairs ``(a, b)`` of frames (``poses`` ``(N, 7)``) in the reference's pair-list format."""
    rel = P.relative_target(poses[a], poses[b])
    cols: dict[str, list] = {}
    for s, ix in (("a", a), ("b", b)):
        cols[f"img_path_{s}"] = ["/" + img_paths[i].lstrip("/") for i in ix.tolist()]
        cols[f"scene_{s}"] = [scenes[i] for i in ix.tolist()]
        cols[f"scene_id_{s}"] = scene_ids[ix].tolist()
        for j, c in enumerate(POSE):
            cols[f"{c}_{s}"] = poses[ix, j].tolist()
    for j, c in enumerate(POSE):
        cols[f"{c}_ab"] = rel[:, j].tolist()
    pd.DataFrame(cols).to_csv(path, index=False)


__all__ = ["read_pair_list", "swap_half", "write_pair_list", "COLUMNS"]
