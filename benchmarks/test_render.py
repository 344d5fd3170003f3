"""Synthetic render throughput at 64x64 (pytest-benchmark).

``test_render_batched``: the renderer as the dataset uses it (chunks of 16
frames, every ray against every box at once, chunks over worker threads).
``test_render_one_frame_at_a_time``: the same renderer called per frame on one
thread, the baseline; its frames/s and the ratio go to ``extra_info``.
Run: ``.venv/bin/pytest benchmarks/test_render.py --benchmark-only``.
The CPU may be shared: compare the ratio, not absolute numbers, across runs.
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("BENCH_PLUGINS", "none")

import pytest  # noqa: E402

from aprbench.plugins.datasets.synthetic import scene_poses  # noqa: E402
from aprbench.plugins.datasets.synthetic_render import render  # noqa: E402
from aprbench.plugins.datasets.synthetic_scenes import SCENES  # noqa: E402

FRAMES = 256
SIZE = 64


@pytest.fixture(scope="module", params=["room", "site"])
def scene(request):
    built = SCENES[request.param](0)
    poses = scene_poses(request.param, 0, FRAMES, 1, 0, built.motion).reshape(-1, 7).float()
    return request.param, built.world, poses


def _per_frame(world, poses) -> float:
    """Frames/s rendering one frame per call on one thread (best of 2)."""
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        for i in range(len(poses)):
            render(world, poses[i:i + 1], SIZE, workers=1)
        best = min(best, time.perf_counter() - start)
    return len(poses) / best


def test_render_batched(benchmark, scene):
    name, world, poses = scene
    images = benchmark.pedantic(render, args=(world, poses, SIZE), rounds=3, iterations=1, warmup_rounds=1)
    assert images.shape == (FRAMES, 3, SIZE, SIZE) and images.float().std() > 10
    fps = FRAMES / benchmark.stats.stats.min
    baseline = _per_frame(world, poses[:64])
    benchmark.extra_info.update({
        "scene": name, "frames": FRAMES, "size": SIZE, "boxes": len(world.lo),
        "frames_per_s": round(fps, 1), "one_frame_at_a_time_frames_per_s": round(baseline, 1),
        "speedup_vs_one_frame_at_a_time": round(fps / baseline, 2),
    })
    print(f"\n{name}: {fps:.0f} frames/s batched, {baseline:.0f} frames/s one at a time ({fps / baseline:.1f}x)")
