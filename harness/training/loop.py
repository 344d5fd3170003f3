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

Precision: ``precision`` (``fp32``, ``bf16``, ``fp16``; :mod:`harness.training.devices`)
runs each batch's forward pass (the task's loss included) under
:func:`torch.autocast`; backward and the optimiser step run outside it on the
float32 weights. fp16 on CUDA scales the loss (``GradScaler``, its state kept
in the checkpoint); a step whose scaled gradients overflow is skipped.

Learning curves: every epoch adds a row to ``checkpoint_dir/log.csv`` (see
:class:`EpochLog`): the epoch's mean loss and loss parts, the learned loss
weights ``sx``/``sq`` of the task's :class:`~harness.training.losses.PoseLoss`, the
learning rate, the epoch's training time (wall and CPU seconds), and ``val_*`` metrics when
the caller passes ``validate``. A resumed run keeps the rows of the epochs its
checkpoint holds and appends from there, so no epoch appears twice.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch
import torch.distributed as dist
from torch import nn

from aprbench.harness.errors import BenchError
from aprbench.harness.training.losses import PoseLoss
from aprbench.harness.running.progress import duration, say
from aprbench.harness.api.recipes import TrainConfig
from aprbench.harness.store.hdf5 import atomic_path, load_state, save_state

LOG_NAME = "log.csv"


class NonFinite(BenchError):
    """Training produced a NaN or infinite loss (the message names the model, epoch and loss parts)."""


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


def make_optimizer(params: list[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """Adam with the recipe's rate, weight decay and epsilon; its fused kernel (one pass over every parameter,
    about half the time of the per-parameter loop on a CPU) where the parameters allow it, else ``foreach``."""
    kwargs = dict(lr=config.lr, weight_decay=config.weight_decay, eps=config.eps)
    fusable = all(p.is_floating_point() and p.device.type in ("cpu", "cuda", "mps") for p in params)
    if fusable and len({p.device for p in params}) <= 1:
        try:
            return torch.optim.Adam(params, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):  # a build or dtype without the fused kernel
            pass
    return torch.optim.Adam(params, foreach=True, **kwargs)


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig,
                   steps_per_epoch: int | None = None) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning-rate schedule named by ``config.schedule``: stepped once per epoch, except ``onecycle``,
    stepped after every batch (it needs ``steps_per_epoch``; :func:`per_step` tells them apart)."""
    if config.schedule == "onecycle":
        div, total = 25.0, max(config.epochs * max(steps_per_epoch or 1, 1), 2)
        # torch ends the warm-up at step warmup x total - 1: keep at least one step on each side of it
        warmup = min(max(config.warmup, 1.5 / total), 1.0 - 0.5 / total)
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, total_steps=total, pct_start=warmup, anneal_strategy="cos", div_factor=div,
            final_div_factor=1.0 / (div * config.gamma),
        )
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(config.epochs, 1), eta_min=config.lr * config.gamma
        )
    if config.schedule != "step":
        from aprbench.harness.errors import BenchError

        raise BenchError(f"unknown schedule {config.schedule!r}; use 'step' or 'cosine'")
    return torch.optim.lr_scheduler.StepLR(
        optimizer, step_size=config.step_size or 10**9, gamma=config.gamma if config.step_size else 1.0
    )


def held_out_loss(task: nn.Module, batches: Callable[[int, int, int], Iterable[Any]]) -> Callable[[], dict[str, float]]:
    """A ``validate`` for :func:`fit`: the task's mean loss and logged parts over epoch 0 of ``batches``
    (held-out data, e.g. the validation split of ``harness.data.datasets.with_validation``); logged as
    ``val_loss`` and ``val_<part>``."""

    def validate() -> dict[str, float]:
        sums: dict[str, float] = {}
        count = 0
        for batch in batches(0, 0, 1):
            loss, logs = task(batch)
            for k, v in {"loss": float(loss), **logs}.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            count += 1
        return {k: v / max(count, 1) for k, v in sums.items()}

    return validate


def make_average(task: nn.Module, config: TrainConfig) -> Any:
    """The exponential moving average of ``task``'s weights and buffers (``config.ema``: the per-step decay;
    torch's ``AveragedModel``), or ``None`` when the recipe keeps none."""
    if not config.ema:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(task, multi_avg_fn=get_ema_multi_avg_fn(config.ema), use_buffers=True)


@contextlib.contextmanager
def averaged_weights(task: nn.Module, average: Any) -> Iterator[None]:
    """``task`` holds the averaged weights inside the block and its own again after it (no average: unchanged)."""
    if average is None:
        yield
        return
    own = {k: v.detach().clone() for k, v in task.state_dict().items()}
    task.load_state_dict(average.module.state_dict())
    try:
        yield
    finally:
        task.load_state_dict(own)


def per_step(scheduler: Any) -> bool:
    """Whether ``scheduler`` is stepped after every batch (``onecycle``) rather than once per epoch."""
    return isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR)


