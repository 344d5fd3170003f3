"""Cost per frame as a user needs it: warmed up, repeated, at a stated batch size.

A single timing of an evaluation loop mixes first-call costs (allocation,
kernel selection, caches) into the figure and is at the mercy of whatever
else runs on the machine. :func:`seconds_per_frame` runs the work ``warmup``
times untimed, then ``repeats`` times timed, and reports the median divided
by the frames per call.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

WARMUP = 2
REPEATS = 5


def _synchronize(device: Any) -> None:
    """Wait for queued GPU work (timings of asynchronous devices count finished work only)."""
    kind = getattr(device, "type", str(device or "cpu")).split(":")[0]
    if kind in ("cuda", "mps"):
        import torch

        (torch.cuda if kind == "cuda" else torch.mps).synchronize()


def seconds_per_frame(fn: Callable[[], Any], frames: int, device: Any = None, warmup: int = WARMUP,
                      repeats: int = REPEATS) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` timed calls after ``warmup`` untimed ones,
    divided by ``frames`` (the frames one call processes; 0 frames cost 0)."""
    if frames <= 0:
        return 0.0
    for _ in range(warmup):
        fn()
    _synchronize(device)
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times) / frames
