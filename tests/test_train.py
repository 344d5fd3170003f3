"""The one training loop: resume after Ctrl-C or SIGKILL, schedules, DDP under torchrun."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from aprbench.harness.running.stages.teacher import TeacherTask, image_batches
from aprbench.harness.training.loop import TrainConfig, fit

REPO = Path(__file__).resolve().parent.parent


class Regress(nn.Module):
    """A tiny task: an MLP with dropout fits y = A x (dropout makes the RNG state matter)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2))

    def forward(self, batch):
        x, y = batch
        loss = (self.net(x) - y).square().mean()
        return loss, {"mse": float(loss.detach())}


def make_batches(n: int = 64, batch: int = 8, interrupt_at: tuple[int, int] | None = None):
    g = torch.Generator().manual_seed(123)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.randn(4, 2, generator=g)

    def batches(epoch: int, rank: int = 0, world: int = 1):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(epoch))
        for i in range(0, n, batch):
            if interrupt_at == (epoch, i // batch):
                raise KeyboardInterrupt
            idx = perm[i : i + batch]
            yield x[idx], y[idx]

    return batches


def fresh(seed: int = 0) -> Regress:
    torch.manual_seed(seed)
    return Regress()


def test_resume_after_interrupt_matches_uninterrupted(tmp_path):
    config = TrainConfig(epochs=6, batch_size=8, lr=1e-2, schedule="step", step_size=2, gamma=0.5, seed=3)
    ref = fresh()
    ref_hist = fit(ref, make_batches(), config, tmp_path / "ref", progress=False)

    task = fresh()
    with pytest.raises(KeyboardInterrupt):
        fit(task, make_batches(interrupt_at=(3, 4)), config, tmp_path / "run", progress=False)
    saved = torch.load(tmp_path / "run" / "last.pth", weights_only=True)
    assert saved["epoch"] == 3  # epochs 0-2 done, epoch 3 interrupted and not saved half-way
    task = fresh(seed=99)  # a new process: different init, everything comes from the checkpoint
    hist = fit(task, make_batches(), config, tmp_path / "run", progress=False)
    assert len(hist) == 6
    assert [h["mse"] for h in hist] == pytest.approx([h["mse"] for h in ref_hist], rel=1e-6)
    assert [h["lr"] for h in hist] == pytest.approx([h["lr"] for h in ref_hist])
    for (k, a), b in zip(ref.state_dict().items(), task.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k
    # a finished training run again does nothing and returns its history
    again = fit(fresh(seed=5), make_batches(), config, tmp_path / "run", progress=False)
    assert len(again) == 6


def test_interrupt_with_sparse_checkpoints_keeps_progress(tmp_path):
    config = TrainConfig(epochs=4, batch_size=8, lr=1e-2, checkpoint_every=10, seed=0)
    task = fresh()
    with pytest.raises(KeyboardInterrupt):
        fit(task, make_batches(interrupt_at=(2, 1)), config, tmp_path, progress=False)
    assert torch.load(tmp_path / "last.pth", weights_only=True)["epoch"] == 2  # epochs 0, 1 kept
    assert len(fit(fresh(), make_batches(), config, tmp_path, progress=False)) == 4


def test_cosine_schedule_and_grad_clip():
    config = TrainConfig(epochs=4, lr=1e-2, schedule="cosine", gamma=0.1, grad_clip=1.0)
    hist = fit(fresh(), make_batches(), config, None, progress=False)
    lrs = [h["lr"] for h in hist]
    assert lrs[0] == pytest.approx(1e-2) and all(a > b for a, b in zip(lrs, lrs[1:])) and lrs[-1] > 1e-3


def stepped(batches, n: int = 64, batch: int = 8):
    """``batches`` that know their steps per epoch (what ``onecycle`` needs)."""
    batches.steps_per_epoch = lambda world=1: n // batch
    return batches


def test_onecycle_warms_up_then_anneals_every_step_and_resumes(tmp_path):
    config = TrainConfig(epochs=6, batch_size=8, lr=1e-2, schedule="onecycle", warmup=0.25, gamma=0.01, seed=3)
    ref = fresh()
    lrs = [h["lr"] for h in fit(ref, stepped(make_batches()), config, tmp_path / "ref", progress=False)]
    # 8 steps per epoch, 48 in all: the peak (step 11) falls in epoch 1, each epoch's first step logged
    assert lrs[0] == pytest.approx(1e-2 / 25)
    assert lrs[1] == pytest.approx(1e-2 / 25 + (1e-2 - 1e-2 / 25) * (1 - math.cos(math.pi * 8 / 11)) / 2)
    assert lrs[2] > lrs[1] and all(a > b for a, b in zip(lrs[2:], lrs[3:])) and lrs[-1] < 0.2e-2
    total, peak = 47, 11  # the last step's rate is lr * gamma, cosine from the peak
    t = 5 * 8 - peak
    assert lrs[5] == pytest.approx(1e-4 + (1e-2 - 1e-4) * (1 + math.cos(math.pi * t / (total - peak))) / 2)

    task = fresh()
    with pytest.raises(KeyboardInterrupt):
        fit(task, stepped(make_batches(interrupt_at=(2, 3))), config, tmp_path / "run", progress=False)
    resumed = fresh(seed=99)
    hist = fit(resumed, stepped(make_batches()), config, tmp_path / "run", progress=False)
    assert [h["lr"] for h in hist] == pytest.approx(lrs)
    for (k, a), b in zip(ref.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k


class Drift(nn.Module):
    """loss = sum(w): Adam moves every weight by -lr each step, so the average has a closed form."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(3))

    def forward(self, batch):
        return self.w.sum(), {}


def test_ema_returns_the_moving_average_of_the_weights_and_resumes(tmp_path):
    config = TrainConfig(epochs=2, batch_size=8, lr=0.1, ema=0.8, step_size=0)
    drift = Drift()
    fit(drift, make_batches(n=40), config, None, progress=False)
    weights, average = [-0.1 * t for t in range(1, 11)], None  # 5 steps per epoch
    for w in weights:
        average = w if average is None else 0.8 * average + 0.2 * w
    assert torch.allclose(drift.w.detach(), torch.full((3,), average), atol=1e-5)
    assert abs(average - weights[-1]) > 0.1  # not the last weights
    # interrupted in epoch 1 and resumed: the same average (it is in the checkpoint)
    with pytest.raises(KeyboardInterrupt):
        fit(Drift(), make_batches(n=40, interrupt_at=(1, 2)), config, tmp_path, progress=False)
    resumed = Drift()
    fit(resumed, make_batches(n=40), config, tmp_path, progress=False)
    assert torch.allclose(resumed.w.detach(), drift.w.detach(), atol=1e-6)
    # validation sees the averaged weights, and training goes on from the model's own
    probe, seen = Drift(), []
    fit(probe, make_batches(n=40), config, None, progress=False, validate=lambda: seen.append(float(probe.w[0])) or {})
    first = -0.1 * 1
    for w in weights[1:5]:
        first = 0.8 * first + 0.2 * w
    assert seen == pytest.approx([first, average], abs=1e-5)


@pytest.mark.parametrize("epochs, n", [(1, 8), (1, 16), (1, 32), (2, 8), (3, 24)])
def test_onecycle_trains_a_handful_of_steps(epochs, n):
    config = TrainConfig(epochs=epochs, batch_size=8, lr=1e-2, schedule="onecycle", warmup=0.25)
    hist = fit(fresh(), stepped(make_batches(n=n), n=n), config, None, progress=False)
    assert len(hist) == epochs and all(math.isfinite(h["loss"]) for h in hist)


def test_onecycle_needs_batches_that_count_their_steps():
    from aprbench.harness.errors import BenchError

    with pytest.raises(BenchError, match="onecycle"):
        fit(fresh(), make_batches(), TrainConfig(epochs=2, schedule="onecycle"), None, progress=False)


def test_image_batches_shard_and_replay():
    images = torch.randint(0, 255, (20, 3, 8, 8), dtype=torch.uint8)
    poses = torch.randn(20, 7)
    scenes = torch.tensor([0] * 15 + [1] * 5)
    b = image_batches(images, poses, scenes, batch_size=4, seed=1, augment=True)
    first = list(b(2, 0, 1))
    assert len(first) == 5 and first[0][0].shape == (4, 3, 8, 8) and first[0][0].dtype == torch.float32
    again = list(b(2, 0, 1))
    assert all(torch.equal(x[0], y[0]) for x, y in zip(first, again))  # an epoch replays exactly
    r0, r1 = list(b(0, 0, 2)), list(b(0, 1, 2))
    assert len(r0) == len(r1) == 5 and r0[0][0].shape[0] == 2  # the global batch split over 2 ranks
    seen = torch.cat([p for _, p, _ in r0 + r1])
    assert len({tuple(r.tolist()) for r in seen}) == 20  # every frame once per epoch
    balanced = image_batches(images, poses, scenes, batch_size=20, seed=0, scene_balanced=True, augment=False)
    counts = torch.bincount(torch.cat([s for _, _, s in balanced(0)] + [s for e in range(1, 20) for _, _, s in balanced(e)]))
    assert abs(counts[0].item() - counts[1].item()) < 0.15 * counts.sum().item()


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time, torch
    sys.path.insert(0, {tests!r})
    from test_train import fresh, make_batches
    from aprbench.harness.training.loop import TrainConfig, fit
    slow = sys.argv[2] == "slow"
    batches = make_batches()
    def paced(epoch, rank, world):
        for b in batches(epoch, rank, world):
            if slow:
                time.sleep(0.05)
            yield b
    hist = fit(fresh(int(sys.argv[3])), paced, TrainConfig(epochs=8, batch_size=8, lr=1e-2, seed=3), sys.argv[1], progress=False)
    print("EPOCHS", len(hist))
    """
)


def test_killed_process_resumes(tmp_path):
    script = tmp_path / "train_kill.py"
    script.write_text(KILL_SCRIPT.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    ckpt = tmp_path / "ckpt"
    proc = subprocess.Popen([sys.executable, str(script), str(ckpt), "slow", "0"], env=env, cwd=REPO)
    deadline = time.time() + 60
    while time.time() < deadline:
        if (ckpt / "last.pth").exists() and torch.load(ckpt / "last.pth", weights_only=True)["epoch"] >= 2:
            break
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    epoch = torch.load(ckpt / "last.pth", weights_only=True)["epoch"]
    assert 2 <= epoch < 8
    out = subprocess.run([sys.executable, str(script), str(ckpt), "fast", "7"], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "EPOCHS 8" in out.stdout
    ref = fresh()
    fit(ref, make_batches(), TrainConfig(epochs=8, batch_size=8, lr=1e-2, seed=3), tmp_path / "ref", progress=False)
    resumed = torch.load(ckpt / "last.pth", weights_only=True)["task"]
    for k, v in ref.state_dict().items():
        assert torch.allclose(v, resumed[k], atol=1e-6), k
    # the learning curve has every epoch once, whatever the kill left in it
    _, rows = read_csv(ckpt / "log.csv")
    assert [int(r["epoch"]) for r in rows] == list(range(1, 9))
    _, ref_rows = read_csv(tmp_path / "ref" / "log.csv")
    assert [float(r["mse"]) for r in rows] == pytest.approx([float(r["mse"]) for r in ref_rows], rel=1e-5)


DDP_SCRIPT = textwrap.dedent(
    """
    import os, sys, torch
    sys.path.insert(0, {tests!r})
    import torch.distributed as dist
    from teacher_helpers import make_tiny_data
    from aprbench.harness.data.images import load_images
    from aprbench.harness.api.manager import get_registry
    from aprbench.harness.running.stages.teacher import TeacherTask, image_batches
    from aprbench.harness.training.loop import TrainConfig, fit
    from pathlib import Path
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    data = make_tiny_data(Path({data!r}), n_train=32, n_test=4).split("train")
    torch.manual_seed(rank)  # different initial weights per rank: DDP must broadcast rank 0's
    teacher = get_registry().build("teacher", "posenet", num_scenes=1, backbone="test_convnext")
    task = TeacherTask(teacher, 0.0, -1.0)
    batches = image_batches(load_images(data, 32), data.poses(), data.scene_ids(), batch_size=8, seed=0)
    hist = fit(task, batches, TrainConfig(epochs=2, batch_size=8, lr=1e-3), Path({ckpt!r}), progress=False)
    flat = torch.cat([p.detach().flatten() for p in task.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(2)]
    dist.all_gather(gathered, flat)
    if rank == 0:
        print("MAXDIFF", float((gathered[0] - gathered[1]).abs().max()), "EPOCHS", len(hist), "WORLD", dist.get_world_size())
    dist.destroy_process_group()
    """
)


def test_ddp_two_cpu_processes_train_one_model(tmp_path):
    from teacher_helpers import make_tiny_data

    make_tiny_data(tmp_path / "data", n_train=32, n_test=4)
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent), data=str(tmp_path / "data"),
                                        ckpt=str(tmp_path / "ckpt")))
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", str(script)], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(l for l in out.stdout.splitlines() if l.startswith("MAXDIFF"))
    _, diff, _, epochs, _, world = line.split()
    assert float(diff) == 0.0 and int(epochs) == 2 and int(world) == 2
    assert (tmp_path / "ckpt" / "last.pth").exists()  # rank 0 wrote the checkpoint
    assert [int(r["epoch"]) for r in read_csv(tmp_path / "ckpt" / "log.csv")[1]] == [1, 2]  # and the log, once


def test_teacher_task_logs_scene_accuracy():
    from aprbench.harness.api.manager import get_registry

    teacher = get_registry().build("teacher", "mstransformer", num_scenes=2, backbone="test_convnext", d_model=16,
                                   heads=2, ffn=16, enc_layers=1, dec_layers=1, head_hidden=16)
    task = TeacherTask(teacher, 0.0, -3.0, nll_weight=1.0)
    loss, logs = task((torch.randn(4, 3, 32, 32), torch.randn(4, 7), torch.tensor([0, 1, 0, 1])))
    assert loss.requires_grad and {"lx", "lq", "nll", "acc", "m", "deg"} <= set(logs)


# ----------------------------------------------------------------------------- learning curves

class PoseRegress(nn.Module):
    """A tiny pose task with Kendall's learned weighting: a linear map from 4 features to a 7-D pose."""

    def __init__(self, dropout: float = 0.2) -> None:
        super().__init__()
        from aprbench.harness.training.losses import PoseLoss

        self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 7))
        self.loss = PoseLoss(0.0, -1.0, learnable=True)

    def forward(self, batch):
        x, y = batch
        return self.loss(self.net(x), y)