class EpochLog:
    """The per-epoch CSV log of one training run: one row per completed epoch, ``epoch`` counted from 1.

    Columns, in this order: ``epoch``, ``loss``, the task's other logged loss parts (epoch means),
    learned loss weights (``sx``, ``sq``: the log-variances of Kendall's loss at the epoch's end),
    ``lr`` (the rate at the epoch's first step), ``seconds`` (the epoch's training time, validation
    excluded) and ``cpu_seconds`` (the process's CPU time over it, every thread counted), then ``val_*``
    metrics. An empty cell is a value that epoch did not have. Rows are appended as epochs finish; the file
    is rewritten (atomically) only when a column appears or when a resumed run drops rows its checkpoint
    does not cover.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.rows: list[dict[str, float]] = []
        self.columns: list[str] = []

    def resume(self, history: list[dict[str, float]]) -> None:
        """Start after ``len(history)`` epochs: keep the file if it holds exactly those, else rewrite it from ``history``."""
        done = len(history)
        try:
            rows = read_log(self.path) if self.path.is_file() else []
        except (ValueError, csv.Error):  # a row cut short by a killed process
            rows = []
        if [int(r["epoch"]) for r in rows] == list(range(1, done + 1)):
            self.rows = rows
            self.columns = list(rows[0]) if rows else []
            return
        # the checkpoint stores history as one table: NaN marks a value that epoch did not have
        self.rows = [{"epoch": i + 1, **{k: v for k, v in h.items() if not math.isnan(v)}} for i, h in enumerate(history)]
        self.columns = []
        if self.rows or self.path.exists():
            self._rewrite()

    def append(self, epoch: int, values: Mapping[str, float]) -> None:
        """Add the row of ``epoch`` (counted from 1)."""
        row = {"epoch": epoch, **values}
        self.rows.append(row)
        if not self.columns or set(row) - set(self.columns):
            self._rewrite()
            return
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, self.columns, restval="").writerow(row)

    def _rewrite(self) -> None:
        self.columns = sorted({k for r in self.rows for k in r}, key=_column_order)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, self.columns, restval="")
        writer.writeheader()
        writer.writerows(self.rows)
        with atomic_path(self.path) as tmp:
            tmp.write_text(buffer.getvalue())


def _column_order(name: str) -> tuple[int, str, int]:
    """Sort key of a log column: epoch, loss, loss parts, sx before sq, lr, seconds, validation metrics."""
    prefix, _, last = name.rpartition(".")
    if name in ("epoch", "loss"):
        return (0 if name == "epoch" else 1), "", 0
    if last in ("sx", "sq"):
        return 3, prefix, 0 if last == "sx" else 1
    if name in ("lr", "seconds", "cpu_seconds"):
        return 4, "", ("lr", "seconds", "cpu_seconds").index(name)
    return (6 if name.startswith("val_") else 2), name, 0


def read_log(path: Path) -> list[dict[str, float]]:
    """The rows of a ``log.csv`` as floats (``epoch`` as int); empty cells are left out of their row."""
    with open(path, newline="") as fh:
        return [{k: (int(float(v)) if k == "epoch" else float(v)) for k, v in row.items() if v not in ("", None)}
                for row in csv.DictReader(fh)]


def loss_weights(task: nn.Module) -> dict[str, float]:
    """The learned loss weights ``sx``, ``sq`` of every :class:`PoseLoss` in ``task`` (prefixed by module
    name when there are several)."""
    losses = [(name, m) for name, m in task.named_modules() if isinstance(m, PoseLoss)]
    out = {}
    for name, m in losses:
        prefix = f"{name}." if len(losses) > 1 else ""
        out[f"{prefix}sx"], out[f"{prefix}sq"] = float(m.sx.detach()), float(m.sq.detach())
    return out


def fit(
    task: nn.Module,
    batches: Callable[[int, int, int], Iterable[Any]],
    config: TrainConfig,
    checkpoint_dir: Path | None = None,
    desc: str = "train",
    progress: bool | str = True,
    device: torch.device | None = None,
    validate: Callable[[], Mapping[str, float]] | None = None,
    log_path: Path | None = None,
    precision: str = "fp32",
    log_kind: str = "csv",
) -> list[dict[str, float]]:
    """Train ``task`` for ``config.epochs`` epochs (resuming from a checkpoint); return per-epoch mean logs.

    ``validate``, when given, is called after every epoch (task in eval mode, no gradients, RNG state
    restored afterwards so results do not depend on it); its values are logged as ``val_<name>``.
    The per-epoch log goes to ``log_path`` (default ``checkpoint_dir/log.csv``; none without either).
    ``precision``: autocast of the forward passes (and of ``validate``), see the module note.
    ``log_kind="tensorboard"`` also writes each row to a TensorBoard events file beside the CSV (:mod:`harness.training.tblog`).
    ``progress``: a mode of :mod:`harness.running.progress` (bar with loss and samples/s, epoch lines, or quiet).
    """
    from aprbench.harness.training.devices import check_precision

    device = device or next(task.parameters()).device
    check_precision(precision, device)
    steps = getattr(batches, "steps_per_epoch", None)
    run = _set_up(task, config, checkpoint_dir, device, precision, steps(distributed_env()[1]) if steps else None)
    out = _open_outputs(run, batches, config, desc, progress, checkpoint_dir, log_path, log_kind)
    try:
        task.train()
        for epoch in range(len(run.history), config.epochs):
            _train_epoch(run, out, batches, epoch, config, desc, validate)
    except KeyboardInterrupt:
        if run.saved < len(run.history):  # completed epochs not on disk yet: keep them; the interrupted one is redone
            run.ckpt.save(run.history)
        raise
    finally:
        out.bar.close()
        if out.board is not None:
            out.board.close()
    if run.average is not None:  # the averaged weights are the trained model
        task.load_state_dict(run.average.module.state_dict())
    task.eval()
    return run.history


@dataclass
class _Training:
    """What one :func:`fit` trains with, set up before its first epoch; ``saved``: the epoch the checkpoint on
    disk ends with."""

    task: nn.Module
    model: nn.Module  # the task, wrapped in DistributedDataParallel under torchrun
    params: list
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    amp: Callable[[], Any]
    ckpt: "Checkpoint"
    history: list[dict[str, float]]
    rank: int
    world: int
    device: torch.device
    saved: int
    average: Any = None  # the weights' moving average (``TrainConfig.ema``)


@dataclass
class _Outputs:
    """Where one :func:`fit` reports: the CSV log, the TensorBoard log, the progress bar, the pace estimate."""

    log: "EpochLog | None"
    board: Any
    bar: Any
    pace: "Pace | None"


def _set_up(task: nn.Module, config: TrainConfig, checkpoint_dir: Path | None, device: torch.device,
            precision: str, steps_per_epoch: int | None = None) -> _Training:
    """Seed, optimiser, schedule, loss scaler, distributed wrapper; the checkpoint's state restored when there is one."""
    from aprbench.harness.training.devices import autocast, grad_scaler

    scaler = grad_scaler(device, precision)
    amp = lambda: autocast(device, precision)  # noqa: E731  a fresh context per use
    distributed = _init_distributed(device)
    rank, world = distributed_env()
    torch.manual_seed(config.seed + rank)
    params = [p for p in task.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, config)
    if config.schedule == "onecycle" and not steps_per_epoch:
        raise BenchError("schedule 'onecycle' needs batches that know their steps per epoch")
    scheduler = make_scheduler(optimizer, config, steps_per_epoch)
    average = make_average(task, config)
    ckpt = Checkpoint(Path(checkpoint_dir) / "last.pth" if checkpoint_dir is not None and rank == 0 else None,
                      task, optimizer, scheduler, scaler, average)
    history = ckpt.load() if checkpoint_dir is not None else []
    model = nn.parallel.DistributedDataParallel(task) if distributed else task
    return _Training(task, model, params, optimizer, scheduler, scaler, amp, ckpt, history, rank, world, device,
                     saved=len(history), average=average)


