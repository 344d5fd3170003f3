"""Third-party models as first-class citizens: recipes from plugins, declared keys, contracts checked where they
are crossed (issue 25). Everything runs the CLI in-process, or the harness's own functions, with a plugin file."""

from __future__ import annotations

import re
import textwrap
import time
from pathlib import Path

import pytest

import aprbench.harness.api.manager as plugin_manager
from aprbench.harness.api import recipes as R
from aprbench.harness.api.contracts import ContractError, probe
from aprbench.harness.api.manager import get_registry
from aprbench.harness.cli.main import main
from aprbench.harness.errors import BenchError
from aprbench.harness.running.stages.context import build_named

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = "synthetic:frames_per_sequence=24,train_sequences=3,test_sequences=1"

PLUGIN = '''
"""A third-party teacher (README style, **config), a neighbour-mean refiner and a recipe for the teacher."""
import torch
from torch import nn

from aprbench.harness import Latents, PoseIndexRefiner, Teacher, hookimpl

DIM = 32


class TinyAPR(Teacher):
    def __init__(self, num_scenes: int = 1, latent_dim: int = DIM, width: int = 8, hidden: int = 16, **config):
        super().__init__()
        self.latent_dim, self.width = latent_dim, width
        self.features = nn.Sequential(nn.Conv2d(3, width, 5, stride=4, padding=2), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, hidden), nn.ReLU())
        self.x_latent = nn.Sequential(nn.Linear(hidden, latent_dim), nn.ReLU())
        self.q_latent = nn.Sequential(nn.Linear(hidden, latent_dim), nn.ReLU())
        self.x_head, self.q_head = nn.Linear(latent_dim, 3), nn.Linear(latent_dim, 4)

    def encode(self, images, scene=None):
        f = self.features(images)
        return Latents(self.x_latent(f)[:, :ENCODE_COLUMNS], self.q_latent(f))

    def decode(self, latent_x, latent_q):
        return torch.cat([self.x_head(latent_x), self.q_head(latent_q)], dim=1)[:, :DECODE_COLUMNS]

    def heads(self):
        return [self.x_head, self.q_head]


ENCODE_COLUMNS, DECODE_COLUMNS = DIM, 7


class NeighbourMean(PoseIndexRefiner):
    """Each estimate's position becomes the mean of its k nearest training positions."""

    def __init__(self, latent_dim: int = 256, k: int = 5):
        super().__init__()
        self.latent_dim, self.k = latent_dim, k
        self.reserve_index(0)

    def configure(self, recipe):
        self.configured = dict(recipe)

    def reserve_index(self, n):
        self.register_buffer("index_pose", torch.zeros(n, 7))

    def build_index(self, poses, scene, student):
        self.reserve_index(len(poses))
        self.index_pose.copy_(poses)

    def refine_batch(self, poses, query_x, query_q, scene):
        d = torch.cdist(poses[:, :3], self.index_pose[:, :3])
        near = d.topk(min(self.k, len(self.index_pose)), largest=False).indices
        out = torch.cat([self.index_pose[near, :3].mean(1), poses[:, 3:]], dim=1)
        return out[:, :REFINE_COLUMNS]


REFINE_COLUMNS = 7


@hookimpl
def bench_teachers():
    return {"tp-apr": TinyAPR}


@hookimpl
def bench_refiners():
    return {"tp-nbr-mean": NeighbourMean}


@hookimpl
def bench_recipes():
    return [{"kind": "teacher", "models": ["tp-apr"], "profiles": ["quick"], "epochs": 1, "batch_size": 16,
             "lr": 2e-3, "sq": -1.0, "hidden": 24},
            {"kind": "teacher", "models": ["tp-*"], "profiles": ["tp-smoke"], "epochs": 2}]
'''


@pytest.fixture(autouse=True)
def fresh_manager(monkeypatch):
    monkeypatch.setattr(plugin_manager, "_MANAGER", None)
    yield


