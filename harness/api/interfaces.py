"""What each kind of plugin provides. The harness and every other plugin only
ever talk to these interfaces, never to a concrete model.

Shapes: ``B`` batch, ``D`` latent size (256 in the paper), ``S`` number of
scenes. Poses are ``(B, 7)``: metres and a scalar-first unit quaternion,
camera-to-world (see ``harness.poses``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import torch
from torch import Tensor, nn

LABEL_COLUMNS = ["scene", "split", "seq", "img_path", "t1", "t2", "t3", "q1", "q2", "q3", "q4"]
POSE_COLUMNS = ["t1", "t2", "t3", "q1", "q2", "q3", "q4"]


# --------------------------------------------------------------------------- data
@dataclass
class PoseData:
    """A dataset as the harness sees it: reference labels and their image root.

    ``labels`` has the reference columns (``LABEL_COLUMNS``; ``img_path``
    relative to ``root``, ``split`` is ``train`` or ``test``) plus
    ``scene_id``, the index of ``scene`` in ``scenes``. Quaternions are unit
    length. ``scenes`` is the ordered scene list a multi-scene model indexes.
    """

    name: str
    root: Path
    labels: pd.DataFrame
    scenes: list[str]
    options: dict = field(default_factory=dict)

    def split(self, split: str) -> "PoseData":
        """The frames of one split (``train`` / ``test``), same scene list."""
        rows = self.labels[self.labels["split"] == split].reset_index(drop=True)
        return PoseData(self.name, self.root, rows, self.scenes, self.options)

    def poses(self) -> Tensor:
        """``(N, 7)`` float32 poses in label order."""
        return torch.tensor(self.labels[POSE_COLUMNS].to_numpy(), dtype=torch.float32)

    def scene_ids(self) -> Tensor:
        """``(N,)`` int64 scene indices in label order."""
        return torch.tensor(self.labels["scene_id"].to_numpy(), dtype=torch.int64)

    def fingerprint(self) -> str:
        """Hash of the dataset name and options, the scene list and the labels (scenes, splits, paths, poses).

        Name and options tell apart datasets whose labels coincide (a synthetic twin and its real original).
        """
        h = hashlib.sha256()
        h.update(json.dumps([self.name, self.options, self.scenes], sort_keys=True, default=str).encode())
        h.update(pd.util.hash_pandas_object(self.labels[LABEL_COLUMNS], index=False).values.tobytes())
        return h.hexdigest()[:16]


# --------------------------------------------------------------------------- teacher
class Latents(NamedTuple):
    """What a teacher's image encoder produces for a batch of images."""

    x: Tensor  # (B, D) position latent
    q: Tensor  # (B, D) orientation latent
    scene_logp: Tensor | None = None  # (B, S) log-probabilities, multi-scene teachers only


class Teacher(nn.Module):
    """An absolute pose regressor (APR).

    Subclasses set ``latent_dim``, ``multi_scene``, ``num_scenes`` and
    implement :meth:`encode` and :meth:`decode`. ``encode`` uses the given
    ``scene`` (ground truth, training) to select a multi-scene latent, or the
    argmax of its own classification when ``scene`` is None (test).
    """

    latent_dim: int = 256
    multi_scene: bool = False
    num_scenes: int = 1

    def encode(self, images: Tensor, scene: Tensor | None = None) -> Latents:
        """Images ``(B, 3, H, W)`` (ImageNet-normalised) to latents."""
        raise NotImplementedError

    def decode(self, latent_x: Tensor, latent_q: Tensor, scene: Tensor | None = None) -> Tensor:
        """The regression heads: latents ``(B, D)`` each to poses ``(B, 7)`` (quaternion not normalised).

        ``scene`` ``(B,)`` int64: the scene whose head decodes each row, for
        teachers with one head per scene. Optional: a ``decode(latent_x,
        latent_q)`` without it still works; the harness calls :func:`decode_poses`,
        which passes ``scene`` only to a ``decode`` that takes it.
        """
        raise NotImplementedError

    def forward(self, images: Tensor, scene: Tensor | None = None) -> tuple[Tensor, Latents]:
        """``(pose (B, 7), latents)``; decoded with ``scene`` (or, without, the scene the latents were selected by)."""
        lat = self.encode(images, scene)
        if scene is None and lat.scene_logp is not None and self.multi_scene:
            scene = lat.scene_logp.argmax(dim=-1)
        return decode_poses(self, lat.x, lat.q, scene), lat

    def heads(self) -> list[nn.Module]:
        """The modules :meth:`decode` uses (frozen and shared with students)."""
        raise NotImplementedError

    @classmethod
    def shapes_from_state(cls, state: dict[str, Tensor]) -> dict:
        """Factory arguments that the tensors of a checkpoint (its own layout or one ``from_reference_state_dict``
        reads) fix, e.g. ``{"num_scenes": 7}`` for a multi-scene model: given weights define the architecture.
        Optional; the default fixes none."""
        return {}

    @classmethod
    def pretrained_weights(cls, config: dict) -> Path | None:
        """The file of pretrained (e.g. ImageNet) weights a model built with factory arguments ``config`` would
        load, ``None`` when it loads none; :class:`harness.training.backbones.PretrainedMissing` when ``config`` asks for
        weights this machine lacks. Optional: the harness calls it on the factory's ``model_class`` while
        resolving a recipe, so that the file's hash enters the fingerprint and a profile's wish for pretrained
        weights (recipe key ``pretrained`` from ``registry.toml``) falls back to random initialisation with a
        warning where none are available (``harness.api.recipes``). Timm backbones: ``harness.training.backbones``."""
        return None


