"""The optional TensorBoard writer of training runs (``--log tensorboard``; extra ``aprbench[tensorboard]``).

It writes the values of every ``log.csv`` row (see :class:`harness.training.loop.EpochLog`) as scalars, one tag per
column (``loss``, loss parts, ``sx``/``sq``, ``lr``, ``seconds``, ``val_*``), at step = epoch (counted from 1),
into the folder of the CSV log. TensorBoard stores them as float32.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from aprbench.harness.errors import BenchError

LOG_KINDS = ("csv", "tensorboard")


def check_log(kind: str) -> str:
    """``kind`` when this environment can write it (``csv`` always; ``tensorboard`` needs the package)."""
    if kind not in LOG_KINDS:
        raise BenchError(f"--log {kind!r}: expected one of {', '.join(LOG_KINDS)}")
    if kind == "tensorboard":
        try:
            import tensorboard  # noqa: F401
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError:
            raise BenchError("--log tensorboard needs the tensorboard package: pip install 'aprbench[tensorboard]'") from None
    return kind


class TensorBoardLog:
    """A ``SummaryWriter`` in ``folder`` that takes the same rows as the CSV log."""

    def __init__(self, folder: Path) -> None:
        check_log("tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        Path(folder).mkdir(parents=True, exist_ok=True)
        self.writer: Any = SummaryWriter(log_dir=str(folder))

    def append(self, epoch: int, values: Mapping[str, float]) -> None:
        """Write the row of ``epoch`` (counted from 1) and flush it, so a running TensorBoard shows it."""
        for name, value in values.items():
            self.writer.add_scalar(name, float(value), global_step=epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
