"""The plugin system: entry points, --plugin, broken plugins, duplicates, BENCH_PLUGINS, recipes.

Names registered here are prefixed ``tp_`` so that they never collide with the
built-in plugins (which may or may not exist while they are being written).
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

import aprbench.harness.api.manager as plugin_manager
from aprbench.harness.api import registry
from aprbench.harness.cli.main import main as bench_main
from aprbench.harness.errors import BenchError
from aprbench.harness.api.manager import BenchPluginManager

THIRDPARTY_MODULE = '''
from aprbench.harness.api.hookspecs import hookimpl


class TinyAPR:
    def __init__(self, num_scenes=1, width=8):
        self.num_scenes = num_scenes
        self.width = width


@hookimpl
def bench_teachers():
    return {"tp_tiny_apr": TinyAPR}
'''

FILE_PLUGIN = '''
from aprbench.harness.api.hookspecs import hookimpl


class FileStudent:
    def __init__(self, latent_dim=256, **config):
        self.latent_dim = latent_dim
        self.config = config


@hookimpl
def bench_students():
    return {"tp_file_student": FileStudent}


@hookimpl
def bench_cell_finished(cell, result):
    pass
'''

DOTTED_PLUGIN = '''
from aprbench.harness.api.hookspecs import hookimpl


def make_refiner(latent_dim=256, iterations=1):
    return ("refiner", latent_dim, iterations)


def make_decoder(latent_dim=256):
    return ("decoder", latent_dim)


@hookimpl
def bench_refiners():
    return {"tp_dotted_refiner": make_refiner}


@hookimpl
def bench_decoders():
    return {"tp_dotted_decoder": make_decoder}
'''

BROKEN_PLUGIN = '''
raise RuntimeError("tp plugin exploded on import")
'''


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture(autouse=True)
def fresh_manager(monkeypatch):
    """No process-wide manager leaks into or out of these tests; test modules are unloaded afterwards."""
    monkeypatch.setattr(plugin_manager, "_MANAGER", None)
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith(("thirdparty_apr", "tp_", "bench_plugin_tp_")):
            del sys.modules[name]


@pytest.fixture
def thirdparty(tmp_path, monkeypatch) -> Path:
    """An installed-looking distribution ``thirdparty-apr`` with entry point ``thirdapr`` in group ``bench``.

    Real metadata on ``sys.path`` (a ``.dist-info`` folder), found by importlib.metadata, not a mock.
    """
    site = tmp_path / "site"
    write(site / "thirdparty_apr.py", THIRDPARTY_MODULE)
    info = site / "thirdparty_apr-0.1.dist-info"
    write(info / "METADATA", "Metadata-Version: 2.1\nName: thirdparty-apr\nVersion: 0.1\n")
    write(info / "entry_points.txt", "[bench]\nthirdapr = thirdparty_apr\n")
    monkeypatch.syspath_prepend(str(site))
    return site


@pytest.fixture
def local_plugins(tmp_path, monkeypatch) -> dict[str, str]:
    """A plugin file, an importable dotted module and a broken file; returns their ``--plugin`` specs."""
    pkgroot = tmp_path / "src"
    write(pkgroot / "tp_pkg" / "__init__.py", "")
    write(pkgroot / "tp_pkg" / "bench_plugin.py", DOTTED_PLUGIN)
    monkeypatch.syspath_prepend(str(pkgroot))
    return {
        "file": str(write(tmp_path / "tp_file_plugin.py", FILE_PLUGIN)),
        "dotted": "tp_pkg.bench_plugin",
        "broken": str(write(tmp_path / "tp_broken_plugin.py", BROKEN_PLUGIN)),
        "pythonpath": str(pkgroot),
    }


# ----------------------------------------------------------------------------- (a) entry points


def test_entry_point_plugin_is_discovered_and_built(thirdparty, monkeypatch):
    monkeypatch.delenv("BENCH_PLUGINS", raising=False)  # unset: every installed plugin loads
    reg = BenchPluginManager().registry()
    assert "tp_tiny_apr" in reg.names("teacher")
    entry = reg.get("teacher", "tp_tiny_apr")
    assert entry.source.startswith("entrypoint:")
    assert "thirdparty" in entry.source and entry.source.endswith(":thirdapr")
    model = reg.build("teacher", "tp_tiny_apr", num_scenes=3, width=16)
    assert type(model).__name__ == "TinyAPR"
    assert (model.num_scenes, model.width) == (3, 16)
    assert not any("thirdapr" in s for s in reg.broken)


# ----------------------------------------------------------------------------- (e) BENCH_PLUGINS


@pytest.mark.parametrize(
    "value, loaded",
    [("none", False), ("", False), ("thirdapr", True), ("other,thirdapr", True), (" thirdapr , other ", True), ("other", False)],
)
def test_bench_plugins_env_limits_entry_points(thirdparty, monkeypatch, value, loaded):
    monkeypatch.setenv("BENCH_PLUGINS", value)
    reg = BenchPluginManager().registry()
    assert ("tp_tiny_apr" in reg.names("teacher")) is loaded


def test_entry_points_can_be_switched_off(thirdparty, monkeypatch):
    monkeypatch.delenv("BENCH_PLUGINS", raising=False)
    assert "tp_tiny_apr" not in BenchPluginManager(entry_points=False).registry().names("teacher")


def test_conftest_keeps_installed_plugins_out(thirdparty):
    """Without a test's own setting, the suite runs with BENCH_PLUGINS=none."""
    assert "tp_tiny_apr" not in BenchPluginManager().registry().names("teacher")


