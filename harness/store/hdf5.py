"""The work-directory store: fingerprints, atomic writes, locks, HDF5 files, weights.

Layout under the work directory (default ``./.bench``)::

    data/<dataset>/...                 rendered synthetic data (native 7Scenes layout)
    artifacts/<kind>/<name>-<fp>/      weights.pth + weights.json (what made them), checkpoints/
    outputs/<teacher-fp>-<split>.h5    teacher outputs per split
    cells/<cell-fp>.h5                 one evaluated matrix cell (``harness.store.cells``)
    cells/<cell-fp>.failed.json        why a cell failed (removed once it succeeds)
    cells/<cell-fp>-grid-<split>.png   a decoder cell's image grid
    images/                            decoded, resized training images (cache)
    report/                            ``bench report``'s HTML and figures
    locks/                             advisory file locks (+ <name>.owner: who holds it, since when)
    damaged/<folder>/                  damaged store files, moved aside (inspect or delete)
    timings.json                       stage times of earlier runs (rough estimate of the next)

Every file is written to a temporary name in the same folder and renamed into
place, so an interrupted run never leaves a half-written file. HDF5 files
carry a ``complete`` attribute written last; a file without it, one h5py
cannot read or one missing what it should hold is reported, moved to
``damaged/`` and treated as absent. A file another process holds open for
writing is waited for, then skipped, never removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import sys
import tempfile
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping

import numpy as np
from filelock import FileLock, Timeout

from aprbench.harness.errors import BenchError

if TYPE_CHECKING:  # torch and h5py load on first use: `bench --help` and a warm rerun never pay for them
    import torch


def default_workdir() -> Path:
    """``$BENCH_WORKDIR`` (read when called), else ``./.bench``."""
    return Path(os.environ.get("BENCH_WORKDIR") or ".bench")


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts (configs, names, upstream fingerprints)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide shared work directories from other users
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_h5(path: Path, arrays: Mapping[str, Any], attrs: Mapping[str, Any] | None = None) -> Path:
    """Write arrays (numpy, torch or lists of str) and attributes atomically; ``complete`` is set last."""
    import h5py

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as fh:
            for key, value in arrays.items():
                fh.create_dataset(key, data=_to_h5(value))
            for key, value in (attrs or {}).items():
                fh.attrs[key] = _attr(value)
            fh.attrs["complete"] = True
    return Path(path)


BUSY_WAIT_S = 10.0  # how long a reader waits for a file another process holds open for writing ($BENCH_BUSY_WAIT)
SKIPPED: list[Path] = []  # files this process skipped as busy or damaged (what it prints is then not replayed)


class Damaged(ValueError):
    """A file that opened but does not hold what it should (raised by a ``read_h5`` check)."""


def read_h5(path: Path, check: Callable[[dict[str, Any], dict[str, Any]], None] | None = None,
            ) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """``(arrays, attrs)``, or None when absent, busy or damaged.

    A file another process holds open for writing (HDF5 cannot lock it) is *busy*: waited for up to
    ``$BENCH_BUSY_WAIT`` seconds (default :data:`BUSY_WAIT_S`), then skipped with a warning, never touched.
    A file h5py cannot read, one without the ``complete`` marker, or one ``check(arrays, attrs)`` rejects
    (it raises :class:`Damaged`) is *damaged*: moved aside (:func:`move_aside`) with a warning naming it.
    """
    path = Path(path)
    if not path.exists():
        return None
    deadline = time.monotonic() + _busy_wait()
    while True:
        try:
            arrays, attrs = _read(path)
            if check is not None:
                check(arrays, attrs)
            return arrays, attrs
        except OSError as exc:
            if _is_busy(exc):
                if time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                SKIPPED.append(path)
                warnings.warn(f"{path} is busy (held open for writing by another process); skipped, left as it is",
                              stacklevel=2)
                return None
            if not path.exists():
                return None
            reason = exc
        except Exception as exc:  # h5py raises KeyError / ValueError / RuntimeError variants on damage
            reason = exc
        where = move_aside(path)
        SKIPPED.append(path)
        text = str(reason).splitlines()[0] if str(reason) else type(reason).__name__
        warnings.warn(f"{path}: damaged ({text}); moved aside to {where}, left out until computed again", stacklevel=2)
        return None


def _read(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    import h5py

    with h5py.File(path, "r") as fh:
        if not fh.attrs.get("complete", False):
            raise Damaged("no 'complete' marker (interrupted write)")
        arrays = {k: _from_h5(fh[k][()]) for k in fh.keys()}
        attrs = {k: _unattr(v) for k, v in fh.attrs.items() if k != "complete"}
    return arrays, attrs


def _busy_wait() -> float:
    try:
        return max(0.0, float(os.environ.get("BENCH_BUSY_WAIT", BUSY_WAIT_S)))
    except ValueError:
        return BUSY_WAIT_S


def _is_busy(exc: OSError) -> bool:
    """Whether h5py failed because another process holds the file's lock (not because the file is bad)."""
    return isinstance(exc, BlockingIOError) or "unable to lock file" in str(exc)