def pose_batches(n: int = 48, batch: int = 8, interrupt_at: int | None = None):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(n, 4, generator=g)
    y = torch.cat([x[:, :3] * 2, nn.functional.normalize(torch.randn(n, 4, generator=g), dim=1)], 1)

    def batches(epoch: int, rank: int = 0, world: int = 1):
        if epoch == interrupt_at:
            raise KeyboardInterrupt
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(epoch))
        for i in range(0, n, batch):
            yield x[perm[i : i + batch]], y[perm[i : i + batch]]

    return batches, (x, y)


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    import csv

    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames), list(reader)


def test_fit_writes_epoch_log_with_loss_parts_weights_lr_time_and_validation(tmp_path):
    config = TrainConfig(epochs=4, batch_size=8, lr=1e-2, schedule="step", step_size=2, gamma=0.5, seed=1)
    batches, (x, y) = pose_batches()

    def validate():
        torch.rand(3)  # consumes random numbers: must not change the training
        est = task.net(x)
        return {"median_m": float((est[:, :3] - y[:, :3]).norm(dim=1).median())}

    torch.manual_seed(0)
    task = PoseRegress()
    hist = fit(task, batches, config, tmp_path / "ckpt", progress=False, validate=validate)
    columns, rows = read_csv(tmp_path / "ckpt" / "log.csv")
    assert columns == ["epoch", "loss", "lq", "lx", "sx", "sq", "lr", "seconds", "cpu_seconds", "val_median_m"]
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert [float(r["lr"]) for r in rows] == pytest.approx([1e-2, 1e-2, 5e-3, 5e-3])
    for row, h in zip(rows, hist):
        for key in ("loss", "lx", "lq", "sx", "sq", "seconds", "val_median_m"):
            assert float(row[key]) == pytest.approx(h[key], rel=1e-12), key
        assert float(row["seconds"]) > 0
    assert float(rows[-1]["sx"]) == pytest.approx(float(task.loss.sx.detach()))
    assert float(rows[-1]["sq"]) == pytest.approx(float(task.loss.sq.detach()))
    assert float(rows[0]["sq"]) != -1.0  # learned
    task.eval()
    with torch.no_grad():
        assert float(rows[-1]["val_median_m"]) == pytest.approx(validate()["median_m"], rel=1e-12)
    # validation leaves training untouched: same weights without it
    torch.manual_seed(0)
    plain = PoseRegress()
    fit(plain, pose_batches()[0], config, tmp_path / "plain", progress=False)
    for a, b in zip(task.state_dict().values(), plain.state_dict().values()):
        assert torch.equal(a, b)
    assert "val_median_m" not in read_csv(tmp_path / "plain" / "log.csv")[0]


