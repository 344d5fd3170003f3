"""Matrix expansion, refusals, sharding, overrides and leaderboard rendering (no training)."""

from __future__ import annotations

import re
from dataclasses import replace

import pandas as pd
import pytest
from torch import nn

from aprbench.harness.errors import BenchError
from aprbench.harness.api.interfaces import PoseData
from aprbench.harness.results.leaderboard import render_machine, render_table
from aprbench.harness.running.matrix import Axes, Cell, TeacherSpec, expand, shard
from aprbench.harness.api.recipes import Override, check_overrides, parse_sets
from aprbench.harness.api.manager import Entry, Registry, get_registry


class FakeTeacher(nn.Module):
    def __init__(self, multi_scene: bool, latent_dim: int = 256, **_):
        super().__init__()
        self.multi_scene, self.latent_dim = multi_scene, latent_dim


class FakeStudent(nn.Module):
    def __init__(self, latent_dim: int = 256, multi_scene: bool = False, width: int | None = None, **_):
        super().__init__()
        self.latent_dim, self.multi_scene = (width or latent_dim), multi_scene


class FakeRefiner(nn.Module):
    def __init__(self, latent_dim: int = 256, neighbours: str = "student", **_):
        super().__init__()
        self.latent_dim, self.neighbours = latent_dim, neighbours


def registry() -> Registry:
    reg = Registry()
    add = lambda kind, name, f: reg.entries[kind].__setitem__(name, Entry(kind, name, f, "test"))  # noqa: E731
    add("teacher", "single", lambda **kw: FakeTeacher(False, **kw))
    add("teacher", "multi", lambda **kw: FakeTeacher(True, **kw))
    add("teacher", "wide", lambda **kw: FakeTeacher(False, latent_dim=128))
    add("student", "pae", lambda **kw: FakeStudent(**kw))
    add("student", "pae-64", lambda **kw: FakeStudent(width=64, **kw))
    add("refiner", "rpr", lambda **kw: FakeRefiner(**kw))
    add("refiner", "retrieval", lambda **kw: FakeRefiner(neighbours="retrieval", **kw))
    add("decoder", "dec", lambda **kw: nn.Identity())
    return reg


def data() -> PoseData:
    labels = pd.DataFrame({"scene": ["room", "site"], "split": ["train", "train"], "seq": [1, 1],
                           "img_path": ["a.png", "b.png"], "t1": [0.0, 1.0], "t2": 0.0, "t3": 0.0,
                           "q1": 1.0, "q2": 0.0, "q3": 0.0, "q4": 0.0, "scene_id": [0, 1]})
    return PoseData("fake", ".", labels, ["room", "site"])


def test_single_scene_teacher_is_expanded_per_scene_and_multi_scene_once():
    plan = expand(Axes("fake", ["single", "multi"]), data(), registry(), "quick")
    groups = [(c.teacher.name, c.scenes) for c in plan.cells]
    assert groups == [("single", ("room",)), ("single", ("site",)), ("multi", ("room", "site"))]


def test_full_axes_count_and_rules():
    axes = Axes("fake", ["single@room"], students=["none", "pae"], encodes=["estimate", "ground_truth"],
                refiners=["none", "rpr", "retrieval"], iterations=[0, 1, 3], fractions=[1.0, 0.5], decoders=["dec"])
    plan = expand(axes, data(), registry(), "quick")
    per_fraction = (
        1  # teacher alone
        + 1  # retrieval refiner without a student: one cell runs 3 iterations, shows 1 and 3
        + 1  # decoder (student trained with the first encoding)
        + 2 * (1 + 2)  # per encode: student row, two refiners (one cell each)
    )
    assert len(plan.cells) == 2 * per_fraction
    assert all(c.iterations == 3 and c.shown == (1, 3) for c in plan.cells if c.refiner)
    assert all(c.refiner is None for c in plan.cells if c.iterations == 0)
    assert plan.refused == []  # rpr without a student is not a combination when students are given


