"""PoseNet teachers: a timm CNN backbone and two 256-d latent heads.

    image (B, 3, H, W) -> backbone, global average pool -> f (B, C)
    latent_x = ReLU(x_latent_fc(f))  (B, 256)   position latent
    latent_q = ReLU(q_latent_fc(f))  (B, 256)   orientation latent
    pose = [x_reg(dropout(latent_x)), q_reg(dropout(latent_q))]  (B, 3 + 4)

Variants are registered timm-style with :func:`register_variant`;
:func:`create_teacher` builds any of them, or ``posenet`` with any timm model
name as ``backbone=``. Backbones start from random weights unless
``pretrained=True`` (timm's ImageNet weights from the local Hugging Face cache)
or ``pretrained_file=PATH`` (a timm state dict, loaded through timm) asks for
pretrained ones (``harness.training.backbones``: never downloaded, a clear error when
missing), or ``backbone_weights=PATH`` names a local timm or torchvision state
dict loaded as it is: this module never downloads anything.

Reference quirk (for importing the reference's checkpoints later): in the
reference weights the layer named ``x_latent_fc`` feeds the *orientation*
latent and ``q_latent_fc`` the *position* latent. Here the names mean what
they say; :func:`from_reference_state_dict` swaps the two when importing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from aprbench.harness.training.backbones import TIMM_KEYS, create_backbone, requested_weights
from aprbench.harness.errors import BenchError
from aprbench.harness.api.hookspecs import hookimpl
from aprbench.harness.api.registry import ModelFamily
from aprbench.harness.api.interfaces import Latents, Teacher
from aprbench.harness.store.hdf5 import load_state

VERSION = "1"
DEFAULT_BACKBONE = "mobilenetv2_100"

_VARIANTS = ModelFamily()
register_variant = _VARIANTS.register


@register_variant("posenet")
def _posenet() -> dict[str, Any]:
    return {"backbone": DEFAULT_BACKBONE}


@register_variant("posenet-mobilenet")
def _posenet_mobilenet() -> dict[str, Any]:
    return {"backbone": DEFAULT_BACKBONE}


@register_variant("posenet-resnet50")
def _posenet_resnet50() -> dict[str, Any]:
    return {"backbone": "resnet50"}


@register_variant("posenet-efficientnet")
def _posenet_efficientnet() -> dict[str, Any]:
    return {"backbone": "efficientnet_b0"}  # paper profile: tf_efficientnet_b0 (the reference's weights)


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> None:
    """Load a local timm or torchvision state dict into a timm backbone (classifier keys ignored).

    torchvision and timm name most ImageNet models alike (ResNets identically);
    keys that still do not fit are refused, naming them.
    """
    state = load_state(Path(path))
    for key in ("state_dict", "model"):
        if key in state and isinstance(state[key], dict):
            state = state[key]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = backbone.state_dict()
    # classifier weights of an ImageNet checkpoint have no place in a num_classes=0 backbone
    state = {k: v for k, v in state.items() if k in own or not k.split(".")[0] in {"fc", "classifier", "head"}}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        raise BenchError(
            f"backbone weights {path} do not fit {type(backbone).__name__}: "
            f"missing {missing[:6]}, unexpected {unexpected[:6]}, shape mismatch {shapes[:6]}"
        )
    backbone.load_state_dict(state)


class PoseNet(Teacher):
    """Single-scene PoseNet APR over any timm backbone."""

    version = VERSION
    declared_keys = TIMM_KEYS  # what **timm_kwargs passes on to timm.create_model (harness.api.keys)

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        latent_dim: int = 256,
        dropout: float = 0.1,
        backbone_weights: str | None = None,
        num_scenes: int = 1,
        pretrained: bool = False,
        pretrained_file: str | None = None,
        **timm_kwargs: Any,
    ) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.multi_scene = False
        self.num_scenes = 1  # a PoseNet regresses one coordinate frame; several scenes share it
        self.backbone = create_backbone(backbone, pretrained, pretrained_file, num_classes=0, **timm_kwargs)
        if backbone_weights:
            load_backbone_weights(self.backbone, backbone_weights)
        dim = self.backbone.num_features
        self.x_latent_fc = nn.Linear(dim, latent_dim)  # position latent (see the module note on the reference)
        self.q_latent_fc = nn.Linear(dim, latent_dim)  # orientation latent
        self.dropout = nn.Dropout(dropout)
        self.x_reg = nn.Linear(latent_dim, 3)
        self.q_reg = nn.Linear(latent_dim, 4)

    def encode(self, images: Tensor, scene: Tensor | None = None) -> Latents:
        f = self.backbone(images)  # (B, C) pooled
        return Latents(torch.relu(self.x_latent_fc(f)), torch.relu(self.q_latent_fc(f)))

    def decode(self, latent_x: Tensor, latent_q: Tensor) -> Tensor:
        return torch.cat([self.x_reg(self.dropout(latent_x)), self.q_reg(self.dropout(latent_q))], dim=-1)

    def heads(self) -> list[nn.Module]:
        return [self.x_reg, self.q_reg]

    @classmethod
    def pretrained_weights(cls, config: dict) -> Path | None:
        """The ImageNet weights file of ``config``'s backbone when it asks for one (``pretrained``,
        ``pretrained_file``); see :meth:`harness.api.interfaces.Teacher.pretrained_weights`."""
        return requested_weights(config, DEFAULT_BACKBONE)

    def from_reference_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """``state`` in this model's names: a reference PoseNet file converted (backbone names for this
        backbone, latent layers swapped, classifier dropped), anything else returned unchanged."""
        from aprbench.plugins.reference_checkpoints import is_reference_posenet, posenet_from_reference, stage_layout

        return posenet_from_reference(state, stage_layout(self.backbone)) if is_reference_posenet(state) else state

    @torch.no_grad()
    def init_output_bias(self, mean_pose: Tensor) -> None:
        """Start the regressors at ``mean_pose`` (7,): bias = mean, small weights."""
        for layer, value in ((self.x_reg, mean_pose[:3]), (self.q_reg, mean_pose[3:])):
            layer.bias.copy_(value)
            layer.weight.mul_(0.1)


def from_reference_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A reference PoseNet state dict in this module's names (see ``plugins.reference_checkpoints``)."""
    from aprbench.plugins.reference_checkpoints import posenet_from_reference

    return posenet_from_reference(state)


def create_teacher(name: str, **overrides: Any) -> PoseNet:
    """Build a registered variant with ``overrides`` on top of its defaults (timm's ``create_model``)."""
    if name not in _VARIANTS:
        raise BenchError(f"unknown PoseNet variant {name!r}; known: {', '.join(sorted(_VARIANTS))}")
    return PoseNet(**{**_VARIANTS[name], **overrides})


@hookimpl
def bench_teachers() -> dict[str, Callable[..., Teacher]]:
    return _VARIANTS.factories(PoseNet)
