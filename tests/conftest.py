"""Shared test set-up.

Installed (entry-point) plugins are kept out of every test so that results do
not depend on what happens to be installed: ``BENCH_PLUGINS=none`` is set at
import. A test that wants entry points sets ``BENCH_PLUGINS`` itself with
``monkeypatch.setenv``. Subprocesses inherit ``os.environ`` (so the setting and
any ``monkeypatch.setenv``). ``run_bench`` runs ``bench`` in this process (the process-wide state it
touches is reset around each call); ``run_bench_process`` starts a real ``python -m aprbench.harness``
where a process is itself under test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("BENCH_PLUGINS", "none")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `bench` does: a shared CI machine does not stall the suite
# one process per `bench run` (in-process test plugins exist only there); tests/test_workers.py unsets it
os.environ.setdefault("BENCH_JOBS", "1")
# a suite started in the background of a non-interactive shell inherits SIGINT ignored, and so would every `bench`
# process it starts: the Ctrl-C tests stand for a terminal, where Ctrl-C is delivered
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def bench_in_process(*args: object, env: dict[str, str] | None = None, cwd=None,
                     timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run ``bench ARGS`` in this process: :func:`aprbench.harness.cli.main` with its own stdout and stderr.

    What a fresh ``bench`` process would start from is set up, and everything the call changed is put back:
    ``env`` entries are added to ``os.environ`` (and the whole environment restored afterwards, so what the
    command sets, e.g. ``HF_HUB_OFFLINE``, does not leak), the working directory, torch's intra-op threads
    (``OMP_NUM_THREADS`` of ``env`` or of the environment, else 1: the machine is shared), the torch RNG
    state, and the process-wide caches (plugin manager, parsed ``registry.toml``, warned fall-backs, decoded
    image sets). Returns a ``CompletedProcess`` as :func:`run_bench_process` does; ``returncode`` is
    ``main``'s value or the code of a ``SystemExit`` (argparse errors, ``--help``). ``timeout`` is ignored.
    Variables read at interpreter start (``PYTHONPATH``, ``PYTHON*``) need a real process and are refused.
    """
    import contextlib
    import io

    import torch

    from aprbench.harness.cli.main import main

    env = {k: str(v) for k, v in (env or {}).items()}
    python_vars = [k for k in env if k.startswith("PYTHON")]
    if python_vars:
        raise ValueError(f"{', '.join(python_vars)} act at interpreter start: use run_bench_process")
    argv = [str(a) for a in args]
    saved_env, saved_cwd, saved_threads = dict(os.environ), os.getcwd(), torch.get_num_threads()
    out, err = io.StringIO(), io.StringIO()
    reset_process_state()
    try:
        os.environ.update(env)
        if cwd is not None:
            os.chdir(cwd)
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1") or 1)))
        with torch.random.fork_rng(devices=[]), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
                if exc.code is not None and not isinstance(exc.code, int):
                    print(exc.code, file=sys.stderr)
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        torch.set_num_threads(saved_threads)
        reset_process_state()
    return subprocess.CompletedProcess(["bench", *argv], code, out.getvalue(), err.getvalue())


def reset_process_state() -> None:
    """Forget what one ``bench`` call leaves in the process: plugin manager, registry and recipe caches, images."""
    from aprbench.harness.api import manager, recipes, registry
    from aprbench.harness.data import images

    manager._MANAGER = None
    registry.load_registry.cache_clear()
    recipes._WARNED.clear()
    images._RECENT.clear()


def bench_process(*args: object, env: dict[str, str] | None = None, cwd=None,
                  timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m aprbench.harness ARGS`` in a subprocess (``env`` entries added to ``os.environ``)."""
    full_env = {**os.environ, **{k: str(v) for k, v in (env or {}).items()}}
    return subprocess.run(
        [sys.executable, "-m", "aprbench.harness", *map(str, args)],
        env=full_env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture
def run_bench():
    """``run_bench(*args, env=None, cwd=None)``: ``bench ARGS`` run in this process (:func:`bench_in_process`);
    returns a ``CompletedProcess`` with text ``stdout`` / ``stderr`` and ``returncode``."""
    return bench_in_process


@pytest.fixture
def run_bench_process():
    """``run_bench_process(*args, env=None, cwd=None, timeout=300)``: ``python -m aprbench.harness ARGS`` in a
    real subprocess, for what needs one (interpreter start-up, imports, signals, pipes, entry points)."""
    return bench_process


TINY = "synthetic:frames_per_sequence=24,train_sequences=3,test_sequences=1"  # a synthetic dataset rendered in seconds
TINY_MATRIX = ["run", "--dataset", TINY, "--scenes", "room", "--teacher", "posenet-mobilenet", "--student", "none", "pae",
               "--refiner", "none", "pae-rpr", "--iterations", "0,1,2", "--set", "epochs=1", "--no-progress", "--no-report"]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """``fill(workdir)``: copy into ``workdir`` the rendered ``TINY`` data, the models and the teacher outputs of
    :data:`TINY_MATRIX` (posenet-mobilenet on room, pae on its estimates, pae-rpr; one epoch each), trained once
    per session; the cells are not copied, so a ``bench run`` there computes them (and says it took the models
    from the store). For tests about cells, boards and failures that need these models but not their training."""
    import shutil

    work = tmp_path_factory.mktemp("tiny-models") / "wd"
    out = bench_in_process("--workdir", work, *TINY_MATRIX, env={"OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]

    def fill(workdir) -> None:
        for name in ("data", "artifacts", "outputs"):
            if (work / name).is_dir():
                shutil.copytree(work / name, Path(workdir) / name, dirs_exist_ok=True)

    return fill


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): on a shared
    2-core machine two spinning OpenMP threads run 10x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