def test_refiner_needing_a_student_is_refused_when_no_student_is_given():
    plan = expand(Axes("fake", ["single@room"], refiners=["rpr"], iterations=[1]), data(), registry(), "quick")
    assert [c.refiner for c in plan.cells] == [None]
    assert "student 'none'" in plan.refused[0][1]


def test_incompatible_latent_sizes_and_scene_kinds_are_refused_with_reason():
    plan = expand(Axes("fake", ["single@room"], students=["pae-64"]), data(), registry(), "quick")
    assert [c.student for c in plan.cells] == [None]
    assert "student 'pae-64' has latent size 64 but teacher 'single' has latent size 256" in plan.refused[0][1]


def test_unknown_names_list_the_known_ones():
    with pytest.raises(BenchError, match="known students: pae, pae-64"):
        expand(Axes("fake", ["single"], students=["nope"]), data(), registry(), "quick")
    with pytest.raises(BenchError, match="unknown scene"):
        expand(Axes("fake", ["single@kitchen"]), data(), registry(), "quick")


def test_teacher_spec_parsing(tmp_path):
    ckpt = tmp_path / "w.pth"
    ckpt.write_bytes(b"x")
    spec = TeacherSpec.parse(f"multi@room+site={ckpt}")
    assert (spec.name, spec.scenes, spec.checkpoint) == ("multi", ("room", "site"), ckpt)
    with pytest.raises(BenchError, match="does not exist"):
        TeacherSpec.parse(f"multi={tmp_path / 'missing.pth'}")


def _cells(teachers: dict[str, int]) -> list[Cell]:
    """``count`` cells (students s0, s1, ...) of each teacher name."""
    return [Cell("synthetic", ("room",), 1.0, TeacherSpec(t), student=f"s{i}" if i else None, encode="estimate")
            for t, count in teachers.items() for i in range(count)]


def test_shards_partition_the_cells_deterministically():
    cells = _cells({"a": 10})  # one chain: dealt out cell by cell
    fps = [f"{k:04d}" for k in reversed(range(10))]
    parts = [shard(cells, fps, f"{i}/3") for i in range(3)]
    assert sorted(sum(parts, [])) == list(range(10)) and [len(p) for p in parts] == [4, 3, 3]
    assert parts == [shard(cells, fps, f"{i}/3") for i in range(3)]
    for bad in ("3/3", "a/b", "1", "-1/2"):
        with pytest.raises(BenchError, match="--shard"):
            shard(cells, fps, bad)


def test_shards_keep_each_teacher_chain_together_and_balance_them():
    cells = _cells({"a": 6, "b": 5, "c": 2, "d": 1})
    fps = [f"{k:04d}" for k in range(len(cells))]
    parts = [shard(cells, fps, f"{i}/2") for i in range(2)]
    assert sorted(sum(parts, [])) == list(range(len(cells)))
    teachers = [{cells[k].teacher.name for k in part} for part in parts]
    assert teachers[0].isdisjoint(teachers[1])  # no teacher is trained by both shards
    assert sorted(len(p) for p in parts) == [7, 7]  # a(6)+d(1) and b(5)+c(2)
    # a second seed is another chain
    seeded = cells + [replace(c, seed=1) for c in cells if c.teacher.name == "a"]
    parts = [shard(seeded, [f"{k:04d}" for k in range(len(seeded))], f"{i}/2") for i in range(2)]
    assert {(seeded[k].teacher.name, seeded[k].seed) for k in parts[0]}.isdisjoint(
        {(seeded[k].teacher.name, seeded[k].seed) for k in parts[1]})


def test_parse_sets_kinds_and_values():
    out = parse_sets(["teacher.epochs=2", "lr=1e-4", "refiner.pairs=both"])
    assert out == [Override("teacher", "epochs", 2, "teacher.epochs=2"), Override(None, "lr", 1e-4, "lr=1e-4"),
                   Override("refiner", "pairs", "both", "refiner.pairs=both")]
    (model,) = parse_sets(["teachr.epochs=2"])  # a prefix that is not a kind names a model (NAME.KEY)
    assert (model.kind, model.model, model.key) == (None, "teachr", "epochs")
    with pytest.raises(BenchError, match="'teachr' is neither a kind .* did you mean 'teacher'"):
        check_overrides(get_registry(), [model], {"teacher": ["posenet-mobilenet"]})
    with pytest.raises(BenchError, match=re.escape("expected [KIND.|NAME.]KEY=VALUE")):
        parse_sets(["epochs"])