def plugin_file(tmp_path: Path, **constants: int) -> str:
    """The plugin above written to a file, with module constants changed (to break a contract)."""
    text = textwrap.dedent(PLUGIN)
    for name, value in constants.items():
        text, n = re.subn(rf"^{name} = .*$", f"{name} = {value}", text, flags=re.M)
        if not n:
            text = text.replace("ENCODE_COLUMNS, DECODE_COLUMNS = DIM, 7", f"ENCODE_COLUMNS, DECODE_COLUMNS = DIM, 7\n{name} = {value}")
    path = tmp_path / f"tp_plugin_{abs(hash(tuple(constants.items())))}.py"
    path.write_text(text)
    return str(path)


def bench(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


# ----------------------------------------------------------------------------- recipes from plugins


def test_plugin_recipe_is_resolved_and_shown_with_its_source(tmp_path, capsys):
    plugin = plugin_file(tmp_path)
    reg = get_registry([plugin])
    r = R.resolve(reg, "teacher", "tp-apr", "synthetic", "quick")
    assert (r.train.epochs, r.train.batch_size, r.train.lr, r.task.sq) == (1, 16, 2e-3, -1.0)
    assert r.model == {"hidden": 24}  # the plugin's table names its model: its value reaches the factory
    assert r.sources["epochs"].startswith(f"plugin --plugin:{plugin} recipe #1 (kind=teacher models=tp-apr")
    assert r.sources["image_size"].startswith("registry.toml recipe #1")  # generic task key still applies
    assert R.resolve(reg, "teacher", "tp-apr", "synthetic", "tp-smoke").train.epochs == 2  # a plugin's own profile

    rc, out, err = bench(capsys, "--plugin", plugin, "recipe", "teacher", "tp-apr", "--workdir", tmp_path / "w")
    assert rc == 0, err
    row = next(line for line in out.splitlines() if "| epochs " in line)
    assert "| int " in row and f"plugin --plugin:{plugin} recipe #1" in row
    width = next(line for line in out.splitlines() if "| width " in line)
    assert re.search(r"\| model\s+\| width\s+\| int\s+\| 8\s+\| 8\s+\| default \(TinyAPR\)", width), width
    assert "no recipe table names" not in out
    rc, out, err = bench(capsys, "--plugin", plugin, "recipe", "teacher", "tp-apr", "--profile", "paper")
    assert rc == 0 and "no recipe table names teacher tp-apr for profile 'paper': it gets the generic" in out


def test_set_name_key_sets_one_model_and_wins_over_kind_and_bare_keys(tmp_path):
    reg = get_registry([plugin_file(tmp_path)])
    sets = R.parse_sets(["tp-apr.width=4", "tp-apr.epochs=3", "teacher.epochs=5", "posenet-mobilenet.lr=0.5", "lr=0.25"])
    used = {"teacher": ["tp-apr", "posenet-mobilenet"]}
    R.check_overrides(reg, sets, used)
    tp = R.resolve(reg, "teacher", "tp-apr", "synthetic", "quick", sets)
    pn = R.resolve(reg, "teacher", "posenet-mobilenet", "synthetic", "quick", sets)
    assert tp.model["width"] == 4 and tp.sources["width"] == "--set tp-apr.width=4"
    assert tp.train.epochs == 3 and pn.train.epochs == 5  # NAME.KEY wins over KIND.KEY, whatever the order
    assert tp.train.lr == 0.25 and pn.train.lr == 0.5
    with pytest.raises(BenchError, match=r"'tp-aprr' is neither a kind .* nor a model this command uses .*did you mean 'tp-apr'"):
        R.check_overrides(reg, R.parse_sets(["tp-aprr.lr=1"]), used)
    with pytest.raises(BenchError, match="tp-apr has no recipe key 'widht'; did you mean 'width'"):
        R.resolve(reg, "teacher", "tp-apr", "synthetic", "quick", R.parse_sets(["tp-apr.widht=3"]))


def test_plan_says_which_plugin_model_gets_the_generic_recipe_once(tmp_path, capsys):
    plugin = plugin_file(tmp_path)
    rc, out, err = bench(capsys, "--plugin", plugin, "--workdir", tmp_path / "w", "run", "--dataset", TINY,
                         "--scenes", "room", "--teacher", "tp-apr", "--student", "pae", "--refiner", "none",
                         "tp-nbr-mean", "--iterations", "0,1", "--set", "student.epochs=1", "--no-progress", "--no-report")
    assert rc == 0, err[-3000:]
    text = out + err
    assert text.count("note: no recipe names refiner tp-nbr-mean for profile 'quick'") == 1
    assert "note: no recipe names teacher tp-apr" not in text  # its plugin ships one
    assert "tp-nbr-mean" in out and "3 cell(s) in this run" in out
    rc, out, err = bench(capsys, "--workdir", tmp_path / "w", "logs", "tp-nbr-mean")
    assert rc == 2 and "refiner tp-nbr-mean has no training loop" in err and "trained before" not in err


# ----------------------------------------------------------------------------- declared keys


def test_mistyped_posenet_key_is_refused_at_once_before_any_data(tmp_path, capsys):
    start = time.perf_counter()
    rc, out, err = bench(capsys, "--workdir", tmp_path / "w", "run", "--dataset", TINY, "--teacher", "posenet-mobilenet",
                         "--set", "teacher.droput=0.2")
    took = time.perf_counter() - start
    assert rc == 2 and "teacher posenet-mobilenet has no recipe key 'droput'; did you mean 'dropout'?" in err
    assert took < 5, f"refused after {took:.1f} s"
    assert not (tmp_path / "w" / "data").exists()  # nothing rendered
    rc, out, err = bench(capsys, "--workdir", tmp_path / "w", "recipe", "teacher", "posenet-mobilenet")
    for key, kind, default in (("drop_rate", "float", "0.0"), ("dropout", "float", "0.1"), ("backbone", "str", "'mobilenetv2_100'")):
        assert re.search(rf"\| model\s+\| {key}\s+\| {kind}\s+\|[^|]+\| {re.escape(default)}\s+\|", out), key
    rc, out, err = bench(capsys, "--workdir", tmp_path / "w", "recipe", "teacher", "posenet-mobilenet", "--set",
                         "teacher.dropout=abc")
    assert rc == 2 and "dropout expects a float (default 0.1), got str 'abc'" in err


def test_timm_key_declared_by_posenet_reaches_the_backbone():
    model = build_named(get_registry(), "teacher", "posenet-mobilenet", overrides={"teacher": {"drop_rate": 0.3}})
    assert model.backbone.drop_rate == 0.3


def test_mistyped_key_of_a_kwargs_plugin_is_refused(tmp_path, capsys):
    plugin = plugin_file(tmp_path)
    rc, out, err = bench(capsys, "--plugin", plugin, "--workdir", tmp_path / "w", "run", "--dataset", TINY,
                         "--teacher", "tp-apr", "--set", "teacher.hiden=256")
    assert rc == 2 and "teacher tp-apr has no recipe key 'hiden'; did you mean 'hidden'?" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "w" / "data").exists()


