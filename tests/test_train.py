"""The one training loop: resume after Ctrl-C or SIGKILL, schedules, DDP under torchrun."""

from __future__ import annotations

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

from harness.stages.teacher import ImageBatches, TeacherTask
from harness.train import TrainConfig, fit

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


def test_image_batches_shard_and_replay():
    images = torch.randint(0, 255, (20, 3, 8, 8), dtype=torch.uint8)
    poses = torch.randn(20, 7)
    scenes = torch.tensor([0] * 15 + [1] * 5)
    b = ImageBatches(images, poses, scenes, batch_size=4, seed=1, augment=True)
    first = list(b(2, 0, 1))
    assert len(first) == 5 and first[0][0].shape == (4, 3, 8, 8) and first[0][0].dtype == torch.float32
    again = list(b(2, 0, 1))
    assert all(torch.equal(x[0], y[0]) for x, y in zip(first, again))  # an epoch replays exactly
    r0, r1 = list(b(0, 0, 2)), list(b(0, 1, 2))
    assert len(r0) == len(r1) == 5 and r0[0][0].shape[0] == 2  # the global batch split over 2 ranks
    seen = torch.cat([p for _, p, _ in r0 + r1])
    assert len({tuple(r.tolist()) for r in seen}) == 20  # every frame once per epoch
    balanced = ImageBatches(images, poses, scenes, batch_size=20, seed=0, scene_balanced=True, augment=False)
    counts = torch.bincount(torch.cat([s for _, _, s in balanced(0)] + [s for e in range(1, 20) for _, _, s in balanced(e)]))
    assert abs(counts[0].item() - counts[1].item()) < 0.15 * counts.sum().item()


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time, torch
    sys.path.insert(0, {tests!r})
    from test_train import fresh, make_batches
    from harness.train import TrainConfig, fit
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


DDP_SCRIPT = textwrap.dedent(
    """
    import os, sys, torch
    sys.path.insert(0, {tests!r})
    import torch.distributed as dist
    from teacher_helpers import make_tiny_data
    from harness.images import load_images
    from harness.plugins import get_registry
    from harness.stages.teacher import ImageBatches, TeacherTask
    from harness.train import TrainConfig, fit
    from pathlib import Path
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    data = make_tiny_data(Path({data!r}), n_train=32, n_test=4).split("train")
    torch.manual_seed(rank)  # different initial weights per rank: DDP must broadcast rank 0's
    teacher = get_registry().build("teacher", "posenet", num_scenes=1, backbone="test_convnext")
    task = TeacherTask(teacher, 0.0, -1.0)
    batches = ImageBatches(load_images(data, 32), data.poses(), data.scene_ids(), batch_size=8, seed=0)
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


def test_teacher_task_logs_scene_accuracy():
    from harness.plugins import get_registry

    teacher = get_registry().build("teacher", "mstransformer", num_scenes=2, backbone="test_convnext", d_model=16,
                                   heads=2, ffn=16, enc_layers=1, dec_layers=1, head_hidden=16)
    task = TeacherTask(teacher, 0.0, -3.0, nll_weight=1.0)
    loss, logs = task((torch.randn(4, 3, 32, 32), torch.randn(4, 7), torch.tensor([0, 1, 0, 1])))
    assert loss.requires_grad and {"lx", "lq", "nll", "acc", "m", "deg"} <= set(logs)