def test_refiners_without_iterations_run_their_recipe_default_and_never_vanish():
    """Bug: with --teacher given and no --iterations every refiner cell was dropped without a word."""
    axes = Axes("fake", ["single@room"], students=["pae"], refiners=["rpr"])
    cells = [c for c in expand(axes, data(), registry(), "quick").cells if c.refiner]
    assert [(c.refiner, c.iterations, c.shown) for c in cells] == [("rpr", 3, (1, 2, 3))]  # RefinerConfig.iterations
    plan = expand(Axes("fake", ["single@room"], students=["pae"], refiners=["rpr"], iterations=[0]), data(),
                  registry(), "quick")
    assert not [c for c in plan.cells if c.refiner]
    assert "asks for no refinement step" in plan.refused[0][1]


def test_seeds_axis_repeats_every_cell_per_seed():
    axes = Axes("fake", ["single@room"], students=["pae"], refiners=["rpr"], iterations=[1], seeds=[0, 1, 2])
    plan = expand(axes, data(), registry(), "quick")
    assert sorted({c.seed for c in plan.cells}) == [0, 1, 2]
    assert len(plan.cells) == 3 * 3  # teacher, student, refiner per seed
    assert len({(c.student, c.refiner, c.seed) for c in plan.cells}) == 9


def test_render_formats_and_sort():
    frame = pd.DataFrame({"scene": ["b", "a", "a"], "teacher": ["x", "y", "z"], "median_m": [0.3, 0.1, 0.2]})
    csv = render_machine(frame, "csv", sort="median_m")
    assert csv.splitlines()[0] == "scene,teacher,median_m" and csv.index("0.1") < csv.index("0.2") < csv.index("0.3")
    assert render_machine(frame, "csv", sort="-median_m").splitlines()[1].startswith("b,x,0.3")
    assert "\\toprule" in render_table(frame.astype(str), "latex")
    assert "<table>" in render_table(frame.astype(str), "html")
    with pytest.raises(BenchError, match="not a column"):
        render_machine(frame, "csv", sort="nope")


def test_decoder_can_be_limited_to_one_teacher():
    axes = Axes("fake", ["single@room", "multi"], students=["pae"], encodes=["estimate", "ground_truth"],
                decoders=["dec@single"])
    plan = expand(axes, data(), registry(), "quick")
    decoded = [(c.teacher.name, c.encode, c.decoder) for c in plan.cells if c.decoder]
    assert decoded == [("single", "estimate", "dec")]


def test_run_seed_names_one_seed_as_in_bench_train():
    """``bench run --seed 3`` is seed 3 alone (argparse would otherwise read it as the count ``--seeds 3``)."""
    from aprbench.harness.cli.main import build_parser
    from aprbench.harness.cli.commands.run import axes_from_args

    parser = build_parser()
    assert axes_from_args(parser.parse_args(["run", "--seed", "3"])).seeds == [3]
    assert axes_from_args(parser.parse_args(["run", "--seeds", "3"])).seeds == [0, 1, 2]
    assert axes_from_args(parser.parse_args(["run", "--seeds", "3,"])).seeds == [3]


def test_first_run_plan_scales_the_default_matrix_time_by_its_seeds():
    from aprbench.harness.cli.main import build_parser
    from aprbench.harness.cli.commands.run import _first_run

    parser = build_parser()
    one, three = (_first_run(parser.parse_args(["run", *extra]), 2) for extra in ([], ["--seeds", "3"]))
    assert "min" in one and "seeds" not in one and three == one + ", for each of the 3 seeds"
    assert _first_run(parser.parse_args(["run", "--teacher", "posenet-mobilenet"]), 2) == ""
