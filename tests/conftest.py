"""Shared test set-up.

Installed (entry-point) plugins are kept out of every test so that results do
not depend on what happens to be installed: ``BENCH_PLUGINS=none`` is set at
import. A test that wants entry points sets ``BENCH_PLUGINS`` itself with
``monkeypatch.setenv``. Subprocesses inherit ``os.environ`` (so the setting and
any ``monkeypatch.setenv``); :func:`run_bench` starts ``bench`` that way.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

os.environ.setdefault("BENCH_PLUGINS", "none")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `bench` does: a shared CI machine does not stall the suite
# one process per `bench run` (in-process test plugins exist only there); tests/test_workers.py unsets it
os.environ.setdefault("BENCH_JOBS", "1")


@pytest.fixture
def run_bench():
    """``run_bench(*args, env=None, cwd=None)``: run ``python -m harness ARGS`` in a subprocess.

    ``env`` entries are added to a copy of ``os.environ``; returns the
    ``CompletedProcess`` with text ``stdout`` / ``stderr``.
    """

    def run(*args: str, env: dict[str, str] | None = None, cwd=None, timeout: float = 120) -> subprocess.CompletedProcess:
        full_env = {**os.environ, **(env or {})}
        return subprocess.run(
            [sys.executable, "-m", "aprbench.harness", *map(str, args)],
            env=full_env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
        )

    return run


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): on a shared
    2-core machine two spinning OpenMP threads run 10x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
