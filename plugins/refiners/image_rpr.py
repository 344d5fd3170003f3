"""Image-RPR baseline: the iAPR architecture over retrieved images.

The same Transformer-encoder RPR as ``pae-rpr`` (:class:`plugins.refiners.pae_rpr.TransformerRPR`),
but the reference latents are the stored teacher latents of the *training
image* whose pose is nearest the current estimate (``neighbours =
"retrieval"``); the reference pose is that frame's ground truth. It has to
keep the training images (or their latents) at test time; ``pae-rpr`` keeps
only the PAE.
"""

from __future__ import annotations

from typing import Callable

from aprbench.harness.api.hookspecs import hookimpl
from aprbench.harness.api.registry import ModelFamily
from aprbench.harness.api.interfaces import Refiner
from aprbench.plugins.refiners.pae_rpr import TransformerRPR

VERSION = "1"


MODELS = ModelFamily()


@MODELS.register("image-rpr")
def _image_rpr() -> dict:
    return {"neighbours": "retrieval"}


@hookimpl
def bench_refiners() -> dict[str, Callable[..., Refiner]]:
    return MODELS.factories(TransformerRPR)
