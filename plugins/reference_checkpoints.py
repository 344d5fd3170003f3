"""Import state dicts saved by the reference code (yolish/camera-pose-auto-encoders) into aprbench models.

Every function maps key names (and, for the PAE-RPR's two relative-pose
tokens, one concatenation) and never changes a value, so an imported model
computes what the reference computes. A converted state dict is loaded with
``harness.store.hdf5.load_into``, which refuses any missing, extra or mis-shaped
key by name: a reference file never loads partially.

Reference layouts (facts read from the reference code):

- PoseNet: ``backbone.*`` is a torchvision ResNet (``Sequential`` of its
  children: ``backbone.0`` conv1, ``backbone.1`` bn1, ``backbone.4``-``7``
  layer1-4), a torchvision MobileNetV2 (``backbone.0.<features index>``) or an
  ``efficientnet_pytorch`` EfficientNet (``backbone._conv_stem`` ...; its
  classifier ``_fc`` is unused). ``x_latent_fc`` feeds the *orientation*
  latent and ``q_latent_fc`` the *position* latent: the two are swapped here.
- EMS-Transformer: ``backbone.0.body.*`` an ``efficientnet_pytorch``
  EfficientNet (head ``_conv_head``/``_bn1``/``_fc`` unused), ``backbone.1``
  one learned 2-D positional table shared by both branches,
  ``transformer_{t,rot}.encoder.layers.N`` / ``.encoder.norm`` /
  ``.decoder.layers.N.multihead_attn`` / ``.decoder.norm``.
- PAE (``PoseEncoder`` / ``MultiSCenePoseEncoder``): aprbench's own names.
- PAE-RPR (``VTRPR``): ``rpr_transformer_encoder.*``, one ``ln``,
  ``rel_x_token``/``rel_q_token`` (1, d) each, ``rel_regressor_{x,q}.fc_h/fc_o``,
  plus the fine-tuned ``mstransformer.*`` and ``pae.*`` (split out by
  :func:`split_pae_rpr`).
- Decoder: ``decoder.{0,2,4,6}`` (aprbench: ``net.{0,2,4,6}``).
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

from torch import Tensor, nn

from aprbench.harness.errors import BenchError

State = dict[str, Tensor]

EFFICIENTNET_B0_LAYOUT = (1, 2, 2, 3, 3, 4, 1)  # blocks per stage
MOBILENETV2_LAYOUT = (1, 2, 3, 4, 3, 3, 1)
# efficientnet_pytorch block parts -> timm (depthwise-separable first block / inverted residual)
_EFF_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand",
           "_project_conv": "conv_pw", "_bn2": "bn2"}
_EFF_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
           "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand", "_project_conv": "conv_pwl", "_bn2": "bn3"}
_EFF_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}
# torchvision MobileNetV2 InvertedResidual ``conv`` parts -> timm
_MB_DS = {"conv.0.0": "conv_dw", "conv.0.1": "bn1", "conv.1": "conv_pw", "conv.2": "bn2"}
_MB_IR = {"conv.0.0": "conv_pw", "conv.0.1": "bn1", "conv.1.0": "conv_dw", "conv.1.1": "bn2", "conv.2": "conv_pwl",
          "conv.3": "bn3"}
_RESNET_CHILDREN = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}


def _flat_to_stage(layout: Sequence[int]) -> list[tuple[int, int]]:
    return [(s, i) for s, n in enumerate(layout) for i in range(n)]


def _map_part(rest: str, table: Mapping[str, str]) -> str | None:
    for src in sorted(table, key=len, reverse=True):  # longest prefix first ("conv.0.0" before "conv.0")
        if rest == src or rest.startswith(src + "."):
            return table[src] + rest[len(src):]
    return None


def efficientnet_pytorch_to_timm(state: Mapping[str, Tensor], layout: Sequence[int] = EFFICIENTNET_B0_LAYOUT,
                                 drop_head: bool = False) -> State:
    """``efficientnet_pytorch`` EfficientNet keys (no prefix) to timm ``tf_efficientnet_*`` keys.

    The classifier ``_fc`` is dropped; ``drop_head`` also drops ``_conv_head``/``_bn1``
    (timm's ``features_only`` models have no head).
    """
    stages = _flat_to_stage(layout)
    expand = {k.split(".")[1] for k in state if k.startswith("_blocks.") and "._expand_conv." in k}
    out: State = {}
    for key, value in state.items():
        if key.startswith("_fc.") or (drop_head and (key.startswith("_conv_head.") or key.startswith("_bn1."))):
            continue
        m = re.match(r"_blocks\.(\d+)\.(.+)$", key)
        if m:
            n, rest = int(m.group(1)), m.group(2)
            if n >= len(stages):
                raise BenchError(f"EfficientNet block {n} beyond the {len(stages)} blocks of the layout {list(layout)}")
            part = _map_part(rest, _EFF_IR if m.group(1) in expand else _EFF_DS)
            if part is None:
                raise BenchError(f"unknown EfficientNet block key {key!r}")
            s, i = stages[n]
            out[f"blocks.{s}.{i}.{part}"] = value
            continue
        part = _map_part(key, _EFF_TOP)
        if part is None:
            raise BenchError(f"unknown EfficientNet key {key!r}")
        out[part] = value
    return out


def mobilenetv2_torchvision_to_timm(state: Mapping[str, Tensor], layout: Sequence[int] = MOBILENETV2_LAYOUT) -> State:
    """torchvision ``mobilenet_v2().features`` keys (``{i}.…``) to timm ``mobilenetv2_100`` keys."""
    stages = _flat_to_stage(layout)
    last = len(stages) + 1
    out: State = {}
    for key, value in state.items():
        idx, _, rest = key.partition(".")
        i = int(idx)
        if i == 0:
            part = _map_part(rest, {"0": "conv_stem", "1": "bn1"})
        elif i == last:
            part = _map_part(rest, {"0": "conv_head", "1": "bn2"})
        elif 1 <= i < last:
            p = _map_part(rest, _MB_DS if i == 1 else _MB_IR)
            s, j = stages[i - 1]
            part = None if p is None else f"blocks.{s}.{j}.{p}"
        else:
            part = None
        if part is None:
            raise BenchError(f"unknown MobileNetV2 key features.{key!r}")
        out[part] = value
    return out


def resnet_torchvision_to_timm(state: Mapping[str, Tensor]) -> State:
    """torchvision ResNet keys as ``Sequential(children[:-2])`` (``{i}.…``) to timm ResNet keys."""
    out: State = {}
    for key, value in state.items():
        idx, _, rest = key.partition(".")
        if idx not in _RESNET_CHILDREN:
            raise BenchError(f"unknown ResNet key {key!r}")
        out[f"{_RESNET_CHILDREN[idx]}.{rest}"] = value
    return out


def _sub(state: Mapping[str, Tensor], prefix: str) -> State:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


# ----------------------------------------------------------------------------------------- PoseNet
def is_reference_posenet(state: Mapping[str, Tensor]) -> bool:
    """A reference PoseNet state dict: torchvision / efficientnet_pytorch backbone names."""
    return any(k.startswith(("backbone._conv_stem.", "backbone.0.0.0.", "backbone.0.weight")) for k in state)


def posenet_from_reference(state: Mapping[str, Tensor], layout: Sequence[int] | None = None) -> State:
    """Reference PoseNet -> :class:`plugins.teachers.posenet.PoseNet` keys.

    Backbone renamed to timm's (``mobilenetv2_100``, ``resnet50``/``resnet34``,
    ``tf_efficientnet_b0``; ``layout`` = blocks per stage of the target, for
    EfficientNet and MobileNetV2), the unused classifier ``_fc`` dropped, and
    ``x_latent_fc`` / ``q_latent_fc`` swapped (the reference's ``x_latent_fc``
    computes the orientation latent).
    """
    bb = _sub(state, "backbone.")
    if not bb:  # heads only: just the latent swap
        pass
    elif any(k.startswith("_conv_stem.") for k in bb):
        bb = efficientnet_pytorch_to_timm(bb, layout or EFFICIENTNET_B0_LAYOUT)
    elif any(k.startswith("0.0.0.") for k in bb):
        bb = mobilenetv2_torchvision_to_timm(_sub(bb, "0."), layout or MOBILENETV2_LAYOUT)
    elif "0.weight" in bb:
        bb = resnet_torchvision_to_timm(bb)
    else:
        raise BenchError("not a reference PoseNet state dict: no torchvision or efficientnet_pytorch backbone keys")
    swap = {"x_latent_fc.": "q_latent_fc.", "q_latent_fc.": "x_latent_fc."}
    out = {f"backbone.{k}": v for k, v in bb.items()}
    for k, v in state.items():
        if k.startswith("backbone."):
            continue
        for a, b in swap.items():
            if k.startswith(a):
                k = b + k[len(a):]
                break
        out[k] = v
    return out


# ----------------------------------------------------------------------------------------- MS-Transformer
def is_reference_mstransformer(state: Mapping[str, Tensor]) -> bool:
    """A reference (E)MS-Transformer state dict: ``backbone.0.body`` and ``encoder.layers`` keys."""
    return any(k.startswith("backbone.0.body.") for k in state) or any(".encoder.layers." in k for k in state)


def mstransformer_from_reference(state: Mapping[str, Tensor], layout: Sequence[int] = EFFICIENTNET_B0_LAYOUT,
                                 shared_pos_embed: bool = True) -> State:
    """Reference EMS-Transformer -> :class:`plugins.teachers.mstransformer.MSTransformer` keys.

    The shared positional table goes to ``pos_embed`` (``shared_pos_embed``) or
    is copied to both ``pos_embed_t`` and ``pos_embed_rot`` (same outputs).
    """
    out: State = {}
    body = _sub(state, "backbone.0.body.")
    for k, v in efficientnet_pytorch_to_timm(body, layout, drop_head=True).items():
        out[f"backbone.{k}"] = v
    for k, v in _sub(state, "backbone.1.").items():
        for name in (["pos_embed"] if shared_pos_embed else ["pos_embed_t", "pos_embed_rot"]):
            out[f"{name}.{k}"] = v
    rules = [
        (r"^(transformer_\w+)\.encoder\.layers\.(\d+)\.", r"\1.encoder.\2."),
        (r"^(transformer_\w+)\.encoder\.norm\.", r"\1.encoder_norm."),
        (r"^(transformer_\w+)\.decoder\.layers\.(\d+)\.multihead_attn\.", r"\1.decoder.\2.cross_attn."),
        (r"^(transformer_\w+)\.decoder\.layers\.(\d+)\.", r"\1.decoder.\2."),
        (r"^(transformer_\w+)\.decoder\.norm\.", r"\1.decoder_norm."),
    ]
    for k, v in state.items():
        if k.startswith("backbone."):
            continue
        for pat, rep in rules:
            new, n = re.subn(pat, rep, k)
            if n:
                k = new
                break
        out[k] = v
    return out


# ----------------------------------------------------------------------------------------- PAE, PAE-RPR, decoder
def pae_from_reference(state: Mapping[str, Tensor]) -> State:
    """Reference ``PoseEncoder`` / ``MultiSCenePoseEncoder``: the names are aprbench's already."""
    return dict(state)


