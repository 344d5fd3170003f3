"""Frames/s of ``pae-knn`` refinement against the APR forward alone, batched against a per-frame loop
(pytest-benchmark).

Quick-recipe models at 64x64 (a 0.5-width MobileNetV2 PoseNet, the quick PAE), randomly initialised (cost
does not depend on the weights); an index of ``INDEX`` training poses encoded once; ``FRAMES`` query frames.
Timed, interleaved (the minimum over rounds):

* ``apr``: the teacher's forward on the frames (what every refiner starts from);
* ``knn``: one ``pae-knn`` refinement (k = 3, 3 AdamW steps) of all frames as one batched problem;
* ``closed``: the closed form (0 steps), batched;
* ``loop``: the same refinement one frame at a time (what batching saves).

Ratios go to ``extra_info``. Run: ``.venv/bin/pytest benchmarks/test_pae_knn.py --benchmark-only``.
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("BENCH_PLUGINS", "none")

import torch  # noqa: E402

from aprbench.harness import poses as P  # noqa: E402
from aprbench.harness.api.manager import get_registry  # noqa: E402
from aprbench.harness.api.recipes import resolve  # noqa: E402
from aprbench.harness.running.stages.context import build_named  # noqa: E402

FRAMES, INDEX, SIZE, REPEAT = 128, 2000, 64, 5


def interleaved_min(fns, repeat: int) -> list[float]:
    """Least disturbed seconds per call of each function, the functions alternating within a round."""
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def test_pae_knn_frames_per_second(benchmark):
    reg = get_registry()
    name = "posenet-mobilenet"
    teacher = build_named(reg, "teacher", name, num_scenes=1).eval()
    student = build_named(reg, "student", "pae", latent_dim=teacher.latent_dim, num_scenes=1, multi_scene=False).eval()
    g = torch.Generator().manual_seed(0)
    base = torch.tensor([[0.0, 0, 1.2, 1, 0, 0, 0]], dtype=torch.float64)
    train = P.perturb_poses(base.repeat(INDEX, 1), 1.0, 40.0, generator=g).float()
    recipe = resolve(reg, "refiner", "pae-knn", "synthetic", "quick").values()
    knn = reg.build("refiner", "pae-knn", latent_dim=teacher.latent_dim)
    knn.configure(recipe)
    knn.build_index(train, torch.zeros(INDEX, dtype=torch.int64), student)
    closed = reg.build("refiner", "pae-knn", latent_dim=teacher.latent_dim)
    closed.configure({**recipe, "steps": 0})
    closed.reserve_index(INDEX)
    closed.load_state_dict(knn.state_dict())  # the same stored index
    images = torch.randn(FRAMES, 3, SIZE, SIZE, generator=g)
    with torch.inference_mode():
        est, lat = teacher(images)
    est = P.join_pose(P.perturb_poses(train[:FRAMES].double(), 0.3, 10.0, generator=g)[:, :3].float(),
                      P.normalize_quat(est[:, 3:].float()))
    qx, qq = lat.x.clone(), lat.q.clone()

    @torch.inference_mode()
    def apr():
        return teacher(images)

    def refine():
        return knn.refine_batch(est, qx, qq, None)

    def refine_closed():
        return closed.refine_batch(est, qx, qq, None)

    def loop():
        return torch.cat([knn.refine_batch(est[i : i + 1], qx[i : i + 1], qq[i : i + 1], None) for i in range(FRAMES)])

    torch.testing.assert_close(loop(), refine(), atol=1e-4, rtol=0)  # same answer, one frame at a time
    benchmark.pedantic(refine, rounds=3, warmup_rounds=1)
    t_apr, t_knn, t_closed, t_loop = interleaved_min([apr, refine, refine_closed, loop], REPEAT)
    info = {
        "frames": FRAMES, "index_poses": INDEX, "image_size": SIZE, "teacher": name, "k": recipe["k"], "steps": recipe["steps"],
        "index_bytes": int(sum(t.numel() * t.element_size() for t in knn.state_dict().values())),
        "apr_frames_per_s": FRAMES / t_apr, "knn_frames_per_s": FRAMES / t_knn,
        "closed_frames_per_s": FRAMES / t_closed, "loop_frames_per_s": FRAMES / t_loop,
        "apr_plus_knn_over_apr": (t_apr + t_knn) / t_apr, "apr_plus_closed_over_apr": (t_apr + t_closed) / t_apr,
        "loop_over_batched": t_loop / t_knn,
    }
    benchmark.extra_info.update(info)
    print("\n" + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items()))
    assert t_loop > t_knn  # one batched problem beats a Python loop per frame
