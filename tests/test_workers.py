"""``bench run`` with worker processes (``--jobs N``, automatic on a multi-core CPU): one teacher chain each."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from aprbench.harness.errors import BenchError
from aprbench.harness.running.workers import auto_jobs, cpu_cores
from test_bench_run import BROKEN_TEACHER, FAST, TINY, bench, cell_files

AUTO = {"BENCH_JOBS": ""}  # the suite runs one process per `bench run` (conftest); these tests run what users get
TWO_CHAINS = ["--dataset", TINY, "--teacher", "posenet-mobilenet@room", "mstransformer", "--student", "none", "pae"]


def test_auto_jobs_one_worker_per_chain_up_to_the_cores_on_a_cpu():
    assert auto_jobs("cpu", 2, env={}) == min(2, cpu_cores())
    assert auto_jobs("cpu", 64, env={}) == cpu_cores()
    assert auto_jobs("cuda", 2, env={}) == 1  # one accelerator: one process
    assert auto_jobs("cpu", 2, env={"BENCH_JOBS": "3"}) == 3
    with pytest.raises(BenchError, match="BENCH_JOBS='two'"):
        auto_jobs("cpu", 2, env={"BENCH_JOBS": "two"})


@pytest.mark.skipif(cpu_cores() < 2, reason="automatic workers need two CPU cores")
def test_two_teacher_chains_train_in_two_worker_processes(tmp_path):
    work = tmp_path / "wd"
    out = bench(work, "run", *TWO_CHAINS, *FAST, env=AUTO)
    assert out.returncode == 0, out.stderr[-3000:]
    plan = re.search(r"processes: 2 workers, each model at its recipe's threads.*", out.stderr)
    assert plan and "[posenet-mobilenet] 2 cell(s)" in plan[0] and "[mstransformer] 2 cell(s)" in plan[0], out.stderr[-3000:]
    # each worker's progress is relayed, prefixed with what it trains; each trained only its own teacher
    assert re.search(r"^\[posenet-mobilenet *\] teacher posenet-mobilenet \(room\) trained", out.stderr, re.M)
    assert re.search(r"^\[mstransformer *\] teacher mstransformer \(room, site\) trained", out.stderr, re.M)
    assert not re.search(r"^\[mstransformer *\] .*posenet-mobilenet", out.stderr, re.M)
    # the parent prints the leaderboard of all four cells and the workers' stage times
    assert "4 cell(s) in this run: 0 from the store, 4 computed, 0 failed" in out.stdout
    for row in ("posenet-mobilenet+pae", "mstransformer+pae"):
        assert f"| {row} " in out.stdout
    assert re.search(r"teacher mstransformer +\d", out.stderr) and "2 worker processes ran side by side" in out.stderr
    assert len(cell_files(work)) == 4
    again = bench(work, "run", *TWO_CHAINS, *FAST, env=AUTO)
    assert again.returncode == 0 and "processes:" not in again.stderr
    assert "4 from the store, 0 computed" in again.stdout


def test_a_failing_worker_chain_loses_only_its_own_cells(tmp_path, tiny_models):
    plugin = tmp_path / "broken_apr.py"
    plugin.write_text(BROKEN_TEACHER)
    work = tmp_path / "wd"
    tiny_models(work)  # posenet-mobilenet's chain finds its models stored
    out = bench(work, "--plugin", str(plugin), "run", "--dataset", TINY, "--scenes", "room", "--teacher", "broken-apr",
                "posenet-mobilenet", "--student", "none", "pae", *FAST, "--jobs", "2", env=AUTO)
    assert out.returncode == 1, out.stderr[-3000:]
    assert "4 cell(s) in this run: 0 from the store, 2 computed, 2 failed" in out.stdout
    assert re.search(r"broken-apr .*: RuntimeError: this teacher always fails", out.stderr)
    assert len(cell_files(work)) == 2 and len(list((work / "cells").glob("*.failed.json"))) == 2


@pytest.mark.skipif(cpu_cores() < 2, reason="automatic workers need two CPU cores")
def test_ctrl_c_stops_every_worker_and_the_same_command_resumes(tmp_path):
    work = tmp_path / "wd"
    args = [sys.executable, "-m", "aprbench.harness", "--workdir", str(work), "run", *TWO_CHAINS, "--set", "teacher.epochs=200",
            "--set", "student.epochs=1", "--no-progress", "--no-report"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, **AUTO})
    seen = ""
    deadline = time.time() + 120
    while time.time() < deadline and len(re.findall(r"epoch \d+/200", seen)) < 2:
        seen += proc.stderr.readline()
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
    _, err = proc.communicate(timeout=120)
    err = seen + err
    assert proc.returncode == 130, err[-3000:]
    assert "run the same command again to resume" in err
    assert not list(work.rglob("*.tmp"))
    # resumed with fewer epochs (another recipe): the command runs to the end
    done = bench(work, "run", *TWO_CHAINS, *FAST, env=AUTO)
    assert done.returncode == 0 and "4 computed" in done.stdout, done.stderr[-3000:]