# ----------------------------------------------------------------------------- (b) --plugin


def test_plugin_file_and_dotted_module_in_process(local_plugins):
    manager = BenchPluginManager(extra=[local_plugins["file"], local_plugins["dotted"]])
    reg = manager.registry()
    file_entry = reg.get("student", "tp_file_student")
    assert file_entry.source == f"--plugin:{local_plugins['file']}"
    student = reg.build("student", "tp_file_student", latent_dim=64, depth="shallow")
    assert (student.latent_dim, student.config) == (64, {"depth": "shallow"})

    assert reg.get("refiner", "tp_dotted_refiner").source == "--plugin:tp_pkg.bench_plugin"
    assert reg.build("refiner", "tp_dotted_refiner", latent_dim=128, iterations=3) == ("refiner", 128, 3)
    assert reg.build("decoder", "tp_dotted_decoder", latent_dim=32) == ("decoder", 32)


def test_get_registry_with_extra_plugins(local_plugins):
    reg = plugin_manager.get_registry([local_plugins["dotted"]])
    assert "tp_dotted_refiner" in reg.names("refiner")
    # the process-wide manager is kept until refreshed
    assert plugin_manager.get_registry() is reg
    assert "tp_dotted_refiner" not in plugin_manager.get_manager(refresh=True).registry().names("refiner")