def test_epoch_log_loss_parts_are_epoch_means(tmp_path):
    """With a learning rate of 0 every batch sees the same model: the logged parts are means over all frames."""
    batches, (x, y) = pose_batches()
    task = PoseRegress(dropout=0.0)
    fit(task, batches, TrainConfig(epochs=1, batch_size=8, lr=0.0), tmp_path, progress=False)
    (row,) = read_csv(tmp_path / "log.csv")[1]
    with torch.no_grad():
        est = task.net(x)
    q = nn.functional.normalize(est[:, 3:], dim=1)
    lx, lq = (est[:, :3] - y[:, :3]).norm(dim=1).mean(), (q - y[:, 3:]).norm(dim=1).mean()
    assert float(row["lx"]) == pytest.approx(float(lx), rel=1e-5)
    assert float(row["lq"]) == pytest.approx(float(lq), rel=1e-5)
    assert (float(row["sx"]), float(row["sq"])) == (0.0, -1.0)
    assert float(row["loss"]) == pytest.approx(float(lx) + float(lq) * math.e - 1.0, rel=1e-5)


def test_resumed_run_appends_to_the_log_without_repeating_epochs(tmp_path):
    config = TrainConfig(epochs=5, batch_size=8, lr=1e-2, checkpoint_every=2, seed=2)
    torch.manual_seed(0)
    fit(PoseRegress(), pose_batches()[0], config, tmp_path / "ref", progress=False)
    calls = []

    def every_other_epoch():  # a metric some epochs do not have: its cells stay empty
        calls.append(1)
        return {"m": 1.0} if len(calls) % 2 else {}

    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        fit(PoseRegress(), pose_batches(interrupt_at=3)[0], config, tmp_path / "run", progress=False,
            validate=every_other_epoch)
    _, rows = read_csv(tmp_path / "run" / "log.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    # the checkpoint holds epochs 1-3 (saved on interrupt); make the log run ahead of it, as after a SIGKILL
    with open(tmp_path / "run" / "log.csv", "a") as fh:
        fh.write("4,9,9,9,9,9,9,9\n")
    with open(tmp_path / "run" / "log.csv", "a") as fh:
        fh.write("5,0.1e")  # and a row cut short by the kill
    fit(PoseRegress(), pose_batches()[0], config, tmp_path / "run", progress=False)
    ref_columns, ref = read_csv(tmp_path / "ref" / "log.csv")
    columns, rows = read_csv(tmp_path / "run" / "log.csv")
    assert columns == [*ref_columns, "val_m"]
    assert [r["val_m"] for r in rows] == ["1.0", "", "1.0", "", ""]
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5]
    for a, b in zip(rows, ref):
        for key in ("loss", "lx", "lq", "sx", "sq", "lr"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-5), (a["epoch"], key)
    # a finished run called again leaves its log as it is
    before = (tmp_path / "run" / "log.csv").read_text()
    fit(PoseRegress(), pose_batches()[0], config, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "log.csv").read_text() == before


