"""harness.store.hdf5: HDF5 round trips, damage detection, atomic writes, state dicts, locks, fingerprints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from aprbench.harness.errors import BenchError
from aprbench.harness.store.hdf5 import Store, atomic_path, fingerprint, load_into, load_state, read_h5, save_state, write_h5


class NotATensor:
    """Something a state dict must never contain (its unpickling could run code)."""

    def __init__(self) -> None:
        self.x = 1


# ----------------------------------------------------------------------------- HDF5


def test_h5_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    est = rng.normal(size=(10, 7))
    arrays = {
        "estimate": est,
        "latent": torch.randn(10, 256, dtype=torch.float32),
        "scene": np.arange(10, dtype=np.int64) % 3,
        "iteration": [0, 1, 2, 3, 0, 1, 2, 3, 0, 1],
        "img_path": ["seq-01/frame-000000.color.png", "seq-01/frame-000001.color.png", "ünïcode/ö.png"] + ["x"] * 7,
    }
    attrs = {
        "config": {"teacher": "posenet", "lr": 1e-4, "scenes": ["room", "site"], "nested": {"a": [1, 2]}},
        "versions": ["torch", "2.14.1"],
        "name": "cell",
        "fraction": 0.3,
        "epochs": 7,
        "nothing": None,
    }
    path = write_h5(tmp_path / "cells" / "c.h5", arrays, attrs)
    assert path == tmp_path / "cells" / "c.h5" and path.is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == ["c.h5"]  # no temporary left behind

    got = read_h5(path)
    assert got is not None
    a, at = got
    assert set(a) == set(arrays)
    np.testing.assert_array_equal(a["estimate"], est)
    assert a["estimate"].dtype == np.float64
    np.testing.assert_array_equal(a["latent"], arrays["latent"].numpy())
    assert a["latent"].dtype == np.float32
    np.testing.assert_array_equal(a["scene"], arrays["scene"])
    assert a["scene"].dtype.kind == "i"
    assert a["iteration"].tolist() == arrays["iteration"] and a["iteration"].dtype.kind == "i"
    assert list(a["img_path"]) == arrays["img_path"]
    assert all(isinstance(s, str) for s in a["img_path"])

    assert at == attrs
    assert "complete" not in at
    assert isinstance(at["epochs"], int) and isinstance(at["fraction"], float)


def test_h5_overwrite_replaces(tmp_path):
    path = tmp_path / "x.h5"
    write_h5(path, {"a": np.zeros(3)})
    write_h5(path, {"b": np.ones(2)})
    arrays, _ = read_h5(path)
    assert list(arrays) == ["b"]


def test_read_missing_file_is_none(tmp_path):
    assert read_h5(tmp_path / "absent.h5") is None


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95])
def test_truncated_h5_detected_warned_moved_aside(tmp_path, keep):
    path = write_h5(tmp_path / "cells" / "t.h5", {"estimate": np.random.default_rng(1).normal(size=(2000, 7))}, {"k": 1})
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(int(size * keep))
    with pytest.warns(UserWarning, match="t.h5: damaged .*moved aside"):
        assert read_h5(path) is None
    assert not path.exists() and (tmp_path / "damaged" / "cells" / "t.h5").stat().st_size == int(size * keep)


def test_garbage_h5_detected(tmp_path):
    path = tmp_path / "cells" / "g.h5"
    path.parent.mkdir()
    path.write_bytes(b"not an hdf5 file at all" * 10)
    with pytest.warns(UserWarning, match="damaged"):
        assert read_h5(path) is None
    assert not path.exists()


def test_h5_without_complete_marker_detected(tmp_path):
    path = tmp_path / "outputs" / "incomplete.h5"
    path.parent.mkdir()
    with h5py.File(path, "w") as fh:  # as an interrupted writer would leave it
        fh.create_dataset("estimate", data=np.zeros((4, 7)))
        fh.attrs["config"] = "json:{}"
    with pytest.warns(UserWarning, match="complete"):
        assert read_h5(path) is None
    assert not path.exists()


# ----------------------------------------------------------------------------- atomic writes


def test_atomic_path_leaves_nothing_when_block_raises(tmp_path):
    target = tmp_path / "sub" / "out.bin"
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_path(target) as tmp:
            assert tmp.parent == target.parent and tmp != target
            tmp.write_bytes(b"half written")
            raise RuntimeError("interrupted")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_atomic_path_keeps_old_file_when_block_raises(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_text("new")
            raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_path_success(tmp_path):
    target = tmp_path / "out.txt"
    with atomic_path(target) as tmp:
        tmp.write_text("new")
        assert not target.exists()  # nothing visible until the block succeeds
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_write_h5_failure_leaves_no_file(tmp_path):
    path = tmp_path / "bad.h5"
    with pytest.raises(Exception):
        write_h5(path, {"ok": np.zeros(3), "bad": [object()]})
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- state dicts


def test_save_load_state_round_trip(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    state = {**model.state_dict(), "epoch": 5, "sx": -3.0, "name": "posenet", "shape": [1, 2]}
    path = save_state(tmp_path / "w" / "weights.pth", state, meta={"teacher": "posenet", "fp": "abc"})
    assert path.is_file()
    assert json.loads(path.with_suffix(".json").read_text()) == {"teacher": "posenet", "fp": "abc"}
    loaded = load_state(path)
    assert set(loaded) == set(state)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded[k], v)
    assert (loaded["epoch"], loaded["sx"], loaded["name"], loaded["shape"]) == (5, -3.0, "posenet", [1, 2])

    other = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    load_into(other, {k: loaded[k] for k in model.state_dict()})
    for k, v in model.state_dict().items():
        assert torch.equal(other.state_dict()[k], v)
    assert sorted(p.name for p in path.parent.iterdir()) == ["weights.json", "weights.pth"]


def test_load_state_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"a": NotATensor(), "w": torch.zeros(2)}, path)
    with pytest.raises(BenchError, match="evil.pth"):
        load_state(path)


def test_load_state_refuses_whole_module(tmp_path):
    path = tmp_path / "module.pth"
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(BenchError, match="module.pth"):
        load_state(path)


@pytest.mark.parametrize("obj", [[torch.zeros(2)], torch.zeros(3), 5])
def test_load_state_refuses_non_dict(tmp_path, obj):
    path = tmp_path / "x.pth"
    torch.save(obj, path)
    with pytest.raises(BenchError, match="expected a state dict"):
        load_state(path)


def test_load_state_missing_or_garbage(tmp_path):
    with pytest.raises(BenchError, match="does not exist"):
        load_state(tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(BenchError, match="bad.pth"):
        load_state(bad)


def test_load_into_names_bad_keys():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 3))
    state = dict(model.state_dict())
    del state["1.bias"]
    state["2.weight"] = torch.zeros(1)
    state["0.weight"] = torch.zeros(5, 4)
    with pytest.raises(BenchError) as info:
        load_into(model, state, source="teacher.pth")
    msg = str(info.value)
    assert msg.startswith("teacher.pth does not fit Sequential")
    assert "missing keys: 1.bias" in msg
    assert "unexpected keys: 2.weight" in msg
    assert "0.weight (5, 4) vs (8, 4)" in msg
    # nothing was loaded
    assert model.state_dict()["0.weight"].shape == (8, 4)


# ----------------------------------------------------------------------------- locks

TRY_LOCK = """
import sys
from filelock import FileLock, Timeout
try:
    with FileLock(sys.argv[1], timeout=0):
        pass