def test_refiner_receives_only_its_keys_and_keeps_its_defaults(tmp_path):
    reg = get_registry([plugin_file(tmp_path)])
    r = R.resolve(reg, "refiner", "tp-nbr-mean", "synthetic", "quick")
    assert r.task.k == 2 and r.model == {}  # the generic k = 2 is the RPR's task key, not this model's
    model = build_named(reg, "refiner", "tp-nbr-mean", latent_dim=32)
    assert model.k == 5 and model.latent_dim == 32
    model = build_named(reg, "refiner", "tp-nbr-mean", overrides={"refiner": {"k": 3}}, latent_dim=32)
    assert model.k == 3
    assert R.resolve(reg, "refiner", "pae-rpr", "synthetic", "quick").model["d_model"] == 128  # built-ins unchanged


# ----------------------------------------------------------------------------- contracts


@pytest.mark.parametrize("constants, kind, name, message", [
    ({"DECODE_COLUMNS": 6}, "teacher", "tp-apr",
     "teacher plugin 'tp-apr' (--plugin:{}): decode(latents of shape (2, 32) x 2) returned a tensor of shape (2, 6); "
     "expected a tensor of shape (2, 7) (N x [tx, ty, tz, qw, qx, qy, qz])"),
    ({"ENCODE_COLUMNS": 16}, "teacher", "tp-apr",
     "teacher plugin 'tp-apr' (--plugin:{}): encode(images of shape (2, 3, 64, 64)) returned a Latents of 3: "
     "(a tensor of shape (2, 16), a tensor of shape (2, 32), a NoneType); expected two latents of shape (2, 32) "
     "(latent_dim = 32)"),
])
def test_broken_teacher_contract_is_one_line_naming_it(tmp_path, constants, kind, name, message):
    plugin = plugin_file(tmp_path, **constants)
    reg = get_registry([plugin])
    model = build_named(reg, kind, name)
    with pytest.raises(ContractError) as exc:
        probe(kind, name, f"--plugin:{plugin}", model)
    assert str(exc.value) == message.format(plugin)


