"""Image-RPR baseline: the iAPR architecture over retrieved images.

The same Transformer-encoder RPR as ``pae-rpr`` (:class:`plugins.refiners.pae_rpr.TransformerRPR`),
but the reference latents are the stored teacher latents of the *training
image* whose pose is nearest the current estimate (``neighbours =
"retrieval"``); the reference pose is that frame's ground truth. It has to
keep the training images (or their latents) at test time; ``pae-rpr`` keeps
only the PAE.
"""

from __future__ import annotations

from typing import Any, Callable

from harness.hookspecs import hookimpl
from harness.interfaces import Refiner
from plugins.refiners.pae_rpr import TransformerRPR

VERSION = "1"


def factory(latent_dim: int = 256, **config: Any) -> Refiner:
    """``image-rpr``: :class:`TransformerRPR` with retrieved-image neighbours."""
    return TransformerRPR(latent_dim=latent_dim, neighbours="retrieval", **config)


factory.model_class = TransformerRPR  # type: ignore[attr-defined]


@hookimpl
def bench_refiners() -> dict[str, Callable[..., Refiner]]:
    return {"image-rpr": factory}
