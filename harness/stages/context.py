"""What every stage needs: the store, the plugin registry, the data and the recipe profile."""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

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


def plugin_version(ctx: Context, kind: str, name: str) -> str:
    """The ``VERSION`` of the module that registered ``name`` (part of artifact fingerprints; "0" if unset)."""
    module = sys.modules.get(getattr(ctx.registry.get(kind, name).factory, "__module__", ""), None)
    return str(getattr(module, "VERSION", "0"))


def train_once(ctx: Context, kind: str, name: str, fp: str, model: nn.Module, weights: Path,
               train: Callable[[], None]) -> None:
    """Run ``train()`` unless ``weights`` exist, then load them into ``model`` (eval mode, on the device).

    Training runs under a store lock, re-checked once taken, so two processes
    sharing a work directory never train the same artifact twice. Under
    torchrun the ranks train together (one job): no lock between them, and
    every rank waits for rank 0's weights.
    """
    from harness.store import load_into, load_state
    from harness.train import distributed_env

    _, world = distributed_env()
    if not weights.exists():
        lock = ctx.store.lock(f"{kind}-{name}-{fp}") if world == 1 else contextlib.nullcontext()
        with lock:
            if not weights.exists():  # another process may have trained it while we waited
                train()
    if world > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()
    load_into(model, load_state(weights), source=f"stored weights {weights}")
    model.to(ctx.device).eval()