def test_broken_refiner_contract_is_named_at_its_iteration(tmp_path, capsys):
    plugin = plugin_file(tmp_path, REFINE_COLUMNS=6)
    rc, out, err = bench(capsys, "--plugin", plugin, "--workdir", tmp_path / "w", "run", "--dataset", TINY,
                         "--scenes", "room", "--teacher", "tp-apr", "--student", "pae", "--refiner", "tp-nbr-mean",
                         "--iterations", "1", "--set", "student.epochs=1", "--no-progress", "--no-report")
    assert rc == 1
    assert (f"refiner plugin 'tp-nbr-mean' (--plugin:{plugin}): refine_batch(poses of shape (24, 7)) returned a "
            "tensor of shape (24, 6); expected a tensor of shape (24, 7)") in err


def test_broken_student_and_decoder_contracts(tmp_path):
    from torch import nn
    import torch

    class OneLatent(nn.Module):
        latent_dim = 8

        def forward(self, poses, scene=None):
            return torch.zeros(len(poses), 8)

    class SmallImages(nn.Module):
        latent_dim, image_size = 8, 16

        def forward(self, x, q):
            return torch.zeros(len(x), 3, 8, 8)

    with pytest.raises(ContractError, match=r"^student plugin 'one' \(x\): forward\(poses of shape \(2, 7\)\) returned "
                       r"a tensor of shape \(2, 8\); expected two latents of shape \(2, 8\)"):
        probe("student", "one", "x", OneLatent())
    with pytest.raises(ContractError, match=r"^decoder plugin 'small' \(x\): .* returned a tensor of shape "
                       r"\(2, 3, 8, 8\); expected images of shape \(2, 3, 16, 16\)"):
        probe("decoder", "small", "x", SmallImages())


def test_broken_dataset_contract_and_bench_data_check(tmp_path, capsys):
    source = textwrap.dedent('''
        import pandas as pd
        from aprbench.harness import PoseData, hookimpl

        def make(store=None, scene_id=0, **options):
            rows = [["a", "train", 1, "x.png", 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, scene_id]]
            labels = pd.DataFrame(rows, columns=["scene", "split", "seq", "img_path", "t1", "t2", "t3",
                                                 "q1", "q2", "q3", "q4", "scene_id"])
            return PoseData("tp-data", store.root, labels, ["a"])

        @hookimpl
        def bench_datasets():
            return {"tp-data": make}
    ''')
    plugin = tmp_path / "tp_data.py"
    plugin.write_text(source)
    work = tmp_path / "w"
    rc, out, err = bench(capsys, "--plugin", plugin, "--workdir", work, "data", "check", "--dataset", "tp-data:scene_id=3")
    assert rc == 1
    assert (f"dataset plugin 'tp-data' (--plugin:{plugin}): its factory returned labels row 1: scene 'a' with scene_id 3; "
            "expected scene_id = the index of scene in PoseData.scenes") in err
    rc, out, err = bench(capsys, "--plugin", plugin, "--workdir", work, "data", "check", "--dataset", "tp-data")
    assert rc == 1 and "x.png" in err  # the contract holds; the image file is missing
    work.mkdir(exist_ok=True)
    from PIL import Image

    Image.new("RGB", (8, 8)).save(work / "x.png")
    rc, out, err = bench(capsys, "--plugin", plugin, "--workdir", work, "data", "check", "--dataset", "tp-data")
    assert rc == 0 and "OK" in out and f"dataset tp-data (--plugin:{plugin})" in out


# ----------------------------------------------------------------------------- smaller items


def test_iterations_error_names_the_option_and_refiner_help_lists_pae_knn(tmp_path, capsys):
    rc, out, err = bench(capsys, "--workdir", tmp_path, "run", "--teacher", "posenet-mobilenet", "--iterations", "abc")
    assert rc == 2 and "--iterations abc: could not read 'abc' as a comma-separated list of int" in err
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "pae-knn" in capsys.readouterr().out