except Timeout:
    sys.exit(3)
sys.exit(0)
"""


def try_lock(path: Path) -> int:
    return subprocess.run([sys.executable, "-c", TRY_LOCK, str(path)], timeout=60).returncode


def test_store_lock_excludes_other_processes(tmp_path):
    store = Store(tmp_path / "work")
    lock_file = tmp_path / "work" / "locks" / "teacher-abc.lock"
    with store.lock("teacher-abc"):
        assert lock_file.is_file()
        assert try_lock(lock_file) == 3  # held: another process cannot take it
    assert try_lock(lock_file) == 0  # released
    with store.lock("other"):
        assert try_lock(lock_file) == 0  # locks are per name


def test_store_lock_released_on_error(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(ValueError):
        with store.lock("x"):
            raise ValueError
    assert try_lock(tmp_path / "locks" / "x.lock") == 0


def test_store_paths(tmp_path):
    store = Store(tmp_path / "w")
    assert store.root.is_dir()
    assert store.cell_path("abc") == tmp_path / "w" / "cells" / "abc.h5"
    assert store.outputs_path("fp", "test") == tmp_path / "w" / "outputs" / "fp-test.h5"
    assert store.artifact_dir("teacher", "posenet", "fp") == tmp_path / "w" / "artifacts" / "teacher" / "posenet-fp"
    assert store.data_dir("synthetic") == tmp_path / "w" / "data" / "synthetic"


# ----------------------------------------------------------------------------- fingerprints


def test_fingerprint_order_insensitive_and_sensitive_to_values():
    a = fingerprint("posenet", {"lr": 1e-4, "epochs": 10, "nested": {"x": 1, "y": [1, 2]}}, "upstream")
    b = fingerprint("posenet", {"nested": {"y": [1, 2], "x": 1}, "epochs": 10, "lr": 1e-4}, "upstream")
    assert a == b
    assert len(a) == 16 and int(a, 16) >= 0
    assert fingerprint("posenet", {"lr": 1e-4, "epochs": 11, "nested": {"x": 1, "y": [1, 2]}}, "upstream") != a
    assert fingerprint("posenet", {"lr": 1e-4, "epochs": 10, "nested": {"x": 1, "y": [2, 1]}}, "upstream") != a  # lists keep order
    assert fingerprint("posenet", {"lr": 1e-4, "epochs": 10, "nested": {"x": 1, "y": [1, 2]}}, "other") != a
    assert fingerprint("a", "b") != fingerprint("b", "a")


def test_fingerprint_stable_across_processes():
    parts = ("posenet", {"lr": 1e-4, "scenes": ["room", "site"], "path": Path("/data/x"), "ok": True}, None)
    here = fingerprint(*parts)
    code = (
        "from pathlib import Path; from aprbench.harness.store.hdf5 import fingerprint; "
        "print(fingerprint('posenet', {'ok': True, 'path': Path('/data/x'), 'scenes': ['room', 'site'], 'lr': 1e-4}, None))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == here
