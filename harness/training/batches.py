"""Training batches for :func:`harness.training.loop.fit`, one class for every kind of model.

``Batches(data, batch_size, seed, ...)`` is called as ``batches(epoch, rank, world)``
and yields batches (tuples or dicts of tensors, like ``data``) on the device.
The order depends only on ``(seed, epoch)`` and is shared by every rank, each
taking one contiguous slice of it, so a resumed epoch replays exactly. The
last partial batch is dropped when there is more than one batch.

- ``data``: a tuple or dict of tensors with one first dimension, or a function
  ``epoch -> dict`` building the epoch's items (e.g. new virtual neighbours);
- ``weights``: per-item sampling weights (drawn with replacement, e.g. scenes
  drawn uniformly) instead of a permutation;
- ``group``: a dict key whose equal values are kept together (the pairs of one
  query frame), groups in random order;
- ``transform(batch, generator)``: per-batch work such as augmentation, with a
  generator seeded by ``(seed, epoch, rank)``. Without one, the epoch's items
  are gathered once and batches are views of them.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Union

import torch
from torch import Tensor

Items = Union[tuple, dict]


class Batches:
    """Seeded, resumable mini-batches over in-memory tensors (see the module docstring)."""

    def __init__(self, data: Items | Callable[[int], Items], batch_size: int, seed: int = 0, *,
                 weights: Tensor | None = None, group: str | None = None,
                 transform: Callable[[Items, torch.Generator], Items] | None = None,
                 device: torch.device | None = None) -> None:
        self.data, self.batch_size, self.seed = data, int(batch_size), int(seed)
        self.weights, self.group, self.transform = weights, group, transform
        self.device = device or torch.device("cpu")

    def order(self, epoch: int, items: Items) -> Tensor:
        """The epoch's item order (all ranks)."""
        n = len(_first(items))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        if self.weights is not None:
            order = torch.multinomial(self.weights.float(), n, replacement=True, generator=g)
        else:
            order = torch.randperm(n, generator=g)
        if self.group is not None and n:
            keys = items[self.group]
            key_rank = torch.randperm(int(keys.max()) + 1, generator=g)
            order = order[torch.argsort(key_rank[keys[order]], stable=True)]
        return order

    def steps_per_epoch(self, world: int = 1) -> int:
        """Optimisation steps in one epoch (of epoch 0's items) on each of ``world`` ranks."""
        items = self.data(0) if callable(self.data) else self.data
        n = len(_first(items)) // world
        bs = max(1, self.batch_size // world)
        return n // bs if n > bs else int(n > 0)

    def __call__(self, epoch: int, rank: int = 0, world: int = 1) -> Iterator[Items]:
        items = self.data(epoch) if callable(self.data) else self.data
        order = self.order(epoch, items)
        per_rank = len(order) // world
        mine = order[rank * per_rank: (rank + 1) * per_rank]
        bs = max(1, self.batch_size // world)  # the global batch is split over the ranks
        stop = len(mine) - len(mine) % bs if len(mine) > bs else len(mine)
        if self.transform is None:  # one gather per epoch, then views
            items, mine = _take(items, mine.to(_first(items).device)), None
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 1009 + rank)
        for i in range(0, stop, bs):
            if mine is None:
                batch = _slice(items, i, i + bs)
            else:
                batch = self.transform(_take(items, mine[i: i + bs]), g)
            yield _to(batch, self.device)


def _first(items: Items) -> Tensor:
    return next(iter(items.values())) if isinstance(items, dict) else items[0]


def _take(items: Items, idx: Tensor) -> Items:
    if isinstance(items, dict):
        return {k: v[idx] for k, v in items.items()}
    return tuple(t[idx] for t in items)


def _slice(items: Items, start: int, stop: int) -> Items:
    if isinstance(items, dict):
        return {k: v[start:stop] for k, v in items.items()}
    return tuple(t[start:stop] for t in items)


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, dict):
        return {k: v.to(device) for k, v in batch.items()}
    return tuple(t.to(device) for t in batch)