def _open_outputs(run: _Training, batches: Any, config: TrainConfig, desc: str, progress: bool | str,
                  checkpoint_dir: Path | None, log_path: Path | None, log_kind: str) -> _Outputs:
    """The per-epoch logs (rank 0 only; a resumed run keeps the rows its checkpoint covers), bar and pace."""
    from aprbench.harness.running.progress import EpochProgress

    if log_path is None and checkpoint_dir is not None:
        log_path = Path(checkpoint_dir) / LOG_NAME
    log = EpochLog(log_path) if log_path is not None and run.rank == 0 else None
    if log is not None:
        log.resume(run.history)
    board = None
    if log_path is not None and run.rank == 0 and log_kind == "tensorboard":
        from aprbench.harness.training.tblog import TensorBoardLog

        board = TensorBoardLog(Path(log_path).parent)
    start = len(run.history)
    bar = EpochProgress(desc, config.epochs, start, progress if run.rank == 0 else "quiet")
    steps = getattr(batches, "steps_per_epoch", None)
    pace = Pace(desc, steps(run.world) * (config.epochs - start), run.device) if steps is not None and run.rank == 0 else None
    return _Outputs(log, board, bar, pace)


def _train_epoch(run: _Training, out: _Outputs, batches: Callable[[int, int, int], Iterable[Any]], epoch: int,
                 config: TrainConfig, desc: str, validate: Callable[[], Mapping[str, float]] | None) -> None:
    """Epoch ``epoch`` (from 0): train, validate, log its row, checkpoint every ``checkpoint_every``-th and the last."""
    t0, c0 = time.perf_counter(), time.process_time()
    seen: dict[str, int] = {}
    lr = run.optimizer.param_groups[0]["lr"]
    stepped = per_step(run.scheduler)
    means = _epoch(run.model, batches(epoch, run.rank, run.world), run.optimizer, run.params, config.grad_clip,
                   f"{desc}, epoch {epoch + 1}", run.amp, run.scaler, out.pace, seen,
                   run.scheduler if stepped else None, run.average, run.task)
    means.update(loss_weights(run.task))
    means["lr"] = lr
    if not stepped:
        run.scheduler.step()
    means["seconds"] = time.perf_counter() - t0
    means["cpu_seconds"] = time.process_time() - c0
    if validate is not None and run.rank == 0:
        with averaged_weights(run.task, run.average):
            means.update(_validate(run.task, validate, run.device, run.amp))
    run.history.append(means)
    if out.log is not None:
        out.log.append(epoch + 1, means)
    if out.board is not None:
        out.board.append(epoch + 1, means)
    out.bar.epoch(epoch + 1, means, seen.get("samples", 0), means["seconds"])
    if (epoch + 1) % max(config.checkpoint_every, 1) == 0 or epoch + 1 == config.epochs:
        run.ckpt.save(run.history)
        run.saved = epoch + 1


