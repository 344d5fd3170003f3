"""``bench logs``: learning curves of trained artifacts found by name, printed and plotted."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from aprbench.harness.training.losses import PoseLoss
from aprbench.harness.training.loop import TrainConfig, fit
from conftest import bench_in_process

REPO = Path(__file__).resolve().parent.parent
FP_A, FP_B = "0123456789abcdef", "fedcba9876543210"


class Task(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(4, 7)
        self.loss = PoseLoss(0.0, -2.0)

    def forward(self, batch):
        x, y = batch
        return self.loss(self.net(x), y)


def batches(epoch: int, rank: int = 0, world: int = 1):
    g = torch.Generator().manual_seed(epoch)
    for _ in range(3):
        yield torch.randn(8, 4, generator=g), torch.randn(8, 7, generator=g)


def train(folder: Path, epochs: int, lr: float = 1e-2, validate=None) -> None:
    torch.manual_seed(0)
    fit(Task(), batches, TrainConfig(epochs=epochs, lr=lr), folder, progress=False, validate=validate)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """Two fingerprints of teacher ``tiny`` (one in two stages, one validated), a student without logs."""
    work = tmp_path_factory.mktemp("work")
    a = work / "artifacts" / "teacher" / f"tiny-{FP_A}"
    train(a / "checkpoints" / "stage0", 3)
    train(a / "checkpoints" / "stage1", 2, lr=1e-3)
    (a / "weights.json").write_text(json.dumps({"dataset": "synthetic", "scenes": ["room"]}))
    b = work / "artifacts" / "teacher" / f"tiny-{FP_B}"
    train(b / "checkpoints", 4, validate=lambda: {"median_m": 0.5})
    (work / "artifacts" / "student" / f"pae-{FP_A}").mkdir(parents=True)
    return work


def bench(work: Path, *args: str, cwd: Path | None = None, process: bool = False) -> subprocess.CompletedProcess:
    """``bench --workdir WORK ARGS`` in this process, or with ``process`` in a fresh one that prints whether
    torch got imported."""
    if not process:
        return bench_in_process("--workdir", work, *args, env={"OMP_NUM_THREADS": "1"}, cwd=cwd or work)
    code = ("import sys; from aprbench.harness.cli.main import main; rc = main(sys.argv[1:]); "
            "print('TORCH', 'torch' in sys.modules); sys.exit(rc)")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code, "--workdir", str(work), *args], capture_output=True,
                          text=True, env=env, cwd=cwd or work, timeout=120)


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def table(stdout: str) -> list[dict[str, str]]:
    """The github-format tables of the output, as dicts per row."""
    out, header = [], None
    for line in stdout.splitlines():
        if not line.startswith("|") or line.startswith("|--"):
            header = None if not line.startswith("|") else header
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if header is None:
            header = cells
        else:
            out.append(dict(zip(header, cells)))
    return out


def test_logs_by_name_prints_last_epochs_and_plots_every_fingerprint(work):
    out = bench(work, "logs", "tiny", "--last", "2", process=True)
    assert out.returncode == 0, out.stderr
    assert "TORCH False" in out.stdout  # the command loads neither torch nor the store
    a, b = work / "artifacts" / "teacher" / f"tiny-{FP_A}", work / "artifacts" / "teacher" / f"tiny-{FP_B}"
    assert f"teacher tiny (synthetic, room) fp {FP_A}: {a}" in out.stdout
    assert f"teacher tiny fp {FP_B}: {b}" in out.stdout
    printed = table(out.stdout)
    assert len(printed) == 4  # two epochs of each artifact
    # artifact A: the last two epochs are stage1's epochs 1 and 2; B: epochs 3 and 4 with their validation metric
    stage1 = rows(a / "checkpoints" / "stage1" / "log.csv")
    assert [(r["stage"], r["epoch"]) for r in printed[:2]] == [("checkpoints/stage1", "1"), ("checkpoints/stage1", "2")]
    for got, want in zip(printed[:2], stage1):
        for key in ("loss", "lx", "lq", "sx", "sq", "lr"):
            assert float(got[key]) == pytest.approx(float(want[key]), rel=1e-3), key
    want_b = rows(b / "checkpoints" / "log.csv")[2:]
    assert [r["epoch"] for r in printed[2:]] == ["3", "4"] and "stage" not in printed[2]
    assert [float(r["loss"]) for r in printed[2:]] == pytest.approx([float(r["loss"]) for r in want_b], rel=1e-3)
    assert [r["val_median_m"] for r in printed[2:]] == ["0.5", "0.5"]
    for folder in (a, b):
        png = folder / "curves.png"
        assert f"curves: {png}" in out.stdout
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        import matplotlib.image

        h, w, _ = matplotlib.image.imread(png).shape
        assert h > 300 and w > 300


def test_logs_by_kind_fingerprint_prefix_and_folder(work, tmp_path):
    for target in (f"teacher/tiny-{FP_B[:6]}", f"tiny-{FP_B}", str(work / "artifacts" / "teacher" / f"tiny-{FP_B}")):
        out = bench(work, "logs", target, "--last", "0", "--out", str(tmp_path / "png"))
        assert out.returncode == 0, out.stderr
        assert f"fp {FP_B}" in out.stdout and f"fp {FP_A}" not in out.stdout
        assert [r["epoch"] for r in table(out.stdout)] == ["1", "2", "3", "4"]
        assert (tmp_path / "png" / f"teacher-tiny-{FP_B}.png").is_file()


def test_logs_out_never_overwrites_a_file_it_did_not_write(work, tmp_path):
    out_dir = tmp_path / "figures"
    out_dir.mkdir()
    theirs = out_dir / f"teacher-tiny-{FP_B}.png"  # the user's figure under the name bench logs would use
    theirs.write_bytes(b"the user's figure")
    mine = out_dir / "fig1.png"
    mine.write_bytes(b"another figure")
    before = {p.name: p.read_bytes() for p in out_dir.iterdir()}
    out = bench(work, "logs", "tiny", "--out", str(out_dir))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [
        f"bench: error: {theirs} exists and was not written by bench logs; nothing was changed "
        "(move it, or choose another --out)"]
    assert {p.name: p.read_bytes() for p in out_dir.iterdir()} == before  # nothing written, not even A's PNG
    theirs.unlink()
    for _ in range(2):  # its own PNGs (recorded in the manifest) are replaced on the next call
        out = bench(work, "logs", "tiny", "--out", str(out_dir))
        assert out.returncode == 0, out.stderr
    assert mine.read_bytes() == b"another figure"
    assert {f"teacher-tiny-{FP_A}.png", f"teacher-tiny-{FP_B}.png"} <= {p.name for p in out_dir.iterdir()}
    assert theirs.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = tmp_path / "report"  # a folder another bench command owns is not taken over
    report.mkdir()
    (report / ".aprbench-manifest.json").write_text(json.dumps({"kind": "report", "files": ["index.html"]}))
    out = bench(work, "logs", "tiny", "--out", str(report))
    assert out.returncode == 2 and "another bench command" in out.stderr
    assert [p.name for p in report.iterdir()] == [".aprbench-manifest.json"]


def test_logs_reports_unknown_names_and_artifacts_without_logs(work):
    out = bench(work, "logs", "nope")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        f"bench: error: no trained model 'nope' in {work / 'artifacts'}; with logs: teacher/tiny")
    out = bench(work, "logs", "pae", "--no-plot")
    assert out.returncode == 2
    assert "1 trained artifact(s) but no log.csv" in out.stderr
