"""Batched teacher evaluation against a batch-size-1 per-frame loop like the reference's (pytest-benchmark).

Same model (randomly initialised: cost does not depend on the weights), same
frames. The reference evaluates with a DataLoader of batch size 1, moving each
pose estimate to the CPU per frame; :func:`harness.running.stages.teacher.predict`
runs whole batches under ``torch.inference_mode``. The frames/s ratio goes to
``extra_info`` (target >= 5x). Run:
``.venv/bin/pytest benchmarks/test_teacher_eval.py --benchmark-only``.
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("BENCH_PLUGINS", "none")

import pytest  # noqa: E402
import torch  # noqa: E402

from aprbench.harness.data.images import normalize_images  # noqa: E402
from aprbench.harness.api.manager import get_registry  # noqa: E402
from aprbench.harness.api.recipes import resolve  # noqa: E402
from aprbench.harness.running.stages.context import build_model  # noqa: E402
from aprbench.harness.running.stages import teacher as teacher_stage  # noqa: E402

FRAMES = 256
CASES = {  # teacher, profile, scenes
    "posenet-mobilenet": ("posenet-mobilenet", "quick", 1),
    "mstransformer": ("mstransformer", "quick", 2),
}


def per_frame_loop(model: torch.nn.Module, images: torch.Tensor) -> list:
    """The reference's evaluation: one frame per forward pass, results to the CPU frame by frame."""
    out = []
    with torch.no_grad():
        for i in range(len(images)):
            x = normalize_images(images[i : i + 1])
            est, lat = model(x)
            out.append((est[0].cpu().numpy(), lat.x[0].cpu().numpy(), lat.q[0].cpu().numpy()))
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_batched_vs_per_frame(benchmark, case):
    name, profile, scenes = CASES[case]
    recipe = resolve(get_registry(), "teacher", name, "synthetic", profile)
    torch.manual_seed(0)
    model = build_model(get_registry(), recipe, num_scenes=scenes).eval()
    size = recipe.task.image_size
    images = torch.randint(0, 256, (FRAMES, 3, size, size), dtype=torch.uint8)
    batch = recipe.task.eval_batch_size

    per_frame_loop(model, images[:8])  # warm-up
    t0 = time.perf_counter()
    per_frame_loop(model, images)
    loop_s = time.perf_counter() - t0

    out = benchmark.pedantic(teacher_stage.predict, args=(model, images, batch), rounds=3, warmup_rounds=1)
    batched_s = benchmark.stats.stats.median
    ratio = loop_s / batched_s
    benchmark.extra_info.update({
        "teacher": name, "image_size": size, "frames": FRAMES, "batch_size": batch,
        "per_frame_fps": FRAMES / loop_s, "batched_fps": FRAMES / batched_s, "ratio": ratio,
        "threads": torch.get_num_threads(),
    })
    print(f"\n{case}: per-frame {FRAMES / loop_s:.0f} fps, batched {FRAMES / batched_s:.0f} fps, ratio {ratio:.1f}x")
    assert out["pose_est"].shape == (FRAMES, 7)
    assert ratio > 1.0
