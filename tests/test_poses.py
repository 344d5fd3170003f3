"""harness.poses against independent formulas (numpy, written out here, not the harness's own code)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aprbench.harness import poses as P

# ----------------------------------------------------------------------------- independent references


def rodrigues(axis_angle: np.ndarray) -> np.ndarray:
    """Rotation matrix from a rotation vector: ``I + sin(a) K + (1 - cos(a)) K^2``."""
    angle = np.linalg.norm(axis_angle)
    if angle == 0:
        return np.eye(3)
    kx, ky, kz = axis_angle / angle
    K = np.array([[0.0, -kz, ky], [kz, 0.0, -kx], [-ky, kx, 0.0]])
    return np.eye(3) + math.sin(angle) * K + (1 - math.cos(angle)) * K @ K


def quat_from_axis_angle_np(axis_angle: np.ndarray) -> np.ndarray:
    """``[cos(a/2), sin(a/2) * axis]``."""
    angle = np.linalg.norm(axis_angle)
    if angle == 0:
        return np.array([1.0, 0.0, 0.0, 0.0])
    return np.concatenate([[math.cos(angle / 2)], math.sin(angle / 2) * axis_angle / angle])


def matrix_angle_deg(R: np.ndarray) -> np.ndarray:
    """Rotation angle of matrices ``(..., 3, 3)``: ``arccos((trace - 1) / 2)`` in degrees."""
    c = (np.trace(R, axis1=-2, axis2=-1) - 1) / 2
    return np.degrees(np.arccos(np.clip(c, -1.0, 1.0)))


def random_axis_angles(rng: np.random.Generator, n: int, max_angle: float = math.pi) -> np.ndarray:
    axes = rng.normal(size=(n, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    return axes * rng.uniform(0, max_angle, size=(n, 1))


def same_rotation(q1: torch.Tensor, q2: torch.Tensor, atol: float = 1e-9) -> bool:
    """Unit quaternions equal up to sign."""
    return bool(torch.minimum((q1 - q2).abs().amax(-1), (q1 + q2).abs().amax(-1)).max() <= atol)


def rand_poses(gen: torch.Generator, shape: tuple[int, ...], dtype=torch.float64) -> torch.Tensor:
    n = int(np.prod(shape))
    t = torch.randn(n, 3, generator=gen, dtype=dtype) * 5
    q = P.random_quat(n, generator=gen, dtype=dtype)
    # both signs of q must be valid input: flip a random half
    flip = torch.rand(n, 1, generator=gen, dtype=dtype) < 0.5
    q = torch.where(flip, -q, q)
    return torch.cat([t, q], -1).reshape(*shape, 7)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


# ----------------------------------------------------------------------------- quaternion <-> matrix


def test_quat_to_matrix_matches_rodrigues():
    rng = np.random.default_rng(0)
    aa = random_axis_angles(rng, 200)
    q = torch.from_numpy(np.stack([quat_from_axis_angle_np(v) for v in aa]))
    R = P.quat_to_matrix(q).numpy()
    R_ref = np.stack([rodrigues(v) for v in aa])
    np.testing.assert_allclose(R, R_ref, atol=1e-12)
    # and via the harness's own axis-angle conversion
    np.testing.assert_allclose(P.quat_to_matrix(P.axis_angle_to_quat(torch.from_numpy(aa))).numpy(), R_ref, atol=1e-12)


def test_quat_to_matrix_known_rotations_and_non_unit_input():
    # 90 degrees about z maps x to y
    q = torch.tensor([math.cos(math.pi / 4), 0.0, 0.0, math.sin(math.pi / 4)], dtype=torch.float64)
    R = P.quat_to_matrix(q)
    torch.testing.assert_close(R @ torch.tensor([1.0, 0, 0], dtype=torch.float64), torch.tensor([0.0, 1, 0], dtype=torch.float64))
    # a non-unit quaternion is the same rotation
    torch.testing.assert_close(P.quat_to_matrix(3.7 * q), R)
    # orthonormal, determinant +1
    torch.testing.assert_close(R @ R.T, torch.eye(3, dtype=torch.float64))
    assert torch.linalg.det(R).item() == pytest.approx(1.0)


def test_matrix_to_quat_round_trip_random(gen):
    q = P.random_quat(1000, generator=gen)
    back = P.matrix_to_quat(P.quat_to_matrix(q))
    assert same_rotation(back, q, atol=1e-12)
    assert (back[:, 0] >= 0).all()
    torch.testing.assert_close(back.norm(dim=-1), torch.ones(1000, dtype=torch.float64))
    # from Rodrigues matrices (independent of quat_to_matrix)
    rng = np.random.default_rng(1)
    aa = random_axis_angles(rng, 300)
    Rs = torch.from_numpy(np.stack([rodrigues(v) for v in aa]))
    qs = P.matrix_to_quat(Rs)
    ref = torch.from_numpy(np.stack([quat_from_axis_angle_np(v) for v in aa]))
    assert same_rotation(qs, ref, atol=1e-12)


@pytest.mark.parametrize("eps", [0.0, 1e-12, 1e-7, 1e-4])
def test_matrix_to_quat_near_180_degrees(eps):
    rng = np.random.default_rng(2)
    axes = rng.normal(size=(50, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    axes = np.concatenate([axes, np.eye(3), -np.eye(3)])  # also the coordinate axes, where w = 0 and two of x, y, z are 0
    aa = axes * (math.pi - eps)
    Rs = torch.from_numpy(np.stack([rodrigues(v) for v in aa]))
    qs = P.matrix_to_quat(Rs)
    ref = torch.from_numpy(np.stack([quat_from_axis_angle_np(v) for v in aa]))
    assert same_rotation(qs, ref, atol=1e-9)
    torch.testing.assert_close(P.quat_to_matrix(qs), Rs, atol=1e-12, rtol=0)


def test_matrix_to_quat_identity_and_float32():
    torch.testing.assert_close(P.matrix_to_quat(torch.eye(3)), torch.tensor([1.0, 0, 0, 0]))
    q = P.random_quat(500, generator=torch.Generator().manual_seed(3)).float()
    back = P.matrix_to_quat(P.quat_to_matrix(q))
    assert back.dtype == torch.float32
    assert same_rotation(back, q, atol=1e-5)


# ----------------------------------------------------------------------------- products and inverses


def test_quat_multiply_is_matrix_product(gen):
    a = P.random_quat(500, generator=gen)
    b = P.random_quat(500, generator=gen)
    ab = P.quat_multiply(a, b)
    torch.testing.assert_close(P.quat_to_matrix(ab), P.quat_to_matrix(a) @ P.quat_to_matrix(b))
    # the product of unit quaternions is unit; identity is neutral
    torch.testing.assert_close(ab.norm(dim=-1), torch.ones(500, dtype=torch.float64))
    one = torch.tensor([1.0, 0, 0, 0], dtype=torch.float64).expand(500, 4)
    torch.testing.assert_close(P.quat_multiply(a, one), a)
    torch.testing.assert_close(P.quat_multiply(one, a), a)


def test_quat_multiply_hamilton_basis():
    i, j, k = torch.eye(4, dtype=torch.float64)[1:]
    torch.testing.assert_close(P.quat_multiply(i, j), k)  # ij = k
    torch.testing.assert_close(P.quat_multiply(j, i), -k)
    torch.testing.assert_close(P.quat_multiply(i, i), torch.tensor([-1.0, 0, 0, 0], dtype=torch.float64))


def test_quat_inverse(gen):
    q = P.random_quat(300, generator=gen)
    inv = P.quat_inverse(q)
    torch.testing.assert_close(inv[:, 0], q[:, 0])
    torch.testing.assert_close(inv[:, 1:], -q[:, 1:])
    one = torch.tensor([1.0, 0, 0, 0], dtype=torch.float64).expand(300, 4)
    torch.testing.assert_close(P.quat_multiply(q, inv), one)
    torch.testing.assert_close(P.quat_multiply(inv, q), one)
    R = P.quat_to_matrix(q)
    torch.testing.assert_close(P.quat_to_matrix(inv), R.transpose(-1, -2))


def test_normalize_and_canonical(gen):
    q = torch.randn(100, 4, generator=gen, dtype=torch.float64) * 3
    n = P.normalize_quat(q)
    torch.testing.assert_close(n.norm(dim=-1), torch.ones(100, dtype=torch.float64))
    c = P.canonical_quat(n)
    assert (c[:, 0] >= 0).all()
    assert same_rotation(c, n, atol=0)
    # a zero quaternion stays zero (finite), it is the caller's job to reject it
    z = P.normalize_quat(torch.zeros(4))
    assert torch.equal(z, torch.zeros(4))
    p = torch.cat([torch.randn(100, 3, generator=gen, dtype=torch.float64), q], -1)
    npose = P.normalize_pose(p)
    torch.testing.assert_close(npose[:, :3], p[:, :3])
    torch.testing.assert_close(npose[:, 3:], c)


# ----------------------------------------------------------------------------- relative poses


def test_relative_pose_convention(gen):
    """DESIGN §1: rel(p1 -> p2) has t = t2 - t1 (world frame) and R = R1^T R2."""
    p1 = rand_poses(gen, (200,))
    p2 = rand_poses(gen, (200,))
    rel = P.relative_pose(p1, p2)
    assert rel.shape == (200, 7)
    torch.testing.assert_close(rel[:, :3], p2[:, :3] - p1[:, :3])
    R1, R2 = P.quat_to_matrix(p1[:, 3:]), P.quat_to_matrix(p2[:, 3:])
    torch.testing.assert_close(P.quat_to_matrix(rel[:, 3:]), R1.transpose(-1, -2) @ R2)
    torch.testing.assert_close(rel[:, 3:].norm(dim=-1), torch.ones(200, dtype=torch.float64))


def test_relative_pose_with_numpy_rodrigues():
    rng = np.random.default_rng(4)
    aa1, aa2 = random_axis_angles(rng, 20), random_axis_angles(rng, 20)
    t1, t2 = rng.normal(size=(20, 3)), rng.normal(size=(20, 3))
    p1 = torch.from_numpy(np.concatenate([t1, np.stack([quat_from_axis_angle_np(v) for v in aa1])], 1))
    p2 = torch.from_numpy(np.concatenate([t2, np.stack([quat_from_axis_angle_np(v) for v in aa2])], 1))
    rel = P.relative_pose(p1, p2)
    R_ref = np.stack([rodrigues(a).T @ rodrigues(b) for a, b in zip(aa1, aa2)])
    np.testing.assert_allclose(P.quat_to_matrix(rel[:, 3:]).numpy(), R_ref, atol=1e-12)
    np.testing.assert_allclose(rel[:, :3].numpy(), t2 - t1, atol=1e-12)


def test_compose_convention(gen):
    p = rand_poses(gen, (100,))
    r = rand_poses(gen, (100,))
    out = P.compose(p, r)
    torch.testing.assert_close(out[:, :3], p[:, :3] + r[:, :3])
    torch.testing.assert_close(P.quat_to_matrix(out[:, 3:]), P.quat_to_matrix(p[:, 3:]) @ P.quat_to_matrix(r[:, 3:]))


def test_relative_compose_invert_identities(gen):
    p = rand_poses(gen, (300,))
    q = rand_poses(gen, (300,))
    rel = P.relative_pose(p, q)

    # compose(p, rel(p, q)) == q
    back = P.compose(p, rel)
    torch.testing.assert_close(back[:, :3], q[:, :3])
    assert same_rotation(back[:, 3:], P.normalize_quat(q[:, 3:]), atol=1e-12)

    # rel(p, p) is the identity
    ident = P.relative_pose(p, p)
    torch.testing.assert_close(ident[:, :3], torch.zeros(300, 3, dtype=torch.float64))
    assert same_rotation(ident[:, 3:], torch.tensor([1.0, 0, 0, 0], dtype=torch.float64).expand(300, 4), atol=1e-12)

    # compose(q, invert(rel(p, q))) == p
    inv = P.invert_relative(rel)
    torch.testing.assert_close(inv[:, :3], -rel[:, :3])
    torch.testing.assert_close(P.quat_to_matrix(inv[:, 3:]), P.quat_to_matrix(rel[:, 3:]).transpose(-1, -2))
    there = P.compose(q, inv)
    torch.testing.assert_close(there[:, :3], p[:, :3])
    assert same_rotation(there[:, 3:], P.normalize_quat(p[:, 3:]), atol=1e-12)

    # invert_relative is an involution, and equals rel(q -> p)
    torch.testing.assert_close(P.quat_to_matrix(P.invert_relative(inv)[:, 3:]), P.quat_to_matrix(rel[:, 3:]))
    rel_qp = P.relative_pose(q, p)
    torch.testing.assert_close(rel_qp[:, :3], inv[:, :3])
    torch.testing.assert_close(P.quat_to_matrix(rel_qp[:, 3:]), P.quat_to_matrix(inv[:, 3:]))


def test_relative_pose_accepts_non_unit_quaternions(gen):
    p = rand_poses(gen, (50,))
    q = rand_poses(gen, (50,))
    scaled_p = torch.cat([p[:, :3], p[:, 3:] * 2.5], -1)
    scaled_q = torch.cat([q[:, :3], q[:, 3:] * 0.3], -1)
    torch.testing.assert_close(
        P.quat_to_matrix(P.relative_pose(scaled_p, scaled_q)[:, 3:]),
        P.quat_to_matrix(P.relative_pose(p, q)[:, 3:]),
    )


# ----------------------------------------------------------------------------- sign ambiguity


def test_sign_ambiguity(gen):
    p = rand_poses(gen, (200,))
    q = rand_poses(gen, (200,))
    q_neg = torch.cat([q[:, :3], -q[:, 3:]], -1)
    # errors identical for q and -q
    pe, oe = P.pose_errors(p, q)
    pe2, oe2 = P.pose_errors(p, q_neg)
    torch.testing.assert_close(pe, pe2)
    torch.testing.assert_close(oe, oe2, atol=1e-9, rtol=0)
    torch.testing.assert_close(P.orientation_error(q[:, 3:], q_neg[:, 3:]), torch.zeros(200, dtype=torch.float64))
    # the relative pose's rotation is the same rotation
    r1, r2 = P.relative_pose(p, q), P.relative_pose(p, q_neg)
    torch.testing.assert_close(r1[:, :3], r2[:, :3])
    torch.testing.assert_close(P.quat_to_matrix(r1[:, 3:]), P.quat_to_matrix(r2[:, 3:]))
    assert same_rotation(r1[:, 3:], r2[:, 3:], atol=1e-12)
    # and composing with either sign lands on the same rotation
    torch.testing.assert_close(P.quat_to_matrix(P.compose(p, r1)[:, 3:]), P.quat_to_matrix(P.compose(p, r2)[:, 3:]))
    # the matrix does not see the sign
    torch.testing.assert_close(P.quat_to_matrix(q[:, 3:]), P.quat_to_matrix(q_neg[:, 3:]))


# ----------------------------------------------------------------------------- errors


def test_orientation_error_is_matrix_angle(gen):
    q_est = P.random_quat(1000, generator=gen)
    q_gt = P.random_quat(1000, generator=gen)
    q_gt = torch.where(torch.rand(1000, 1, generator=gen, dtype=torch.float64) < 0.5, -q_gt, q_gt)
    R_est, R_gt = P.quat_to_matrix(q_est).numpy(), P.quat_to_matrix(q_gt).numpy()
    ref = matrix_angle_deg(np.swapaxes(R_est, -1, -2) @ R_gt)
    err = P.orientation_error(q_est, q_gt)
    np.testing.assert_allclose(err.numpy(), ref, atol=1e-5)
    assert ((err >= 0) & (err <= 180)).all()


def test_orientation_error_known_angles():
    rng = np.random.default_rng(5)
    axes = rng.normal(size=(8, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    for deg in [0.5, 5.0, 45.0, 90.0, 179.0, 180.0]:
        q_gt = torch.from_numpy(np.stack([quat_from_axis_angle_np(a) for a in rng.normal(size=(8, 3))]))
        dq = torch.from_numpy(np.stack([quat_from_axis_angle_np(a * math.radians(deg)) for a in axes]))
        q_est = P.quat_multiply(q_gt, dq)
        np.testing.assert_allclose(P.orientation_error(q_est, q_gt).numpy(), deg, atol=1e-6)
        np.testing.assert_allclose(P.orientation_error(q_gt, q_est).numpy(), deg, atol=1e-6)


def test_orientation_error_never_nan():
    q = P.random_quat(1000, generator=torch.Generator().manual_seed(6)).float()
    # identical, negated, scaled (non-unit) and float32 nearly-equal quaternions
    nearly = q + 1e-7 * torch.randn(q.shape, generator=torch.Generator().manual_seed(7))
    for other in [q.clone(), -q, 2 * q, nearly, P.normalize_quat(nearly)]:
        err = P.orientation_error(q, other)
        assert torch.isfinite(err).all()
        assert err.max().item() < 0.1
    q1 = torch.tensor([[0.5, 0.5, 0.5, 0.5]], dtype=torch.float32)
    assert P.orientation_error(q1, q1).item() == 0.0
    # zero quaternions (invalid input) still give a number, not NaN
    assert torch.isfinite(P.orientation_error(torch.zeros(4), torch.tensor([1.0, 0, 0, 0])))
    assert torch.isfinite(P.orientation_error(torch.zeros(4), torch.zeros(4)))


def test_float32_nearly_equal_quaternions():
    """float32 unit quaternions whose dot product rounds above 1: error 0 (not NaN), small angles accurate."""
    q = P.normalize_quat(torch.randn(20000, 4, generator=torch.Generator().manual_seed(8)))
    dots = (P.normalize_quat(q) * P.normalize_quat(q)).sum(-1)
    assert (dots > 1).any(), "expected float32 rounding to push some dot products above 1"
    assert torch.equal(P.orientation_error(q, q), torch.zeros(20000))
    assert torch.equal(P.orientation_error(q, -q), torch.zeros(20000))
    # rotations 0.001 - 0.1 degrees apart: float32 agrees with the float64 matrix angle
    deg = torch.logspace(-3, -1, 20000, dtype=torch.float64)
    axes = P.normalize_quat(torch.randn(20000, 3, generator=torch.Generator().manual_seed(9), dtype=torch.float64))
    q64 = q.double()
    q_est = P.quat_multiply(q64, P.axis_angle_to_quat(axes * torch.deg2rad(deg)[:, None]))
    R = P.quat_to_matrix(q_est).transpose(-1, -2) @ P.quat_to_matrix(q64)
    np.testing.assert_allclose(matrix_angle_deg(R.numpy()), deg.numpy(), atol=1e-5)
    err32 = P.orientation_error(q_est.float(), q)
    assert torch.isfinite(err32).all()
    np.testing.assert_allclose(err32.double().numpy(), deg.numpy(), atol=2e-3)


def test_position_error(gen):
    a = torch.randn(100, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(100, 3, generator=gen, dtype=torch.float64)
    ref = np.sqrt(((a.numpy() - b.numpy()) ** 2).sum(-1))
    np.testing.assert_allclose(P.position_error(a, b).numpy(), ref, rtol=1e-12)
    assert P.position_error(torch.tensor([0.0, 0, 0]), torch.tensor([3.0, 4, 0])).item() == pytest.approx(5.0)
    pe, oe = P.pose_errors(
        torch.tensor([1.0, 2, 3, 1, 0, 0, 0]), torch.tensor([1.0, 2, 5, 0, 0, 0, 1])
    )
    assert pe.item() == pytest.approx(2.0)
    assert oe.item() == pytest.approx(180.0)


# ----------------------------------------------------------------------------- positional encoding


def explicit_encoding(x: np.ndarray, num_freqs: int) -> np.ndarray:
    parts = [x]
    for k in range(num_freqs):
        parts += [np.sin(2.0**k * x), np.cos(2.0**k * x)]
    return np.concatenate(parts, axis=-1)


@pytest.mark.parametrize("dim, size", [(3, 39), (4, 52), (1, 13)])
def test_positional_encoding(dim, size):
    x = torch.randn(17, dim, generator=torch.Generator().manual_seed(dim), dtype=torch.float64) * 3
    enc = P.positional_encoding(x)
    assert enc.shape == (17, size)
    np.testing.assert_allclose(enc.numpy(), explicit_encoding(x.numpy(), 6), atol=1e-12)
    # the input is kept, no pi factor
    torch.testing.assert_close(enc[:, :dim], x)
    torch.testing.assert_close(enc[:, dim : 2 * dim], torch.sin(x))


def test_positional_encoding_other_freqs_and_batch():
    x = torch.randn(2, 5, 7, 3, dtype=torch.float64)
    enc = P.positional_encoding(x, num_freqs=4)
    assert enc.shape == (2, 5, 7, 27)
    np.testing.assert_allclose(enc.numpy(), explicit_encoding(x.numpy(), 4), atol=1e-12)
    assert P.positional_encoding(x.float()).dtype == torch.float32


# ----------------------------------------------------------------------------- axis-angle, random, perturbation


def test_axis_angle_round_trip(gen):
    rng = np.random.default_rng(9)
    aa = torch.from_numpy(random_axis_angles(rng, 500, max_angle=math.pi - 1e-6))
    q = P.axis_angle_to_quat(aa)
    np.testing.assert_allclose(q.numpy(), np.stack([quat_from_axis_angle_np(v) for v in aa.numpy()]), atol=1e-12)
    torch.testing.assert_close(P.quat_to_axis_angle(q), aa, atol=1e-10, rtol=0)
    # and from quaternions
    qs = P.random_quat(500, generator=gen)
    assert same_rotation(P.axis_angle_to_quat(P.quat_to_axis_angle(qs)), qs, atol=1e-12)
    assert same_rotation(P.axis_angle_to_quat(P.quat_to_axis_angle(-qs)), qs, atol=1e-12)


@pytest.mark.parametrize("angle", [0.0, 1e-15, 1e-10, 1e-8, 3e-8, 1e-6, 1e-3])
def test_axis_angle_tiny_angles(angle):
    axis = torch.tensor([0.48, -0.6, 0.64], dtype=torch.float64)
    aa = axis * angle
    q = P.axis_angle_to_quat(aa)
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q.norm(), torch.tensor(1.0, dtype=torch.float64))
    np.testing.assert_allclose(q.numpy(), quat_from_axis_angle_np(aa.numpy()), rtol=1e-12, atol=1e-300)
    back = P.quat_to_axis_angle(q)
    assert torch.isfinite(back).all()
    np.testing.assert_allclose(back.numpy(), aa.numpy(), rtol=1e-9, atol=1e-300)
    # float32 too
    back32 = P.quat_to_axis_angle(P.axis_angle_to_quat(aa.float()))
    assert torch.isfinite(back32).all()
    np.testing.assert_allclose(back32.numpy(), aa.numpy(), rtol=1e-3, atol=1e-9)


def test_random_quat(gen):
    q = P.random_quat(4000, generator=gen)
    assert q.shape == (4000, 4) and q.dtype == torch.float64
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(4000, dtype=torch.float64))
    assert (q[:, 0] >= 0).all()
    # uniform on SO(3): the rotation angle has density (1 - cos a) / pi, mean pi/2 + 2/pi
    angles = P.quat_to_axis_angle(q).norm(dim=-1)
    assert angles.mean().item() == pytest.approx(math.pi / 2 + 2 / math.pi, abs=0.05)
    # E[x^2] = 1/4 for every component of a uniform unit quaternion
    torch.testing.assert_close((q**2).mean(0), torch.full((4,), 0.25, dtype=torch.float64), atol=0.02, rtol=0)
    # reproducible with a seed
    a = P.random_quat(5, generator=torch.Generator().manual_seed(1))
    b = P.random_quat(5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert P.random_quat(3, dtype=torch.float32).dtype == torch.float32


@pytest.mark.parametrize("std_m, std_deg", [(0.5, 10.0), (0.05, 2.0)])
def test_perturb_poses_spread(gen, std_m, std_deg):
    n = 20000
    base = rand_poses(gen, (n,))
    out = P.perturb_poses(base, std_m, std_deg, generator=gen)
    assert out.shape == base.shape
    torch.testing.assert_close(out[:, 3:].norm(dim=-1), torch.ones(n, dtype=torch.float64))
    dt = out[:, :3] - base[:, :3]
    torch.testing.assert_close(dt.mean(0), torch.zeros(3, dtype=torch.float64), atol=4 * std_m / math.sqrt(n), rtol=0)
    torch.testing.assert_close(dt.std(0), torch.full((3,), std_m, dtype=torch.float64), rtol=0.05, atol=0)
    # the rotation applied (in the camera frame: q_out = q dq) has per-axis std std_deg
    dq = P.relative_pose(base, out)[:, 3:]
    aa_deg = torch.rad2deg(P.quat_to_axis_angle(dq))
    torch.testing.assert_close(aa_deg.std(0), torch.full((3,), std_deg, dtype=torch.float64), rtol=0.05, atol=0)
    # angle of a 3-d isotropic Gaussian rotation vector: Maxwell, mean 2 sqrt(2/pi) sigma
    err = P.orientation_error(out[:, 3:], base[:, 3:])
    assert err.mean().item() == pytest.approx(2 * math.sqrt(2 / math.pi) * std_deg, rel=0.05)
    # zero spread is the identity
    same = P.perturb_poses(base, 0.0, 0.0, generator=gen)
    torch.testing.assert_close(same[:, :3], base[:, :3])
    assert same_rotation(same[:, 3:], base[:, 3:], atol=1e-12)


# ----------------------------------------------------------------------------- batching


def test_leading_batch_shapes(gen):
    shape = (2, 5, 7)
    p = rand_poses(gen, shape)
    q = rand_poses(gen, shape)
    flat_p, flat_q = p.reshape(-1, 7), q.reshape(-1, 7)

    rel = P.relative_pose(p, q)
    assert rel.shape == (*shape, 7)
    torch.testing.assert_close(rel.reshape(-1, 7), P.relative_pose(flat_p, flat_q))
    torch.testing.assert_close(P.compose(p, rel).reshape(-1, 7), P.compose(flat_p, rel.reshape(-1, 7)))
    torch.testing.assert_close(P.invert_relative(rel).reshape(-1, 7), P.invert_relative(rel.reshape(-1, 7)))

    R = P.quat_to_matrix(q[..., 3:])
    assert R.shape == (*shape, 3, 3)
    torch.testing.assert_close(R.reshape(-1, 3, 3), P.quat_to_matrix(flat_q[:, 3:]))
    mq = P.matrix_to_quat(R)
    assert mq.shape == (*shape, 4)
    assert same_rotation(mq.reshape(-1, 4), P.normalize_quat(flat_q[:, 3:]), atol=1e-12)

    pe, oe = P.pose_errors(p, q)
    assert pe.shape == oe.shape == shape
    torch.testing.assert_close(oe.reshape(-1), P.orientation_error(flat_p[:, 3:], flat_q[:, 3:]))
    torch.testing.assert_close(pe.reshape(-1), P.position_error(flat_p[:, :3], flat_q[:, :3]))

    assert P.quat_multiply(p[..., 3:], q[..., 3:]).shape == (*shape, 4)
    assert P.quat_inverse(q[..., 3:]).shape == (*shape, 4)
    aa = P.quat_to_axis_angle(q[..., 3:])
    assert aa.shape == (*shape, 3)
    assert P.axis_angle_to_quat(aa).shape == (*shape, 4)
    assert P.normalize_pose(p).shape == (*shape, 7)
    assert P.positional_encoding(p[..., :3]).shape == (*shape, 39)
    assert P.positional_encoding(p[..., 3:]).shape == (*shape, 52)
    assert P.perturb_poses(p, 0.1, 1.0, generator=gen).shape == (*shape, 7)

    # broadcasting one pose against a batch
    one = p[0, 0, 0]
    torch.testing.assert_close(P.relative_pose(one, q), P.relative_pose(one.expand_as(q), q))