def test_plugin_package_named_like_a_folder_in_cwd(tmp_path, monkeypatch):
    """``--plugin tp_dirpkg`` is a module name even when a folder of that name is in the working directory."""
    write(tmp_path / "tp_dirpkg" / "__init__.py", DOTTED_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    reg = BenchPluginManager(extra=["tp_dirpkg"]).registry()
    assert reg.get("refiner", "tp_dotted_refiner").source == "--plugin:tp_dirpkg"


def test_missing_plugin_file_is_an_error(tmp_path):
    with pytest.raises(BenchError, match="no_such_plugin.py"):
        BenchPluginManager(extra=[str(tmp_path / "no_such_plugin.py")])


def test_unknown_dotted_plugin_is_broken_not_fatal():
    manager = BenchPluginManager(extra=["tp_does_not_exist.plugin"])
    assert "ModuleNotFoundError" in manager.registry().broken["--plugin:tp_does_not_exist.plugin"]


def test_unknown_name_lists_known_names(local_plugins):
    reg = BenchPluginManager(extra=[local_plugins["dotted"]]).registry()
    with pytest.raises(BenchError, match="unknown refiner 'nope'.*tp_dotted_refiner"):
        reg.build("refiner", "nope")
    with pytest.raises(BenchError, match="unknown"):
        reg.get("widget", "tp_dotted_refiner")


# ----------------------------------------------------------------------------- (a) + (b) + (c) as a newcomer runs it


def test_bench_plugins_subprocess(thirdparty, local_plugins, run_bench_process, tmp_path):
    """``python -m harness --plugin FILE --plugin BROKEN plugins --plugin DOTTED`` with an installed entry point
    (``--plugin`` before and after the command add up)."""
    proc = run_bench_process(  # entry points found through PYTHONPATH: a real process
        "--plugin", local_plugins["file"], "--plugin", local_plugins["broken"], "plugins", "--plugin", local_plugins["dotted"],
        env={"PYTHONPATH": f"{thirdparty}:{local_plugins['pythonpath']}", "BENCH_PLUGINS": "thirdapr"}, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    rows = {ln.split("|")[2].strip(): ln for ln in out.splitlines() if ln.startswith("|") and "tp_" in ln}
    # each with its version (src:DIGEST where none is declared) and where it comes from
    assert "teacher" in rows["tp_tiny_apr"] and "entry point thirdparty-apr 0.1 (thirdapr)" in rows["tp_tiny_apr"]
    assert "student" in rows["tp_file_student"] and f"file {Path(local_plugins['file']).resolve()} (sha256 " in \
        rows["tp_file_student"]
    assert "refiner" in rows["tp_dotted_refiner"] and "module tp_pkg.bench_plugin" in rows["tp_dotted_refiner"]
    assert all(ln.split("|")[3].strip() for ln in rows.values())
    assert "decoder" in rows["tp_dotted_decoder"]
    broken = out[out.index("broken plugins"):]
    assert f"--plugin:{local_plugins['broken']}" in broken
    assert "RuntimeError: tp plugin exploded on import" in broken
    assert "tp_broken_plugin.py:2" in broken  # where it failed
    assert "tp_file_student" not in broken and "thirdapr" not in broken


def test_broken_plugin_in_process_leaves_others_working(local_plugins, capsys):
    manager = BenchPluginManager(extra=[local_plugins["broken"], local_plugins["file"]])
    reg = manager.registry()
    assert reg.broken[f"--plugin:{local_plugins['broken']}"].startswith("RuntimeError: tp plugin exploded on import")
    assert reg.build("student", "tp_file_student").latent_dim == 256
    assert not any(name.startswith("bench_plugin_tp_broken") for name in sys.modules)  # no half-imported module left

    assert bench_main(["plugins", "--plugin", local_plugins["broken"], "--plugin", local_plugins["file"]]) == 0
    out = capsys.readouterr().out
    assert "tp_file_student" in out
    assert "tp plugin exploded on import" in out


def test_plugin_whose_hook_raises_is_broken(tmp_path):
    bad = write(tmp_path / "tp_bad_hook.py", '''
        from aprbench.harness.api.hookspecs import hookimpl

        @hookimpl
        def bench_teachers():
            raise ValueError("cannot list teachers")

        @hookimpl
        def bench_students():
            return {"tp_survivor": dict}
    ''')
    reg = BenchPluginManager(extra=[str(bad)]).registry()
    assert "ValueError: cannot list teachers" in reg.broken[f"--plugin:{bad}"]
    assert "tp_survivor" in reg.names("student")


# ----------------------------------------------------------------------------- (d) duplicates


def test_duplicate_name_names_both_sources(tmp_path, local_plugins):
    a = write(tmp_path / "tp_dup_a.py", '''
        from aprbench.harness.api.hookspecs import hookimpl

        @hookimpl
        def bench_teachers():
            return {"tp_same": object}
    ''')
    b = write(tmp_path / "tp_dup_b.py", '''
        from aprbench.harness.api.hookspecs import hookimpl

        @hookimpl
        def bench_teachers():
            return {"tp_same": dict}
    ''')
    with pytest.raises(BenchError) as info:
        BenchPluginManager(extra=[str(a), local_plugins["file"], str(b)]).registry()
    msg = str(info.value)
    assert "tp_same" in msg and "teacher" in msg
    assert f"--plugin:{a}" in msg and f"--plugin:{b}" in msg
    assert msg.index(f"--plugin:{a}") < msg.index(f"--plugin:{b}")  # first registration named first


def test_duplicate_between_entry_point_and_plugin_file(thirdparty, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BENCH_PLUGINS", "thirdapr")
    clash = write(tmp_path / "tp_clash.py", '''
        from aprbench.harness.api.hookspecs import hookimpl

        @hookimpl
        def bench_teachers():
            return {"tp_tiny_apr": object}
    ''')
    with pytest.raises(BenchError, match=r"entrypoint:.*thirdapr.*--plugin:.*tp_clash\.py"):
        BenchPluginManager(extra=[str(clash)]).registry()
    # the CLI reports it as one line and exits 2
    assert bench_main(["plugins", "--plugin", str(clash)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench: error:") and "tp_tiny_apr" in err and "tp_clash.py" in err


# ----------------------------------------------------------------------------- (f) --hooks


def test_bench_plugins_hooks(local_plugins, thirdparty, monkeypatch, capsys):
    monkeypatch.setenv("BENCH_PLUGINS", "thirdapr")
    assert bench_main(["plugins", "--hooks", "--plugin", local_plugins["file"], "--plugin", local_plugins["dotted"]]) == 0
    out = capsys.readouterr().out
    hooks_table = out[out.index("| plugin"):]
    rows = {ln.split("|")[1].strip(): ln.split("|")[2] for ln in hooks_table.splitlines() if ln.startswith("|")}
    assert rows[f"--plugin:{local_plugins['file']}"].split(",") == [" bench_cell_finished", " bench_students "]
    assert "bench_decoders" in rows["--plugin:tp_pkg.bench_plugin"]
    assert "bench_refiners" in rows["--plugin:tp_pkg.bench_plugin"]
    ep = next(k for k in rows if k.startswith("entrypoint:"))
    assert "bench_teachers" in rows[ep]

    manager = plugin_manager.get_manager()
    hooks = dict(manager.plugin_hooks())
    assert hooks[f"--plugin:{local_plugins['file']}"] == ["bench_cell_finished", "bench_students"]


def test_bench_plugins_without_hooks_flag_has_no_hooks_table(capsys):
    assert bench_main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "| kind" in out and "| plugin" not in out


# ----------------------------------------------------------------------------- (g) recipes and overrides

RECIPES = """
[plugins]
builtin = []

[[recipe]]
kind = "teacher"
lr = 1e-4
epochs = 100
batch_size = 32
sx = 0.0

[[recipe]]
kind = "teacher"
models = ["posenet*"]
datasets = ["cambridge*"]
sx = -3.0
sq = -6.5

[[recipe]]
kind = "teacher"
profiles = ["quick"]
epochs = 2

[[recipe]]
kind = "teacher"
models = ["posenet_mobilenet"]
profiles = ["quick", "smoke"]
batch_size = 8

[[recipe]]
kind = "student"
lr = 1e-3
epochs = 7
"""


@pytest.fixture
def recipes(tmp_path, monkeypatch):
    path = write(tmp_path / "registry.toml", RECIPES)
    data = registry.load_registry(path)
    monkeypatch.setattr(registry, "load_registry", lambda path=None: data)
    return data


def merged(kind, model, dataset, profile):
    """The registry tables matching, merged in file order (what ``harness.api.recipes.resolve`` starts from)."""
    out = {}
    for table in registry.matching_tables(kind, model, dataset, profile):
        out.update({k: v for k, v in table.items() if k not in ("kind", "models", "datasets", "profiles")})
    return out


def test_recipe_tables_merge_in_file_order(recipes):
    assert merged("teacher", "mstransformer", "sevenscenes", "paper") == {"lr": 1e-4, "epochs": 100, "batch_size": 32, "sx": 0.0}
    cam = merged("teacher", "posenet_resnet50", "cambridge_kings", "paper")
    assert cam == {"lr": 1e-4, "epochs": 100, "batch_size": 32, "sx": -3.0, "sq": -6.5}
    quick = merged("teacher", "posenet_mobilenet", "cambridge", "quick")
    assert quick == {"lr": 1e-4, "epochs": 2, "batch_size": 8, "sx": -3.0, "sq": -6.5}
    assert merged("student", "pae", "synthetic", "quick") == {"lr": 1e-3, "epochs": 7}
    assert merged("refiner", "pae_rpr", "synthetic", "quick") == {}
    assert registry.profiles() == ["quick", "smoke"]
    numbered = registry.matching_tables("teacher", "posenet_mobilenet", "synthetic", "smoke", with_index=True)
    assert [n for n, _ in numbered] == [1, 4]


def test_registry_toml_lists_builtin_modules():
    modules = registry.builtin_plugin_modules()
    assert modules and all(m.startswith("aprbench.plugins.") for m in modules)
    assert len(set(modules)) == len(modules)


@pytest.mark.parametrize(
    "pair, key, value",
    [
        ("epochs=10", "epochs", 10),
        ("lr=1e-4", "lr", 1e-4),
        ("lr=0.5", "lr", 0.5),
        ("lr=.5", "lr", 0.5),
        ("sx=-3", "sx", -3),
        ("sq=-6.5", "sq", -6.5),
        ("shallow=true", "shallow", True),
        ('scenes=["room", "site"]', "scenes", ["room", "site"]),
        ("fractions=[0.3, 0.5]", "fractions", [0.3, 0.5]),
        ("name=posenet", "name", "posenet"),
        ('name="quoted string"', "name", "quoted string"),
        ("path=/data/7scenes", "path", "/data/7scenes"),
        ("expr=a=b", "expr", "a=b"),
        (" encode = ground_truth", "encode", "ground_truth"),
        ("empty=", "empty", ""),
    ],
)
def test_set_values_typing(pair, key, value):
    from aprbench.harness.api.recipes import parse_sets

    (out,) = parse_sets([pair])
    assert (out.kind, out.key, out.value) == (None, key, value)
    assert type(out.value) is type(value)
