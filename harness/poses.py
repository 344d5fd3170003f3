"""Batched torch pose math.

Conventions: a pose is ``[tx, ty, tz, qw, qx, qy, qz]``, the
position in metres and a unit quaternion, scalar first, for the
camera-to-world rotation. Every function takes tensors with any leading batch
shape ``(..., 7)`` / ``(..., 4)`` / ``(..., 3)``.

Relative pose (reference convention): ``rel(p1 -> p2)`` has ``t = t2 - t1``
(world frame) and ``R = R1^-1 R2``; composition ``t2 = t1 + t``, ``R2 = R1 R``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from aprbench.harness.errors import BenchError

EPS = 1e-12


def normalize_quat(q: Tensor) -> Tensor:
    """Unit quaternion(s) ``q / |q|`` (a zero quaternion stays zero; callers validate input)."""
    return q / q.norm(dim=-1, keepdim=True).clamp_min(EPS)


def split_pose(p: Tensor) -> tuple[Tensor, Tensor]:
    """``(t, q)`` from ``(..., 7)`` poses."""
    return p[..., :3], p[..., 3:]


def join_pose(t: Tensor, q: Tensor) -> Tensor:
    """``(..., 7)`` poses from positions ``(..., 3)`` and quaternions ``(..., 4)``."""
    return torch.cat([t, q], dim=-1)


def normalize_pose(p: Tensor) -> Tensor:
    """Poses with unit quaternions and ``qw >= 0`` (the canonical sign)."""
    t, q = split_pose(p)
    return join_pose(t, canonical_quat(normalize_quat(q)))


def canonical_quat(q: Tensor) -> Tensor:
    """Quaternions with a non-negative scalar part (``q`` and ``-q`` are one rotation)."""
    return torch.where(q[..., :1] < 0, -q, q)


def quat_multiply(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product ``a * b`` (rotation ``b`` first, then ``a``)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        dim=-1,
    )


def quat_inverse(q: Tensor) -> Tensor:
    """Inverse of a unit quaternion: the vector part negated."""
    return q * q.new_tensor([1.0, -1.0, -1.0, -1.0])


def quat_to_matrix(q: Tensor) -> Tensor:
    """Rotation matrices ``(..., 3, 3)`` from (not necessarily unit) quaternions."""
    w, x, y, z = normalize_quat(q).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(*q.shape[:-1], 3, 3)


def matrix_to_quat(R: Tensor) -> Tensor:
    """Unit quaternions (``qw >= 0``) from rotation matrices ``(..., 3, 3)``.

    Uses the numerically stable branch per element (largest of w, x, y, z).
    """
    m = R
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    # 4 * squares of each component, pick the best conditioned one per element
    sq = torch.stack(
        [1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], dim=-1
    ).clamp_min(0)
    r = torch.sqrt(sq)  # 2 * |component|
    d21, d12 = m[..., 2, 1], m[..., 1, 2]
    d02, d20 = m[..., 0, 2], m[..., 2, 0]
    d10, d01 = m[..., 1, 0], m[..., 0, 1]
    cands = torch.stack(
        [
            torch.stack([r[..., 0] ** 2, d21 - d12, d02 - d20, d10 - d01], -1),
            torch.stack([d21 - d12, r[..., 1] ** 2, d01 + d10, d02 + d20], -1),
            torch.stack([d02 - d20, d01 + d10, r[..., 2] ** 2, d12 + d21], -1),
            torch.stack([d10 - d01, d02 + d20, d12 + d21, r[..., 3] ** 2], -1),
        ],
        dim=-2,
    )  # (..., 4 candidates, 4)
    cands = cands / (2 * r.clamp_min(1e-8)).unsqueeze(-1)
    best = sq.argmax(dim=-1)
    q = torch.gather(cands, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    return canonical_quat(normalize_quat(q))


def axis_angle_to_quat(axis_angle: Tensor) -> Tensor:
    """Unit quaternions from rotation vectors (axis times angle in radians), ``(..., 3)``."""
    angle = axis_angle.norm(dim=-1, keepdim=True)
    half = angle / 2
    # sin(half)/angle, with its limit 1/2 at zero
    scale = torch.where(angle > 1e-8, torch.sin(half) / angle.clamp_min(1e-8), 0.5 - angle**2 / 48)
    return torch.cat([torch.cos(half), axis_angle * scale], dim=-1)


def quat_to_axis_angle(q: Tensor) -> Tensor:
    """Rotation vectors (radians) from quaternions, angle in ``[0, pi]``."""
    q = canonical_quat(normalize_quat(q))
    v = q[..., 1:]
    s = v.norm(dim=-1, keepdim=True)
    angle = 2 * torch.atan2(s, q[..., :1])
    scale = torch.where(s > 1e-8, angle / s.clamp_min(1e-8), 2.0 + s**2 / 3)
    return v * scale


def relative_pose(p1: Tensor, p2: Tensor) -> Tensor:
    """``rel(p1 -> p2)``: ``t = t2 - t1`` (world frame), ``q = q1^-1 q2``."""
    t1, q1 = split_pose(p1)
    t2, q2 = split_pose(p2)
    return join_pose(t2 - t1, normalize_quat(quat_multiply(quat_inverse(normalize_quat(q1)), normalize_quat(q2))))


def compose(p: Tensor, rel: Tensor) -> Tensor:
    """Apply a relative pose: ``t2 = t1 + t``, ``q2 = q1 q`` (inverse of :func:`relative_pose`)."""
    t1, q1 = split_pose(p)
    t, q = split_pose(rel)
    return join_pose(t1 + t, normalize_quat(quat_multiply(normalize_quat(q1), normalize_quat(q))))


def invert_relative(rel: Tensor) -> Tensor:
    """Inverse of a relative pose: ``(-t, q^-1)``."""
    t, q = split_pose(rel)
    return join_pose(-t, quat_inverse(normalize_quat(q)))


def position_error(t_est: Tensor, t_gt: Tensor) -> Tensor:
    """Euclidean distance in metres, ``(...)``."""
    return (t_est - t_gt).norm(dim=-1)


def orientation_error(q_est: Tensor, q_gt: Tensor) -> Tensor:
    """Angle between rotations in degrees: ``2 acos(|<q1, q2>|)`` (never NaN).

    Evaluated as ``4 atan2(|q1 - s q2|, |q1 + s q2|)`` with ``s = sign<q1, q2>``,
    the same angle without acos's loss of precision near 0 (in float32,
    ``acos`` of a dot product that rounds to ``1 - 6e-8`` reads 0.04 degrees
    for identical rotations).
    """
    a, b = normalize_quat(q_est), normalize_quat(q_gt)
    b = torch.where((a * b).sum(dim=-1, keepdim=True) < 0, -b, b)
    angle = 4 * torch.atan2((a - b).norm(dim=-1), (a + b).norm(dim=-1))
    return torch.rad2deg(angle)


def pose_errors(est: Tensor, gt: Tensor) -> tuple[Tensor, Tensor]:
    """``(position error m, orientation error deg)`` per pose."""
    return position_error(est[..., :3], gt[..., :3]), orientation_error(est[..., 3:], gt[..., 3:])


def positional_encoding(x: Tensor, num_freqs: int = 6) -> Tensor:
    """NeRF encoding without the pi factor, input kept: ``[x, sin(2^0 x), cos(2^0 x), ..., sin(2^(L-1) x), cos(2^(L-1) x)]``.

    ``(..., d) -> (..., d * (1 + 2 L))``; position 3 -> 39, quaternion 4 -> 52 for L = 6.
    """
    freqs = 2.0 ** torch.arange(num_freqs, dtype=x.dtype, device=x.device)
    scaled = x.unsqueeze(-2) * freqs.unsqueeze(-1)  # (..., L, d)
    sincos = torch.stack([torch.sin(scaled), torch.cos(scaled)], dim=-2)  # (..., L, 2, d)
    return torch.cat([x, sincos.flatten(-3)], dim=-1)


def random_quat(n: int, generator: torch.Generator | None = None, dtype=torch.float64) -> Tensor:
    """``n`` rotations uniform on SO(3) (Shoemake), unit quaternions with ``qw >= 0``."""
    u = torch.rand(n, 3, generator=generator, dtype=dtype)
    a, b = torch.sqrt(1 - u[:, 0]), torch.sqrt(u[:, 0])
    th1, th2 = 2 * math.pi * u[:, 1], 2 * math.pi * u[:, 2]
    q = torch.stack([b * torch.cos(th2), a * torch.sin(th1), a * torch.cos(th1), b * torch.sin(th2)], dim=-1)
    return canonical_quat(q)


def perturb_poses(poses: Tensor, std_m: float | Tensor, std_deg: float | Tensor,
                  generator: torch.Generator | None = None) -> Tensor:
    """Poses moved by Gaussian noise: ``std_m`` metres per axis, a rotation of ``std_deg`` degrees per axis
    (floats, or tensors that broadcast against ``(..., 1)``, e.g. one spread per pose)."""
    t, q = split_pose(poses)
    dt = torch.randn(t.shape, generator=generator, dtype=poses.dtype) * std_m
    aa = torch.randn(t.shape, generator=generator, dtype=poses.dtype) * (std_deg * (math.pi / 180.0))
    dq = axis_angle_to_quat(aa)
    return join_pose(t + dt, canonical_quat(normalize_quat(quat_multiply(normalize_quat(q), dq))))


# =========================================================================== matrices
def matrices_to_poses(T: np.ndarray) -> np.ndarray:
    """``(N, 7)`` float64 poses from ``(N, 4, 4)`` camera-to-world matrices (metres).

    The rotation block is orthonormalised by SVD (nearest rotation, det +1);
    quaternions are scalar first with ``qw >= 0``.
    """
    R = torch.as_tensor(np.asarray(T)[:, :3, :3], dtype=torch.float64)
    U, _, Vh = torch.linalg.svd(R)
    d = torch.sign(torch.linalg.det(U @ Vh))
    U = torch.cat([U[..., :2], U[..., 2:] * d[:, None, None]], dim=-1)
    q = matrix_to_quat(U @ Vh)
    return np.concatenate([np.asarray(T)[:, :3, 3], q.numpy()], axis=1)


def poses_to_matrices(poses: np.ndarray | Tensor) -> np.ndarray:
    """``(N, 4, 4)`` float64 camera-to-world matrices from ``(N, 7)`` poses."""
    p = torch.as_tensor(np.asarray(poses), dtype=torch.float64)
    T = torch.zeros(len(p), 4, 4, dtype=torch.float64)
    T[:, :3, :3] = quat_to_matrix(p[:, 3:])
    T[:, :3, 3] = p[:, :3]
    T[:, 3, 3] = 1
    return T.numpy()


def rotation_problem(T: np.ndarray, tol: float = 1e-3) -> str | None:
    """Why the ``(4, 4)`` matrix ``T`` is not a rigid camera-to-world transform, or ``None`` if it is.

    The upper-left 3x3 block must be orthonormal (``|R^T R - I| <= tol``
    elementwise) with determinant +1 (within ``tol``), and the bottom row must
    be ``0 0 0 1`` (within ``tol``).
    """
    T = np.asarray(T, dtype=np.float64)
    R = T[:3, :3]
    if np.abs(T[3] - np.array([0.0, 0.0, 0.0, 1.0])).max() > tol:
        return f"bottom row is {' '.join(f'{v:g}' for v in T[3])}, expected 0 0 0 1"
    dev = float(np.abs(R.T @ R - np.eye(3)).max())
    if dev > tol:
        return f"the 3x3 block is not orthonormal (|R^T R - I| = {dev:.3g} > {tol:g})"
    det = float(np.linalg.det(R))
    if abs(det - 1.0) > tol:
        return f"the 3x3 block has determinant {det:.6g}, expected 1 (a reflection, not a rotation)"
    return None


# =========================================================================== pose statistics
def mean_pose(poses: Tensor) -> Tensor:
    """``(7,)`` float32 mean position and mean orientation (principal eigenvector of ``sum q q^T``, ``qw >= 0``)."""
    p = poses.double()
    q = normalize_quat(p[:, 3:])
    _, vecs = torch.linalg.eigh(q.T @ q)
    qm = vecs[:, -1]
    qm = -qm if qm[0] < 0 else qm
    return torch.cat([p[:, :3].mean(0), qm]).float()


def align_sign(q: Tensor, like: Tensor) -> Tensor:
    """Quaternions ``q`` with the sign that agrees with ``like`` (``<q, like> >= 0``); same rotation."""
    return torch.where((q * like).sum(-1, keepdim=True) < 0, -q, q)


def relative_target(query: Tensor, ref: Tensor) -> Tensor:
    """``rel(query -> ref)`` with the canonical quaternion sign (``qw >= 0``), the regression target."""
    rel = relative_pose(query, ref)
    return join_pose(rel[..., :3], canonical_quat(rel[..., 3:]))


# =========================================================================== neighbours
def pose_distance(query: Tensor, database: Tensor, orientation_weight: float = 1.0) -> Tensor:
    """``(N, M)`` pose-space distances ``sqrt(|t_q - t_d|^2 + (w * angle)^2)``.

    ``angle`` is the rotation angle between the orientations in radians and
    ``orientation_weight`` ``w`` is in metres per radian (1.0: one radian,
    57.3 deg, counts like one metre; 0 compares positions only).
    """
    tq, qq = split_pose(query.double())
    td, qd = split_pose(database.double())
    pos = torch.cdist(tq, td)
    dot = (normalize_quat(qq) @ normalize_quat(qd).T).abs().clamp(0.0, 1.0)
    angle = 2 * torch.acos(dot)
    return torch.sqrt(pos**2 + (orientation_weight * angle) ** 2)


def nearest_neighbours(
    query: Tensor, database: Tensor, k: int = 1, orientation_weight: float = 1.0, exclude_self: bool = False,
    chunk: int = 2048,
) -> Tensor:
    """Indices ``(N, k)`` int64 of the ``k`` database poses nearest each query, nearest first.

    Distance as :func:`pose_distance` (``orientation_weight`` in metres per
    radian). ``exclude_self``: query ``i`` is database ``i`` (same set, same
    order), which is never returned for it. Batched over ``chunk`` queries.
    """
    N, M = len(query), len(database)
    if exclude_self and N != M:
        raise BenchError(f"exclude_self needs query and database to be the same set (got {N} and {M} poses)")
    available = M - 1 if exclude_self else M
    if not 1 <= k <= available:
        raise BenchError(f"asked for {k} neighbours among {available} candidate poses")
    out = []
    for start in range(0, N, chunk):
        d = pose_distance(query[start:start + chunk], database, orientation_weight)
        if exclude_self:
            rows = torch.arange(len(d))
            d[rows, rows + start] = math.inf
        out.append(torch.topk(d, k, dim=1, largest=False).indices)
    return torch.cat(out) if out else torch.empty(0, k, dtype=torch.int64)


def virtual_neighbours(poses: Tensor, std_m: float | Tensor, std_deg: float | Tensor,
                       generator: torch.Generator | None = None) -> Tensor:
    """Poses ``(N, 7)`` sampled around ``poses``: Gaussian ``std_m`` metres per axis, ``std_deg`` degrees per
    rotation axis (floats, or ``(N, 1)`` tensors: one spread per pose)."""
    return perturb_poses(poses, std_m, std_deg, generator=generator)
