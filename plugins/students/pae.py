"""Camera pose auto-encoders (PAEs): poses to the latents of their teacher.

    pose (B, 7) -> t (B, 3), q (B, 4)
    single-scene:  ex = PE(t) (B, 39)            eq = PE(q) (B, 52)
    multi-scene:   ex = [PE(t), PE(s)] (B, 52)   eq = [PE(q), PE(s)] (B, 65)   s = scene index as a float, PE(s) (B, 13)
    latent_x = x_encoder(ex) (B, D)    latent_q = q_encoder(eq) (B, D)

``PE`` is NeRF's positional encoding with 6 log-spaced frequencies, no pi
factor, input kept (``harness.poses.positional_encoding``); the ``-nope``
variants feed the raw pose (3 and 4 dims; the scene index stays encoded).
Each encoder is an MLP ``in -> 64 -> 128 -> 256 -> D`` with ReLU between
(``-shallow``: ``in -> 64 -> D``), Xavier-uniform weights, no activation on
the output.

Layer names are the reference's (``models/pose_encoder.py`` of
yolish/camera-pose-auto-encoders): ``x_encoder`` and ``q_encoder`` are
``nn.Sequential`` with the linear layers at indices 0, 2, 4, 6 (shallow: 0,
2), so a reference ``PoseEncoder`` / ``MultiSCenePoseEncoder`` state dict
loads with ``load_state_dict`` unchanged (multi-scene: pose encoding first,
then the scene's, as in the reference).

Variants are registered timm-style with :func:`register_variant`;
:func:`create_student` builds any of them with overrides.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from aprbench.harness.errors import BenchError
from aprbench.harness.api.hookspecs import hookimpl
from aprbench.harness.api.registry import ModelFamily
from aprbench.harness.api.interfaces import Student
from aprbench.harness.poses import positional_encoding

VERSION = "1"

_VARIANTS = ModelFamily()
register_variant = _VARIANTS.register


@register_variant("pae")
def _pae() -> dict[str, Any]:
    return {"shallow": False, "positional_encoding": True}


@register_variant("pae-shallow")
def _pae_shallow() -> dict[str, Any]:
    return {"shallow": True, "positional_encoding": True}


@register_variant("pae-nope")
def _pae_nope() -> dict[str, Any]:
    return {"shallow": False, "positional_encoding": False}


@register_variant("pae-shallow-nope")
def _pae_shallow_nope() -> dict[str, Any]:
    return {"shallow": True, "positional_encoding": False}


def encoded_size(dims: int, num_freqs: int, positional_encoding: bool = True) -> int:
    """Size of a ``dims``-vector after the positional encoding: ``dims * (1 + 2 L)`` (or ``dims`` without)."""
    return dims * (1 + 2 * num_freqs) if positional_encoding else dims


def mlp(in_dim: int, out_dim: int, hidden: tuple[int, ...]) -> nn.Sequential:
    """``Linear`` layers through ``hidden`` with ReLU between (none after the last)."""
    sizes = [in_dim, *hidden, out_dim]
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        if i:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
    return nn.Sequential(*layers)


class PAE(Student):
    """Single- or multi-scene camera pose auto-encoder.

    ``forward(poses (B, 7), scene (B,) int64 | None) -> (latent_x (B, D), latent_q (B, D))``;
    a multi-scene PAE requires ``scene`` (the scene index it encodes).
    """

    version = VERSION

    def __init__(
        self,
        latent_dim: int = 256,
        num_scenes: int = 1,
        multi_scene: bool = False,
        shallow: bool = False,
        positional_encoding: bool = True,
        num_freqs: int = 6,
    ) -> None:
        super().__init__()
        self.latent_dim = int(latent_dim)
        self.num_scenes = int(num_scenes)
        self.multi_scene = bool(multi_scene)
        self.shallow = bool(shallow)
        self.apply_positional_encoding = bool(positional_encoding)
        self.num_freqs = int(num_freqs)
        self.x_dim = encoded_size(3, self.num_freqs, self.apply_positional_encoding)  # 39
        self.q_dim = encoded_size(4, self.num_freqs, self.apply_positional_encoding)  # 52
        self.scene_dim = encoded_size(1, self.num_freqs) if self.multi_scene else 0  # 13
        hidden = (64,) if self.shallow else (64, 128, 256)
        self.x_encoder = mlp(self.x_dim + self.scene_dim, self.latent_dim, hidden)
        self.q_encoder = mlp(self.q_dim + self.scene_dim, self.latent_dim, hidden)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def _encode(self, v: Tensor) -> Tensor:
        return positional_encoding(v, self.num_freqs) if self.apply_positional_encoding else v

    def forward(self, poses: Tensor, scene: Tensor | None = None) -> tuple[Tensor, Tensor]:
        ex, eq = self._encode(poses[:, :3]), self._encode(poses[:, 3:])  # (B, 39), (B, 52)
        if self.multi_scene:
            if scene is None:
                raise BenchError("a multi-scene PAE needs the scene index of every pose")
            es = positional_encoding(scene.to(poses.dtype).reshape(-1, 1), self.num_freqs)  # (B, 13)
            ex, eq = torch.cat([ex, es], dim=1), torch.cat([eq, es], dim=1)
        return self.x_encoder(ex), self.q_encoder(eq)

    def from_reference_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """``state`` in this model's names: the reference's PAE names are these already (unchanged)."""
        return dict(state)


def create_student(name: str, latent_dim: int = 256, num_scenes: int = 1, multi_scene: bool = False, **overrides: Any) -> PAE:
    """Build a registered variant with ``overrides`` on top of its defaults (timm's ``create_model``)."""
    if name not in _VARIANTS:
        raise BenchError(f"unknown PAE variant {name!r}; known: {', '.join(sorted(_VARIANTS))}")
    try:
        return PAE(latent_dim=latent_dim, num_scenes=num_scenes, multi_scene=multi_scene, **{**_VARIANTS[name], **overrides})
    except TypeError as exc:
        raise BenchError(f"student {name!r}: bad option ({exc})") from None


@hookimpl
def bench_students() -> dict[str, Callable[..., Student]]:
    return _VARIANTS.factories(PAE)