class Slow(Regress):
    """``Regress`` with a fixed 20 ms per step, so that the pace is known."""

    def forward(self, batch):
        time.sleep(0.02)
        return super().forward(batch)


def test_a_long_training_says_how_long_after_a_few_measured_steps(monkeypatch, capsys):
    from aprbench.harness.training.batches import Batches
    from aprbench.harness.training.loop import Pace

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    batches = Batches((x, x[:, :2]), batch_size=8, seed=0)
    assert batches.steps_per_epoch() == 8
    config = TrainConfig(epochs=5, batch_size=8, lr=1e-2)
    fit(fresh(), batches, config, desc="teacher slow", progress=False)
    assert "to train at this pace" not in capsys.readouterr().err  # under Pace.LONG_S: nothing said

    monkeypatch.setattr(Pace, "LONG_S", 0.4)
    fit(fresh(), batches, config, desc="teacher slow", progress=False)
    model = Slow()
    fit(model, batches, config, desc="teacher slow", progress=False)
    lines = [l for l in capsys.readouterr().err.splitlines() if "to train at this pace" in l]
    assert len(lines) == 1, lines  # said once per training; the fast one stays under the threshold
    assert lines[0].startswith("teacher slow: about ") and "on cpu (40 steps" in lines[0]
    seconds = float(lines[0].split(" s to train")[0].split("about ")[1])
    assert 0.6 < seconds < 5  # 36 steps left at ~20 ms