# ----------------------------------------------------------------------------- given weights define the architecture


def _one_scene_labels(root: Path, scene: str, n: int = 3) -> Path:
    """``n`` test frames of ``scene`` as a reference label file (the reference's abs_7scenes_pose.csv_<scene>_test.csv
    form), with 256-px images (Resize(256) is then the identity and CenterCrop(224) exact)."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    rng = np.random.default_rng(1)
    rows = []
    for i in range(n):
        rel = f"{scene}/seq-01/frame-{i:06d}.color.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(root / rel)
        rows.append([scene, "test", 1, rel, 0.1 * i, 0.2, 0.3, 1.0, 0.0, 0.0, 0.0])
    path = root / f"abs_7scenes_pose.csv_{scene}_test.csv"
    pd.DataFrame(rows, columns=["scene", "split", "seq", "img_path", "t1", "t2", "t3", "q1", "q2", "q3", "q4"]).to_csv(
        path, index=False)
    return path


def test_seven_scene_reference_checkpoint_runs_on_one_scene_label_file(tmp_path, capsys):
    """The reference's documented protocol: its 7-scene MS-Transformer tested on one scene's label file, no --set.
    The checkpoint's scene classifier is zeroed, so it picks its first scene (chess) for every frame of fire: the
    cell must score that against fire's index in the model's own order (1; accuracy 0), not in the file's (0)."""
    pytest.importorskip("efficientnet_pytorch")
    import numpy as np
    from test_reference_parity import RefEMSTransPoseNet, _randomise

    from aprbench.harness.store.hdf5 import read_h5

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    ref = _randomise(RefEMSTransPoseNet(scenes=7, d=256, h=8, ffn=256, n_enc=6, n_dec=6))
    with torch.no_grad():
        ref.scene_embed.weight.zero_()
        ref.scene_embed.bias.zero_()
    scene = "fire"
    ckpt = tmp_path / "7scenes_ems.pth"
    torch.save(ref.state_dict(), ckpt)
    labels = _one_scene_labels(tmp_path / "data", scene)
    rc, out, err = bench(capsys, "--workdir", tmp_path / "w", "run", "--profile", "paper", "--dataset",
                         f"labels:root={tmp_path / 'data'},labels={labels}", "--teacher", f"mstransformer={ckpt}",
                         "--no-progress", "--no-report")
    assert rc == 0, err[-3000:]
    assert f"teacher mstransformer: num_scenes = 7 from the weights in {ckpt} (the data has 1 scene(s): {scene})" in err
    (cell,) = (tmp_path / "w" / "cells").glob("*.h5")
    arrays, attrs = read_h5(cell)
    assert attrs["result"]["scene_accuracy"] == 0.0
    # frame by frame, the reference's own forward pass on the same crops
    from PIL import Image

    frames = sorted((tmp_path / "data" / scene).rglob("*.png"))
    images = torch.stack([torch.from_numpy(np.array(Image.open(f))).permute(2, 0, 1).float() / 255 for f in frames])
    images = images[:, :, 16:240, 16:240]
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    with torch.no_grad():
        pose, *_ = ref((images - mean) / std)
    pose = torch.cat([pose[:, :3], torch.nn.functional.normalize(pose[:, 3:], dim=1)], 1)  # cells store unit quaternions
    assert np.abs(arrays["pose_est"][0] - pose.numpy()).max() < 1e-4


def test_malformed_plugin_recipe_table_is_one_line_naming_the_plugin(tmp_path, capsys):
    plugin = tmp_path / "tp_bad_recipes.py"
    plugin.write_text("from aprbench.harness import hookimpl\n\n@hookimpl\ndef bench_recipes():\n"
                      "    return [{'kind': 'teacher', 'models': ['x'], 'epochs': 1}, {'kind': 'teachr', 'epochs': 2}]\n")
    rc, out, err = bench(capsys, "--plugin", plugin, "recipe", "teacher", "posenet-mobilenet")
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert (f"plugin --plugin:{plugin}: bench_recipes() table #2: 'kind' must be one of teacher, student, refiner, "
            "decoder, got 'teachr'") in err
