"""A warm command replays its recorded output only while nothing it read has changed (``harness.store.replay``)."""

from __future__ import annotations

import os
from pathlib import Path

from aprbench.harness.store import replay as R


def _record(tmp_path: Path, options: dict | None = None, plugins: tuple[str, ...] = ()) -> tuple[R.Replay, Path]:
    inputs = tmp_path / "cells"
    inputs.mkdir(exist_ok=True)
    (inputs / "a.h5").write_bytes(b"cell a")
    r = R.Replay(tmp_path / "wd", "run", options or {"teacher": ["posenet-mobilenet"]}, plugins)
    r.save({"board": "| table |"}, [inputs])
    return r, inputs


def _bump(path: Path) -> None:
    """Change a file's modification time for certain (file systems with coarse timestamps)."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_an_unchanged_input_replays_and_every_change_is_a_miss(tmp_path):
    r, cells = _record(tmp_path)
    assert r.load() == {"board": "| table |"}
    _bump(cells / "a.h5")
    assert r.load() is None  # a rewritten cell
    r, cells = _record(tmp_path)
    (cells / "b.h5").write_bytes(b"another process's cell")
    assert r.load() is None  # a new cell
    r, cells = _record(tmp_path)
    (cells / "a.h5").unlink()
    assert r.load() is None  # a removed cell


def test_the_key_covers_options_environment_working_directory_and_plugin_source(tmp_path, monkeypatch):
    plugin = tmp_path / "my_plugin.py"
    plugin.write_text("VERSION = 1\n")
    r, _ = _record(tmp_path, plugins=(str(plugin),))
    same = R.Replay(tmp_path / "wd", "run", {"teacher": ["posenet-mobilenet"]}, (str(plugin),))
    assert same.path == r.path and same.load() == {"board": "| table |"}
    assert R.Replay(tmp_path / "wd", "run", {"teacher": ["mstransformer"]}, (str(plugin),)).path != r.path
    assert R.Replay(tmp_path / "wd", "leaderboard", {"teacher": ["posenet-mobilenet"]}, (str(plugin),)).path != r.path
    plugin.write_text("VERSION = 2\n")
    assert R.Replay(tmp_path / "wd", "run", {"teacher": ["posenet-mobilenet"]}, (str(plugin),)).path != r.path
    plugin.write_text("VERSION = 1\n")
    monkeypatch.setenv("BENCH_PLUGINS", "someone-elses-plugin")
    assert R.Replay(tmp_path / "wd", "run", {"teacher": ["posenet-mobilenet"]}, (str(plugin),)).path != r.path
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    assert R.Replay(tmp_path / "wd", "run", {"teacher": ["posenet-mobilenet"]}, (str(plugin),)).path != r.path


def test_the_code_digest_follows_aprbench_sources(tmp_path, monkeypatch):
    fake = tmp_path / "harness"
    fake.mkdir()
    (fake / "registry.toml").write_text("[[recipe]]\nkind = 'teacher'\n")
    real = R._module_root
    monkeypatch.setattr(R, "_module_root", lambda m: fake if m == "aprbench.harness" else real(m))
    before = R.code_digest()
    (fake / "registry.toml").write_text("[[recipe]]\nkind = 'teacher'\nepochs = 3\n")
    assert R.code_digest() != before
    (fake / "notes.txt").write_text("not source")
    assert R.code_digest() == R.code_digest()


def test_inputs_too_large_to_walk_are_not_recorded(tmp_path, monkeypatch):
    monkeypatch.setattr(R, "MAX_FILES", 1)
    cells = tmp_path / "cells"
    cells.mkdir()
    for name in ("a.h5", "b.h5"):
        (cells / name).write_bytes(b"x")
    r = R.Replay(tmp_path / "wd", "run", {}, ())
    r.save({"board": "x"}, [cells])
    assert not r.path.exists() and r.load() is None


def test_bench_plugins_is_replayed_in_a_work_directory_until_a_plugin_file_changes(tmp_path, run_bench,
                                                                                  run_bench_process):
    plugin = tmp_path / "extra_apr.py"
    plugin.write_text("from aprbench.harness.api.hookspecs import hookimpl\n\n\n@hookimpl\ndef bench_teachers():\n"
                      "    return {'extra-apr': lambda **kw: None}\n")
    work = tmp_path / "wd"
    args = ["--workdir", work, "--plugin", plugin, "plugins"]
    outside = run_bench(*args)  # no work directory: listed, nothing recorded, no folder made
    assert outside.returncode == 0 and "extra-apr" in outside.stdout and not work.exists()
    work.mkdir()
    first = run_bench(*args)
    assert first.stdout == outside.stdout and len(list((work / "replay").glob("plugins-*.json"))) == 1
    # the replay imports no plugin module, hence not torch
    again = run_bench_process(*args, env={"PYTHONPROFILEIMPORTTIME": "1"})  # what a fresh process imports
    assert again.stdout == first.stdout and "import time:" in again.stderr and " torch" not in again.stderr
    plugin.write_text(plugin.read_text().replace("extra-apr", "renamed-apr"))
    changed = run_bench(*args)
    assert "renamed-apr" in changed.stdout and "extra-apr" not in changed.stdout
