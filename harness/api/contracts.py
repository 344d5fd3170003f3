"""Contracts checked where they are crossed: a plugin model is probed once, on a tiny batch, right after it is
built, and a dataset when it is opened, so that a broken contract is one line naming the plugin, the method,
what was expected and what came back, instead of a shape error deep in a later stage.

Probes run under ``torch.no_grad`` in eval mode, with inputs from their own generator: they change neither the
model (its training mode is restored) nor the global random state, so a probed model trains exactly as an
unprobed one.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from aprbench.harness.errors import BenchError

N = 2  # frames in a probe batch


class ContractError(BenchError):
    """A plugin's object does not do what its kind's interface says."""


def shape_of(value: Any) -> str:
    """``tensor (2, 7)``, ``tuple of 3``, ``NoneType``: what came back, for a message."""
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}: ({', '.join(shape_of(v) for v in value)})"
    return f"a {type(value).__name__}"


def _fail(kind: str, name: str, source: str, method: str, expected: str, got: str) -> ContractError:
    return ContractError(f"{kind} plugin {name!r} ({source}): {method} returned {got}; expected {expected}")


def _bad_pose(row: int, pose: Any, columns: list[str]) -> str:
    """``labels row N, column(s) 't2': ...`` for the first bad ground-truth pose (row numbered from 1, as the
    built-in readers do)."""
    names = [c for c, v in zip(columns, pose) if not math.isfinite(v)]
    what = "not finite" if names else "a zero quaternion"
    names = names or list(columns[3:])
    return (f"labels row {row + 1}, column{'s' if len(names) > 1 else ''} {', '.join(map(repr, names))}: "
            f"{what} ({pose.tolist()})")


def _call(kind: str, name: str, source: str, method: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except BenchError:
        raise
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise ContractError(f"{kind} plugin {name!r} ({source}): {method} failed on a probe batch of {N}: "
                            f"{message}") from None


def expect_poses(out: Any, n: int, kind: str, name: str, source: str, method: str) -> Tensor:
    """``out`` if it is an ``(n, 7)`` tensor (translation in metres, quaternion), else a :class:`ContractError`."""
    if not isinstance(out, Tensor) or tuple(out.shape) != (n, 7):
        raise _fail(kind, name, source, method, f"a tensor of shape ({n}, 7) (N x [tx, ty, tz, qw, qx, qy, qz])",
                    shape_of(out))
    return out


def _expect_latents(out: Any, dim: int, kind: str, name: str, source: str, method: str) -> tuple[Tensor, Tensor]:
    ok = isinstance(out, (tuple, list)) and len(out) >= 2 and all(
        isinstance(t, Tensor) and tuple(t.shape) == (N, dim) for t in out[:2])
    if not ok:
        raise _fail(kind, name, source, method, f"two latents of shape ({N}, {dim}) (latent_dim = {dim})",
                    shape_of(out))
    return out[0], out[1]


def _poses() -> Tensor:
    g = torch.Generator().manual_seed(0)
    t = torch.randn(N, 3, generator=g)
    q = torch.nn.functional.normalize(torch.randn(N, 4, generator=g), dim=1)
    return torch.cat([t, q], dim=1)


def probe(kind: str, name: str, source: str, model: nn.Module, image_size: int = 64) -> None:
    """Run ``model`` (a freshly built plugin model of ``kind``) once on a batch of ``N`` and check what it returns.

    ``image_size``: the teacher's input size in pixels (its recipe's). A :class:`PoseIndexRefiner` has no index
    yet; its ``refine_batch`` is checked at every iteration instead (:func:`expect_poses`)."""
    from aprbench.harness.api.interfaces import PoseIndexRefiner

    if kind not in PROBES or isinstance(model, PoseIndexRefiner):
        return
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            PROBES[kind](name, source, model, image_size)
    finally:
        model.train(was_training)


def _teacher(name: str, source: str, model: nn.Module, image_size: int) -> None:
    from aprbench.harness.api.interfaces import decode_poses

    images = torch.rand(N, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    dim = int(getattr(model, "latent_dim", 256))
    lat = _call("teacher", name, source, "encode", model.encode, images)
    x, q = _expect_latents(lat, dim, "teacher", name, source, f"encode(images of shape {tuple(images.shape)})")
    logp = getattr(lat, "scene_logp", None)
    scenes = int(getattr(model, "num_scenes", 1))
    if getattr(model, "multi_scene", False) and (not isinstance(logp, Tensor) or tuple(logp.shape) != (N, scenes)):
        raise _fail("teacher", name, source, "encode", f"Latents.scene_logp of shape ({N}, {scenes}) for a multi-scene "
                    f"teacher of {scenes} scenes", shape_of(logp))
    scene = logp.argmax(-1) if isinstance(logp, Tensor) else None
    out = _call("teacher", name, source, "decode", decode_poses, model, x, q, scene)
    expect_poses(out, N, "teacher", name, source, f"decode(latents of shape ({N}, {dim}) x 2)")


def _student(name: str, source: str, model: nn.Module, image_size: int) -> None:
    dim = int(getattr(model, "latent_dim", 256))
    scene = torch.zeros(N, dtype=torch.int64) if getattr(model, "multi_scene", False) else None
    out = _call("student", name, source, "forward", model, _poses(), scene)
    _expect_latents(out, dim, "student", name, source, f"forward(poses of shape ({N}, 7))")


def _refiner(name: str, source: str, model: nn.Module, image_size: int) -> None:
    dim = int(getattr(model, "latent_dim", 256))
    g = torch.Generator().manual_seed(0)
    latents = [torch.randn(N, dim, generator=g) for _ in range(4)]
    out = _call("refiner", name, source, "forward", model, *latents)
    expect_poses(out, N, "refiner", name, source, f"forward(4 latents of shape ({N}, {dim}))")


def _decoder(name: str, source: str, model: nn.Module, image_size: int) -> None:
    dim, size = int(getattr(model, "latent_dim", 256)), int(getattr(model, "image_size", 64))
    g = torch.Generator().manual_seed(0)
    out = _call("decoder", name, source, "forward", model, torch.randn(N, dim, generator=g), torch.randn(N, dim, generator=g))
    if not isinstance(out, Tensor) or tuple(out.shape) != (N, 3, size, size):
        raise _fail("decoder", name, source, f"forward(latents of shape ({N}, {dim}) x 2)",
                    f"images of shape ({N}, 3, {size}, {size}) (image_size = {size})", shape_of(out))


PROBES = {"teacher": _teacher, "student": _student, "refiner": _refiner, "decoder": _decoder}


def check_dataset(name: str, source: str, data: Any) -> None:
    """A dataset plugin's result: a ``PoseData`` whose labels have the reference columns plus ``scene_id`` (the
    index of ``scene`` in ``scenes``), splits ``train`` / ``test``, finite poses and non-zero quaternions."""
    import numpy as np

    from aprbench.harness.api.interfaces import LABEL_COLUMNS, POSE_COLUMNS, PoseData

    def fail(expected: str, got: str) -> ContractError:
        return _fail("dataset", name, source, "its factory", expected, got)

    if not isinstance(data, PoseData):
        raise fail("a PoseData", f"a {type(data).__name__}")
    labels = data.labels
    missing = [c for c in [*LABEL_COLUMNS, "scene_id"] if c not in getattr(labels, "columns", [])]
    if missing:
        raise fail(f"labels with columns {', '.join([*LABEL_COLUMNS, 'scene_id'])}", f"labels without {', '.join(missing)}")
    splits = sorted(set(labels["split"].astype(str)) - {"train", "test"})
    if splits:
        raise fail("splits 'train' and 'test' only", f"split(s) {', '.join(splits)}")
    unknown = sorted(set(labels["scene"].astype(str)) - set(map(str, data.scenes)))
    if unknown:
        raise fail(f"scenes listed in PoseData.scenes ({', '.join(map(str, data.scenes))})",
                   f"label scene(s) {', '.join(unknown)}")
    index = {s: i for i, s in enumerate(data.scenes)}
    wrong = labels["scene"].map(index) != labels["scene_id"]
    if wrong.any():
        row = int(np.flatnonzero(wrong.to_numpy())[0])
        raise fail("scene_id = the index of scene in PoseData.scenes",
                   f"labels row {row + 1}: scene {str(labels['scene'].iloc[row])!r} "
                   f"with scene_id {labels['scene_id'].iloc[row]}")
    poses = labels[POSE_COLUMNS].to_numpy(dtype=float, na_value=np.nan)
    bad = ~np.isfinite(poses).all(axis=1) | (np.linalg.norm(poses[:, 3:], axis=1) == 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise fail("finite poses with non-zero quaternions", _bad_pose(row, poses[row], POSE_COLUMNS))
