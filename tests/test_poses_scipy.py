"""harness.poses checked against an independent implementation, ``scipy.spatial.transform.Rotation``.

scipy's quaternions are scalar LAST ``[x, y, z, w]``; aprbench's are scalar first ``[w, x, y, z]``.
Everything runs in float64 on random batches.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from aprbench.harness import poses

N = 500
RNG_SEED = 7


def to_scipy(q: torch.Tensor) -> Rotation:
    """Rotation from aprbench scalar-first quaternions."""
    return Rotation.from_quat(q.numpy()[..., [1, 2, 3, 0]])


def from_scipy(r: Rotation) -> torch.Tensor:
    """aprbench scalar-first quaternions from a scipy Rotation."""
    return torch.from_numpy(r.as_quat()[..., [3, 0, 1, 2]])


def same_rotation(a: torch.Tensor, b: torch.Tensor, atol: float) -> None:
    """``a`` and ``b`` are the same rotations (``q`` and ``-q`` agree)."""
    a, b = poses.canonical_quat(a), poses.canonical_quat(b)
    b = torch.where((a * b).sum(-1, keepdim=True) < 0, -b, b)  # qw = 0 ties
    torch.testing.assert_close(a, b, atol=atol, rtol=0)


@pytest.fixture
def rots() -> tuple[Rotation, Rotation]:
    rng = np.random.default_rng(RNG_SEED)
    return Rotation.random(N, random_state=rng), Rotation.random(N, random_state=rng)


@pytest.fixture
def positions() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(RNG_SEED)
    return torch.randn(N, 3, generator=g, dtype=torch.float64) * 5, torch.randn(N, 3, generator=g, dtype=torch.float64) * 5


def test_quat_to_matrix_and_back(rots):
    r, _ = rots
    q = from_scipy(r)
    torch.testing.assert_close(poses.quat_to_matrix(q), torch.from_numpy(r.as_matrix()), atol=1e-12, rtol=0)
    # a non-unit quaternion is normalised first
    torch.testing.assert_close(poses.quat_to_matrix(3.5 * q), torch.from_numpy(r.as_matrix()), atol=1e-12, rtol=0)
    back = poses.matrix_to_quat(torch.from_numpy(r.as_matrix()))
    assert (back[:, 0] >= 0).all()
    same_rotation(back, from_scipy(Rotation.from_matrix(r.as_matrix())), atol=1e-12)


def test_matrix_to_quat_near_half_turns():
    """Rotations by ~180 degrees, where the w branch is ill-conditioned and another component is picked."""
    rng = np.random.default_rng(1)
    axes = rng.normal(size=(200, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    angles = np.pi - rng.uniform(0, 1e-6, size=(200, 1))
    r = Rotation.from_rotvec(axes * angles)
    same_rotation(poses.matrix_to_quat(torch.from_numpy(r.as_matrix())), from_scipy(r), atol=1e-10)


def test_multiply_and_inverse(rots):
    a, b = rots
    qa, qb = from_scipy(a), from_scipy(b)
    # scipy: (a * b).apply(v) == a.apply(b.apply(v)): b first, then a, as aprbench documents
    same_rotation(poses.quat_multiply(qa, qb), from_scipy(a * b), atol=1e-12)
    same_rotation(poses.quat_inverse(qa), from_scipy(a.inv()), atol=1e-12)


def test_axis_angle_both_ways(rots):
    r, _ = rots
    rotvec = torch.from_numpy(r.as_rotvec())  # scipy: angle in [0, pi]
    same_rotation(poses.axis_angle_to_quat(rotvec), from_scipy(r), atol=1e-12)
    torch.testing.assert_close(poses.quat_to_axis_angle(from_scipy(r)), rotvec, atol=1e-10, rtol=0)
    tiny = torch.from_numpy(np.random.default_rng(3).normal(size=(50, 3)) * 1e-10)  # the small-angle series
    same_rotation(poses.axis_angle_to_quat(tiny), from_scipy(Rotation.from_rotvec(tiny.numpy())), atol=1e-15)
    torch.testing.assert_close(poses.quat_to_axis_angle(from_scipy(Rotation.from_rotvec(tiny.numpy()))), tiny,
                               atol=1e-18, rtol=1e-9)


def test_orientation_error_is_the_angle_of_the_relative_rotation(rots):
    a, b = rots
    expected = np.rad2deg((a.inv() * b).magnitude())
    got = poses.orientation_error(from_scipy(a), from_scipy(b))
    torch.testing.assert_close(got, torch.from_numpy(expected), atol=1e-9, rtol=0)
    # sign-flipped quaternions are the same rotations
    torch.testing.assert_close(poses.orientation_error(-from_scipy(a), from_scipy(b)), got, atol=1e-9, rtol=0)
    assert poses.orientation_error(from_scipy(a), from_scipy(a)).abs().max() < 1e-6


def test_relative_pose_compose_and_invert(rots, positions):
    a, b = rots
    t1, t2 = positions
    p1, p2 = poses.join_pose(t1, from_scipy(a)), poses.join_pose(t2, from_scipy(b))
    rel = poses.relative_pose(p1, p2)
    torch.testing.assert_close(rel[:, :3], t2 - t1, atol=1e-12, rtol=0)
    same_rotation(rel[:, 3:], from_scipy(a.inv() * b), atol=1e-12)  # R = R1^-1 R2
    back = poses.compose(p1, rel)
    torch.testing.assert_close(back[:, :3], t2, atol=1e-12, rtol=0)
    same_rotation(back[:, 3:], from_scipy(b), atol=1e-12)
    inv = poses.invert_relative(rel)
    torch.testing.assert_close(inv[:, :3], t1 - t2, atol=1e-12, rtol=0)
    same_rotation(inv[:, 3:], from_scipy(b.inv() * a), atol=1e-12)


def test_matrices_round_trip(rots, positions):
    r, _ = rots
    t, _ = positions
    T = np.tile(np.eye(4), (N, 1, 1))
    T[:, :3, :3] = r.as_matrix()
    T[:, :3, 3] = t.numpy()
    p = poses.matrices_to_poses(T)
    np.testing.assert_allclose(p[:, :3], t.numpy(), atol=1e-12, rtol=0)
    same_rotation(torch.from_numpy(p[:, 3:]), from_scipy(r), atol=1e-10)
    np.testing.assert_allclose(poses.poses_to_matrices(p), T, atol=1e-10, rtol=0)
    # a slightly skewed rotation block is projected to the nearest rotation (scipy: from_matrix orthonormalises)
    noisy = T.copy()
    noisy[:, :3, :3] += np.random.default_rng(5).normal(size=(N, 3, 3)) * 1e-4
    nearest = Rotation.from_matrix(noisy[:, :3, :3])
    same_rotation(torch.from_numpy(poses.matrices_to_poses(noisy)[:, 3:]), from_scipy(nearest), atol=1e-6)


def test_mean_pose_matches_scipy_mean():
    """Both are the chordal L2 mean (principal eigenvector of sum q q^T)."""
    rng = np.random.default_rng(11)
    centre = Rotation.random(random_state=rng)
    r = centre * Rotation.from_rotvec(rng.normal(size=(300, 3)) * 0.3)
    t = rng.normal(size=(300, 3))
    p = torch.from_numpy(np.concatenate([t, r.as_quat()[:, [3, 0, 1, 2]]], axis=1))
    m = poses.mean_pose(p).double()  # float32 result
    torch.testing.assert_close(m[:3], torch.from_numpy(t.mean(0)), atol=1e-6, rtol=0)
    same_rotation(m[3:], from_scipy(r.mean()), atol=1e-6)


def test_pose_distance_uses_the_rotation_angle(rots, positions):
    a, b = rots
    t1, t2 = positions
    q, d = poses.join_pose(t1[:40], from_scipy(a[:40])), poses.join_pose(t2[:30], from_scipy(b[:30]))
    w = 0.7
    angle = np.stack([(a[i].inv() * b[:30]).magnitude() for i in range(40)])
    pos = np.linalg.norm(t1[:40, None].numpy() - t2[None, :30].numpy(), axis=-1)
    torch.testing.assert_close(poses.pose_distance(q, d, w), torch.from_numpy(np.sqrt(pos**2 + (w * angle) ** 2)),
                               atol=1e-6, rtol=0)
