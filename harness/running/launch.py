"""``bench run --launcher slurm|local --jobs N``: the matrix's shards as a job array through ``submitit``.

Each job runs the same ``bench run`` command with ``--shard i/N`` on the shared work directory; cells land in
the store as they finish, so a failed job loses only its own cells. The launcher waits, printing a line per
finished job, and returns what each job did; ``bench run`` then prints the leaderboard from the store.
Job logs (submitit's stdout/stderr and pickles) live under ``WORKDIR/launcher/<job id>/``.
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from aprbench.harness.errors import BenchError

LAUNCHERS = ("none", "local", "slurm")
LOG_DIR = "launcher"
# one GPU per job on Slurm; the local executor defaults to a 2 minute time limit, far too short for training
DEFAULTS: dict[str, dict[str, Any]] = {
    "slurm": {"timeout_min": 24 * 60, "nodes": 1, "tasks_per_node": 1, "gpus_per_node": 1, "cpus_per_task": 8},
    "local": {"timeout_min": 24 * 60, "tasks_per_node": 1},
}


def parse_parameters(items: list[str] | None) -> dict[str, Any]:
    """``["slurm_partition=gpu", "timeout_min=60"]`` -> ``{"slurm_partition": "gpu", "timeout_min": 60}``
    (integers, floats and true/false are converted; anything else stays a string)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise BenchError(f"--slurm {item!r}: expected KEY=VALUE, e.g. slurm_partition=gpu or timeout_min=120")
        out[key.strip()] = _value(text.strip())
    return out


def _value(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


@dataclass
class JobOutcome:
    """One finished job: its shard, id, state and log files."""

    shard: str
    job_id: str
    ok: bool
    error: str
    stdout: Path
    stderr: Path


def make_executor(cluster: str, folder: Path, jobs: int, parameters: dict[str, Any]) -> Any:
    """A submitit ``AutoExecutor`` for ``cluster`` (``slurm`` or ``local``) with aprbench's defaults,
    then ``parameters`` (the ``--slurm`` values) passed to ``update_parameters``."""
    try:
        import submitit
    except ImportError:
        raise BenchError("--launcher needs submitit: pip install 'aprbench[slurm]' (or pip install submitit)") from None
    try:
        executor = submitit.AutoExecutor(folder=folder / "%j", cluster=cluster)
    except RuntimeError as exc:  # no srun/sbatch on this machine
        raise BenchError(f"--launcher {cluster}: {str(exc).strip().splitlines()[0]}") from None
    settings = {**DEFAULTS[cluster], "name": "bench", **parameters}
    if cluster == "slurm":
        settings.setdefault("slurm_array_parallelism", jobs)
    try:
        executor.update_parameters(**settings)
    except (AssertionError, NameError, ValueError, TypeError) as exc:
        raise BenchError(f"--slurm: {str(exc).splitlines()[0]}") from None
    return executor


def launch(cluster: str, jobs: int, argv: list[str], workdir: Path, parameters: dict[str, Any],
           job: Callable[[list[str]], int], poll_s: float = 1.0) -> list[JobOutcome]:
    """Submit ``job(ARGV + --launcher none --shard i/JOBS)`` for i < JOBS as one job array, wait for all
    of them (a line per finished job on stderr) and return each job's outcome, in shard order. ``job`` is
    a module-level function (submitit pickles it by reference): the CLI passes its ``run_shard``."""
    if jobs < 1:
        raise BenchError(f"--jobs {jobs}: need at least 1")
    folder = Path(workdir).resolve() / LOG_DIR
    executor = make_executor(cluster, folder, jobs, parameters)
    # the job's options come last: they replace the launcher's own (argparse keeps the last value)
    argvs = [[*argv, "--workdir", str(Path(workdir).resolve()), "--launcher", "none", "--shard", f"{i}/{jobs}"]
             for i in range(jobs)]
    try:
        with executor.batch():
            pending = [executor.submit(job, a) for a in argvs]
    except Exception as exc:  # sbatch missing or refusing the array
        raise BenchError(f"--launcher {cluster}: submission failed: {str(exc).strip().splitlines()[0]}") from None
    try:
        (folder / "%j").rmdir()  # the placeholder folder submitit makes for a batch; each job has its own
    except OSError:
        pass
    shards = {job.job_id: f"{i}/{jobs}" for i, job in enumerate(pending)}
    print(f"bench: submitted {jobs} job(s) to {cluster} ({', '.join(j.job_id for j in pending)}); logs in {folder}",
          file=sys.stderr, flush=True)
    outcomes: dict[str, JobOutcome] = {}
    start = time.perf_counter()
    try:
        while len(outcomes) < len(pending):
            for job in pending:
                if job.job_id in outcomes or not job.done():
                    continue
                exc = job.exception()
                paths = job.paths
                error = "" if exc is None else _last_line(str(exc))
                outcome = JobOutcome(shards[job.job_id], job.job_id, exc is None, error, paths.stdout, paths.stderr)
                outcomes[job.job_id] = outcome
                state = "done" if outcome.ok else f"FAILED ({error}); log {outcome.stderr}"
                print(f"bench: job {job.job_id} (shard {outcome.shard}) {state} "
                      f"[{len(outcomes)}/{len(pending)}, {time.perf_counter() - start:.0f} s]", file=sys.stderr, flush=True)
            if len(outcomes) < len(pending):
                time.sleep(poll_s)
    except KeyboardInterrupt:
        for job in pending:
            if job.job_id not in outcomes:
                job.cancel(check=False)
        raise KeyboardInterrupt(f"interrupted; cancelled the unfinished jobs (logs in {folder})") from None
    return [outcomes[job.job_id] for job in pending]


def _last_line(text: str) -> str:
    """The most telling line of a submitit error, which quotes the job's traceback: the last ``SomeError: ...``
    line (else the last line)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Interrupt|Exit|Timeout)\b", line)]
    return (errors or lines or ["failed"])[-1]
