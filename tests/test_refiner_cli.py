"""``bench train/eval refiner``, ``bench train decoder`` and ``bench decode`` as subprocesses on a tiny labels dataset.

The teacher is a randomly initialised quick-recipe PoseNet given as a checkpoint
(``--teacher NAME=CKPT``: no teacher training); the student trains with its
quick recipe from the teacher's stored outputs (seconds on 48 frames); the
refiner and the decoder get tiny settings with ``--set``.
"""

from __future__ import annotations

import pytest
import torch

from refiner_helpers import labels_dataset_with_teacher

TINY_RPR = ["--set", "epochs=2", "--set", "d_model=32", "--set", "ffn=64", "--set", "head_hidden=32",
            "--set", "layers=1", "--set", "batch_size=32"]
ENV = {"OMP_NUM_THREADS": "1"}  # tiny models: one thread each (a shared CPU)
TINY_DEC = ["--set", "epochs=2", "--set", "image_size=16", "--set", "hidden=[32, 64]"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    _, options = labels_dataset_with_teacher(root)
    return root, ["--workdir", root / "work", *options, "--no-progress"]


def test_train_and_eval_refiner(run_bench, setup):
    root, common = setup
    r = run_bench("train", "refiner", "pae-rpr", *common, "--student", "pae", *TINY_RPR, "--iterations", "2", timeout=300, env=ENV)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert any("| iteration" in ln or "iteration |" in ln for ln in lines), r.stdout
    assert "stored at test time besides the teacher" in r.stdout and "PAE + RPR weights" in r.stdout
    rows = [ln for ln in lines if ln.startswith("| a ")]
    assert [int(ln.split("|")[2]) for ln in rows] == [0, 1, 2]  # scene a, iterations 0..2
    r = run_bench("eval", "refiner", "image-rpr", *common, *TINY_RPR, "--iterations", "1", timeout=300, env=ENV)
    assert r.returncode == 0, r.stderr
    assert "training images" in r.stdout and len([ln for ln in r.stdout.splitlines() if ln.startswith("| a ")]) == 2


def test_refiner_refused_without_student(run_bench, setup):
    root, common = setup
    r = run_bench("train", "refiner", "pae-rpr", *common, *TINY_RPR, env=ENV)
    assert r.returncode == 2 and "give one (--student)" in r.stderr, r.stderr


def test_train_decoder_and_decode(run_bench, setup):
    root, common = setup
    r = run_bench("train", "decoder", "image-decoder", *common, "--student", "pae", *TINY_DEC, timeout=300, env=ENV)
    assert r.returncode == 0, r.stderr
    assert "train: PSNR" in r.stdout and "test: PSNR" in r.stdout
    out = root / "grid.png"
    r = run_bench("decode", *common, "--student", "pae", *TINY_DEC, "--split", "train", "--out", out, "-n", "4", env=ENV)
    assert r.returncode == 0, r.stderr
    assert "PSNR" in r.stdout and "SSIM" in r.stdout
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_given_weights_for_every_kind(run_bench, setup):
    """``NAME=FILE`` for the student, the refiner and the decoder: aprbench's own files and a reference-layout
    decoder load; a file of the wrong kind is refused naming the keys, before any training."""
    root, common = setup
    work = root / "work" / "artifacts"
    r = run_bench("train", "decoder", "image-decoder", *common, "--student", "pae", *TINY_DEC, timeout=300, env=ENV)
    assert r.returncode == 0, r.stderr
    pae = next((work / "student").glob("pae-*/weights.pth"))
    dec = next((work / "decoder").glob("image-decoder-*/weights.pth"))
    state = torch.load(dec, weights_only=True)
    torch.save({k.replace("net.", "decoder.", 1): v for k, v in state.items()}, root / "reference-decoder.pth")
    r = run_bench("decode", *common, "--student", f"pae={pae}", "--decoder", f"image-decoder={root / 'reference-decoder.pth'}",
                  *TINY_DEC, "--out", root / "given.png", "-n", "4", env=ENV)
    assert r.returncode == 0, r.stderr
    assert "PSNR" in r.stdout and (root / "given.png").is_file()
    r = run_bench("train", "refiner", "pae-rpr", *common, "--student", f"pae={pae}", *TINY_RPR, "--iterations", "1",
                  timeout=300, env=ENV)
    assert r.returncode == 0, r.stderr
    rpr = next((work / "refiner").glob("pae-rpr-*/weights.pth"))
    r = run_bench("eval", "refiner", f"pae-rpr={rpr}", *common, "--student", f"pae={pae}", *TINY_RPR, "--iterations", "1",
                  env=ENV)
    assert r.returncode == 0, r.stderr
    r = run_bench("eval", "student", f"pae={dec}", *common, env=ENV)  # decoder weights given as a student
    assert r.returncode == 2 and "does not fit PAE" in r.stderr and "missing keys" in r.stderr, r.stderr
