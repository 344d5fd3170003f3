"""How progress is shown: bars on a terminal, one line per finished step in a log, nothing under ``--quiet``.

Modes: ``"bars"`` (tqdm bars, a terminal), ``"lines"`` (one line per finished step on stderr: logs of a batch
job stay readable, no carriage returns), ``"quiet"`` (no progress at all: only errors and final results) and
``"auto"`` (bars when stderr is a terminal, else lines). A caller's ``progress`` value may also be a bool:
``True`` is ``"auto"``, ``False`` is ``"quiet"``.

Also here: :class:`Eta` (the time left of a matrix, from computed cells only), :class:`CellProgress` (the outer
display over a matrix's cells), :class:`EpochProgress` (the display of one training) and :class:`StageTimes`
(where the time of a run went, said at its end, and kept in the store as a rough estimate for the next run).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Mapping, TextIO

MODES = ("auto", "bars", "lines", "quiet")
EPOCH_LINES = 10  # in lines mode, a training says about this many epoch lines (every epoch when it has fewer)


def resolve_mode(progress: bool | str, stream: TextIO | None = None) -> str:
    """The concrete mode (``bars``, ``lines`` or ``quiet``) of a ``progress`` value (see the module note)."""
    if progress is True:
        progress = "auto"
    elif progress is False:
        progress = "quiet"
    if progress not in MODES:
        raise ValueError(f"progress mode {progress!r}: expected one of {', '.join(MODES)}")
    if progress != "auto":
        return progress
    stream = stream if stream is not None else sys.stderr
    return "bars" if getattr(stream, "isatty", lambda: False)() else "lines"


def mode_from_args(args: Any) -> str:
    """The mode the options ``--quiet`` and ``--no-progress`` ask for (``--no-progress``: lines, no bars)."""
    if getattr(args, "quiet", False):
        return "quiet"
    return "lines" if getattr(args, "no_progress", False) else "auto"


def say(text: str) -> None:
    """One progress line on stderr (through tqdm, so that it does not break a bar that is shown)."""
    from tqdm.auto import tqdm

    tqdm.write(text, file=sys.stderr)
    sys.stderr.flush()


def duration(seconds: float) -> str:
    """``"42.1 s"``, ``"3 min 05 s"``, ``"2 h 05 min"``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


class Eta:
    """Time left of a matrix whose cells are either found in the store (instant) or computed.

    The rate is the mean time of the cells computed so far; a cell found in the store removes itself from
    the work left without counting as time spent, so a mostly warm matrix does not look fast.
    """

    def __init__(self, to_compute: int) -> None:
        self.left, self.computed, self.seconds = to_compute, 0, 0.0

    def cached(self) -> None:
        """A cell expected to be computed was found in the store (another process finished it)."""
        self.left = max(self.left - 1, 0)

    def done(self, seconds: float) -> None:
        """A cell was computed (or failed) in ``seconds``."""
        self.left = max(self.left - 1, 0)
        self.computed += 1
        self.seconds += seconds

    def remaining(self) -> float | None:
        """Seconds left at the mean pace of the computed cells; ``None`` before the first one."""
        if self.computed == 0:
            return None
        return self.seconds / self.computed * self.left


