"""``bench run --launcher local --jobs N``: the shards as a submitit job array (real processes), then the leaderboard."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from aprbench.harness.cli.main import main
from test_bench_run import BROKEN_TEACHER, FAST, TINY, bench, cell_files


def test_local_job_array_fills_the_store_and_reports_the_failed_job(tmp_path):
    plugin = tmp_path / "broken_apr.py"
    plugin.write_text(BROKEN_TEACHER)
    work = tmp_path / "wd"
    out = bench(work, "--plugin", str(plugin), "run", "--dataset", TINY, "--scenes", "room",
                "--teacher", "broken-apr", "posenet-mobilenet", "--student", "none", "pae", *FAST,
                "--launcher", "local", "--jobs", "2", timeout=120)
    assert out.returncode == 1, out.stderr[-3000:]
    ids = re.search(r"submitted 2 job\(s\) to local \((\d+), (\d+)\)", out.stderr)
    assert ids, out.stderr[-3000:]
    logs = {i: work / "launcher" / i for i in ids.groups()}
    # every job ran its own shard: the cells each one counted add up to the matrix (4 cells, 2 of the broken teacher)
    counted = []
    for i, folder in logs.items():
        text = (folder / f"{i}_0_log.out").read_text()
        counted.append(int(re.search(r"(\d+) cell\(s\) in this run", text).group(1)))
    assert len(counted) == 2 and sum(counted) == 4
    # the cells of the working teacher landed in the store, whichever job computed them; the broken ones are recorded
    assert len(cell_files(work)) == 2
    assert len(list((work / "cells").glob("*.failed.json"))) == 2
    # the leaderboard is printed from the store after all jobs finished
    assert "posenet-mobilenet+pae" in out.stdout and "4 cell(s) in this run: 0 from the store, 2 computed, 2 failed" in out.stdout
    # each failed job is named with its log, which holds the job's traceback
    failed = re.findall(r"job (\d+) \(shard (\d)/2\): .*\n    log: (\S+)", out.stderr)
    assert failed, out.stderr[-3000:]
    for job, _, log in failed:
        assert Path(log).parent == logs[job] and "this teacher always fails" in Path(log).read_text()
    assert re.search(r"bench: job \d+ \(shard [01]/2\) FAILED", out.stderr)


@pytest.mark.parametrize("args, message", [
    (["--launcher", "local"], "needs --jobs N"),
    (["--launcher", "local", "--jobs", "0"], "needs --jobs N"),
    (["--launcher", "local", "--jobs", "2", "--shard", "0/2"], "leave out --shard"),
    (["--slurm", "mem_gb=4"], "--slurm needs --launcher"),
    (["--jobs", "0"], "--jobs 0: need at least 1"),
    (["--launcher", "slurm", "--jobs", "2", "--slurm", "partition"], "expected KEY=VALUE"),
])
def test_launcher_options_are_checked_before_anything_runs(tmp_path, capsys, args, message):
    rc = main(["--workdir", str(tmp_path), "run", "--dataset", TINY, "--teacher", "posenet-mobilenet", *FAST, *args])
    assert rc == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "launcher").exists()


def test_unknown_executor_parameter_is_refused(tmp_path, capsys):
    rc = main(["--workdir", str(tmp_path), "run", "--dataset", TINY, "--scenes", "room", "--teacher", "posenet-mobilenet",
               *FAST, "--launcher", "local", "--jobs", "2", "--slurm", "nonsense=3"])
    assert rc == 2 and "--slurm: Parameter 'nonsense' need to be prefixed by an executor name" in capsys.readouterr().err
    assert not list((tmp_path / "launcher").glob("[0-9]*"))  # nothing submitted


def test_slurm_defaults_and_overrides_reach_the_sbatch_script(tmp_path, monkeypatch):
    """Without a cluster: a stand-in ``srun`` on PATH lets submitit build the Slurm executor and its script."""
    from aprbench.harness.running.launch import make_executor, parse_parameters

    fake = tmp_path / "bin" / "srun"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{__import__('os').environ['PATH']}")
    params = parse_parameters(["slurm_partition=gpu", "timeout_min=90", "mem_gb=32"])
    assert params == {"slurm_partition": "gpu", "timeout_min": 90, "mem_gb": 32}
    executor = make_executor("slurm", tmp_path / "launcher", 3, params)
    script = executor._executor._make_submission_file_text("bench", "uid")  # the sbatch file submitit would write
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=90", "#SBATCH --mem=32GB", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --ntasks-per-node=1", "#SBATCH --job-name=bench"):
        assert line in script, script