class Pace:
    """Says once, after a few measured steps, how long a training will take at this pace, when that is long
    (a multi-day run on a CPU is not started blind). The first step is a warm-up and is not measured."""

    MEASURED = 3
    LONG_S = 15 * 60  # say nothing for trainings shorter than this

    def __init__(self, desc: str, total_steps: int, device: torch.device) -> None:
        self.desc, self.total, self.device = desc, total_steps, torch.device(device)
        self.count, self.start = 0, 0.0

    def step(self) -> None:
        self.count += 1
        if self.count == 1:
            self.start = time.perf_counter()
        elif self.count == 1 + self.MEASURED:
            per_step = (time.perf_counter() - self.start) / self.MEASURED
            left = per_step * max(self.total - self.count, 0)
            if left > self.LONG_S:
                hint = "; a GPU (--device cuda) or the quick profile is much faster" if self.device.type == "cpu" else ""
                say(f"{self.desc}: about {duration(left)} to train at this pace on {self.device.type} "
                    f"({self.total} steps, {per_step:.2f} s each over {self.MEASURED} measured steps){hint}")


def _epoch(model: nn.Module, batches: Iterable[Any], optimizer: torch.optim.Optimizer, params: list,
           grad_clip: float, where: str, amp: Callable[[], Any] | None = None,
           scaler: torch.amp.GradScaler | None = None, pace: Pace | None = None,
           seen: dict[str, int] | None = None, scheduler: Any = None, average: Any = None,
           task: nn.Module | None = None) -> dict[str, float]:
    """One pass over ``batches`` (``scheduler``, when given, stepped after each optimisation step; ``average``
    updated from ``task``, the unwrapped model, after each step): the mean of the loss and of every logged
    value (``seen["samples"]``: the number of samples trained on, when batches hold tensors). A non-finite loss stops
    training with :class:`NonFinite` naming ``where`` (model and epoch) and the loss parts. ``amp()``: the
    autocast context of each forward pass; ``scaler``: fp16 loss scaling (disabled: plain steps)."""
    amp = amp or contextlib.nullcontext
    scaler = scaler or torch.amp.GradScaler("cpu", enabled=False)
    sums: dict[str, float] = {}
    count = 0
    for batch in batches:
        with amp():
            loss, logs = model(batch)
        if not bool(torch.isfinite(loss.detach())):
            parts = ", ".join(f"{k}={v:.3g}" for k, v in logs.items())
            raise NonFinite(f"{where}: the training loss became {float(loss.detach())} at batch {count + 1} ({parts}); "
                            "lower the learning rate or check the data")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss.float()).backward()
        if grad_clip > 0:
            scaler.unscale_(optimizer)  # clip the true gradients
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        scaler.step(optimizer)  # a plain optimizer.step() when disabled
        scaler.update()
        if scheduler is not None and scheduler.last_epoch < scheduler.total_steps:
            scheduler.step()
        if average is not None:
            average.update_parameters(task if task is not None else model)
        count += 1
        if seen is not None:
            seen["samples"] = seen.get("samples", 0) + _batch_size(batch)
        if pace is not None:
            pace.step()
        for k, v in {"loss": float(loss.detach()), **logs}.items():
            sums[k] = sums.get(k, 0.0) + float(v)
    return {k: v / max(count, 1) for k, v in sums.items()}