def decode_accepts_scene(teacher: nn.Module) -> bool:
    """Whether ``teacher.decode`` takes a ``scene`` argument (per-scene heads; older plugins' do not)."""
    import inspect

    try:
        return "scene" in inspect.signature(teacher.decode).parameters
    except (TypeError, ValueError):
        return False


def decode_poses(teacher: nn.Module, latent_x: Tensor, latent_q: Tensor, scene: Tensor | None = None) -> Tensor:
    """``teacher.decode(latent_x, latent_q[, scene])``: ``scene`` (B,) int64 is passed only to a ``decode`` that takes it."""
    if scene is not None and decode_accepts_scene(teacher):
        return teacher.decode(latent_x, latent_q, scene=scene)
    return teacher.decode(latent_x, latent_q)


# --------------------------------------------------------------------------- student
class Student(nn.Module):
    """A camera pose auto-encoder (PAE): poses to the latents its teacher would produce.

    ``forward(poses (B, 7), scene (B,) int64 or None) -> (latent_x (B, D), latent_q (B, D))``.
    A multi-scene student needs ``scene``; a single-scene one ignores it.
    """

    latent_dim: int = 256
    multi_scene: bool = False

    def forward(self, poses: Tensor, scene: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


# --------------------------------------------------------------------------- refiner
class Refiner(nn.Module):
    """A relative pose regressor over latents.

    ``forward(query_x, query_q, ref_x, ref_q) -> rel (B, 7)``: the relative pose
    ``rel(query -> reference)`` (``harness.poses.relative_pose`` convention).
    ``neighbours`` says where reference latents come from at test time:
    ``"student"`` (encode the current estimate with the PAE, iAPR),
    ``"retrieval"`` (the training frame nearest the estimate, the image-RPR baseline) or
    ``"training-poses"`` (:class:`PoseIndexRefiner`: PAE encodings of training poses, stored).
    Every value but ``"retrieval"`` needs a student.
    """

    latent_dim: int = 256
    neighbours: str = "student"

    def forward(self, query_x: Tensor, query_q: Tensor, ref_x: Tensor, ref_q: Tensor) -> Tensor:
        raise NotImplementedError


class PoseIndexRefiner(Refiner):
    """A test-time refiner with no relative-pose regressor: it refines estimates directly from an index of
    the *training split's* ground-truth poses and their PAE encodings (built once, stored as its state).

    The stage calls :meth:`configure` with the recipe's values of the keys it declares (``declared_keys``, see
    :mod:`harness.api.keys`; they may share names with the RPR task keys: ``k``, ``lr``, ``orientation_weight``,
    but only a table naming the refiner or ``--set`` gives them), :meth:`reserve_index` to size the state for a stored
    index, :meth:`build_index` once (training poses only: the index cannot hold a test pose), and
    :meth:`refine_batch` once per iteration for all frames of a split at once. It needs a student of the
    teacher to build the index, none at test time.
    """

    neighbours: str = "training-poses"

    def configure(self, recipe: dict) -> None:
        """Take the hyper-parameters from the resolved recipe (``BenchError`` on bad values)."""
        raise NotImplementedError

    def reserve_index(self, n: int) -> None:
        """Size the index state for ``n`` training poses (so that a stored index loads)."""
        raise NotImplementedError

    def build_index(self, poses: Tensor, scene: Tensor, student: nn.Module) -> None:
        """Index the training poses ``(M, 7)`` with scene ids ``(M,)`` and their encodings by ``student``."""
        raise NotImplementedError

    def refine_batch(self, poses: Tensor, query_x: Tensor, query_q: Tensor, scene: Tensor | None) -> Tensor:
        """Refined poses ``(B, 7)`` from estimates ``(B, 7)`` and image latents ``(B, D)`` x 2 (``scene``
        ``(B,)``: predicted scene ids restricting the neighbours, None for a single-scene teacher)."""
        raise NotImplementedError


# --------------------------------------------------------------------------- decoder
class Decoder(nn.Module):
    """Latents to images: ``forward(latent_x, latent_q) -> (B, 3, S, S)`` in [0, 1]."""

    latent_dim: int = 256
    image_size: int = 64

    def forward(self, latent_x: Tensor, latent_q: Tensor) -> Tensor:
        raise NotImplementedError
