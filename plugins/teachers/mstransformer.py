"""Multi-scene MS-Transformer: shared regression heads (``mstransformer``, the reference's EMS-TransPoseNet) or one
pair of heads per scene (``ms-transposenet``, the reference's MSTransPoseNet, ``per_scene_heads``).

    image (B, 3, H, W) -> EfficientNet-B0 feature maps
        stride 16 (112 ch) -> 1x1 conv -> (B, d, h, w) + learned 2-D positions -> transformer_t
        stride 8  (40 ch)  -> 1x1 conv -> (B, d, 2h, 2w) + positions            -> transformer_rot
    each transformer: DETR encoder-decoder, one learned query per scene -> (B, S, d)
    scene_logp = log_softmax(scene_embed(cat[out_t, out_rot]) (B, S, 2d -> 1))   (B, S)
    latent_x / latent_q = the decoder outputs of the selected scene (B, d)
        (ground-truth scene in training, argmax of scene_logp at test)
    pose = [regressor_head_t(latent_x) (B, 3), regressor_head_rot(latent_q) (B, 4)]
        (per_scene_heads: regressor_head_t[scene], regressor_head_rot[scene] of each frame's selected scene)

Paper configuration (``registry.toml`` profile ``paper``, the reference
*code*): d 256, 6 + 6 layers, 8 heads (the reference config's ``nheads: 4``
is never read), ffn 256 with GELU (``activation``), dropout 0.1, one 2-D
positional table of 50 rows shared by both branches (``shared_pos_embed``,
``max_hw = 50``), ``tf_efficientnet_b0``. ``depth``/``d_model``/``heads``/``ffn``
make a small one for a CPU; ``backbone`` takes any timm model with
``features_only`` (the channel counts are read from it); ``pretrained`` /
``pretrained_file`` start it from ImageNet weights, offline
(``harness.training.backbones``). Parameter names follow
the reference (``transformer_t``, ``regressor_head_rot``, ...) so that staged
fine-tuning patterns such as ``regressor_head_rot.*`` carry over.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aprbench.harness.training.backbones import create_backbone, requested_weights
from aprbench.harness.errors import BenchError
from aprbench.harness.api.hookspecs import hookimpl
from aprbench.harness.api.interfaces import Latents, Teacher
from aprbench.harness.api.registry import ModelFamily

VERSION = "1"
DEFAULT_BACKBONE = "efficientnet_b0"


def _activation(name: str) -> Callable[[Tensor], Tensor]:
    """The feed-forward activation by name (``relu`` or ``gelu``)."""
    acts = {"relu": F.relu, "gelu": F.gelu}
    if name not in acts:
        raise BenchError(f"activation must be one of {', '.join(acts)}, got {name!r}")
    return acts[name]


class EncoderLayer(nn.Module):
    """DETR encoder layer: positions added to queries and keys (not values); pre- or post-norm."""

    def __init__(self, d: int, heads: int, ffn: int, dropout: float, norm_first: bool, activation: str = "relu") -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.linear1, self.linear2 = nn.Linear(d, ffn), nn.Linear(ffn, d)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.act = _activation(activation)
        self.dropout = nn.Dropout(dropout)
        self.norm_first = norm_first

    def forward(self, src: Tensor, pos: Tensor) -> Tensor:  # (B, L, d)
        h = self.norm1(src) if self.norm_first else src
        qk = h + pos
        src = src + self.dropout(self.self_attn(qk, qk, h, need_weights=False)[0])
        if not self.norm_first:
            src = self.norm1(src)
        h = self.norm2(src) if self.norm_first else src
        src = src + self.dropout(self.linear2(self.dropout(self.act(self.linear1(h)))))
        return src if self.norm_first else self.norm2(src)


class DecoderLayer(nn.Module):
    """DETR decoder layer: self-attention over the scene queries, cross-attention to the memory."""

    def __init__(self, d: int, heads: int, ffn: int, dropout: float, norm_first: bool, activation: str = "relu") -> None:
        super().__init__()
        self.act = _activation(activation)
        self.self_attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.linear1, self.linear2 = nn.Linear(d, ffn), nn.Linear(ffn, d)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.dropout = nn.Dropout(dropout)
        self.norm_first = norm_first

    def forward(self, tgt: Tensor, memory: Tensor, pos: Tensor, query_pos: Tensor) -> Tensor:
        pre = self.norm_first
        h = self.norm1(tgt) if pre else tgt
        q = h + query_pos
        tgt = tgt + self.dropout(self.self_attn(q, q, h, need_weights=False)[0])
        if not pre:
            tgt = self.norm1(tgt)
        h = self.norm2(tgt) if pre else tgt
        tgt = tgt + self.dropout(self.cross_attn(h + query_pos, memory + pos, memory, need_weights=False)[0])
        if not pre:
            tgt = self.norm2(tgt)
        h = self.norm3(tgt) if pre else tgt
        tgt = tgt + self.dropout(self.linear2(self.dropout(self.act(self.linear1(h)))))
        return tgt if pre else self.norm3(tgt)


class Transformer(nn.Module):
    """DETR-style encoder-decoder: ``(memory tokens, positions, queries) -> decoder output (B, Q, d)``."""

    def __init__(self, d: int, heads: int, ffn: int, enc_layers: int, dec_layers: int, dropout: float, norm_first: bool,
                 activation: str = "relu") -> None:
        super().__init__()
        self.encoder = nn.ModuleList(EncoderLayer(d, heads, ffn, dropout, norm_first, activation) for _ in range(enc_layers))
        self.decoder = nn.ModuleList(DecoderLayer(d, heads, ffn, dropout, norm_first, activation) for _ in range(dec_layers))
        self.encoder_norm = nn.LayerNorm(d) if norm_first else nn.Identity()
        self.decoder_norm = nn.LayerNorm(d)

    def forward(self, src: Tensor, pos: Tensor, query: Tensor) -> Tensor:
        # src, pos (B, L, d); query (Q, d)
        memory = src
        for layer in self.encoder:
            memory = layer(memory, pos)
        memory = self.encoder_norm(memory)
        query_pos = query.unsqueeze(0).expand(src.shape[0], -1, -1)  # (B, Q, d)
        tgt = torch.zeros_like(query_pos)
        for layer in self.decoder:
            tgt = layer(tgt, memory, pos, query_pos)
        return self.decoder_norm(tgt)


class PositionEmbeddingLearned(nn.Module):
    """Learned 2-D positions: a row and a column embedding of d/2 each, concatenated."""

    def __init__(self, d: int, max_hw: int = 64) -> None:
        super().__init__()
        self.row_embed = nn.Embedding(max_hw, d // 2)
        self.col_embed = nn.Embedding(max_hw, d - d // 2)
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)

    def forward(self, h: int, w: int) -> Tensor:  # -> (h * w, d)
        if h > self.row_embed.num_embeddings or w > self.col_embed.num_embeddings:
            raise BenchError(f"feature map {h}x{w} larger than the positional table; raise max_hw")
        rows = self.row_embed.weight[:h].unsqueeze(1).expand(h, w, -1)
        cols = self.col_embed.weight[:w].unsqueeze(0).expand(h, w, -1)
        return torch.cat([cols, rows], dim=-1).flatten(0, 1)


class PoseRegressor(nn.Module):
    """``Linear(d, 1024) + GELU + Linear(1024, out)``."""

    def __init__(self, d: int, out: int, hidden: int = 1024) -> None:
        super().__init__()
        self.fc_h = nn.Linear(d, hidden)
        self.fc_o = nn.Linear(hidden, out)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc_o(F.gelu(self.fc_h(x)))


class MSTransformer(Teacher):
    """Multi-scene APR with a per-branch Transformer and one learned query per scene."""

    version = VERSION

    def __init__(
        self,
        num_scenes: int = 1,
        backbone: str = DEFAULT_BACKBONE,
        feature_strides: tuple[int, int] = (16, 8),  # (position branch, orientation branch)
        d_model: int = 256,
        heads: int = 4,
        ffn: int = 256,
        enc_layers: int = 6,
        dec_layers: int = 6,
        dropout: float = 0.1,
        norm_first: bool = True,
        head_hidden: int = 1024,
        max_hw: int = 64,
        backbone_weights: str | None = None,
        activation: str = "relu",
        shared_pos_embed: bool = False,
        pretrained: bool = False,
        pretrained_file: str | None = None,
        per_scene_heads: bool = False,
    ) -> None:
        super().__init__()
        self.latent_dim = d_model
        self.multi_scene = True
        self.num_scenes = num_scenes
        import timm  # loaded when a model is built, not when the plugin registers its names

        try:
            probe = timm.create_model(backbone, pretrained=False, features_only=True)
            reductions = list(probe.feature_info.reduction())
            idx = sorted(reductions.index(s) for s in feature_strides)  # timm returns maps in this order
        except (ValueError, RuntimeError) as exc:
            raise BenchError(f"timm cannot give {backbone!r} feature maps at strides {list(feature_strides)}: {exc}") from None
        self.backbone = create_backbone(backbone, pretrained, pretrained_file, features_only=True, out_indices=idx)
        if backbone_weights:
            from aprbench.plugins.teachers.posenet import load_backbone_weights

            load_backbone_weights(self.backbone, backbone_weights)
        # timm returns the maps in stride order, whatever the order of out_indices
        got = list(self.backbone.feature_info.reduction())
        self._order = [got.index(s) for s in feature_strides]  # (position, orientation) positions in the output
        channels = self.backbone.feature_info.channels()
        ch_t, ch_rot = channels[self._order[0]], channels[self._order[1]]
        self.input_proj_t = nn.Conv2d(ch_t, d_model, kernel_size=1)
        self.input_proj_rot = nn.Conv2d(ch_rot, d_model, kernel_size=1)
        self.shared_pos_embed = bool(shared_pos_embed)
        if self.shared_pos_embed:  # the reference: one table for both branches
            self.pos_embed = PositionEmbeddingLearned(d_model, max_hw)
        else:
            self.pos_embed_t = PositionEmbeddingLearned(d_model, max_hw)
            self.pos_embed_rot = PositionEmbeddingLearned(d_model, max_hw)
        args = (d_model, heads, ffn, enc_layers, dec_layers, dropout, norm_first, activation)
        self.transformer_t = Transformer(*args)
        self.transformer_rot = Transformer(*args)
        self.query_embed_t = nn.Embedding(num_scenes, d_model)
        self.query_embed_rot = nn.Embedding(num_scenes, d_model)
        self.scene_embed = nn.Linear(2 * d_model, 1)
        self.per_scene_heads = bool(per_scene_heads)
        if self.per_scene_heads:  # the reference's MSTransPoseNet: keys regressor_head_t.<scene>.fc_h.weight, ...
            self.regressor_head_t: nn.Module = nn.ModuleList(PoseRegressor(d_model, 3, head_hidden) for _ in range(num_scenes))
            self.regressor_head_rot: nn.Module = nn.ModuleList(PoseRegressor(d_model, 4, head_hidden) for _ in range(num_scenes))
        else:
            self.regressor_head_t = PoseRegressor(d_model, 3, head_hidden)
            self.regressor_head_rot = PoseRegressor(d_model, 4, head_hidden)

    def _branch(self, feat: Tensor, proj: nn.Conv2d, pos_embed: PositionEmbeddingLearned, transformer: Transformer, query: nn.Embedding) -> Tensor:
        src = proj(feat)  # (B, d, h, w)
        h, w = src.shape[-2:]
        tokens = src.flatten(2).transpose(1, 2)  # (B, h*w, d)
        pos = pos_embed(h, w).unsqueeze(0).expand(src.shape[0], -1, -1)
        return transformer(tokens, pos, query.weight)  # (B, S, d)

    def encode(self, images: Tensor, scene: Tensor | None = None) -> Latents:
        feats = self.backbone(images)
        f_t, f_rot = feats[self._order[0]], feats[self._order[1]]  # strides 16 and 8 by default
        pe_t = self.pos_embed if self.shared_pos_embed else self.pos_embed_t
        pe_rot = self.pos_embed if self.shared_pos_embed else self.pos_embed_rot
        out_t = self._branch(f_t, self.input_proj_t, pe_t, self.transformer_t, self.query_embed_t)
        out_rot = self._branch(f_rot, self.input_proj_rot, pe_rot, self.transformer_rot, self.query_embed_rot)
        logits = self.scene_embed(torch.cat([out_t, out_rot], dim=-1)).squeeze(-1)  # (B, S)
        scene_logp = F.log_softmax(logits, dim=-1)
        if scene is None:
            scene = scene_logp.argmax(dim=-1)
        sel = scene.view(-1, 1, 1).expand(-1, 1, out_t.shape[-1])  # (B, 1, d)
        return Latents(out_t.gather(1, sel).squeeze(1), out_rot.gather(1, sel).squeeze(1), scene_logp)

    def decode(self, latent_x: Tensor, latent_q: Tensor, scene: Tensor | None = None) -> Tensor:
        """Latents ``(B, d)`` to poses ``(B, 7)``; with per-scene heads each row goes through the heads of its
        ``scene`` ``(B,)`` (required then; the shared heads ignore it)."""
        if not self.per_scene_heads:
            return torch.cat([self.regressor_head_t(latent_x), self.regressor_head_rot(latent_q)], dim=-1)
        if scene is None:
            raise BenchError("ms-transposenet has one pose head per scene: decode needs each frame's scene")
        scene = scene.to(latent_x.device).long().view(-1)
        if len(scene) != len(latent_x) or (len(scene) and (scene.min() < 0 or scene.max() >= self.num_scenes)):
            raise BenchError(f"decode: scene must be (B,) indices in [0, {self.num_scenes}), got {scene.tolist()}")
        out = latent_x.new_empty(len(latent_x), 7)
        for s in scene.unique().tolist():  # one batched pass per scene present
            rows = (scene == s).nonzero(as_tuple=True)[0]
            out[rows] = torch.cat([self.regressor_head_t[s](latent_x[rows]), self.regressor_head_rot[s](latent_q[rows])],
                                  dim=-1).to(out.dtype)
        return out

    def heads(self) -> list[nn.Module]:
        return [self.regressor_head_t, self.regressor_head_rot]

    @classmethod
    def shapes_from_state(cls, state: dict[str, Tensor]) -> dict:
        """The number of scenes of a checkpoint (its learned scene queries, the same key in the reference's
        layout and in this one)."""
        query = state.get("query_embed_t.weight")
        return {"num_scenes": int(query.shape[0])} if query is not None and query.dim() == 2 else {}

    @classmethod
    def pretrained_weights(cls, config: dict) -> Path | None:
        """The ImageNet weights file of ``config``'s backbone when it asks for one (``pretrained``,
        ``pretrained_file``); see :meth:`harness.api.interfaces.Teacher.pretrained_weights`."""
        return requested_weights(config, DEFAULT_BACKBONE)

    def from_reference_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """``state`` in this model's names: a reference EMS-Transformer file converted, anything else unchanged."""
        from aprbench.plugins.reference_checkpoints import is_reference_mstransformer, mstransformer_from_reference, stage_layout

        if not is_reference_mstransformer(state):
            return state
        layout = stage_layout(self.backbone)
        return mstransformer_from_reference(state, layout or (1, 2, 2, 3, 3, 4, 1), self.shared_pos_embed)

    @torch.no_grad()
    def init_output_bias(self, mean_pose: Tensor) -> None:
        """Start the regressors (every scene's, with per-scene heads) at ``mean_pose`` (7,)."""
        for heads, value in ((self.regressor_head_t, mean_pose[:3]), (self.regressor_head_rot, mean_pose[3:])):
            for head in (heads if self.per_scene_heads else [heads]):
                head.fc_o.bias.copy_(value)
                head.fc_o.weight.mul_(0.1)


def _build(**config: Any) -> MSTransformer:
    if "feature_strides" in config:
        config["feature_strides"] = tuple(config["feature_strides"])
    return MSTransformer(**config)


MODELS = ModelFamily()


@MODELS.register("mstransformer")
def _mstransformer() -> dict:
    return {}  # the quick and paper configurations are recipes (registry.toml)


@MODELS.register("ms-transposenet")
def _ms_transposenet() -> dict:
    return {"per_scene_heads": True}  # the reference's MSTransPoseNet: one pose head pair per scene


@hookimpl
def bench_teachers() -> dict[str, Callable[..., Teacher]]:
    return MODELS.factories(_build, MSTransformer)