def is_reference_pae_rpr(state: Mapping[str, Tensor]) -> bool:
    """A reference VTRPR state dict (``rpr_transformer_encoder`` keys)."""
    return any(k.startswith("rpr_transformer_encoder.") for k in state)


def split_pae_rpr(state: Mapping[str, Tensor]) -> dict[str, State]:
    """A reference VTRPR file -> ``{"refiner": ..., "teacher": ..., "student": ...}`` in aprbench layout.

    ``teacher`` / ``student`` are the fine-tuned ``mstransformer.*`` / ``pae.*``
    (empty when the file lacks them); the teacher part still has reference
    names (convert with :func:`mstransformer_from_reference`).
    """
    import torch

    rpr = {k: v for k, v in state.items() if not k.startswith(("mstransformer.", "pae."))}
    out: State = {}
    for k, v in rpr.items():
        if k in ("rel_x_token", "rel_q_token"):
            continue
        k = re.sub(r"^rpr_transformer_encoder\.", "encoder.", k)
        k = re.sub(r"^ln\.", "norm.", k)
        k = re.sub(r"^rel_regressor_(x|q)\.fc_h\.", r"head_\1.net.0.", k)
        k = re.sub(r"^rel_regressor_(x|q)\.fc_o\.", r"head_\1.net.2.", k)
        out[k] = v
    if "rel_x_token" in rpr or "rel_q_token" in rpr:
        if not ("rel_x_token" in rpr and "rel_q_token" in rpr):
            raise BenchError("reference PAE-RPR state dict has only one of rel_x_token / rel_q_token")
        out["rel_tokens"] = torch.cat([rpr["rel_x_token"].reshape(1, -1), rpr["rel_q_token"].reshape(1, -1)])
    return {"refiner": out, "teacher": _sub(state, "mstransformer."), "student": _sub(state, "pae.")}


def is_reference_decoder(state: Mapping[str, Tensor]) -> bool:
    """A reference image decoder (``decoder.N`` keys)."""
    return any(k.startswith("decoder.") for k in state)


def decoder_from_reference(state: Mapping[str, Tensor]) -> State:
    """Reference ``Decoder`` (``decoder.N``) -> :class:`plugins.decoders.image_decoder.MLPDecoder` (``net.N``)."""
    return {("net." + k[len("decoder."):] if k.startswith("decoder.") else k): v for k, v in state.items()}


def stage_layout(module: nn.Module) -> list[int] | None:
    """Blocks per stage of a timm EfficientNet / MobileNet (``module.blocks``), None otherwise."""
    blocks = getattr(module, "blocks", None)
    return [len(b) for b in blocks] if isinstance(blocks, nn.Sequential) else None


__all__ = [
    "efficientnet_pytorch_to_timm", "mobilenetv2_torchvision_to_timm", "resnet_torchvision_to_timm",
    "is_reference_posenet", "posenet_from_reference", "is_reference_mstransformer", "mstransformer_from_reference",
    "pae_from_reference", "is_reference_pae_rpr", "split_pae_rpr", "is_reference_decoder", "decoder_from_reference",
    "stage_layout",
]
