"""Where models run and in which arithmetic: ``--device`` and ``--precision``.

``--device``: ``auto`` (the first CUDA GPU when there is one, else the CPU), ``cpu``, ``cuda``, ``cuda:N``
or ``mps``; a device this machine lacks is refused before any work.

``--precision``: ``fp32`` (plain float32), ``bf16`` or ``fp16``: the forward passes of training and
evaluation run under :func:`torch.autocast` with that dtype (weights, optimiser state and everything
written to the store stay float32). ``bf16`` works on the CPU and on GPUs that support it; ``fp16``
only on CUDA, where training scales the loss with a :class:`torch.amp.GradScaler` so that small
gradients do not underflow. A reduced precision is part of every fingerprint it touches (artifacts,
teacher outputs, cells); fp32 adds nothing, so fp32 fingerprints are those of a plain run.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, ContextManager, Iterator

from aprbench.harness.errors import BenchError

if TYPE_CHECKING:  # torch loads when a device is resolved, not when the options are declared
    import torch

PRECISIONS: dict[str, str | None] = {"fp32": None, "bf16": "bfloat16", "fp16": "float16"}  # autocast dtypes
DEVICES_HELP = "auto, cpu, cuda, cuda:N or mps"


def resolve_device(text: str = "auto") -> torch.device:
    """The device ``text`` names (``auto``: ``cuda:0`` when CUDA is available, else ``cpu``); BenchError when
    this machine does not have it. A bare ``cuda`` becomes the current CUDA device's index."""
    import torch

    text = (text or "auto").strip().lower()
    if text == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise BenchError(f"--device {text}: not a device; expected {DEVICES_HELP}") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BenchError(f"--device {text}: no CUDA device here (torch.cuda.is_available() is False)")
        count = torch.cuda.device_count()
        index = torch.cuda.current_device() if device.index is None else device.index
        if index >= count:
            raise BenchError(f"--device {text}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
        return torch.device("cuda", index)
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise BenchError(f"--device {text}: no Apple MPS device here (torch.backends.mps.is_available() is False)")
        return torch.device("mps")
    raise BenchError(f"--device {text}: unsupported device type {device.type!r}; expected {DEVICES_HELP}")


def check_precision(precision: str, device: torch.device) -> str:
    """``precision`` when ``device`` can run it, else BenchError: fp16 needs CUDA; bf16 needs a GPU that has it."""
    import torch

    if precision not in PRECISIONS:
        raise BenchError(f"--precision {precision}: expected one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise BenchError(f"--precision fp16 needs a CUDA device (this run uses {device}); use --precision bf16 "
                         "(bfloat16 autocast works on the CPU) or fp32")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise BenchError(f"--precision bf16: {torch.cuda.get_device_name(device)} does not support bfloat16 "
                         "(torch.cuda.is_bf16_supported() is False); use --precision fp16")
    return precision


def autocast(device: torch.device, precision: str = "fp32") -> ContextManager:
    """The autocast context of ``precision`` on ``device`` (no context for fp32). Wrap forward passes only:
    backward runs outside it, in the dtypes autocast chose for the forward."""
    import torch

    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=getattr(torch, dtype))


def grad_scaler(device: torch.device, precision: str = "fp32") -> torch.amp.GradScaler:
    """A loss scaler, enabled only for fp16 on CUDA (bf16 has float32's range and needs none)."""
    import torch

    return torch.amp.GradScaler(device.type if device.type == "cuda" else "cpu",
                                enabled=precision == "fp16" and device.type == "cuda")


def precision_part(precision: str) -> dict[str, str]:
    """What a precision adds to a fingerprint: nothing for fp32 (fingerprints of plain runs stay as they
    were), ``{"precision": ...}`` otherwise."""
    return {} if precision == "fp32" else {"precision": precision}


__all__ = ["PRECISIONS", "resolve_device", "check_precision", "autocast", "grad_scaler", "precision_part"]


@contextlib.contextmanager
def model_threads(recipe: Any, device: "torch.device | str") -> Iterator[None]:
    """``torch.set_num_threads(recipe.train.threads)`` for the block when ``device`` is a CPU, restored afterwards.

    A model's numbers depend on how many threads split its reductions: the count is a recipe value
    (``threads``, default 1; part of the model's fingerprint), never taken from the machine, the number of
    worker processes or ``OMP_NUM_THREADS``. Worker processes, one thread each, give the parallelism.
    """
    import torch

    threads = int(getattr(getattr(recipe, "train", None), "threads", 0) or 0)
    kind = device.type if hasattr(device, "type") else str(device).split(":")[0]
    if threads < 1 or kind != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
