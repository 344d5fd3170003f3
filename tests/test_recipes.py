"""Recipes resolved in one place: typed parts, sources, validation, fingerprints (harness.api.recipes)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pandas as pd
import pytest

from aprbench.harness.api import recipes as R
from aprbench.harness.errors import BenchError
from aprbench.harness.api.interfaces import PoseData
from aprbench.harness.running.matrix import Cell, TeacherSpec
from aprbench.harness.api.manager import get_manager, get_registry
from aprbench.harness.running.runner import MatrixRunner
from aprbench.harness.store.hdf5 import Store


def resolve(kind, name, *sets, profile="quick", dataset="synthetic", **kw):
    return R.resolve(get_registry(), kind, name, dataset, profile, R.parse_sets(list(sets)), **kw)


def test_parts_types_and_sources():
    r = resolve("teacher", "posenet-mobilenet", "epochs=3", "teacher.image_size=32")
    assert r.train.epochs == 3 and r.sources["epochs"] == "--set epochs=3"
    assert r.task.image_size == 32 and isinstance(r.task, R.TeacherConfig)
    assert r.model == {"backbone": "mobilenetv2_050", "dropout": 0.0}
    assert r.sources["batch_size"].startswith("registry.toml recipe #")
    assert r.sources["grad_clip"] == "default" and r.train.grad_clip == 0.0
    assert r.train.lr == 6e-3 and isinstance(r.train.lr, float)


def test_student_copies_its_teachers_keys_and_set_still_wins():
    teacher = resolve("teacher", "posenet-mobilenet", profile="paper")
    s = resolve("student", "pae", "student.lr=5e-4", profile="paper", teacher=teacher)
    assert s.train.epochs == teacher.train.epochs == 300
    assert s.sources["epochs"] == "teacher posenet-mobilenet recipe (from_teacher)"
    assert s.train.lr == 5e-4


def test_seed_of_the_cell_wins():
    r = resolve("refiner", "pae-rpr", "seed=7", seed=2)
    assert r.train.seed == 2 and r.sources["seed"] == "--seeds"


@pytest.mark.parametrize("pair, message", [
    ("epoch=3", "did you mean 'epochs'"),
    ("teacher.epochs=abc", "epochs = 'abc' (from --set teacher.epochs=abc): expected int"),
    ("teacher.epochs=-3", "must be >= 0"),
    ("teacher.batch_size=0", "must be >= 1"),
    ("teacher.lr=0", "must be > 0.0"),
    ("teacher.schedule=linear", "expected one of step, cosine"),
    ("teacher.backbone=3", "backbone expects a str"),
    ("teacher.nope=1", "has no recipe key 'nope'"),
])
def test_bad_values_are_refused_with_the_key_and_what_is_accepted(pair, message):
    reg = get_registry()
    overrides = R.parse_sets([pair])
    with pytest.raises(BenchError, match=pytest.importorskip("re").escape(message)):
        R.check_overrides(reg, overrides, {"teacher": ["mstransformer"]})
        R.resolve(reg, "teacher", "mstransformer", "synthetic", "quick", overrides)


def test_a_kind_the_command_does_not_use_is_refused():
    with pytest.raises(BenchError, match="this command uses no refiner"):
        R.check_overrides(get_registry(), R.parse_sets(["refiner.k=2"]), {"teacher": ["mstransformer"]})


def test_unknown_profile():
    with pytest.raises(BenchError, match="unknown profile; known: paper, quick"):
        resolve("teacher", "posenet-mobilenet", profile="fast")


def test_fingerprint_covers_values_and_plugin_version(monkeypatch):
    import aprbench.plugins.refiners.pae_rpr as module

    base = resolve("refiner", "pae-rpr").fingerprint()
    assert resolve("refiner", "pae-rpr", "refiner.k=3").fingerprint() != base
    monkeypatch.setattr(module, "VERSION", "999")
    assert resolve("refiner", "pae-rpr").fingerprint() != base


def _data() -> PoseData:
    rows = [{"scene": "room", "split": split, "seq": 1, "img_path": f"{split}{i}.png", "t1": float(i), "t2": 0.0,
             "t3": 0.0, "q1": 1.0, "q2": 0.0, "q3": 0.0, "q4": 0.0, "scene_id": 0}
            for split in ("train", "test") for i in range(3)]
    return PoseData("synthetic", ".", pd.DataFrame(rows), ["room"])


def test_cell_fingerprint_changes_with_plugin_version_and_task_defaults(tmp_path, monkeypatch):
    """Bug: a cell's cache key left out the plugin's VERSION and the stage defaults, so `bench run` on an
    existing work directory served cells computed by an older plugin."""
    import aprbench.plugins.refiners.pae_rpr as module

    runner = MatrixRunner(Store(tmp_path), get_manager(), _data(), "synthetic", "quick", progress=False)
    cell = Cell("synthetic", ("room",), 1.0, TeacherSpec("posenet-mobilenet"), "pae", "estimate", "pae-rpr", 3)
    before = runner.fingerprint(cell)
    assert runner.fingerprint(replace(cell, shown=(1, 3))) == before  # what is shown is not what is computed
    assert runner.fingerprint(replace(cell, seed=1)) != before
    monkeypatch.setattr(module, "VERSION", "999")
    assert runner.fingerprint(cell) != before
    monkeypatch.undo()
    assert runner.fingerprint(cell) == before

    @dataclass(frozen=True)
    class NewDefaults(R.RefinerConfig):
        min_std_m: float = 0.5

    monkeypatch.setitem(R.TASK_CONFIGS, "refiner", NewDefaults)
    assert runner.fingerprint(cell) != before


def test_bench_recipe_prints_values_and_sources(tmp_path, run_bench):
    out = run_bench("recipe", "teacher", "mstransformer", "--set", "epochs=3", "--workdir", tmp_path)
    assert out.returncode == 0, out.stderr
    assert "| train  | epochs " in out.stdout and "--set epochs=3" in out.stdout
    assert "registry.toml recipe #4" in out.stdout and "d_model" in out.stdout
    bad = run_bench("recipe", "teacher", "mstransformer", "--set", "epoch=3")
    assert bad.returncode == 2 and "did you mean 'epochs'" in bad.stderr and "Traceback" not in bad.stderr
