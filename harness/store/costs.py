"""A cell's cost per frame, re-measured after its run when no aprbench worker is training.

The figure a cell records while it is computed (``result.per_iteration[k].ms_per_frame``) is measured wherever
the run happens to be, possibly beside another worker process that trains: the same model measured 4.6 and
1.3 ms/frame in two runs. :func:`harness.running.costs.remeasure` times every new cell again in a quiet phase at
the end of ``bench run`` and writes ``cells/<fingerprint>.cost.json`` beside the cell file::

    {"fingerprint": ..., "ms_per_frame": {"0": [r1, r2, r3], "3": [...]}, "repeats": 3, "threads": 1,
     "device": "cpu", "measured": <unix time>, "load_before": <1-min load average or null>}

one list of repeated measurements (milliseconds per frame, each the median of timed passes after warm-ups) per
stored iteration (``threads``: the teacher recipe's CPU threads, as its evaluation ran). The leaderboard shows their
median ± half their range.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from aprbench.harness.store.hdf5 import Store, atomic_path


def write_costs(store: Store, fingerprint: str, samples: dict[int, list[float]], **meta: Any) -> None:
    """Record the repeated measurements ``samples`` (iteration -> ms per frame) of cell ``fingerprint``."""
    record = {"fingerprint": fingerprint, "ms_per_frame": {str(k): [float(v) for v in vals] for k, vals in samples.items()},
              "repeats": max((len(v) for v in samples.values()), default=0), "measured": time.time(), **meta}
    with atomic_path(store.cost_path(fingerprint)) as tmp:
        tmp.write_text(json.dumps(record, indent=1))


def has_costs(store: Store, fingerprint: str) -> bool:
    """Whether the cell has a re-measured cost at least as new as its cell file (a cell computed again, e.g. by
    ``--recompute``, needs a new measurement)."""
    try:
        return store.cost_path(fingerprint).stat().st_mtime_ns >= store.cell_path(fingerprint).stat().st_mtime_ns
    except OSError:
        return False


def read_costs(store: Store, fingerprint: str) -> dict[int, list[float]] | None:
    """The re-measured samples of a cell (iteration -> ms per frame), or None when there are none, when they are
    older than the cell file, or when the file is unreadable (the cell's own figure stands)."""
    path = store.cost_path(fingerprint)
    if not has_costs(store, fingerprint):
        return None
    try:
        record = json.loads(path.read_text())
        if record.get("fingerprint") != fingerprint:
            return None
        return {int(k): [float(v) for v in vals] for k, vals in record["ms_per_frame"].items() if len(vals)}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def summary(samples: list[float]) -> tuple[float, float, float]:
    """``(median, min, max)`` of repeated measurements."""
    arr = np.asarray(samples, dtype=float)
    return float(np.median(arr)), float(arr.min()), float(arr.max())
