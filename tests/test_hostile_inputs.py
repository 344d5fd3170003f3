"""Hostile input through the CLI, as a user meets it: a clear one-line error up front (exit 2), never a
traceback, never a silent wrong number, nothing written outside the work directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from aprbench.harness.store.hdf5 import read_h5
from conftest import bench_in_process

TINY = "synthetic:frames_per_sequence=24,train_sequences=3,test_sequences=1"
FAST = ["--set", "epochs=1", "--no-progress", "--no-report"]


def bench(workdir: Path, *args: str, timeout: float = 300, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``bench --workdir WORKDIR ARGS`` in this process (a pipe and Ctrl-C below get a real process)."""
    return bench_in_process("--workdir", workdir, *args, cwd=cwd)


def snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.parametrize("args, culprit", [
    (["--profile", "fast"], "--profile 'fast': unknown profile; known: paper, quick"),
    (["--set", "epoch=3"], "did you mean 'epochs'"),
    (["--set", "epochs=abc"], "epochs = 'abc' (from --set epochs=abc): expected int"),
    (["--set", "epochs=-3"], "epochs = -3 (from --set epochs=-3): must be >= 0"),
    (["--set", "batch_size=0"], "batch_size = 0 (from --set batch_size=0): must be >= 1"),
    (["--set", "lr=0"], "lr = 0.0 (from --set lr=0): must be > 0.0"),
    (["--set", "refiner.pairs=all"], "expected one of nearest, virtual, both"),
    (["--set", "teachr.epochs=2"], "'teachr' is neither a kind"),
    (["--fraction", "1.5"], "--fraction 1.5: must be in (0, 1]"),
    (["--fraction", "0"], "--fraction 0.0: must be in (0, 1]"),
    (["--format", "xlsx"], "--format 'xlsx': expected one of github, plain, html, latex, csv, json"),
    (["--shard", "3/2"], "--shard '3/2': need n >= 1 and 0 <= i < n"),
    (["--seeds", "0"], "--seeds 0: a count must be in 1..1000"),
    (["--seed", "3", "--seeds", "2"], "--seed and --seeds: give one of them"),
    (["--seed", "-1"], "--seed -1: a seed is an integer >= 0"),
    (["--iterations", "-1"], "--iterations -1: must be >= 0"),
])
def test_bad_options_fail_fast_before_any_work(tmp_path, args, culprit):
    base = ["run", "--dataset", TINY, "--teacher", "posenet-mobilenet", "--student", "pae", "--refiner", "pae-rpr"]
    t0 = time.perf_counter()
    out = bench(tmp_path / "work", *base, *args, cwd=tmp_path)
    seconds = time.perf_counter() - t0
    assert out.returncode == 2, out.stdout + out.stderr
    assert culprit in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "work" / "data").exists()  # nothing was rendered
    assert seconds < 60  # imports only (a busy 2-core machine), never a rendering or a training
    assert snapshot(tmp_path) <= {"work"}  # nothing written anywhere else


@pytest.mark.parametrize("command", [
    ["train", "teacher", "posenet-mobilenet"],
    ["eval", "student", "pae", "--teacher", "posenet-mobilenet"],
])
def test_train_and_eval_validate_set_the_same_way(tmp_path, command):
    out = bench(tmp_path, *command, "--dataset", TINY, "--set", "epoch=3", "--no-progress")
    assert out.returncode == 2 and "did you mean 'epochs'" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "data").exists()


def test_set_for_a_kind_the_command_does_not_train_is_refused(tmp_path):
    out = bench(tmp_path, "train", "teacher", "posenet-mobilenet", "--dataset", TINY, "--set", "refiner.k=2")
    assert out.returncode == 2 and "this command uses no refiner" in out.stderr


def test_broken_plugin_fails_where_it_is_used_and_is_listed(tmp_path):
    plugin = tmp_path / "broken.py"
    plugin.write_text("import no_such_module_anywhere\n")
    out = bench(tmp_path / "w", "--plugin", str(plugin), "run", "--dataset", TINY, "--teacher", "posenet-mobilenet")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert str(plugin) in out.stderr and "No module named 'no_such_module_anywhere'" in out.stderr
    listing = bench(tmp_path / "w", "--plugin", str(plugin), "plugins")
    assert listing.returncode == 0 and "posenet-mobilenet" in listing.stdout
    assert "no_such_module_anywhere" in listing.stdout + listing.stderr


def test_plugin_exiting_at_import_does_not_end_the_program(tmp_path):
    plugin = tmp_path / "exits.py"
    plugin.write_text("import sys\nsys.exit(3)\n")
    out = bench(tmp_path / "w", "--plugin", str(plugin), "plugins")
    assert out.returncode == 0 and "SystemExit" in out.stdout + out.stderr


def test_workdir_that_is_a_file_or_missing(tmp_path):
    target = tmp_path / "afile"
    target.write_text("x")
    out = bench(target, "run", "--dataset", TINY, "--teacher", "posenet-mobilenet")
    assert out.returncode == 2 and f"work directory {target} is a file" in out.stderr and "Traceback" not in out.stderr
    missing = tmp_path / "typo"
    out = bench(missing, "leaderboard")
    assert out.returncode == 2 and "does not exist" in out.stderr and not missing.exists()


OBSERVER = '''
import sys
from aprbench.harness.api.hookspecs import hookimpl

@hookimpl
def bench_cell_finished(cell, result):
    if cell["student"] is None:
        raise RuntimeError("observer blew up")
    sys.exit(5)
'''