def _batch_size(batch: Any) -> int:
    """The leading dimension of a batch's first tensor (0 when it holds none)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 0
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else ()
    for value in values:
        size = _batch_size(value)
        if size:
            return size
    return 0


class Checkpoint:
    """The resumable state of one training (``path``; ``None`` keeps nothing): task, optimiser, schedule, RNG,
    the fp16 loss scaler's state (when one is enabled), the weights' moving average (when the recipe keeps one)
    and the per-epoch history (its length is the number of finished epochs)."""

    def __init__(self, path: Path | None, task: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                 scaler: torch.amp.GradScaler | None = None, average: Any = None) -> None:
        self.path, self.task, self.optimizer, self.scheduler = path, task, optimizer, scheduler
        self.scaler = scaler if scaler is not None and scaler.is_enabled() else None
        self.average = average

    def load(self) -> list[dict[str, float]]:
        """Restore the saved state (if any) and return its history."""
        if self.path is None or not self.path.exists():
            return []
        state = load_state(self.path)
        self.task.load_state_dict(state["task"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        if self.average is not None and "average" in state:
            self.average.load_state_dict(state["average"])
        return [dict(zip(state["history_keys"], row)) for row in state["history"].tolist()][: int(state["epoch"])]

    def save(self, history: list[dict[str, float]]) -> None:
        if self.path is None:
            return
        keys = sorted({k for h in history for k in h})
        extra = {"scaler": self.scaler.state_dict()} if self.scaler is not None else {}
        if self.average is not None:
            extra["average"] = self.average.state_dict()
        save_state(self.path, {**extra,
            "task": self.task.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "rng": torch.get_rng_state(), "epoch": len(history),
            "history_keys": keys,
            "history": torch.tensor([[h.get(k, math.nan) for k in keys] for h in history], dtype=torch.float64),
        })


def _validate(task: nn.Module, validate: Callable[[], Mapping[str, float]], device: torch.device,
              amp: Callable[[], Any] | None = None) -> dict[str, float]:
    """Run ``validate`` with ``task`` in eval mode and no gradients (under ``amp()``, the training's autocast),
    leaving the RNG streams as they were."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad(), (amp or contextlib.nullcontext)():
        task.eval()
        try:
            values = dict(validate())
        finally:
            task.train()
    return {(k if k.startswith("val_") else f"val_{k}"): float(v) for k, v in values.items()}
