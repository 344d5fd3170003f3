"""``bench run --jobs N`` without a launcher: the matrix's teacher chains as N worker processes on this machine.

Each worker runs the same ``bench run`` command with ``--shard i/N --worker`` on the shared work directory
(whole teacher chains per shard, :func:`harness.running.matrix.shard`); each model trains and runs at its
recipe's ``threads`` (default 1) whatever the number of workers, so the numbers are those of ``--jobs 1``; its
progress lines are relayed here, prefixed with the teachers it trains. Cells land in the store as they
finish and the locks keep two workers off one model, so a failed or interrupted worker loses only its own
unfinished cells. On a CPU with several cores, ``bench run`` picks this by itself when the cells to compute
belong to two or more teacher chains (:func:`auto_jobs`): one-thread processes scale on a shared machine
where two threads of one process do not (README, "Progress, speed and the work directory").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from typing import IO

TIMES_TAG = "bench-worker-times: "  # a worker's last line: its stage times as JSON (not relayed)


def cpu_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def auto_jobs(device: str, chains: int, env: dict[str, str] | None = None) -> int:
    """Worker processes for ``chains`` teacher chains with cells to compute: ``$BENCH_JOBS`` when set, else one
    per chain up to the CPU cores on a CPU, 1 on an accelerator (one device, one process)."""
    env = os.environ if env is None else env
    if env.get("BENCH_JOBS", "").strip():
        try:
            return max(1, int(env["BENCH_JOBS"]))
        except ValueError:
            from aprbench.harness.errors import BenchError

            raise BenchError(f"BENCH_JOBS={env['BENCH_JOBS']!r}: expected a whole number of worker processes") from None
    if device != "cpu":
        return 1
    return max(1, min(cpu_cores(), chains))


@dataclass
class WorkerOutcome:
    """One finished worker: its shard, label, exit status and stage times (seconds)."""

    shard: str
    label: str
    status: int
    times: dict[str, float] = field(default_factory=dict)


def _relay(stream: IO[str], prefix: str, outcome: WorkerOutcome, lock: threading.Lock) -> None:
    for line in stream:
        if line.startswith(TIMES_TAG):
            try:
                outcome.times = {str(k): float(v) for k, v in json.loads(line[len(TIMES_TAG):]).items()}
            except ValueError:
                pass
            continue
        with lock:
            sys.stderr.write(prefix + line)
            sys.stderr.flush()


def run_workers(argv: list[str], workdir: str, labels: list[str]) -> list[WorkerOutcome]:
    """Run ``bench ARGV --workdir WORKDIR --shard i/N --worker`` for each of the N ``labels`` (what each shard
    trains), one OpenMP thread each outside the models (which run at their recipe's ``threads``), relaying their output prefixed ``[label]``; wait for all and
    return their outcomes in shard order. Ctrl-C reaches the workers too (one process group): each saves what
    it finished and stops; this waits for them, then raises KeyboardInterrupt."""
    jobs = len(labels)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "BENCH_JOBS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("BENCH_PROGRESS", None)
    width = max(len(label) for label in labels)
    lock = threading.Lock()
    procs, relays, outcomes = [], [], []
    for i, label in enumerate(labels):
        cmd = [sys.executable, "-m", "aprbench.harness", *argv, "--workdir", workdir, "--shard", f"{i}/{jobs}", "--worker"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1)
        outcome = WorkerOutcome(f"{i}/{jobs}", label, -1)
        relay = threading.Thread(target=_relay, args=(proc.stdout, f"[{label:<{width}}] ", outcome, lock), daemon=True)
        relay.start()
        procs.append(proc)
        relays.append(relay)
        outcomes.append(outcome)
    interrupted = False
    for proc, relay, outcome in zip(procs, relays, outcomes):
        while True:
            try:
                outcome.status = proc.wait()
                break
            except KeyboardInterrupt:  # the workers got the same Ctrl-C: let them save and stop
                interrupted = True
        relay.join()
    if interrupted:
        raise KeyboardInterrupt
    return outcomes


__all__ = ["TIMES_TAG", "WorkerOutcome", "auto_jobs", "cpu_cores", "run_workers"]