def move_aside(path: Path) -> Path:
    """Move a damaged store file to ``WORKDIR/damaged/<folder>/<name>`` (``WORKDIR`` is the grandparent:
    ``cells/x.h5`` -> ``damaged/cells/x.h5``), a time stamp added when that name is taken; returns where."""
    path = Path(path)
    folder = path.parent.parent / "damaged" / path.parent.name
    target = folder / path.name
    if target.exists():
        target = folder / f"{path.stem}.{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}{path.suffix}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
    except OSError:  # a read-only store: leave it where it is (it is skipped either way)
        return path
    return target


def require(arrays: Mapping[str, Any], names: Iterable[str]) -> None:
    """Raise :class:`Damaged` naming the arrays of ``names`` missing from ``arrays``."""
    missing = [n for n in names if n not in arrays]
    if missing:
        raise Damaged("missing array" + ("s " if len(missing) > 1 else " ") + ", ".join(missing))


def _to_h5(value: Any) -> Any:
    import h5py

    if _is_tensor(value):
        return value.detach().cpu().numpy()
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], str):
        return np.array(value, dtype=h5py.string_dtype())
    return np.asarray(value)


def _from_h5(value: Any) -> Any:
    if isinstance(value, np.ndarray) and value.dtype.kind == "O":
        return np.array([v.decode() if isinstance(v, bytes) else v for v in value], dtype=object)
    return value


def _attr(value: Any) -> Any:
    if isinstance(value, (dict, list, tuple)) or value is None:
        return "json:" + json.dumps(value, default=str)
    return value