class CellProgress:
    """The outer display of a matrix: a bar over the cells to compute (those in the store are counted at
    once and shown beside it), or one line per computed cell."""

    def __init__(self, total: int, stored: int, mode: bool | str) -> None:
        self.mode = resolve_mode(mode)
        self.total, self.stored, self.index = total, stored, 0
        self.eta = Eta(total - stored)
        self.bar = None
        if self.mode == "bars" and total > stored:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total - stored, desc="cells", unit="cell",
                            bar_format="{desc}: {n_fmt}/{total_fmt} |{bar}| {elapsed}{postfix}")
            self._postfix("")

    def _postfix(self, what: str) -> None:
        if self.bar is None:
            return
        left = self.eta.remaining()
        eta = f"~{duration(left)} left" if left is not None else "ETA after the first cell"
        self.bar.set_postfix_str(f"{self.stored} from store, {eta}" + (f", {what}" if what else ""))

    def start(self, what: str) -> None:
        """A cell starts being computed."""
        self._postfix(what)

    def cached(self, what: str) -> None:
        """A cell that was to be computed was found in the store."""
        self.stored += 1
        self.eta.cached()
        if self.bar is not None:
            self.bar.total -= 1
            self.bar.refresh()
            self._postfix(what)

    def done(self, what: str, seconds: float, failed: bool = False) -> None:
        """A cell was computed (or failed) in ``seconds``."""
        self.index += 1
        self.eta.done(seconds)
        if self.bar is not None:
            self.bar.update(1)
            self._postfix(what)
        elif self.mode == "lines":
            todo = self.total - self.stored
            say(f"[{self.index}/{todo}] cell {what} {'FAILED after' if failed else 'computed in'} {duration(seconds)}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class EpochProgress:
    """The display of one training: a bar over epochs with loss and throughput, or an epoch line now and then."""

    def __init__(self, desc: str, epochs: int, start: int, mode: bool | str) -> None:
        self.mode = resolve_mode(mode)
        self.desc, self.epochs = desc, epochs
        self.every = max(1, -(-epochs // EPOCH_LINES))
        self.bar = None
        if self.mode == "bars":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=epochs, initial=start, desc=desc, unit="ep", leave=False)

    def epoch(self, epoch: int, logs: Mapping[str, float], samples: int, seconds: float) -> None:
        """Epoch ``epoch`` (counted from 1) ended: mean ``logs``, ``samples`` trained on in ``seconds``."""
        rate = f"{samples / seconds:.0f} samples/s" if seconds > 0 and samples else ""
        shown = {k: v for k, v in logs.items() if k not in ("seconds", "cpu_seconds", "lr")}
        if self.bar is not None:
            self.bar.set_postfix_str(", ".join([f"{k}={v:.3g}" for k, v in shown.items()] + ([rate] if rate else [])))
            self.bar.update(1)
        elif self.mode == "lines" and (epoch % self.every == 0 or epoch == self.epochs):
            loss = f"loss {logs['loss']:.4g}" if "loss" in logs else ""
            say(f"  {self.desc}: epoch {epoch}/{self.epochs} " + ", ".join(p for p in (loss, rate) if p)
                + f" ({duration(seconds)})")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class StageTimes:
    """Wall seconds per stage of a run (``"render/data"``, ``"teacher posenet-mobilenet"``, ``"evaluation"``,
    ``"report"`` …), in the order first seen. :data:`TIMES` is the one of this process."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    def training(self) -> float:
        """Seconds spent training models (stages named after a model kind)."""
        return sum(v for k, v in self.seconds.items() if k.split(" ", 1)[0] in ("teacher", "student", "refiner", "decoder"))

    def table(self) -> str:
        """Lines ``stage  duration`` with the total."""
        return self.table_of(self.seconds)

    @staticmethod
    def table_of(seconds: Mapping[str, float]) -> str:
        """Lines ``stage  duration`` of ``seconds`` (stage -> seconds) with the total."""
        if not seconds:
            return ""
        width = max(len(k) for k in [*seconds, "total"])
        rows = [f"  {k:<{width}}  {duration(v):>12}" for k, v in seconds.items()]
        rows.append(f"  {'total':<{width}}  {duration(sum(seconds.values())):>12}")
        return "\n".join(rows)

    def save(self, path: Path) -> None:
        """Merge these times into the estimate table at ``path`` (JSON: stage -> last seconds)."""
        table = load_estimates(path)
        table.update(self.seconds)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(table, indent=1, sort_keys=True))
        tmp.replace(path)


def load_estimates(path: Path) -> dict[str, float]:
    """The stage -> seconds table kept by earlier runs (empty when there is none or it is unreadable)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): float(v) for k, v in data.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0}


TIMES = StageTimes()
