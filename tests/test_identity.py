"""The identity of a number: what enters a model's fingerprint (plugin code, variant config, VERSION, threads,
precision, device kind), how plugins are told apart, and what the store does when the code changes."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from aprbench.harness.api.identity import plugin_identity
from aprbench.harness.api.manager import BenchPluginManager, file_module_name
from aprbench.harness.api.recipes import as_overrides, resolve

# a third-party teacher as a single file: VERSION where the test puts it, a body the test may edit
TEACHER = '''\
from aprbench.harness import hookimpl
from aprbench.plugins.teachers.posenet import PoseNet
{module_version}

class IdentApr(PoseNet):
    {class_version}
    def encode(self, images, scene=None):
        return super().encode(images, scene)  # {comment}


@hookimpl
def bench_teachers():
    return {{"ident-apr": lambda **kw: IdentApr(**{{**kw, "backbone": "mobilenetv2_050"}})}}
'''


def write_teacher(path: Path, module_version: str = "", class_version: str = "", comment: str = "v") -> Path:
    path.write_text(TEACHER.format(module_version=module_version, class_version=class_version, comment=comment))
    return path


def identity_of(spec: str, kind: str = "teacher", name: str = "ident-apr", sets: dict | None = None,
                precision: str = "fp32", device: str = "cpu") -> tuple[str, str, object]:
    """``(recipe fingerprint, model fingerprint, PluginIdentity)`` of a plugin loaded afresh from ``spec``."""
    registry = BenchPluginManager(extra=[spec], entry_points=False).registry()
    recipe = resolve(registry, kind, name, "synthetic", "quick", as_overrides(sets or {}))
    return recipe.fingerprint(), recipe.model_fingerprint(precision, device), plugin_identity(registry, kind, name)


def test_without_version_any_source_edit_is_a_new_identity(tmp_path):
    plugin = write_teacher(tmp_path / "ident_apr.py")
    first = identity_of(str(plugin))
    assert first[2].version is None and first[2].label().startswith("src:")
    write_teacher(plugin, comment="a cosmetic edit")
    second = identity_of(str(plugin))
    assert second[0] != first[0] and second[1] != first[1]
    assert second[2].origin.startswith(f"file {plugin.resolve()} (sha256 ")


def test_a_declared_version_is_the_identity_and_a_class_attribute_wins(tmp_path):
    plugin = write_teacher(tmp_path / "ident_apr.py", module_version='VERSION = "3"', class_version='VERSION = "1"')
    first = identity_of(str(plugin))
    assert first[2].version == "1"  # the class attribute wins over the module-level VERSION
    write_teacher(plugin, module_version='VERSION = "3"', class_version='VERSION = "1"', comment="cosmetic")
    cosmetic = identity_of(str(plugin))
    assert cosmetic[:2] == first[:2] and cosmetic[2].digest != first[2].digest  # the contract: same VERSION
    write_teacher(plugin, module_version='VERSION = "3"', class_version='VERSION = "2"')
    assert identity_of(str(plugin))[1] != first[1]
    write_teacher(plugin, module_version='VERSION = "3"')
    assert identity_of(str(plugin))[2].version == "3"  # module-level when the class declares none


def test_variant_config_threads_precision_and_device_change_the_model_fingerprint(tmp_path):
    plugin = tmp_path / "ident_family.py"
    family = textwrap.dedent('''\
        from aprbench.harness import hookimpl, ModelFamily
        from aprbench.plugins.teachers.posenet import PoseNet
        VERSION = "1"
        models = ModelFamily()

        @models.register("ident-family")
        def _():
            return {"backbone": "BACKBONE"}

        @hookimpl
        def bench_teachers():
            return models.factories(PoseNet)
        ''')
    plugin.write_text(family.replace("BACKBONE", "resnet18"))
    base = identity_of(str(plugin), name="ident-family")
    assert base[2].variant == {"backbone": "resnet18"}
    plugin.write_text(family.replace("BACKBONE", "resnet34"))
    assert identity_of(str(plugin), name="ident-family")[1] != base[1]  # the registered variant's config
    plugin.write_text(family.replace("BACKBONE", "resnet18"))
    assert identity_of(str(plugin), name="ident-family")[1] == base[1]
    threads = identity_of(str(plugin), name="ident-family", sets={"teacher": {"threads": 2}})
    assert threads[1] != base[1] and threads[0] != base[0]
    assert identity_of(str(plugin), name="ident-family", precision="bf16")[1] != base[1]
    assert identity_of(str(plugin), name="ident-family", device="cuda")[1] != base[1]
    seed = identity_of(str(plugin), name="ident-family", sets={"teacher": {"seed": 4}})
    assert seed[1] == base[1] and seed[0] != base[0]  # one model identity across seeds; one recipe per seed


def test_a_helper_module_holding_the_model_class_and_version_is_seen(tmp_path, monkeypatch):
    pkg = tmp_path / "identpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "plugin.py").write_text(textwrap.dedent('''\
        from aprbench.harness import hookimpl
        from identpkg.model import HelperApr

        @hookimpl
        def bench_teachers():
            return {"helper-apr": lambda **kw: HelperApr(**{**kw, "backbone": "mobilenetv2_050"})}
        '''))
    model = textwrap.dedent('''\
        from aprbench.plugins.teachers.posenet import PoseNet
        VERSION = "{version}"

        class HelperApr(PoseNet):
            pass  # {comment}
        ''')
    monkeypatch.syspath_prepend(str(tmp_path))

    def load(version: str, comment: str = "") -> tuple:
        (pkg / "model.py").write_text(model.format(version=version, comment=comment))
        for name in [n for n in sys.modules if n.startswith("identpkg")]:
            del sys.modules[name]  # a new process would import the edited helper afresh
        return identity_of("identpkg.plugin", name="helper-apr")

    first = load("1")
    assert first[2].version == "1" and any(f.endswith("model.py") for f in first[2].files)
    assert first[2].origin == "module identpkg.plugin"
    edited = load("1", "edited")
    assert edited[1] == first[1] and edited[2].digest != first[2].digest  # the helper's source is in the digest
    assert load("2")[1] != first[1]  # the helper's VERSION is the plugin's


def test_two_plugin_files_of_one_name_in_two_folders_stay_apart(tmp_path):
    paths = []
    for folder, name, version in (("a", "apr-a", "1"), ("b", "apr-b", "7")):
        (tmp_path / folder).mkdir()
        path = tmp_path / folder / "myapr.py"
        path.write_text(textwrap.dedent(f'''\
            from aprbench.harness import hookimpl
            from aprbench.plugins.teachers.posenet import PoseNet
            VERSION = "{version}"

            @hookimpl
            def bench_teachers():
                return {{"{name}": lambda **kw: PoseNet(**{{**kw, "backbone": "mobilenetv2_050"}})}}
            '''))
        paths.append(path)
    assert file_module_name(paths[0]) != file_module_name(paths[1])
    registry = BenchPluginManager(extra=[str(p) for p in paths], entry_points=False).registry()
    a, b = plugin_identity(registry, "teacher", "apr-a"), plugin_identity(registry, "teacher", "apr-b")
    assert (a.version, b.version) == ("1", "7")
    assert str(paths[0].resolve()) in a.origin and str(paths[1].resolve()) in b.origin
    assert a.files == (str(paths[0].resolve()),) and b.files == (str(paths[1].resolve()),)
    assert sys.modules[file_module_name(paths[0])].VERSION == "1"
    assert sys.modules[file_module_name(paths[1])].VERSION == "7"


def test_bench_plugins_shows_versions(tmp_path, capsys):
    from aprbench.harness.cli.main import main

    plugin = write_teacher(tmp_path / "ident_apr.py", class_version='VERSION = "5"')
    assert main(["--workdir", str(tmp_path / "wd"), "--plugin", str(plugin), "plugins"]) == 0
    rows = {ln.split("|")[2].strip(): [c.strip() for c in ln.split("|")] for ln in capsys.readouterr().out.splitlines()
            if ln.startswith("| ")}
    assert rows["ident-apr"][3] == "5" and rows["ident-apr"][4].startswith(f"file {plugin.resolve()}")
    assert rows["pae-rpr"][3] == "2" and rows["pae-rpr"][4] == "built-in aprbench.plugins.refiners.pae_rpr"


def test_threads_are_applied_and_restored():
    import torch

    from aprbench.harness.api.recipes import Recipe
    from aprbench.harness.training.devices import model_threads

    before = torch.get_num_threads()
    recipe = Recipe.of("teacher", "x", {"threads": 3})
    with model_threads(recipe, torch.device("cpu")):
        assert torch.get_num_threads() == 3
    assert torch.get_num_threads() == before
    with model_threads(recipe, "cuda:0"):  # an accelerator's numbers do not depend on CPU threads
        assert torch.get_num_threads() == before


@pytest.mark.parametrize("bad", ["0", "two"])
def test_a_bad_thread_count_is_refused(bad):
    from aprbench.harness.api.manager import get_registry
    from aprbench.harness.api.recipes import parse_sets
    from aprbench.harness.errors import BenchError

    with pytest.raises(BenchError, match="threads"):
        resolve(get_registry(), "teacher", "posenet-mobilenet", "synthetic", "quick", parse_sets([f"threads={bad}"]))


# ----------------------------------------------------------------------------- the store across code changes
TINY = "synthetic:frames_per_sequence=24,train_sequences=3,test_sequences=1"


def bench(capsys, *argv: str) -> tuple[int, str, str]:
    from aprbench.harness.cli.main import main

    status = main(list(argv))
    out = capsys.readouterr()
    return status, out.out, out.err


def test_versions_reuse_recompute_split_rows_and_prune(tmp_path, capsys):
    import h5py
    import pandas as pd

    plugin = write_teacher(tmp_path / "ident_apr.py", module_version='VERSION = "1"')
    work = str(tmp_path / "wd")
    run = ["--workdir", work, "--plugin", str(plugin), "run", "--dataset", TINY, "--scenes", "room", "--teacher",
           "ident-apr", "--set", "epochs=1", "--no-progress", "--no-report", "--jobs", "1"]
    status, out, err = bench(capsys, *run)
    assert status == 0, err[-2000:]
    assert "1 cell(s) in this run: 0 from the store, 1 computed" in out
    [v1] = list((tmp_path / "wd" / "cells").glob("*.h5"))
    with h5py.File(v1) as fh:  # each model's identity is in the cell
        assert '"version": "1"' in fh.attrs["models"] and str(plugin.resolve()) in fh.attrs["models"]

    write_teacher(plugin, module_version='VERSION = "1"', comment="a cosmetic edit")  # same VERSION: reused, said
    status, out, err = bench(capsys, *run)
    assert status == 0 and "1 from the store, 0 computed" in out, err[-2000:]
    note = [ln for ln in err.splitlines() if "its source changed" in ln]
    assert len(note) == 1 and "teacher ident-apr" in note[0] and "1 stored cell(s)" in note[0]
    assert "bump VERSION" in note[0] and "--recompute ident-apr" in note[0]
    status, out, again = bench(capsys, *run)  # the same command again is replayed, and says it again
    assert status == 0 and "1 from the store, 0 computed" in out and note[0] in again

    status, out, err = bench(capsys, *run, "--recompute", "ident-apr")
    assert status == 0 and "1 stored cell(s) and 1 trained model(s) removed" in err, err[-2000:]
    assert "0 from the store, 1 computed" in out
    [again] = list((tmp_path / "wd" / "cells").glob("*.h5"))
    with h5py.File(again) as fh:  # the same fingerprint, made by the edited source
        assert again == v1 and identity_of(str(plugin))[2].digest in fh.attrs["models"]

    write_teacher(plugin, module_version='VERSION = "2"')  # a bump: new cells beside the old ones
    status, out, err = bench(capsys, *run)
    assert status == 0 and "0 from the store, 1 computed" in out, err[-2000:]
    assert len(list((tmp_path / "wd" / "cells").glob("*.h5"))) == 2

    # the two versions are two rows, labelled, never one mean over "seeds"
    status, out, err = bench(capsys, "--workdir", work, "--plugin", str(plugin), "leaderboard", "--view", "cells",
                             "--format", "csv")
    assert status == 0, err
    import io

    cells = pd.read_csv(io.StringIO(out))
    assert sorted(cells["teacher_version"].astype(str)) == ["1", "2"] and cells["teacher_fingerprint"].nunique() == 2
    assert cells["teacher_origin"].str.startswith(f"file {plugin.resolve()}").all()
    status, out, err = bench(capsys, "--workdir", work, "--plugin", str(plugin), "recipe", "teacher", "ident-apr",
                             "--set", "epochs=1")  # one name, one meaning: bench recipe's fingerprint is the cell's
    v2_fp = cells.loc[cells["teacher_version"].astype(str) == "2", "teacher_fingerprint"].iloc[0]
    assert status == 0 and f"fingerprint {v2_fp} on a CPU in fp32" in out and "plugin version 2" in out
    status, out, err = bench(capsys, "--workdir", work, "--plugin", str(plugin), "leaderboard")
    rows = [ln for ln in out.splitlines() if ln.startswith("| ident-apr")]
    assert len(rows) == 2 and any("ident-apr v1" in r for r in rows) and any("ident-apr v2" in r for r in rows), out
    status, out, err = bench(capsys, "--workdir", work, "--plugin", str(plugin), "leaderboard", "--view", "stats",
                             "--format", "csv")
    assert status == 0 and len(pd.read_csv(io.StringIO(out))) == 2, err

    status, out, err = bench(capsys, "--workdir", work, "export", "--out", str(tmp_path / "frames.csv"))
    frames = pd.read_csv(tmp_path / "frames.csv")
    assert status == 0 and sorted(frames["teacher_version"].astype(str).unique()) == ["1", "2"]
    assert {"teacher_origin", "teacher_fingerprint", "torch", "cpu", "threads"} <= set(frames.columns)
    status, out, err = bench(capsys, "--workdir", work, "--plugin", str(plugin), "report", "--out",
                             str(tmp_path / "report"))
    report = (tmp_path / "report" / "report.md").read_text()
    assert status == 0 and f"ident-apr 2 (file {plugin.resolve()}" in report and "ident-apr 1 (file" in report

    # housekeeping: the v1 cell and its model are superseded; the loaded code's are kept
    status, out, err = bench(capsys, "--workdir", work, "--plugin", str(plugin), "store", "list", "--cells")
    assert status == 0 and "1 superseded" in out and "1 current" in out, out
    status, out, err = bench(capsys, "--workdir", work, "--plugin", str(plugin), "store", "prune")
    assert "would remove 1 cell(s), 1 model(s), 1 teacher output file(s)" in out and v1.exists()  # dry run
    status, out, err = bench(capsys, "--workdir", work, "--plugin", str(plugin), "store", "prune", "--yes")
    assert status == 0 and "removed 1 cell(s), 1 model(s)" in out
    assert not v1.exists() and len(list((tmp_path / "wd" / "cells").glob("*.h5"))) == 1
    assert len(list((tmp_path / "wd" / "artifacts" / "teacher").glob("ident-apr-*"))) == 1
    status, out, err = bench(capsys, *run)
    assert status == 0 and "1 from the store, 0 computed" in out  # nothing the loaded code needs was removed
    status, out, err = bench(capsys, "--workdir", work, "--plugin", str(plugin), "store", "prune")
    assert "would remove 0 cell(s), 0 model(s)" in out


def test_the_same_numbers_at_any_worker_layout(tmp_path, capsys):
    """One tiny matrix (two teacher chains: posenet-mobilenet on room and on site, each with a PAE) run with
    --jobs 1, with two worker processes, as two shards, and resumed after half its cells were stored (the teacher
    cells first): the same cells, bit for bit, whatever the process's own thread setting."""
    import numpy as np
    import torch

    from aprbench.harness.store.hdf5 import read_h5

    matrix = ["run", "--dataset", TINY, "--teacher", "posenet-mobilenet", "--set", "epochs=1", "--no-progress",
              "--no-report"]
    full = [*matrix, "--student", "none", "pae"]

    def run(work: Path, *args: str) -> None:
        status, out, err = bench(capsys, "--workdir", str(work), *args)
        assert status == 0, err[-3000:]

    def estimates(work: Path) -> dict[str, np.ndarray]:
        return {p.stem: read_h5(p)[0]["pose_est"] for p in sorted((work / "cells").glob("*.h5"))}

    run(tmp_path / "one", *full, "--jobs", "1")
    workers = tmp_path / "workers"
    run(workers, *full, "--jobs", "2")
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # a process's own setting (OMP_NUM_THREADS) does not reach the models
    try:
        for i in (0, 1):
            run(tmp_path / "shards", *full, "--shard", f"{i}/2")
    finally:
        torch.set_num_threads(before)
    run(tmp_path / "resumed", *matrix, "--student", "none", "--jobs", "1")  # half the cells stored first
    assert len(estimates(tmp_path / "resumed")) == 2
    run(tmp_path / "resumed", *full, "--jobs", "1")

    reference = estimates(tmp_path / "one")
    assert len(reference) == 4
    for layout in ("workers", "shards", "resumed"):
        found = estimates(tmp_path / layout)
        assert found.keys() == reference.keys(), layout  # the same cell fingerprints
        for fp, est in reference.items():
            assert np.array_equal(found[fp], est), (layout, fp)  # bit for bit


def test_bench_with_run_options_only_is_bench_run(tmp_path, capsys):
    """`bench --jobs 1 …` (the default run in one process) reaches `bench run`; a mistyped command is still one."""
    status, out, err = bench(capsys, "--workdir", str(tmp_path / "wd"), "--jobs", "1", "--teacher", "no-such-apr")
    assert status == 2 and "unknown teacher 'no-such-apr'" in err
    with pytest.raises(SystemExit):
        bench(capsys, "lederboard")
    assert "invalid choice: 'lederboard'" in capsys.readouterr().err
