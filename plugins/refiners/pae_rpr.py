"""PAE-based relative pose regressor (iAPR).

A Transformer encoder over six tokens::

    [rel_x_token, rel_q_token, query_latent_x, query_latent_q, ref_latent_x, ref_latent_q]   (B, 6, d)

(latents standardised per dimension with training statistics kept as buffers,
then projected to ``d`` when ``latent_dim != d``; a learned embedding per
token position marks its type). The outputs at the two ``rel`` tokens go
through LayerNorm and MLP heads ``Linear(d, 1024) + GELU + Linear(1024, 3 | 4)``
to ``rel(query -> reference)``: ``t = t_ref - t_query`` (world frame, metres)
and ``q = q_query^-1 q_ref`` (not normalised), the ``harness.poses.relative_pose``
convention. At test time the reference latents are the PAE's encoding of the
current estimate (``neighbours = "student"``).

``reference_layout = True`` is the reference's VTRPR exactly (recipe
``paper``): raw latents (no standardisation, no projection, no type
embedding) and one LayerNorm ``norm`` shared by both output tokens; its
checkpoints import with ``plugins.reference_checkpoints``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from aprbench.harness.api.hookspecs import hookimpl
from aprbench.harness.api.registry import ModelFamily
from aprbench.harness.api.interfaces import Refiner

VERSION = "2"  # 2: virtual-neighbour spread per scene


class MLPHead(nn.Module):
    """``Linear(d, hidden) + GELU + Linear(hidden, out)``."""

    def __init__(self, d: int, out: int, hidden: int = 1024) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, out))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class TransformerRPR(Refiner):
    """Transformer-encoder RPR over query and reference latents (``forward -> rel (B, 7)``)."""

    def __init__(
        self,
        latent_dim: int = 256,
        d_model: int = 256,
        layers: int = 2,
        heads: int = 4,
        ffn: int = 2048,
        dropout: float = 0.1,
        head_hidden: int = 1024,
        neighbours: str = "student",
        reference_layout: bool = False,
    ) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.neighbours = neighbours
        self.reference_layout = bool(reference_layout)
        if self.reference_layout:
            # the reference's VTRPR: no standardisation, no type embedding, one LayerNorm for both tokens
            if latent_dim != d_model:
                from aprbench.harness.errors import BenchError

                raise BenchError(f"reference_layout needs latent_dim == d_model (got {latent_dim} and {d_model})")
            self.rel_tokens = nn.Parameter(torch.zeros(2, d_model))
            layer = nn.TransformerEncoderLayer(d_model, heads, ffn, dropout, activation="gelu", batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False)
            self.norm = nn.LayerNorm(d_model)
            self.head_x = MLPHead(d_model, 3, head_hidden)
            self.head_q = MLPHead(d_model, 4, head_hidden)
            return
        self.proj = nn.Identity() if latent_dim == d_model else nn.Linear(latent_dim, d_model)
        # per-dimension standardisation of the input latents (position row 0, orientation row 1), set from
        # the training latents before training (identity until then); part of the state dict
        self.register_buffer("latent_mean", torch.zeros(2, latent_dim))
        self.register_buffer("latent_std", torch.ones(2, latent_dim))
        self.rel_tokens = nn.Parameter(torch.zeros(2, d_model))  # learned [rel_x, rel_q] query tokens
        self.type_embed = nn.Parameter(torch.zeros(6, d_model))  # token type / position
        nn.init.normal_(self.rel_tokens, std=0.02)
        nn.init.normal_(self.type_embed, std=0.02)
        layer = nn.TransformerEncoderLayer(
            d_model, heads, ffn, dropout, activation="gelu", batch_first=True, norm_first=False,
        )
        self.encoder = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False)
        self.norm_x = nn.LayerNorm(d_model)
        self.norm_q = nn.LayerNorm(d_model)
        self.head_x = MLPHead(d_model, 3, head_hidden)
        self.head_q = MLPHead(d_model, 4, head_hidden)

    def forward(self, query_x: Tensor, query_q: Tensor, ref_x: Tensor, ref_q: Tensor) -> Tensor:
        B = query_x.shape[0]
        if self.reference_layout:
            rel = self.rel_tokens.unsqueeze(0).expand(B, -1, -1)  # (B, 2, d)
            tokens = torch.cat([rel, torch.stack([query_x, query_q, ref_x, ref_q], dim=1)], dim=1)  # (B, 6, d)
            out = self.encoder(tokens)
            return torch.cat([self.head_x(self.norm(out[:, 0])), self.head_q(self.norm(out[:, 1]))], dim=-1)
        lat = torch.stack([query_x, query_q, ref_x, ref_q], dim=1)  # (B, 4, D)
        lat = (lat - self.latent_mean.repeat(2, 1)) / self.latent_std.repeat(2, 1)  # rows x, q, x, q
        lat = self.proj(lat)  # (B, 4, d)
        rel = self.rel_tokens.unsqueeze(0).expand(B, -1, -1)  # (B, 2, d)
        tokens = torch.cat([rel, lat], dim=1) + self.type_embed  # (B, 6, d)
        out = self.encoder(tokens)  # (B, 6, d)
        t = self.head_x(self.norm_x(out[:, 0]))  # (B, 3)
        q = self.head_q(self.norm_q(out[:, 1]))  # (B, 4)
        return torch.cat([t, q], dim=-1)

    def set_latent_stats(self, latent_x: Tensor, latent_q: Tensor, eps: float = 1e-3) -> None:
        """Standardise inputs with the mean and std of training latents ``(N, D)`` (dims that never vary keep std 1).

        A no-op with ``reference_layout`` (the reference does not standardise)."""
        if self.reference_layout:
            return
        with torch.no_grad():
            for row, lat in enumerate((latent_x, latent_q)):
                std = lat.float().std(0)
                self.latent_mean[row] = lat.float().mean(0)
                self.latent_std[row] = torch.where(std > eps, std, torch.ones_like(std))

    def from_reference_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """``state`` in this model's names: a reference VTRPR file split into its RPR part, its fine-tuned
        ``mstransformer.*`` (-> ``image_encoder.*``, converted by the encoder's own importer) and ``pae.*``
        (-> ``pae.*``); anything else unchanged. Parts this model has no place for keep their prefix, so that
        loading refuses them by name (the reference protocol, ``protocol = "reference"``, holds all three)."""
        from aprbench.plugins.reference_checkpoints import is_reference_pae_rpr, split_pae_rpr

        if not is_reference_pae_rpr(state):
            return state
        parts = split_pae_rpr(state)
        out = dict(parts["refiner"])
        for part, prefix, source in (("teacher", "image_encoder.", "mstransformer."), ("student", "pae.", "pae.")):
            sub = parts[part]
            if not sub:
                continue
            own = getattr(self, prefix[:-1], None)
            convert = getattr(own, "from_reference_state_dict", None)
            if own is None or convert is None:  # no place for it: kept under its file name (refused on load)
                out.update({source + k: v for k, v in sub.items()})
            else:
                out.update({prefix + k: v for k, v in convert(sub).items()})
        return out

    def init_output_bias(self, mean_rel: Tensor) -> None:
        """Start the heads at a typical relative pose (e.g. identity rotation): bias of the last layers."""
        with torch.no_grad():
            self.head_x.net[-1].bias.copy_(mean_rel[:3])
            self.head_q.net[-1].bias.copy_(mean_rel[3:])


MODELS = ModelFamily()


@MODELS.register("pae-rpr")
def _pae_rpr() -> dict:
    return {"neighbours": "student"}


@hookimpl
def bench_refiners() -> dict[str, Callable[..., Refiner]]:
    return MODELS.factories(TransformerRPR)
