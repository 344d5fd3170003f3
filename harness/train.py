"""The one training loop, used by every kind of model.

A *task* is an ``nn.Module`` whose ``forward(batch)`` returns ``(loss, logs)``
(``logs``: floats to show on the progress bar). It owns the model and its
loss (learnable loss weights included), so Adam sees every parameter that
requires a gradient. Batches come from ``batches(epoch, rank, world_size)``,
an iterable the caller builds (tensors sliced in memory, already on the
device: no per-sample Python in the hot loop).

Checkpoints (task, optimiser, scheduler, epoch, RNG, history) go to
``checkpoint_dir/last.pth`` at the end of every ``checkpoint_every``-th epoch;
running the same training again resumes after the last saved epoch. On
Ctrl-C the last epoch-end checkpoint is kept as it is when it covers the last
completed epoch (so a resumed run, whose ``batches`` depend only on
``(epoch, rank)``, ends with the same weights as an uninterrupted one);
otherwise the interrupted state is saved and its epoch redone on resume. Under
``torchrun`` (``WORLD_SIZE > 1``) the task is wrapped in
DistributedDataParallel (gloo on CPU, nccl on GPU) and only rank 0 writes.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from harness.store import load_state, save_state


@dataclass
class TrainConfig:
    """Optimisation settings of one recipe: Adam, a per-epoch schedule, epochs, batch size.

    ``schedule``: ``step`` (StepLR every ``step_size`` epochs by ``gamma``;
    ``step_size`` 0 keeps the rate constant) or ``cosine`` (cosine annealing
    from ``lr`` to ``lr * gamma`` over ``epochs``). ``grad_clip`` > 0 clips
    the gradient norm. ``eps`` is Adam's (the reference uses 1e-10).
    """

    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    step_size: int = 0  # StepLR period in epochs; 0 = constant learning rate
    gamma: float = 0.1
    schedule: str = "step"
    grad_clip: float = 0.0
    checkpoint_every: int = 1
    seed: int = 0
    eps: float = 1e-8  # Adam's epsilon

    @classmethod
    def from_recipe(cls, recipe: dict[str, Any]) -> "TrainConfig":
        """Pick this class's fields out of a recipe dict (other keys are the model's)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in recipe.items() if k in names})


def distributed_env() -> tuple[int, int]:
    """``(rank, world_size)`` from torchrun's environment (``(0, 1)`` when not distributed)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _init_distributed(device: torch.device) -> bool:
    rank, world = distributed_env()
    if world <= 1:
        return False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return True


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """The per-epoch learning-rate schedule named by ``config.schedule``."""
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(config.epochs, 1), eta_min=config.lr * config.gamma
        )
    if config.schedule != "step":
        from harness.errors import BenchError

        raise BenchError(f"unknown schedule {config.schedule!r}; use 'step' or 'cosine'")
    return torch.optim.lr_scheduler.StepLR(
        optimizer, step_size=config.step_size or 10**9, gamma=config.gamma if config.step_size else 1.0
    )


def fit(
    task: nn.Module,
    batches: Callable[[int, int, int], Iterable[Any]],
    config: TrainConfig,
    checkpoint_dir: Path | None = None,
    desc: str = "train",
    progress: bool = True,
    device: torch.device | None = None,
) -> list[dict[str, float]]:
    """Train ``task`` for ``config.epochs`` epochs (resuming from a checkpoint); return per-epoch mean logs."""
    device = device or next(task.parameters()).device
    distributed = _init_distributed(device)
    rank, world = distributed_env()
    torch.manual_seed(config.seed + rank)
    params = [p for p in task.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, eps=config.eps)
    scheduler = make_scheduler(optimizer, config)
    start, history = 0, []
    ckpt = Path(checkpoint_dir) / "last.pth" if checkpoint_dir is not None else None
    if ckpt is not None and ckpt.exists():
        state = load_state(ckpt)
        task.load_state_dict(state["task"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        start = int(state["epoch"])
        history = [dict(zip(state["history_keys"], row)) for row in state["history"].tolist()]
    model = nn.parallel.DistributedDataParallel(task) if distributed else task

    def save(epoch: int) -> None:
        if ckpt is None or rank != 0:
            return
        keys = sorted({k for h in history for k in h})
        save_state(ckpt, {
            "task": task.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "rng": torch.get_rng_state(), "epoch": epoch, "history_keys": keys,
            "history": torch.tensor([[h.get(k, math.nan) for k in keys] for h in history], dtype=torch.float64),
        })

    bar = tqdm(total=config.epochs, initial=start, desc=desc, disable=not progress or rank != 0, unit="ep", leave=False)
    epoch = start
    saved = start  # the epoch the checkpoint on disk ends with
    try:
        task.train()
        for epoch in range(start, config.epochs):
            sums: dict[str, float] = {}
            count = 0
            t0 = time.perf_counter()
            for batch in batches(epoch, rank, world):
                loss, logs = model(batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                optimizer.step()
                count += 1
                for k, v in {"loss": float(loss.detach()), **logs}.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
            means = {k: v / max(count, 1) for k, v in sums.items()}
            means["lr"] = optimizer.param_groups[0]["lr"]
            scheduler.step()
            means["seconds"] = time.perf_counter() - t0
            history.append(means)
            bar.set_postfix({k: f"{v:.3g}" for k, v in means.items() if k != "seconds"})
            bar.update(1)
            if (epoch + 1) % max(config.checkpoint_every, 1) == 0 or epoch + 1 == config.epochs:
                save(epoch + 1)
                saved = epoch + 1
    except KeyboardInterrupt:
        if saved < epoch:  # completed epochs not on disk yet: keep them; the interrupted one is redone
            save(epoch)
        raise
    finally:
        bar.close()
    task.eval()
    return history
