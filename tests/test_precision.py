"""``--device`` / ``--precision``: autocast training and evaluation, fingerprints, refusals (CPU; GPU paths are
the same code with another device)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from aprbench.harness.cli.main import main
from aprbench.harness.training.devices import autocast, check_precision, resolve_device
from aprbench.harness.errors import BenchError
from aprbench.harness.running.matrix import Cell, Plan, TeacherSpec, cell_fingerprint
from aprbench.harness.api.manager import get_manager
from aprbench.harness.api.recipes import as_overrides
from aprbench.harness.running.runner import MatrixRunner
from aprbench.harness.running.stages import teacher as stage
from aprbench.harness.running.stages.context import artifact_fingerprint
from aprbench.harness.running.stages.teacher import obtain_teacher, predict, teacher_outputs
from aprbench.harness.store.hdf5 import Store, read_h5
from teacher_helpers import TINY_POSENET, make_ctx, make_tiny_data


pytestmark = pytest.mark.usefixtures("one_thread")


def test_bf16_autocast_trains_and_evaluates_a_teacher_on_the_cpu(tmp_path, monkeypatch):
    data = make_tiny_data(tmp_path / "data", n_train=96, n_test=24)
    ctx = make_ctx(tmp_path, data, **{**TINY_POSENET, "epochs": 4})
    ctx.precision = "bf16"
    seen = []  # (autocast on, dtype of the network's output) in every training step

    def spy(self, batch):
        loss, logs = real(self, batch)
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"), loss.dtype))
        return loss, logs

    real = stage.TeacherTask.forward
    monkeypatch.setattr(stage.TeacherTask, "forward", spy)
    art = obtain_teacher(ctx, "posenet-mobilenet")
    assert seen and all(on and dtype == torch.bfloat16 for on, dtype, _ in seen)
    assert all(loss_dtype == torch.float32 for *_, loss_dtype in seen)  # the pose loss is computed in float32
    meta = json.loads(art.path.with_suffix(".json").read_text())
    assert meta["precision"] == "bf16" and meta["device"] == "cpu"
    assert meta["final"]["loss"] < meta["first"]["loss"]  # it learns under autocast
    assert all(v.dtype == torch.float32 for v in art.model.state_dict().values() if v.is_floating_point())

    # evaluation: stored outputs are float32 and finite, close to the same weights run in float32, yet not equal
    out = teacher_outputs(ctx, art, "test")
    assert all(out[k].dtype == np.float32 for k in ("pose_est", "latent_x", "latent_q", "scene_logp"))
    assert np.isfinite(out["pose_est"]).all() and np.isfinite(out["latent_x"]).all()
    from aprbench.harness.data.images import load_images

    images = load_images(data.split("test"), art.recipe.task.image_size, ctx.store)
    ref = predict(art.model, images, device=torch.device("cpu"), precision="fp32")
    scale = float(np.abs(ref["latent_x"]).max())
    assert np.abs(out["latent_x"] - ref["latent_x"]).max() < 0.05 * scale
    assert np.abs(out["pose_est"][:, :3] - ref["pose_est"][:, :3]).max() < 0.05
    assert not np.array_equal(out["latent_x"], ref["latent_x"])  # bf16 really ran

    # another artifact, other outputs; the fp32 fingerprint is the plain formula plus the device kind
    ctx32 = make_ctx(tmp_path, data, **{**TINY_POSENET, "epochs": 4})
    recipe = ctx32.recipe("teacher", "posenet-mobilenet")
    plain = artifact_fingerprint(recipe, {"data": data.split("train").fingerprint()}, {"device": "cpu"})
    assert art.fingerprint != plain
    assert art.fingerprint == artifact_fingerprint(recipe, {"data": data.split("train").fingerprint()},
                                                   {"precision": "bf16", "device": "cpu"})


def test_fp16_off_cuda_and_missing_devices_are_refused_before_any_work(tmp_path, capsys):
    work = tmp_path / "work"
    for command in (["train", "teacher", "posenet-mobilenet"], ["run", "--teacher", "posenet-mobilenet"]):
        assert main(["--workdir", str(work), *command, "--device", "cpu", "--precision", "fp16"]) == 2
        err = capsys.readouterr().err.strip()
        assert err == ("bench: error: --precision fp16 needs a CUDA device (this run uses cpu); use --precision bf16 "
                       "(bfloat16 autocast works on the CPU) or fp32")
    assert main(["--workdir", str(work), "eval", "teacher", "posenet", "--device", "tpu"]) == 2
    assert "--device tpu: not a device; expected auto, cpu, cuda, cuda:N or mps" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["--workdir", str(work), "train", "student", "pae", "--teacher", "posenet", "--device", "cuda"]) == 2
        assert capsys.readouterr().err.strip() == ("bench: error: --device cuda: no CUDA device here "
                                                   "(torch.cuda.is_available() is False)")
    assert not (work / "data").exists()  # refused before the dataset was rendered
    with pytest.raises(SystemExit):  # argparse: not a precision
        main(["train", "teacher", "posenet", "--precision", "fp8"])
    assert "invalid choice: 'fp8'" in capsys.readouterr().err


def test_devices_resolve_and_autocast_is_only_on_for_reduced_precision():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == (torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available()
                                      else torch.device("cpu"))
    cpu = torch.device("cpu")
    with autocast(cpu, "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast(cpu, "bf16"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert torch.nn.Linear(4, 2)(torch.randn(3, 4)).dtype == torch.bfloat16
    assert check_precision("bf16", cpu) == "bf16"
    with pytest.raises(BenchError, match="needs a CUDA device"):
        check_precision("fp16", cpu)


def test_precision_makes_other_cells_and_is_recorded_in_their_provenance(tmp_path):
    data = make_tiny_data(tmp_path / "data", n_train=48, n_test=12)
    manager = get_manager()
    overrides = as_overrides({"teacher": {**TINY_POSENET, "epochs": 1}})
    cell = Cell("tiny", ("a",), 1.0, TeacherSpec("posenet-mobilenet"))
    runners = {p: MatrixRunner(Store(tmp_path / "work"), manager, data, "tiny", "quick", overrides, progress=False,
                               device=torch.device("cpu"), precision=p) for p in ("fp32", "bf16")}
    fps = {p: r.fingerprint(cell) for p, r in runners.items()}
    assert fps["fp32"] != fps["bf16"]
    r32 = runners["fp32"]
    models = {kind: m["fingerprint"] for kind, m in r32.models(cell).items()}
    assert fps["fp32"] == cell_fingerprint(cell, r32.context(cell).data.fingerprint(), r32.recipes(cell),
                                           {"teacher": None}, "fp32", models)  # fp32: the fingerprint of a plain run
    summary, _ = runners["bf16"].run(Plan([cell]))
    assert summary.computed == 1 and not summary.failed
    arrays, attrs = read_h5(runners["bf16"].store.cell_path(fps["bf16"]))
    assert attrs["provenance"]["precision"] == "bf16" and attrs["provenance"]["device"] == "cpu"
    assert arrays["pose_est"].dtype == np.float32 and np.isfinite(arrays["pose_est"]).all()
    assert not runners["fp32"].store.cell_path(fps["fp32"]).exists()  # an fp32 run would compute its own
