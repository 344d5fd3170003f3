"""The body of a launched job (``bench run --launcher slurm|local``): ``bench ARGV`` in the job's process."""

from __future__ import annotations

import sys

from aprbench.harness.cli.main import main


def run_shard(argv: list[str]) -> int:
    """Run ``bench ARGV`` here (module level, so submitit pickles it by reference) and return its exit status;
    a status other than 0 is raised, so the job is marked failed."""
    status = main(list(argv))
    sys.stdout.flush()
    if status:
        raise RuntimeError(f"bench exited with status {status} (shard {argv[-1]})")
    return status
