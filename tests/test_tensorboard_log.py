"""``--log tensorboard``: the per-epoch values of log.csv, also as TensorBoard scalars in the same folder."""

from __future__ import annotations

import builtins

import pytest

from aprbench.harness.cli.main import main
from aprbench.harness.training.loop import read_log
from test_bench_run import TINY

EventAccumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator").EventAccumulator


def test_tensorboard_scalars_equal_the_csv_log(tmp_path, capsys):
    rc = main(["--workdir", str(tmp_path), "train", "teacher", "posenet-mobilenet", "--dataset", TINY, "--scenes", "room",
               "--set", "epochs=3", "--no-progress", "--log", "tensorboard"])
    assert rc == 0, capsys.readouterr().err
    (logs,) = (tmp_path / "artifacts" / "teacher").glob("posenet-mobilenet-*/logs")
    rows = read_log(logs / "log.csv")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert len(list(logs.glob("events.out.tfevents.*"))) == 1
    events = EventAccumulator(str(logs))
    events.Reload()
    columns = sorted({k for r in rows for k in r} - {"epoch"})
    assert {"loss", "sx", "sq", "lr", "seconds"} <= set(columns)
    assert sorted(events.Tags()["scalars"]) == columns
    for name in columns:
        scalars = events.Scalars(name)
        assert [s.step for s in scalars] == [r["epoch"] for r in rows if name in r]
        # TensorBoard keeps float32
        assert [s.value for s in scalars] == pytest.approx([r[name] for r in rows if name in r], rel=1e-6, abs=1e-30)


def test_tensorboard_missing_is_a_clear_error(tmp_path, capsys, monkeypatch):
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name == "tensorboard" or name.startswith("tensorboard.") or name == "torch.utils.tensorboard":
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    rc = main(["--workdir", str(tmp_path), "train", "teacher", "posenet-mobilenet", "--dataset", TINY,
               "--no-progress", "--log", "tensorboard"])
    assert rc == 2
    assert "pip install 'aprbench[tensorboard]'" in capsys.readouterr().err
    assert not (tmp_path / "artifacts").exists()
