"""The installed package: a wheel built from the source tree carries the registry and works outside the checkout.

Marked ``packaging`` (deselect with ``-m "not packaging"``); it runs by default. It builds offline
(``--no-build-isolation --no-index``) with the setuptools of the running environment (the ``test``
extra asks for one that builds wheels by itself, >= 70.1).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
JUNK = shutil.ignore_patterns(".git", ".venv", ".bench", "build", "dist", "*.egg-info", "__pycache__",
                              ".pytest_cache", ".benchmarks")

pytestmark = pytest.mark.packaging


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Build the wheel from a copy of the source tree (the build leaves ``build/`` behind in its source)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(REPO, src, symlinks=True, ignore=JUNK)
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(tmp / "dist"), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    (path,) = (tmp / "dist").glob("aprbench-*.whl")
    return path


def test_wheel_contents(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "aprbench/harness/registry.toml" in names
    assert {"aprbench/harness/__init__.py", "aprbench/harness/cli/main.py", "aprbench/harness/cli/commands/plugins.py",
            "aprbench/harness/running/stages/__init__.py", "aprbench/harness/results/published_results.csv",
            "aprbench/plugins/__init__.py", "aprbench/plugins/teachers/__init__.py"} <= names
    # namespaced: no generic top-level import name beside aprbench, and every package of the checkout is inside
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"aprbench"}
    packages = {"aprbench/" + str(init.parent.relative_to(REPO)) for top in ("harness", "plugins")
                for init in (REPO / top).rglob("__init__.py")}
    assert packages <= {n.rpartition("/")[0] for n in names}
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)
    # the packaged registry is the top-level file's content, not a link
    packaged = zipfile.ZipFile(wheel).read("aprbench/harness/registry.toml")
    assert packaged == (REPO / "registry.toml").read_bytes()
    assert tomllib.loads(packaged.decode())["plugins"]["builtin"]
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "bench = aprbench.harness.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License" in metadata


def test_unpacked_wheel_runs_from_another_folder(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", "BENCH_PLUGINS": "none"}

    def bench(*args: str) -> str:
        out = subprocess.run([sys.executable, *args], cwd=elsewhere, env=env, capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    text = bench("-m", "aprbench.harness", "plugins")
    assert "broken" not in text
    for kind, name in [("dataset", "synthetic"), ("teacher", "posenet-mobilenet"), ("student", "pae"),
                       ("refiner", "pae-rpr")]:
        assert any([c.strip() for c in line.split("|")[1:3]] == [kind, name] for line in text.splitlines()), (kind, name)
    (where,) = bench("-c", "import aprbench.harness as h; print(h.__file__)").split()
    assert Path(where).is_relative_to(site)
    assert "ModuleNotFoundError" in subprocess.run([sys.executable, "-c", "import harness"], cwd=elsewhere, env=env,
                                                   capture_output=True, text=True, timeout=60).stderr
    # the recipes come from the unpacked wheel's registry
    expected = _quick_epochs(tomllib.loads((REPO / "registry.toml").read_text()))
    text = bench("-m", "aprbench.harness", "recipe", "teacher", "posenet-mobilenet")
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines() if line.startswith("|")]
    header = rows[0]
    epochs = next(r[header.index("value")] for r in rows[2:] if r[header.index("key")] == "epochs")
    assert int(epochs) == expected


def _quick_epochs(registry: dict) -> int:
    """The ``epochs`` of posenet-mobilenet's quick synthetic recipe, merged here without harness.api.registry."""
    from fnmatch import fnmatchcase

    epochs = None
    for table in registry["recipe"]:
        wanted = {"kind": "teacher", "models": "posenet-mobilenet", "datasets": "synthetic", "profiles": "quick"}
        if table.get("kind") != "teacher":
            continue
        if all(any(fnmatchcase(wanted[k], p) for p in table.get(k, ["*"])) for k in ("models", "datasets", "profiles")):
            epochs = table.get("epochs", epochs)
    return epochs


def test_checkout_without_symlinks_reads_the_top_level_registry(tmp_path):
    """git with ``core.symlinks=false`` (Windows) writes the link ``harness/registry.toml`` as a file naming its target."""
    shutil.copytree(REPO / "harness", tmp_path / "aprbench" / "harness", ignore=JUNK)
    shutil.copy(REPO / "registry.toml", tmp_path / "aprbench" / "registry.toml")
    link = tmp_path / "aprbench" / "harness" / "registry.toml"
    link.unlink()
    link.write_text("../registry.toml")
    out = subprocess.run(
        [sys.executable, "-c", "import aprbench.harness as h, aprbench.harness.api.registry as r; print(h.__file__); "
                               "print(','.join(r.builtin_plugin_modules()))"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)}, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    where, modules = out.stdout.split()
    assert Path(where).is_relative_to(tmp_path)
    assert modules.split(",") == tomllib.loads((REPO / "registry.toml").read_text())["plugins"]["builtin"]
