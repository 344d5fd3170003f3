"""What every stage needs: the store, the plugin registry, the data and the recipe profile."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.interfaces import PoseData
from harness.plugins import Registry
from harness.registry import resolve_recipe
from harness.store import Store


def default_device() -> torch.device:
    """``cuda`` when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class Context:
    """Shared state of one command: where things are stored and how models are trained.

    ``data`` holds every split of the chosen scenes (the training split already
    reduced to the chosen fraction); ``dataset`` is the dataset plugin name
    that recipes match on (``synthetic``, ``sevenscenes``, ``cambridge``, ...).
    """

    store: Store
    registry: Registry
    data: PoseData
    dataset: str
    profile: str = "quick"
    device: torch.device = field(default_factory=default_device)
    progress: bool = True
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # kind -> {key: value} from --set

    def recipe(self, kind: str, name: str) -> dict[str, Any]:
        """The resolved recipe of a model: registry.toml tables merged, then command-line overrides."""
        return {**resolve_recipe(kind, name, self.dataset, self.profile), **self.overrides.get(kind, {})}


@dataclass
class Artifact:
    """A trained (or loaded) model with what identifies it in the store."""

    kind: str
    name: str
    fingerprint: str
    config: dict[str, Any]
    model: nn.Module
    path: Path | None = None
    upstream: dict[str, str] = field(default_factory=dict)  # kind -> fingerprint of what it was built on
