"""Image decoder: PAE latents to an ``S x S`` RGB image.

    cat(latent_x, latent_q) (B, 2D) -> 512 -> 1024 -> 2048 -> 3*S*S, ReLU between, sigmoid
    -> (B, 3, S, S) in [0, 1]

Trained with L1 against the resized training image (``harness.running.stages.decoder``).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from aprbench.harness.api.hookspecs import hookimpl
from aprbench.harness.api.registry import ModelFamily
from aprbench.harness.api.interfaces import Decoder

VERSION = "1"


class MLPDecoder(Decoder):
    """An MLP from concatenated latents to an image (``hidden`` widths configurable)."""

    def __init__(self, latent_dim: int = 256, image_size: int = 64, hidden: tuple[int, ...] | list[int] = (512, 1024, 2048)) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.image_size = image_size
        widths = [2 * latent_dim, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(widths[-1], 3 * image_size * image_size))
        self.net = nn.Sequential(*layers)

    def forward(self, latent_x: Tensor, latent_q: Tensor) -> Tensor:
        z = torch.cat([latent_x, latent_q], dim=-1)  # (B, 2D)
        S = self.image_size
        return torch.sigmoid(self.net(z)).view(-1, 3, S, S)  # (B, 3, S, S)

    def from_reference_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """``state`` in this model's names: a reference decoder (``decoder.N``) renamed, anything else unchanged."""
        from aprbench.plugins.reference_checkpoints import decoder_from_reference, is_reference_decoder

        return decoder_from_reference(state) if is_reference_decoder(state) else state


MODELS = ModelFamily()


@MODELS.register("image-decoder")
def _image_decoder() -> dict:
    return {}


@hookimpl
def bench_decoders() -> dict[str, Callable[..., Decoder]]:
    return MODELS.factories(MLPDecoder)