NAN_TEACHER = '''
import torch
from aprbench.harness.api.hookspecs import hookimpl
from aprbench.plugins.teachers.posenet import PoseNet

class NaNPoseNet(PoseNet):
    def decode(self, latent_x, latent_q):
        return super().decode(latent_x, latent_q) * float("nan")

@hookimpl
def bench_teachers():
    return {"nan-apr": lambda **kw: NaNPoseNet(**{**kw, "backbone": "mobilenetv2_050"})}
'''


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_models):
    """A tiny matrix run once with an observer plugin that raises and one that calls sys.exit (its models from
    the session's ``tiny_models``)."""
    root = tmp_path_factory.mktemp("hostile")
    tiny_models(root / "w")
    (root / "observer.py").write_text(OBSERVER)
    out = bench(root / "w", "--plugin", str(root / "observer.py"), "run", "--dataset", TINY, "--scenes", "room",
                "--teacher", "posenet-mobilenet", "--student", "none", "pae", *FAST, timeout=900)
    return root, out


def test_observer_hook_failures_are_reported_and_the_cells_kept(finished):
    root, out = finished
    assert out.returncode == 0, out.stderr[-2000:]
    assert "plugin --plugin:" in out.stderr and "observer blew up" in out.stderr and "SystemExit: 5" in out.stderr
    assert "2 computed, 0 failed" in out.stdout
    cells = list((root / "w" / "cells").glob("*.h5"))
    assert len(cells) == 2 and all(read_h5(p) is not None for p in cells)
    assert not list((root / "w" / "cells").glob("*.failed.json"))


def test_leaderboard_piped_into_head_ends_quietly(finished):
    root, _ = finished
    cmd = f"{sys.executable} -m aprbench.harness --workdir {root / 'w'} leaderboard --format csv | head -c 10"
    for _ in range(3):
        out = subprocess.run(["bash", "-c", cmd + " >/dev/null; exit ${PIPESTATUS[0]}"], capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0 and "Traceback" not in out.stderr and "BrokenPipe" not in out.stderr


def test_nan_teacher_fails_its_cell_with_the_reason(tmp_path):
    (tmp_path / "nan_apr.py").write_text(NAN_TEACHER)
    out = bench(tmp_path / "w", "--plugin", str(tmp_path / "nan_apr.py"), "run", "--dataset", TINY, "--scenes",
                "room", "--teacher", "nan-apr", *FAST, timeout=600)
    assert out.returncode == 1
    assert "nan-apr, epoch 1: the training loss became nan" in out.stderr
    assert not list((tmp_path / "w" / "cells").glob("*.h5"))


def test_weights_with_nan_are_refused_naming_the_tensors(tmp_path):
    from aprbench.harness.api.manager import get_registry
    from aprbench.harness.running.stages.context import build_named

    model = build_named(get_registry(), "teacher", "posenet-mobilenet", num_scenes=1)
    state = model.state_dict()
    state["x_reg.weight"][0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pth")
    out = bench(tmp_path / "w", "run", "--dataset", TINY, "--scenes", "room",
                "--teacher", f"posenet-mobilenet={tmp_path / 'nan.pth'}", *FAST, timeout=600)
    assert out.returncode == 1 and "are not finite (NaN or inf) in x_reg.weight" in out.stderr


def test_cell_copied_over_another_is_detected_and_recomputed(finished):
    root, _ = finished
    (root / "observer.py").write_text("")  # the observer's job is done
    cells = sorted((root / "w" / "cells").glob("*.h5"))
    victim, other = cells
    victim.write_bytes(other.read_bytes())
    args = ["--plugin", str(root / "observer.py"), "run", "--dataset", TINY, "--scenes", "room",
            "--teacher", "posenet-mobilenet", "--student", "none", "pae", *FAST]
    out = bench(root / "w", *args, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"{victim} holds cell {other.stem}" in out.stderr and "1 from the store, 1 computed" in out.stdout
    assert read_h5(victim)[1]["fingerprint"] == victim.stem


def test_corrupt_weights_are_moved_aside_and_retrained_once(finished):
    root, _ = finished
    args = ["--plugin", str(root / "observer.py"), "run", "--dataset", TINY, "--scenes", "room",
            "--teacher", "posenet-mobilenet", "--student", "none", "pae", *FAST]
    (weights,) = (root / "w" / "artifacts" / "teacher").glob("*/weights.pth")
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    for cell in (root / "w" / "cells").glob("*.h5"):
        cell.unlink()
    out = bench(root / "w", *args, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "moved aside to weights.pth.corrupt-" in out.stderr and "training teacher posenet-mobilenet again" in out.stderr
    assert list(weights.parent.glob("weights.pth.corrupt-*")) and weights.is_file()
    again = bench(root / "w", *args, timeout=600)
    assert again.returncode == 0 and "moved aside" not in again.stderr and "2 from the store" in again.stdout


def test_workdir_that_cannot_be_created_is_one_line(tmp_path):
    out = bench(Path("/proc/aprbench-no-such-dir"), "run", "--dataset", TINY, "--teacher", "posenet-mobilenet")
    assert out.returncode == 2 and "cannot create work directory /proc/aprbench-no-such-dir" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_ctrl_c_says_what_was_saved_and_how_to_resume(tmp_path):
    args = ["run", "--dataset", TINY, "--scenes", "room", "--teacher", "posenet-mobilenet", "--student", "none", "pae",
            "--encode", "estimate", "ground_truth", *FAST]
    proc = subprocess.Popen([sys.executable, "-m", "aprbench.harness", "--workdir", str(tmp_path / "w"), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    deadline = time.monotonic() + 600
    while not list((tmp_path / "w" / "cells").glob("*.h5")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "run the same command again to resume" in err and "Traceback" not in err
    assert "saved in" in err or "interrupted" in err
