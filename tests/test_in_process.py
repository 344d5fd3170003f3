"""``bench`` run in-process (``main(argv)``), as most tests and library users do: repeated calls in one process
behave as separate processes would, and the test helper puts the process back as it found it."""

from __future__ import annotations

import os

import torch

from aprbench.harness.cli.main import main

PLUGIN = '''
from aprbench.harness.api.hookspecs import hookimpl
from aprbench.plugins.teachers.posenet import PoseNet


@hookimpl
def bench_teachers():
    return {"carry-apr": lambda **kw: PoseNet(**{**kw, "backbone": "mobilenetv2_050"})}
'''


def test_a_plugin_of_one_call_is_not_known_to_the_next(tmp_path, capsys):
    plugin = tmp_path / "carry_apr.py"
    plugin.write_text(PLUGIN)
    work = tmp_path / "wd"
    assert main(["--workdir", str(work), "--plugin", str(plugin), "recipe", "teacher", "carry-apr"]) == 0
    assert "carry-apr" in capsys.readouterr().out
    assert main(["--workdir", str(work), "recipe", "teacher", "carry-apr"]) == 2  # as in a new process
    assert "unknown teacher 'carry-apr'" in capsys.readouterr().err


def test_run_bench_gives_exit_codes_and_output_and_restores_env_cwd_and_threads(tmp_path, run_bench):
    cwd, threads = os.getcwd(), torch.get_num_threads()
    seen = run_bench("--workdir", tmp_path / "wd", "recipe", "teacher", "posenet-mobilenet", "--set", "epochs=3",
                     env={"BENCH_TEST_MARKER": "1", "OMP_NUM_THREADS": "1"}, cwd=tmp_path)
    assert seen.returncode == 0 and "--set epochs=3" in seen.stdout and seen.stderr == ""
    assert "BENCH_TEST_MARKER" not in os.environ and os.getcwd() == cwd and torch.get_num_threads() == threads
    usage = run_bench("--help")  # argparse ends with SystemExit(0)
    assert usage.returncode == 0 and usage.stdout.startswith("usage: bench")
    wrong = run_bench("run", "--no-such-option")  # SystemExit(2), the message on stderr
    assert wrong.returncode == 2 and "unrecognized arguments: --no-such-option" in wrong.stderr and wrong.stdout == ""
    refused = run_bench("--workdir", tmp_path / "wd", "recipe", "teacher", "nope")  # BenchError: one line, status 2
    assert refused.returncode == 2 and refused.stderr.startswith("bench: error: ")