def _unattr(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("json:"):
        return json.loads(value[5:])
    if isinstance(value, np.generic):
        return value.item()
    return value


def _is_tensor(value: Any) -> bool:
    """Whether ``value`` is a torch tensor, without importing torch for a process that never did."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def save_state(path: Path, state: Mapping[str, Any], meta: Mapping[str, Any] | None = None) -> Path:
    """Save a state dict (tensors and plain values only) atomically, with a JSON sidecar ``meta``."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(dict(state), tmp)
    if meta is not None:
        with atomic_path(Path(path).with_suffix(".json")) as tmp:
            tmp.write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    return Path(path)


def load_state(path: Path) -> dict[str, Any]:
    """Load a state dict with ``weights_only=True``; anything else (pickled code) is refused."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise BenchError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BenchError(f"checkpoint {path} is not a plain state dict (refused to unpickle): {exc}".splitlines()[0]) from None
    if not isinstance(state, dict):
        raise BenchError(f"checkpoint {path} holds a {type(state).__name__}, expected a state dict")
    return state


def load_into(module: "torch.nn.Module", state: Mapping[str, Any], source: str = "checkpoint") -> None:
    """``module.load_state_dict(state)`` with an error naming every missing, unexpected or mis-shaped key."""
    import torch

    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    nonfinite = [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point()
                 and not bool(torch.isfinite(v).all())]
    if nonfinite and not (missing or unexpected or shapes):
        raise BenchError(f"{source}: weights of {type(module).__name__} are not finite (NaN or inf) in "
                         + ", ".join(nonfinite[:8]) + (" …" if len(nonfinite) > 8 else ""))
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append("missing keys: " + ", ".join(missing[:8]) + (" …" if len(missing) > 8 else ""))
        if unexpected:
            parts.append("unexpected keys: " + ", ".join(unexpected[:8]) + (" …" if len(unexpected) > 8 else ""))
        if shapes:
            parts.append("shape mismatch (checkpoint vs model): " + "; ".join(shapes[:8]))
        raise BenchError(f"{source} does not fit {type(module).__name__}: " + " | ".join(parts))
    module.load_state_dict(state)


class Store:
    """Every path and lock under one work directory (see the module docstring for the layout).

    ``create=False`` opens an existing work directory only (readers such as
    ``bench leaderboard``): a missing one is an error, not a new empty folder.
    """

    def __init__(self, workdir: Path | str | None = None, create: bool = True) -> None:
        self.root = Path(workdir) if workdir is not None else default_workdir()
        if self.root.exists() and not self.root.is_dir():
            raise BenchError(f"work directory {self.root} is a file, not a folder")
        if not create:
            if not self.root.is_dir():
                raise BenchError(f"work directory {self.root} does not exist (nothing stored there yet: run `bench run`"
                                 " with this --workdir first)")
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BenchError(f"cannot create work directory {self.root}: {exc.strerror or exc}") from None

    def data_dir(self, dataset: str) -> Path:
        return self.root / "data" / dataset

    def artifact_dir(self, kind: str, name: str, fp: str) -> Path:
        """Folder of one trained artifact: ``weights.pth``, ``weights.json``, ``checkpoints/``."""
        return self.root / "artifacts" / kind / f"{name}-{fp}"

    def outputs_path(self, teacher_fp: str, split: str) -> Path:
        """HDF5 file of a teacher's outputs on one split."""
        return self.root / "outputs" / f"{teacher_fp}-{split}.h5"

    def cell_path(self, cell_fp: str) -> Path:
        return self.root / "cells" / f"{cell_fp}.h5"

    def failure_path(self, cell_fp: str) -> Path:
        """Why the cell failed (JSON), present only while it does."""
        return self.root / "cells" / f"{cell_fp}.failed.json"

    def cost_path(self, cell_fp: str) -> Path:
        """A cell's cost re-measured after its run (JSON, :mod:`harness.store.costs`)."""
        return self.root / "cells" / f"{cell_fp}.cost.json"

    def grid_path(self, cell_fp: str, split: str) -> Path:
        """A decoder cell's image grid on ``split``."""
        return self.root / "cells" / f"{cell_fp}-grid-{split}.png"

    def image_cache_dir(self) -> Path:
        """Decoded, resized images (``harness.data.labels.load_images``)."""
        return self.root / "images"

    def report_dir(self) -> Path:
        """Where ``bench report`` writes by default."""
        return self.root / "report"

    def cell_paths(self) -> list[Path]:
        """Every cell file of the store, sorted by name."""
        folder = self.root / "cells"
        return sorted(folder.glob("*.h5")) if folder.is_dir() else []

    def timings_path(self) -> Path:
        """The table of stage times of earlier runs (``harness.running.progress``), the rough estimate of the next."""
        return self.root / "timings.json"

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """An exclusive lock (``filelock.FileLock`` on ``locks/<name>.lock``) shared by every process on this
        work directory; it blocks until the lock is free and is released when the block ends, also on error.
        When another process holds it, one line on stderr says which lock, who holds it and since when; the
        holder's pid, host and start time are kept beside the lock (``locks/<name>.owner``)."""
        path = self.root / "locks" / f"{name}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(path)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            print(f"bench: waiting for {name} ({lock_holder(path)}) ...", file=sys.stderr, flush=True)
            lock.acquire()
        try:
            owner = path.with_suffix(".owner")
            owner.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}))
            yield
        finally:
            lock.release()


def lock_holder(path: Path) -> str:
    """Who holds the lock file ``path`` and since when, from the ``.owner`` note its holder wrote."""
    try:
        note = json.loads(path.with_suffix(".owner").read_text())
        since = datetime.fromtimestamp(float(note["since"])).strftime("%H:%M:%S")
        return f"locked by process {note.get('pid')} on {note.get('host')} since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return "locked by another process"
