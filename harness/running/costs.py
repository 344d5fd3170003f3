"""The quiet cost phase at the end of ``bench run``: every new pose cell's ms/frame measured again.

While a run computes cells, a worker process times its models beside the other workers, which train, so the
figure depends on the machine's load (the same PoseNet measured 4.6 and 1.3 ms/frame in two runs). After the
workers have finished, :func:`remeasure` times each stored pose cell that has no re-measured cost yet, in the
parent process, ``repeats`` times: the teacher's forward pass on one evaluation batch, the PAE's encode + decode
(a student row), one refinement step (a refiner row: k steps at iteration k), each measurement the median of
timed passes after warm-ups (:func:`harness.running.timing.seconds_per_frame`). A teacher, student or refiner
shared by several cells is timed once. The samples go to ``cells/<fingerprint>.cost.json``
(:mod:`harness.store.costs`); the leaderboard shows their median ± half their range.

It is skipped, and says so, when another process is training a model in the same work directory (its lock is
held): the cells keep the figure of their run until a later ``bench run`` re-measures them.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Sequence

from aprbench.harness.store.costs import has_costs, write_costs
from aprbench.harness.store.hdf5 import Store

REPEATS = 3
_TRAINING_LOCKS = ("teacher-", "student-", "refiner-", "decoder-")


def training_elsewhere(store: Store) -> list[str]:
    """Names of the models another process is training in this work directory now (their lock is held)."""
    from filelock import FileLock, Timeout

    folder = store.root / "locks"
    busy = []
    for path in sorted(folder.glob("*.lock")) if folder.is_dir() else []:
        if not path.stem.startswith(_TRAINING_LOCKS):
            continue
        lock = FileLock(path)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            busy.append(path.stem)
        else:
            lock.release()
    return busy


class _Timer:
    """Repeated cost measurements (ms per frame) of the models of a run's cells, each model timed once."""

    def __init__(self, runner: Any, repeats: int) -> None:
        self.runner, self.repeats = runner, repeats
        self.done: dict[tuple[str, str], list[float]] = {}
        self.threads: int | None = None  # the recipe's CPU threads of the last cell's teacher

    def _once(self, key: tuple[str, str], measure: Callable[[], float]) -> list[float]:
        if key not in self.done:
            self.done[key] = [measure() for _ in range(self.repeats)]
        return self.done[key]

    def cell(self, cell: Any) -> dict[int, list[float]]:
        """Iteration -> repeated ms per frame of one pose cell (its models obtained from the store)."""
        from aprbench.harness.running.stages.chain import obtain_chain

        ctx = self.runner.context(cell)
        teacher_text = cell.teacher.name + (f"={cell.teacher.checkpoint}" if cell.teacher.checkpoint else "")
        chain = obtain_chain(ctx, teacher_text, cell.student, cell.encode or "estimate", cell.refiner, None)
        self.threads = getattr(getattr(chain.teacher.recipe, "train", None), "threads", None)
        base = self._once(("teacher", chain.teacher.fingerprint), lambda: _teacher_ms(ctx, chain.teacher))
        if chain.refiner is not None:
            step = self._once(("refiner", f"{chain.refiner.fingerprint}-{ctx.data.fingerprint()}"),
                              lambda: _step_ms(ctx, chain))
            return {k: [b + k * s for b, s in zip(base, step)] for k in range(int(cell.iterations) + 1)}
        if chain.student is not None:
            pae = self._once(("student", chain.student.fingerprint), lambda: _student_ms(ctx, chain))
            return {0: [b + s for b, s in zip(base, pae)]}
        return {0: list(base)}


def _teacher_ms(ctx: Any, teacher: Any) -> float:
    from aprbench.harness.data.images import Preprocess
    from aprbench.harness.running.stages.teacher import predict
    from aprbench.harness.training.devices import model_threads

    task = teacher.recipe.task
    images = Preprocess.of(task).test_images(ctx.data.split("test"), ctx.store)[: task.eval_batch_size]
    with model_threads(teacher.recipe, ctx.device):  # the thread count its evaluation ran with
        out = predict(teacher.model, images, task.eval_batch_size, ctx.device, ctx.precision)
    return 1000.0 * float(out["time_s"][0])


def _student_ms(ctx: Any, chain: Any) -> float:
    from aprbench.harness.running.stages.student import student_outputs

    return 1000.0 * float(student_outputs(ctx, chain.student, chain.teacher, "test")["time_s"].mean())


def _step_ms(ctx: Any, chain: Any) -> float:
    from aprbench.harness.running.stages.refiner import refine

    times = refine(ctx, chain.refiner, chain.teacher, chain.student, "test", 1)["time_s"]
    return 1000.0 * float(times[1] - times[0])


def unmeasured(store: Store, cells: Sequence[Any], fingerprints: Sequence[str]) -> list[tuple[Any, str]]:
    """``(cell, fingerprint)`` of the stored pose cells without an up-to-date re-measured cost."""
    return [(c, fp) for c, fp in zip(cells, fingerprints)
            if not c.decoder and store.cell_path(fp).is_file() and not has_costs(store, fp)]


def remeasure(runner: Any, cells: Sequence[Any], fingerprints: Sequence[str], repeats: int = REPEATS,
              say: Callable[[str], None] | None = print) -> int:
    """Re-measure the cost of every stored pose cell among ``cells`` without a re-measured cost; returns how many
    were written. Nothing runs when another process trains in the work directory (``say`` tells why)."""
    store = runner.store
    todo = unmeasured(store, cells, fingerprints)
    if not todo:
        return 0
    busy = training_elsewhere(store)
    if busy:
        if say:
            say(f"ms/frame not re-measured: another process is training {', '.join(busy[:3])} in {store.root}; "
                "the cells keep the figure of their run (marked ≈) until a later bench run re-measures them")
        return 0
    if say:
        say(f"re-measuring ms/frame of {len(todo)} cell(s), no worker training ({repeats} repeats each)")
    timer, written = _Timer(runner, repeats), 0
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    for cell, fp in todo:
        try:
            samples = timer.cell(cell)
        except Exception as exc:  # the cell's own figure stands; the run's results are not at stake
            print(f"bench: warning: could not re-measure ms/frame of {cell.describe()} ({type(exc).__name__}: "
                  f"{exc}); its figure from the run stands", file=sys.stderr)
            continue
        write_costs(store, fp, samples, threads=timer.threads, device=str(runner.context(cell).device),
                    load_before=load)
        written += 1
    return written
